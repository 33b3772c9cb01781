"""dbregistry.prometheus against the real server: scraped through the FastAPI example and parsed back."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
from example_app import load_example
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, NumberDataPoint
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from servers import PASSWORD, PostgresServer, ReplicaServer, free_port
from sqlalchemy import text
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from dbregistry import Registry
from dbregistry.opentelemetry import instrument
from dbregistry.prometheus import RegistryCollector

with warnings.catch_warnings():
    # As in test_fastapi_example: Starlette 1.x warns once, at import, that it prefers httpx2.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fastapi_app.py"

NAMES = {
    "db_client_connection_count",
    "db_client_connection_max",
    "db_client_connection_idle_max",
    "db_client_connection_idle_min",
    "db_client_connection_pending_requests",
    "db_client_connection_timeouts",
    "db_client_connection_create_time_seconds",
    "db_client_connection_wait_time_seconds",
    "db_client_connection_use_time_seconds",
    "dbregistry_replica_up",
    "dbregistry_replica_lag_seconds",
    "dbregistry_routing_fallbacks",
    "dbregistry_routing_read_your_writes_fallbacks",
    "dbregistry_health_latency_seconds",
}


class Scrape:
    """One exposition, parsed: ``value(sample name, **labels)``."""

    def __init__(self, exposition: str) -> None:
        self.text = exposition
        self.families = {family.name: family for family in text_string_to_metric_families(exposition)}

    def samples(self, name: str, **labels: str) -> list[Any]:
        return [
            sample
            for family in self.families.values()
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        ]

    def value(self, name: str, **labels: str) -> float:
        found = self.samples(name, **labels)
        assert len(found) == 1, f"{name} {labels}: {found}"
        return float(found[0].value)


def scrape(metrics: CollectorRegistry) -> Scrape:
    return Scrape(generate_latest(metrics).decode())


def collector_registry(registry: Registry) -> CollectorRegistry:
    metrics = CollectorRegistry()
    metrics.register(RegistryCollector(registry))
    return metrics


# -- the FastAPI example's /metrics ---------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.replica
def test_the_fastapi_example_serves_metrics_of_its_own(pg: PostgresServer, pg_replica: ReplicaServer) -> None:
    example = load_example()
    registry = Registry.from_dict(
        {
            "default": "primary",
            "databases": {
                "primary": {"url": pg.url_string()},
                "replica": {"url": pg_replica.url_string(), "replica_of": "primary"},
            },
        },
        environ={},
    )
    example.create_app(registry)  # a first app: the second must not collide with it
    with TestClient(example.create_app(registry)) as client:
        pg_replica.wait_for_replay()  # the app's startup created its table on the primary
        assert client.get("/visits/count").status_code == 200
        assert client.get("/health/db").status_code == 200
        response = client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        metrics = Scrape(response.text)
    assert set(metrics.families) == NAMES
    # The read went to the replica's async pool, and its connection is back in it.
    labels = {"pool_name": "replica", "mode": "async", "direct": "false"}
    assert metrics.value("db_client_connection_count", state="idle", **labels) == 1
    assert metrics.value("db_client_connection_count", state="used", **labels) == 0
    assert metrics.value("db_client_connection_use_time_seconds_count", **labels) >= 1
    assert metrics.value("db_client_connection_timeouts_total", **labels) == 0
    assert metrics.value("dbregistry_replica_up", pool_name="replica", primary="primary") == 1
    for name in ("primary", "replica"):
        assert metrics.value("dbregistry_health_latency_seconds_count", pool_name=name, mode="async") == 1
    assert PASSWORD not in response.text
    assert "S3cret" not in response.text


# -- the collector ---------------------------------------------------------------------------


@pytest.mark.postgres
def test_held_connections_timeouts_and_times(pg: PostgresServer) -> None:
    registry = Registry.from_dict(
        {"databases": {"main": {"url": pg.url_string(), "pool_size": 2, "max_overflow": 0, "pool_timeout": 0.2}}},
        environ={},
    )
    with registry:
        engine = registry.get("main")
        held = [engine.connect() for _ in range(2)]  # before the collector exists
        metrics = collector_registry(registry)
        with pytest.raises(PoolTimeoutError):
            engine.connect()
        labels = {"pool_name": "main", "mode": "sync", "direct": "false"}
        found = scrape(metrics)
        assert found.value("db_client_connection_count", state="used", **labels) == 2
        assert found.value("db_client_connection_count", state="idle", **labels) == 0
        assert found.value("db_client_connection_max", **labels) == 2
        assert found.value("db_client_connection_idle_max", **labels) == 2
        assert found.value("db_client_connection_idle_min", **labels) == 0
        assert found.value("db_client_connection_pending_requests", **labels) == 0
        assert found.value("db_client_connection_timeouts_total", **labels) == 1
        held[0].execute(text("select pg_sleep(0.2)"))
        for conn in held:
            conn.close()
        found = scrape(metrics)
        assert found.value("db_client_connection_count", state="idle", **labels) == 2
        assert found.value("db_client_connection_use_time_seconds_count", **labels) == 0  # checked out before
        with engine.connect() as conn:
            conn.execute(text("select pg_sleep(0.2)"))
        found = scrape(metrics)
        assert found.value("db_client_connection_use_time_seconds_count", **labels) == 1
        assert found.value("db_client_connection_use_time_seconds_sum", **labels) >= 0.2
        assert found.value("db_client_connection_use_time_seconds_bucket", le="0.1", **labels) == 0
        assert found.value("db_client_connection_use_time_seconds_bucket", le="+Inf", **labels) == 1
        assert found.value("db_client_connection_wait_time_seconds_count", **labels) == 1
        assert PASSWORD not in found.text


@pytest.mark.postgres
def test_engines_built_after_the_collector_and_async_ones(pg: PostgresServer) -> None:
    registry = Registry.from_dict({"databases": {"main": {"url": pg.url_string()}}}, environ={})
    metrics = collector_registry(registry)
    with registry.get("main").connect():
        found = scrape(metrics)
    assert found.value("db_client_connection_count", pool_name="main", state="used", mode="sync") == 1
    assert found.value("db_client_connection_create_time_seconds_count", pool_name="main", mode="sync") == 1
    registry.close()
    assert scrape(metrics).samples("db_client_connection_count") == []  # a closed registry reports no pool


@pytest.mark.postgres
def test_both_exporters_read_the_same_figures(pg: PostgresServer) -> None:
    registry = Registry.from_dict({"databases": {"main": {"url": pg.url_string(), "pool_size": 5}}}, environ={})
    reader = InMemoryMetricReader()
    with registry:
        instrument(registry, MeterProvider(metric_readers=[reader]))
        metrics = collector_registry(registry)
        engine = registry.get("main")
        held = [engine.connect() for _ in range(3)]
        held.pop().close()
        found = scrape(metrics)
        data = reader.get_metrics_data()
        assert data is not None
        otel = {
            (metric.name, (point.attributes or {}).get("db.client.connection.state")): point
            for scope in data.resource_metrics[0].scope_metrics
            for metric in scope.metrics
            for point in metric.data.data_points
        }
        for state in ("used", "idle"):
            count = otel["db.client.connection.count", state]
            assert isinstance(count, NumberDataPoint)
            assert count.value == found.value("db_client_connection_count", state=state)
        wait_time = otel["db.client.connection.wait_time", None]
        assert isinstance(wait_time, HistogramDataPoint)
        assert wait_time.count == found.value("db_client_connection_wait_time_seconds_count")
        for conn in held:
            conn.close()
        reader.shutdown()


@pytest.mark.postgres
def test_routing_fallbacks_and_a_replica_down(pg: PostgresServer) -> None:
    refused = pg.url().set(port=free_port()).render_as_string(hide_password=False)
    registry = Registry.from_dict(
        {"databases": {"primary": {"url": pg.url_string()}, "gone": {"url": refused, "replica_of": "primary"}}},
        environ={},
    )
    with registry:
        metrics = collector_registry(registry)
        registry.check_replicas()
        registry.reader("primary")
        registry.reader("primary")
        found = scrape(metrics)
    assert found.value("dbregistry_replica_up", pool_name="gone", primary="primary") == 0
    assert found.value("dbregistry_routing_fallbacks_total", pool_name="primary") == 2
    assert PASSWORD not in found.text
    assert found.samples("dbregistry_replica_lag_seconds") == []


def test_one_collector_per_registry_into_one_collector_registry() -> None:
    registry = Registry.from_dict({"databases": {"d": {"url": "sqlite://"}}}, environ={})
    with registry:
        metrics = collector_registry(registry)
        with pytest.raises(ValueError, match="Duplicated timeseries in CollectorRegistry"):
            metrics.register(RegistryCollector(registry))
