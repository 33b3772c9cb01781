"""Alembic driven by the registry: each declared database migrated on its direct URL, one migrator at a time.

An ``env.py`` of a few lines::

    from dbregistry import Registry
    from dbregistry.alembic import run_migrations
    from myapp.models import AnalyticsBase, Base

    run_migrations(Registry.load(), {"primary": Base.metadata, "analytics": AnalyticsBase.metadata})

Revisions follow Alembic's ``multidb`` layout: one ``versions/`` directory, one
linear history, ``upgrade_<name>()`` / ``downgrade_<name>()`` in every revision
file and the ``<name>_upgrades`` / ``<name>_downgrades`` autogenerate tokens.
``dbregistry alembic init DIR`` writes that ``env.py``, ``script.py.mako`` and an
``alembic.ini``.

Which databases: ``-x db=a,b`` (else ``databases=``), else every declared database
in ``target_metadata`` that is not a replica, in declaration order. Each one runs
on its migration URL (`dbregistry._migrate.migration_url`) with ``NullPool``, under
a session-level advisory lock on ``lock_key(name)``, taken by polling
``pg_try_advisory_lock`` on a connection of its own; SQLite gets an exclusive
``flock`` on ``<file>.migration-lock`` instead.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

try:
    from alembic import context
    from alembic.util import CommandError
except ModuleNotFoundError as e:  # pragma: no cover - depends on the installation
    raise ModuleNotFoundError(
        "Alembic is not installed, run `pip install 'dbregistry[alembic]'`", name=e.name
    ) from None
from sqlalchemy import MetaData, event, text
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from ._engines import build_sync_engine
from ._errors import ConfigError, DBRegistryError, Problem, closest
from ._migrate import lock_key, migration_url, physical_identity
from ._poolers import detect as detect_pooler
from ._schema import DatabaseConfig
from ._urls import dialect_of, mask

if TYPE_CHECKING:
    from ._registry import Registry

__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "MigrationConfigError",
    "MigrationLockTimeoutError",
    "lock_key",
    "run_migrations",
]

DEFAULT_LOCK_TIMEOUT: Final = 300.0
POLL_INTERVAL: Final = 0.2
CONNECT_TIMEOUT: Final = 30

logger = logging.getLogger("dbregistry.alembic")

# The fields a migration engine keeps: no pool options (it uses NullPool) and no
# isolation_level (Alembic runs each database's migrations in a transaction).
_KEPT_FIELDS: Final = ("url", "connect_args", "echo", "echo_pool", "execution_options", "pooler")


class MigrationConfigError(ConfigError, CommandError):
    """A selection or declaration migrations cannot run with; Alembic's command line prints it as ``FAILED:``."""


class MigrationLockTimeoutError(DBRegistryError, CommandError):
    """Another migrator held a database's migration lock for longer than ``lock_timeout``."""


@dataclass(frozen=True, slots=True)
class _Target:
    name: str
    db: DatabaseConfig
    url: URL
    metadata: MetaData | None


def run_migrations(
    registry: Registry,
    target_metadata: Mapping[str, MetaData | None] | MetaData | None = None,
    *,
    databases: Sequence[str] | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    sql_dir: str | os.PathLike[str] = ".",
    **configure: Any,
) -> None:
    """Run the Alembic command of this ``env.py`` for each selected database of ``registry``.

    >>> from dbregistry import Registry                                       # doctest: +SKIP
    >>> run_migrations(Registry.load(), {"primary": Base.metadata})           # doctest: +SKIP

    ``target_metadata`` maps database names to the `MetaData` autogenerate
    compares with (None: migrated, no autogenerate); a single `MetaData` belongs
    to the default database, or to the only one that is not a replica.
    ``databases`` selects by name (``-x db=a,b`` on the command line wins).
    ``lock_timeout`` bounds the wait for another migrator, in seconds
    (``-x lock_timeout=S`` wins). ``alembic upgrade --sql`` writes ``<name>.sql``
    per database into ``sql_dir`` (``-x sql_dir=DIR`` wins), connecting to nothing.
    Other keywords go to ``context.configure`` (``compare_type``, ``include_object``, ...).
    """
    x = context.get_x_argument(as_dictionary=True)
    metadata = _metadata_by_name(registry, target_metadata)
    if "db" in x:
        chosen: Sequence[str] | None = [n.strip() for n in x["db"].split(",") if n.strip()]
        where = f"alembic -x db={x['db']}"
    else:
        chosen, where = databases, "run_migrations(databases=...)"
    targets = _select(registry, metadata, chosen, where)
    if "lock_timeout" in x:
        timeout = _seconds(x["lock_timeout"], "alembic -x lock_timeout")
    else:
        timeout = _seconds(str(lock_timeout), "run_migrations(lock_timeout=...)")
    names = [t.name for t in targets]
    configure.setdefault("template_args", {})["databases"] = names
    if context.is_offline_mode():
        _run_offline(targets, Path(x.get("sql_dir", sql_dir)), configure)
    elif _revision_without_autogenerate():
        _run_without_database(targets, configure)
    else:
        for target in targets:
            _run_online(registry, target, timeout, configure)


# -- which databases ------------------------------------------------------------------------


def _metadata_by_name(
    registry: Registry, target_metadata: Mapping[str, MetaData | None] | MetaData | None
) -> dict[str, MetaData | None]:
    if target_metadata is None:
        return {}
    if isinstance(target_metadata, MetaData):
        primaries = [n for n in registry.names if registry[n].replica_of is None]
        if registry.default is not None and registry[registry.default].replica_of is None:
            return {registry.default: target_metadata}
        if len(primaries) == 1:
            return {primaries[0]: target_metadata}
        raise _error(
            "target_metadata",
            f"a single MetaData belongs to the default database or to the only one that is not a replica, "
            f"and there are {len(primaries)} ({', '.join(primaries)}) with no default: "
            "pass {name: MetaData}",
            "env.py",
        )
    unknown = [name for name in target_metadata if name not in registry]
    if unknown:
        raise _error("target_metadata", _unknown(unknown[0], registry), "env.py")
    return dict(target_metadata)


def _select(
    registry: Registry, metadata: dict[str, MetaData | None], chosen: Sequence[str] | None, where: str
) -> list[_Target]:
    if chosen is not None:
        if not chosen:
            raise _error("db", f"names no database; declared: {_declared(registry)}", where)
        for name in chosen:
            if name not in registry:
                raise _error("db", _unknown(name, registry), where)
            replica_of = registry[name].replica_of
            if replica_of is not None:
                raise _error(
                    "db", f"{name!r} is a replica of {replica_of!r} and is never migrated; select {replica_of!r}", where
                )
        names = [n for n in registry.names if n in chosen]
    else:
        names = []
        for name in registry.names:
            if name not in metadata:
                continue
            if registry[name].replica_of is not None:
                logger.info("skipping %s: a replica (of %s) is never migrated", name, registry[name].replica_of)
                continue
            names.append(name)
        if not names:
            raise _error(
                "target_metadata",
                "names no database to migrate (replicas are never migrated): "
                f"pass {{name: MetaData}} or select with -x db=NAME; declared: {_declared(registry)}",
                "env.py",
            )
    targets = [_target(registry, name, metadata.get(name)) for name in names]
    _refuse_shared_databases(registry, targets)
    return targets


def _target(registry: Registry, name: str, metadata: MetaData | None) -> _Target:
    db = registry[name]
    found = migration_url(db)
    if found.url is None:
        pooler, origin = detect_pooler(db), registry.origin(name)
        why = f"pooler: {pooler.mode}" if db.pooler is not None else pooler.reason
        problem = Problem(
            f"databases.{name}.direct_url",
            f"not declared, and migrations never run through a transaction-mode pooler "
            f"({why}); set direct_url to this database's URL without the pooler",
            source=origin.source,
            file=origin.file,
            line=origin.line,
        )
        raise MigrationConfigError([problem], origin=origin.file or origin.source)
    return _Target(name, db, found.url, metadata)


def _refuse_shared_databases(registry: Registry, targets: list[_Target]) -> None:
    """Two names on one physical database would share its ``alembic_version`` table: refused."""
    seen: dict[tuple[str, ...], str] = {}
    for target in targets:
        identity = physical_identity(target.url)
        if identity is None:
            continue
        first = seen.setdefault(identity, target.name)
        if first != target.name:
            origin = registry.origin(target.name)
            problem = Problem(
                f"databases.{target.name}",
                f"migrates the same database as {first!r} ({mask(target.url.set(drivername=dialect_of(target.url)))}), "
                "and the two would share one alembic_version table: point it at a database of its own, "
                f"or migrate one of them (-x db={first})",
                source=origin.source,
                file=origin.file,
                line=origin.line,
            )
            raise MigrationConfigError([problem], origin=origin.file or origin.source)


def _unknown(name: str, registry: Registry) -> str:
    hint = closest(name, registry.names)
    did_you_mean = f"; did you mean {hint!r}?" if hint else ""
    return f"unknown database {name!r}{did_you_mean} declared: {_declared(registry)}"


def _declared(registry: Registry) -> str:
    return ", ".join(registry.names) or "(none)"


def _error(path: str, message: str, where: str) -> MigrationConfigError:
    # `where` heads the message ("1 problem in alembic -x db=..."); the line itself needs no location.
    return MigrationConfigError([Problem(path, message)], origin=where)


def _seconds(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise _error("lock_timeout", f"expected a number of seconds above 0, got {text!r}", where)
    return value


# -- the three ways to run ------------------------------------------------------------------


def _run_online(registry: Registry, target: _Target, timeout: float, configure: dict[str, Any]) -> None:
    engine = _migration_engine(registry, target)
    try:
        with _migration_lock(engine, target, timeout), engine.connect() as connection:
            logger.info("database %s on %s", target.name, mask(target.url))
            context.configure(
                connection=connection,
                target_metadata=target.metadata,
                upgrade_token=f"{target.name}_upgrades",
                downgrade_token=f"{target.name}_downgrades",
                **configure,
            )
            with context.begin_transaction():
                context.run_migrations(engine_name=target.name)
    finally:
        engine.dispose()


def _run_offline(targets: list[_Target], sql_dir: Path, configure: dict[str, Any]) -> None:
    """One ``<name>.sql`` per database, as Alembic's ``multidb`` template writes; nothing is connected."""
    sql_dir.mkdir(parents=True, exist_ok=True)
    for target in targets:
        path = sql_dir / f"{target.name}.sql"
        with open(path, "w", encoding="utf-8") as buffer:
            context.configure(
                # The dialect alone: no driver, no credentials, no file is touched.
                url=URL.create(dialect_of(target.url)),
                output_buffer=buffer,
                target_metadata=target.metadata,
                literal_binds=True,
                dialect_opts={"paramstyle": "named"},
                upgrade_token=f"{target.name}_upgrades",
                downgrade_token=f"{target.name}_downgrades",
                **configure,
            )
            with context.begin_transaction():
                context.run_migrations(engine_name=target.name)
        logger.info("wrote the SQL of %s to %s", target.name, path)


def _run_without_database(targets: list[_Target], configure: dict[str, Any]) -> None:
    """``alembic revision`` without ``--autogenerate`` only needs each name's tokens: connect to nothing."""
    for target in targets:
        context.configure(
            url=URL.create(dialect_of(target.url)),
            output_buffer=io.StringIO(),
            as_sql=True,
            upgrade_token=f"{target.name}_upgrades",
            downgrade_token=f"{target.name}_downgrades",
            **configure,
        )
        with context.begin_transaction():
            context.run_migrations(engine_name=target.name)


def _revision_without_autogenerate() -> bool:
    # EnvironmentContext keeps the command's options in context_opts; Alembic's module
    # proxy (alembic.context) exposes the running instance only as `_proxy`.
    environment = getattr(context, "_proxy", None)
    opts: Mapping[str, Any] = getattr(environment, "context_opts", {})
    revision = opts.get("revision_context")
    return revision is not None and not revision.command_args.get("autogenerate")


def _migration_engine(registry: Registry, target: _Target) -> Engine:
    db = target.db
    kept = {field: getattr(db, field) for field in _KEPT_FIELDS if field in db.model_fields_set}
    for_migrations = DatabaseConfig.model_validate({**kept, "pool_class": "NullPool"})
    field = "direct_url" if target.url is not db.url else "url"
    engine = build_sync_engine(target.name, for_migrations, registry.origin(target.name, field), url=target.url)
    assert isinstance(engine.pool, NullPool)
    if engine.dialect.driver in ("psycopg", "psycopg2"):

        def bounded(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
            # libpq waits for the operating system's TCP timeout (minutes) unless told otherwise.
            cparams.setdefault("connect_timeout", CONNECT_TIMEOUT)

        event.listen(engine, "do_connect", bounded)
    return engine


# -- one migrator at a time -----------------------------------------------------------------


@contextlib.contextmanager
def _migration_lock(engine: Engine, target: _Target, timeout: float) -> Iterator[None]:
    dialect = engine.dialect.name
    identity = physical_identity(target.url)
    if dialect == "postgresql":
        with _advisory_lock(engine, target.name, timeout):
            yield
    elif dialect == "sqlite" and identity is not None:
        with _file_lock(Path(identity[-1] + ".migration-lock"), target.name, timeout):
            yield
    else:
        if dialect != "sqlite":
            logger.warning("%s: no migration lock for %s; run one migrator at a time", target.name, dialect)
        yield


@contextlib.contextmanager
def _advisory_lock(engine: Engine, name: str, timeout: float) -> Iterator[None]:
    """A session-level advisory lock on a connection of its own, polled outside any transaction.

    A waiter blocked in ``pg_advisory_lock()`` holds a snapshot that the holder's
    ``CREATE INDEX CONCURRENTLY`` waits for (a deadlock); polling
    ``pg_try_advisory_lock()`` in autocommit holds none between polls.
    """
    key = lock_key(name)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        _wait(
            lambda: bool(conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar()),
            name,
            f"PostgreSQL advisory lock {key}",
            timeout,
        )
        try:
            yield
        finally:
            # Closing this connection ends the session, which releases the lock anyway: a failed
            # unlock must not hide the migration's own error.
            try:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            except DBAPIError:
                logger.warning("%s: could not unlock the migration lock; closing its connection releases it", name)


@contextlib.contextmanager
def _file_lock(path: Path, name: str, timeout: float) -> Iterator[None]:
    """SQLite has no advisory lock: an exclusive ``flock`` on a file next to the database."""
    import fcntl  # noqa: PLC0415 - POSIX only; imported where SQLite migrations need it

    with open(path, "a+b") as handle:

        def attempt() -> bool:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        _wait(attempt, name, f"lock file {path}", timeout)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _wait(attempt: Callable[[], bool], name: str, lock: str, timeout: float) -> None:
    started = time.monotonic()
    if attempt():
        return
    logger.info("%s: waiting for another migrator (%s), up to %g s", name, lock, timeout)
    while True:
        if time.monotonic() - started >= timeout:
            raise MigrationLockTimeoutError(
                f"{name}: another migrator held the migration lock ({lock}) for more than {timeout:g} s; "
                "raise -x lock_timeout=SECONDS or run_migrations(lock_timeout=...)"
            )
        time.sleep(POLL_INTERVAL)
        if attempt():
            logger.info("%s: got the migration lock after %.1f s", name, time.monotonic() - started)
            return
