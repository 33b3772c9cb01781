"""Turning one validated declaration into a SQLAlchemy engine for one mode.

Only the options the user set are forwarded (SQLAlchemy keeps its own defaults
for the rest). The driver is chosen per mode from the dialect's pair, the pool
class is mapped to the mode's variant, and each driver quirk is a small
function in a list. SQLAlchemy's own late errors are turned into a
`ConfigError` naming the database and field, without chaining their text (it
may repeat the URL).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine

from . import _credentials, _failover
from ._connect import driver_connect_args
from ._errors import ConfigError, Problem
from ._hosts import hosts_of, load_balanced, session_attrs_default, shuffle_hosts, with_hosts
from ._poolers import detect as detect_pooler
from ._poolers import driver_settings
from ._pools import pool_class_for
from ._schema import ENGINE_OPTIONS, DatabaseConfig
from ._sources import Origin
from ._urls import DriverError, driver_of, install_hint, is_sqlite_memory, resolve_driver

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["EngineSpec", "build_async_engine", "build_sync_engine", "engine_spec"]


@dataclass(slots=True)
class EngineSpec:
    """Everything handed to ``create_engine`` / ``create_async_engine``."""

    url: URL
    kwargs: dict[str, Any] = field(default_factory=dict)
    direct: bool = False

    @property
    def connect_args(self) -> dict[str, Any]:
        args: dict[str, Any] = self.kwargs.setdefault("connect_args", {})
        return args


Quirk = Callable[[EngineSpec, DatabaseConfig, bool], None]
QUIRKS: list[Quirk] = []


def quirk(func: Quirk) -> Quirk:
    QUIRKS.append(func)
    return func


def engine_spec(db: DatabaseConfig, *, is_async: bool, url: URL | None = None) -> EngineSpec:
    """The URL and keyword arguments for one mode; `DriverError` when no driver fits.

    ``url`` replaces the declared URL: the direct (non-pooled) URL of a database behind a pooler.
    """
    resolved = resolve_driver(url if url is not None else db.url, is_async=is_async)
    kwargs = db.model_dump(include=set(ENGINE_OPTIONS), exclude_unset=True)
    # model_dump copies nested dicts, so the quirks below may update them freely.
    if db.pool_class is not None:
        kwargs["poolclass"] = pool_class_for(db.pool_class, is_async=is_async)
    if kwargs.get("pool_reset_on_return") == "none":
        kwargs["pool_reset_on_return"] = None
    spec = EngineSpec(resolved, kwargs, direct=url is not None)
    for adjust in QUIRKS:
        adjust(spec, db, is_async)
    if not spec.kwargs.get("connect_args"):
        spec.kwargs.pop("connect_args", None)
    return spec


@quirk
def connection_settings_for_the_driver(spec: EngineSpec, db: DatabaseConfig, is_async: bool) -> None:
    """The URL query and ``connect_args`` in this driver's words, plus its ``driver_args``."""
    spec.url, spec.kwargs["connect_args"] = driver_connect_args(db, spec.url, is_async=is_async)


@quirk
def no_prepared_statements_behind_a_transaction_pooler(spec: EngineSpec, db: DatabaseConfig, is_async: bool) -> None:
    """A transaction-mode pooler breaks named prepared statements; see `dbregistry.poolers`."""
    if spec.direct or not detect_pooler(db).transaction_mode:
        return
    for key, value in driver_settings(driver_of(spec.url) or "").items():
        spec.connect_args.setdefault(key, value)


@quirk
def several_hosts_for_both_drivers(spec: EngineSpec, db: DatabaseConfig, is_async: bool) -> None:
    """Every host in SQLAlchemy's ``?host=h:p`` form (its dialects translate it per driver), and a writer's default.

    A ``hosts:`` field applies to ``url`` (a ``direct_url`` names its own host).
    Several hosts without ``target_session_attrs`` get `session_attrs_default`.
    """
    if spec.url.get_backend_name() != "postgresql":
        return
    hosts = hosts_of(spec.url, None if spec.direct else db.hosts)
    if len(hosts) < 2:
        if db.hosts and hosts and not spec.direct:
            spec.url = spec.url.set(host=hosts[0].host, port=hosts[0].port)
        return
    spec.url = with_hosts(spec.url, hosts)
    if "target_session_attrs" not in spec.url.query and "target_session_attrs" not in spec.connect_args:
        spec.connect_args["target_session_attrs"] = session_attrs_default(replica=db.replica_of is not None)


def _install_listeners(engine: Engine, name: str, db: DatabaseConfig, spec: EngineSpec) -> None:
    """Per-connection passwords first (``do_connect`` listeners run in order), then failover."""
    declared = db.direct_url if spec.direct and db.direct_url else db.url
    _credentials.install(engine, name, db, declared, direct=spec.direct)
    several = spec.url.get_backend_name() == "postgresql" and len(hosts_of(spec.url)) > 1
    if several and engine.dialect.driver == "asyncpg" and load_balanced(declared, db.connect_args):
        event.listen(engine, "do_connect", shuffle_hosts)
    if db.replica_of is None and spec.url.get_backend_name() == "postgresql":
        _failover.install(engine, several_hosts=several, pre_ping=bool(db.pool_pre_ping))


@quirk
def shared_memory_sqlite_across_threads(spec: EngineSpec, db: DatabaseConfig, is_async: bool) -> None:
    """One in-memory SQLite connection served to every thread needs ``check_same_thread=False``."""
    if not is_async and db.pool_class == "StaticPool" and is_sqlite_memory(db.url):
        spec.connect_args.setdefault("check_same_thread", False)


@quirk
def engine_wide_isolation_level(spec: EngineSpec, db: DatabaseConfig, is_async: bool) -> None:
    """``execution_options: {isolation_level: ...}`` is the engine's level: given to ``create_engine`` as such.

    As an engine execution option it is set by a connect hook that runs after
    those of engines derived with ``execution_options()``, so a derived
    engine (the read-only one of `Registry.session`) could not change it.
    """
    options = spec.kwargs.get("execution_options")
    if isinstance(options, dict) and "isolation_level" in options and "isolation_level" not in spec.kwargs:
        spec.kwargs["isolation_level"] = options.pop("isolation_level")
        if not options:
            del spec.kwargs["execution_options"]


def build_sync_engine(name: str, db: DatabaseConfig, origin: Origin, *, url: URL | None = None) -> Engine:
    """``create_engine`` for one declared database."""
    spec = _spec_or_error(name, db, origin, is_async=False, url=url)
    try:
        engine = sqlalchemy.create_engine(spec.url, **spec.kwargs)
    except Exception as e:
        raise _build_error(name, origin, e, spec.url) from None
    _install_listeners(engine, name, db, spec)
    return engine


def build_async_engine(name: str, db: DatabaseConfig, origin: Origin, *, url: URL | None = None) -> AsyncEngine:
    """``create_async_engine`` for one declared database."""
    spec = _spec_or_error(name, db, origin, is_async=True, url=url)
    try:
        # SQLAlchemy raises for a missing greenlet only once per process, then builds async engines
        # that cannot run: import it on every build, first, so that every call fails alike.
        importlib.import_module("greenlet")
        from sqlalchemy.ext.asyncio import create_async_engine  # noqa: PLC0415 - ~20 ms, async users only

        engine = create_async_engine(spec.url, **spec.kwargs)
    except Exception as e:
        raise _build_error(name, origin, e, spec.url) from None
    sync_engine = engine.sync_engine
    _install_listeners(sync_engine, name, db, spec)
    return engine


def _spec_or_error(name: str, db: DatabaseConfig, origin: Origin, *, is_async: bool, url: URL | None) -> EngineSpec:
    try:
        return engine_spec(db, is_async=is_async, url=url)
    except (DriverError, ValueError) as e:
        raise _problem(name, origin, str(e)) from None


def _problem(name: str, origin: Origin, message: str) -> ConfigError:
    problem = Problem(f"databases.{name}.url", message, source=origin.source, file=origin.file, line=origin.line)
    return ConfigError([problem], origin=origin.file or origin.source)


# greenlet comes with both async extras; the one named is the extra of the URL's dialect.
_GREENLET_EXTRAS = {
    "postgresql": "pip install 'dbregistry[postgres]'",
    "sqlite": "pip install 'dbregistry[sqlite-async]'",
}


def _build_error(name: str, origin: Origin, error: Exception, url: URL) -> ConfigError:
    if isinstance(error, ModuleNotFoundError) and error.name and error.name.partition(".")[0] == "greenlet":
        hint = _GREENLET_EXTRAS.get(url.get_backend_name(), "pip install greenlet")
        return _problem(
            name,
            origin,
            f"async engines need the module 'greenlet' (SQLAlchemy's asyncio), not installed; run `{hint}`",
        )
    if isinstance(error, ModuleNotFoundError) and error.name:
        return _problem(
            name, origin, f"the driver module {error.name!r} is not installed; run `{install_hint(error.name)}`"
        )
    if isinstance(error, ImportError):
        # A driver that is installed but cannot load (psycopg without libpq, a wheel for another Python).
        module = error.name or url.get_driver_name()
        reason = " ".join(str(error).split())
        return _problem(
            name, origin, f"the driver module {module!r} cannot be imported ({reason}); run `{install_hint(module)}`"
        )
    if isinstance(error, sqlalchemy.exc.InvalidRequestError) and "async" in str(error):
        return _problem(
            name, origin, "the driver in this URL is not an async driver; name one such as postgresql+asyncpg"
        )
    if isinstance(error, sqlalchemy.exc.NoSuchModuleError):
        return _problem(name, origin, "SQLAlchemy has no dialect or driver by this name; check the URL's scheme")
    # Anything else is a bug of ours or an option SQLAlchemy rejects that no rule knew of:
    # keep its type, never its text (SQLAlchemy repeats arguments in it).
    return _problem(name, origin, f"SQLAlchemy refused the engine options ({type(error).__name__}); check the options")
