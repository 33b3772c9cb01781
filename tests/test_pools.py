"""SQLAlchemy's pool classes by name, and which engine options each takes (`dbregistry._pools`).

Seen the way users see it: the pool of the engine `Registry.get` / `get_async`
builds, and the `ConfigError` a wrong combination raises at load.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import pool

from dbregistry import ConfigError, Registry

QUEUE_OPTIONS = {"pool_size": 2, "max_overflow": 1, "pool_timeout": 3, "pool_use_lifo": True}


def registry_of(url: str, **fields: Any) -> Registry:
    return Registry.from_dict({"databases": {"a": {"url": url, **fields}}}, environ={})


def file_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'a.db'}"


def refusal(url: str, **fields: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        registry_of(url, **fields)
    return [str(problem) for problem in info.value.problems]


class TestNames:
    @pytest.mark.parametrize(
        ("declared", "sync", "async_"),
        [
            ("QueuePool", pool.QueuePool, pool.AsyncAdaptedQueuePool),
            ("queuepool", pool.QueuePool, pool.AsyncAdaptedQueuePool),
            ("queue", pool.QueuePool, pool.AsyncAdaptedQueuePool),
            ("AsyncAdaptedQueuePool", pool.QueuePool, pool.AsyncAdaptedQueuePool),
            ("asyncadaptedqueuepool", pool.QueuePool, pool.AsyncAdaptedQueuePool),
            ("NullPool", pool.NullPool, pool.NullPool),
            ("nullpool", pool.NullPool, pool.NullPool),
            ("null", pool.NullPool, pool.NullPool),
            ("NULL", pool.NullPool, pool.NullPool),
        ],
    )
    def test_a_name_or_alias_gives_each_mode_its_class(
        self, tmp_path: Path, declared: str, sync: type[pool.Pool], async_: type[pool.Pool]
    ) -> None:
        """A queue is one concept: the sync engine gets the thread queue, the async one the asyncio queue."""
        with registry_of(file_url(tmp_path), pool_class=declared) as registry:
            assert type(registry.get("a").pool) is sync
            assert type(registry.get_async("a").sync_engine.pool) is async_

    @pytest.mark.parametrize(
        ("declared", "expected"),
        [
            ("StaticPool", pool.StaticPool),
            ("staticpool", pool.StaticPool),
            ("static", pool.StaticPool),
            ("SingletonThreadPool", pool.SingletonThreadPool),
            ("singletonthreadpool", pool.SingletonThreadPool),
            ("singleton", pool.SingletonThreadPool),
        ],
    )
    def test_single_connection_pools_by_name(self, declared: str, expected: type[pool.Pool]) -> None:
        with registry_of("sqlite://", pool_class=declared) as registry:
            assert type(registry.get("a").pool) is expected

    def test_poolclass_is_an_alias_of_pool_class(self, tmp_path: Path) -> None:
        with registry_of(file_url(tmp_path), poolclass="null") as registry:
            assert registry["a"].pool_class == "NullPool"
            assert type(registry.get("a").pool) is pool.NullPool

    def test_undeclared_is_sqlalchemy_s_choice(self, tmp_path: Path) -> None:
        with registry_of(file_url(tmp_path)) as registry, registry_of("sqlite://") as memory:
            assert registry["a"].pool_class is None
            assert type(registry.get("a").pool) is pool.QueuePool
            assert type(memory.get("a").pool) is pool.SingletonThreadPool

    @pytest.mark.parametrize(
        ("declared", "hint"), [("LakePool", "NullPool"), ("nulpool", "NullPool"), ("staticpol", "StaticPool")]
    )
    def test_an_unknown_name_suggests_the_class_name(self, declared: str, hint: str) -> None:
        assert refusal("sqlite://", pool_class=declared) == [
            f"from_dict  databases.a.pool_class: unknown pool class {declared!r}; did you mean {hint!r}? "
            "known: QueuePool, AsyncAdaptedQueuePool, NullPool, StaticPool, SingletonThreadPool"
        ]


class TestOptions:
    @pytest.mark.parametrize("declared", ["QueuePool", "AsyncAdaptedQueuePool", None])
    def test_a_queue_takes_every_queue_option(self, tmp_path: Path, declared: str | None) -> None:
        fields = QUEUE_OPTIONS | ({"pool_class": declared} if declared else {})
        with registry_of(file_url(tmp_path), **fields) as registry:
            for engine in (registry.get("a"), registry.get_async("a").sync_engine):
                queue = engine.pool
                assert isinstance(queue, pool.QueuePool)
                assert (queue.size(), queue.timeout()) == (2, 3)

    def test_pool_use_lifo_hands_out_the_connection_returned_last(self, tmp_path: Path) -> None:
        """SQLAlchemy keeps the setting private; its effect is public: which connection comes back."""
        for lifo in (True, False):
            with registry_of(file_url(tmp_path), pool_use_lifo=lifo) as registry:
                engine = registry.get("a")
                first, second = engine.connect(), engine.connect()
                dbapi = [first.connection.dbapi_connection, second.connection.dbapi_connection]
                first.close()
                second.close()
                with engine.connect() as again:
                    assert again.connection.dbapi_connection is dbapi[1 if lifo else 0]

    def test_singleton_thread_pool_takes_pool_size(self) -> None:
        with registry_of("sqlite://", pool_class="SingletonThreadPool", pool_size=3) as registry:
            singleton = registry.get("a").pool
            assert isinstance(singleton, pool.SingletonThreadPool)
            assert singleton.size == 3

    @pytest.mark.parametrize(
        ("declared", "url", "why"),
        [
            ("NullPool", "sqlite:///{tmp}/a.db", "NullPool keeps no connections"),
            ("StaticPool", "sqlite://", "StaticPool holds exactly one connection"),
        ],
    )
    @pytest.mark.parametrize("option", sorted(QUEUE_OPTIONS))
    def test_pools_without_a_queue_refuse_every_queue_option(
        self, tmp_path: Path, declared: str, url: str, why: str, option: str
    ) -> None:
        assert refusal(url.format(tmp=tmp_path), pool_class=declared, **{option: QUEUE_OPTIONS[option]}) == [
            f"from_dict  databases.a.{option}: not allowed with pool_class {declared} ({why}); "
            "remove it or use QueuePool"
        ]

    @pytest.mark.parametrize("option", ["max_overflow", "pool_timeout", "pool_use_lifo"])
    def test_singleton_thread_pool_refuses_the_other_queue_options(self, option: str) -> None:
        assert refusal("sqlite://", pool_class="singleton", **{option: QUEUE_OPTIONS[option]}) == [
            f"from_dict  databases.a.{option}: not allowed with pool_class SingletonThreadPool "
            "(SingletonThreadPool keeps one connection per thread); remove it or use QueuePool"
        ]

    def test_sqlite_memory_default_pool_names_the_way_out(self) -> None:
        assert refusal("sqlite://", pool_timeout=1) == [
            "from_dict  databases.a.pool_timeout: not allowed with SQLite's default pool for an in-memory "
            "database (SingletonThreadPool); remove it, or declare pool_class: StaticPool and drop the queue options"
        ]

    def test_every_refused_option_is_reported_at_once_in_name_order(self) -> None:
        problems = refusal("sqlite://", pool_class="StaticPool", pool_timeout=1, max_overflow=2, pool_size=1)
        assert [re.sub(r":.*", "", p.removeprefix("from_dict  ")) for p in problems] == [
            "databases.a.max_overflow",
            "databases.a.pool_size",
            "databases.a.pool_timeout",
        ]
