"""Figure 11: what metrics cost per query, instrumented engines against uninstrumented ones in the same run."""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest

from dbregistry import Registry
from dbregistry.opentelemetry import instrument
from dbregistry.prometheus import RegistryCollector

from .common import POOL_FIELDS, Context, FigureResult, Target, compared, interleave
from .server import CONCURRENCY, SELECT_ONE, _interleave_async, async_throughput, sync_throughput

SIDES = ("plain", "again", "opentelemetry", "prometheus")


def _registries(url: str) -> tuple[dict[str, Registry], InMemoryMetricReader, CollectorRegistry]:
    """One registry per side, same declaration; two of them instrumented, as an application would."""
    registries = {
        side: Registry.from_dict({"databases": {"primary": {"url": url, **POOL_FIELDS}}}, environ={}) for side in SIDES
    }
    reader = InMemoryMetricReader()
    instrument(registries["opentelemetry"], MeterProvider(metric_readers=[reader]))
    metrics = CollectorRegistry()
    metrics.register(RegistryCollector(registries["prometheus"]))
    return registries, reader, metrics


def _rows(result: FigureResult, mode: str, samples: dict[str, list[float]]) -> None:
    label = f"{mode}, {CONCURRENCY}-way"
    for side, name in (("opentelemetry", "instrument()"), ("prometheus", "RegistryCollector")):
        result.rows.append(
            compared(f"{label}: {name}", samples[side], samples["plain"], "q/s", "uninstrumented", Target(">=", 0.97))
        )
    result.rows.append(
        compared(
            f"  A/A control: uninstrumented again, {label}",
            samples["again"],
            samples["plain"],
            "q/s",
            "uninstrumented",
            "info",
            note="two identical engines: the ratio shows what noise alone does",
        )
    )


def cpu_per_query(engine: Any, seconds: float) -> float:
    """Microseconds of this thread's CPU per query, sequentially: what the load of other processes does not skew."""
    count = 0
    cpu = time.thread_time()
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        with engine.connect() as conn:
            conn.execute(SELECT_ONE).scalar()
        count += 1
    return (time.thread_time() - cpu) / count * 1e6


def _cpu_rows(result: FigureResult, samples: dict[str, list[float]]) -> None:
    sides = (("opentelemetry", "instrument()"), ("prometheus", "RegistryCollector"), ("again", "uninstrumented again"))
    for side, name in sides:
        result.rows.append(
            compared(
                f"  sync, sequential, client CPU per query: {name}",
                samples[side],
                samples["plain"],
                "us",
                "uninstrumented",
                "info",
                note="thread_time per query; the server's CPU is not in it",
            )
        )


def _check_recorded(reader: InMemoryMetricReader, metrics: CollectorRegistry) -> int:
    """The number of wait_time samples both exporters saw: proof that the instrumented side measured."""
    data = reader.get_metrics_data()
    otel = sum(
        point.count
        for resource in (data.resource_metrics if data is not None else ())
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "db.client.connection.wait_time"
        for point in metric.data.data_points
        if isinstance(point, HistogramDataPoint)  # wait_time is a histogram
    )
    text = generate_latest(metrics).decode()
    prometheus = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("db_client_connection_wait_time_seconds_count")
    )
    return min(int(otel), int(prometheus))


def figure_11(ctx: Context) -> FigureResult:
    """SELECT 1 throughput, 32-way, through an instrumented engine (OpenTelemetry SDK; Prometheus collector)
    against an uninstrumented one with the same declaration, sync and async, interleaved rounds."""
    result = FigureResult()
    pg = ctx.postgres()
    seconds, repeats = ctx.budget.server_seconds, ctx.budget.server_repeats
    url = pg.url_string("postgresql")

    registries, reader, metrics = _registries(url)
    try:
        engines = {side: registry.get("primary") for side, registry in registries.items()}
        for engine in engines.values():
            sync_throughput(engine, seconds / 2, CONCURRENCY)  # fill the pools
        samples = interleave(
            {side: partial(sync_throughput, engine, seconds, CONCURRENCY) for side, engine in engines.items()},
            repeats,
        )
        _rows(result, "sync", samples)
        result.data["sync_samples_recorded"] = _check_recorded(reader, metrics)
        cpu = interleave(
            {side: partial(cpu_per_query, engine, seconds) for side, engine in engines.items()},
            repeats,
        )
        _cpu_rows(result, cpu)
    finally:
        for registry in registries.values():
            registry.close()
        reader.shutdown()

    async def run_async() -> None:
        registries, reader, metrics = _registries(url)
        try:
            engines: dict[str, Any] = {side: registry.get_async("primary") for side, registry in registries.items()}
            for engine in engines.values():
                await async_throughput(engine, seconds / 2, CONCURRENCY)
            samples = await _interleave_async(
                {side: partial(async_throughput, engine, seconds, CONCURRENCY) for side, engine in engines.items()},
                repeats,
            )
            _rows(result, "async", samples)
            result.data["async_samples_recorded"] = _check_recorded(reader, metrics)
        finally:
            for registry in registries.values():
                await registry.aclose()
            reader.shutdown()

    asyncio.run(run_async())
    result.notes.append(
        f"one checkout per query (connect, SELECT 1, return), {CONCURRENCY} threads / tasks; pool_size=10, "
        f"max_overflow=20; {repeats} interleaved rounds of {seconds:g} s per engine (uninstrumented, "
        f"uninstrumented again, OpenTelemetry SDK with an InMemoryMetricReader, Prometheus collector; order "
        f"rotated each round), medians; wait_time samples seen by both exporters: "
        f"sync {result.data['sync_samples_recorded']}, async {result.data['async_samples_recorded']}"
    )
    return result
