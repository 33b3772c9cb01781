"""The `Registry`: declared databases in, lazily built SQLAlchemy engines out."""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Self, TypeVar

from . import _causal, _health, _lifecycle, _routing, _sessions
from ._engine_cache import EngineCache
from ._engines import build_async_engine, build_sync_engine
from ._errors import CloseError, ConfigError, Problem, RegistryClosedError, UnknownDatabaseError
from ._fork import reset_after_fork
from ._loader import LoadedConfig, load_config
from ._poolers import derived_direct_url
from ._poolers import detect as detect_pooler
from ._poolevents import attach_pool_logging
from ._schema import DatabaseConfig, RegistryConfig
from ._secrets import shown_name
from ._sources import Origin, Origins
from ._waits import check_seconds
from ._yamlfile import DEFAULT_LIMITS, Limits, YamlDocument, load_yaml_file

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable
    from contextlib import AbstractAsyncContextManager
    from types import TracebackType

    from sqlalchemy.engine import URL, Engine
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
    from sqlalchemy.orm import Session

__all__ = ["Registry"]

StrPath = str | os.PathLike[str]

_CONFIG_VARIABLE = "DBREGISTRY_CONFIG"
# How long close() / aclose() (and so the ASGI lifespan's shutdown) wait for the engines in all.
DEFAULT_CLOSE_TIMEOUT = 10.0

# (name, "sync" | "async", direct, engine): see `Registry.add_engine_listener`.
EngineListener = Callable[[str, str, bool, Any], None]

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

    def __init__(self, config: RegistryConfig) -> None:
        self._init(LoadedConfig(config=config, origins=Origins(), source="RegistryConfig"))

    @classmethod
    def _of(cls, loaded: LoadedConfig) -> Self:
        """A registry of a loaded configuration (one that knows where each value came from)."""
        registry = cls.__new__(cls)
        registry._init(loaded)
        return registry

    def _init(self, config: LoadedConfig) -> None:
        self._loaded = config
        self._databases: Mapping[str, DatabaseConfig] = config.config.databases
        self._default = config.config.default
        # Every built engine; written only under _lock. get() and get_async() read its pooled
        # dicts through these references, as the router does (an attribute lookup fewer on the
        # hot path, bench figure 1); the cache empties them in place, never replaces them.
        self._cache = EngineCache()
        self._sync = self._cache.sync
        self._async = self._cache.async_
        self._lock = threading.Lock()
        self._closed = False
        self._router = _routing.Router(self, self._cache)
        self._engine_listeners: list[EngineListener] = []
        self._session_defaults: dict[str | None, dict[str, bool]] = {}
        self._dependencies: dict[tuple[bool, str | None, bool], Any] = {}
        # id(async engine) -> the event loop its latest connection was opened in (see _sessions.check_loop)
        # id(async engine) -> the event loop of its latest new connection (see _sessions.remember_loops):
        # sessions check it, and close() disposes the engine in it.
        self._loops: dict[int, asyncio.AbstractEventLoop] = {}
        reset_after_fork(self, drops_connections=True)

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
        return cls._of(
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
        return cls._of(
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
        return cls._of(
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
        return cls._of(
            load_config(
                document=load_yaml_file(path) if path else None,
                environ=environ,
                env_file=env_file,
                env_file_required=env_file != ".env",
                profile=profile,
                overrides=overrides,
            )
        )

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
            pass
        # Raised outside the except block: the KeyError it replaces (as its __context__) holds the name given.
        raise UnknownDatabaseError(name, list(self._databases))

    def __repr__(self) -> str:
        built = self._cache.built_count()
        state = "closed" if self._closed else f"{built} engine{'s' if built != 1 else ''} built"
        return f"<Registry [{', '.join(self._databases)}] default={self._default!r} {state}>"

    # -- engines ------------------------------------------------------------------------

    def get(self, name: str | None = None, *, direct: bool = False) -> Engine:
        """The sync engine of ``name`` (the default database when None), built on first use.

        ``direct=True`` gives the engine on the database's ``direct_url``, past
        its pooler: for migrations and session-level work (LISTEN/NOTIFY,
        advisory locks, ``SET``). A database with no pooler is direct already.
        """
        if direct:
            return self._get_direct(name, is_async=False)  # type: ignore[no-any-return]
        try:
            return self._sync[name]
        except KeyError:
            pass  # built outside the except block: a failure must not chain the KeyError holding the name given
        engine: Engine = self._build(name, is_async=False)
        return engine

    def get_async(self, name: str | None = None, *, direct: bool = False) -> AsyncEngine:
        """The async engine of ``name`` (the default database when None), built on first use.

        ``direct=True`` as for `get`.
        """
        if direct:
            aengine: AsyncEngine = self._get_direct(name, is_async=True)
        else:
            found = self._async.get(name)
            # Built outside any except block, as in get().
            aengine = self._build(name, is_async=True) if found is None else found
        # The hot path (bench figure 1) checks only for a loop that has ended (a second
        # asyncio.run, pytest-asyncio's loop per test): asking which loop is running costs
        # ~250 ns on CPython 3.11, is_closed() ~50 ns. Sessions make the full check.
        owner = self._loops.get(id(aengine))
        if owner is not None and owner.is_closed():
            _sessions.check_loop(self._default if name is None else name, aengine, owner)
        return aengine

    def _check_loop(self, name: str | None, engine: AsyncEngine) -> None:
        owner = self._loops.get(id(engine))
        if owner is not None and owner is not asyncio._get_running_loop():
            _sessions.check_loop(self._default if name is None else name, engine, owner)

    def _build(self, name: str | None, *, is_async: bool, url: URL | None = None) -> Any:
        resolved = self._resolve(name)
        engines = self._cache.table(is_async=is_async, direct=url is not None)
        with self._lock:
            if self._closed:
                raise RegistryClosedError(f"the registry is closed; cannot open {resolved!r}")
            engine = engines.get(resolved)
            if engine is None:
                origin = self.origin(resolved, "direct_url" if url is not None else "url")
                build: Any = build_async_engine if is_async else build_sync_engine
                engine = build(resolved, self._databases[resolved], origin, url=url)
                attach_pool_logging(resolved, engine, self._databases[resolved], self.config)
                if url is None:
                    # Hooked before the engine is published; watch takes no lock (see Router.watch).
                    self._router.watch(resolved, getattr(engine, "sync_engine", engine))
                if is_async:
                    _sessions.remember_loops(engine, self._loops)
                for listener in self._engine_listeners:
                    listener(resolved, "async" if is_async else "sync", url is not None, engine)
            self._cache.store(engines, name, resolved, engine)
            return engine

    def _get_direct(self, name: str | None, *, is_async: bool) -> Any:
        engine = self._cache.table(is_async=is_async, direct=True).get(name)
        if engine is not None:
            return engine
        resolved = self._resolve(name)
        db = self._databases[resolved]
        url = derived_direct_url(db)
        if url is None:
            if detect_pooler(db).transaction_mode:
                origin = self.origin(resolved)
                problem = Problem(
                    f"databases.{resolved}.direct_url",
                    "not declared: set direct_url to this database's URL without the pooler, "
                    "for migrations and session-level work",
                    source=origin.source,
                    file=origin.file,
                    line=origin.line,
                )
                raise ConfigError([problem], origin=origin.file or origin.source)
            return self._build(name, is_async=is_async)
        return self._build(name, is_async=is_async, url=url)

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
                raise RegistryClosedError(f"the registry is closed; cannot open {shown_name(name)}")
            raise UnknownDatabaseError(name, self.names)
        return name

    # -- sessions -----------------------------------------------------------------------

    def session(self, name: str | None = None, *, read_only: bool = False, **kwargs: Any) -> Session:
        """A new ORM `Session` bound to ``name``'s engine; use it as a context manager.

        ``read_only=True`` binds it to `reader` (a healthy replica, else ``name``),
        and on PostgreSQL its transactions are ``READ ONLY``: a write fails there
        even when the reads fell back to the primary.
        Keyword arguments go to ``Session`` (``expire_on_commit``, ...) and beat
        the declared defaults (``session:`` in the file, `configure_sessions`).
        """
        from sqlalchemy.orm import Session  # noqa: PLC0415 - the ORM costs ~60 ms to import

        bind = _read_only(self.reader(name)) if read_only else self.get(name)
        return Session(bind=bind, **self.session_options(name, **kwargs))

    def async_session(self, name: str | None = None, *, read_only: bool = False, **kwargs: Any) -> AsyncSession:
        """A new `AsyncSession` bound to ``name``'s async engine; ``async with`` it.

        ``read_only=True`` as for `session`, with `async_reader`; keyword
        arguments and declared defaults as for `session`. Raises `EventLoopError`
        when the engine holds connections of another event loop.
        """
        # The engine first: without greenlet, its ConfigError says what to install; the import would not.
        bind = self.async_reader(name) if read_only else self.get_async(name)
        from sqlalchemy.ext.asyncio import AsyncSession  # noqa: PLC0415

        self._check_loop(name, bind)
        if read_only:
            bind = _read_only(bind)
        return AsyncSession(bind=bind, **self.session_options(name, **kwargs))

    def session_options(self, name: str | None = None, **kwargs: Any) -> dict[str, Any]:
        """The keyword arguments `session` and `async_session` give ``Session`` for ``name``.

        >>> registry.session_options("primary")              # doctest: +SKIP
        {'expire_on_commit': False}

        Lowest first: the file's top-level ``session:``, `configure_sessions` for
        every database, the database's own ``session:``, `configure_sessions` for
        that database, then ``kwargs``.
        """
        return _sessions.session_options(self.config, self._resolve(name), self._session_defaults, kwargs)

    def configure_sessions(
        self,
        name: str | None = None,
        *,
        expire_on_commit: bool | None = None,
        autoflush: bool | None = None,
        autobegin: bool | None = None,
    ) -> None:
        """Set session defaults in code: for every database (``name=None``) or for one.

        >>> registry.configure_sessions(expire_on_commit=False)   # doctest: +SKIP
        >>> registry.async_session().sync_session.expire_on_commit  # doctest: +SKIP
        False

        Each call replaces the code defaults of its level; None leaves a key to
        the file. Code beats the file at the same level, a database's own beats
        every database's, and keywords passed to `session` beat both.
        """
        if name is not None:
            self._resolve(name)
        options = {"expire_on_commit": expire_on_commit, "autoflush": autoflush, "autobegin": autobegin}
        self._session_defaults[name] = {k: v for k, v in options.items() if v is not None}

    def session_dependency(
        self, name: str | None = None, *, read_only: bool = False
    ) -> Callable[[], Iterator[Session]]:
        """A FastAPI / Starlette dependency: one `Session` per request, rolled back on an error, closed at the end.

        >>> DB = Annotated[Session, Depends(registry.session_dependency())]     # doctest: +SKIP
        >>> @app.post("/items")                                                 # doctest: +SKIP
        ... def add(db: DB) -> None:
        ...     db.add(Item()); db.commit()

        It commits nothing itself: the endpoint calls ``commit()``, so a failed
        commit is an error the client sees, not one raised after the response.
        An exception raised in the endpoint rolls the session back. The same
        arguments give the same function, so FastAPI opens one session per
        request however many parameters ask for it. It is a plain generator
        function: FastAPI is not imported.
        """
        return self._dependency(False, name, read_only)  # type: ignore[no-any-return]

    def async_session_dependency(
        self, name: str | None = None, *, read_only: bool = False
    ) -> Callable[[], AsyncIterator[AsyncSession]]:
        """`session_dependency` for an `AsyncSession`.

        >>> DB = Annotated[AsyncSession, Depends(registry.async_session_dependency())]   # doctest: +SKIP
        >>> @app.get("/items/{id}")                                                     # doctest: +SKIP
        ... async def item(id: int, db: DB) -> Item:
        ...     return await db.get(Item, id)
        """
        return self._dependency(True, name, read_only)  # type: ignore[no-any-return]

    def _dependency(self, is_async: bool, name: str | None, read_only: bool) -> Any:
        self._resolve(name)  # a typo fails where the dependency is declared
        key = (is_async, name, read_only)
        dependency = self._dependencies.get(key)
        if dependency is None:
            make = _sessions.async_dependency if is_async else _sessions.sync_dependency
            dependency = self._dependencies.setdefault(key, make(self, name, read_only))
        return dependency

    # -- read/write routing (dbregistry.routing) -------------------------------------

    def reader(self, name: str | None = None) -> Engine:
        """The sync engine for reads of ``name`` (the default database when None).

        >>> with registry.reader("primary").connect() as conn:      # doctest: +SKIP
        ...     conn.execute(text("select count(*) from orders")).scalar()

        A healthy database declared ``replica_of: name``, in smooth weighted
        round robin by ``weight``; ``name``'s own engine when none is declared or
        none is healthy (logged once per change). A name without replicas of its
        own, such as a replica, is its own reader. No I/O and no lock: health is
        tracked from the errors of the replicas' own connections and from probes
        (see `configure_routing`).
        """
        return self._router.reader(name)

    def async_reader(self, name: str | None = None) -> AsyncEngine:
        """The async engine for reads of ``name``; as `reader`.

        >>> async with registry.async_reader("primary").connect() as conn:   # doctest: +SKIP
        ...     await conn.execute(text("select 1"))
        """
        return self._router.async_reader(name)

    def writer(self, name: str | None = None) -> Engine:
        """The sync engine for writes of ``name``: ``name`` itself, or for a replica the database it replicates.

        >>> registry.writer("replica") is registry.get("primary")   # doctest: +SKIP
        True
        """
        return self._router.writer(name)

    def async_writer(self, name: str | None = None) -> AsyncEngine:
        """The async engine for writes of ``name``; as `writer`.

        >>> registry.async_writer() is registry.get_async()          # doctest: +SKIP
        True
        """
        return self._router.async_writer(name)

    def causal_token(self) -> str | None:
        """The current context's causal token: where the writes it made (or was given) have to be read.

        >>> with registry.writer().begin() as conn:                  # doctest: +SKIP
        ...     conn.execute(text("insert into t values (1)"))
        >>> registry.causal_token()                                  # doctest: +SKIP
        'v1.JH6mPAAAAAAAAwAAAA'

        None when the context wrote nothing through a primary with ``read_your_writes``
        and was given no token. It is short, opaque, safe in a cookie, header or job
        payload, and holds no name or secret (each primary is a 4-byte hash of its name).
        """
        return _causal.current_token()

    def causal(self, token: str | None = None) -> _causal.CausalBlock:
        """A block (``with`` or ``async with``) in which ``token`` is current: its reads see the writes it
        stands for, and the block's own writes stay in the enclosing context's token when it exits.

        >>> def job(order_id: int, token: str | None) -> None:      # doctest: +SKIP
        ...     with registry.causal(token):
        ...         with registry.reader().connect() as conn:        # a replica that has replayed the token
        ...             conn.execute(text("select * from orders where id = :id"), {"id": order_id})

        A malformed or foreign token is ignored (logged on ``dbregistry.routing``), never raised.
        """
        return _causal.CausalBlock(token)

    def configure_routing(
        self,
        *,
        backoff: float | None = None,
        lag_check_interval: float | _routing.Unset | None = _routing.UNSET,
        probe_timeout: float | None = None,
    ) -> None:
        """Set how long a down replica is skipped before it is probed again (``backoff``, seconds, default 30),
        how often replicas declaring ``replica_max_lag_seconds`` have their lag checked
        (``lag_check_interval``, default 5; None: only by `check_replicas`), and how long one probe
        may take before the replica is marked down (``probe_timeout``, default 5).

        >>> registry.configure_routing(backoff=10, lag_check_interval=2, probe_timeout=1)   # doctest: +SKIP

        Waits already running are shortened to the new values, never lengthened.
        """
        self._router.configure(backoff=backoff, lag_check_interval=lag_check_interval, probe_timeout=probe_timeout)

    def check_replicas(self, name: str | None = None) -> dict[str, _routing.ReplicaStatus]:
        """Probe every replica (of ``name``, else of every database) now, with the sync engines; update routing.

        >>> {n: s.up for n, s in registry.check_replicas().items()}   # doctest: +SKIP
        {'replica_a': True, 'replica_b': False}

        Each probe connects and runs one query (the replay lag on PostgreSQL); a
        replica that fails is marked down, one that succeeds within its
        ``replica_max_lag_seconds`` is marked up at once, back-off or not.
        """
        return self._router.check(name)

    async def acheck_replicas(self, name: str | None = None) -> dict[str, _routing.ReplicaStatus]:
        """`check_replicas` with the async engines.

        >>> statuses = await registry.acheck_replicas("primary")      # doctest: +SKIP
        """
        return await self._router.acheck(name)

    def replica_status(self, name: str | None = None) -> dict[str, _routing.ReplicaStatus]:
        """What routing believes of every replica (of ``name``, else all), without any I/O.

        >>> registry.replica_status()["replica_b"].reason            # doctest: +SKIP
        "OperationalError: connection failed: ... Connection refused"
        """
        return self._router.status(name)

    # -- observing (dbregistry.opentelemetry / dbregistry.prometheus) -----------------

    def add_engine_listener(self, listener: EngineListener) -> None:
        """Call ``listener(name, mode, direct, engine)`` for every engine built so far, then for each one built later.

        >>> registry.add_engine_listener(lambda name, mode, direct, engine: print(name, mode, direct))  # doctest: +SKIP
        primary sync False

        ``mode`` is ``"sync"`` or ``"async"``; ``direct`` is True for an engine on
        ``direct_url``. Calls happen under the registry's lock, before the engine is
        handed out, so none is missed or seen twice; a listener must not block.
        """
        with self._lock:
            for built in self._cache.built():
                listener(*built)
            self._engine_listeners.append(listener)

    def read_your_writes_fallbacks(self) -> dict[str, int]:
        """How many reads of each database with read-your-writes went to it because no replica had replayed
        the context's writes yet (beside `read_fallbacks`, which counts reads that found no healthy replica).

        >>> registry.read_your_writes_fallbacks()            # doctest: +SKIP
        {'primary': 12}
        """
        return self._router.behind()

    def read_fallbacks(self) -> dict[str, int]:
        """How many `reader` / `async_reader` calls of each database with replicas got its own engine, no replica being healthy."""
        return self._router.fallbacks()

    # -- closing ------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether `close` / `aclose` ran and no `reopen` since."""
        return self._closed

    def reopen(self) -> None:
        """Open a closed registry again: engines are built anew on first use; nothing happens when it is open.

        >>> registry.close(); registry.reopen()               # doctest: +SKIP
        >>> registry.get("primary")                           # doctest: +SKIP
        Engine(...)

        `close` is final until this is called; an ASGI lifespan
        (`lifespan`) calls it on startup, so one app can be started and shut
        down several times in a process (several ``with TestClient(app)`` blocks).
        """
        with self._lock:
            self._closed = False
            self._router.reopen()

    def _detach(
        self,
    ) -> tuple[list[tuple[str, Engine]], list[tuple[str, AsyncEngine]], dict[int, asyncio.AbstractEventLoop]]:
        """Close the registry and hand over its engines, and the event loop of each async one's connections."""
        with self._lock:
            self._closed = True
            sync, async_ = self._cache.detach()
            loops, self._loops = self._loops, {}
        return sync, async_, loops

    def close(self, *, timeout: float = DEFAULT_CLOSE_TIMEOUT) -> None:
        """Dispose every engine built, sync and async, within ``timeout`` seconds in all; idempotent.

        The registry then refuses to build engines (`RegistryClosedError`) until `reopen`.

        >>> registry.close(timeout=5)                        # doctest: +SKIP

        Every engine is disposed even when some fail; the failures are then
        raised together as a `CloseError`. An async engine whose connections
        do not close in time (a database that stopped answering) is one of
        them, with a `TimeoutError`: its connections are dropped, not waited
        on. From inside a running event loop with async engines built, use
        ``await aclose()`` instead (this raises `RuntimeError` and changes nothing).
        """
        check_seconds(timeout, "timeout")
        if self._cache.has_async() and _lifecycle.loop_running():
            raise RuntimeError(
                "close() cannot wait for async engines inside a running event loop; use `await registry.aclose()`"
            )
        deadline = time.monotonic() + timeout
        self._router.close(min(timeout, _routing.DEFAULT_PROBE_TIMEOUT))
        sync, async_, loops = self._detach()
        failures = _dispose_sync(sync)
        for name, engine in async_:
            try:
                loop = loops.get(id(engine))
                _dispose_async_from_sync(name, engine, loop, max(0.0, deadline - time.monotonic()), timeout)
            except Exception as e:
                failures.append((f"{name} (async)", e))
        if failures:
            raise CloseError(failures)

    async def aclose(self, *, timeout: float = DEFAULT_CLOSE_TIMEOUT) -> None:
        """Dispose every engine built, awaiting the async ones, within ``timeout`` seconds in all; idempotent.

        Closed until `reopen`, as `close`.

        >>> await registry.aclose(timeout=5)                 # doctest: +SKIP

        As `close`: an engine that does not close in time is reported in the `CloseError`.
        """
        check_seconds(timeout, "timeout")
        deadline = time.monotonic() + timeout
        await self._router.aclose(min(timeout, _routing.DEFAULT_PROBE_TIMEOUT))
        sync, async_, _ = self._detach()
        failures = await _adispose(async_, max(0.0, deadline - time.monotonic()), timeout)
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
        # The child has only the thread that forked: a lock another thread held (inside a
        # first get()) would never be released. Its engines dict may lack that engine; the
        # next get() builds it.
        self._lock = threading.Lock()
        self._cache.drop_after_fork()

    # -- operating: health, stats, shutdown (dbregistry.health / lifecycle) --

    def health(self, timeout: float = 5.0, *, names: Iterable[str] | None = None) -> dict[str, _health.HealthReport]:
        """Ping every database (or ``names``) with its sync engine, all at once, each within ``timeout`` seconds.

        >>> reports = registry.health(timeout=2.0)           # doctest: +SKIP
        >>> {name: r.status for name, r in reports.items()}  # doctest: +SKIP
        {'primary': 'up', 'replica': 'timeout'}

        Returns name -> `HealthReport` (``status`` "up", "down" or "timeout",
        ``latency_ms``, masked ``error``, ``pool`` figures; recovery and replay
        lag for a PostgreSQL ``replica_of``). Each ping runs in a daemon thread
        and the call returns after the slowest, at most ``timeout`` later: a
        database that hangs is reported as "timeout", not waited on.
        """
        return _health.check_health(self, timeout, names)

    async def ahealth(
        self, timeout: float = 5.0, *, names: Iterable[str] | None = None
    ) -> dict[str, _health.HealthReport]:
        """`health` with the async engines, pinged concurrently: it takes as long as the slowest database.

        >>> reports = await registry.ahealth(timeout=1.0)    # doctest: +SKIP
        """
        return await _health.acheck_health(self, timeout, names)

    def stats(self) -> dict[str, _health.PoolStats]:
        """SQLAlchemy's pool figures (``size``, ``checked_out``, ``overflow``, ``checked_in``) of every built engine.

        >>> registry.stats()["primary"].checked_out          # doctest: +SKIP
        0

        A database whose sync and async engines are both built gets their sum.
        """
        return _health.pool_figures(self.names, self._cache.sync, self._cache.async_)

    def install_shutdown_hook(
        self, *, signals: Iterable[int] = _lifecycle.DEFAULT_SIGNALS, timeout: float = 10.0
    ) -> _lifecycle.ShutdownHook:
        """Close every engine at interpreter exit and on SIGTERM/SIGINT, then hand the signal on.

        >>> hook = registry.install_shutdown_hook()          # doctest: +SKIP
        >>> hook.uninstall()                                 # doctest: +SKIP

        A Python handler installed before is then called; with none, the
        signal's default action ends the process as it would have without the
        hook. Calling it again returns the same handle; ``uninstall()`` restores
        everything. ``timeout`` bounds the wait for closing on a signal.
        """
        return _lifecycle.install_shutdown_hook(self, signals=signals, timeout=timeout)

    def lifespan(self, app: object = None) -> AbstractAsyncContextManager[None]:
        """An ASGI lifespan: `reopen` on startup, ``await aclose()`` on shutdown: ``FastAPI(lifespan=registry.lifespan)``.

        >>> app = FastAPI(lifespan=registry.lifespan)        # doctest: +SKIP

        Between a shutdown and the next startup the registry is closed
        (`RegistryClosedError`); each run of the app builds its engines in its
        own event loop and disposes them there.
        """
        return _lifecycle.lifespan(self, app)


def _dispose_sync(engines: list[tuple[str, Engine]]) -> list[tuple[str, Exception]]:
    failures: list[tuple[str, Exception]] = []
    for name, engine in engines:
        try:
            engine.dispose()
        except Exception as e:
            failures.append((f"{name} (sync)", e))
    return failures


def _dispose_async_from_sync(
    name: str, engine: AsyncEngine, loop: asyncio.AbstractEventLoop | None, timeout: float, shown: float
) -> None:
    """Dispose an async engine from sync code, in ``loop``, the event loop its connections belong to."""
    if loop is None or loop.is_closed():
        bound = engine.dialect.driver in _sessions.LOOP_BOUND_DRIVERS
        pooled = getattr(engine.sync_engine.pool, "checkedin", None)  # NullPool keeps none and has no such method
        if loop is not None and bound and pooled is not None and pooled():
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
        asyncio.run(_dispose_within(engine, timeout, shown))
    elif loop.is_running():
        future = asyncio.run_coroutine_threadsafe(_dispose_within(engine, timeout, shown), loop)
        try:
            future.result(timeout + _CANCEL_GRACE * 2)
        except concurrent.futures.TimeoutError:
            future.cancel()  # the loop is busy or blocked: it never ran the close
            engine.sync_engine.dispose(close=False)
            raise _not_closed(shown) from None
    else:
        loop.run_until_complete(_dispose_within(engine, timeout, shown))


# A close that timed out is cancelled; the cancelled close is given this long to end.
_CANCEL_GRACE = 1.0


def _not_closed(timeout: float) -> TimeoutError:
    return TimeoutError(
        f"its connections did not close within {timeout:g} s (a database that stopped answering?); "
        "they were dropped without closing"
    )


async def _dispose_within(engine: AsyncEngine, timeout: float, shown: float | None = None) -> None:
    """``engine.dispose()``, given up after ``timeout``: asyncpg's close waits for the server without a bound.

    ``shown`` is the timeout the caller asked for, of which ``timeout`` is what was left.
    """
    task = asyncio.ensure_future(engine.dispose())
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if done:
        task.result()
        return
    # wait_for would wait for the cancelled close too; a frozen server may never let it end.
    task.cancel()
    await asyncio.wait({task}, timeout=_CANCEL_GRACE)
    engine.sync_engine.dispose(close=False)
    raise _not_closed(timeout if shown is None else shown)


async def _adispose(
    engines: list[tuple[str, AsyncEngine]], timeout: float, shown: float
) -> list[tuple[str, Exception]]:
    results = await asyncio.gather(
        *(_dispose_within(engine, timeout, shown) for _, engine in engines), return_exceptions=True
    )
    failures: list[tuple[str, Exception]] = []
    for (name, _), result in zip(engines, results, strict=True):
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):
                raise result
            failures.append((f"{name} (async)", result))
    return failures


_E = TypeVar("_E", "Engine", "AsyncEngine")


def _read_only(engine: _E) -> _E:
    """``engine`` whose transactions are READ ONLY where the dialect can say so (PostgreSQL), sharing its pool.

    READ ONLY is a property of a transaction: under AUTOCOMMIT there is none,
    and psycopg and asyncpg then drop it without a word (an INSERT commits).
    A read-only engine of an AUTOCOMMIT database runs in READ COMMITTED
    transactions instead, PostgreSQL's default; SQLAlchemy puts the connection
    back to AUTOCOMMIT when it returns to the pool.
    """
    if engine.dialect.name != "postgresql":
        return engine
    if _autocommit(engine):
        return engine.execution_options(postgresql_readonly=True, isolation_level="READ COMMITTED")
    return engine.execution_options(postgresql_readonly=True)


def _autocommit(engine: Engine | AsyncEngine) -> bool:
    sync = getattr(engine, "sync_engine", engine)
    # isolation_level= of create_engine is kept only on the dialect (SQLAlchemy 1.4 to 2.1).
    level = sync.get_execution_options().get("isolation_level") or getattr(
        sync.dialect, "_on_connect_isolation_level", None
    )
    return isinstance(level, str) and level.upper() == "AUTOCOMMIT"
