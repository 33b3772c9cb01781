"""Connection settings, declared once and translated for the driver of each mode.

A database's URL query and its ``connect_args`` are the user's words for the
connection (libpq's for PostgreSQL, ``sqlite3.connect``'s for SQLite), not one
driver's keyword list. `driver_connect_args` turns them into the keywords the
driver of one mode takes: libpq's ``connect_timeout`` becomes asyncpg's
``timeout``, ``options=-c name=value`` its ``server_settings``, ``sslmode`` and
the certificate files an ``ssl`` context of the same strength; asyncpg's own
words go the other way for psycopg. ``driver_args.<driver>`` is handed to that
driver alone, unchanged.

What each driver takes is read from the driver itself where it can be
(``asyncpg.connect``'s signature, libpq's keyword list through psycopg,
``sqlite3.connect``'s signature); a setting one driver cannot carry is a
`Refusal`, reported at load by `refusals` and never a ``TypeError`` at the
first connection.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import functools
import inspect
import math
import os
import re
import ssl
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import event
from sqlalchemy.engine import URL, Engine

from ._errors import DBRegistryError
from ._urls import DriverError, resolve_driver

__all__ = [
    "Refusal",
    "bounded_connect",
    "describe_tls",
    "driver_connect_args",
    "driver_name",
    "missing_files",
    "refusals",
]


@dataclass(frozen=True, slots=True)
class Refusal:
    """A setting that cannot reach one driver: ``field`` is its path under the database."""

    field: str
    message: str


class RefusedError(DBRegistryError, ValueError):
    """Raised when an engine is built from settings `refusals` would have reported."""


# -- what each driver takes, read from the driver ---------------------------------------


# Keywords SQLAlchemy's async dialects take out of connect_args before the driver sees them.
_SQLALCHEMY_ASYNC: Final = frozenset({"async_creator_fn"})
_SQLALCHEMY_ASYNCPG: Final = frozenset({"prepared_statement_cache_size", "prepared_statement_name_func"})


@functools.cache
def libpq_keywords() -> frozenset[str] | None:
    """Every keyword the installed libpq takes (through psycopg), or None without psycopg."""
    try:
        from psycopg import pq  # noqa: PLC0415 - ~240 ms; only when a PostgreSQL setting is checked
    except ImportError:
        return None
    return frozenset(option.keyword.decode() for option in pq.Conninfo.get_defaults())


@functools.cache
def psycopg_keywords() -> frozenset[str]:
    """psycopg's own ``connect()`` keywords, beside libpq's (``prepare_threshold``, ``autocommit``, ...)."""
    try:
        import psycopg  # noqa: PLC0415
    except ImportError:
        return frozenset({"prepare_threshold", "autocommit"})
    return _keywords(psycopg.Connection.connect, exclude={"conninfo"})


@functools.cache
def asyncpg_keywords() -> frozenset[str] | None:
    """The keywords ``asyncpg.connect()`` takes, or None without asyncpg."""
    try:
        import asyncpg  # type: ignore[import-untyped]  # noqa: PLC0415
    except ImportError:
        return None
    # The URL's parts are SQLAlchemy's to pass; ``loop`` and ``dsn`` are not settings.
    # SQLAlchemy's asyncpg dialect takes three keywords of its own (its connect()).
    return _keywords(asyncpg.connect, exclude={"dsn", "loop"}) | _SQLALCHEMY_ASYNC | _SQLALCHEMY_ASYNCPG


@functools.cache
def sqlite_keywords(*, is_async: bool) -> frozenset[str]:
    """``sqlite3.connect``'s keywords (from its signature text); aiosqlite adds its own."""
    import sqlite3  # noqa: PLC0415

    text = getattr(sqlite3.connect, "__text_signature__", None) or ""
    names = {m.group(1) for m in re.finditer(r"(\w+)\s*=", text)}
    if is_async:
        try:
            import aiosqlite  # noqa: PLC0415
        except ImportError:
            names.add("iter_chunk_size")
        else:
            names |= _keywords(aiosqlite.connect, exclude={"database", "loop"})
        names |= _SQLALCHEMY_ASYNC
    return frozenset(names)


def _keywords(func: Callable[..., Any], *, exclude: set[str]) -> frozenset[str]:
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = inspect.signature(func).parameters.values()
    return frozenset(p.name for p in params if p.kind in kinds and p.name not in exclude)


# MySQL drivers are not installed with dbregistry (and not in its tests), so their
# keyword lists are written here, from each driver's connect() signature.
_MYSQL_COMMON: Final = frozenset(
    {
        "host", "user", "password", "port", "unix_socket", "charset", "sql_mode", "read_default_file", "conv",
        "use_unicode", "client_flag", "init_command", "connect_timeout", "read_default_group", "autocommit",
        "local_infile", "ssl", "auth_plugin", "program_name", "server_public_key", "db", "database",
    }
)  # fmt: skip
_MYSQL_KEYWORDS: Final[dict[str, frozenset[str]]] = {
    "pymysql": _MYSQL_COMMON
    | {
        "passwd", "collation", "max_allowed_packet", "defer_connect", "auth_plugin_map", "read_timeout",
        "write_timeout", "bind_address", "binary_prefix", "ssl_ca", "ssl_cert", "ssl_disabled", "ssl_key",
        "ssl_key_password", "ssl_verify_cert", "ssl_verify_identity", "compress", "named_pipe", "cursorclass",
    },
    "mysqldb": _MYSQL_COMMON
    | {
        "passwd", "collation", "compress", "named_pipe", "cursorclass", "ssl_mode", "binary_prefix",
        "read_timeout", "write_timeout",
    },
    "aiomysql": _MYSQL_COMMON | {"cursorclass", "echo", "async_creator_fn"},
    "asyncmy": _MYSQL_COMMON
    | {
        "collation", "cursor_cls", "max_allowed_packet", "defer_connect", "auth_plugin_map", "read_timeout",
        "write_timeout", "bind_address", "binary_prefix", "echo", "async_creator_fn",
    },
}  # fmt: skip


def accepted(driver: str) -> frozenset[str] | None:
    """The keywords one driver's ``connect()`` takes; None when unknown (anything is passed on)."""
    if driver == "psycopg":
        libpq = libpq_keywords()
        return None if libpq is None else libpq | psycopg_keywords()
    if driver == "asyncpg":
        return asyncpg_keywords()
    if driver in ("pysqlite", "aiosqlite"):
        return sqlite_keywords(is_async=driver == "aiosqlite")
    return _MYSQL_KEYWORDS.get(driver)


# -- the translation --------------------------------------------------------------------


@dataclass(slots=True)
class _Target:
    """One mode's driver, and what has been translated for it so far."""

    driver: str
    mode: str
    # The other mode's driver: where a setting this one cannot take may be moved.
    other: str
    args: dict[str, Any]
    problems: list[Refusal]
    # Where each setting was written, for messages: ``connect_args.<key>`` or ``url``.
    where: dict[str, str]

    @property
    def label(self) -> str:
        return f"{self.driver} (the {self.mode} mode)"

    def refuse(self, key: str, message: str) -> None:
        self.problems.append(Refusal(self.where.get(key, f"connect_args.{key}"), message))

    def put(self, key: str, value: Any) -> None:
        """Set one keyword, as the type the driver wants (variables give text)."""
        try:
            self.args[key] = _coerce(self.driver, key, value)
        except ValueError as e:
            self.refuse(key, str(e))


Words = dict[str, Any]


def driver_connect_args(db: Any, url: URL, *, is_async: bool) -> tuple[URL, dict[str, Any]]:
    """The URL (its query cleared of what moved) and ``connect_args`` for the driver of ``url``.

    ``url`` already names the mode's driver (`dbregistry.urls.resolve_driver`);
    `RefusedError` for a setting `refusals` reports at load.
    """
    url, target = _translate(db, url, is_async=is_async)
    if target.problems:
        first = target.problems[0]
        raise RefusedError(f"{first.field}: {first.message}")
    return url, target.args


def refusals(db: Any, urls: Mapping[bool, URL], *, url_field: str = "url") -> Iterator[Refusal]:
    """Every setting of ``db`` that one of its modes' drivers cannot take (each reported once).

    ``urls`` holds the URL of each mode (its driver resolved); ``url_field`` names
    where that URL was declared (``url`` or ``direct_url``), for its query's settings.
    """
    seen: set[Refusal] = set()
    for is_async, url in urls.items():
        other = urls.get(not is_async)
        target = _translate(db, url, is_async=is_async, url_field=url_field, other=other, with_url=False)[1]
        for problem in target.problems:
            if problem not in seen:
                seen.add(problem)
                yield problem
    yield from _driver_sections(db, {driver_name(url) for url in urls.values()})


def driver_name(url: URL) -> str:
    """``asyncpg`` for ``postgresql+asyncpg``; ``pysqlite`` for a bare ``sqlite``."""
    return url.drivername.partition("+")[2] or ("pysqlite" if url.get_backend_name() == "sqlite" else "")


def _words(db: Any, url: URL | None, url_field: str) -> tuple[Words, dict[str, str]]:
    """The settings of the URL's query (when given) and of connect_args, and where each was written."""
    shared: Words = {}
    where: dict[str, str] = {}
    for key, value in (url.query if url is not None else {}).items():
        if key not in ("host", "port"):  # a multi-host list: SQLAlchemy's to read
            shared[key], where[key] = value[-1] if isinstance(value, tuple) else value, url_field
    for key, value in (db.connect_args or {}).items():
        shared[key], where[key] = value, f"connect_args.{key}"
    return shared, where


def missing_files(db: Any) -> Iterator[Refusal]:
    """The certificate files a PostgreSQL declaration names that do not exist on this machine.

    Both modes would fail at their first connection. Kept apart from `refusals`
    because the answer depends on the machine: another environment's profile is
    not checked against this one's files.
    """
    seen: set[Refusal] = set()
    for url_field, url in (("url", db.url), ("direct_url", db.direct_url)):
        if url is None or url.get_backend_name() != "postgresql":
            continue
        shared, where = _words(db, url, url_field)
        for refusal in _check_files(shared, where):
            if refusal not in seen:
                seen.add(refusal)
                yield refusal


def _translate(
    db: Any, url: URL, *, is_async: bool, url_field: str = "url", other: URL | None = None, with_url: bool = True
) -> tuple[URL, _Target]:
    """The keywords for ``url``'s driver; ``other`` is the other mode's URL when known, and
    ``with_url=False`` skips building the returned URL (validation needs only the problems)."""
    dialect, driver = url.get_backend_name(), driver_name(url)
    connect_args = db.connect_args or {}
    # SQLAlchemy hands a PostgreSQL URL's query to psycopg and asyncpg as keywords, so it
    # is translated with connect_args; other dialects read their query themselves (SQLite's
    # URI parameters, MySQL's ssl_*), the same way for both drivers of a pair.
    translates_query = dialect == "postgresql" and driver in ("psycopg", "asyncpg")
    shared, where = _words(db, url if translates_query else None, url_field)
    if other is None:
        try:
            other = resolve_driver(db.url, is_async=not is_async)
        except DriverError:
            other = None
    other_driver = driver_name(other) if other is not None else ""
    target = _Target(driver, "async" if is_async else "sync", other_driver, {}, [], where)
    translate = _DIALECTS.get(dialect)
    if translate is None:
        target.args.update(shared)
    elif shared:  # the keyword lists cost a driver import: only when there is something to check
        translate(shared, target)
    if translates_query:
        # libpq reads its own words from the URL's query as it always has; the rest moves.
        query = {
            k: v
            for k, v in url.query.items()
            if k in ("host", "port") or (driver == "psycopg" and is_libpq_word(k) and k not in connect_args)
        }
        target.args = {k: v for k, v in target.args.items() if k not in query}
        if with_url and query != dict(url.query):
            url = url.set(query=query)
    own = (db.driver_args or {}).get(driver)
    if isinstance(own, Mapping):
        for key, value in own.items():
            target.where[key] = f"driver_args.{driver}.{key}"
            target.put(key, value)
    return url, target


_DIALECTS: dict[str, Callable[[Words, _Target], None]] = {}


def _for_dialect(*names: str) -> Callable[[Callable[[Words, _Target], None]], Callable[[Words, _Target], None]]:
    def register(func: Callable[[Words, _Target], None]) -> Callable[[Words, _Target], None]:
        for name in names:
            _DIALECTS[name] = func
        return func

    return register


def _no_counterpart(target: _Target, key: str, owner: str, section: str) -> None:
    target.refuse(
        key,
        f"{target.label} has no counterpart of {owner}'s {key}; "
        f"move it into driver_args.{section} to set it for that driver alone",
    )


def _unknown(target: _Target, key: str, known: frozenset[str], drivers: str) -> None:
    hint = difflib.get_close_matches(key, sorted(known), n=1)
    did_you_mean = f"; did you mean {hint[0]!r}?" if hint else ""
    target.refuse(key, f"not a connection setting {drivers} takes{did_you_mean}")


# -- PostgreSQL ---------------------------------------------------------------------------

# asyncpg's words that libpq has under another name or shape (see _to_libpq).
_ASYNCPG_TO_LIBPQ: Final = frozenset({"timeout", "server_settings", "ssl", "database", "direct_tls"})
# libpq's words asyncpg behaves as with these values, so they are dropped, not refused.
_ASYNCPG_ALREADY: Final[dict[str, frozenset[str]]] = {
    "channel_binding": frozenset({"disable", "prefer"}),
    "gssencmode": frozenset({"disable"}),
    "client_encoding": frozenset({"utf8", "utf-8", "unicode"}),
    "sslcompression": frozenset({"0"}),
    "sslnegotiation": frozenset({"postgres"}),
}
_TLS_WORDS: Final = (
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcrl",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
)
_FILE_WORDS: Final = ("sslrootcert", "sslcert", "sslkey", "sslcrl")
_DEFAULT_ROOT: Final = "~/.postgresql/root.crt"  # libpq's (and asyncpg's) root certificate when none is named
SSLMODES: Final = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_TLS_VERSIONS: Final = {"TLSv1": "TLSv1", "TLSv1.1": "TLSv1_1", "TLSv1.2": "TLSv1_2", "TLSv1.3": "TLSv1_3"}


@_for_dialect("postgresql")
def _postgresql(shared: Words, target: _Target) -> None:
    _check_tls_values(shared, target)
    if target.driver == "asyncpg":
        _to_asyncpg(shared, target)
    elif target.driver == "psycopg":
        _to_libpq(shared, target)
    else:
        target.args.update(shared)  # psycopg2, pg8000, ...: the user's words, unchanged


def _check_files(shared: Words, where: Mapping[str, str]) -> Iterator[Refusal]:
    for key in _FILE_WORDS:
        path = shared.get(key)
        if isinstance(path, str) and path and path != "system" and not os.path.isfile(os.path.expanduser(path)):
            yield Refusal(where[key], f"the {key} file {path} does not exist")
    mode = shared.get("sslmode")
    verifies = mode in ("verify-ca", "verify-full") and not shared.get("sslrootcert")
    if verifies and not os.path.isfile(os.path.expanduser(_DEFAULT_ROOT)):
        yield Refusal(
            where["sslmode"],
            f"sslmode={mode} checks the server against a root certificate: set sslrootcert "
            f"(libpq's default, {_DEFAULT_ROOT}, does not exist)",
        )


def _check_tls_values(shared: Words, target: _Target) -> None:
    mode = shared.get("sslmode")
    if mode is not None and mode not in SSLMODES:
        target.problems.append(
            Refusal(target.where.get("sslmode", "sslmode"), f"sslmode {mode!r} is not one of {', '.join(SSLMODES)}")
        )
    for key in ("ssl_min_protocol_version", "ssl_max_protocol_version"):
        value = shared.get(key)
        if value is not None and value not in _TLS_VERSIONS:
            target.problems.append(
                Refusal(target.where.get(key, key), f"must be one of {', '.join(_TLS_VERSIONS)}, got {value!r}")
            )


def _to_libpq(shared: Words, target: _Target) -> None:
    options: list[str] = []
    for key, value in shared.items():
        if is_libpq_word(key) or key in psycopg_keywords():
            target.args[key] = value
        elif key in _ASYNCPG_TO_LIBPQ:
            _asyncpg_word_to_libpq(key, value, target, options)
        elif key in (asyncpg_keywords() or ()):
            _no_counterpart(target, key, "asyncpg", "asyncpg")
        else:
            _unknown(target, key, _every_postgresql_word(), "psycopg (libpq) or asyncpg")
    if options:
        target.args["options"] = " ".join([target.args.get("options", ""), *options]).strip()


def is_libpq_word(key: str) -> bool:
    """A libpq keyword (any word when psycopg is not installed to say otherwise).

    The words this module translates are libpq's by construction, so the common
    settings need no driver import at load; any other word is looked up in libpq's list.
    """
    if key in _LIBPQ_TO_ASYNCPG or key in _TLS_WORDS or key in _ASYNCPG_ALREADY:
        return True
    libpq = libpq_keywords()
    return libpq is None or key in libpq


def _every_postgresql_word() -> frozenset[str]:
    return (libpq_keywords() or frozenset()) | psycopg_keywords() | (asyncpg_keywords() or frozenset())


def _asyncpg_word_to_libpq(key: str, value: Any, target: _Target, options: list[str]) -> None:
    if key == "timeout":
        seconds = _number(value)
        if seconds is None:
            target.refuse(key, f"must be a number of seconds, got {type(value).__name__}")
        else:
            # libpq takes whole seconds (and waits at least 2).
            target.args.setdefault("connect_timeout", str(max(1, math.ceil(seconds))))
    elif key == "database":
        target.args.setdefault("dbname", value)
    elif key == "server_settings" and isinstance(value, Mapping):
        for name, setting in value.items():
            if name == "application_name":
                target.args.setdefault("application_name", setting)
            else:
                options.append(f"-c {name}={_libpq_escape(str(setting))}")
    elif key == "ssl" and isinstance(value, str) and value in SSLMODES:
        target.args.setdefault("sslmode", value)
    elif key == "ssl" and isinstance(value, bool):
        target.args.setdefault("sslmode", "verify-full" if value else "disable")
    elif key == "direct_tls" and "sslnegotiation" in (libpq_keywords() or ()):
        if _boolean(value):
            target.args.setdefault("sslnegotiation", "direct")
    else:
        _no_counterpart(target, key, "asyncpg", "asyncpg")


def _to_asyncpg(shared: Words, target: _Target) -> None:
    server_settings: dict[str, str] = {}
    for key, value in shared.items():
        if key in _TLS_WORDS:
            continue
        translate = _LIBPQ_TO_ASYNCPG.get(key)
        if translate is not None:
            translate(value, target, server_settings)
        elif key in _ASYNCPG_ALREADY and str(value).lower() in _ASYNCPG_ALREADY[key]:
            continue
        elif key == "channel_binding" and value == "require":
            target.refuse(
                key,
                "asyncpg (the async mode) does not implement channel binding, so channel_binding=require "
                "cannot be honoured; name postgresql+psycopg:// in the URL so that the async mode uses "
                "psycopg, which does, or move it into driver_args.psycopg to require it of the sync mode alone",
            )
        elif asyncpg_keywords() is None or key in (asyncpg_keywords() or ()):
            if key == "server_settings" and isinstance(value, Mapping):
                server_settings.update({str(k): str(v) for k, v in value.items()})
            else:
                target.put(key, value)
        elif key in _ASYNCPG_ALREADY or key in (libpq_keywords() or ()):
            _no_counterpart(target, key, "libpq", "psycopg")
        elif key in psycopg_keywords():
            _no_counterpart(target, key, "psycopg", "psycopg")
        else:
            _unknown(target, key, _every_postgresql_word(), "psycopg (libpq) or asyncpg")
    tls = _tls_for_asyncpg(shared, target)
    if tls is not None:
        target.args["ssl"] = tls
    if server_settings:
        target.args["server_settings"] = server_settings


Translation = Callable[[Any, _Target, dict[str, str]], None]
_LIBPQ_TO_ASYNCPG: dict[str, Translation] = {}


def _libpq_word(name: str) -> Callable[[Translation], Translation]:
    def register(func: Translation) -> Translation:
        _LIBPQ_TO_ASYNCPG[name] = func
        return func

    return register


@_libpq_word("connect_timeout")
def _connect_timeout(value: Any, target: _Target, server_settings: dict[str, str]) -> None:
    seconds = _number(value)
    if seconds is None:
        target.refuse("connect_timeout", f"must be a number of seconds, got {type(value).__name__}")
    elif seconds > 0:  # libpq: 0 waits forever, as asyncpg does with timeout=None
        target.args.setdefault("timeout", seconds)
    else:
        target.args.setdefault("timeout", None)


@_libpq_word("application_name")
def _application_name(value: Any, target: _Target, server_settings: dict[str, str]) -> None:
    server_settings["application_name"] = str(value)


@_libpq_word("fallback_application_name")
def _fallback_application_name(value: Any, target: _Target, server_settings: dict[str, str]) -> None:
    server_settings.setdefault("application_name", str(value))


@_libpq_word("options")
def _options(value: Any, target: _Target, server_settings: dict[str, str]) -> None:
    try:
        server_settings.update(parse_options(str(value)))
    except ValueError as e:
        target.refuse("options", str(e))


@_libpq_word("dbname")
def _dbname(value: Any, target: _Target, server_settings: dict[str, str]) -> None:
    target.args.setdefault("database", value)


@_libpq_word("load_balance_hosts")
def _load_balance_hosts(value: Any, target: _Target, server_settings: dict[str, str]) -> None:
    # asyncpg has no such keyword: dbregistry shuffles its host list per connection (`dbregistry._hosts`).
    if value not in ("disable", "random"):
        target.refuse("load_balance_hosts", f"must be disable or random, got {value!r}")


@_libpq_word("sslnegotiation")
def _sslnegotiation(value: Any, target: _Target, server_settings: dict[str, str]) -> None:
    if value == "direct":
        target.args["direct_tls"] = True


def parse_options(options: str) -> dict[str, str]:
    """libpq's ``options`` (``-c name=value`` and ``--name=value``, backslash-escaped) as settings."""
    words = options.split() if "\\" not in options else _escaped_words(options)
    settings: dict[str, str] = {}
    pending_c = False
    for word in words:
        if pending_c:
            setting, pending_c = word, False
        elif word == "-c":
            pending_c = True
            continue
        elif word.startswith("-c") or word.startswith("--"):
            setting = word[2:]
        else:
            setting = ""
        name, eq, value = setting.partition("=")
        if not eq or not name:
            raise ValueError(f"asyncpg (the async mode) takes only '-c name=value' settings from options, got {word!r}")
        settings[name.replace("-", "_")] = value
    if pending_c:
        raise ValueError("asyncpg (the async mode) takes only '-c name=value' settings from options; '-c' is last")
    return settings


def _escaped_words(options: str) -> list[str]:
    """libpq's splitting of ``options``: whitespace separates words, a backslash escapes the next character."""
    words: list[str] = []
    current: list[str] = []
    chars = iter(options)
    for char in chars:
        if char == "\\":
            current.append(next(chars, ""))
        elif char.isspace():
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(char)
    if current:
        words.append("".join(current))
    return words


def _libpq_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(" ", "\\ ")


def _tls_for_asyncpg(shared: Words, target: _Target) -> str | ssl.SSLContext | None:
    """libpq's TLS settings as asyncpg's ``ssl``: the mode's name, or a context of the same strength."""
    mode = shared.get("sslmode")
    files = {k: shared[k] for k in _FILE_WORDS if shared.get(k)}
    bounds = {k: shared[k] for k in ("ssl_min_protocol_version", "ssl_max_protocol_version") if shared.get(k)}
    if mode is not None and mode not in SSLMODES:
        return None  # reported by _check_tls_values
    if not files and not bounds and "sslpassword" not in shared:
        return mode
    if mode == "disable":
        return "disable"
    if mode in (None, "allow", "prefer"):
        shown = mode or "prefer (libpq's default)"
        for key in (*files, *bounds):
            target.refuse(
                key,
                f"asyncpg (the async mode) cannot honour {key} with sslmode={shown}, which lets the "
                "connection go unencrypted; set sslmode to require, verify-ca or verify-full",
            )
        return None
    if any(not os.path.isfile(os.path.expanduser(p)) for k, p in files.items() if p != "system"):
        return None  # reported by missing_files
    try:
        return tls_context(mode, files, bounds, shared.get("sslpassword"))
    except (ssl.SSLError, OSError, ValueError) as e:
        target.refuse("sslmode", f"the certificate files cannot be loaded for asyncpg ({type(e).__name__})")
        return None


def tls_context(
    mode: str, files: Mapping[str, str], bounds: Mapping[str, str], password: str | None = None
) -> ssl.SSLContext:
    """An SSL context doing what libpq does for ``sslmode`` (require, verify-ca, verify-full)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    root = files.get("sslrootcert")
    if root is None and mode != "require":
        root = _DEFAULT_ROOT
    if root is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        # libpq: with a root certificate, require checks the chain as verify-ca does.
        if root == "system":
            context.load_default_certs()
        else:
            context.load_verify_locations(cafile=os.path.expanduser(root))
        context.check_hostname = mode == "verify-full"
        context.verify_mode = ssl.CERT_REQUIRED
    if files.get("sslcrl"):
        context.load_verify_locations(cafile=os.path.expanduser(files["sslcrl"]))
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN
    if files.get("sslcert"):
        key = files.get("sslkey")
        context.load_cert_chain(
            os.path.expanduser(files["sslcert"]), os.path.expanduser(key) if key else None, password
        )
    if "ssl_min_protocol_version" in bounds:
        context.minimum_version = ssl.TLSVersion[_TLS_VERSIONS[bounds["ssl_min_protocol_version"]]]
    if "ssl_max_protocol_version" in bounds:
        context.maximum_version = ssl.TLSVersion[_TLS_VERSIONS[bounds["ssl_max_protocol_version"]]]
    return context


def describe_tls(context: ssl.SSLContext) -> str:
    """What an SSL context will check, for people (``dbregistry show``)."""
    if context.check_hostname:
        parts = ["verify-full"]
    else:
        parts = ["verify-ca" if context.verify_mode == ssl.CERT_REQUIRED else "require"]
    authorities = [_common_name(ca) for ca in context.get_ca_certs()]
    if authorities:
        parts.append(f"CA {', '.join(authorities)}")
    parts.append(f"TLS {context.minimum_version.name}..{context.maximum_version.name}")
    return f"SSLContext({', '.join(parts)})"


def _common_name(certificate: Mapping[str, Any]) -> str:
    for rdn in certificate.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return "?"


# -- SQLite ---------------------------------------------------------------------------------


@_for_dialect("sqlite")
def _sqlite(shared: Words, target: _Target) -> None:
    def takes(driver: str, key: str) -> bool:
        # aiosqlite hands its other keywords to sqlite3.connect: its own list is read only when needed.
        return key in sqlite_keywords(is_async=False) or (
            driver == "aiosqlite" and key in sqlite_keywords(is_async=True)
        )

    for key, value in shared.items():
        if takes(target.driver, key):
            target.put(key, value)
        elif takes(target.other, key):
            _no_counterpart(target, key, target.other, target.other)
        else:
            _unknown(target, key, sqlite_keywords(is_async=True), "sqlite3 or aiosqlite")


# -- MySQL ----------------------------------------------------------------------------------


@_for_dialect("mysql", "mariadb")
def _mysql(shared: Words, target: _Target) -> None:
    mine = _MYSQL_KEYWORDS.get(target.driver)
    if mine is None:
        target.args.update(shared)
        return
    theirs = _MYSQL_KEYWORDS.get(target.other, frozenset())
    for key, value in shared.items():
        if key in mine:
            target.args[key] = value
        elif key in theirs:
            _no_counterpart(target, key, target.other, target.other)
        else:
            _unknown(target, key, mine | theirs, " or ".join(sorted({target.driver, target.other} - {""})))


# -- driver_args ----------------------------------------------------------------------------


def _driver_sections(db: Any, drivers: set[str]) -> Iterator[Refusal]:
    for driver, words in (db.driver_args or {}).items():
        if driver not in drivers:
            used = ", ".join(sorted(drivers))
            yield Refusal(f"driver_args.{driver}", f"this database's drivers are {used}; {driver} is not one of them")
            continue
        if not isinstance(words, Mapping):
            yield Refusal(f"driver_args.{driver}", "must be a mapping of connect() keywords")
            continue
        known = accepted(driver)
        for key in words:
            if known is not None and key not in known:
                hint = difflib.get_close_matches(key, sorted(known), n=1)
                did_you_mean = f"; did you mean {hint[0]!r}?" if hint else ""
                yield Refusal(f"driver_args.{driver}.{key}", f"{driver}'s connect() takes no {key}{did_you_mean}")


# -- values ---------------------------------------------------------------------------------

# Values from environment variables arrive as text: these keywords are numbers or flags.
_TYPES: Final[dict[tuple[str, str], type]] = {
    ("asyncpg", "timeout"): float,
    ("asyncpg", "command_timeout"): float,
    ("asyncpg", "statement_cache_size"): int,
    ("asyncpg", "max_cached_statement_lifetime"): float,
    ("asyncpg", "max_cacheable_statement_size"): int,
    ("asyncpg", "direct_tls"): bool,
    ("asyncpg", "prepared_statement_cache_size"): int,
    ("psycopg", "autocommit"): bool,
    ("psycopg", "prepare_threshold"): int,
    ("pysqlite", "timeout"): float,
    ("pysqlite", "check_same_thread"): bool,
    ("pysqlite", "uri"): bool,
    ("pysqlite", "cached_statements"): int,
    ("pysqlite", "detect_types"): int,
    ("aiosqlite", "iter_chunk_size"): int,
}


def _coerce(driver: str, key: str, value: Any) -> Any:
    kind = _TYPES.get((driver, key)) or _TYPES.get(("pysqlite", key) if driver == "aiosqlite" else ("", ""))
    if kind is None or not isinstance(value, str):
        return value
    if kind is bool:
        flag = _boolean(value)
        if flag is None:
            raise ValueError("must be true or false")
        return flag
    if kind is int and key == "prepare_threshold" and value.strip().lower() in ("", "none", "null"):
        return None
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"must be {'an integer' if kind is int else 'a number'}") from None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _boolean(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    return None


# -- bounding the connect -------------------------------------------------------------

_CONNECT_TIMEOUT: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "dbregistry_connect_timeout", default=None
)

# The connect() keyword each driver takes for its connect timeout, and whether it wants whole seconds.
_TIMEOUT_KEYWORDS: Final[dict[str, tuple[str, bool]]] = {
    "psycopg": ("connect_timeout", True),
    "psycopg_async": ("connect_timeout", True),
    "psycopg2": ("connect_timeout", True),
    "asyncpg": ("timeout", False),
    "pg8000": ("timeout", False),
    "pymysql": ("connect_timeout", True),
    "mysqldb": ("connect_timeout", True),
    "aiomysql": ("connect_timeout", True),
    "asyncmy": ("connect_timeout", True),
}


def _bound_connect_timeout(dialect: Any, conn_rec: Any, cargs: Any, cparams: dict[str, Any]) -> None:
    timeout = _CONNECT_TIMEOUT.get()
    if timeout is None:
        return
    known = _TIMEOUT_KEYWORDS.get(dialect.driver)
    if known is None:
        return
    keyword, whole_seconds = known
    value: float = max(1, math.ceil(timeout)) if whole_seconds else timeout
    current = cparams.get(keyword)
    with contextlib.suppress(TypeError, ValueError):
        if current is not None and 0 < float(current) <= value:
            return
    cparams[keyword] = value


def _watch_connects(engine: Engine) -> None:
    if not event.contains(engine, "do_connect", _bound_connect_timeout):
        event.listen(engine, "do_connect", _bound_connect_timeout)


@contextlib.contextmanager
def bounded_connect(engine: Engine, timeout: float) -> Iterator[None]:
    """Inside the block, new connections of ``engine`` opened by this thread or task give up after ``timeout``.

    It sets the driver's own connect timeout (whole seconds for libpq, which
    waits 2 s at least); connections already pooled are not affected.
    """
    _watch_connects(engine)
    token = _CONNECT_TIMEOUT.set(timeout)
    try:
        yield
    finally:
        _CONNECT_TIMEOUT.reset(token)
