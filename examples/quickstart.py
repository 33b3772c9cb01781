"""Quickstart: load config/databases.yaml, use primary, replica and dev, then close.

Run from the repository root: ``python examples/quickstart.py``. With no
environment set, every database falls back to the embedded SQLite defaults.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from dbregistry import Registry

CONFIG = Path(__file__).resolve().parent.parent / "config" / "databases.yaml"


def main() -> None:
    with Registry.from_yaml(CONFIG) as registry:
        print(f"declared: {', '.join(registry.names)} (default: {registry.default})")

        with registry.get("primary").begin() as conn:
            conn.execute(text("CREATE TABLE IF NOT EXISTS visits (id INTEGER PRIMARY KEY, note TEXT)"))
            conn.execute(text("INSERT INTO visits (note) VALUES (:note)"), {"note": "hello from quickstart"})
        print(f"primary  {registry.get('primary').url!r}: wrote a visit")

        with registry.get("replica").connect() as conn:
            count = conn.execute(text("SELECT count(*) FROM visits")).scalar_one()
        print(f"replica  {registry.get('replica').url!r}: reads {count} visit(s)")

        with registry.session("dev") as session:
            session.execute(text("CREATE TABLE notes (body TEXT)"))
            session.execute(text("INSERT INTO notes VALUES ('kept in memory')"))
            session.commit()
        with registry.session("dev") as session:
            body = session.execute(text("SELECT body FROM notes")).scalar_one()
        print(f"dev      {registry.get('dev').url!r}: {body!r} (one shared in-memory connection)")
        print(registry)
    print("closed every pool")


if __name__ == "__main__":
    main()
