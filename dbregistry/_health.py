"""Health checks and pool figures: what `Registry.health`, `Registry.ahealth` and `Registry.stats` return.

A ping checks out a connection from the database's own engine (so it also
tells whether the pool can hand one out), runs ``SELECT 1`` and, for a
PostgreSQL replica, asks whether the server is in recovery and how far its
replay lags. Each ping is bounded by the timeout three ways: the driver's
connect timeout, the server's ``statement_timeout`` (PostgreSQL), and the
caller, which stops waiting when the time is up. Error texts never carry a
password: they go through `dbregistry._secrets.describe_error` (URLs and
``password=`` masked by position, the password's text replaced elsewhere).

>>> from dbregistry import Registry
>>> registry = Registry.from_dict({"databases": {"dev": {"url": "sqlite://"}}}, environ={})
>>> registry.health(timeout=2.0)["dev"].status
'up'
>>> registry.close()
"""

from __future__ import annotations

import asyncio
import functools
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import literal_column, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from ._connect import bounded_connect
from ._errors import RegistryClosedError
from ._failover import answered_by
from ._replication import REPLICA_STATE_SQL
from ._secrets import describe_error, secrets_of
from ._waits import check_seconds, run_all_within

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.ext.asyncio import AsyncEngine
    from sqlalchemy.pool import Pool

    from ._provider import EngineProvider
    from ._schema import DatabaseConfig

__all__ = [
    "HealthReport",
    "PoolStats",
    "Status",
    "acheck_health",
    "check_health",
    "describe_error",
    "observe_health",
    "pool_figures",
    "pool_stats",
    "secrets_of",
]

Status = Literal["up", "down", "timeout"]


@dataclass(frozen=True, slots=True)
class PoolStats:
    """SQLAlchemy's figures for one pool.

    ``size`` is the number of connections the pool keeps (``pool_size``),
    ``checked_out`` those in use now, ``overflow`` how many beyond ``size``
    are open (negative while fewer than ``size`` exist: SQLAlchemy's own
    convention), ``checked_in`` those idle in the pool. Pools that keep no
    such figure (NullPool, StaticPool) report 0 for it.

    >>> PoolStats(size=5, checked_out=1, overflow=-4, checked_in=0).as_dict()["checked_out"]
    1
    """

    size: int
    checked_out: int
    overflow: int
    checked_in: int

    def as_dict(self) -> dict[str, int]:
        return {
            "size": self.size,
            "checked_out": self.checked_out,
            "overflow": self.overflow,
            "checked_in": self.checked_in,
        }

    def __add__(self, other: PoolStats) -> PoolStats:
        return PoolStats(
            self.size + other.size,
            self.checked_out + other.checked_out,
            self.overflow + other.overflow,
            self.checked_in + other.checked_in,
        )


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The outcome of one ping.

    ``status`` is ``"up"``, ``"down"`` (an error: ``error`` says which, with
    any password masked) or ``"timeout"`` (no answer within the timeout).
    ``latency_ms`` is the time to check out a connection and run the ping,
    None unless up. ``pool`` holds the engine's pool figures after the ping.
    ``in_recovery`` and ``replay_lag_s`` are filled for a PostgreSQL database
    declared with ``replica_of``; the lag is 0 while the replica has replayed
    everything it received.

    >>> report = HealthReport("down", None, "OperationalError: connection refused", None, None, None, None)
    >>> report.ok
    False
    """

    status: Status
    latency_ms: float | None
    error: str | None
    pool: PoolStats | None
    server_version: str | None
    in_recovery: bool | None
    replay_lag_s: float | None
    # The server that answered (host:port) and its role (primary/standby): PostgreSQL, where the driver says.
    host: str | None = None
    role: str | None = None

    @property
    def ok(self) -> bool:
        """True when the database answered."""
        return self.status == "up"

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping of every field."""
        return {
            "status": self.status,
            "latency_ms": self.latency_ms,
            "error": self.error,
            "pool": self.pool.as_dict() if self.pool is not None else None,
            "server_version": self.server_version,
            "in_recovery": self.in_recovery,
            "replay_lag_s": self.replay_lag_s,
            "host": self.host,
            "role": self.role,
        }


# -- pool figures ---------------------------------------------------------------------


def pool_stats(pool: Pool) -> PoolStats:
    """The figures of one SQLAlchemy pool; 0 for those its class does not keep."""

    def figure(name: str) -> int:
        value = getattr(pool, name, None)
        if callable(value):
            value = value()
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    return PoolStats(figure("size"), figure("checkedout"), figure("overflow"), figure("checkedin"))


def pool_figures(
    names: Iterable[str], sync: Mapping[str | None, Engine], async_: Mapping[str | None, AsyncEngine]
) -> dict[str, PoolStats]:
    """Name to pool figures for every built engine, in declaration order.

    When both a sync and an async engine of one database are built, their
    figures are added: together they are what this process holds.
    """
    figures: dict[str, PoolStats] = {}
    for name in names:
        pools = []
        if name in sync:
            pools.append(pool_stats(sync[name].pool))
        if name in async_:
            pools.append(pool_stats(async_[name].sync_engine.pool))
        if pools:
            total = pools[0]
            for more in pools[1:]:
                total += more
            figures[name] = total
    return figures


# -- one ping -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Answer:
    server_version: str | None
    in_recovery: bool | None = None
    replay_lag_s: float | None = None
    host: str | None = None
    role: str | None = None


def _probe(conn: Connection, replica: bool, timeout: float) -> _Answer:
    postgres = conn.dialect.name == "postgresql"
    if postgres:
        # A server that accepted the connection but is stuck (locks, overload) cancels the ping itself.
        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {max(1, int(timeout * 1000))}")
    conn.execute(select(literal_column("1"))).scalar()
    info = conn.dialect.server_version_info
    version = ".".join(str(part) for part in info) if info else None
    host, role = answered_by(conn.connection.dbapi_connection) if postgres else (None, None)
    answer = _Answer(version, host=host, role=role)
    if replica and postgres:
        in_recovery, lag = conn.exec_driver_sql(REPLICA_STATE_SQL).one()
        answer = _Answer(version, bool(in_recovery), float(lag) if lag is not None else None, host, role)
    conn.rollback()
    return answer


def _retry_once(error: BaseException) -> bool:
    # A pooled connection the server dropped (restart, idle timeout) fails once and is
    # invalidated; the second try gets a fresh one and says whether the server is really up.
    return isinstance(error, DBAPIError) and error.connection_invalidated


def _ping(engine: Engine, replica: bool, timeout: float) -> _Answer:
    with bounded_connect(engine, timeout):
        try:
            with engine.connect() as conn:
                return _probe(conn, replica, timeout)
        except DBAPIError as e:
            if not _retry_once(e):
                raise
        with engine.connect() as conn:
            return _probe(conn, replica, timeout)


async def _aping(engine: AsyncEngine, replica: bool, timeout: float) -> _Answer:
    def probe(conn: Connection) -> _Answer:
        return _probe(conn, replica, timeout)

    with bounded_connect(engine.sync_engine, timeout):
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(probe)
        except DBAPIError as e:
            if not _retry_once(e):
                raise
        async with engine.connect() as conn:
            return await conn.run_sync(probe)


def _up(answer: _Answer, started: float, pool: PoolStats | None) -> HealthReport:
    latency = round((time.monotonic() - started) * 1000, 3)
    return HealthReport(
        "up",
        latency,
        None,
        pool,
        answer.server_version,
        answer.in_recovery,
        answer.replay_lag_s,
        answer.host,
        answer.role,
    )


def _failed(error: BaseException, secrets: Iterable[str], pool: PoolStats | None) -> HealthReport:
    status: Status = "timeout" if isinstance(error, TimeoutError | PoolTimeoutError) else "down"
    return HealthReport(status, None, describe_error(error, secrets), pool, None, None, None)


def _timed_out(timeout: float, pool: PoolStats | None) -> HealthReport:
    return HealthReport("timeout", None, f"no answer within {timeout:g} s", pool, None, None, None)


def _names(registry: EngineProvider, names: Iterable[str] | None) -> list[str]:
    if registry.closed:
        raise RegistryClosedError("the registry is closed; there is nothing to check")
    if names is None:
        return registry.names
    chosen = list(names)
    for name in chosen:
        registry[name]  # UnknownDatabaseError for a name that was not declared
    return chosen


def _check_timeout(timeout: float) -> None:
    check_seconds(timeout, "timeout")


# -- observers (dbregistry.opentelemetry / dbregistry.prometheus) -------------------

HealthObserver = Callable[[str, str, HealthReport], None]
_OBSERVERS: weakref.WeakKeyDictionary[EngineProvider, list[HealthObserver]] = weakref.WeakKeyDictionary()


def observe_health(registry: EngineProvider, observer: HealthObserver) -> None:
    """Call ``observer(name, mode, report)`` for every report `check_health` / `acheck_health` return for ``registry``."""
    _OBSERVERS.setdefault(registry, []).append(observer)


def _observed(registry: EngineProvider, mode: str, reports: dict[str, HealthReport]) -> dict[str, HealthReport]:
    for observer in _OBSERVERS.get(registry, ()):
        for name, report in reports.items():
            observer(name, mode, report)
    return reports


# -- every database -------------------------------------------------------------------


def check_health(
    registry: EngineProvider, timeout: float = 5.0, names: Iterable[str] | None = None
) -> dict[str, HealthReport]:
    """Ping every database (or ``names``) with its sync engine, all at once; see `Registry.health`."""
    _check_timeout(timeout)
    chosen = _names(registry, names)
    results: dict[str, HealthReport] = {}
    engines: dict[str, Engine] = {}
    for name in chosen:
        try:
            engines[name] = registry.get(name)
        except Exception as e:
            results[name] = _failed(e, secrets_of(registry[name]), None)
    # Building engines does no I/O; the timeout starts with the pings.
    pings = {
        name: functools.partial(_run_ping, engine, registry[name], timeout, results, name)
        for name, engine in engines.items()
    }
    run_all_within(pings, timeout, "health")
    reports: dict[str, HealthReport] = {}
    for name in chosen:
        report = results.get(name)
        if report is None:
            report = _timed_out(timeout, pool_stats(engines[name].pool))
        reports[name] = report
    return _observed(registry, "sync", reports)


def _run_ping(engine: Engine, db: DatabaseConfig, timeout: float, results: dict[str, HealthReport], name: str) -> None:
    started = time.monotonic()
    try:
        answer = _ping(engine, db.replica_of is not None, timeout)
    except Exception as e:
        results[name] = _failed(e, secrets_of(db), pool_stats(engine.pool))
    else:
        results[name] = _up(answer, started, pool_stats(engine.pool))


async def acheck_health(
    registry: EngineProvider, timeout: float = 5.0, names: Iterable[str] | None = None
) -> dict[str, HealthReport]:
    """Ping every database (or ``names``) with its async engine, concurrently; see `Registry.ahealth`."""
    _check_timeout(timeout)
    chosen = _names(registry, names)

    async def one(name: str) -> HealthReport:
        db = registry[name]
        try:
            engine = registry.get_async(name)
        except Exception as e:
            return _failed(e, secrets_of(db), None)
        started = time.monotonic()
        try:
            answer = await asyncio.wait_for(_aping(engine, db.replica_of is not None, timeout), timeout)
        except TimeoutError:
            return _timed_out(timeout, pool_stats(engine.sync_engine.pool))
        except Exception as e:
            return _failed(e, secrets_of(db), pool_stats(engine.sync_engine.pool))
        return _up(answer, started, pool_stats(engine.sync_engine.pool))

    reports = await asyncio.gather(*(one(name) for name in chosen))
    return _observed(registry, "async", dict(zip(chosen, reports, strict=True)))
