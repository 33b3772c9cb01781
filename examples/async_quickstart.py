"""The same declaration from asyncio: async engines and sessions, closed with aclose().

Run from the repository root: ``python examples/async_quickstart.py``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import text

from dbregistry import Registry

CONFIG = Path(__file__).resolve().parent.parent / "config" / "databases.yaml"


async def main() -> None:
    async with Registry.from_yaml(CONFIG) as registry:
        engine = registry.get_async("primary")
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE IF NOT EXISTS visits (id INTEGER PRIMARY KEY, note TEXT)"))
            await conn.execute(text("INSERT INTO visits (note) VALUES ('hello from asyncio')"))
        print(f"primary  {engine.url!r}: wrote a visit")

        async def count_visits() -> int:
            async with registry.async_session("replica") as session:
                return (await session.execute(text("SELECT count(*) FROM visits"))).scalar_one()

        counts = await asyncio.gather(*(count_visits() for _ in range(5)))
        print(f"replica  {registry.get_async('replica').url!r}: 5 concurrent reads saw {counts[0]} visit(s)")
        print(registry)
    print("closed every pool")


if __name__ == "__main__":
    asyncio.run(main())
