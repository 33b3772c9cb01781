"""Pool event logging on the ``dbregistry.pool`` logger, switched on by ``log_pool_events: true``.

Set it per database or at the top level of the file (a database's own value
wins)::

    log_pool_events: true          # every database
    databases:
      primary:
        url: postgresql://app:secret@db/app
        log_pool_events: false     # ...but this one

What is logged, and at which level (each record names the database, carries
``extra`` fields ``database`` and ``pool_event``, ends with the pool's figures
as SQLAlchemy reports them at that moment, and never holds the password):

=============  ========  ==================================================
event          level     when
=============  ========  ==================================================
``connect``    INFO      the pool opened a new DBAPI connection
``checkout``   DEBUG     a connection was handed out
``checkin``    DEBUG     a connection came back to the pool
``invalidate`` WARNING   a connection was discarded (server gone, error)
``exhausted``  WARNING   no connection came free within ``pool_timeout``
=============  ========  ==================================================

SQLAlchemy has no pool event for exhaustion: the pool raises
``sqlalchemy.exc.TimeoutError`` from ``Engine.raw_connection()``, which every
checkout (``connect()``, sessions, async engines) goes through, so that method
is wrapped on the engine instance to log it on the way out.

>>> import logging
>>> from dbregistry import Registry
>>> registry = Registry.from_dict(
...     {"log_pool_events": True, "databases": {"dev": {"url": "sqlite://"}}}, environ={})
>>> with registry.get("dev").connect():   # logs "dev: connect ..." at INFO, checkout/checkin at DEBUG
...     pass
>>> registry.close()
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from ._health import pool_stats
from ._pools import sqlalchemy_defaults
from ._secrets import describe_error, secrets_of

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from ._schema import DatabaseConfig, RegistryConfig

__all__ = ["attach_pool_logging", "logger", "pool_events_enabled"]

logger = logging.getLogger("dbregistry.pool")

_ATTACHED = "dbregistry_pool_events"


def pool_events_enabled(db: DatabaseConfig, config: RegistryConfig) -> bool:
    """The database's own ``log_pool_events``, else the top-level one."""
    return db.log_pool_events if db.log_pool_events is not None else config.log_pool_events


def attach_pool_logging(name: str, engine: Engine | AsyncEngine, db: DatabaseConfig, config: RegistryConfig) -> None:
    """Log ``engine``'s pool events under ``name`` when the declaration asks for it; else do nothing.

    Listeners are attached to the engine, so they follow it through
    ``dispose()`` (which replaces the pool); attaching twice is a no-op.
    """
    if not pool_events_enabled(db, config):
        return
    # Not isinstance(AsyncEngine): importing sqlalchemy.ext.asyncio costs every sync user ~20 ms.
    sync_engine = engine if isinstance(engine, Engine) else engine.sync_engine
    if sync_engine.__dict__.get(_ATTACHED):
        return
    sync_engine.__dict__[_ATTACHED] = True
    secrets = secrets_of(db)
    waited = db.pool_timeout if db.pool_timeout is not None else sqlalchemy_defaults()["pool_timeout"]

    def log(level: int, what: str, message: str, *args: Any) -> None:
        if logger.isEnabledFor(level):
            figures = pool_stats(sync_engine.pool)
            logger.log(
                level,
                "%s: " + message + " [checked out %d, idle %d, overflow %d]",
                name,
                *args,
                figures.checked_out,
                figures.checked_in,
                figures.overflow,
                extra={"database": name, "pool_event": what},
            )

    def on_connect(dbapi_connection: Any, record: Any) -> None:
        log(logging.INFO, "connect", "connect: opened a new connection")

    def on_checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        log(logging.DEBUG, "checkout", "checkout")

    def on_checkin(dbapi_connection: Any, record: Any) -> None:
        log(logging.DEBUG, "checkin", "checkin")

    def on_invalidate(dbapi_connection: Any, record: Any, exception: BaseException | None) -> None:
        reason = describe_error(exception, secrets) if exception is not None else "invalidated explicitly"
        log(logging.WARNING, "invalidate", "invalidate: connection discarded (%s)", reason)

    event.listen(sync_engine, "connect", on_connect)
    event.listen(sync_engine, "checkout", on_checkout)
    event.listen(sync_engine, "checkin", on_checkin)
    event.listen(sync_engine, "invalidate", on_invalidate)

    raw_connection = sync_engine.raw_connection

    @functools.wraps(raw_connection)
    def raw_connection_logging_exhaustion() -> Any:
        try:
            return raw_connection()
        except PoolTimeoutError:
            log(logging.WARNING, "exhausted", "exhausted: no connection came free within %g s (pool_timeout)", waited)
            raise

    # An instance attribute shadows the method for this engine only; see the module docstring.
    sync_engine.raw_connection = raw_connection_logging_exhaustion  # type: ignore[method-assign]
