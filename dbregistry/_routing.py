"""Read/write routing: reads of a database go to its healthy replicas, writes to the database itself.

One `Router` per `Registry`. ``reader(name)`` picks among the databases declared
``replica_of: name`` by smooth weighted round robin, skipping the ones marked down,
and returns ``name`` itself when none is declared or none is healthy.

The hot path (``reader()`` with nothing due) is a dict lookup, a clock read, a
counter step and a tuple index: no I/O, no lock, no logging. Everything else
happens on state changes:

* A replica is marked **down** by the request that finds it broken: a failed
  connection attempt (every driver's error, refused, timed out, rejected, seen by
  wrapping the engine dialect's ``connect``) or a lost connection
  (SQLAlchemy's ``handle_error`` with ``is_disconnect``, or an operator-intervention
  SQLSTATE ``57P0x`` such as a shutdown). That request fails with its own error;
  the next ``reader()`` already skips the replica.
* A down replica is **probed** once its ``backoff`` has passed: the first
  ``reader()`` call after that moment starts a probe off its own path (a
  short-lived thread for sync callers, a task on the caller's event loop for
  async ones) and returns immediately. The probe connects and runs one query;
  only a successful probe puts the replica back, so no request is sent to a
  replica that is still down.
* A replica declaring ``replica_max_lag_seconds`` is probed every
  ``lag_check_interval`` seconds the same way, and marked down while its replay
  lag is above the limit (PostgreSQL only).
* ``check_replicas()`` / ``acheck_replicas()`` probe every replica now, inline:
  for a health endpoint or a loop of your own.

Every probe, background or inline, sync or async, is bounded by
``probe_timeout`` (default 5 s, `configure_routing`): a replica that accepts a
connection and never answers is marked down with ``TimeoutError: no answer
within 5 s`` and the caller goes on; the driver's own connect timeout is set
to the same value, so the probe's thread or task ends too.

Each transition is logged once on ``dbregistry.routing`` (down: WARNING, back up:
INFO), URLs masked and passwords scrubbed from driver messages.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import reduce
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypeVar

from sqlalchemy import event

from . import _causal
from ._connect import bounded_connect
from ._errors import RegistryClosedError, UnknownDatabaseError
from ._fork import reset_after_fork
from ._replication import REPLICA_STATE_SQL
from ._secrets import describe_error, secrets_of
from ._urls import dialect_of, mask
from ._waits import check_seconds

if TYPE_CHECKING:
    from sqlalchemy.engine import URL, Connection, Engine, ExceptionContext
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from ._provider import BuiltEngines, EngineProvider
    from ._schema import DatabaseConfig

__all__ = [
    "DEFAULT_BACKOFF",
    "DEFAULT_LAG_CHECK_INTERVAL",
    "DEFAULT_PROBE_TIMEOUT",
    "UNSET",
    "ReplicaStatus",
    "Router",
    "Unset",
    "weighted_order",
]

logger = logging.getLogger("dbregistry.routing")

DEFAULT_BACKOFF: Final = 30.0
DEFAULT_LAG_CHECK_INTERVAL: Final = 5.0
DEFAULT_PROBE_TIMEOUT: Final = 5.0
# A cancelled probe task is given this long to finish before close stops waiting for it.
_CANCEL_GRACE: Final = 1.0
# close() waits this long for a probe in flight before disposing the engines under it.
_PROBE_JOIN_TIMEOUT: Final = 5.0
# A probe not finished after this long (a hung connect, a task whose loop was closed under it)
# no longer stops the next one from starting.
_PROBE_STALE_AFTER: Final = 60.0
# Weights are reduced to a cycle of at most this many slots (precomputed once per state change).
_MAX_CYCLE: Final = 4096

_PING_SQL: Final = "select 1"
# 57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now, 57P04 database_dropped.
_DOWN_SQLSTATES: Final = frozenset({"57P01", "57P02", "57P03", "57P04"})

T = TypeVar("T")


class Unset(enum.Enum):
    """The type of `UNSET`: a keyword left as it was (None means something else)."""

    UNSET = enum.auto()


UNSET: Final = Unset.UNSET


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """A replica as the router sees it.

    ``up`` is False while reads skip it; ``reason`` says why (the error, or the lag);
    ``lag_seconds`` is the last replay lag measured (PostgreSQL, else None);
    ``retry_in`` is how long until the next probe of a down replica;
    ``replayed_lsn`` is the WAL position it had replayed when last asked for read-your-writes.
    """

    name: str
    primary: str
    url: str
    weight: int
    up: bool
    reason: str | None
    lag_seconds: float | None
    retry_in: float | None
    replayed_lsn: str | None = None


class _Replica:
    """The mutable health of one replica; changed only under the router's lock."""

    __slots__ = (
        "lag",
        "max_lag",
        "measures_lag",
        "name",
        "next_check",
        "primary",
        "reason",
        "scheduled",
        "secrets",
        "up",
        "url",
        "weight",
    )

    def __init__(self, name: str, primary: str, db: DatabaseConfig) -> None:
        self.name = name
        self.primary = primary
        self.url = mask(db.url)
        self.secrets = secrets_of(db)
        self.weight = db.weight
        self.max_lag = db.replica_max_lag_seconds
        self.measures_lag = dialect_of(db.url) == "postgresql"
        self.up = True
        self.reason: str | None = None
        self.lag: float | None = None
        self.scheduled = False
        # monotonic time of the next probe: retry of a down replica, or the periodic lag check
        self.next_check = math.inf


_UNUSED_COUNTER = itertools.count()


class _Route:
    """Where the reads of one database go: its replicas and the precomputed cycle of the healthy ones."""

    __slots__ = (
        "active",
        "announced",
        "causal",
        "counter",
        "db_url",
        "fallbacks",
        "name",
        "next_check",
        "probing",
        "replicas",
        "root",
    )

    def __init__(self, name: str, root: str, db_url: URL, replicas: tuple[_Replica, ...]) -> None:
        self.name = name
        self.root = root
        self.db_url = db_url
        self.replicas = replicas
        self.active: tuple[str, ...] = weighted_order([(r.name, r.weight) for r in replicas])
        # A route without replicas never counts (its active tuple stays empty): one shared counter.
        self.counter = itertools.count() if replicas else _UNUSED_COUNTER
        self.probing = False
        self.announced = False
        self.fallbacks = 0  # reader() calls that found no healthy replica (changed under Router._count_lock)
        # 0.0: the first reader() call takes the slow path once (announcements, first lag check).
        self.next_check = 0.0
        self.causal: _causal.PrimaryPositions | None = None  # read_your_writes (set by the router)

    @property
    def url(self) -> str:
        """The masked URL, for messages (rendered when one is written, not for every declared database)."""
        return mask(self.db_url)


_Messages = list[tuple[int, str]]


class Router:
    """Read/write routing over one registry's declarations.

    >>> from dbregistry import Registry
    >>> registry = Registry.from_dict({"databases": {
    ...     "primary": {"url": "sqlite:///primary.db"},
    ...     "replica": {"url": "sqlite:///replica.db", "replica_of": "primary"}}}, environ={})
    >>> registry.reader("primary") is registry.get("replica")     # doctest: +SKIP
    True

    Used through the registry (``reader``, ``writer``, ``async_reader``,
    ``async_writer``, ``session(read_only=True)``, ``configure_routing``,
    ``check_replicas``); see the module docstring for how health is tracked.
    """

    def __init__(
        self,
        registry: EngineProvider,
        engines: BuiltEngines,
        *,
        backoff: float = DEFAULT_BACKOFF,
        lag_check_interval: float | None = DEFAULT_LAG_CHECK_INTERVAL,
        probe_timeout: float = DEFAULT_PROBE_TIMEOUT,
    ) -> None:
        _check_settings(backoff, lag_check_interval)
        self._registry = registry
        self._backoff = backoff
        self._lag_interval = lag_check_interval
        self._probe_timeout = check_seconds(probe_timeout, "probe_timeout")
        self._lock = threading.Lock()
        # Apart from _lock: reader() must never wait for a state change to count a fallback.
        self._count_lock = threading.Lock()
        self._closed = False
        # The registry's own dicts, read without a lock (they are emptied on close, never replaced):
        # reader() is a lookup in them; a miss asks the registry, which builds and stores the engine.
        self._sync = engines.sync
        self._async = engines.async_
        self._threads: set[threading.Thread] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._routes: dict[str | None, _Route] = {}
        self._replicas: dict[str, _Replica] = {}
        databases = registry.config.databases
        replicas_of: dict[str, list[_Replica]] = {}
        for name, db in databases.items():
            if db.replica_of is not None:
                replica = _Replica(name, db.replica_of, db)
                replicas_of.setdefault(db.replica_of, []).append(replica)
                self._replicas[name] = replica
        for name, db in databases.items():
            self._routes[name] = _Route(name, _root(name, databases), db.url, tuple(replicas_of.get(name, ())))
        self._positions = _read_your_writes(self._routes, databases)
        if registry.default is not None and registry.default in self._routes:
            self._routes[None] = self._routes[registry.default]
        reset_after_fork(self)

    # -- settings ------------------------------------------------------------------------

    @property
    def backoff(self) -> float:
        return self._backoff

    @property
    def lag_check_interval(self) -> float | None:
        return self._lag_interval

    @property
    def probe_timeout(self) -> float:
        return self._probe_timeout

    def configure(
        self,
        *,
        backoff: float | None = None,
        lag_check_interval: float | Unset | None = UNSET,
        probe_timeout: float | None = None,
    ) -> None:
        """Change the back-off, the lag check interval (None disables periodic lag checks) and the probe timeout.

        Waits already scheduled are shortened to the new values, never lengthened.
        """
        new_backoff = self._backoff if backoff is None else backoff
        new_interval = self._lag_interval if isinstance(lag_check_interval, Unset) else lag_check_interval
        _check_settings(new_backoff, new_interval)
        if probe_timeout is not None:
            self._probe_timeout = check_seconds(probe_timeout, "probe_timeout")
        with self._lock:
            self._backoff = new_backoff
            self._lag_interval = new_interval
            now = time.monotonic()
            for replica in self._replicas.values():
                if not replica.up:
                    replica.next_check = min(replica.next_check, now + new_backoff)
                else:
                    replica.next_check = min(replica.next_check, self._next_lag_check(replica, now))
            for route in self._unique_routes():
                self._reschedule(route)

    # -- the hot path ----------------------------------------------------------------------

    def reader(self, name: str | None = None) -> Engine:
        """The sync engine reads of ``name`` should use: a healthy replica, else ``name`` itself."""
        route = self._routes.get(name) or self._unknown(name)
        if route.next_check <= time.monotonic():
            self._due(route, is_async=False)
        active = route.active
        if active:
            causal = route.causal
            if (
                causal is not None
                and (box := _causal.CURRENT.get()) is not None
                and (mark := box.marks.get(causal.key)) is not None
                and mark.value > causal.floor
            ):
                target = self._caught_up(route, causal, mark, is_async=False)
            else:
                target = active[next(route.counter) % len(active)]
        else:
            target = self._fall_back(route) if route.replicas else route.name
        engine = self._sync.get(target)
        return engine if engine is not None else self._engine(target)

    def async_reader(self, name: str | None = None) -> AsyncEngine:
        """The async engine reads of ``name`` should use: a healthy replica, else ``name`` itself."""
        route = self._routes.get(name) or self._unknown(name)
        if route.next_check <= time.monotonic():
            self._due(route, is_async=True)
        active = route.active
        if active:
            causal = route.causal
            if (
                causal is not None
                and (box := _causal.CURRENT.get()) is not None
                and (mark := box.marks.get(causal.key)) is not None
                and mark.value > causal.floor
            ):
                target = self._caught_up(route, causal, mark, is_async=True)
            else:
                target = active[next(route.counter) % len(active)]
        else:
            target = self._fall_back(route) if route.replicas else route.name
        engine = self._async.get(target)
        return engine if engine is not None else self._async_engine(target)

    def _fall_back(self, route: _Route) -> str:
        with self._count_lock:
            route.fallbacks += 1
        return route.name

    def _caught_up(self, route: _Route, causal: _causal.PrimaryPositions, mark: _causal.Mark, *, is_async: bool) -> str:
        """A healthy replica that has replayed what the context's token needs of ``route``, else the primary."""
        active = route.active
        position = causal.needed(mark)
        if position is None:
            return active[next(route.counter) % len(active)]
        if position >= 0:
            found = causal.pick(position, active, next(route.counter))
            if found is not None:
                return found
            if causal.refresh_due():
                # A sync caller waits (briefly) for the replicas' answer: right after a commit a replica
                # has often replayed it already; an async one cannot block its loop and reads the primary.
                names = tuple(r.name for r in route.replicas if r.up)
                thread = causal.start_refresh(names, self._engine, self._async_engine, is_async=is_async)
                if thread is not None:
                    thread.join(_causal.INLINE_WAIT)
                    found = causal.pick(position, route.active, next(route.counter))
                    if found is not None:
                        return found
        with self._count_lock:
            causal.behind += 1
        if logger.isEnabledFor(logging.DEBUG):
            needs = f"WAL position {_causal.format_lsn(position)}" if position >= 0 else "its write window"
            logger.debug("a read of %r goes to the primary: no replica is known to have replayed %s", route.name, needs)
        return route.name

    def behind(self) -> dict[str, int]:
        """Name to the number of reads that went to it because no replica had replayed the context's writes."""
        with self._count_lock:
            return {name: positions.behind for name, positions in self._positions.items()}

    def fallbacks(self) -> dict[str, int]:
        """Name to the number of reader() calls that went to it because none of its replicas was healthy."""
        with self._count_lock:
            return {route.name: route.fallbacks for route in self._unique_routes() if route.replicas}

    def writer(self, name: str | None = None) -> Engine:
        """The sync engine of the database that takes the writes of ``name`` (the end of its ``replica_of`` chain)."""
        route = self._routes.get(name) or self._unknown(name)
        return self._registry.get(route.root)

    def async_writer(self, name: str | None = None) -> AsyncEngine:
        """The async engine of the database that takes the writes of ``name``."""
        route = self._routes.get(name) or self._unknown(name)
        return self._registry.get_async(route.root)

    def _unknown(self, name: str | None) -> NoReturn:
        # Every declared name has a route: get() raises the registry's own error (no default, closed, ...).
        self._registry.get(name)
        raise UnknownDatabaseError(name, self._registry.names)  # pragma: no cover - get() raised

    # -- engines and their hooks -------------------------------------------------------------

    def _engine(self, name: str) -> Engine:
        # No lock of the router's is held while the registry takes its own: there is no lock order.
        return self._registry.get(name)  # a replica's engine was hooked as it was built (watch)

    def _async_engine(self, name: str) -> AsyncEngine:
        return self._registry.get_async(name)

    def watch(self, name: str, engine: Engine) -> None:
        """Hook a replica's engine as it is built, so it is watched however it was obtained (``get("replica")`` too).

        Called under the registry's lock, before the engine is published; no
        other thread can hold the engine yet, so this takes no lock of its own,
        and the router never asks the registry for an engine while holding one:
        the two locks are never held together.
        """
        replica = self._replicas.get(name)
        if replica is not None:
            self._hook(engine, replica)
        positions = self._positions.get(name)
        if positions is not None:
            _causal.instrument(engine, positions)

    def _hook(self, engine: Engine, replica: _Replica) -> None:
        """Mark ``replica`` down when a connection to it fails or is lost (once per engine: each is built once)."""
        dialect = engine.dialect
        connect = dialect.connect

        # handle_error does not see every connect failure (asyncpg raises OSError, which
        # SQLAlchemy lets through untouched): the dialect's connect is where all of them pass.
        def connect_or_mark_down(*cargs: Any, **cparams: Any) -> Any:
            try:
                return connect(*cargs, **cparams)
            except Exception as e:
                self._failed(replica, e)
                raise

        def on_error(context: ExceptionContext) -> None:
            if context.is_pre_ping or context.connection is None:
                return  # the pool reconnects after a failed ping; connect failures were seen above
            if context.is_disconnect or _sqlstate(context.original_exception) in _DOWN_SQLSTATES:
                self._failed(replica, context.original_exception)

        dialect.connect = connect_or_mark_down  # type: ignore[method-assign]
        event.listen(engine, "handle_error", on_error)

    # -- state changes (under the lock, logged after it) -----------------------------------

    def _failed(self, replica: _Replica, error: BaseException) -> None:
        if not replica.up:
            return  # already down: only a probe re-arms the back-off
        with self._lock:
            messages = self._down(replica, _describe(error, replica.secrets), time.monotonic()) if replica.up else []
        _log(messages)

    def _down(self, replica: _Replica, reason: str, now: float) -> _Messages:
        route = self._routes[replica.primary]
        replica.next_check = now + self._backoff
        was_up, replica.up, replica.reason = replica.up, False, reason
        self._reschedule(route)
        if not was_up:
            return [
                (logging.DEBUG, f"replica {replica.name!r} is still down ({reason}); next try in {self._backoff:g}s")
            ]
        route.active = self._active(route)
        where = (
            f"reads of {route.name!r} go to the other replicas"
            if route.active
            else f"no healthy replica of {route.name!r} is left: its reads go to {route.name!r} ({route.url})"
        )
        return [
            (
                logging.WARNING,
                f"replica {replica.name!r} ({replica.url}) is down: {reason}; {where}; next try in {self._backoff:g}s",
            )
        ]

    def _up(self, replica: _Replica, now: float) -> _Messages:
        route = self._routes[replica.primary]
        replica.next_check = self._next_lag_check(replica, now)
        was_up, replica.up, replica.reason = replica.up, True, None
        self._reschedule(route)
        if was_up:
            return []
        fallback_ended = not route.active
        route.active = self._active(route)
        lag = f" (lag {replica.lag:.3g}s)" if replica.lag is not None else ""
        then = f"; reads of {route.name!r} go to replicas again" if fallback_ended else ""
        return [(logging.INFO, f"replica {replica.name!r} ({replica.url}) is back up{lag}{then}")]

    def _result(self, replica: _Replica, *, error: BaseException | None, lag: float | None) -> None:
        if self._closed:
            return
        with self._lock:
            now = time.monotonic()
            if error is not None:
                messages = self._down(replica, _describe(error, replica.secrets), now)
            else:
                replica.lag = lag
                if lag is not None and replica.max_lag is not None and lag > replica.max_lag:
                    reason = f"replay lag {lag:.3g}s is over replica_max_lag_seconds {replica.max_lag:g}"
                    messages = self._down(replica, reason, now)
                else:
                    messages = self._up(replica, now)
        _log(messages)

    def _active(self, route: _Route) -> tuple[str, ...]:
        return weighted_order([(r.name, r.weight) for r in route.replicas if r.up])

    def _lag_checked(self, replica: _Replica) -> bool:
        return replica.max_lag is not None and replica.measures_lag and self._lag_interval is not None

    def _next_lag_check(self, replica: _Replica, now: float) -> float:
        interval = self._lag_interval
        if interval is None or replica.max_lag is None or not replica.measures_lag:
            return math.inf
        return now + interval

    def _reschedule(self, route: _Route) -> None:
        if not route.probing:
            route.next_check = min((r.next_check for r in route.replicas), default=math.inf)

    def _unique_routes(self) -> list[_Route]:
        return [route for name, route in self._routes.items() if name is not None]

    # -- probes ---------------------------------------------------------------------------------

    def _due(self, route: _Route, *, is_async: bool) -> None:
        """Start a probe of the replicas whose check is due; called by whichever reader crosses the time."""
        if not self._lock.acquire(blocking=False):
            return  # another caller is changing the state; this one routes on what it sees
        loop: asyncio.AbstractEventLoop | None = None
        due: list[_Replica] = []
        messages: _Messages = []
        try:
            now = time.monotonic()
            if not route.announced:
                route.announced = True
                messages = self._announce(route, now)
            if self._closed or route.next_check > now:
                return
            due = [r for r in route.replicas if r.next_check <= now]
            if not due:
                self._reschedule(route)
                return
            if is_async:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    due = []  # no loop to run an async probe in; the next caller in a loop will
                    return
            route.probing = True
            route.next_check = now + _PROBE_STALE_AFTER
        finally:
            self._lock.release()
            _log(messages)
        if due:
            self._start_probe(route, due, loop)

    def _start_probe(self, route: _Route, due: list[_Replica], loop: asyncio.AbstractEventLoop | None) -> None:
        name = f"dbregistry probe of {route.name}"
        if loop is not None:
            probe = self._aprobe(route, due)
            try:
                task = loop.create_task(probe, name=name)
            except RuntimeError:  # the loop is closing
                probe.close()
                self._probe_not_started(route)
                return
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        thread = threading.Thread(target=self._probe, args=(route, due), name=name, daemon=True)
        self._threads.add(thread)
        try:
            thread.start()
        except RuntimeError:  # the interpreter is shutting down
            self._threads.discard(thread)
            self._probe_not_started(route)

    def _probe_not_started(self, route: _Route) -> None:
        with self._lock:
            route.probing = False
            self._reschedule(route)

    def _announce(self, route: _Route, now: float) -> _Messages:
        messages: _Messages = []
        if not route.replicas:
            messages.append(
                (logging.INFO, f"{route.name!r} has no replica declared: its reads go to {route.name!r} ({route.url})")
            )
        for replica in route.replicas:
            if replica.max_lag is not None and not replica.measures_lag:
                messages.append(
                    (
                        logging.WARNING,
                        f"replica {replica.name!r}: replica_max_lag_seconds is only measured on PostgreSQL; ignored",
                    )
                )
            if replica.up and self._lag_checked(replica) and not replica.scheduled:
                replica.scheduled = True
                replica.next_check = now  # its lag is unknown: check it at once
        self._reschedule(route)
        return messages

    def _probe(self, route: _Route, due: Sequence[_Replica]) -> None:
        try:
            for replica in due:
                if self._closed:
                    break
                self._probe_one(replica)
        finally:
            with self._lock:
                route.probing = False
                self._reschedule(route)
            self._threads.discard(threading.current_thread())

    async def _aprobe(self, route: _Route, due: Sequence[_Replica]) -> None:
        try:
            for replica in due:
                if self._closed:
                    break
                await self._aprobe_one(replica)
        finally:
            with self._lock:
                route.probing = False
                self._reschedule(route)

    def _probe_one(self, replica: _Replica) -> None:
        """Probe in a worker thread joined for ``probe_timeout``: a server that never answers is left behind."""
        timeout = self._probe_timeout
        outcome: list[tuple[BaseException | None, float | None]] = []

        def probe() -> None:
            try:
                engine = self._engine(replica.name)
                with bounded_connect(engine, timeout), engine.connect() as conn:
                    lag = _measure(conn, replica)
            except Exception as e:
                outcome.append((e, None))
            else:
                outcome.append((None, lag))

        worker = threading.Thread(target=probe, name=f"dbregistry probe of {replica.name}", daemon=True)
        worker.start()
        worker.join(timeout)
        error, lag = outcome[0] if outcome else (_no_answer(timeout), None)
        self._result(replica, error=error, lag=lag)

    async def _aprobe_one(self, replica: _Replica) -> None:
        timeout = self._probe_timeout

        async def probe() -> float | None:
            engine = self._async_engine(replica.name)
            with bounded_connect(engine.sync_engine, timeout):
                async with engine.connect() as conn:
                    return await _ameasure(conn, replica)

        # asyncio.wait, not wait_for: wait_for also waits for the cancelled probe to end, which a
        # connection to a frozen server may never do.
        task = asyncio.ensure_future(probe())
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not done:
            task.cancel()
            task.add_done_callback(_retrieve)
            self._result(replica, error=_no_answer(timeout), lag=None)
        elif (error := task.exception()) is not None:
            self._result(replica, error=error, lag=None)
        else:
            self._result(replica, error=None, lag=task.result())

    # -- explicit checks and status ----------------------------------------------------------

    def _selected(self, name: str | None) -> list[_Replica]:
        if name is None:
            return list(self._replicas.values())
        route = self._routes.get(name) or self._unknown(name)
        return list(route.replicas)

    def check(self, name: str | None = None) -> dict[str, ReplicaStatus]:
        """Probe every replica (of ``name``, else all) now, in this thread, and update their state."""
        self._check_open()
        replicas = self._selected(name)
        for replica in replicas:
            self._probe_one(replica)
        for primary, names in self._positions_of(replicas):
            primary.refresh(names, self._engine)
        return self._status_of(replicas)

    async def acheck(self, name: str | None = None) -> dict[str, ReplicaStatus]:
        """Probe every replica (of ``name``, else all) now with the async engines, one after the other."""
        self._check_open()
        replicas = self._selected(name)
        for replica in replicas:
            await self._aprobe_one(replica)
        for primary, names in self._positions_of(replicas):
            await primary.arefresh(names, self._async_engine)
        return self._status_of(replicas)

    def _positions_of(self, replicas: Iterable[_Replica]) -> list[tuple[_causal.PrimaryPositions, tuple[str, ...]]]:
        """The read-your-writes state of the primaries of ``replicas``, with the up replicas of each."""
        found = []
        for primary in dict.fromkeys(r.primary for r in replicas):
            positions = self._positions.get(primary)
            if positions is not None:
                found.append((positions, tuple(r.name for r in self._routes[primary].replicas if r.up)))
        return found

    def _check_open(self) -> None:
        if self._closed:
            raise RegistryClosedError("the registry is closed; cannot check its replicas")

    def status(self, name: str | None = None) -> dict[str, ReplicaStatus]:
        """The state of every replica (of ``name``, else all), without any I/O."""
        return self._status_of(self._selected(name))

    def _status_of(self, replicas: Iterable[_Replica]) -> dict[str, ReplicaStatus]:
        now = time.monotonic()
        with self._lock:
            return {
                r.name: ReplicaStatus(
                    name=r.name,
                    primary=r.primary,
                    url=r.url,
                    weight=r.weight,
                    up=r.up,
                    reason=r.reason,
                    lag_seconds=r.lag if r.lag is not None else _causal_of(self._positions, r).lag.get(r.name),
                    retry_in=None if r.up else max(0.0, r.next_check - now),
                    replayed_lsn=_replayed_lsn(_causal_of(self._positions, r).replayed.get(r.name)),
                )
                for r in replicas
            }

    # -- closing ----------------------------------------------------------------------------------

    def close(self, timeout: float = _PROBE_JOIN_TIMEOUT) -> None:
        """Stop starting probes, wait for the ones in flight (``timeout`` in all).

        The registry empties its engine cache and disposes the engines.
        """
        self._closed = True
        deadline = time.monotonic() + timeout
        _join_all([t for t in self._threads if t is not threading.current_thread()], timeout)
        for task in list(self._tasks):
            loop = task.get_loop()
            if not task.done() and loop.is_running() and not loop.is_closed():
                loop.call_soon_threadsafe(task.cancel)
        for positions in self._positions.values():
            positions.stop(max(0.0, deadline - time.monotonic()))

    async def aclose(self, timeout: float = _PROBE_JOIN_TIMEOUT) -> None:
        """`close`, awaiting the probe tasks of the running loop instead of cancelling them; ``timeout`` in all."""
        self._closed = True
        deadline = time.monotonic() + timeout
        current = asyncio.get_running_loop()
        mine = [t for t in self._tasks if not t.done() and t.get_loop() is current and t is not asyncio.current_task()]
        if mine:
            _, pending = await asyncio.wait(mine, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=_CANCEL_GRACE)
        threads = [t for t in self._threads if t is not threading.current_thread()]
        if threads:
            await asyncio.to_thread(_join_all, threads, max(0.0, deadline - time.monotonic()))
        for positions in self._positions.values():
            await positions.astop(max(0.0, deadline - time.monotonic()))
        self.close(0.0)

    def reopen(self) -> None:
        """Start probing again after `close` (the registry was reopened)."""
        self._closed = False

    def _after_fork_in_child(self) -> None:
        # Probes of the parent do not exist here; a lock held by one of its threads would never be released.
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._threads = set()
        self._tasks = set()
        for route in self._unique_routes():
            route.probing = False
            self._reschedule(route)
        for positions in self._positions.values():
            positions.after_fork_in_child()


# -- helpers --------------------------------------------------------------------------------------


def weighted_order(items: Sequence[tuple[T, int]]) -> tuple[T, ...]:
    """One full cycle of smooth weighted round robin: each item appears ``weight`` times, spread out.

    >>> weighted_order([("a", 1), ("b", 2)])
    ('b', 'a', 'b')

    Weights are divided by their greatest common divisor and scaled down to a cycle of at
    most 4096 slots (every item keeps at least one).
    """
    if not items:
        return ()
    weights = [w for _, w in items]
    divisor = reduce(math.gcd, weights)
    weights = [w // divisor for w in weights]
    total = sum(weights)
    if total > _MAX_CYCLE:
        weights = [max(1, w * _MAX_CYCLE // total) for w in weights]
        total = sum(weights)
    current = [0] * len(items)
    order: list[T] = []
    for _ in range(total):
        for i, w in enumerate(weights):
            current[i] += w
        best = max(range(len(items)), key=current.__getitem__)
        current[best] -= total
        order.append(items[best][0])
    return tuple(order)


_NO_POSITIONS: Final = _causal.PrimaryPositions("", "lsn")


def _read_your_writes(
    routes: Mapping[str | None, _Route], databases: Mapping[str, DatabaseConfig]
) -> dict[str, _causal.PrimaryPositions]:
    """The read-your-writes state of each database with replicas whose ``read_your_writes`` is not off
    (PostgreSQL: ``lsn`` unless declared otherwise)."""
    positions: dict[str, _causal.PrimaryPositions] = {}
    for name, route in routes.items():
        if name is None or not route.replicas:
            continue
        setting = databases[name].read_your_writes
        if setting is None:
            setting = "lsn" if dialect_of(databases[name].url) == "postgresql" else "off"
        if setting != "off":
            replicas = tuple(r.name for r in route.replicas)
            route.causal = positions[name] = _causal.PrimaryPositions(name, setting, replicas)
    return positions


def _causal_of(positions: Mapping[str, _causal.PrimaryPositions], replica: _Replica) -> _causal.PrimaryPositions:
    return positions.get(replica.primary, _NO_POSITIONS)


def _replayed_lsn(value: int | None) -> str | None:
    return None if value is None or value < 0 else _causal.format_lsn(value)


def _root(name: str, databases: Mapping[str, DatabaseConfig]) -> str:
    seen = {name}
    while (parent := databases[name].replica_of) is not None and parent in databases and parent not in seen:
        seen.add(parent)
        name = parent
    return name


def _check_settings(backoff: float, lag_check_interval: float | None) -> None:
    if not backoff > 0:
        raise ValueError(f"backoff must be a number of seconds above 0, got {backoff!r}")
    if lag_check_interval is not None and not lag_check_interval > 0:
        raise ValueError(f"lag_check_interval must be a number of seconds above 0 or None, got {lag_check_interval!r}")


def _sqlstate(error: BaseException) -> str | None:
    code = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    return code if isinstance(code, str) else None


def _describe(error: BaseException, secrets: Iterable[str]) -> str:
    """``Type: first line of the message``, the driver's own error rather than SQLAlchemy's wrapper."""
    return describe_error(error, secrets, first_line=True)


def _measure(conn: Connection, replica: _Replica) -> float | None:
    if replica.measures_lag:
        _, value = conn.exec_driver_sql(REPLICA_STATE_SQL).one()
        return None if value is None else float(value)
    conn.exec_driver_sql(_PING_SQL).scalar()
    return None


async def _ameasure(conn: AsyncConnection, replica: _Replica) -> float | None:
    if replica.measures_lag:
        row: Sequence[Any] = (await conn.exec_driver_sql(REPLICA_STATE_SQL)).one()
        value = row[1]
        return None if value is None else float(value)
    (await conn.exec_driver_sql(_PING_SQL)).scalar()
    return None


def _log(messages: _Messages) -> None:
    for level, message in messages:
        logger.log(level, "%s", message)


def _join_all(threads: Iterable[threading.Thread], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


def _no_answer(timeout: float) -> TimeoutError:
    return TimeoutError(f"no answer within {timeout:g} s")


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Collect the outcome of a probe left behind, so that asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()
