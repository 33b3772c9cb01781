"""The Registry on real SQLite: lazy building, exactly-once, modes, sessions, closing."""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import exc, pool, text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from dbregistry import (
    CloseError,
    Registry,
    RegistryClosedError,
    UnknownDatabaseError,
)


def sqlite_registry(tmp_path: Path, **extra: Any) -> Registry:
    file_url = f"sqlite:///{tmp_path / 'app.db'}"
    return Registry.from_dict(
        {
            "default": "primary",
            "databases": {
                "primary": {"url": file_url, "pool_size": 3},
                "replica": {"url": file_url, "replica_of": "primary"},
                "memory": {"url": "sqlite:///:memory:", "pool_class": "static"},
                **extra,
            },
        },
        environ={},
    )


class TestDeclaration:
    def test_names_keep_declaration_order(self, tmp_path: Path) -> None:
        registry = sqlite_registry(tmp_path)
        assert registry.names == ["primary", "replica", "memory"]
        assert list(registry) == registry.names
        assert len(registry) == 3

    def test_membership(self, tmp_path: Path) -> None:
        registry = sqlite_registry(tmp_path)
        assert "replica" in registry
        assert "nope" not in registry

    def test_default_is_declared_default(self, tmp_path: Path) -> None:
        registry = sqlite_registry(tmp_path)
        assert registry.default == "primary"
        assert registry.get() is registry.get("primary")

    def test_primary_is_default_when_none_declared(self) -> None:
        registry = Registry.from_dict(
            {"databases": {"a": {"url": "sqlite://"}, "primary": {"url": "sqlite://"}}}, environ={}
        )
        assert registry.default == "primary"

    def test_single_database_is_default(self) -> None:
        registry = Registry.from_dict({"databases": {"only": {"url": "sqlite://"}}}, environ={})
        assert registry.get() is registry.get("only")

    def test_no_default_among_many(self) -> None:
        registry = Registry.from_dict({"databases": {"a": {"url": "sqlite://"}, "b": {"url": "sqlite://"}}}, environ={})
        with pytest.raises(UnknownDatabaseError, match=re.escape("no default database is declared; set `default:`")):
            registry.get()

    def test_unknown_name_suggests_closest(self, tmp_path: Path) -> None:
        registry = sqlite_registry(tmp_path)
        with pytest.raises(UnknownDatabaseError) as info:
            registry.get("replcia")
        assert (
            str(info.value)
            == "'replcia' is not a declared database; did you mean 'replica'? declared: primary, replica, memory"
        )
        assert isinstance(info.value, KeyError)

    def test_getitem_returns_the_declaration(self, tmp_path: Path) -> None:
        registry = sqlite_registry(tmp_path)
        assert registry["primary"].pool_size == 3
        with pytest.raises(UnknownDatabaseError):
            registry["nope"]

    def test_overrides_beat_the_mapping(self, tmp_path: Path) -> None:
        registry = Registry.from_dict(
            {"databases": {"a": {"url": "sqlite://", "pool_size": 1}}},
            overrides={"databases": {"a": {"pool_size": 7}}},
            environ={},
        )
        assert registry["a"].pool_size == 7
        assert str(registry.origin("a", "pool_size")) == "overrides"

    def test_mapping_is_not_modified(self) -> None:
        mapping = {"databases": {"a": {"url": "sqlite://", "connect_args": {"timeout": 3}}}}
        Registry.from_dict(mapping, environ={})
        assert mapping == {"databases": {"a": {"url": "sqlite://", "connect_args": {"timeout": 3}}}}


class TestLazyBuilding:
    def test_loading_builds_nothing(self, tmp_path: Path) -> None:
        registry = sqlite_registry(tmp_path)
        assert repr(registry) == "<Registry [primary, replica, memory] default='primary' 0 engines built>"

    def test_unreachable_server_does_not_stop_loading(self, tmp_path: Path) -> None:
        registry = sqlite_registry(
            tmp_path, down={"url": "postgresql://app:pw@127.0.0.1:1/nothing", "pool_pre_ping": True}
        )
        engine = registry.get("down")  # built, not connected
        assert isinstance(engine, Engine)
        with registry.get("primary").connect() as conn:
            assert conn.execute(text("select 1")).scalar() == 1
        registry.close()

    def test_get_returns_the_same_engine(self, tmp_path: Path) -> None:
        registry = sqlite_registry(tmp_path)
        assert registry.get("primary") is registry.get("primary")
        assert registry.get_async("primary") is registry.get_async("primary")
        registry.close()

    def test_sync_and_async_share_one_declaration(self, tmp_path: Path) -> None:
        registry = sqlite_registry(tmp_path)
        sync, async_ = registry.get("primary"), registry.get_async("primary")
        assert isinstance(sync, Engine)
        assert isinstance(async_, AsyncEngine)
        assert sync.url.drivername == "sqlite+pysqlite"
        assert async_.url.drivername == "sqlite+aiosqlite"
        assert type(sync.pool) is pool.QueuePool
        assert type(async_.sync_engine.pool) is pool.AsyncAdaptedQueuePool
        assert sync.pool.size() == async_.sync_engine.pool.size() == 3
        registry.close()

    def test_declared_queue_pool_becomes_async_adapted(self) -> None:
        registry = Registry.from_dict(
            {"databases": {"a": {"url": "sqlite:///x.db", "pool_class": "QueuePool"}}}, environ={}
        )
        assert type(registry.get_async("a").sync_engine.pool) is pool.AsyncAdaptedQueuePool
        assert type(registry.get("a").pool) is pool.QueuePool
        registry.close()

    def test_unset_options_keep_sqlalchemy_defaults(self, tmp_path: Path) -> None:
        registry = Registry.from_dict(
            {"databases": {"a": {"url": f"sqlite:///{tmp_path / 'x.db'}", "pool_timeout": 0.05}}}, environ={}
        )
        engine = registry.get("a")
        queue = engine.pool
        assert isinstance(queue, pool.QueuePool)
        assert queue.size() == 5  # SQLAlchemy's own default
        # max_overflow has no public getter: SQLAlchemy's default of 10 shows as the number of
        # connections beyond pool_size that can be open at once.
        with contextlib.ExitStack() as stack:
            for _ in range(5 + 10):
                stack.enter_context(engine.connect())
            assert queue.overflow() == 10
            with pytest.raises(exc.TimeoutError, match="QueuePool limit of size 5 overflow 10 reached"):
                engine.connect()
        registry.close()


class TestExactlyOnce:
    def test_threads_racing_get_one_engine(self, tmp_path: Path) -> None:
        registry = sqlite_registry(tmp_path)
        barrier = threading.Barrier(16)
        seen: list[Engine] = []

        def worker() -> None:
            barrier.wait()
            seen.append(registry.get("replica"))

        threads = [threading.Thread(target=worker) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(seen) == 16
        assert len({id(e) for e in seen}) == 1
        registry.close()

    def test_threads_racing_get_async_one_engine(self, tmp_path: Path) -> None:
        registry = sqlite_registry(tmp_path)
        barrier = threading.Barrier(16)
        seen: list[AsyncEngine] = []

        def worker() -> None:
            barrier.wait()
            seen.append(registry.get_async("primary"))

        threads = [threading.Thread(target=worker) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len({id(e) for e in seen}) == 1
        registry.close()

    def test_tasks_racing_get_async_one_engine(self, tmp_path: Path) -> None:
        registry = sqlite_registry(tmp_path)

        async def main() -> set[int]:
            start = asyncio.Event()

            async def task() -> AsyncEngine:
                await start.wait()
                engine = registry.get_async("primary")
                async with engine.connect() as conn:
                    await conn.execute(text("select 1"))
                return engine

            tasks = [asyncio.create_task(task()) for _ in range(50)]
            await asyncio.sleep(0)
            start.set()
            engines = await asyncio.gather(*tasks)
            await registry.aclose()
            return {id(e) for e in engines}

        assert len(asyncio.run(main())) == 1

    def test_build_under_the_lock_happens_once(self, tmp_path: Path) -> None:
        calls: list[str] = []
        registry = sqlite_registry(tmp_path)
        # The engine listener hears of every engine built, once each (its public contract).
        registry.add_engine_listener(lambda name, mode, direct, engine: calls.append(name))
        barrier = threading.Barrier(8)

        def worker() -> None:
            barrier.wait()
            registry.get("primary")
            registry.get()

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert calls == ["primary"]
        registry.close()


class TestSessions:
    def test_session_is_bound_to_the_engine(self, tmp_path: Path) -> None:
        registry = sqlite_registry(tmp_path)
        with registry.session("memory") as session:
            assert isinstance(session, Session)
            assert session.get_bind() is registry.get("memory")
            session.execute(text("create table t (x int)"))
            session.execute(text("insert into t values (42)"))
            session.commit()
        with registry.session("memory") as session:
            assert session.execute(text("select x from t")).scalar() == 42
        registry.close()

    def test_session_kwargs_reach_the_session(self, tmp_path: Path) -> None:
        registry = sqlite_registry(tmp_path)
        with registry.session(expire_on_commit=False) as session:
            assert session.expire_on_commit is False
        registry.close()

    def test_async_session(self, tmp_path: Path) -> None:
        registry = sqlite_registry(tmp_path)

        async def main() -> int:
            async with registry.async_session("primary") as session:
                assert isinstance(session, AsyncSession)
                value = (await session.execute(text("select 7"))).scalar_one()
            await registry.aclose()
            return int(value)

        assert asyncio.run(main()) == 7


class TestClose:
    def test_close_disposes_every_built_engine(self, tmp_path: Path) -> None:
        registry = sqlite_registry(tmp_path)
        engine = registry.get("primary")
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        assert engine.pool.checkedin() == 1  # type: ignore[attr-defined]
        registry.close()
        assert engine.pool.checkedin() == 0  # type: ignore[attr-defined]

    def test_close_is_idempotent(self, tmp_path: Path) -> None:
        registry = sqlite_registry(tmp_path)
        registry.get("primary")
        registry.close()
        registry.close()
        assert registry.closed

    def test_get_after_close_raises(self, tmp_path: Path) -> None:
        registry = sqlite_registry(tmp_path)
        registry.get("primary")
        registry.close()
        with pytest.raises(RegistryClosedError, match="the registry is closed; cannot open 'primary'"):
            registry.get("primary")
        with pytest.raises(RegistryClosedError):
            registry.get_async("replica")
        with pytest.raises(RegistryClosedError):
            registry.get()

    def test_close_disposes_async_engines_from_sync_code(self, tmp_path: Path) -> None:
        registry = sqlite_registry(tmp_path)
        engine = registry.get_async("primary")

        async def use() -> None:
            async with engine.connect() as conn:
                await conn.execute(text("select 1"))

        asyncio.run(use())
        assert engine.sync_engine.pool.checkedin() == 1  # type: ignore[attr-defined]
        registry.close()
        assert engine.sync_engine.pool.checkedin() == 0  # type: ignore[attr-defined]

    def test_close_inside_a_running_loop_points_to_aclose(self, tmp_path: Path) -> None:
        registry = sqlite_registry(tmp_path)

        async def main() -> None:
            registry.get_async("primary")
            with pytest.raises(RuntimeError, match=re.escape("use `await registry.aclose()`")):
                registry.close()
            assert not registry.closed
            await registry.aclose()

        asyncio.run(main())
        assert registry.closed

    def test_one_failing_engine_does_not_stop_the_others(self, tmp_path: Path) -> None:
        registry = sqlite_registry(tmp_path)
        broken = registry.get("primary")
        healthy = registry.get("replica")
        with healthy.connect() as conn:
            conn.execute(text("select 1"))

        def fail(close: bool = True) -> None:
            raise OSError("disk on fire")

        broken.dispose = fail  # type: ignore[method-assign]
        with pytest.raises(CloseError) as info:
            registry.close()
        assert info.value.names == ["primary (sync)"]
        assert [str(e) for e in info.value.exceptions] == ["disk on fire"]
        assert healthy.pool.checkedin() == 0  # type: ignore[attr-defined]

    def test_context_managers_close(self, tmp_path: Path) -> None:
        with sqlite_registry(tmp_path) as registry:
            registry.get("primary")
        assert registry.closed

        async def main() -> Registry:
            async with sqlite_registry(tmp_path) as areg:
                areg.get_async("primary")
            return areg

        assert asyncio.run(main()).closed


class TestSecrecy:
    PASSWORD = "hunter2-Sup3r"

    def test_password_never_in_repr(self) -> None:
        registry = Registry.from_dict(
            {
                "databases": {
                    "a": {
                        "url": f"postgresql://app:{self.PASSWORD}@db.example/app",
                        "connect_args": {"password": self.PASSWORD, "sslmode": "require"},
                    }
                }
            },
            environ={},
        )
        texts = [
            repr(registry),
            str(registry),
            repr(registry["a"]),
            str(registry["a"]),
            repr(registry.config),
            repr(registry.get("a")),
            repr(registry.get("a").url),
            repr(registry.get_async("a").url),
        ]
        for shown in texts:
            assert self.PASSWORD not in shown
        assert "postgresql://app:***@db.example/app" in repr(registry["a"])
        assert "'password': '***'" in repr(registry["a"])
        registry.close()
