"""The one engine cache, through the registry: each engine built once, listed once, emptied on close.

The registry and the router read the same cache, so what routing hands out is
what ``get()`` hands out, before and after a close and reopen.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from dbregistry import Registry, RegistryClosedError


def registry_of(tmp_path: Path) -> Registry:
    primary = f"sqlite:///{tmp_path / 'primary.db'}"
    return Registry.from_dict(
        {
            "default": "primary",
            "databases": {
                "primary": {"url": primary},
                "replica": {"url": f"sqlite:///{tmp_path / 'replica.db'}", "replica_of": "primary"},
                "plain": {"url": f"sqlite:///{tmp_path / 'plain.db'}"},
            },
        },
        environ={},
    )


def async_direct_registry(tmp_path: Path) -> Registry:
    url = f"sqlite+aiosqlite:///{tmp_path / 'direct.db'}"
    return Registry.from_dict({"databases": {"app": {"url": url, "direct_url": url}}}, environ={})


class TestOneCache:
    def test_the_default_and_its_name_are_one_engine_listed_once(self, tmp_path: Path) -> None:
        registry = registry_of(tmp_path)
        seen: list[tuple[str, str, bool]] = []
        registry.add_engine_listener(lambda name, mode, direct, engine: seen.append((name, mode, direct)))
        assert registry.get() is registry.get("primary")
        assert registry.get_async() is registry.get_async("primary")
        assert seen == [("primary", "sync", False), ("primary", "async", False)]
        assert repr(registry).endswith("2 engines built>")
        later: list[tuple[str, str, bool]] = []
        registry.add_engine_listener(lambda name, mode, direct, engine: later.append((name, mode, direct)))
        assert later == seen
        registry.close()

    def test_reader_and_get_hand_out_the_same_engines(self, tmp_path: Path) -> None:
        registry = registry_of(tmp_path)
        assert registry.reader("primary") is registry.get("replica")
        assert registry.reader("plain") is registry.get("plain")
        assert registry.async_reader("primary") is registry.get_async("replica")
        assert registry.writer("replica") is registry.get()
        assert repr(registry).endswith("4 engines built>")
        registry.close()

    def test_close_empties_the_cache_for_routing_too(self, tmp_path: Path) -> None:
        registry = registry_of(tmp_path)
        old = registry.reader("primary")
        registry.close()
        with pytest.raises(RegistryClosedError, match=re.escape("the registry is closed; cannot open 'replica'")):
            registry.reader("primary")
        with pytest.raises(RegistryClosedError, match=re.escape("the registry is closed; cannot open 'plain'")):
            registry.reader("plain")
        assert repr(registry) == "<Registry [primary, replica, plain] default='primary' closed>"
        registry.reopen()
        new = registry.reader("primary")
        assert new is not old
        assert new is registry.get("replica")
        with new.connect() as conn:
            assert conn.execute(text("select 1")).scalar() == 1
        registry.close()

    def test_each_engine_is_disposed_once_on_close(self, tmp_path: Path) -> None:
        registry = registry_of(tmp_path)
        disposed: list[str] = []
        engines: list[tuple[str, Any]] = []
        registry.add_engine_listener(lambda name, mode, direct, engine: engines.append((f"{name} {mode}", engine)))
        registry.get()
        registry.get("primary")
        registry.reader("primary")
        registry.get_async()
        for label, engine in engines:
            sync: Engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
            sync.pool.dispose = _recorder(disposed, label)  # type: ignore[method-assign]
        registry.close()
        assert sorted(disposed) == ["primary async", "primary sync", "replica sync"]


class TestNoLockOrder:
    def test_routing_state_answers_while_a_reader_waits_for_a_replica_being_built(self, tmp_path: Path) -> None:
        """A reader waiting for the registry to build its replica holds no lock of the router's.

        Before the one cache, the router filled its own copy under its lock, so
        `replica_status` (which takes that lock) waited for the whole build.
        """
        registry = registry_of(tmp_path)
        building, release = threading.Event(), threading.Event()

        def slow_listener(name: str, mode: str, direct: bool, engine: object) -> None:
            if name == "replica":  # under the registry's lock, before the engine is handed out
                building.set()
                release.wait(30)

        registry.add_engine_listener(slow_listener)
        builder = threading.Thread(target=registry.get, args=("replica",))
        builder.start()
        try:
            assert building.wait(30)
            reader = threading.Thread(target=registry.reader, args=("primary",))
            reader.start()
            reader.join(timeout=0.5)  # lets it reach the registry's lock; the assertions below are on order only
            statuses: list[bool] = []
            status = threading.Thread(target=lambda: statuses.append(registry.replica_status()["replica"].up))
            status.start()
            status.join(timeout=20)  # a hang, not speed: it ends only when the build does if it waits for it
            assert statuses == [True]
            assert reader.is_alive()  # still waiting for the build: replica_status did not
        finally:
            release.set()
            builder.join(timeout=30)
            reader.join(timeout=30)
        registry.close()


class TestDirectEngines:
    def test_direct_engines_are_cached_apart_and_listed(self, tmp_path: Path) -> None:
        registry = async_direct_registry(tmp_path)
        seen: list[tuple[str, str, bool]] = []
        registry.add_engine_listener(lambda name, mode, direct, engine: seen.append((name, mode, direct)))
        pooled = registry.get_async("app")
        direct = registry.get_async("app", direct=True)
        assert direct is not pooled
        assert registry.get_async(direct=True) is direct
        assert seen == [("app", "async", False), ("app", "async", True)]
        asyncio.run(registry.aclose())

    def test_close_inside_a_running_loop_refuses_with_only_a_direct_async_engine(self, tmp_path: Path) -> None:
        """Before the one cache, close() checked only the pooled async engines and then blocked the loop."""
        registry = async_direct_registry(tmp_path)

        async def main() -> None:
            async with registry.get_async("app", direct=True).connect() as conn:
                await conn.execute(text("select 1"))
            with pytest.raises(RuntimeError, match=re.escape("use `await registry.aclose()`")):
                registry.close(timeout=1)
            assert not registry.closed
            await registry.aclose()

        asyncio.run(main())
        assert registry.closed


def _recorder(calls: list[str], label: str) -> Callable[[], None]:
    def record() -> None:
        calls.append(label)

    return record
