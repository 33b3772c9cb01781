"""The figures behind `dbregistry.opentelemetry` and `dbregistry.prometheus`: one owner, so both exporters agree.

A `PoolMeter` is attached to an engine once, the first time an exporter asks for
it, and never before: an uninstrumented registry runs none of this. It reads the
pool's state from the pool itself (``checkedout()`` / ``checkedin()``) when asked,
and times connects, checkouts and uses from SQLAlchemy's pool events:

* create time: the ``connect`` event, against the connection record's
  ``last_connect_time`` (set by the pool just before it calls the driver);
* wait time, pending requests and timeouts: around ``Engine.raw_connection()``,
  which every checkout goes through (SQLAlchemy has no event before a checkout,
  nor one for a pool timeout, which it raises from there);
* use time: from the ``checkout`` event to the ``checkin`` event.

Samples go to the recorders exporters add (OpenTelemetry histograms) and, once a
Prometheus collector asks, into `Histogram` buckets kept here (through a
`SampleBuffer`: the request path takes no lock). Listeners on the engine follow
it through ``dispose()``, which recreates the pool with the same dispatch.
"""

from __future__ import annotations

import bisect
import functools
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.pool import QueuePool

from ._fork import reset_after_fork
from ._health import observe_health

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine
    from sqlalchemy.pool import Pool

    from ._health import HealthReport
    from ._registry import Registry

__all__ = [
    "BUCKETS",
    "DESCRIPTIONS",
    "HealthMeter",
    "Histogram",
    "PoolFigures",
    "PoolMeter",
    "RegistryMeters",
    "SampleBuffer",
    "meters_of",
    "pool_meter",
]

# Seconds. OpenTelemetry's default buckets (0, 5, 10, 25 ... 10000) are meant for milliseconds.
BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

logger = logging.getLogger("dbregistry.metrics")

_METER = "dbregistry_metrics"
_CHECKED_OUT_AT = "dbregistry_checked_out_at"

Recorder = Callable[[str, float], None]
"""``recorder(kind, seconds)`` with kind ``"create_time"``, ``"wait_time"`` or ``"use_time"``."""

KINDS: Final = ("create_time", "wait_time", "use_time")

# What each instrument measures, one text for both exporters (the semantic conventions' own for theirs).
DESCRIPTIONS: Final = {
    "count": "The number of connections that are currently in state described by the state attribute.",
    "max": "The maximum number of open connections allowed.",
    "idle_max": "The maximum number of idle open connections allowed.",
    "idle_min": "The minimum number of idle open connections allowed.",
    "pending": "The number of current pending requests for an open connection.",
    "timeouts": "The number of connection timeouts that have occurred trying to obtain a connection from the pool.",
    "create_time": "The time it took to create a new connection.",
    "wait_time": "The time it took to obtain an open connection from the pool.",
    "use_time": "The time between borrowing a connection and returning it to the pool.",
    "replica_up": "1 while reads may go to the replica, 0 while routing skips it (down, or lagging too far).",
    "replica_lag": "The replica's replay lag at its last lag check (replicas declaring replica_max_lag_seconds).",
    "fallbacks": "reader() calls of a database with replicas that got the database itself, no replica being healthy.",
    "read_your_writes_fallbacks": (
        "Reads of a database with read_your_writes sent to it because no replica had replayed the context's writes."
    ),
    "health_latency": "Time to check out a connection and run a health check ping.",
}


class Histogram:
    """Cumulative bucket counts and a sum, for an exporter that reads on scrape (Prometheus)."""

    __slots__ = ("_counts", "_lock", "_sum")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = [0] * (len(BUCKETS) + 1)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(BUCKETS, value)
        with self._lock:
            self._counts[index] += 1
            self._sum += value

    def snapshot(self) -> tuple[list[tuple[str, int]], float]:
        """``([(upper bound, cumulative count), ..., ("+Inf", total)], sum)``."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        buckets: list[tuple[str, int]] = []
        running = 0
        for bound, count in zip((*(repr(b) for b in BUCKETS), "+Inf"), counts, strict=True):
            running += count
            buckets.append((bound, running))
        return buckets, total


class SampleBuffer:
    """Samples for a set of `Histogram`, appended without a lock on the request path and folded in later.

    A ``with lock`` per sample costs little alone, but 32 threads contending for it
    under the GIL queue up behind whichever holder was preempted. Appending to a
    deque is atomic; the samples are folded into the buckets by whoever reads them,
    or by the writer that finds ``limit`` waiting (which bounds the memory held).
    """

    __slots__ = ("_lock", "_samples", "histograms", "limit")

    def __init__(self, histograms: dict[str, Histogram], limit: int = 1024) -> None:
        self.histograms = histograms
        self.limit = limit
        self._samples: deque[tuple[str, float]] = deque()
        self._lock = threading.Lock()

    def add(self, kind: str, seconds: float) -> None:
        samples = self._samples
        samples.append((kind, seconds))
        if len(samples) >= self.limit:
            self.fold()

    def fold(self) -> None:
        samples = self._samples
        histograms = self.histograms
        with self._lock:
            # What is there now: writers appending meanwhile must not keep this loop going.
            for _ in range(len(samples)):
                kind, seconds = samples.popleft()
                histograms[kind].observe(seconds)


@dataclass(frozen=True, slots=True)
class PoolFigures:
    """One pool's state now; None where its class keeps no such figure. Never negative."""

    used: int | None
    idle: int | None
    max: int | None
    idle_max: int | None
    idle_min: int | None
    pending: int
    timeouts: int


def _queue_figures(pool: QueuePool) -> tuple[int, int, int | None, int, int]:
    used = max(0, pool.checkedout())
    idle = max(0, pool.checkedin())
    size = pool.size()
    # SQLAlchemy has no public accessor for max_overflow (-1: unbounded); status() does not print it either.
    overflow: int = pool._max_overflow
    return used, idle, (size + overflow if overflow >= 0 else None), size, 0


class PoolMeter:
    """The measurements of one engine; shared by every exporter of the process."""

    def __init__(self, name: str, mode: str, direct: bool, engine: Engine) -> None:
        self.name = name
        self.mode = mode
        self.direct = direct
        self.engine = engine
        self._lock = threading.Lock()
        # One item per checkout under way: deque.append/pop are atomic, so the request path takes no lock.
        self._waiting: deque[None] = deque()
        self._timeouts = 0
        self._recorders: tuple[Recorder, ...] = ()
        self._buffer: SampleBuffer | None = None

    # -- what exporters read -------------------------------------------------------------

    def figures(self) -> PoolFigures:
        pool: Pool = self.engine.pool  # dispose() replaces the pool: read the current one
        pending, timeouts = len(self._waiting), self._timeouts
        if isinstance(pool, QueuePool):
            used, idle, most, idle_max, idle_min = _queue_figures(pool)
            return PoolFigures(used, idle, most, idle_max, idle_min, pending, timeouts)
        return PoolFigures(None, None, None, None, None, pending, timeouts)

    def _after_fork_in_child(self) -> None:
        # The parent's threads do not exist here: their checkouts under way will never end, and a
        # lock one of them held would never be released.
        self._waiting.clear()
        self._lock = threading.Lock()
        if self._buffer is not None:
            self._buffer._lock = threading.Lock()

    def add_recorder(self, recorder: Recorder) -> None:
        with self._lock:
            self._recorders = (*self._recorders, recorder)

    def keep_histograms(self) -> None:
        """Start keeping buckets of every sample from now on (idempotent)."""
        with self._lock:
            if self._buffer is None:
                self._buffer = SampleBuffer({kind: Histogram() for kind in KINDS})
                self._recorders = (*self._recorders, self._buffer.add)

    @property
    def histograms(self) -> dict[str, Histogram] | None:
        """The buckets kept since `keep_histograms`, up to date (None before)."""
        buffer = self._buffer
        if buffer is None:
            return None
        buffer.fold()
        return buffer.histograms

    # -- what the pool's events feed ---------------------------------------------------------

    def _record(self, kind: str, seconds: float) -> None:
        for recorder in self._recorders:
            try:
                recorder(kind, seconds)
            except Exception:
                # A metrics backend that fails must not fail the checkout or checkin that fed it.
                logger.exception("%s: recording %s failed", self.name, kind)

    def _attach(self) -> None:
        engine = self.engine
        event.listen(engine, "connect", self._on_connect, insert=True)
        event.listen(engine, "checkout", self._on_checkout)
        event.listen(engine, "checkin", self._on_checkin)
        raw_connection = engine.raw_connection
        waiting = self._waiting

        @functools.wraps(raw_connection)
        def raw_connection_measured() -> Any:
            waiting.append(None)
            started = time.perf_counter()
            try:
                connection = raw_connection()
            except PoolTimeoutError:
                with self._lock:
                    self._timeouts += 1
                raise
            finally:
                waiting.pop()
            self._record("wait_time", time.perf_counter() - started)
            return connection

        # An instance attribute shadows the method for this engine only (as dbregistry.poolevents does).
        engine.raw_connection = raw_connection_measured  # type: ignore[method-assign]

    def _on_connect(self, dbapi_connection: Any, record: Any) -> None:
        self._record("create_time", max(0.0, time.time() - record.last_connect_time))

    def _on_checkout(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        record.info[_CHECKED_OUT_AT] = time.perf_counter()

    def _on_checkin(self, dbapi_connection: Any, record: Any) -> None:
        started = record.info.pop(_CHECKED_OUT_AT, None)
        if started is not None:
            self._record("use_time", time.perf_counter() - started)


_ATTACH_LOCK = threading.Lock()


def pool_meter(name: str, mode: str, direct: bool, engine: Engine | AsyncEngine) -> PoolMeter:
    """The engine's `PoolMeter`, attaching it the first time."""
    # Not isinstance(AsyncEngine): importing sqlalchemy.ext.asyncio costs every sync user ~20 ms.
    sync_engine = engine if isinstance(engine, Engine) else engine.sync_engine
    with _ATTACH_LOCK:
        meter: PoolMeter | None = sync_engine.__dict__.get(_METER)
        if meter is None:
            meter = PoolMeter(name, mode, direct, sync_engine)
            meter._attach()
            sync_engine.__dict__[_METER] = meter
            reset_after_fork(meter)
        return meter


HealthRecorder = Callable[[str, str, float], None]


class HealthMeter:
    """Health check latencies of one registry (successful checks only: a failure has no latency)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._recorders: tuple[HealthRecorder, ...] = ()
        self.histograms: dict[tuple[str, str], Histogram] | None = None

    def add_recorder(self, recorder: HealthRecorder) -> None:
        with self._lock:
            self._recorders = (*self._recorders, recorder)

    def keep_histograms(self) -> dict[tuple[str, str], Histogram]:
        """Keep buckets per (name, mode) from now on (idempotent)."""
        with self._lock:
            if self.histograms is None:
                self.histograms = {}
            return self.histograms

    def observe(self, name: str, mode: str, report: HealthReport) -> None:
        if report.latency_ms is None:
            return
        seconds = report.latency_ms / 1000
        for recorder in self._recorders:
            recorder(name, mode, seconds)
        histograms = self.histograms
        if histograms is not None:
            with self._lock:
                histogram = histograms.setdefault((name, mode), Histogram())
            histogram.observe(seconds)

    def snapshot(self) -> dict[tuple[str, str], Histogram]:
        with self._lock:
            return dict(self.histograms or {})


class RegistryMeters:
    """Every engine meter of one registry (built before or after), and its health check latencies."""

    def __init__(self, registry: Registry) -> None:
        self._lock = threading.Lock()
        self._pools: list[PoolMeter] = []
        self._listeners: list[Callable[[PoolMeter], None]] = []
        self.health = HealthMeter()
        observe_health(registry, self.health.observe)
        registry.add_engine_listener(self._built)

    def _built(self, name: str, mode: str, direct: bool, engine: Engine | AsyncEngine) -> None:
        meter = pool_meter(name, mode, direct, engine)
        with self._lock:
            self._pools.append(meter)
            listeners = list(self._listeners)
        for listener in listeners:
            listener(meter)

    def add_pool_listener(self, listener: Callable[[PoolMeter], None]) -> None:
        """Call ``listener(meter)`` for every engine's meter so far, then for each engine built later."""
        with self._lock:
            self._listeners.append(listener)
            for meter in self._pools:
                listener(meter)

    def pools(self) -> list[PoolMeter]:
        with self._lock:
            return list(self._pools)


_REGISTRIES: weakref.WeakKeyDictionary[Registry, RegistryMeters] = weakref.WeakKeyDictionary()
# Taken before the registry's lock, which is taken before _ATTACH_LOCK: never the other way round.
_REGISTRIES_LOCK = threading.Lock()


def meters_of(registry: Registry) -> RegistryMeters:
    """The registry's `RegistryMeters`, created (and its engines metered) on the first call."""
    with _REGISTRIES_LOCK:
        meters = _REGISTRIES.get(registry)
        if meters is None:
            meters = _REGISTRIES[registry] = RegistryMeters(registry)
        return meters
