"""Declarations that cannot be meant: two URLs of one configuration that contradict each other.

Each URL is valid alone; together they say something no one wants. A replica
on another dialect than its primary, or on its primary's own server database,
is nearly always a variable that was not set, so that a
``${REPLICA_DATABASE_URL:-sqlite:///...}`` fell back to the default written
for a laptop, or one that was set to the primary's URL. Every finding
names where both URLs came from and, when a fallback was taken, the variable
that was probably meant to be set. Unlike `rules`, these checks need the origin
of each value, so the loader runs them with it (`check_pairs`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from sqlalchemy.engine import URL

from ._poolers import detect as detect_pooler
from ._schema import DatabaseConfig
from ._sources import Origin, url_variable
from ._urls import dialect_of, is_sqlite, is_sqlite_memory
from ._yamlfile import PathKey

__all__ = ["Where", "check_pairs"]

_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306, "mssql": 1433, "oracle": 1521}


@dataclass(frozen=True, slots=True)
class Where:
    """Where each value came from, and the variables whose ``${VAR:-default}`` fell back to the default."""

    origin: Callable[[PathKey], Origin]
    fell_back: Callable[[PathKey], list[str]]


Finding = tuple[PathKey, str]
PairRule = Callable[[str, DatabaseConfig, Mapping[str, DatabaseConfig], Where], Iterator[Finding]]
PAIR_RULES: list[PairRule] = []


def pair_rule(func: PairRule) -> PairRule:
    PAIR_RULES.append(func)
    return func


def check_pairs(databases: Mapping[str, DatabaseConfig], where: Where) -> list[Finding]:
    """Every finding of every pair rule, for every database."""
    return [
        found for name, db in databases.items() for rule in PAIR_RULES for found in rule(name, db, databases, where)
    ]


def _url(name: str, field: str = "url") -> PathKey:
    return ("databases", name, field)


def _sources(name: str, primary: str, where: Where) -> str:
    return f"this url from {where.origin(_url(name))}, {primary}'s from {where.origin(_url(primary))}"


def _unset_variable_advice(name: str, primary: str, where: Where, wanted: tuple[str, str]) -> str | None:
    """Advice naming the variable whose fallback was taken, on the replica's side or else the primary's.

    ``wanted``: how the replica's URL and the primary's should be described (``"postgresql "``).
    """
    for side, role, kind in ((name, "replica", wanted[0]), (primary, "primary", wanted[1])):
        fell_back = where.fell_back(_url(side))
        if fell_back:
            variable = fell_back[0]
            return (
                f"{variable} is not set, so {side}'s url is the default of its ${{{variable}:-...}}; "
                f"set {variable} to the {role}'s {kind}URL"
            )
    return None


@pair_rule
def a_replica_has_its_primarys_dialect(
    name: str, db: DatabaseConfig, databases: Mapping[str, DatabaseConfig], where: Where
) -> Iterator[Finding]:
    primary = databases.get(db.replica_of) if db.replica_of is not None else None
    if primary is None or db.replica_of is None:
        return
    mine, theirs = dialect_of(db.url), dialect_of(primary.url)
    if mine == theirs:
        return
    advice = _unset_variable_advice(name, db.replica_of, where, (f"{theirs} ", f"{mine} "))
    advice = advice or f"point it at a {theirs} replica (for example with {url_variable(name)})"
    yield (
        _url(name),
        f"a {mine} replica of a {theirs} primary ({_sources(name, db.replica_of, where)}); {advice}",
    )


@pair_rule
def a_replica_is_not_its_primary(
    name: str, db: DatabaseConfig, databases: Mapping[str, DatabaseConfig], where: Where
) -> Iterator[Finding]:
    primary = databases.get(db.replica_of) if db.replica_of is not None else None
    if primary is None or db.replica_of is None or dialect_of(db.url) != dialect_of(primary.url):
        return
    if is_sqlite_memory(primary.url) or is_sqlite_memory(db.url):
        yield (
            _url(name),
            "an in-memory SQLite database is private to its connection, so a replica can never see its "
            f"primary's data ({_sources(name, db.replica_of, where)}); use a file or a server for both",
        )
    elif not is_sqlite(db.url) and _target(db.url) == _target(primary.url):
        # A replica on its primary's SQLite file is meant: the laptop's stand-in for a replica server.
        advice = _unset_variable_advice(name, db.replica_of, where, ("", ""))
        yield (
            _url(name),
            f"is the same database as its primary {db.replica_of!r} ({_sources(name, db.replica_of, where)}), "
            f"so every read would go to the primary; {advice or 'point it at the replica, or remove replica_of'}",
        )


@pair_rule
def a_direct_url_has_the_urls_dialect(
    name: str, db: DatabaseConfig, databases: Mapping[str, DatabaseConfig], where: Where
) -> Iterator[Finding]:
    if db.direct_url is None or dialect_of(db.direct_url) == dialect_of(db.url):
        return
    yield (
        _url(name, "direct_url"),
        f"a {dialect_of(db.direct_url)} URL for a {dialect_of(db.url)} database (url from "
        f"{where.origin(_url(name))}); direct_url is the same database reached past its pooler, "
        "so it has the url's dialect",
    )


@pair_rule
def a_direct_url_is_past_the_pooler(
    name: str, db: DatabaseConfig, databases: Mapping[str, DatabaseConfig], where: Where
) -> Iterator[Finding]:
    pooler = detect_pooler(db)
    if db.direct_url is None or not pooler.transaction_mode or _target(db.direct_url) != _target(db.url):
        return
    yield (
        _url(name, "direct_url"),
        f"is the pooler's own address, as url is (url from {where.origin(_url(name))}; {pooler.reason}), so "
        "get(direct=True) would still go through the pooler; give the server's own host or port",
    )


def _target(url: URL) -> tuple[object, ...]:
    """The server and database a URL connects to, whatever the driver, user, password or options."""
    dialect = dialect_of(url)
    host = (url.host or "").lower()
    return (dialect, host, url.port or _DEFAULT_PORTS.get(dialect), url.database, url.query.get("host"))
