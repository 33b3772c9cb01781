"""Every wait on a server is bounded: replica probes and closing, against real servers that stop answering."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from servers import PostgresServer, free_port, frozen, silent_server, within
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from dbregistry import CloseError, Registry
from dbregistry._routing import DEFAULT_PROBE_TIMEOUT
from dbregistry._waits import run_all_within

T = TypeVar("T")


def silent_replica(port: int, driver: str, **extra: Any) -> Registry:
    """A primary nobody connects to, and a replica on a server that accepts and never answers."""
    return Registry.from_dict(
        {
            "databases": {
                "primary": {"url": f"postgresql+{driver}://app:pw@127.0.0.1:{free_port()}/app"},
                "replica": {
                    "url": f"postgresql+{driver}://app:pw@127.0.0.1:{port}/app",
                    "replica_of": "primary",
                    **extra,
                },
            }
        },
        environ={},
    )


@pytest.fixture
def silent_port() -> Iterator[int]:
    with silent_server() as port:
        yield port


class TestProbeTimeout:
    def test_default_and_setting(self) -> None:
        registry = Registry.from_dict({"databases": {"a": {"url": "sqlite://"}}}, environ={})
        assert registry._router.probe_timeout == DEFAULT_PROBE_TIMEOUT == 5.0
        registry.configure_routing(probe_timeout=0.5)
        assert registry._router.probe_timeout == 0.5
        with pytest.raises(ValueError, match="probe_timeout must be a finite number of seconds, got inf"):
            registry.configure_routing(probe_timeout=math.inf)
        registry.close()

    def test_check_replicas_against_a_server_that_never_answers(self, silent_port: int) -> None:
        # Before: libpq waited for the server's first answer forever (no connect_timeout).
        registry = silent_replica(silent_port, "psycopg")
        registry.configure_routing(probe_timeout=1)
        status = within(30, registry.check_replicas)["replica"]
        assert status.up is False
        assert status.reason == "TimeoutError: no answer within 1 s"
        assert registry.reader("primary") is registry.get("primary")
        within(30, registry.close)

    def test_acheck_replicas_against_a_server_that_never_answers(self, silent_port: int) -> None:
        # Before: asyncpg's own connect timeout (60 s) was the only bound.
        registry = silent_replica(silent_port, "asyncpg")
        registry.configure_routing(probe_timeout=1)

        async def main() -> bool:
            try:
                status = (await asyncio.wait_for(registry.acheck_replicas(), 30))["replica"]
                assert status.reason is not None
                assert status.reason.startswith("TimeoutError"), status.reason
                return status.up
            finally:
                await registry.aclose()

        assert asyncio.run(main()) is False

    def test_background_lag_check_against_a_server_that_never_answers(self, silent_port: int) -> None:
        registry = silent_replica(silent_port, "psycopg", replica_max_lag_seconds=5)
        registry.configure_routing(probe_timeout=1, lag_check_interval=0.1)
        deadline = time.monotonic() + 30
        while registry.replica_status()["replica"].up and time.monotonic() < deadline:
            registry.reader("primary")  # a due lag check starts in a thread of its own
            time.sleep(0.05)
        status = registry.replica_status()["replica"]
        assert status.up is False
        assert status.reason == "TimeoutError: no answer within 1 s"
        within(30, registry.close)

    def test_async_background_lag_check_against_a_server_that_never_answers(self, silent_port: int) -> None:
        registry = silent_replica(silent_port, "asyncpg", replica_max_lag_seconds=5)
        registry.configure_routing(probe_timeout=1, lag_check_interval=0.1)

        async def main() -> str | None:
            try:
                deadline = time.monotonic() + 30
                while registry.replica_status()["replica"].up and time.monotonic() < deadline:
                    registry.async_reader("primary")  # a due lag check starts as a task of this loop
                    await asyncio.sleep(0.05)
                return registry.replica_status()["replica"].reason
            finally:
                await asyncio.wait_for(registry.aclose(), 30)

        reason = asyncio.run(main())
        assert reason is not None
        assert reason.startswith("TimeoutError"), reason


async def pooled_backend(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        pid: int = (await conn.exec_driver_sql("select pg_backend_pid()")).scalar_one()
    return pid  # the connection is back in the pool


class TestClose:
    def test_aclose_when_a_database_has_stopped_answering(self, pg: PostgresServer) -> None:
        # Before: asyncpg's close awaited the frozen backend forever.
        registry = Registry.from_dict({"databases": {"p": {"url": pg.url_string("postgresql+asyncpg")}}}, environ={})

        async def main() -> CloseError:
            pid = await pooled_backend(registry.get_async("p"))
            with frozen(pid), pytest.raises(CloseError) as info:
                await asyncio.wait_for(registry.aclose(timeout=1), 30)
            return info.value

        error = asyncio.run(main())
        assert error.names == ["p (async)"]
        (cause,) = error.exceptions
        assert isinstance(cause, TimeoutError)
        assert str(cause) == (
            "its connections did not close within 1 s (a database that stopped answering?); "
            "they were dropped without closing"
        )
        assert registry.closed

    def test_lifespan_shutdown_when_a_database_has_stopped_answering(self, pg: PostgresServer) -> None:
        registry = Registry.from_dict({"databases": {"p": {"url": pg.url_string("postgresql+asyncpg")}}}, environ={})

        async def main() -> None:
            lifespan = registry.lifespan(None)
            await lifespan.__aenter__()  # startup
            pid = await pooled_backend(registry.get_async("p"))
            with frozen(pid), pytest.raises(CloseError):
                await asyncio.wait_for(lifespan.__aexit__(None, None, None), 60)  # shutdown: the default 10 s

        asyncio.run(main())
        assert registry.closed

    def test_close_with_an_async_engine_of_a_running_loop_in_another_thread(self, pg: PostgresServer) -> None:
        registry = Registry.from_dict({"databases": {"p": {"url": pg.url_string("postgresql+asyncpg")}}}, environ={})
        loop = asyncio.new_event_loop()
        runner = threading.Thread(target=loop.run_forever, daemon=True)
        runner.start()
        try:
            pid = asyncio.run_coroutine_threadsafe(pooled_backend(registry.get_async("p")), loop).result(30)
            with frozen(pid), pytest.raises(CloseError) as info:
                within(30, lambda: registry.close(timeout=1))
            assert isinstance(info.value.exceptions[0], TimeoutError)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            runner.join(10)
            loop.close()

    def test_sync_close_with_a_frozen_backend(self, pg: PostgresServer) -> None:
        registry = Registry.from_dict({"databases": {"p": {"url": pg.url_string("postgresql+psycopg")}}}, environ={})
        engine: Engine = registry.get("p")
        with engine.connect() as conn:
            pid = conn.exec_driver_sql("select pg_backend_pid()").scalar_one()
        with frozen(pid):
            within(30, lambda: registry.close(timeout=1))  # libpq's close sends Terminate and does not wait
        assert registry.closed

    def test_close_timeout_is_checked(self) -> None:
        registry = Registry.from_dict({"databases": {"a": {"url": "sqlite://"}}}, environ={})
        with pytest.raises(ValueError, match="timeout must be a finite number of seconds, got inf"):
            registry.close(timeout=math.inf)
        registry.close()


def test_run_all_within_leaves_a_call_that_does_not_end_behind() -> None:
    release = threading.Event()
    done: list[str] = []
    calls: dict[str, Callable[[], object]] = {"quick": lambda: done.append("quick"), "stuck": release.wait}
    within(30, lambda: run_all_within(calls, 0.2, "test"))
    try:
        assert done == ["quick"]
        (stuck,) = [t for t in threading.enumerate() if t.name == "dbregistry-test-stuck"]
        assert stuck.daemon
        assert stuck.is_alive()
    finally:
        release.set()
