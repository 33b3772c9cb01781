"""What migrations need from a declaration, without Alembic: the URL they use, the lock key, the database's identity.

Kept apart from `dbregistry.alembic` so that ``dbregistry show`` can say which URL
migrations use without Alembic installed.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final

from sqlalchemy.engine import URL

from ._poolers import derived_direct_url
from ._poolers import detect as detect_pooler
from ._schema import DatabaseConfig
from ._urls import dialect_of, is_sqlite_memory

__all__ = ["LOCK_PREFIX", "MigrationURL", "lock_key", "migration_url", "physical_identity", "write_alembic_project"]

LOCK_PREFIX: Final = "dbregistry.alembic:"


@dataclass(frozen=True, slots=True)
class MigrationURL:
    """The URL migrations run on (None when they cannot run) and why that one."""

    url: URL | None
    reason: str


def migration_url(db: DatabaseConfig) -> MigrationURL:
    """``direct_url``, else the derived Neon direct host, else ``url`` unless a transaction-mode pooler is in front."""
    if db.replica_of is not None:
        return MigrationURL(None, f"never, a replica of {db.replica_of}")
    if db.direct_url is not None:
        return MigrationURL(db.direct_url, "direct_url")
    derived = derived_direct_url(db)
    if derived is not None:
        return MigrationURL(derived, "the Neon direct host derived from url")
    pooler = detect_pooler(db)
    if pooler.transaction_mode:
        return MigrationURL(
            None, f"refused, url goes through a transaction-mode pooler ({pooler.reason}) and no direct_url is declared"
        )
    return MigrationURL(db.url, "url: no transaction-mode pooler in front")


def lock_key(name: str) -> int:
    """The PostgreSQL advisory lock key that migrations of database ``name`` hold.

    The first 8 bytes of SHA-256 of ``"dbregistry.alembic:" + name`` as a signed
    big-endian 64-bit integer: the same in every process and every release.

    >>> lock_key("primary")
    818258710906534070
    """
    digest = hashlib.sha256(f"{LOCK_PREFIX}{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def physical_identity(url: URL) -> tuple[str, ...] | None:
    """What makes two URLs the same database as far as a URL can tell; None for in-memory SQLite.

    Compared: the dialect, host, port and database name (SQLite: the file's real path);
    not the driver, the user or the query. ``localhost`` and ``127.0.0.1`` differ here.
    """
    dialect = dialect_of(url)
    if dialect == "sqlite":
        database = url.database or ""
        if is_sqlite_memory(url) or database.startswith("file::memory:") or url.query.get("mode") == "memory":
            return None
        path = database.removeprefix("file:").partition("?")[0]
        return (dialect, os.path.realpath(path))
    host = url.host or ""
    if isinstance(url.query.get("host"), str):
        host = str(url.query["host"])
    return (dialect, host.lower(), str(url.port or ""), url.database or "")


def write_alembic_project(directory: Path, ini: Path) -> list[Path]:
    """Write the shipped ``env.py``, ``script.py.mako`` and ``versions/`` into ``directory``, and ``ini``.

    ``directory`` must be missing or empty (`FileExistsError` otherwise); an existing
    ``ini`` is left alone and not listed. Returns the paths written.
    """
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise FileExistsError(f"{directory} exists and is not an empty directory")
    template = resources.files("dbregistry") / "templates" / "alembic"
    (directory / "versions").mkdir(parents=True, exist_ok=True)
    written = []
    for name in ("env.py", "script.py.mako"):
        target = directory / name
        target.write_text((template / name).read_text(encoding="utf-8"), encoding="utf-8")
        written.append(target)
    written.append(directory / "versions")
    if not ini.exists():
        location = Path(os.path.relpath(directory.resolve(), ini.resolve().parent)).as_posix()
        text = (template / "alembic.ini").read_text(encoding="utf-8")
        ini.write_text(text.replace("%(here)s/migrations", f"%(here)s/{location}"), encoding="utf-8")
        written.append(ini)
    return written
