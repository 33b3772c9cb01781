"""Prometheus metrics for every pool and replica of a registry: the OpenTelemetry figures, with Prometheus names.

>>> import prometheus_client
>>> from dbregistry import Registry
>>> from dbregistry.prometheus import RegistryCollector
>>> registry = Registry.from_dict({"databases": {"dev": {"url": "sqlite://"}}}, environ={})
>>> metrics = prometheus_client.CollectorRegistry()
>>> metrics.register(RegistryCollector(registry))
>>> b"db_client_connection_timeouts_total" in prometheus_client.generate_latest(metrics)
True
>>> registry.close()

Needs ``pip install 'dbregistry[prometheus]'``. Names follow the
OpenTelemetry-to-Prometheus mapping (dots to underscores, ``_seconds`` on the
histograms, ``_total`` on counters); labels are ``pool_name``, ``state``,
``mode`` and ``direct`` (``"true"`` / ``"false"``). See the README's "Metrics"
section for the table.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Final

from ._metrics import KINDS, Histogram, PoolMeter, meters_of

try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
    from prometheus_client.registry import Collector
except ImportError as e:  # pragma: no cover - the extra is installed in the tests
    raise ImportError("prometheus_client is not installed, run `pip install 'dbregistry[prometheus]'`") from e

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from ._registry import Registry
    from ._routing import ReplicaStatus

__all__ = ["RegistryCollector"]

_POOL_LABELS: Final = ("pool_name", "mode", "direct")
_REPLICA_LABELS: Final = ("pool_name", "primary")

_HELP: Final = {
    "create_time": "The time it took to create a new connection.",
    "wait_time": "The time it took to obtain an open connection from the pool.",
    "use_time": "The time between borrowing a connection and returning it to the pool.",
}


class RegistryCollector(Collector):
    """A Prometheus collector of the pool, routing and health figures of every engine of a registry.

    >>> prometheus_client.REGISTRY.register(RegistryCollector(registry))  # doctest: +SKIP

    Engines built before and after the collector was created are covered. The
    histograms count samples from the collector's creation on; the gauges and
    counters read their figures at each scrape. Register one collector per
    registry into a `CollectorRegistry`: two would declare the same names.
    """

    def __init__(self, registry: Registry) -> None:
        self._registry = weakref.ref(registry)
        self._meters = meters_of(registry)
        self._meters.add_pool_listener(_keep_histograms)
        self._meters.health.keep_histograms()

    def collect(self) -> Iterator[Metric]:
        registry = self._registry()
        if registry is None or registry.closed:
            return self.describe()
        families = _families(
            self._meters.pools(), registry.replica_status(), registry.read_fallbacks(), self._meters.health.snapshot()
        )
        return itertools.chain(families, [_read_your_writes(registry.read_your_writes_fallbacks())])

    def describe(self) -> Iterator[Metric]:
        """The families without samples: registering a second collector into one `CollectorRegistry` fails."""
        return itertools.chain(_families([], {}, {}, {}), [_read_your_writes({})])


def _read_your_writes(counts: Mapping[str, int]) -> Metric:
    family = CounterMetricFamily(
        "dbregistry_routing_read_your_writes_fallbacks",
        "Reads of a database with read_your_writes sent to it because no replica had replayed the context's writes.",
        labels=["pool_name"],
    )
    for name, count in counts.items():
        family.add_metric([name], count)
    return family


def _families(
    pools: Iterable[PoolMeter],
    statuses: Mapping[str, ReplicaStatus],
    fallbacks: Mapping[str, int],
    health_latency: Mapping[tuple[str, str], Histogram],
) -> Iterator[Metric]:
    yield from _pool_metrics(pools)
    up = GaugeMetricFamily(
        "dbregistry_replica_up",
        "1 while reads may go to the replica, 0 while routing skips it (down, or lagging too far).",
        labels=_REPLICA_LABELS,
    )
    lag = GaugeMetricFamily(
        "dbregistry_replica_lag_seconds",
        "The replica's replay lag at its last lag check (replicas declaring replica_max_lag_seconds).",
        labels=_REPLICA_LABELS,
    )
    for name, status in statuses.items():
        up.add_metric([name, status.primary], int(status.up))
        if status.lag_seconds is not None:
            lag.add_metric([name, status.primary], status.lag_seconds)
    fell_back = CounterMetricFamily(
        "dbregistry_routing_fallbacks",
        "reader() calls of a database with replicas that got the database itself, no replica being healthy.",
        labels=["pool_name"],
    )
    for name, count in fallbacks.items():
        fell_back.add_metric([name], count)
    health = HistogramMetricFamily(
        "dbregistry_health_latency_seconds",
        "Time to check out a connection and run a health check ping.",
        labels=["pool_name", "mode"],
    )
    for (name, mode), histogram in health_latency.items():
        buckets, total = histogram.snapshot()
        health.add_metric([name, mode], buckets, total)
    yield from (up, lag, fell_back, health)


def _keep_histograms(pool: PoolMeter) -> None:
    pool.keep_histograms()


def _labels(pool: PoolMeter) -> list[str]:
    return [pool.name, pool.mode, "true" if pool.direct else "false"]


def _pool_metrics(pools: Iterable[PoolMeter]) -> Iterator[Metric]:
    count = GaugeMetricFamily(
        "db_client_connection_count",
        "The number of connections that are currently in state described by the state attribute.",
        labels=["pool_name", "state", "mode", "direct"],
    )
    gauges = {
        "max": GaugeMetricFamily(
            "db_client_connection_max", "The maximum number of open connections allowed.", labels=_POOL_LABELS
        ),
        "idle_max": GaugeMetricFamily(
            "db_client_connection_idle_max", "The maximum number of idle open connections allowed.", labels=_POOL_LABELS
        ),
        "idle_min": GaugeMetricFamily(
            "db_client_connection_idle_min", "The minimum number of idle open connections allowed.", labels=_POOL_LABELS
        ),
        "pending": GaugeMetricFamily(
            "db_client_connection_pending_requests",
            "The number of current pending requests for an open connection.",
            labels=_POOL_LABELS,
        ),
    }
    timeouts = CounterMetricFamily(
        "db_client_connection_timeouts",
        "The number of connection timeouts that have occurred trying to obtain a connection from the pool.",
        labels=_POOL_LABELS,
    )
    histograms = {
        kind: HistogramMetricFamily(f"db_client_connection_{kind}_seconds", _HELP[kind], labels=_POOL_LABELS)
        for kind in KINDS
    }
    for pool in pools:
        figures = pool.figures()
        labels = _labels(pool)
        name, mode, direct = labels
        if figures.used is not None and figures.idle is not None:
            count.add_metric([name, "idle", mode, direct], figures.idle)
            count.add_metric([name, "used", mode, direct], figures.used)
        for field, family in gauges.items():
            value = getattr(figures, field)
            if value is not None:
                family.add_metric(labels, value)
        timeouts.add_metric(labels, figures.timeouts)
        kept = pool.histograms
        if kept is not None:
            for kind, histogram in histograms.items():
                buckets, total = kept[kind].snapshot()
                histogram.add_metric(labels, buckets, total)
    yield count
    yield from gauges.values()
    yield timeouts
    yield from histograms.values()
