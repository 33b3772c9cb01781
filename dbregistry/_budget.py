"""The connection budget: the most connections a fleet of this service can open, per server.

For each database the most connections one process can hold follows from its
pool class (SQLAlchemy's defaults where the option is unset):

=====================================  ====================================
pool class                             most connections
=====================================  ====================================
QueuePool / AsyncAdaptedQueuePool      ``(pool_size + max_overflow) x processes`` (defaults 5 and 10)
NullPool, SingletonThreadPool          ``processes x threads`` (one per thread using it at once)
StaticPool                             ``processes``
=====================================  ====================================

``pool_size: 0`` or ``max_overflow: -1`` sets no upper bound. SQLite files
count nothing: there is no server. The databases are grouped by server
(``host:port``) and the sum is set against what the server lets ordinary roles
open: ``max_connections`` minus ``superuser_reserved_connections`` (and, from
PostgreSQL 16, ``reserved_connections``). The limit is declared on a database
(``max_connections:``, with 3 reserved for PostgreSQL, PostgreSQL's default) or
read from the server (`read_limits`).

>>> from dbregistry._schema import RegistryConfig
>>> config = RegistryConfig.model_validate(
...     {"databases": {"primary": {"url": "postgresql://app@db/app", "max_connections": 100}}})
>>> budget = plan(config, processes=8)
>>> budget.servers[0].total, budget.servers[0].available, budget.servers[0].over
(120, 97, 23)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from ._connect import bounded_connect
from ._poolers import detect as detect_pooler
from ._pools import sqlalchemy_defaults
from ._rules import effective_pool_class
from ._secrets import describe_error, secrets_of
from ._urls import dialect_of, is_sqlite, mask
from ._waits import check_seconds, run_all_within

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

    from ._provider import EngineProvider
    from ._schema import DatabaseConfig, RegistryConfig

__all__ = [
    "Budget",
    "DatabaseLoad",
    "ServerBudget",
    "ServerLimit",
    "plan",
    "read_limits",
    "server_of",
]

_DEFAULT_PORTS: Final = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306, "mssql": 1433, "oracle": 1521}
_DEFAULT_RESERVED: Final = {"postgresql": 3}

_LIMITS_SQL: Final = (
    "SELECT name, setting FROM pg_settings "
    "WHERE name IN ('max_connections', 'superuser_reserved_connections', 'reserved_connections')"
)


@dataclass(frozen=True, slots=True)
class DatabaseLoad:
    """One database's share: ``per_process`` and ``total`` are None when the pool sets no bound."""

    name: str
    server: str | None
    url: str
    pool_class: str
    per_process: int | None
    total: int | None
    formula: str
    pooler: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "server": self.server,
            "url": self.url,
            "pool_class": self.pool_class,
            "per_process": self.per_process,
            "total": self.total,
            "formula": self.formula,
            "pooler": self.pooler,
        }


@dataclass(frozen=True, slots=True)
class ServerLimit:
    """What a server allows: ``available`` is what roles without reserved slots may open."""

    max_connections: int
    reserved: int
    source: str

    @property
    def available(self) -> int:
        return self.max_connections - self.reserved


@dataclass(frozen=True, slots=True)
class ServerBudget:
    """Every database on one server, their sum, and the server's limit when known."""

    server: str
    databases: tuple[DatabaseLoad, ...]
    limit: ServerLimit | None = None
    limit_error: str | None = None

    @property
    def total(self) -> int | None:
        """The sum over the databases; None when any of them is unbounded."""
        totals = [db.total for db in self.databases]
        return None if any(t is None for t in totals) else sum(t for t in totals if t is not None)

    @property
    def available(self) -> int | None:
        return self.limit.available if self.limit is not None else None

    @property
    def over(self) -> int | None:
        """By how many connections the fleet exceeds the server (0 when it fits, None when unknown)."""
        total, available = self.total, self.available
        if total is None or available is None:
            return None
        return max(0, total - available)

    @property
    def status(self) -> Literal["ok", "over", "unbounded", "unknown"]:
        if self.total is None:
            return "unbounded"
        if self.over is None:
            return "unknown"
        return "over" if self.over > 0 else "ok"

    def as_dict(self) -> dict[str, Any]:
        limit = self.limit
        return {
            "server": self.server,
            "status": self.status,
            "total": self.total,
            "max_connections": limit.max_connections if limit else None,
            "reserved": limit.reserved if limit else None,
            "available": self.available,
            "over": self.over,
            "limit_source": limit.source if limit else None,
            "limit_error": self.limit_error,
            "databases": [db.as_dict() for db in self.databases],
        }


@dataclass(frozen=True, slots=True)
class Budget:
    """The whole plan: servers in declaration order, and the databases that need no server."""

    processes: int
    threads: int
    servers: tuple[ServerBudget, ...]
    serverless: tuple[DatabaseLoad, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """False when any server would be exceeded or a pool sets no bound (the command's exit code)."""
        return all(server.status in ("ok", "unknown") for server in self.servers)

    @property
    def status(self) -> Literal["ok", "over", "unbounded", "unknown"]:
        """The worst server's status: over, then unbounded, then unknown (no limit to compare with), then ok."""
        statuses = {server.status for server in self.servers}
        return next((s for s in ("over", "unbounded", "unknown") if s in statuses), "ok")

    def as_dict(self) -> dict[str, Any]:
        """The plan as JSON data; ``ok`` is null, not true, when a server's limit is unknown."""
        status = self.status
        return {
            "ok": None if status == "unknown" else self.ok,
            "status": status,
            "unknown_limits": [server.server for server in self.servers if server.status == "unknown"],
            "processes": self.processes,
            "threads": self.threads,
            "servers": [server.as_dict() for server in self.servers],
            "serverless": [db.as_dict() for db in self.serverless],
        }


def server_of(url: URL) -> str | None:
    """``host:port`` with the dialect's default port filled in; None for SQLite."""
    if is_sqlite(url):
        return None
    port = url.port or _DEFAULT_PORTS.get(dialect_of(url))
    host = url.host or "localhost"
    return f"{host}:{port}" if port else host


def _load(name: str, db: DatabaseConfig, processes: int, threads: int) -> DatabaseLoad:
    pool_class, _ = effective_pool_class(db)
    server = server_of(db.url)
    per_process: int | None
    if pool_class in ("QueuePool", "AsyncAdaptedQueuePool"):
        defaults = sqlalchemy_defaults()
        size = db.pool_size if db.pool_size is not None else defaults["pool_size"]
        overflow = db.max_overflow if db.max_overflow is not None else defaults["max_overflow"]
        if size == 0 or overflow == -1:
            per_process = None
            why = "pool_size 0" if size == 0 else "max_overflow -1"
            formula = f"{why}: no upper bound"
        else:
            per_process = size + overflow
            formula = f"({size} + {overflow}) x {processes}"
    elif pool_class in ("NullPool", "SingletonThreadPool"):
        per_process = threads
        formula = f"{processes} x {threads} thread{'s' if threads != 1 else ''}"
    else:
        per_process = 1
        formula = f"1 x {processes}"
    if server is None:
        per_process, formula = 0, "no server"
    total = per_process * processes if per_process is not None else None
    mode = detect_pooler(db).mode
    pooler = mode if mode != "none" else None
    return DatabaseLoad(name, server, mask(db.url), pool_class, per_process, total, formula, pooler)


def _declared_limit(dbs: list[tuple[str, DatabaseConfig]]) -> ServerLimit | None:
    declared = [(db.max_connections, name, db) for name, db in dbs if db.max_connections is not None]
    if not declared:
        return None
    # Databases on one server share its limit; when they disagree the smallest is the safe one.
    limit, name, db = min(declared, key=lambda item: item[0])
    reserved = _DEFAULT_RESERVED.get(dialect_of(db.url), 0)
    return ServerLimit(limit, reserved, f"declared on {name}")


def plan(
    config: RegistryConfig,
    *,
    processes: int,
    threads: int = 1,
    live: Mapping[str, ServerLimit | str] | None = None,
) -> Budget:
    """The budget for ``processes`` processes of ``threads`` threads each.

    ``live`` maps ``host:port`` to a limit read from the server, or to why it
    could not be read; a live limit beats a declared one.
    """
    if processes < 1 or threads < 1:
        raise ValueError("processes and threads must be at least 1")
    live = live or {}
    by_server: dict[str, list[tuple[str, DatabaseConfig]]] = {}
    loads: dict[str, DatabaseLoad] = {}
    serverless: list[DatabaseLoad] = []
    for name, db in config.databases.items():
        load = _load(name, db, processes, threads)
        if load.server is None:
            serverless.append(load)
            continue
        loads[name] = load
        by_server.setdefault(load.server, []).append((name, db))
    servers = []
    for server, dbs in by_server.items():
        found = live.get(server)
        limit = found if isinstance(found, ServerLimit) else _declared_limit(dbs)
        error = found if isinstance(found, str) else None
        servers.append(ServerBudget(server, tuple(loads[name] for name, _ in dbs), limit, error))
    return Budget(processes, threads, tuple(servers), tuple(serverless))


def read_limits(registry: EngineProvider, *, timeout: float = 5.0) -> dict[str, ServerLimit | str]:
    """``host:port`` to the limit each PostgreSQL server reports, or why it could not be read.

    One connection per server, through the first database declared on it; the servers
    are read at once, and a server that has not answered after ``timeout`` seconds
    (connect and query) is reported as such, its thread left behind.
    """
    check_seconds(timeout, "timeout")
    first: dict[str, str] = {}
    for name in registry.names:
        server = server_of(registry[name].url)
        if server is not None:
            first.setdefault(server, name)
    limits: dict[str, ServerLimit | str] = {}
    reads: dict[str, Callable[[], None]] = {}
    for server, name in first.items():
        if dialect_of(registry[name].url) != "postgresql":
            limits[server] = f"--live reads PostgreSQL only; declare max_connections on {name}"
        else:
            reads[name] = functools.partial(_read_limit, registry, server, name, timeout, limits)
    run_all_within(reads, timeout, "budget")
    return {
        server: limits.get(server, f"could not read the limits through {name}: no answer within {timeout:g} s")
        for server, name in first.items()
    }


def _read_limit(
    registry: EngineProvider, server: str, name: str, timeout: float, limits: dict[str, ServerLimit | str]
) -> None:
    db = registry[name]
    try:
        engine = registry.get(name)
        with bounded_connect(engine, timeout), engine.connect() as conn:
            settings = {row[0]: int(row[1]) for row in conn.exec_driver_sql(_LIMITS_SQL)}
    except Exception as e:
        limits[server] = f"could not read the limits through {name}: {describe_error(e, secrets_of(db))}"
        return
    reserved = settings.get("superuser_reserved_connections", 0) + settings.get("reserved_connections", 0)
    limits[server] = ServerLimit(settings["max_connections"], reserved, f"live, through {name}")
