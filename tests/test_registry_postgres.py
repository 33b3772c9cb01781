"""The Registry against the real PostgreSQL server the suite starts: both drivers, and close."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading

import pytest
from servers import PASSWORD, PostgresServer
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from dbregistry import Registry

pytestmark = pytest.mark.postgres


def pg_registry(pg: PostgresServer, **options: object) -> Registry:
    return Registry.from_dict(
        {"databases": {"primary": {"url": pg.url_string(), "pool_size": 4, **options}}}, environ={}
    )


def test_sync_engine_uses_psycopg(pg: PostgresServer) -> None:
    registry = pg_registry(pg)
    engine = registry.get("primary")
    assert engine.url.drivername == "postgresql+psycopg"
    with engine.connect() as conn:
        assert conn.execute(text("select current_user")).scalar() == "app"
        assert conn.execute(text("select cast(:x as integer) + 1"), {"x": 41}).scalar() == 42
    registry.close()


def test_async_engine_uses_asyncpg(pg: PostgresServer) -> None:
    registry = pg_registry(pg)

    async def main() -> list[int]:
        engine = registry.get_async("primary")
        assert engine.url.drivername == "postgresql+asyncpg"

        async def one(i: int) -> int:
            async with engine.connect() as conn:
                return int((await conn.execute(text("select cast(:i as integer) * 2"), {"i": i})).scalar_one())

        values = await asyncio.gather(*(one(i) for i in range(20)))
        await registry.aclose()
        return list(values)

    assert asyncio.run(main()) == [i * 2 for i in range(20)]


def test_close_leaves_no_connection_on_the_server(pg: PostgresServer) -> None:
    """Sync close() also closes async engines, in the loop their connections belong to."""
    registry = pg_registry(pg)
    engine = registry.get("primary")
    held = [engine.connect() for _ in range(3)]
    for conn in held:
        conn.execute(text("select 1"))
    for conn in held:
        conn.close()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()

    async def use_async() -> None:
        aengine = registry.get_async("primary")
        conns = [await aengine.connect() for _ in range(2)]
        for conn in conns:
            await conn.execute(text("select 1"))
            await conn.close()

    asyncio.run_coroutine_threadsafe(use_async(), loop).result()
    pg.wait_for_connections(5)
    assert pg.connections() == 5
    registry.close()  # from this thread, while the async engine's loop runs in another
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()
    pg.wait_for_connections(0)
    assert pg.connections() == 0


def test_close_after_the_loop_ended_warns(pg: PostgresServer, caplog: pytest.LogCaptureFixture) -> None:
    registry = pg_registry(pg)

    async def use_async() -> None:
        async with registry.get_async("primary").connect() as conn:
            await conn.execute(text("select 1"))

    asyncio.run(use_async())
    registry.close()
    with pytest.warns(ResourceWarning):
        gc.collect()
    assert "async engine 'primary' was used in an event loop that has ended" in caplog.text
    assert "`await registry.aclose()`" in caplog.text
    pg.wait_for_connections(0)


def test_aclose_leaves_no_connection_on_the_server(pg: PostgresServer) -> None:
    registry = pg_registry(pg)

    async def main() -> None:
        aengine = registry.get_async("primary")
        conns = [await aengine.connect() for _ in range(3)]
        for conn in conns:
            await conn.execute(text("select 1"))
            await conn.close()
        with registry.get("primary").connect() as sync_conn:
            sync_conn.execute(text("select 1"))
        assert pg.connections() == 4
        await registry.aclose()

    asyncio.run(main())
    pg.wait_for_connections(0)
    assert pg.connections() == 0


def test_no_password_in_logs_of_a_failed_connection(pg: PostgresServer, caplog: pytest.LogCaptureFixture) -> None:
    wrong = pg.url().set(password="Wr0ng-pw-Zx9")
    registry = Registry.from_dict(
        {"databases": {"bad": {"url": wrong.render_as_string(hide_password=False)}}}, environ={}
    )
    caplog.set_level(logging.DEBUG)
    with pytest.raises(Exception) as info, registry.get("bad").connect():
        pass
    registry.close()
    assert "Wr0ng-pw-Zx9" not in caplog.text
    assert PASSWORD not in caplog.text
    assert "password authentication failed" in str(info.value)


def test_a_read_only_session_cannot_write_even_on_the_primary(pg: PostgresServer) -> None:
    """With no replica, the reads fall back to the primary; the session stays read-only there."""
    registry = pg_registry(pg)
    with registry.session("primary", read_only=True) as session:
        assert session.execute(text("select 1")).scalar() == 1
        with pytest.raises(DBAPIError, match="cannot execute CREATE TABLE in a read-only transaction"):
            session.execute(text("create table read_only_probe (x int)"))
    with registry.session("primary") as session:  # the pool it shares is not read-only
        session.execute(text("create temporary table writable_probe (x int)"))

    async def main() -> None:
        async with registry.async_session("primary", read_only=True) as session:
            assert (await session.execute(text("select 1"))).scalar() == 1
            with pytest.raises(DBAPIError, match="cannot execute CREATE TABLE in a read-only transaction"):
                await session.execute(text("create table read_only_probe (x int)"))
        await registry.aclose()

    asyncio.run(main())
    assert pg.psql("select count(*) from pg_tables where tablename = 'read_only_probe'") == [("0",)]
