"""ORM sessions from the registry: the declared defaults, the event-loop rule, and per-request dependencies.

A session's keyword arguments are layered, lowest first: the file's top-level
``session:``, `Registry.configure_sessions` for every database, the database's
own ``session:``, `Registry.configure_sessions` for that database, and the
keywords of the call itself. The dependencies are plain generator functions
(FastAPI and Starlette need nothing else), so importing dbregistry never
imports FastAPI.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import event

from ._errors import EventLoopError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
    from sqlalchemy.orm import Session

    from ._registry import Registry
    from ._schema import RegistryConfig

__all__ = ["async_dependency", "check_loop", "session_options", "sync_dependency"]

SessionDependency = Callable[[], Iterator["Session"]]
AsyncSessionDependency = Callable[[], AsyncIterator["AsyncSession"]]

# Async drivers whose connections are sockets registered with one event loop
# (aiosqlite's live in threads of their own and serve any loop).
LOOP_BOUND_DRIVERS = frozenset({"asyncpg", "psycopg", "psycopg_async", "aiomysql", "asyncmy", "aioodbc"})


def session_options(
    config: RegistryConfig, name: str, configured: Mapping[str | None, Mapping[str, bool]], kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """The keyword arguments of a session on ``name``, layered as the module docstring says."""
    db = config.databases[name].session
    return {
        **config.session.options(),
        **configured.get(None, {}),
        **(db.options() if db is not None else {}),
        **configured.get(name, {}),
        **kwargs,
    }


def remember_loops(engine: AsyncEngine, loops: dict[int, asyncio.AbstractEventLoop]) -> None:
    """Keep ``loops[id(engine)]`` set to the event loop of the engine's latest new connection."""
    key = id(engine)

    def on_connect(dbapi_connection: Any, record: Any) -> None:
        loops[key] = asyncio.get_running_loop()

    event.listen(engine.sync_engine, "connect", on_connect)


def check_loop(name: str | None, engine: AsyncEngine, owner: asyncio.AbstractEventLoop) -> None:
    """Raise `EventLoopError` when ``engine`` pools connections of ``owner``, a loop other than the running one.

    asyncpg and psycopg connections belong to the loop that opened them; used
    from another they fail deep in the driver ("attached to a different loop",
    "Event loop is closed"). Outside a running loop, or with nothing pooled, there is nothing to check.
    """
    try:
        current = asyncio.get_running_loop()
    except RuntimeError:
        return
    if owner is current or engine.dialect.driver not in LOOP_BOUND_DRIVERS:
        return
    pool: Any = engine.sync_engine.pool
    if not hasattr(pool, "checkedin") or pool.checkedin() + pool.checkedout() == 0:
        return
    state = "which has ended" if owner.is_closed() else "which is still running"
    raise EventLoopError(
        f"the async engine of {name!r} holds connections opened in another event loop "
        f"({_describe(owner)}, {state}); this code runs in {_describe(current)}. "
        f"Close the async engines inside the loop that used them: `await registry.aclose()` before it ends, "
        f"then `registry.reopen()` (an app's lifespan, `FastAPI(lifespan=registry.lifespan)`, does both)"
    )


def _describe(loop: asyncio.AbstractEventLoop) -> str:
    return f"{type(loop).__name__} at {id(loop):#x}"


def sync_dependency(registry: Registry, name: str | None, read_only: bool) -> SessionDependency:
    """A generator function that yields one `Session` per request; see `Registry.session_dependency`."""

    def session_dependency() -> Iterator[Session]:
        with registry.session(name, read_only=read_only) as session:
            try:
                yield session
            except Exception:
                session.rollback()
                raise

    return session_dependency


def async_dependency(registry: Registry, name: str | None, read_only: bool) -> AsyncSessionDependency:
    """An async generator function that yields one `AsyncSession` per request; see `Registry.async_session_dependency`."""

    async def async_session_dependency() -> AsyncIterator[AsyncSession]:
        async with registry.async_session(name, read_only=read_only) as session:
            try:
                yield session
            except Exception:
                await session.rollback()
                raise

    return async_session_dependency
