"""OpenTelemetry metrics for every pool and replica of a registry, by the database client semantic conventions.

>>> from dbregistry import Registry
>>> from dbregistry.opentelemetry import instrument
>>> registry = Registry.from_dict({"databases": {"dev": {"url": "sqlite://"}}}, environ={})
>>> instrument(registry)            # the global meter provider; or instrument(registry, meter_provider=...)
>>> registry.close()

Needs ``pip install 'dbregistry[opentelemetry]'`` (``opentelemetry-api`` only;
the application brings the SDK and its exporter). Every engine the registry has
built and every one it builds later is covered, sync and async, pooled and
``direct``. See the README's "Metrics" section for the table of instruments.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final

from . import __version__
from ._metrics import BUCKETS, DESCRIPTIONS, KINDS, PoolMeter, Recorder, RegistryMeters, meters_of

try:
    from opentelemetry import metrics
    from opentelemetry.metrics import CallbackOptions, Histogram, Meter, MeterProvider, Observation
except ImportError as e:  # pragma: no cover - the extra is installed in the tests
    raise ImportError("opentelemetry-api is not installed, run `pip install 'dbregistry[opentelemetry]'`") from e

if TYPE_CHECKING:
    from ._registry import Registry

__all__ = ["instrument"]

# Attribute names of the semantic conventions, and ours.
POOL_NAME: Final = "db.client.connection.pool.name"
STATE: Final = "db.client.connection.state"
MODE: Final = "dbregistry.mode"
DIRECT: Final = "dbregistry.direct"
PRIMARY: Final = "dbregistry.primary"


_DONE: weakref.WeakKeyDictionary[Registry, list[MeterProvider]] = weakref.WeakKeyDictionary()
_DONE_LOCK = threading.Lock()


def instrument(registry: Registry, meter_provider: MeterProvider | None = None) -> None:
    """Report the pool, routing and health figures of every engine of ``registry`` to OpenTelemetry.

    >>> from opentelemetry.sdk.metrics import MeterProvider          # doctest: +SKIP
    >>> from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # doctest: +SKIP
    >>> reader = InMemoryMetricReader()                               # doctest: +SKIP
    >>> instrument(registry, meter_provider=MeterProvider(metric_readers=[reader]))  # doctest: +SKIP

    ``meter_provider`` defaults to the global one (``opentelemetry.metrics.get_meter_provider()``).
    Engines already built are covered with their real state (connections
    checked out before count as used), and so is every engine built later.
    Instrumenting a registry twice for one provider changes nothing.
    """
    provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
    with _DONE_LOCK:
        done = _DONE.setdefault(registry, [])
        if any(p is provider for p in done):
            return
        done.append(provider)
    _Instruments(provider.get_meter("dbregistry", __version__), registry, meters_of(registry))


class _Instruments:
    """The instruments of one (registry, meter provider) pair."""

    def __init__(self, meter: Meter, registry: Registry, meters: RegistryMeters) -> None:
        # The callbacks live as long as the provider holds them; the registry is only looked at while it lives.
        self._registry = weakref.ref(registry)
        self._meters = meters
        histograms = {
            kind: _histogram(meter, f"db.client.connection.{kind}", "s", DESCRIPTIONS[kind]) for kind in KINDS
        }
        meter.create_observable_up_down_counter(
            "db.client.connection.count",
            [self._count],
            unit="{connection}",
            description=DESCRIPTIONS["count"],
        )
        for suffix in ("max", "idle.max", "idle.min"):
            field = suffix.replace(".", "_")
            meter.create_observable_up_down_counter(
                f"db.client.connection.{suffix}",
                [self._figure(field)],
                unit="{connection}",
                description=DESCRIPTIONS[field],
            )
        meter.create_observable_up_down_counter(
            "db.client.connection.pending_requests",
            [self._figure("pending")],
            unit="{request}",
            description=DESCRIPTIONS["pending"],
        )
        meter.create_observable_counter(
            "db.client.connection.timeouts",
            [self._figure("timeouts")],
            unit="{timeout}",
            description=DESCRIPTIONS["timeouts"],
        )
        meter.create_observable_up_down_counter(
            "dbregistry.replica.up",
            [self._replica_up],
            unit="{replica}",
            description=DESCRIPTIONS["replica_up"],
        )
        meter.create_observable_gauge(
            "dbregistry.replica.lag",
            [self._replica_lag],
            unit="s",
            description=DESCRIPTIONS["replica_lag"],
        )
        meter.create_observable_counter(
            "dbregistry.routing.fallbacks",
            [self._fallbacks],
            unit="{read}",
            description=DESCRIPTIONS["fallbacks"],
        )
        meter.create_observable_counter(
            "dbregistry.routing.read_your_writes_fallbacks",
            [self._read_your_writes_fallbacks],
            unit="{read}",
            description=DESCRIPTIONS["read_your_writes_fallbacks"],
        )
        health = _histogram(meter, "dbregistry.health.latency", "s", DESCRIPTIONS["health_latency"])
        meters.health.add_recorder(lambda name, mode, seconds: health.record(seconds, {POOL_NAME: name, MODE: mode}))
        meters.add_pool_listener(lambda pool: pool.add_recorder(_recorder(histograms, pool)))

    # -- pools ------------------------------------------------------------------------------

    def _pools(self) -> list[PoolMeter]:
        registry = self._registry()
        if registry is None or registry.closed:
            return []
        return self._meters.pools()

    def _count(self, options: CallbackOptions) -> Iterator[Observation]:
        for pool in self._pools():
            figures = pool.figures()
            if figures.used is not None and figures.idle is not None:
                attributes = _attributes(pool)
                yield Observation(figures.idle, {**attributes, STATE: "idle"})
                yield Observation(figures.used, {**attributes, STATE: "used"})

    def _figure(self, field: str) -> Any:
        def observe(options: CallbackOptions) -> Iterator[Observation]:
            for pool in self._pools():
                value = getattr(pool.figures(), field)
                if value is not None:
                    yield Observation(value, _attributes(pool))

        return observe

    # -- routing ----------------------------------------------------------------------------

    def _replica_up(self, options: CallbackOptions) -> Iterable[Observation]:
        registry = self._registry()
        if registry is None or registry.closed:
            return []
        return [
            Observation(int(status.up), {POOL_NAME: name, PRIMARY: status.primary})
            for name, status in registry.replica_status().items()
        ]

    def _replica_lag(self, options: CallbackOptions) -> Iterable[Observation]:
        registry = self._registry()
        if registry is None or registry.closed:
            return []
        return [
            Observation(status.lag_seconds, {POOL_NAME: name, PRIMARY: status.primary})
            for name, status in registry.replica_status().items()
            if status.lag_seconds is not None
        ]

    def _fallbacks(self, options: CallbackOptions) -> Iterable[Observation]:
        registry = self._registry()
        if registry is None or registry.closed:
            return []
        return [Observation(count, {POOL_NAME: name}) for name, count in registry.read_fallbacks().items()]

    def _read_your_writes_fallbacks(self, options: CallbackOptions) -> Iterable[Observation]:
        registry = self._registry()
        if registry is None or registry.closed:
            return []
        counts = registry.read_your_writes_fallbacks()
        return [Observation(count, {POOL_NAME: name}) for name, count in counts.items()]


def _recorder(histograms: dict[str, Histogram], pool: PoolMeter) -> Recorder:
    attributes = _attributes(pool)

    def record(kind: str, seconds: float) -> None:
        histograms[kind].record(seconds, attributes)

    return record


def _attributes(pool: PoolMeter) -> dict[str, str | bool]:
    return {POOL_NAME: pool.name, MODE: pool.mode, DIRECT: pool.direct}


def _histogram(meter: Meter, name: str, unit: str, description: str) -> Histogram:
    return meter.create_histogram(name, unit=unit, description=description, explicit_bucket_boundaries_advisory=BUCKETS)
