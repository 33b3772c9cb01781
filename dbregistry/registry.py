"""The `Registry`: declared databases in, lazily built SQLAlchemy engines out."""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import threading
import weakref
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Self

from .engines import build_async_engine, build_sync_engine, loop_of
from .errors import CloseError, ConfigError, Problem, RegistryClosedError, UnknownDatabaseError
from .loader import LoadedConfig, load_config
from .schema import DatabaseConfig, RegistryConfig
from .sources import Merged, Origin
from .yamlfile import DEFAULT_LIMITS, Limits, YamlDocument, load_yaml_file

if TYPE_CHECKING:
    from types import TracebackType

    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
    from sqlalchemy.orm import Session

__all__ = ["Registry"]

StrPath = str | os.PathLike[str]

_CONFIG_VARIABLE = "DBREGISTRY_CONFIG"

logger = logging.getLogger("dbregistry")


class Registry:
    """A validated set of databases whose engines are built on first use.

    >>> registry = Registry.from_dict({"databases": {"dev": {"url": "sqlite://", "pool_class": "StaticPool"}}},
    ...                               environ={})
    >>> with registry.get("dev").connect() as conn:
    ...     conn.exec_driver_sql("select 1").scalar()
    1
    >>> registry.close()

    Loading validates everything and builds nothing. ``get()`` builds a sync
    engine the first time a name is asked for and returns that same object
    ever after (a plain dict lookup once built); ``get_async()`` does the same
    for an async engine from the same declaration. ``close()`` / ``aclose()``
    dispose every engine that was built.
    """

    def __init__(self, config: RegistryConfig | LoadedConfig) -> None:
        if isinstance(config, RegistryConfig):
            config = LoadedConfig(config=config, merged=Merged(), source="RegistryConfig")
        self._loaded = config
        self._databases: Mapping[str, DatabaseConfig] = config.config.databases
        self._default = config.config.default
        self._sync: dict[str | None, Engine] = {}
        self._async: dict[str | None, AsyncEngine] = {}
        self._lock = threading.Lock()
        self._closed = False
        _LIVE.add(self)

    # -- constructors -----------------------------------------------------------------

    @classmethod
    def from_yaml(
        cls,
        path: StrPath,
        *,
        overrides: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
        env_file: StrPath | None = None,
        profile: str | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> Self:
        """Load a YAML file; the environment (``os.environ`` unless ``environ`` is given) is layered on top.

        ``overrides`` is a mapping of the same shape that beats every other
        source; ``environ={}`` ignores the environment; ``env_file`` names a
        ``.env`` file read below the real environment; ``profile`` selects an
        overlay of the file's ``profiles:`` (else ``DBREGISTRY_PROFILE``, else ``APP_ENV``).
        Raises `ConfigError` listing every problem found.
        """
        document = load_yaml_file(path, limits)
        return cls(
            load_config(document=document, environ=environ, env_file=env_file, profile=profile, overrides=overrides)
        )

    @classmethod
    def from_dict(
        cls,
        mapping: Mapping[str, Any],
        *,
        overrides: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
        env_file: StrPath | None = None,
        profile: str | None = None,
    ) -> Self:
        """Load a mapping of the YAML file's shape (``{"databases": {...}}``); see `from_yaml`."""
        if not isinstance(mapping, Mapping):
            problem = Problem(
                "", f"the configuration must be a mapping, got {type(mapping).__name__}", source="from_dict"
            )
            raise ConfigError([problem], origin="from_dict")
        document = YamlDocument(data=copy.deepcopy(dict(mapping)), file="from_dict", from_file=False)
        return cls(
            load_config(document=document, environ=environ, env_file=env_file, profile=profile, overrides=overrides)
        )

    @classmethod
    def from_env(
        cls,
        *,
        environ: Mapping[str, str] | None = None,
        env_file: StrPath | None = ".env",
        overrides: Mapping[str, Any] | None = None,
    ) -> Self:
        """Only the environment (and a ``.env`` file when present): ``DATABASE_URL``,
        ``DBREGISTRY_DATABASES__<NAME>__<FIELD>``, ``DBREGISTRY_DEFAULT``."""
        return cls(
            load_config(
                document=None,
                environ=environ,
                env_file=env_file,
                env_file_required=env_file != ".env",
                overrides=overrides,
            )
        )

    @classmethod
    def load(
        cls,
        config: StrPath | None = None,
        *,
        profile: str | None = None,
        environ: Mapping[str, str] | None = None,
        env_file: StrPath | None = ".env",
        overrides: Mapping[str, Any] | None = None,
    ) -> Self:
        """The YAML file named by ``config`` or ``DBREGISTRY_CONFIG`` (optional), with the
        environment and a ``.env`` file (when present) layered on top."""
        variables = os.environ if environ is None else environ
        path = config if config is not None else variables.get(_CONFIG_VARIABLE)
        required = env_file != ".env"
        if path:
            document = load_yaml_file(path)
            loaded = load_config(
                document=document,
                environ=environ,
                env_file=env_file,
                env_file_required=required,
                profile=profile,
                overrides=overrides,
            )
        else:
            loaded = load_config(
                document=None, environ=environ, env_file=env_file, env_file_required=required, overrides=overrides
            )
        return cls(loaded)

    # -- what was declared ------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """The declared database names, in declaration order."""
        return list(self._databases)

    @property
    def default(self) -> str | None:
        """The name ``get()`` uses when given none."""
        return self._default

    @property
    def config(self) -> RegistryConfig:
        """The validated configuration."""
        return self._loaded.config

    @property
    def profile(self) -> str | None:
        """The profile that was applied, if any."""
        return self._loaded.profile

    def origin(self, name: str, field: str | None = None) -> Origin:
        """Where a database's field (or the database itself) was declared."""
        path = ("databases", name, field) if field else ("databases", name)
        return self._loaded.origin(path)

    def __contains__(self, name: object) -> bool:
        return name in self._databases

    def __iter__(self) -> Iterator[str]:
        return iter(self._databases)

    def __len__(self) -> int:
        return len(self._databases)

    def __getitem__(self, name: str) -> DatabaseConfig:
        """The declaration of ``name``."""
        try:
            return self._databases[name]
        except KeyError:
            raise UnknownDatabaseError(name, list(self._databases)) from None

    def __repr__(self) -> str:
        built = len({id(e) for e in self._sync.values()}) + len({id(e) for e in self._async.values()})
        state = "closed" if self._closed else f"{built} engine{'s' if built != 1 else ''} built"
        return f"<Registry [{', '.join(self._databases)}] default={self._default!r} {state}>"

    # -- engines ------------------------------------------------------------------------

    def get(self, name: str | None = None) -> Engine:
        """The sync engine of ``name`` (the default database when None), built on first use."""
        try:
            return self._sync[name]
        except KeyError:
            engine: Engine = self._build(name, self._sync, build_sync_engine)
            return engine

    def get_async(self, name: str | None = None) -> AsyncEngine:
        """The async engine of ``name`` (the default database when None), built on first use."""
        try:
            return self._async[name]
        except KeyError:
            aengine: AsyncEngine = self._build(name, self._async, build_async_engine)
            return aengine

    def _build(self, name: str | None, engines: dict[str | None, Any], build: Any) -> Any:
        resolved = self._resolve(name)
        with self._lock:
            if self._closed:
                raise RegistryClosedError(f"the registry is closed; cannot open {resolved!r}")
            engine = engines.get(resolved)
            if engine is None:
                engine = build(resolved, self._databases[resolved], self.origin(resolved, "url"))
                engines[resolved] = engine
            if name is None:
                engines[None] = engine
            return engine

    def _resolve(self, name: str | None) -> str:
        if name is None:
            if self._default is None:
                raise UnknownDatabaseError(
                    None,
                    self.names,
                    message=f"no default database is declared; set `default:` or pass a name ({', '.join(self.names)})",
                )
            return self._default
        if name not in self._databases:
            if self._closed:
                raise RegistryClosedError(f"the registry is closed; cannot open {name!r}")
            raise UnknownDatabaseError(name, self.names)
        return name

    # -- sessions -----------------------------------------------------------------------

    def session(self, name: str | None = None, **kwargs: Any) -> Session:
        """A new ORM `Session` bound to ``name``'s engine; use it as a context manager.

        Keyword arguments go to ``Session`` (``expire_on_commit``, ...).
        """
        from sqlalchemy.orm import Session  # noqa: PLC0415 - the ORM costs ~60 ms to import

        return Session(bind=self.get(name), **kwargs)

    def async_session(self, name: str | None = None, **kwargs: Any) -> AsyncSession:
        """A new `AsyncSession` bound to ``name``'s async engine; ``async with`` it."""
        from sqlalchemy.ext.asyncio import AsyncSession  # noqa: PLC0415

        return AsyncSession(bind=self.get_async(name), **kwargs)

    # -- closing ------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def _detach(self) -> tuple[list[tuple[str, Engine]], list[tuple[str, AsyncEngine]]]:
        with self._lock:
            self._closed = True
            sync = _unique_engines(self._sync)
            async_ = _unique_engines(self._async)
            self._sync = {}
            self._async = {}
        return sync, async_

    def close(self) -> None:
        """Dispose every engine built, sync and async; idempotent.

        Every engine is disposed even when some fail; the failures are then
        raised together as a `CloseError`. From inside a running event loop
        with async engines built, use ``await aclose()`` instead (this raises
        `RuntimeError` and changes nothing).
        """
        if self._async and _loop_running():
            raise RuntimeError(
                "close() cannot wait for async engines inside a running event loop; use `await registry.aclose()`"
            )
        sync, async_ = self._detach()
        failures = _dispose_sync(sync)
        for name, engine in async_:
            try:
                _dispose_async_from_sync(name, engine)
            except Exception as e:
                failures.append((f"{name} (async)", e))
        if failures:
            raise CloseError(failures)

    async def aclose(self) -> None:
        """Dispose every engine built, awaiting the async ones; idempotent."""
        sync, async_ = self._detach()
        failures = await _dispose_async(async_)
        failures += _dispose_sync(sync)
        if failures:
            raise CloseError(failures)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def _after_fork_in_child(self) -> None:
        # SQLAlchemy's documented recipe: the child drops the parent's pooled
        # connections without closing them (closing would end the parent's sessions).
        for _, engine in _unique_engines(self._sync):
            engine.dispose(close=False)
        for _, aengine in _unique_engines(self._async):
            aengine.sync_engine.dispose(close=False)


def _unique_engines(engines: Mapping[str | None, Any]) -> list[tuple[str, Any]]:
    return [(name, engine) for name, engine in engines.items() if name is not None]


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _dispose_sync(engines: list[tuple[str, Engine]]) -> list[tuple[str, Exception]]:
    failures: list[tuple[str, Exception]] = []
    for name, engine in engines:
        try:
            engine.dispose()
        except Exception as e:
            failures.append((f"{name} (sync)", e))
    return failures


# Async drivers whose connections are sockets registered with one event loop.
_LOOP_BOUND_DRIVERS = frozenset({"asyncpg", "psycopg", "psycopg_async", "aiomysql", "asyncmy", "aioodbc"})


def _dispose_async_from_sync(name: str, engine: AsyncEngine) -> None:
    """Dispose an async engine from sync code, in the event loop its connections belong to."""
    loop = loop_of(engine)
    if loop is None or loop.is_closed():
        bound = engine.dialect.driver in _LOOP_BOUND_DRIVERS
        if loop is not None and bound and engine.sync_engine.pool.checkedin():  # type: ignore[attr-defined]
            # Socket connections of an ended loop cannot be closed from any other
            # loop (asyncpg fails with "Event loop is closed"); the pool is dropped
            # and the sockets close when the process lets go of them. aiosqlite's
            # connections live in threads of their own and close from a new loop.
            logger.warning(
                "async engine %r was used in an event loop that has ended; its pooled connections "
                "cannot be closed from here. Close async engines inside the loop: "
                "`await registry.aclose()` or `async with registry`",
                name,
            )
            engine.sync_engine.dispose(close=False)
            return
        asyncio.run(engine.dispose())
    elif loop.is_running():
        asyncio.run_coroutine_threadsafe(engine.dispose(), loop).result()
    else:
        loop.run_until_complete(engine.dispose())


async def _dispose_async(engines: list[tuple[str, AsyncEngine]]) -> list[tuple[str, Exception]]:
    results = await asyncio.gather(*(engine.dispose() for _, engine in engines), return_exceptions=True)
    failures: list[tuple[str, Exception]] = []
    for (name, _), result in zip(engines, results, strict=True):
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):
                raise result
            failures.append((f"{name} (async)", result))
    return failures


_LIVE: weakref.WeakSet[Registry] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for registry in list(_LIVE):
        registry._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
