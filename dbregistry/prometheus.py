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

from ._metrics import DESCRIPTIONS, KINDS, Histogram, PoolMeter, meters_of

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
        return itertools.chain(
            families, [_per_database("read_your_writes_fallbacks", registry.read_your_writes_fallbacks())]
        )

    def describe(self) -> Iterator[Metric]:
        """The families without samples: registering a second collector into one `CollectorRegistry` fails."""
        return itertools.chain(_families([], {}, {}, {}), [_per_database("read_your_writes_fallbacks", {})])


def _per_database(name: str, counts: Mapping[str, int]) -> Metric:
    """The counter ``dbregistry_routing_<name>`` with one sample per database."""
    family = CounterMetricFamily(f"dbregistry_routing_{name}", DESCRIPTIONS[name], labels=["pool_name"])
    for database, count in counts.items():
        family.add_metric([database], count)
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
        DESCRIPTIONS["replica_up"],
        labels=_REPLICA_LABELS,
    )
    lag = GaugeMetricFamily(
        "dbregistry_replica_lag_seconds",
        DESCRIPTIONS["replica_lag"],
        labels=_REPLICA_LABELS,
    )
    for name, status in statuses.items():
        up.add_metric([name, status.primary], int(status.up))
        if status.lag_seconds is not None:
            lag.add_metric([name, status.primary], status.lag_seconds)
    fell_back = _per_database("fallbacks", fallbacks)
    health = HistogramMetricFamily(
        "dbregistry_health_latency_seconds",
        DESCRIPTIONS["health_latency"],
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
        DESCRIPTIONS["count"],
        labels=["pool_name", "state", "mode", "direct"],
    )
    gauges = {
        "max": GaugeMetricFamily("db_client_connection_max", DESCRIPTIONS["max"], labels=_POOL_LABELS),
        "idle_max": GaugeMetricFamily("db_client_connection_idle_max", DESCRIPTIONS["idle_max"], labels=_POOL_LABELS),
        "idle_min": GaugeMetricFamily("db_client_connection_idle_min", DESCRIPTIONS["idle_min"], labels=_POOL_LABELS),
        "pending": GaugeMetricFamily(
            "db_client_connection_pending_requests",
            DESCRIPTIONS["pending"],
            labels=_POOL_LABELS,
        ),
    }
    timeouts = CounterMetricFamily(
        "db_client_connection_timeouts",
        DESCRIPTIONS["timeouts"],
        labels=_POOL_LABELS,
    )
    histograms = {
        kind: HistogramMetricFamily(f"db_client_connection_{kind}_seconds", DESCRIPTIONS[kind], labels=_POOL_LABELS)
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
