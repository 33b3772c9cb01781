"""Database URLs: parsing, masking, and the sync/async driver pairs.

A URL is kept as SQLAlchemy's immutable `URL`, whose ``repr`` already masks the
password (a ``?password=`` is moved into the password slot at parse time, so it
does too); `mask` (from `dbregistry._secrets`) is the one way a URL is turned
into text for people. How the URL query and ``connect_args`` reach each driver
is `dbregistry._connect`'s.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.resources import files
from typing import Final

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from ._errors import DBRegistryError, closest
from ._hosts import libpq_host_list_to_query
from ._secrets import check_url_text, normalize_url
from ._secrets import mask_url as mask

__all__ = [
    "DriverError",
    "dialect_of",
    "driver_of",
    "install_hint",
    "is_sqlite",
    "is_sqlite_memory",
    "mask",
    "parse_url",
    "resolve_driver",
]

logger = logging.getLogger("dbregistry.urls")

# Providers hand out the scheme that libpq and Heroku use; SQLAlchemy dropped it in 1.4.
_SCHEME_ALIASES: Final = {"postgres": "postgresql", "postgresql+psycopg3": "postgresql+psycopg"}


def parse_url(text: str) -> URL:
    """Parse a URL; `ValueError` with a message that never repeats the input."""
    text = text.strip()
    if not text:
        raise ValueError("is empty; expected a URL such as postgresql://user:password@host/db")
    # libpq's h1:p1,h2:p2 host list, which SQLAlchemy cannot read, in SQLAlchemy's ?host= form.
    text = libpq_host_list_to_query(text)
    try:
        url = make_url(text)
    except (ArgumentError, ValueError, TypeError):
        raise ValueError(
            "is not a database URL; expected dialect[+driver]://user:password@host:port/database "
            "(special characters in the password must be %-encoded)"
        ) from None
    backend, _, driver = url.drivername.partition("+")
    backend = _SCHEME_ALIASES.get(backend, backend)
    drivername = _SCHEME_ALIASES.get(f"{backend}+{driver}", f"{backend}+{driver}") if driver else backend
    if drivername != url.drivername:
        url = url.set(drivername=drivername)
    check_url_text(text, url)
    return normalize_url(url)


def dialect_of(url: URL) -> str:
    """``postgresql`` for ``postgresql+asyncpg://...``."""
    return url.get_backend_name()


def driver_of(url: URL) -> str | None:
    """The driver named in the URL, or None for a bare dialect."""
    return url.drivername.partition("+")[2] or None


def is_sqlite(url: URL) -> bool:
    return dialect_of(url) == "sqlite"


def is_sqlite_memory(url: URL) -> bool:
    """An in-memory SQLite database that each new connection would get empty.

    ``file::memory:?cache=shared`` (with ``uri=true``) and ``mode=memory`` URIs
    are shared between the connections of a process, so they are not counted.
    """
    if not is_sqlite(url):
        return False
    database = url.database or ""
    if database in ("", ":memory:"):
        return True
    return database.startswith("file::memory:") and "cache=shared" not in database and "cache" not in url.query


@dataclass(frozen=True, slots=True)
class _Dialect:
    sync: str
    async_: str
    sync_only: frozenset[str]
    async_only: frozenset[str]
    both: frozenset[str]


_DIALECTS: Final[dict[str, _Dialect]] = {
    "postgresql": _Dialect(
        "psycopg",
        "asyncpg",
        frozenset({"psycopg2", "psycopg2cffi", "pg8000"}),
        frozenset({"asyncpg"}),
        frozenset({"psycopg"}),
    ),
    "sqlite": _Dialect(
        "pysqlite", "aiosqlite", frozenset({"pysqlite", "pysqlcipher"}), frozenset({"aiosqlite"}), frozenset()
    ),
    "mysql": _Dialect(
        "pymysql",
        "aiomysql",
        frozenset({"mysqldb", "pymysql", "mysqlconnector", "cymysql"}),
        frozenset({"aiomysql", "asyncmy"}),
        frozenset(),
    ),
    "oracle": _Dialect("oracledb", "oracledb", frozenset({"cx_oracle"}), frozenset(), frozenset({"oracledb"})),
    "mssql": _Dialect("pyodbc", "aioodbc", frozenset({"pyodbc", "pymssql"}), frozenset({"aioodbc"}), frozenset()),
}
_DIALECTS["mariadb"] = _DIALECTS["mysql"]


def _sqlalchemy_has_driver(dialect: str, driver: str) -> bool:
    """Whether SQLAlchemy ships a module for this driver (mariadbconnector, pyodbc, ...); a stat, no import."""
    package = "mysql" if dialect == "mariadb" else dialect
    return (files("sqlalchemy.dialects") / package / f"{driver}.py").is_file()


class DriverError(DBRegistryError, ValueError):
    """No driver is known for the mode asked; the message names the one to declare."""


def unknown_driver(url: URL) -> str | None:
    """Why the URL's driver cannot be right (a known dialect, a driver of neither mode), or None.

    >>> from sqlalchemy.engine import make_url
    >>> unknown_driver(make_url("postgresql+psycopj://db/app"))
    "postgresql has no driver 'psycopj'; did you mean 'psycopg'? drivers: asyncpg, pg8000, psycopg, psycopg2, psycopg2cffi"
    """
    dialect, driver = dialect_of(url), driver_of(url)
    known = _DIALECTS.get(dialect)
    if known is None or driver is None:
        return None  # a third-party dialect is SQLAlchemy's to find, at the first get()
    drivers = sorted(known.sync_only | known.async_only | known.both)
    if driver in drivers or _sqlalchemy_has_driver(dialect, driver):
        return None
    hint = closest(driver, drivers)
    guess = f"did you mean {hint!r}? " if hint else ""
    return f"{dialect} has no driver {driver!r}; {guess}drivers: {', '.join(drivers)}"


def resolve_driver(url: URL, *, is_async: bool) -> URL:
    """The URL with the driver for one mode.

    A bare dialect gets the standard driver of its pair (postgresql: psycopg /
    asyncpg; sqlite: pysqlite / aiosqlite); a driver of the other mode is
    swapped for the other half of the pair; a driver that does both (psycopg 3)
    is kept.
    """
    dialect, driver = dialect_of(url), driver_of(url)
    known = _DIALECTS.get(dialect)
    mode = "async" if is_async else "sync"
    if known is None:
        if driver is None and is_async:
            raise DriverError(
                f"no async driver is known for the dialect {dialect!r}; "
                f"name one in the URL ({dialect}+<async driver>://...)"
            )
        return url
    wanted = known.async_ if is_async else known.sync
    if driver is None or driver in (known.sync_only if is_async else known.async_only):
        return url.set(drivername=f"{dialect}+{wanted}")
    if driver in known.both or driver in (known.async_only if is_async else known.sync_only):
        return url
    drivers = sorted((known.async_only if is_async else known.sync_only) | known.both)
    raise DriverError(
        f"the driver {driver!r} is not one the registry knows for {mode} use with {dialect}; "
        f"declare one of {', '.join(drivers)} (e.g. {dialect}+{wanted}://...)"
    )


_EXTRAS: Final[dict[str, str]] = {
    "asyncpg": "pip install 'dbregistry[postgres]'",
    "psycopg": "pip install 'dbregistry[postgres]'",
    "psycopg_binary": "pip install 'dbregistry[postgres]'",
    "aiosqlite": "pip install 'dbregistry[sqlite-async]'",
    "greenlet": "pip install 'dbregistry[all]' (async engines need greenlet)",
    "psycopg2": "pip install psycopg2-binary",
    "pymysql": "pip install PyMySQL",
    "aiomysql": "pip install aiomysql",
    "asyncmy": "pip install asyncmy",
    "MySQLdb": "pip install mysqlclient",
    "oracledb": "pip install oracledb",
    "pyodbc": "pip install pyodbc",
    "aioodbc": "pip install aioodbc",
}


def install_hint(module: str) -> str:
    """How to install the package that provides ``module``."""
    top = module.partition(".")[0]
    return _EXTRAS.get(top, f"pip install {top}")
