"""dbregistry.opentelemetry against the real server, read back with the SDK's InMemoryMetricReader."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from servers import PASSWORD, PgBouncer, PostgresServer, ReplicaServer, free_port
from sqlalchemy import text
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from dbregistry import Registry
from dbregistry.opentelemetry import instrument

POOL = "db.client.connection.pool.name"


class Points:
    """The data points of one collection: ``points[metric name]`` is a list of (attributes, point)."""

    def __init__(self, reader: InMemoryMetricReader) -> None:
        data = reader.get_metrics_data()
        self.json = data.to_json() if data is not None else ""
        self.metrics: dict[str, Any] = {}
        self.points: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    self.metrics[metric.name] = metric
                    self.points[metric.name] = [(dict(p.attributes or {}), p) for p in metric.data.data_points]

    def find(self, name: str, **attributes: Any) -> list[Any]:
        wanted = {_key(k): v for k, v in attributes.items()}
        return [p for attrs, p in self.points.get(name, []) if all(attrs.get(k) == v for k, v in wanted.items())]

    def value(self, name: str, **attributes: Any) -> Any:
        found = self.find(name, **attributes)
        assert len(found) == 1, f"{name} {attributes}: {found}"
        return found[0].value

    def histogram(self, name: str, **attributes: Any) -> Any:
        found = self.find(name, **attributes)
        assert len(found) == 1, f"{name} {attributes}: {found}"
        return found[0]


def _key(name: str) -> str:
    return {"pool": POOL, "state": "db.client.connection.state", "mode": "dbregistry.mode"}.get(
        name, "dbregistry.direct" if name == "direct" else name
    )


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    yield reader
    reader.shutdown()


def provider(reader: InMemoryMetricReader) -> MeterProvider:
    return MeterProvider(metric_readers=[reader])


def registry_of(pg: PostgresServer, **options: Any) -> Registry:
    return Registry.from_dict(
        {"default": "main", "databases": {"main": {"url": pg.url_string(), **options}}}, environ={}
    )


# -- nothing is loaded or attached before it is asked for -----------------------------------


def test_import_dbregistry_loads_neither_exporter_library() -> None:
    code = (
        "import sys, dbregistry\n"
        "r = dbregistry.Registry.from_dict({'databases': {'d': {'url': 'sqlite://'}}}, environ={})\n"
        "r.get('d').connect().close(); r.health(); r.close()\n"
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry', 'prometheus_client'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.postgres
def test_an_uninstrumented_engine_runs_no_extra_listener(pg: PostgresServer, reader: InMemoryMetricReader) -> None:
    with registry_of(pg) as registry:
        engine = registry.get()
        with engine.connect():
            pass
        assert "raw_connection" not in engine.__dict__
        assert not engine.pool.dispatch.checkout
        assert not engine.pool.dispatch.checkin
        instrument(registry, provider(reader))
        assert "raw_connection" in engine.__dict__
        assert engine.pool.dispatch.checkout
        assert engine.pool.dispatch.checkin


# -- pool state ------------------------------------------------------------------------------


@pytest.mark.postgres
def test_connections_held_before_instrumenting_count_as_used(pg: PostgresServer, reader: InMemoryMetricReader) -> None:
    with registry_of(pg, pool_size=5) as registry:
        engine = registry.get()
        held = [engine.connect() for _ in range(3)]
        held[0].exec_driver_sql("select 1")
        instrument(registry, provider(reader))
        points = Points(reader)
        assert points.value("db.client.connection.count", pool="main", state="used", mode="sync") == 3
        assert points.value("db.client.connection.count", pool="main", state="idle", mode="sync") == 0
        held.pop().close()
        points = Points(reader)
        assert points.value("db.client.connection.count", pool="main", state="used", mode="sync") == 2
        assert points.value("db.client.connection.count", pool="main", state="idle", mode="sync") == 1
        assert points.value("db.client.connection.max", pool="main") == 15  # pool_size 5 + SQLAlchemy's max_overflow 10
        assert points.value("db.client.connection.idle.max", pool="main") == 5
        assert points.value("db.client.connection.idle.min", pool="main") == 0
        assert points.value("db.client.connection.pending_requests", pool="main") == 0
        for conn in held:
            conn.close()


@pytest.mark.postgres
def test_every_data_point_names_its_pool_mode_and_directness(pg: PostgresServer, reader: InMemoryMetricReader) -> None:
    with registry_of(pg) as registry:
        instrument(registry, provider(reader))
        registry.get().connect().close()  # the default database, asked for without its name
        points = Points(reader)
        for name, found in points.points.items():
            if name.startswith("db.client."):
                for attributes, _ in found:
                    assert attributes[POOL] == "main"
                    assert attributes["dbregistry.mode"] == "sync"
                    assert attributes["dbregistry.direct"] is False


@pytest.mark.postgres
def test_an_unbounded_pool_reports_no_max(pg: PostgresServer, reader: InMemoryMetricReader) -> None:
    with registry_of(pg, pool_size=2, max_overflow=-1) as registry:
        instrument(registry, provider(reader))
        registry.get().connect().close()
        points = Points(reader)
        assert points.find("db.client.connection.max") == []
        assert points.value("db.client.connection.idle.max", pool="main") == 2


@pytest.mark.postgres
def test_a_null_pool_reports_times_but_no_state(pg: PostgresServer, reader: InMemoryMetricReader) -> None:
    with registry_of(pg, pool_class="NullPool") as registry:
        instrument(registry, provider(reader))
        with registry.get().connect() as conn:
            conn.exec_driver_sql("select 1")
        points = Points(reader)
        for name in ("db.client.connection.count", "db.client.connection.max", "db.client.connection.idle.max"):
            assert points.find(name) == [], name
        assert points.histogram("db.client.connection.create_time", pool="main").count == 1
        assert points.histogram("db.client.connection.use_time", pool="main").count == 1


@pytest.mark.postgres
def test_timeouts_count_each_exhausted_checkout(pg: PostgresServer, reader: InMemoryMetricReader) -> None:
    with registry_of(pg, pool_size=1, max_overflow=0, pool_timeout=0.2) as registry:
        instrument(registry, provider(reader))
        engine = registry.get()
        with engine.connect():
            for _ in range(2):
                with pytest.raises(PoolTimeoutError):
                    engine.connect()
        points = Points(reader)
        assert points.value("db.client.connection.timeouts", pool="main") == 2
        assert points.value("db.client.connection.max", pool="main") == 1
        assert points.metrics["db.client.connection.timeouts"].data.is_monotonic


@pytest.mark.postgres
def test_create_wait_and_use_time_one_sample_each(pg: PostgresServer, reader: InMemoryMetricReader) -> None:
    with registry_of(pg) as registry:
        instrument(registry, provider(reader))  # before the engine is built
        with registry.get().connect() as conn:
            conn.execute(text("select pg_sleep(0.2)"))
        points = Points(reader)
        create = points.histogram("db.client.connection.create_time", pool="main")
        wait = points.histogram("db.client.connection.wait_time", pool="main")
        use = points.histogram("db.client.connection.use_time", pool="main")
        assert (create.count, wait.count, use.count) == (1, 1, 1)
        assert 0 < create.sum < 10
        assert create.sum <= wait.sum < 10  # the wait included opening the connection
        assert 0.2 <= use.sum < 10
        for name in ("create_time", "wait_time", "use_time"):
            assert points.metrics[f"db.client.connection.{name}"].unit == "s"


@pytest.mark.postgres
def test_engines_built_after_instrumenting_are_covered(pg: PostgresServer, reader: InMemoryMetricReader) -> None:
    registry = Registry.from_dict(
        {"databases": {"a": {"url": pg.url_string()}, "b": {"url": pg.url_string()}}}, environ={}
    )
    with registry:
        registry.get("a").connect().close()
        instrument(registry, provider(reader))
        with registry.get("b").connect():
            points = Points(reader)
            assert points.value("db.client.connection.count", pool="b", state="used") == 1
            assert points.value("db.client.connection.count", pool="a", state="idle") == 1


@pytest.mark.postgres
def test_instrumenting_twice_for_one_provider_changes_nothing(pg: PostgresServer, reader: InMemoryMetricReader) -> None:
    meter_provider = provider(reader)
    with registry_of(pg) as registry:
        instrument(registry, meter_provider)
        instrument(registry, meter_provider)
        registry.get().connect().close()
        points = Points(reader)
        assert points.histogram("db.client.connection.wait_time", pool="main").count == 1


@pytest.mark.postgres
def test_async_engines(pg: PostgresServer, reader: InMemoryMetricReader) -> None:
    registry = registry_of(pg, pool_size=3)
    instrument(registry, provider(reader))

    async def main() -> Points:
        async with registry:
            engine = registry.get_async()
            first, second = engine.connect(), engine.connect()
            await first.start()
            await second.start()
            await first.execute(text("select pg_sleep(0.2)"))
            await first.close()
            points = Points(reader)
            await second.close()
            return points

    points = asyncio.run(main())
    assert points.value("db.client.connection.count", pool="main", mode="async", state="used") == 1
    assert points.value("db.client.connection.count", pool="main", mode="async", state="idle") == 1
    assert points.histogram("db.client.connection.create_time", mode="async").count == 2
    assert points.histogram("db.client.connection.use_time", mode="async").sum >= 0.2


@pytest.mark.postgres
@pytest.mark.pgbouncer
def test_the_direct_engine_has_a_series_of_its_own(
    pg: PostgresServer, pgbouncer: PgBouncer, reader: InMemoryMetricReader
) -> None:
    registry = Registry.from_dict(
        {"databases": {"main": {"url": pgbouncer.url_string(), "direct_url": pg.url_string()}}}, environ={}
    )
    with registry:
        instrument(registry, provider(reader))
        with registry.get("main").connect(), registry.get("main", direct=True).connect():
            points = Points(reader)
        assert points.value("db.client.connection.count", pool="main", state="used", direct=False) == 1
        assert points.value("db.client.connection.count", pool="main", state="used", direct=True) == 1


# -- routing and health ----------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.replica
def test_a_replica_marked_down_shows_in_the_routing_metrics(
    pg: PostgresServer, pg_replica: ReplicaServer, reader: InMemoryMetricReader
) -> None:
    refused = pg.url().set(port=free_port()).render_as_string(hide_password=False)
    registry = Registry.from_dict(
        {
            "databases": {
                "primary": {"url": pg.url_string()},
                "good": {"url": pg_replica.url_string(), "replica_of": "primary"},
                "other": {"url": pg.url_string()},
                "gone": {"url": refused, "replica_of": "other"},
            }
        },
        environ={},
    )
    with registry:
        instrument(registry, provider(reader))
        statuses = registry.check_replicas()
        assert (statuses["good"].up, statuses["gone"].up) == (True, False)
        for _ in range(3):
            registry.reader("other")
        registry.reader("primary")
        points = Points(reader)
        assert points.value("dbregistry.replica.up", pool="good", **{"dbregistry.primary": "primary"}) == 1
        assert points.value("dbregistry.replica.up", pool="gone", **{"dbregistry.primary": "other"}) == 0
        assert points.value("dbregistry.replica.lag", pool="good") >= 0
        assert points.find("dbregistry.replica.lag", pool="gone") == []
        assert points.value("dbregistry.routing.fallbacks", pool="other") == 3
        assert points.value("dbregistry.routing.fallbacks", pool="primary") == 0
        assert PASSWORD not in points.json


@pytest.mark.postgres
def test_health_check_latency_per_database(pg: PostgresServer, reader: InMemoryMetricReader) -> None:
    with registry_of(pg) as registry:
        instrument(registry, provider(reader))
        reports = registry.health(timeout=5)
        latency = Points(reader).histogram("dbregistry.health.latency", pool="main", mode="sync")
        assert latency.count == 1
        latency_ms = reports["main"].latency_ms
        assert latency_ms is not None
        assert latency.sum == pytest.approx(latency_ms / 1000)


@pytest.mark.postgres
def test_no_password_in_any_attribute_or_description(pg: PostgresServer, reader: InMemoryMetricReader) -> None:
    with registry_of(pg, pool_size=1, max_overflow=0, pool_timeout=0.1) as registry:
        instrument(registry, provider(reader))
        engine = registry.get()
        with engine.connect(), pytest.raises(PoolTimeoutError):
            engine.connect()
        registry.health(timeout=5)
        points = Points(reader)
    assert len(points.metrics) >= 10
    assert PASSWORD not in points.json
    for form in (PASSWORD, "S3cret"):
        for metric in points.metrics.values():
            assert form not in metric.description


def test_the_connect_listener_runs_first_so_create_time_is_the_driver_s_own() -> None:
    """SQLAlchemy initializes its dialect in a connect listener of its own: ours is inserted before it."""
    registry = Registry.from_dict({"databases": {"d": {"url": "sqlite://"}}}, environ={})
    with registry:
        reader = InMemoryMetricReader()
        instrument(registry, MeterProvider(metric_readers=[reader]))
        engine = registry.get("d")
        listeners = list(engine.pool.dispatch.connect)
        first: object = getattr(listeners[0], "__self__", None)  # a bound method: SQLAlchemy's or ours
        assert type(first).__name__ == "PoolMeter"
