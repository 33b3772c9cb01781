"""Read/write routing against the real streaming replica: replication, read-only, failover and back, lag.

``pg_replica`` is shared with other modules: every test that stops it or pauses its
replay starts or resumes it in a ``finally`` and leaves it caught up.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from servers import PASSWORD, PostgresServer, ReplicaServer
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from dbregistry import Registry

pytestmark = [pytest.mark.postgres, pytest.mark.replica]

BACKOFF = 0.3


def routed(pg: PostgresServer, pg_replica: ReplicaServer, **replica: Any) -> Registry:
    registry = Registry.from_dict(
        {
            "databases": {
                "primary": {"url": pg.url_string(), "pool_size": 2},
                "replica": {"url": pg_replica.url_string(), "replica_of": "primary", "pool_size": 2, **replica},
            }
        },
        environ={},
    )
    registry.configure_routing(backoff=BACKOFF)
    return registry


def in_recovery(engine: Engine) -> bool:
    """True on the replica, False on the primary."""
    with engine.connect() as conn:
        return bool(conn.execute(text("select pg_is_in_recovery()")).scalar())


async def ain_recovery(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        return bool((await conn.execute(text("select pg_is_in_recovery()"))).scalar())


def eventually(predicate: Callable[[], bool], timeout: float = 60.0) -> float:
    """Seconds until ``predicate()`` held; fails after ``timeout`` (a hang, not slowness: a loaded machine is slow)."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, "timed out"
        time.sleep(0.02)
    return time.monotonic() - start


@pytest.fixture
def table(pg: PostgresServer, pg_replica: ReplicaServer) -> Iterator[str]:
    name = f"routing_{uuid.uuid4().hex[:10]}"
    pg.psql(f"create table {name} (id int primary key, note text); alter table {name} owner to app")
    caught_up(pg, pg_replica)
    yield name
    pg.psql(f"drop table if exists {name}")
    caught_up(pg, pg_replica)


def caught_up(pg: PostgresServer, pg_replica: ReplicaServer) -> None:
    # A commit record first: on an idle primary whose WAL insert position sits just past a page
    # header, the replica has nothing to replay up to it and wait_for_replay() would time out.
    pg.psql("select txid_current()")
    pg_replica.wait_for_replay()


def routing_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "dbregistry.routing" and r.levelno >= logging.WARNING]


def test_writes_go_to_the_primary_and_are_read_from_the_replica(
    pg: PostgresServer, pg_replica: ReplicaServer, table: str
) -> None:
    with routed(pg, pg_replica) as registry:
        assert not in_recovery(registry.writer("primary"))
        with registry.session("primary") as session:
            session.execute(text(f"insert into {table} values (1, 'written on the primary')"))
            session.commit()
        pg_replica.wait_for_replay()
        reader = registry.reader("primary")
        assert reader is registry.get("replica")
        assert in_recovery(reader)
        with reader.connect() as conn:
            assert conn.execute(text(f"select note from {table} where id = 1")).scalar() == "written on the primary"
        with registry.session("primary", read_only=True) as session:
            assert session.execute(text("select pg_is_in_recovery()")).scalar() is True
            assert session.execute(text(f"select count(*) from {table}")).scalar() == 1


def test_a_write_through_a_read_only_session_fails_on_the_replica(
    pg: PostgresServer, pg_replica: ReplicaServer, table: str
) -> None:
    with routed(pg, pg_replica) as registry:
        with registry.session("primary", read_only=True) as session:
            with pytest.raises(DBAPIError, match="cannot execute INSERT in a read-only transaction"):
                session.execute(text(f"insert into {table} values (2, 'nope')"))
            session.rollback()
        # a refused write says nothing about the replica's health
        assert registry.replica_status()["replica"].up
        assert registry.reader("primary") is registry.get("replica")
    assert pg.psql(f"select count(*) from {table}") == [("0",)]


def test_replica_down_then_back(
    pg: PostgresServer, pg_replica: ReplicaServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with routed(pg, pg_replica) as registry:
        assert all(in_recovery(registry.reader()) for _ in range(3))  # the replica's pool holds a connection
        pg_replica.stop()
        try:
            failures: list[Exception] = []
            answers: list[bool] = []
            deadline = time.monotonic() + 3 * BACKOFF  # several back-offs, each ending in a probe that fails
            while time.monotonic() < deadline:
                try:
                    answers.append(in_recovery(registry.reader()))
                except DBAPIError as e:
                    failures.append(e)
                time.sleep(0.01)
            assert len(failures) <= 1, failures
            assert answers
            assert not any(answers)  # every other request was served by the primary
            status = registry.replica_status()["replica"]
            assert not status.up
            assert status.reason is not None
        finally:
            pg_replica.start()
        # Back within the generous bound of `eventually`: restarting the replica alone can take
        # seconds on a loaded machine, so no tighter bound is asserted; a replica never taken back fails.
        eventually(lambda: in_recovery(registry.reader()))
        assert registry.replica_status()["replica"].up
    warnings = routing_warnings(caplog)
    assert len(warnings) == 1
    assert warnings[0].startswith(f"replica 'replica' (postgresql://app:***@127.0.0.1:{pg_replica.port}/app) is down")
    assert "is back up" in caplog.text
    assert PASSWORD not in caplog.text
    caught_up(pg, pg_replica)


def test_async_replica_down_then_back(
    pg: PostgresServer, pg_replica: ReplicaServer, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with routed(pg, pg_replica) as registry:
            assert await ain_recovery(registry.async_reader())
            assert registry.async_writer() is registry.get_async("primary")
            pg_replica.stop()
            try:
                failures: list[BaseException] = []
                answers: list[bool] = []
                deadline = time.monotonic() + 3 * BACKOFF
                while time.monotonic() < deadline:
                    try:
                        answers.append(await ain_recovery(registry.async_reader()))
                    except (DBAPIError, OSError) as e:
                        failures.append(e)
                    await asyncio.sleep(0.01)
                assert len(failures) <= 1, failures
                assert answers
                assert not any(answers)
            finally:
                pg_replica.start()
            start = time.monotonic()
            while not await ain_recovery(registry.async_reader()):
                assert time.monotonic() - start < 60, "the replica was never taken back"  # a hang, not speed
                await asyncio.sleep(0.02)
            async with registry.async_session(read_only=True) as session:
                assert (await session.execute(text("select pg_is_in_recovery()"))).scalar() is True

    asyncio.run(main())
    assert len(routing_warnings(caplog)) == 1
    caught_up(pg, pg_replica)


def test_a_lagging_replica_is_skipped_until_it_catches_up(
    pg: PostgresServer, pg_replica: ReplicaServer, table: str, caplog: pytest.LogCaptureFixture
) -> None:
    with routed(pg, pg_replica, replica_max_lag_seconds=0.5) as registry:
        registry.configure_routing(lag_check_interval=0.1)
        statuses = registry.check_replicas()
        assert statuses["replica"].up
        assert statuses["replica"].lag_seconds is not None
        assert statuses["replica"].lag_seconds < 0.5
        assert in_recovery(registry.reader())
        pg_replica.psql("select pg_wal_replay_pause()")
        try:

            def write() -> None:  # by another client: this test's reads follow the lag check, not its own writes
                with registry.writer().begin() as conn:
                    conn.execute(text(f"insert into {table} values (3, 'not replayed yet')"))

            contextvars.Context().run(write)
            eventually(lambda: not in_recovery(registry.reader()))
            status = registry.replica_status()["replica"]
            assert not status.up
            assert status.reason is not None
            assert status.reason.startswith("replay lag ")
            assert status.reason.endswith(" is over replica_max_lag_seconds 0.5")
        finally:
            pg_replica.psql("select pg_wal_replay_resume()")
        pg_replica.wait_for_replay()
        eventually(lambda: in_recovery(registry.reader()))
        with registry.reader().connect() as conn:
            assert conn.execute(text(f"select note from {table}")).scalar() == "not replayed yet"
    [warning] = routing_warnings(caplog)
    assert "is down: replay lag " in warning


def test_async_lag_check(pg: PostgresServer, pg_replica: ReplicaServer) -> None:
    async def main() -> None:
        async with routed(pg, pg_replica, replica_max_lag_seconds=30) as registry:
            statuses = await registry.acheck_replicas("primary")
            assert statuses["replica"].up
            assert statuses["replica"].lag_seconds is not None
            assert statuses["replica"].lag_seconds < 30
            assert await ain_recovery(registry.async_reader("primary"))

    asyncio.run(main())
