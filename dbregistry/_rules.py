"""The checks that need more than one field: each rule is a small named function.

A rule looks at one validated database (and the others, for cross-references)
and yields ``(field, message)`` pairs; `check` runs them all so that every
problem is reported at once. SQLAlchemy would raise most of these late, at the
first ``create_engine`` or the first connection; here they are found at load.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from ._connect import missing_files, refusals
from ._credentials import provider_findings
from ._errors import unknown_name_message
from ._hosts import host_findings
from ._poolers import detect as detect_pooler
from ._poolers import forbidden_settings
from ._pools import QUEUE_OPTIONS, accepted_options, why_not
from ._schema import DatabaseConfig
from ._urls import DriverError, dialect_of, is_sqlite, is_sqlite_memory, resolve_driver, unknown_driver

__all__ = ["LOCAL_RULES", "RULES", "Finding", "check", "effective_pool_class"]

Finding = tuple[str, str]
# The mapping holds every declared name; a database that failed validation maps to None.
Declared = Mapping[str, DatabaseConfig | None]
Rule = Callable[[str, DatabaseConfig, Declared], Iterator[Finding]]
RULES: list[Rule] = []
# Rules whose answer depends on this machine (files): not run for another environment's profile.
LOCAL_RULES: list[Rule] = []


def rule(func: Rule) -> Rule:
    RULES.append(func)
    return func


def local_rule(func: Rule) -> Rule:
    LOCAL_RULES.append(func)
    return func


def check(name: str, db: DatabaseConfig, databases: Declared, *, local: bool = True) -> list[Finding]:
    """Every finding of every rule for one database (``local``: the machine-dependent ones too)."""
    rules = [*RULES, *LOCAL_RULES] if local else RULES
    return [finding for r in rules for finding in r(name, db, databases)]


def effective_pool_class(db: DatabaseConfig) -> tuple[str, bool]:
    """The pool class a sync engine gets, and whether it was declared (else SQLAlchemy's default)."""
    if db.pool_class is not None:
        return db.pool_class, True
    return ("SingletonThreadPool" if is_sqlite_memory(db.url) else "QueuePool"), False


@rule
def pool_options_fit_the_pool_class(name: str, db: DatabaseConfig, _: Declared) -> Iterator[Finding]:
    pool, declared = effective_pool_class(db)
    allowed = accepted_options(pool)
    for option in sorted(QUEUE_OPTIONS & db.model_fields_set - allowed):
        if declared:
            yield option, f"not allowed with pool_class {pool} ({why_not(pool)}); remove it or use QueuePool"
        else:
            yield (
                option,
                (
                    f"not allowed with SQLite's default pool for an in-memory database ({pool}); "
                    "remove it, or declare pool_class: StaticPool and drop the queue options"
                ),
            )


@rule
def single_connection_pools_are_for_sqlite(name: str, db: DatabaseConfig, _: Declared) -> Iterator[Finding]:
    if db.pool_class in ("StaticPool", "SingletonThreadPool") and not is_sqlite(db.url):
        yield (
            "pool_class",
            (
                f"{db.pool_class} is for SQLite only: it shares connections between threads, "
                f"which a {dialect_of(db.url)} server connection does not allow; use QueuePool, "
                "or NullPool behind an external pooler"
            ),
        )


@rule
def memory_sqlite_needs_one_shared_connection(name: str, db: DatabaseConfig, _: Declared) -> Iterator[Finding]:
    if is_sqlite_memory(db.url) and db.pool_class in ("QueuePool", "AsyncAdaptedQueuePool", "NullPool"):
        yield (
            "pool_class",
            (
                f"{db.pool_class} gives each connection its own empty in-memory database; "
                "use pool_class: StaticPool (one shared connection) or a file database"
            ),
        )


_LEVELS_BY_DIALECT = {"sqlite": ("AUTOCOMMIT", "READ UNCOMMITTED", "SERIALIZABLE")}


@rule
def drivers_exist(name: str, db: DatabaseConfig, _: Declared) -> Iterator[Finding]:
    for field, url in (("url", db.url), ("direct_url", db.direct_url)):
        why = unknown_driver(url) if url is not None else None
        if why is not None:
            yield field, why


@rule
def isolation_level_fits_the_dialect(name: str, db: DatabaseConfig, _: Declared) -> Iterator[Finding]:
    levels = _LEVELS_BY_DIALECT.get(dialect_of(db.url))
    if db.isolation_level is not None and levels is not None and db.isolation_level not in levels:
        yield "isolation_level", f"{dialect_of(db.url)} supports {', '.join(levels)}, not {db.isolation_level}"


@rule
def replica_of_names_another_database(name: str, db: DatabaseConfig, databases: Declared) -> Iterator[Finding]:
    target = db.replica_of
    if target is None:
        return
    if target == name:
        yield "replica_of", "a database cannot be a replica of itself"
    elif target not in databases:
        yield "replica_of", unknown_name_message(target, list(databases))
    else:
        seen = [name]
        while target is not None and target not in seen:
            seen.append(target)
            entry = databases.get(target)
            target = entry.replica_of if entry is not None else None
        if target == name:
            yield "replica_of", f"replica_of forms a cycle: {' -> '.join([*seen, name])}"


@rule
def read_your_writes_fits_the_database(name: str, db: DatabaseConfig, _: Declared) -> Iterator[Finding]:
    if db.read_your_writes is None:
        return
    if db.replica_of is not None:
        yield (
            "read_your_writes",
            f"declare read_your_writes on the primary ({db.replica_of}): it follows the writes made there",
        )
    elif db.read_your_writes == "lsn" and dialect_of(db.url) != "postgresql":
        yield (
            "read_your_writes",
            f"lsn follows PostgreSQL's WAL positions; this URL is {dialect_of(db.url)}: "
            "use a duration such as 2s (reads go to the primary that long after a write), or off",
        )


@rule
def settings_that_work_behind_a_transaction_pooler(name: str, db: DatabaseConfig, _: Declared) -> Iterator[Finding]:
    pooler = detect_pooler(db)
    if not pooler.transaction_mode:
        return
    if dialect_of(db.url) != "postgresql":
        yield "pooler", f"{pooler.mode} is a PostgreSQL pooler; this URL is {dialect_of(db.url)}"
    sections = [("connect_args", db.connect_args or {})]
    sections += [(f"driver_args.{driver}", words) for driver, words in (db.driver_args or {}).items()]
    for field, words in sections:
        for key, reason in forbidden_settings(words):
            yield field, f"{key}: {reason} (the registry sets what {pooler.mode} needs)"


@rule
def connection_settings_reach_every_driver(name: str, db: DatabaseConfig, _: Declared) -> Iterator[Finding]:
    """What each mode's driver would refuse at its first connection, found now (see `dbregistry._connect`)."""
    seen: set[Finding] = set()
    for field, url in (("url", db.url), ("direct_url", db.direct_url)):
        if url is None or not (url.query or db.connect_args or db.driver_args):
            continue
        urls = {}
        for is_async in (False, True):
            try:
                urls[is_async] = resolve_driver(url, is_async=is_async)
            except DriverError:
                continue  # no driver for that mode: said when its engine is asked for
        for refusal in refusals(db, urls, url_field=field):
            if (refusal.field, refusal.message) not in seen:
                seen.add((refusal.field, refusal.message))
                yield refusal.field, refusal.message


@rule
def host_lists_are_readable(name: str, db: DatabaseConfig, _: Declared) -> Iterator[Finding]:
    yield from host_findings(db.url, db.hosts)
    if db.direct_url is not None:
        yield from host_findings(db.direct_url, None, url_field="direct_url")


@local_rule
def password_provider_is_importable(name: str, db: DatabaseConfig, _: Declared) -> Iterator[Finding]:
    yield from provider_findings(db)


@local_rule
def certificate_files_exist(name: str, db: DatabaseConfig, _: Declared) -> Iterator[Finding]:
    for refusal in missing_files(db):
        yield refusal.field, refusal.message
