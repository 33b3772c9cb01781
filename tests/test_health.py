"""registry.health(), ahealth() and stats(): on SQLite, the real PostgreSQL, its replica, and a server that hangs."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from pathlib import Path

import pytest
from servers import PASSWORD, PostgresServer, ReplicaServer, silent_server
from sqlalchemy import text

from dbregistry import HealthReport, PoolStats, Registry, RegistryClosedError
from dbregistry._health import describe_error

WRONG_PASSWORD = "Wr0ng-Pw-health-93"


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def sqlite_registry(tmp_path: Path) -> Registry:
    return Registry.from_dict(
        {
            "databases": {
                "file": {"url": f"sqlite:///{tmp_path / 'a.db'}", "pool_size": 2, "max_overflow": 1},
                "null": {"url": f"sqlite:///{tmp_path / 'b.db'}", "pool_class": "NullPool"},
                "memory": {"url": "sqlite://", "pool_class": "StaticPool"},
            }
        },
        environ={},
    )


class TestSqlite:
    def test_every_database_is_up(self, tmp_path: Path) -> None:
        registry = sqlite_registry(tmp_path)
        reports = registry.health(timeout=2.0)
        assert list(reports) == ["file", "null", "memory"]
        for report in reports.values():
            assert isinstance(report, HealthReport)
            assert report.status == "up"
            assert report.ok
            assert report.error is None
            assert report.latency_ms is not None
            assert 0 <= report.latency_ms < 2000
            assert report.server_version is not None
            assert report.in_recovery is None
            assert report.replay_lag_s is None
        assert reports["file"].pool == PoolStats(size=2, checked_out=0, overflow=-1, checked_in=1)
        assert reports["null"].pool == PoolStats(0, 0, 0, 0)
        registry.close()

    def test_async_every_database_is_up(self, tmp_path: Path) -> None:
        registry = sqlite_registry(tmp_path)

        async def main() -> dict[str, HealthReport]:
            try:
                return await registry.ahealth(timeout=2.0)
            finally:
                await registry.aclose()

        reports = asyncio.run(main())
        assert {name: r.status for name, r in reports.items()} == {"file": "up", "null": "up", "memory": "up"}

    def test_names_selects_and_checks(self, tmp_path: Path) -> None:
        registry = sqlite_registry(tmp_path)
        assert list(registry.health(names=["memory"])) == ["memory"]
        with pytest.raises(KeyError, match="did you mean 'memory'"):
            registry.health(names=["memroy"])
        with pytest.raises(ValueError, match="timeout must be a positive number"):
            registry.health(timeout=0)
        registry.close()
        with pytest.raises(RegistryClosedError):
            registry.health()

    def test_as_dict_is_json_ready(self, tmp_path: Path) -> None:
        registry = sqlite_registry(tmp_path)
        data = registry.health()["file"].as_dict()
        assert data["status"] == "up"
        assert data["pool"] == {"size": 2, "checked_out": 0, "overflow": -1, "checked_in": 1}
        registry.close()

    def test_a_driver_that_is_not_installed_is_down(self) -> None:
        registry = Registry.from_dict({"databases": {"m": {"url": "mysql+mysqldb://u:Sq1-pw@h/db"}}}, environ={})
        report = registry.health(timeout=1.0)["m"]
        assert report.status == "down"
        assert report.error is not None
        assert "not installed" in report.error
        assert "Sq1-pw" not in report.error
        registry.close()


class TestStats:
    def test_figures_of_built_engines_only(self, tmp_path: Path) -> None:
        registry = sqlite_registry(tmp_path)
        assert registry.stats() == {}
        engine = registry.get("file")
        first, second = engine.connect(), engine.connect()
        assert registry.stats() == {"file": PoolStats(size=2, checked_out=2, overflow=0, checked_in=0)}
        third = engine.connect()
        assert registry.stats()["file"] == PoolStats(size=2, checked_out=3, overflow=1, checked_in=0)
        for conn in (first, second, third):
            conn.close()
        # the overflow connection is closed on its way back: the pool keeps pool_size
        assert registry.stats()["file"] == PoolStats(size=2, checked_out=0, overflow=0, checked_in=2)
        registry.get("null")
        registry.get("memory")
        assert list(registry.stats()) == ["file", "null", "memory"]
        assert registry.stats()["null"] == PoolStats(0, 0, 0, 0)
        registry.close()
        assert registry.stats() == {}

    def test_sync_and_async_engines_of_one_database_add_up(self, tmp_path: Path) -> None:
        registry = sqlite_registry(tmp_path)

        async def main() -> PoolStats:
            sync_conn = registry.get("file").connect()
            async with registry.get_async("file").connect() as conn:
                await conn.execute(text("select 1"))
                figures = registry.stats()["file"]
            sync_conn.close()
            await registry.aclose()
            return figures

        assert asyncio.run(main()) == PoolStats(size=4, checked_out=2, overflow=-2, checked_in=0)


def test_describe_error_masks_urls_and_passwords() -> None:
    error = RuntimeError(f"failed: postgresql://app:{PASSWORD}@db/app and password={WRONG_PASSWORD} and {PASSWORD}")
    message = describe_error(error, [PASSWORD])
    assert PASSWORD not in message
    assert WRONG_PASSWORD not in message
    assert message.startswith("RuntimeError: failed: postgresql://app:***@db/app")
    encoded = "pg-S3cret%40%2F%3A%25pw"
    assert encoded not in describe_error(RuntimeError(f"at postgresql://app:{encoded}@db/x"), [PASSWORD])


@pytest.mark.postgres
class TestPostgres:
    def test_up_with_version_and_pool(self, pg: PostgresServer) -> None:
        registry = Registry.from_dict({"databases": {"primary": {"url": pg.url_string(), "pool_size": 3}}}, environ={})
        report = registry.health(timeout=5.0)["primary"]
        assert report.status == "up", report.error
        assert report.server_version is not None
        assert report.server_version.startswith("15.")
        assert report.pool == PoolStats(size=3, checked_out=0, overflow=-2, checked_in=1)
        assert report.in_recovery is None  # not declared a replica
        registry.close()
        pg.wait_for_connections(0)

    def test_wrong_password_is_down_and_never_shown(self, pg: PostgresServer) -> None:
        url = pg.url().set(password=WRONG_PASSWORD).render_as_string(hide_password=False)
        registry = Registry.from_dict({"databases": {"bad": {"url": url}}}, environ={})
        reports = registry.health(timeout=5.0)
        areports = asyncio.run(_ahealth_and_close(registry, 5.0))
        for report in (reports["bad"], areports["bad"]):
            assert report.status == "down"
            assert report.error is not None
            assert "password authentication failed" in report.error
            assert WRONG_PASSWORD not in report.error
            assert PASSWORD not in report.error
            assert report.latency_ms is None

    def test_refused_is_down(self, pg: PostgresServer) -> None:
        url = pg.url().set(port=closed_port()).render_as_string(hide_password=False)
        registry = Registry.from_dict({"databases": {"gone": {"url": url}}}, environ={})
        report = registry.health(timeout=5.0)["gone"]
        assert report.status == "down"
        assert report.error is not None
        assert "refused" in report.error.lower()
        assert PASSWORD not in report.error
        registry.close()

    def test_a_server_restart_is_not_reported_down(self, pg: PostgresServer) -> None:
        """A pooled connection the server dropped is retried once, so the ping says what the server says."""
        registry = Registry.from_dict({"databases": {"primary": {"url": pg.url_string()}}}, environ={})
        assert registry.health()["primary"].status == "up"
        pg.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app'")
        pg.wait_for_connections(0)
        assert registry.health()["primary"].status == "up"
        registry.close()

    def test_hanging_server_times_out_within_the_timeout(self, pg: PostgresServer) -> None:
        with silent_server() as port:
            hanging = pg.url().set(port=port).render_as_string(hide_password=False)
            registry = Registry.from_dict(
                {"databases": {"primary": {"url": pg.url_string()}, "hangs": {"url": hanging}}}, environ={}
            )
            started = time.monotonic()
            reports = asyncio.run(_ahealth_and_close(registry, 1.0))
            elapsed = time.monotonic() - started
            assert reports["primary"].status == "up", reports["primary"].error
            assert reports["hangs"].status == "timeout"
            assert reports["hangs"].error == "no answer within 1 s"
            assert reports["hangs"].latency_ms is None
            # It waited for the timeout, and a hang would take the pytest timeout: the upper bound
            # guards against waiting without bound, not speed (a loaded 2-core machine is slow).
            assert 0.9 < elapsed < 30

    def test_hanging_server_times_out_sync(self, pg: PostgresServer) -> None:
        with silent_server() as port:
            hanging = pg.url().set(port=port).render_as_string(hide_password=False)
            registry = Registry.from_dict(
                {"databases": {"primary": {"url": pg.url_string()}, "hangs": {"url": hanging}}}, environ={}
            )
            started = time.monotonic()
            reports = registry.health(timeout=1.0)
            elapsed = time.monotonic() - started
            assert reports["primary"].status == "up", reports["primary"].error
            assert reports["hangs"].status == "timeout"
            assert 0.9 < elapsed < 30  # waited for the timeout; the upper bound only catches a hang
            registry.close()

    def test_ahealth_takes_the_slowest_not_the_sum(self, pg: PostgresServer) -> None:
        count, timeout = 8, 1.0
        with contextlib.ExitStack() as stack:
            ports = [stack.enter_context(silent_server()) for _ in range(count)]
            databases = {
                f"hangs_{i}": {"url": pg.url().set(port=port).render_as_string(hide_password=False)}
                for i, port in enumerate(ports)
            }
            registry = Registry.from_dict({"databases": databases}, environ={})
            started = time.monotonic()
            reports = asyncio.run(_ahealth_and_close(registry, timeout))
            elapsed = time.monotonic() - started
        assert [r.status for r in reports.values()] == ["timeout"] * count
        # Pinging one after the other cannot take less than count x timeout (8 s), however fast the
        # machine; at the same time it takes about one timeout, so a loaded machine has 7 s to spare.
        assert elapsed < count * timeout

    def test_async_up(self, pg: PostgresServer) -> None:
        registry = Registry.from_dict({"databases": {"primary": {"url": pg.url_string()}}}, environ={})
        report = asyncio.run(_ahealth_and_close(registry, 5.0))["primary"]
        assert report.status == "up", report.error
        assert report.server_version is not None
        assert report.pool is not None
        assert report.pool.checked_in == 1
        pg.wait_for_connections(0)


@pytest.mark.replica
def test_replica_reports_recovery_and_lag(pg: PostgresServer, pg_replica: ReplicaServer) -> None:
    registry = Registry.from_dict(
        {
            "databases": {
                "primary": {"url": pg.url_string()},
                "replica": {"url": pg_replica.url_string(), "replica_of": "primary"},
            }
        },
        environ={},
    )
    for reports in (registry.health(timeout=5.0), asyncio.run(_ahealth_and_close(registry, 5.0))):
        assert reports["replica"].status == "up", reports["replica"].error
        assert reports["replica"].in_recovery is True
        assert reports["replica"].replay_lag_s is not None
        assert reports["replica"].replay_lag_s >= 0
        assert reports["primary"].in_recovery is None
    pg.wait_for_connections(0)
    pg_replica.wait_for_connections(0)


async def _ahealth_and_close(registry: Registry, timeout: float) -> dict[str, HealthReport]:
    try:
        return await registry.ahealth(timeout=timeout)
    finally:
        await registry.aclose()
