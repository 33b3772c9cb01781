"""Transaction-mode poolers: detection, settings, and real PgBouncer 1.18 under concurrent load."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from servers import PgBouncer, PostgresServer
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from dbregistry import ConfigError, Registry
from dbregistry._poolers import derived_direct_url, detect
from dbregistry._schema import DatabaseConfig

ROOT = Path(__file__).resolve().parent.parent


def database(**fields: Any) -> DatabaseConfig:
    """A validated declaration, as the loader builds it (the model's fields are typed after validation)."""
    return DatabaseConfig.model_validate(fields)


NEON = "postgresql://app:pw@ep-cool-darkness-123456-pooler.us-east-2.aws.neon.tech/neondb?sslmode=require"


class TestDetection:
    def test_neon_pooler_host_is_transaction_mode(self) -> None:
        pooler = detect(database(url=NEON))
        assert pooler.mode == "pgbouncer-transaction"
        assert pooler.reason == ("Neon pooler endpoint (ep-cool-darkness-123456-pooler): PgBouncer in transaction mode")

    def test_neon_direct_host_is_not(self) -> None:
        assert detect(database(url=NEON.replace("-pooler", ""))).mode == "none"

    def test_supabase_transaction_port(self) -> None:
        db = database(url="postgresql://u:p@aws-0-eu-west-1.pooler.supabase.com:6543/postgres")
        assert detect(db).transaction_mode

    def test_declared_beats_detected(self) -> None:
        assert detect(database(url=NEON, pooler="pgbouncer-session")).mode == "pgbouncer-session"

    def test_neon_direct_url_is_derived(self) -> None:
        direct = derived_direct_url(database(url=NEON))
        assert direct is not None
        assert direct.host == "ep-cool-darkness-123456.us-east-2.aws.neon.tech"
        assert direct.password == "pw"


class CapturedError(Exception):
    """Raised by the do_connect listener: the driver's connect() is never called."""


def what_the_driver_gets(
    registry: Registry, name: str, *, is_async: bool = False, direct: bool = False
) -> dict[str, Any]:
    """The keywords the engine hands its driver's connect(), seen through SQLAlchemy's public do_connect event."""
    engine = registry.get_async(name, direct=direct).sync_engine if is_async else registry.get(name, direct=direct)
    seen: dict[str, Any] = {}

    def capture(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        seen.update(cparams)
        raise CapturedError

    async def connect_async() -> None:
        async with registry.get_async(name, direct=direct).connect():
            pass

    attempt: Callable[[], object] = (lambda: asyncio.run(connect_async())) if is_async else engine.connect
    event.listen(engine, "do_connect", capture)
    try:
        with pytest.raises(CapturedError):
            attempt()
    finally:
        event.remove(engine, "do_connect", capture)
    return seen


class TestSettings:
    def test_engines_get_the_driver_settings(self) -> None:
        registry = Registry.from_dict({"databases": {"neon": {"url": NEON, "pool_class": "NullPool"}}}, environ={})
        sync = what_the_driver_gets(registry, "neon")
        assert ("prepare_threshold", None) in sync.items()
        asynchronous = what_the_driver_gets(registry, "neon", is_async=True)
        assert (asynchronous["ssl"], asynchronous["statement_cache_size"]) == ("require", 0)

    def test_user_connect_args_are_kept(self) -> None:
        registry = Registry.from_dict(
            {"databases": {"neon": {"url": NEON, "connect_args": {"application_name": "api"}}}}, environ={}
        )
        sync = what_the_driver_gets(registry, "neon")
        assert (sync["application_name"], sync["prepare_threshold"]) == ("api", None)

    def test_direct_engine_has_no_pooler_settings(self) -> None:
        registry = Registry.from_dict({"databases": {"neon": {"url": NEON}}}, environ={})
        for is_async in (False, True):
            given = what_the_driver_gets(registry, "neon", is_async=is_async, direct=True)
            assert not {"prepare_threshold", "statement_cache_size"} & set(given)
        direct = registry.get("neon", direct=True)
        assert direct.url.host == "ep-cool-darkness-123456.us-east-2.aws.neon.tech"
        assert registry.get("neon", direct=True) is direct
        assert registry.get("neon") is not direct
        registry.close()

    def test_direct_on_a_database_without_pooler_is_the_engine(self) -> None:
        registry = Registry.from_dict({"databases": {"a": {"url": "sqlite:///a.db"}}}, environ={})
        assert registry.get("a", direct=True) is registry.get("a")
        registry.close()

    def test_direct_behind_a_declared_pooler_needs_direct_url(self) -> None:
        registry = Registry.from_dict(
            {"databases": {"b": {"url": "postgresql://u@bouncer/app", "pooler": "pgbouncer-transaction"}}},
            environ={},
        )
        with pytest.raises(ConfigError, match=re.escape("databases.b.direct_url: not declared: set direct_url")):
            registry.get("b", direct=True)

    def test_settings_that_cannot_work_are_refused(self) -> None:
        with pytest.raises(ConfigError) as info:
            Registry.from_dict(
                {"databases": {"neon": {"url": NEON, "driver_args": {"asyncpg": {"statement_cache_size": 100}}}}},
                environ={},
            )
        (problem,) = info.value.problems
        assert problem.path == "databases.neon.driver_args.asyncpg"
        assert problem.message == (
            "statement_cache_size: asyncpg's statement cache breaks behind a transaction-mode pooler; remove it "
            "(the registry sets what pgbouncer-transaction needs)"
        )

    def test_transaction_pooler_is_postgresql_only(self) -> None:
        with pytest.raises(ConfigError, match="pgbouncer-transaction is a PostgreSQL pooler; this URL is sqlite"):
            Registry.from_dict(
                {"databases": {"x": {"url": "sqlite:///x.db", "pooler": "pgbouncer-transaction"}}}, environ={}
            )


# -- through the real PgBouncer ----------------------------------------------------------

TASKS = 32
QUERIES = 50


def queries(worker: int, i: int) -> tuple[str, dict[str, Any], Any]:
    """A mix of statement texts and parameter types, each with the one right answer."""
    n = worker * 1000 + i
    kind = i % 5
    if kind == 0:
        return "select cast(:n as integer) + 1", {"n": n}, n + 1
    if kind == 1:
        return "select cast(:s as text) || '-x'", {"s": f"w{n}"}, f"w{n}-x"
    if kind == 2:
        return (
            "select cast(:d as date) + 1",
            {"d": dt.date(2020, 1, 1) + dt.timedelta(days=n % 300)},
            (dt.date(2020, 1, 2) + dt.timedelta(days=n % 300)),
        )
    if kind == 3:
        return "select cast(:f as numeric) * 2", {"f": Decimal(n) / 4}, Decimal(n) / 2
    return f"select {n} as literal_{worker}", {}, n


async def async_load(engine: AsyncEngine, *, autocommit: bool, in_transaction: bool) -> tuple[int, int, int]:
    """Run TASKS x QUERIES checked queries; return (ok, errors, wrong)."""
    counts = [0, 0, 0]

    async def worker(w: int) -> None:
        for i in range(QUERIES):
            sql, params, expected = queries(w, i)
            try:
                if in_transaction:
                    async with engine.begin() as conn:
                        value = (await conn.execute(text(sql), params)).scalar_one()
                else:
                    async with engine.connect() as conn:
                        if autocommit:
                            await conn.execution_options(isolation_level="AUTOCOMMIT")
                        value = (await conn.execute(text(sql), params)).scalar_one()
            except Exception:
                counts[1] += 1
                continue
            counts[0 if value == expected else 2] += 1

    await asyncio.gather(*(worker(w) for w in range(TASKS)))
    return counts[0], counts[1], counts[2]


def prepared_statements_on_every_server_connection(pgbouncer: PgBouncer, pool_size: int) -> dict[int, int]:
    """pg_prepared_statements seen from each server connection behind the pooler.

    ``pool_size`` concurrent open transactions force one server connection each.
    """
    seen: dict[int, int] = {}
    conns = [psycopg.connect(pgbouncer.url_string(), prepare_threshold=None) for _ in range(pool_size)]
    try:
        for conn in conns:
            conn.execute("begin")
            pid, count = conn.execute("select pg_backend_pid(), count(*) from pg_prepared_statements").fetchone()  # type: ignore[misc]
            seen[pid] = count
    finally:
        for conn in conns:
            conn.rollback()
            conn.close()
    return seen


@pytest.mark.pgbouncer
def test_a_plain_asyncpg_engine_fails_behind_pgbouncer(pgbouncer: PgBouncer, pg: PostgresServer) -> None:
    """The danger is real on this PgBouncer: a default SQLAlchemy + asyncpg engine breaks.

    It runs on a PgBouncer of its own, whose server connections (and the
    statements this leaves on them) end with it.
    """

    async def main(bouncer: PgBouncer) -> tuple[int, int, int]:
        engine = create_async_engine(bouncer.url("postgresql+asyncpg"), pool_size=TASKS)
        try:
            return await async_load(engine, autocommit=False, in_transaction=False)
        finally:
            await engine.dispose()

    with PgBouncer(pg, default_pool_size=3) as own:
        ok, errors, wrong = asyncio.run(main(own))
    assert errors + wrong > 0, f"expected failures through transaction pooling, got {ok} ok"


def bouncer_registry(pgbouncer: PgBouncer, pg: PostgresServer, **options: Any) -> Registry:
    return Registry.from_dict(
        {
            "databases": {
                "bouncer": {
                    "url": pgbouncer.url_string(),
                    "direct_url": pg.url_string(),
                    "pooler": "pgbouncer-transaction",
                    "pool_size": TASKS,
                    "pool_pre_ping": True,
                    **options,
                }
            }
        },
        environ={},
    )


@pytest.mark.pgbouncer
@pytest.mark.parametrize(("autocommit", "in_transaction"), [(False, False), (True, False), (False, True)])
def test_registry_async_engine_is_correct_behind_pgbouncer(
    pgbouncer: PgBouncer, pg: PostgresServer, autocommit: bool, in_transaction: bool
) -> None:
    registry = bouncer_registry(pgbouncer, pg)

    async def main() -> tuple[int, int, int]:
        try:
            return await async_load(registry.get_async("bouncer"), autocommit=autocommit, in_transaction=in_transaction)
        finally:
            await registry.aclose()

    assert asyncio.run(main()) == (TASKS * QUERIES, 0, 0)
    assert set(prepared_statements_on_every_server_connection(pgbouncer, 3).values()) == {0}


@pytest.mark.pgbouncer
@pytest.mark.parametrize("mode", ["connect", "autocommit", "begin"])
def test_registry_sync_engine_is_correct_behind_pgbouncer(pgbouncer: PgBouncer, pg: PostgresServer, mode: str) -> None:
    registry = bouncer_registry(pgbouncer, pg)
    engine = registry.get("bouncer")
    counts = [0, 0, 0]
    lock = threading.Lock()

    def worker(w: int) -> None:
        for i in range(QUERIES):
            sql, params, expected = queries(w, i)
            try:
                if mode == "begin":
                    with engine.begin() as conn:
                        value = conn.execute(text(sql), params).scalar_one()
                else:
                    with engine.connect() as conn:
                        if mode == "autocommit":
                            conn = conn.execution_options(isolation_level="AUTOCOMMIT")  # noqa: PLW2901
                        value = conn.execute(text(sql), params).scalar_one()
            except Exception:
                with lock:
                    counts[1] += 1
                continue
            with lock:
                counts[0 if value == expected else 2] += 1

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    registry.close()
    assert counts == [16 * QUERIES, 0, 0]
    assert set(prepared_statements_on_every_server_connection(pgbouncer, 3).values()) == {0}


WORKER = textwrap.dedent(
    """
    import asyncio, sys
    sys.path[:0] = [{tests!r}]
    from test_poolers import async_load, TASKS, QUERIES
    from dbregistry import Registry

    registry = Registry.from_dict({{"databases": {{"b": {{"url": {url!r}, "pooler": "pgbouncer-transaction",
                                                   "pool_size": TASKS}}}}}}, environ={{}})

    async def main():
        try:
            return await async_load(registry.get_async("b"), autocommit=True, in_transaction=False)
        finally:
            await registry.aclose()

    print(*asyncio.run(main()))
    """
)


@pytest.mark.pgbouncer
def test_several_processes_at_once(pgbouncer: PgBouncer) -> None:
    script = WORKER.format(tests=str(ROOT / "tests"), url=pgbouncer.url_string())
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for _ in range(3)
    ]
    results = [proc.communicate(timeout=120) for proc in procs]
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
        assert out.split() == [str(TASKS * QUERIES), "0", "0"]
    assert set(prepared_statements_on_every_server_connection(pgbouncer, 3).values()) == {0}


@pytest.mark.pgbouncer
def test_direct_engine_reaches_the_server_past_the_pooler(pgbouncer: PgBouncer, pg: PostgresServer) -> None:
    registry = bouncer_registry(pgbouncer, pg)
    with registry.get("bouncer", direct=True).connect() as conn:
        port = conn.execute(text("select inet_server_port()")).scalar()
        conn.execute(text("select pg_advisory_lock(42)"))
        assert conn.execute(text("select pg_advisory_unlock(42)")).scalar() is True
    assert port == pg.port
    assert make_url(pgbouncer.url_string()).port != pg.port
    registry.close()
