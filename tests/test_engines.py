"""Turning a declaration into engines (`dbregistry._engines`): what `Registry.get` / `get_async` build.

For each dialect and mode: the driver, the pool class, and exactly the options
the user set, passed through to SQLAlchemy (everything else keeps SQLAlchemy's
default); SQLAlchemy's late refusals become a `ConfigError` naming the field.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import pool, text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from dbregistry import ConfigError, Registry


def registry_of(url: str, **fields: Any) -> Registry:
    return Registry.from_dict({"databases": {"a": {"url": url, **fields}}}, environ={})


class TestPoolPerDialect:
    @pytest.mark.parametrize(
        ("url", "sync", "async_"),
        [
            ("postgresql://app@db/app", pool.QueuePool, pool.AsyncAdaptedQueuePool),
            ("sqlite:///{tmp}/a.db", pool.QueuePool, pool.AsyncAdaptedQueuePool),
            ("sqlite://", pool.SingletonThreadPool, pool.StaticPool),  # SQLAlchemy's choice per driver
        ],
    )
    def test_undeclared_pool_is_the_dialect_s_default(
        self, tmp_path: Path, url: str, sync: type[pool.Pool], async_: type[pool.Pool]
    ) -> None:
        with registry_of(url.format(tmp=tmp_path)) as registry:
            assert type(registry.get("a").pool) is sync
            assert type(registry.get_async("a").sync_engine.pool) is async_

    def test_building_connects_to_nothing(self) -> None:
        with registry_of("postgresql://app@127.0.0.1:1/app") as registry:  # nothing listens on port 1
            assert isinstance(registry.get("a"), Engine)
            assert isinstance(registry.get_async("a"), AsyncEngine)


class TestOptionsPassThrough:
    def test_what_the_user_set_reaches_the_engine(self, tmp_path: Path) -> None:
        with registry_of(
            f"sqlite:///{tmp_path / 'a.db'}",
            echo=True,
            echo_pool="debug",
            execution_options={"stream_results": False, "tag": 1},
            isolation_level="read uncommitted",
            pool_size=2,
            pool_timeout=7,
        ) as registry:
            for engine in (registry.get("a"), registry.get_async("a").sync_engine):
                assert engine.echo is True
                assert engine.pool.echo == "debug"
                assert engine.get_execution_options() == {"stream_results": False, "tag": 1}
                queue = engine.pool
                assert isinstance(queue, pool.QueuePool)
                assert (queue.size(), queue.timeout()) == (2, 7)
            with registry.get("a").connect() as conn:
                assert conn.get_isolation_level() == "READ UNCOMMITTED"

    def test_what_the_user_left_unset_is_sqlalchemy_s_default(self, tmp_path: Path) -> None:
        with registry_of(f"sqlite:///{tmp_path / 'a.db'}") as registry:
            engine = registry.get("a")
            assert not engine.echo  # SQLAlchemy's own falsy default, whatever object it is
            assert not engine.pool.echo
            assert engine.get_execution_options() == {}
            queue = engine.pool
            assert isinstance(queue, pool.QueuePool)
            assert (queue.size(), queue.timeout()) == (5, 30.0)

    def test_a_shared_in_memory_connection_works_from_any_thread(self) -> None:
        """StaticPool over :memory: needs check_same_thread=False, which the registry adds for the sync driver."""
        with registry_of("sqlite://", pool_class="StaticPool") as registry:
            engine = registry.get("a")
            with engine.begin() as conn:
                conn.execute(text("create table t (x int)"))
                conn.execute(text("insert into t values (1)"))
            seen: list[object] = []

            def read() -> None:
                with engine.connect() as conn:
                    seen.append(conn.execute(text("select x from t")).scalar())

            thread = threading.Thread(target=read)
            thread.start()
            thread.join(timeout=30)
            assert seen == [1]

    def test_direct_url_gets_its_own_engines(self) -> None:
        with registry_of(
            "postgresql://app@pooler.internal/app",
            direct_url="postgresql://app@direct.internal/app",
            pooler="pgbouncer-transaction",
        ) as registry:
            assert registry.get("a").url.host == "pooler.internal"
            assert registry.get("a", direct=True).url.host == "direct.internal"
            assert registry.get_async("a", direct=True).url.host == "direct.internal"
            assert registry.get("a", direct=True) is not registry.get("a")


class TestAsyncEngines:
    def test_an_async_engine_runs_in_the_loop_that_uses_it(self, tmp_path: Path) -> None:
        registry = registry_of(f"sqlite:///{tmp_path / 'a.db'}")

        async def main() -> object:
            async with registry.get_async("a").connect() as conn:
                answer = (await conn.execute(text("select 1"))).scalar()
            await registry.aclose()
            return answer

        assert asyncio.run(main()) == 1


class TestBuildErrors:
    def test_an_unknown_dialect_is_named_at_get(self) -> None:
        registry = registry_of("nosuchdb://app@db/app")  # loading builds nothing, so loading passes
        with pytest.raises(ConfigError) as info:
            registry.get("a")
        assert str(info.value) == (
            "1 problem in from_dict\n"
            "  from_dict  databases.a.url: SQLAlchemy has no dialect or driver by this name; check the URL's scheme"
        )

    def test_an_unknown_driver_of_a_known_dialect_is_refused_at_load(self) -> None:
        with pytest.raises(ConfigError) as info:
            registry_of("postgresql+nosuch://app@db/app")
        assert [str(p) for p in info.value.problems] == [
            "from_dict  databases.a.url: postgresql has no driver 'nosuch'; "
            "drivers: asyncpg, pg8000, psycopg, psycopg2, psycopg2cffi"
        ]


class TestDriverPairs:
    @pytest.mark.parametrize(
        ("url", "sync", "async_"),
        [
            ("postgresql://u@h/d", "postgresql+psycopg", "postgresql+asyncpg"),
            ("postgres://u@h/d", "postgresql+psycopg", "postgresql+asyncpg"),
            ("postgresql+asyncpg://u@h/d", "postgresql+psycopg", "postgresql+asyncpg"),
            ("postgresql+psycopg://u@h/d", "postgresql+psycopg", "postgresql+psycopg"),
            ("sqlite:///x.db", "sqlite+pysqlite", "sqlite+aiosqlite"),
            ("sqlite+aiosqlite:///x.db", "sqlite+pysqlite", "sqlite+aiosqlite"),
        ],
    )
    def test_each_mode_gets_its_driver(self, url: str, sync: str, async_: str) -> None:
        registry = Registry.from_dict({"databases": {"a": {"url": url}}}, environ={})
        assert registry.get("a").url.drivername == sync
        assert registry.get_async("a").url.drivername == async_
        registry.close()

    def test_no_async_counterpart_is_a_config_error(self) -> None:
        registry = Registry.from_dict({"databases": {"legacy": {"url": "firebird://u:pw@h/d"}}}, environ={})
        with pytest.raises(ConfigError) as info:
            registry.get_async("legacy")
        assert str(info.value) == (
            "1 problem in from_dict\n"
            "  from_dict  databases.legacy.url: no async driver is known for the dialect 'firebird'; "
            "name one in the URL (firebird+<async driver>://...)"
        )
