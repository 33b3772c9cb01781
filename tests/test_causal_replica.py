"""Reading your own writes against the real streaming replica, given a steady replay delay.

``pg_replica`` is shared with other modules: the delay is set by the ``lagging``
fixture and reset in its ``finally``, which waits until the replica has caught up.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import subprocess
import sys
import textwrap
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from servers import PASSWORD, PostgresServer, ReplicaServer
from sqlalchemy import text

from dbregistry import Registry
from dbregistry._causal import CURRENT, LSN, Mark, decode, encode, key_of

pytestmark = [pytest.mark.postgres, pytest.mark.replica]

DELAY = "300ms"
ROUNDS = 200


@pytest.fixture(autouse=True)
def _own_context() -> Iterator[None]:
    reset = CURRENT.set(None)
    yield
    CURRENT.reset(reset)


@pytest.fixture(scope="module")
def table(pg: PostgresServer, pg_replica: ReplicaServer) -> str:
    pg.psql("CREATE TABLE IF NOT EXISTS causal_rows (id text PRIMARY KEY, note text)", database="app")
    pg.psql("GRANT ALL ON causal_rows TO app", database="app")
    pg_replica.wait_for_replay()
    return "causal_rows"


@pytest.fixture
def lagging(pg_replica: ReplicaServer, table: str) -> Iterator[None]:
    pg_replica.psql(f"ALTER SYSTEM SET recovery_min_apply_delay = '{DELAY}'")
    pg_replica.psql("SELECT pg_reload_conf()")
    try:
        yield
    finally:
        pg_replica.psql("ALTER SYSTEM RESET recovery_min_apply_delay")
        pg_replica.psql("SELECT pg_reload_conf()")
        pg_replica.wait_for_replay()


def config(pg: PostgresServer, pg_replica: ReplicaServer, *names: str, **primary: Any) -> dict[str, Any]:
    databases: dict[str, Any] = {}
    for name in names or ("primary",):
        databases[name] = {"url": pg.url_string(), "pool_size": 3, **primary}
        databases[f"{name}_replica"] = {"url": pg_replica.url_string(), "replica_of": name, "pool_size": 3}
    return {"databases": databases}


@pytest.fixture
def registry(pg: PostgresServer, pg_replica: ReplicaServer, lagging: None) -> Iterator[Registry]:
    reg = Registry.from_dict(config(pg, pg_replica), environ={})
    yield reg
    reg.close()


def seen(engine: Any, key: str) -> bool:
    with engine.connect() as conn:
        return bool(conn.execute(text("select count(*) from causal_rows where id = :id"), {"id": key}).scalar() == 1)


def eventually(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, "timed out"
        time.sleep(0.02)


def insert(conn: Any, key: str) -> None:
    conn.execute(text("insert into causal_rows (id, note) values (:id, 'x')"), {"id": key})


class TestSync:
    def test_without_a_token_reads_are_stale(
        self, pg: PostgresServer, pg_replica: ReplicaServer, lagging: None
    ) -> None:
        """The danger is real: the same write-then-read with read_your_writes off misses the write."""
        reg = Registry.from_dict(config(pg, pg_replica, read_your_writes="off"), environ={})
        try:
            stale = 0
            for _ in range(20):
                key = uuid.uuid4().hex
                with reg.writer("primary").begin() as conn:
                    insert(conn, key)
                stale += not seen(reg.reader("primary"), key)
            assert stale >= 15
            assert reg.causal_token() is None
        finally:
            reg.close()

    def test_write_then_read_always_sees_the_write(self, registry: Registry) -> None:
        replica, primary = registry.get("primary_replica"), registry.get("primary")
        stale = served = 0
        with registry.causal():
            for i in range(ROUNDS):
                key = uuid.uuid4().hex
                if i % 2:
                    with registry.writer("primary").begin() as conn:
                        insert(conn, key)
                else:
                    with registry.session("primary") as session:
                        insert(session, key)
                        session.commit()
                engine = registry.reader("primary")
                served += engine is replica
                if i % 3:
                    stale += not seen(engine, key)
                else:
                    with registry.session("primary", read_only=True) as session:
                        stale += (
                            session.execute(
                                text("select count(*) from causal_rows where id = :id"), {"id": key}
                            ).scalar()
                            != 1
                        )
            assert stale == 0
            assert registry.read_your_writes_fallbacks()["primary"] >= ROUNDS // 2
            # once the replica has replayed the last write, reads go back to it
            eventually(lambda: registry.reader("primary") is replica)
            assert seen(registry.reader("primary"), key)
        assert primary is not replica
        status = registry.replica_status()["primary_replica"]
        assert status.replayed_lsn is not None
        assert status.lag_seconds is not None

    def test_a_read_only_context_has_no_token_and_reads_the_replica(self, registry: Registry) -> None:
        replica = registry.get("primary_replica")
        with registry.causal():
            for _ in range(5):
                assert registry.reader("primary") is replica
                seen(registry.reader("primary"), "nothing")
            assert registry.causal_token() is None
        assert registry.read_your_writes_fallbacks() == {"primary": 0}

    def test_autocommit_writes_advance_after_each_statement(self, registry: Registry) -> None:
        engine = registry.writer("primary").execution_options(isolation_level="AUTOCOMMIT")
        with registry.causal(), engine.connect() as conn:
            for _ in range(20):
                key = uuid.uuid4().hex
                insert(conn, key)
                assert seen(registry.reader("primary"), key)  # the connection is still checked out
            assert registry.causal_token() is not None

    def test_a_rolled_back_write_leaves_no_token(self, registry: Registry) -> None:
        with registry.causal(), registry.writer("primary").connect() as conn:
            insert(conn, uuid.uuid4().hex)
            conn.rollback()
            assert registry.causal_token() is None

    def test_one_round_trip_per_writing_transaction_none_per_reading_one(self, registry: Registry) -> None:
        statements: list[str] = []
        engine = registry.writer("primary")

        def count(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
            statements.append(statement)

        from sqlalchemy import event  # noqa: PLC0415

        event.listen(engine, "before_cursor_execute", count)
        with registry.causal():
            with engine.begin() as conn:
                conn.execute(text("select 1"))
            assert registry.causal_token() is None
            with engine.begin() as conn:
                insert(conn, uuid.uuid4().hex)
            assert registry.causal_token() is not None
        # the position query goes straight to the DBAPI cursor, after the commit: not an event
        assert len(statements) == 2

    def test_two_primaries_in_one_token(self, pg: PostgresServer, pg_replica: ReplicaServer, lagging: None) -> None:
        reg = Registry.from_dict(config(pg, pg_replica, "billing", "shop"), environ={})
        try:
            keys = {}
            with reg.causal() as block:
                for name in ("billing", "shop"):
                    keys[name] = uuid.uuid4().hex
                    with reg.writer(name).begin() as conn:
                        insert(conn, keys[name])
                token = block.token()
            marks = decode(token or "")
            assert marks is not None
            assert set(marks) == {key_of("billing"), key_of("shop")}

            def elsewhere() -> None:  # another context (a later request) given the token
                with reg.causal(token):
                    for name in ("billing", "shop"):
                        assert seen(reg.reader(name), keys[name])

            contextvars.Context().run(elsewhere)
        finally:
            reg.close()

    def test_a_token_beyond_the_primary_pins_reads_only_until_the_primary_is_asked(self, registry: Registry) -> None:
        forged = encode({key_of("primary"): Mark(LSN, 2**62)})
        replica, primary = registry.get("primary_replica"), registry.get("primary")
        with registry.causal(forged):
            assert registry.reader("primary") is primary
            eventually(lambda: registry.reader("primary") is replica)

    def test_a_malformed_token_is_logged_and_ignored(
        self, registry: Registry, caplog: pytest.LogCaptureFixture
    ) -> None:
        with caplog.at_level(logging.INFO, logger="dbregistry.routing"), registry.causal("v1.%%%; drop table"):
            assert registry.reader("primary") is registry.get("primary_replica")
        assert "causal token ignored" in caplog.text

    def test_reads_sent_to_the_primary_are_logged_at_debug(
        self, registry: Registry, caplog: pytest.LogCaptureFixture
    ) -> None:
        with caplog.at_level(logging.DEBUG, logger="dbregistry.routing"), registry.causal():
            with registry.writer("primary").begin() as conn:
                insert(conn, uuid.uuid4().hex)
            registry.reader("primary")
        from prometheus_client import CollectorRegistry, generate_latest  # noqa: PLC0415

        from dbregistry.prometheus import RegistryCollector  # noqa: PLC0415

        metrics = CollectorRegistry()
        metrics.register(RegistryCollector(registry))
        exposition = generate_latest(metrics).decode()
        assert 'dbregistry_routing_read_your_writes_fallbacks_total{pool_name="primary"} 1.0' in exposition
        [line] = [m for m in caplog.messages if m.startswith("a read of")]
        assert line.startswith(
            "a read of 'primary' goes to the primary: no replica is known to have replayed WAL position "
        )
        assert PASSWORD not in caplog.text


@pytest.mark.parametrize(
    ("lsn", "position"),
    [
        ("0/3000028", 0x3000000),  # just past the long header of a segment's first page (seen on an idle primary)
        ("0/3002018", 0x3002000),  # just past the short header of any other page
        ("0/3002030", 0x3002030),  # a record's end
        ("0/3000040", 0x3000040),
    ],
)
def test_a_position_just_past_a_page_header_is_taken_before_it(pg: PostgresServer, lsn: str, position: int) -> None:
    from dbregistry._causal import position_sql  # noqa: PLC0415

    assert pg.psql(position_sql(f"'{lsn}'::pg_lsn"), database="app") == [(str(position),)]


class TestAsync:
    def test_write_then_read_always_sees_the_write(self, registry: Registry) -> None:
        async def main() -> tuple[int, int]:
            stale = served = 0
            replica = registry.get_async("primary_replica")
            async with registry.causal():
                for i in range(ROUNDS):
                    key = uuid.uuid4().hex
                    if i % 2:
                        async with registry.async_writer("primary").begin() as conn:
                            insert_ = text("insert into causal_rows (id, note) values (:id, 'x')")
                            await conn.execute(insert_, {"id": key})
                    else:
                        async with registry.async_session("primary") as session:
                            await session.execute(
                                text("insert into causal_rows (id, note) values (:id, 'x')"), {"id": key}
                            )
                            await session.commit()
                    if i % 3:
                        engine = registry.async_reader("primary")
                        served += engine is replica
                        async with engine.connect() as conn:
                            found = await conn.execute(
                                text("select count(*) from causal_rows where id = :id"), {"id": key}
                            )
                            stale += found.scalar() != 1
                    else:
                        async with registry.async_session("primary", read_only=True) as session:
                            in_session = await session.execute(
                                text("select count(*) from causal_rows where id = :id"), {"id": key}
                            )
                            stale += in_session.scalar() != 1
                deadline = time.monotonic() + 15
                while registry.async_reader("primary") is not replica:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.02)
            await registry.aclose()
            return stale, served

        stale, _ = asyncio.run(main())
        assert stale == 0

    def test_tasks_started_in_a_block_share_its_token(self, registry: Registry) -> None:
        async def write(key: str) -> None:
            async with registry.async_writer("primary").begin() as conn:
                await conn.execute(text("insert into causal_rows (id, note) values (:id, 'x')"), {"id": key})

        async def main() -> str | None:
            async with registry.causal() as block:
                await asyncio.gather(write(uuid.uuid4().hex), asyncio.to_thread(lambda: None))
                token = block.token()
            await registry.aclose()
            return token

        assert asyncio.run(main()) is not None


JOB = """
import json, sys
from sqlalchemy import text
from dbregistry import Registry

def job(key, token):
    registry = Registry.from_dict(json.loads(sys.argv[1]), environ={})
    with registry.causal(token):
        with registry.reader("primary").connect() as conn:
            found = conn.execute(text("select count(*) from causal_rows where id = :id"), {"id": key}).scalar()
    registry.close()
    return found

print(job(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None))
"""


class TestAcrossProcesses:
    def test_a_job_given_the_token_reads_the_write(
        self, pg: PostgresServer, pg_replica: ReplicaServer, registry: Registry
    ) -> None:
        declared = json.dumps(config(pg, pg_replica))
        with registry.causal() as block:
            key = uuid.uuid4().hex
            with registry.writer("primary").begin() as conn:
                insert(conn, key)
            token = block.token()
        assert token is not None
        run = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(JOB), declared, key, token],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert run.stdout.strip() == "1"


class TestMiddleware:
    def test_post_then_get_with_the_cookie_returns_the_row(self, registry: Registry) -> None:
        from fastapi import FastAPI  # noqa: PLC0415

        from dbregistry.asgi import CausalConsistencyMiddleware  # noqa: PLC0415

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
            from fastapi.testclient import TestClient  # noqa: PLC0415

        app = FastAPI(lifespan=registry.lifespan)
        app.add_middleware(CausalConsistencyMiddleware, registry=registry)

        @app.post("/rows/{key}", status_code=201)
        def create(key: str) -> dict[str, str]:
            with registry.session("primary") as session:
                insert(session, key)
                session.commit()
            return {"id": key}

        @app.get("/rows/{key}")
        async def read(key: str) -> dict[str, int]:
            async with registry.async_session("primary", read_only=True) as session:
                found = await session.execute(text("select count(*) from causal_rows where id = :id"), {"id": key})
                return {"count": found.scalar_one()}

        with TestClient(app) as client:
            for _ in range(20):
                key = uuid.uuid4().hex
                created = client.post(f"/rows/{key}")
                assert created.status_code == 201
                assert created.headers["x-causal-token"].startswith("v1.")
                assert "dbregistry_causal=v1." in created.headers["set-cookie"]
                assert "HttpOnly" in created.headers["set-cookie"]
                assert client.get(f"/rows/{key}").json() == {"count": 1}  # the cookie came back
            # a client that sends the header instead of the cookie
            token = created.headers["x-causal-token"]
            client.cookies.clear()
            key = uuid.uuid4().hex
            client.post(f"/rows/{key}", headers={"x-causal-token": token})
            assert client.get("/rows/nothing").json() == {"count": 0}
            # a garbage cookie is no error
            client.cookies.set("dbregistry_causal", "garbage")
            assert client.get("/rows/nothing").status_code == 200
