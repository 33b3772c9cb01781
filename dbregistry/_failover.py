"""A writer that follows its primary: demoted servers dropped like disconnects, connecting again during a promotion.

Three listeners on the sync engine of a database meant to write (not a replica):

- ``handle_error``: an error that says the server no longer takes writes
  (SQLSTATE 25006 ``read_only_sql_transaction``, and what a server in recovery
  answers) sets SQLAlchemy's ``is_disconnect``, so the pool drops that
  connection and the next checkout connects again, where ``target_session_attrs``
  finds the new primary. A read-only use (``postgresql_readonly``, a psycopg
  connection with ``read_only``, or a 25006 while the server itself reports that
  it is writable, as after ``SET TRANSACTION READ ONLY``) is the user's error
  and keeps its connection.
- ``checkout`` (with ``pool_pre_ping`` and several hosts): after the ping's
  round trip, the parameter statuses the server reports by itself on
  PostgreSQL 14+ (``in_hot_standby``, ``default_transaction_read_only``) are
  read; a server that is no longer writable fails the checkout as a
  disconnect, and the pool connects again. No extra round trip.
- ``do_connect`` (several hosts): libpq and asyncpg try each host once; while
  a standby is being promoted no host is writable yet, so a new connection is
  tried again until the connect timeout (``FAILOVER_WINDOW`` when none is set).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

from sqlalchemy import event, exc
from sqlalchemy.engine import Engine, ExceptionContext

__all__ = ["FAILOVER_WINDOW", "answered_by", "install", "is_demotion", "not_writable", "parameter_status"]

READ_ONLY_SQL_TRANSACTION: Final = "25006"
CANNOT_CONNECT_NOW: Final = "57P03"
OBJECT_NOT_IN_PREREQUISITE_STATE: Final = "55000"
# Seconds a multi-host writer keeps trying to connect when no connect timeout is declared.
FAILOVER_WINDOW: Final = 10.0
_FIRST_PAUSE: Final = 0.05
_LONGEST_PAUSE: Final = 0.5
# Errors no other attempt can cure: authentication (class 28) and an unknown database (3D000).
_FINAL_SQLSTATE_PREFIXES: Final = ("28", "3D")
_FINAL_MESSAGES: Final = ("authentication failed", "does not exist", "no pg_hba.conf entry", "password")


def sqlstate_of(error: BaseException | None) -> str | None:
    """The SQLSTATE of a psycopg or asyncpg error (SQLAlchemy's asyncpg adapter copies it)."""
    code = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    return code if isinstance(code, str) else None


def is_demotion(error: BaseException | None) -> bool:
    """An error that says the server takes no writes: read-only, in recovery, or not accepting connections."""
    code = sqlstate_of(error)
    if code in (READ_ONLY_SQL_TRANSACTION, CANNOT_CONNECT_NOW):
        return True
    return code == OBJECT_NOT_IN_PREREQUISITE_STATE and "recovery is in progress" in str(error)


def parameter_status(dbapi_connection: Any, name: str) -> str | None:
    """A parameter status the server last reported on this connection (psycopg or asyncpg), or None."""
    driver = getattr(dbapi_connection, "driver_connection", dbapi_connection)
    info = getattr(driver, "info", None)
    if info is not None and hasattr(info, "parameter_status"):
        value = info.parameter_status(name)
        return value.decode() if isinstance(value, bytes) else value
    get_settings = getattr(driver, "get_settings", None)
    if get_settings is not None:
        value = getattr(get_settings(), name, None)
        return value if isinstance(value, str) else None
    return None


def not_writable(dbapi_connection: Any) -> bool | None:
    """True when the server said it takes no writes, False when it said it does, None when it did not say."""
    standby = parameter_status(dbapi_connection, "in_hot_standby")
    read_only = parameter_status(dbapi_connection, "default_transaction_read_only")
    if standby is None or read_only is None:
        return None
    return standby == "on" or read_only == "on"


def answered_by(dbapi_connection: Any) -> tuple[str | None, str | None]:
    """``host:port`` of the server this connection reached and its role (``primary``/``standby``), where known.

    Read from the driver (psycopg's ``info.host``/``info.port``, asyncpg's address)
    and from the ``in_hot_standby`` parameter status (PostgreSQL 14+): no round trip.
    """
    driver = getattr(dbapi_connection, "driver_connection", dbapi_connection)
    host: str | None = None
    info = getattr(driver, "info", None)
    if info is not None and hasattr(info, "host"):
        host = f"{info.host}:{info.port}"
    else:
        address = getattr(driver, "_addr", None)  # asyncpg keeps the address it connected to here
        if isinstance(address, tuple) and len(address) == 2:
            host = f"{address[0]}:{address[1]}"
        elif isinstance(address, str):
            host = address
    standby = parameter_status(dbapi_connection, "in_hot_standby")
    role = None if standby is None else ("standby" if standby == "on" else "primary")
    return host, role


def install(engine: Engine, *, several_hosts: bool, pre_ping: bool) -> None:
    """The listeners of a database that writes (see the module's docstring)."""
    event.listen(engine, "handle_error", _drop_demoted)
    if several_hosts and pre_ping:
        event.listen(engine, "checkout", _writable_after_ping)
    if several_hosts:
        event.listen(engine, "do_connect", _connect_through_promotion)


def _drop_demoted(ctx: ExceptionContext) -> None:
    if ctx.is_disconnect or not is_demotion(ctx.original_exception):
        return
    if ctx.connection is not None and ctx.connection.get_execution_options().get("postgresql_readonly"):
        return
    dbapi_connection = _dbapi_connection(ctx)
    if dbapi_connection is not None:
        if getattr(getattr(dbapi_connection, "driver_connection", dbapi_connection), "read_only", False) is True:
            return
        if not_writable(dbapi_connection) is False and sqlstate_of(ctx.original_exception) == READ_ONLY_SQL_TRANSACTION:
            return  # the server says it is writable: a read-only transaction of the user's own
    ctx.is_disconnect = True


def _dbapi_connection(ctx: ExceptionContext) -> Any:
    if ctx.connection is None:
        return None
    try:
        return ctx.connection.connection.dbapi_connection
    except exc.SQLAlchemyError:
        return None


def _writable_after_ping(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    if not_writable(dbapi_connection):
        raise exc.DisconnectionError("the server is no longer writable (demoted primary or read-only)")


def _connect_through_promotion(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
    window = _connect_timeout(cparams)
    deadline = time.monotonic() + window
    pause = _FIRST_PAUSE
    while True:
        try:
            return dialect.connect(*cargs, **cparams)
        except Exception as e:
            if _final(e) or time.monotonic() + pause >= deadline:
                raise
        _sleep(dialect, pause)
        pause = min(pause * 2, _LONGEST_PAUSE)


def _connect_timeout(cparams: dict[str, Any]) -> float:
    for key in ("connect_timeout", "timeout"):  # libpq's word, asyncpg's
        try:
            seconds = float(cparams[key])
        except (KeyError, TypeError, ValueError):
            continue
        if seconds > 0:
            return seconds
    return FAILOVER_WINDOW


def _final(error: BaseException) -> bool:
    code = sqlstate_of(error) or ""
    if code.startswith(_FINAL_SQLSTATE_PREFIXES):
        return True
    text = str(error).lower()
    return any(message in text for message in _FINAL_MESSAGES)


def _sleep(dialect: Any, seconds: float) -> None:
    if dialect.is_async:
        from sqlalchemy.util import await_only  # noqa: PLC0415 - async engines only

        await_only(asyncio.sleep(seconds))
    else:
        time.sleep(seconds)
