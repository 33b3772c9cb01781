"""A writer over several hosts follows its primary (`dbregistry._failover`), against real servers.

Each failover test starts its own primary and streaming standby (the suite's
shared ``pg``/``pg_replica`` are never promoted or reconfigured); the
demoted-primary tests make a server of their own read-only, with the shared
``pg`` as the second, writable host.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy
from servers import PG_BINDIR, PostgresServer, ReplicaServer, _run
from sqlalchemy import text

from dbregistry import Registry
from dbregistry._engines import engine_spec

pytestmark = pytest.mark.postgres

WRITERS = 4
# Generous: the local target is 10 s; this bounds a hang, it is not the measurement.
RESUME_WITHIN = 30.0


def promote(standby: ReplicaServer) -> None:
    _run([str(PG_BINDIR / "pg_ctl"), "promote", "-D", str(standby.data_dir), "-w", "-t", "30", "-s"], timeout=60)


def writer_yaml(
    tmp_path: Path, servers: list[PostgresServer | ReplicaServer], connect_timeout: int = 10, **options: Any
) -> Path:
    first = servers[0]
    hosts = ", ".join(f"{s.host}:{s.port}" for s in servers)
    extra = "".join(f"    {key}: {value}\n" for key, value in options.items())
    path = tmp_path / "databases.yaml"
    path.write_text(
        "databases:\n  main:\n"
        f"    url: postgresql://{first.user}:{quote(first.password, safe='')}@/{first.database}\n"
        f"    hosts: [{hosts}]\n"
        f"    pool_size: {WRITERS}\n"
        f"    connect_args: {{connect_timeout: {connect_timeout}}}\n" + extra
    )
    return path


@pytest.fixture
def pair(pg: PostgresServer) -> Iterator[tuple[PostgresServer, ReplicaServer]]:
    """A primary and its streaming standby of this test's own (``pg`` only makes sure servers can start)."""
    with PostgresServer() as primary, primary.start_replica() as standby:
        primary.psql("CREATE TABLE writes (v int PRIMARY KEY); ALTER TABLE writes OWNER TO app;")
        standby.wait_for_replay()
        yield primary, standby


class _Outcome:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acked: dict[int, tuple[int, float]] = {}  # value -> (server port, when)
        self.failures: list[tuple[float, str]] = []

    def resumed_after(self, started: float, port: int) -> float | None:
        times = [when for p, when in self.acked.values() if p == port and when > started]
        return min(times) - started if times else None


def _fail_over(primary: PostgresServer, standby: ReplicaServer) -> float:
    started = time.monotonic()
    primary.stop()
    promote(standby)
    return started


def _check(outcome: _Outcome, standby: ReplicaServer, started: float, open_connections: int) -> float:
    resumed = outcome.resumed_after(started, standby.port)
    assert resumed is not None, f"no write reached the promoted standby; failures: {outcome.failures[:5]}"
    assert resumed < RESUME_WITHIN
    assert len(outcome.failures) <= open_connections, outcome.failures
    on_standby = {int(row[0]) for row in standby.psql("SELECT v FROM writes")}
    assert set(outcome.acked) <= on_standby  # every write that reported success survived
    print(f"\nwrites resumed {resumed:.2f} s after the primary's stop; {len(outcome.failures)} failed")
    return resumed


def test_sync_writes_resume_on_the_promoted_standby(pair: tuple[PostgresServer, ReplicaServer], tmp_path: Path) -> None:
    primary, standby = pair
    registry = Registry.from_yaml(writer_yaml(tmp_path, [primary, standby]), environ={})
    engine = registry.get()
    outcome = _Outcome()
    done = threading.Event()
    counter = iter(range(1, 1_000_000))

    def write() -> None:
        while not done.is_set():
            with outcome.lock:
                value = next(counter)
            try:
                with engine.begin() as conn:
                    port = conn.scalar(
                        text("INSERT INTO writes VALUES (:v) RETURNING inet_server_port()"), {"v": value}
                    )
            except sqlalchemy.exc.DBAPIError as e:
                with outcome.lock:
                    outcome.failures.append((time.monotonic(), type(e.orig).__name__))
                continue
            with outcome.lock:
                outcome.acked[value] = (port, time.monotonic())

    threads = [threading.Thread(target=write) for _ in range(WRITERS)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        open_connections = engine.pool.checkedin() + engine.pool.checkedout()  # type: ignore[attr-defined]
        assert {p for p, _ in outcome.acked.values()} == {primary.port}
        started = _fail_over(primary, standby)
        deadline = time.monotonic() + RESUME_WITHIN
        while outcome.resumed_after(started, standby.port) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        done.set()
        for t in threads:
            t.join(60)
    _check(outcome, standby, started, open_connections)
    registry.close()


def test_async_writes_resume_on_the_promoted_standby(
    pair: tuple[PostgresServer, ReplicaServer], tmp_path: Path
) -> None:
    primary, standby = pair
    registry = Registry.from_yaml(writer_yaml(tmp_path, [primary, standby]), environ={})
    outcome = _Outcome()

    async def scenario() -> tuple[float, int]:
        engine = registry.get_async()
        done = asyncio.Event()
        counter = iter(range(1, 1_000_000))

        async def write() -> None:
            while not done.is_set():
                value = next(counter)
                try:
                    async with engine.begin() as conn:
                        port = await conn.scalar(
                            text("INSERT INTO writes VALUES (:v) RETURNING inet_server_port()"), {"v": value}
                        )
                except sqlalchemy.exc.DBAPIError as e:
                    outcome.failures.append((time.monotonic(), type(e.orig).__name__))
                    continue
                outcome.acked[value] = (port, time.monotonic())

        tasks = [asyncio.create_task(write()) for _ in range(WRITERS)]
        try:
            await asyncio.sleep(0.5)
            pool = engine.sync_engine.pool
            open_connections = pool.checkedin() + pool.checkedout()  # type: ignore[attr-defined]
            started = await asyncio.to_thread(_fail_over, primary, standby)
            deadline = time.monotonic() + RESUME_WITHIN
            while outcome.resumed_after(started, standby.port) is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
        finally:
            done.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 60)
            await registry.aclose()
        return started, open_connections

    started, open_connections = asyncio.run(scenario())
    _check(outcome, standby, started, open_connections)
    registry.close()


def test_a_new_connection_waits_for_the_promotion_within_its_connect_timeout(
    pair: tuple[PostgresServer, ReplicaServer], tmp_path: Path
) -> None:
    primary, standby = pair
    primary.stop()
    registry = Registry.from_yaml(writer_yaml(tmp_path, [primary, standby], connect_timeout=3), environ={})
    # No writable host at all: bounded by the connect timeout, then the driver's error.
    started = time.monotonic()
    with pytest.raises(sqlalchemy.exc.OperationalError):
        registry.get().connect()
    assert 2.5 <= time.monotonic() - started < 30

    async def async_attempt() -> float:
        started = time.monotonic()
        # SQLAlchemy's asyncpg dialect lets asyncpg's own errors through at connect (OSError here).
        with pytest.raises((sqlalchemy.exc.DBAPIError, OSError)):
            await registry.get_async().connect()
        elapsed = time.monotonic() - started
        await registry.get_async().dispose()
        return elapsed

    assert 2.5 <= asyncio.run(async_attempt()) < 30
    # The standby is promoted while a connection waits: it gets the new primary instead of failing.
    promoter = threading.Timer(1.0, promote, args=(standby,))
    promoter.start()
    try:
        with registry.get().connect() as conn:
            assert conn.scalar(text("SELECT inet_server_port()")) == standby.port
            assert conn.scalar(text("SELECT pg_is_in_recovery()")) is False
    finally:
        promoter.join(60)
    registry.close()


def test_a_pooled_connection_the_server_ended_while_idle_is_dropped_as_a_disconnect(
    pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fast shutdown (or pg_terminate_backend) ends idle sessions with a FATAL message, then the socket.

    When asyncpg reads that message before the end of the socket, its next BEGIN on the
    connection raises ``InternalClientError: cannot switch to state 15; another operation (2)
    is in progress``, by then on a closed connection. SQLAlchemy >= 2.0.50 (sqlalchemy#13241)
    raises it as a DBAPIError and invalidates the connection; 2.0.38-2.0.49 let asyncpg's own
    exception through, not a disconnect, and kept the closed connection in the pool (what
    made bench figure 12 crash on the lowest versions). Simulated here: the race is timing-bound.
    """
    import asyncpg  # type: ignore[import-untyped]  # noqa: PLC0415 - the async extra

    registry = Registry.from_yaml(writer_yaml(tmp_path, [pg]), environ={})

    async def begin_after_a_fatal_message(self: Any) -> None:
        self._connection.terminate()  # the end of the socket that follows the FATAL message
        raise asyncpg.exceptions.InternalClientError("cannot switch to state 15; another operation (2) is in progress")

    async def scenario() -> None:
        engine = registry.get_async()
        async with engine.connect() as conn:
            assert await conn.scalar(text("SELECT 1")) == 1
        with monkeypatch.context() as patch:
            patch.setattr(asyncpg.transaction.Transaction, "start", begin_after_a_fatal_message)
            with pytest.raises(sqlalchemy.exc.DBAPIError) as caught:
                async with engine.connect() as conn:
                    await conn.scalar(text("SELECT 1"))
        assert caught.value.connection_invalidated
        async with engine.connect() as conn:  # the pool connects again
            assert await conn.scalar(text("SELECT 1")) == 1
        await registry.aclose()

    asyncio.run(scenario())


# -- a primary that becomes read-only -------------------------------------------------------


@pytest.fixture(scope="module")
def demoted(pg: PostgresServer) -> Iterator[PostgresServer]:
    """A server of this module's own that the tests make read-only; ``pg`` is the writable second host."""
    with PostgresServer() as server:
        for target in (server, pg):
            target.psql("CREATE TABLE IF NOT EXISTS demoted (v int); ALTER TABLE demoted OWNER TO app;")
        yield server


def _read_only(server: PostgresServer, on: bool) -> None:
    setting = "SET default_transaction_read_only = on" if on else "RESET default_transaction_read_only"
    server.psql(f"ALTER SYSTEM {setting};\nSELECT pg_reload_conf();", database="postgres")
    time.sleep(0.3)  # every backend takes the SIGHUP at its next command; this only spares a race in the check below


def _fill_the_pool(engine: sqlalchemy.Engine, count: int) -> set[int]:
    connections = [engine.connect() for _ in range(count)]
    ports = {conn.scalar(text("SELECT inet_server_port()")) for conn in connections}
    for conn in connections:
        conn.close()
    return ports


def _writes(engine: sqlalchemy.Engine, count: int) -> list[int | str]:
    outcomes: list[int | str] = []
    for _ in range(count):
        try:
            with engine.begin() as conn:
                outcomes.append(conn.scalar(text("INSERT INTO demoted VALUES (1) RETURNING inet_server_port()")))
        except sqlalchemy.exc.DBAPIError as e:
            outcomes.append(getattr(e.orig, "sqlstate", None) or type(e.orig).__name__)
    return outcomes


@pytest.mark.parametrize("pre_ping", [False, True])
def test_a_demoted_primary_fails_each_connection_at_most_once(
    demoted: PostgresServer, pg: PostgresServer, tmp_path: Path, pre_ping: bool
) -> None:
    registry = Registry.from_yaml(writer_yaml(tmp_path, [demoted, pg], pool_pre_ping=pre_ping), environ={})
    engine = registry.get()
    assert _fill_the_pool(engine, WRITERS) == {demoted.port}
    _read_only(demoted, True)
    try:
        outcomes = _writes(engine, 3 * WRITERS)
    finally:
        _read_only(demoted, False)
        registry.close()
    failures = [o for o in outcomes if o == "25006"]
    # Pre-ping reads the server's parameter statuses after its round trip: nothing fails at all.
    assert len(failures) <= (0 if pre_ping else WRITERS), outcomes
    assert outcomes[-WRITERS:] == [pg.port] * WRITERS


@pytest.mark.parametrize("pre_ping", [False, True])
def test_async_a_demoted_primary_fails_each_connection_at_most_once(
    demoted: PostgresServer, pg: PostgresServer, tmp_path: Path, pre_ping: bool
) -> None:
    registry = Registry.from_yaml(writer_yaml(tmp_path, [demoted, pg], pool_pre_ping=pre_ping), environ={})

    async def scenario() -> list[int | str]:
        engine = registry.get_async()
        connections = [await engine.connect() for _ in range(WRITERS)]
        for conn in connections:
            assert await conn.scalar(text("SELECT inet_server_port()")) == demoted.port
            await conn.close()
        await asyncio.to_thread(_read_only, demoted, True)
        outcomes: list[int | str] = []
        for _ in range(3 * WRITERS):
            try:
                async with engine.begin() as conn:
                    outcomes.append(
                        await conn.scalar(text("INSERT INTO demoted VALUES (1) RETURNING inet_server_port()"))
                    )
            except sqlalchemy.exc.DBAPIError as e:
                outcomes.append(getattr(e.orig, "sqlstate", None) or type(e.orig).__name__)
        await registry.aclose()
        return outcomes

    try:
        outcomes = asyncio.run(scenario())
    finally:
        _read_only(demoted, False)
    assert len([o for o in outcomes if o == "25006"]) <= (0 if pre_ping else WRITERS), outcomes
    assert outcomes[-WRITERS:] == [pg.port] * WRITERS


def test_without_the_handling_the_same_engine_keeps_failing(
    demoted: PostgresServer, pg: PostgresServer, tmp_path: Path
) -> None:
    # The danger is real: SQLAlchemy's pool keeps a connection that answers 25006 forever.
    registry = Registry.from_yaml(writer_yaml(tmp_path, [demoted, pg]), environ={})
    spec = engine_spec(registry["main"], is_async=False)
    engine = sqlalchemy.create_engine(spec.url, **spec.kwargs)  # the same URL and arguments, no listeners
    assert _fill_the_pool(engine, WRITERS) == {demoted.port}
    _read_only(demoted, True)
    try:
        outcomes = _writes(engine, 3 * WRITERS)
    finally:
        _read_only(demoted, False)
        engine.dispose()
        registry.close()
    assert outcomes == ["25006"] * (3 * WRITERS)


def test_a_read_only_transaction_keeps_its_connection(pg: PostgresServer, tmp_path: Path) -> None:
    # A 25006 the user asked for (postgresql_readonly, as session(read_only=True) sets) is no failover.
    pg.psql("CREATE TABLE IF NOT EXISTS demoted (v int); ALTER TABLE demoted OWNER TO app;")
    registry = Registry.from_yaml(writer_yaml(tmp_path, [pg, pg]), environ={})
    engine = registry.get().execution_options(postgresql_readonly=True)
    with engine.connect() as conn:
        pid = conn.scalar(text("SELECT pg_backend_pid()"))
        with pytest.raises(sqlalchemy.exc.InternalError) as info:
            conn.execute(text("INSERT INTO demoted VALUES (1)"))
        assert getattr(info.value.orig, "sqlstate", None) == "25006"
        assert not conn.invalidated
        conn.rollback()
        assert conn.scalar(text("SELECT pg_backend_pid()")) == pid
    with registry.get().connect() as conn:
        # The user's own read-only transaction on a server that reports itself writable.
        pid = conn.scalar(text("SELECT pg_backend_pid()"))
        conn.execute(text("SET TRANSACTION READ ONLY"))
        with pytest.raises(sqlalchemy.exc.InternalError):
            conn.execute(text("INSERT INTO demoted VALUES (1)"))
        assert not conn.invalidated
        conn.rollback()
        assert conn.scalar(text("SELECT pg_backend_pid()")) == pid
    with registry.session(read_only=True) as session:
        pid = session.scalar(text("SELECT pg_backend_pid()"))
        with pytest.raises(sqlalchemy.exc.InternalError):
            session.execute(text("INSERT INTO demoted VALUES (1)"))
        session.rollback()
        assert session.scalar(text("SELECT pg_backend_pid()")) == pid
    registry.close()


@pytest.mark.replica
def test_a_replica_that_refuses_a_write_stays(pg: PostgresServer, pg_replica: ReplicaServer) -> None:
    registry = Registry.from_dict(
        {
            "databases": {
                "main": {"url": pg.url_string()},
                "replica": {"url": pg_replica.url_string(), "replica_of": "main"},
            }
        },
        environ={},
    )
    with registry.get("replica").connect() as conn:
        pid = conn.scalar(text("SELECT pg_backend_pid()"))
        with pytest.raises(sqlalchemy.exc.InternalError):
            conn.execute(text("CREATE TABLE refused (v int)"))
        assert not conn.invalidated
        conn.rollback()
        assert conn.scalar(text("SELECT pg_backend_pid()")) == pid
    registry.close()
