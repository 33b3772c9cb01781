"""External poolers (PgBouncer, Neon's and Supabase's pooler endpoints): detection and driver settings.

A transaction-mode pooler hands each transaction to whichever server
connection is free, so anything a driver keeps per server session breaks:
named prepared statements above all. Measured through PgBouncer 1.18 in
transaction mode (see tests/test_poolers.py and bench figure 8):

* asyncpg with its default statement cache fails (``prepared statement
  "__asyncpg_stmt_9__" does not exist``) and, across processes, returns other
  clients' results; ``statement_cache_size=0`` passed every pattern, AUTOCOMMIT
  included, with nothing left on the server. The unique-name recipe passed only
  inside transactions and left one statement per query behind, so it is not used.
* psycopg 3 prepares a statement after five executions; ``prepare_threshold=None``
  turns that off.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from sqlalchemy.engine import URL

from ._schema import DatabaseConfig

__all__ = ["TRANSACTION", "Pooler", "derived_direct_url", "detect", "driver_settings", "forbidden_settings"]

PoolerMode = Literal["pgbouncer-transaction", "pgbouncer-session", "none"]
TRANSACTION: Final = "pgbouncer-transaction"


@dataclass(frozen=True, slots=True)
class Pooler:
    """Which pooler a database sits behind, and why the registry thinks so."""

    mode: PoolerMode
    reason: str

    @property
    def transaction_mode(self) -> bool:
        return self.mode == TRANSACTION


Detector = Callable[[URL], Pooler | None]
_DETECTORS: list[Detector] = []


def _detector(func: Detector) -> Detector:
    _DETECTORS.append(func)
    return func


@_detector
def neon_pooler_endpoint(url: URL) -> Pooler | None:
    host = url.host or ""
    endpoint = host.partition(".")[0]
    if host.endswith(".neon.tech") and endpoint.endswith("-pooler"):
        return Pooler(TRANSACTION, f"Neon pooler endpoint ({endpoint}): PgBouncer in transaction mode")
    return None


@_detector
def supabase_transaction_port(url: URL) -> Pooler | None:
    if (url.host or "").endswith(".pooler.supabase.com") and url.port == 6543:
        return Pooler(TRANSACTION, "Supabase pooler on port 6543: transaction mode")
    return None


def detect(db: DatabaseConfig) -> Pooler:
    """The declared ``pooler:``, else what the URL shows, else none."""
    if db.pooler is not None:
        return Pooler(db.pooler, "declared (pooler:)")
    for detector in _DETECTORS:
        found = detector(db.url)
        if found is not None:
            return found
    return Pooler("none", "not declared, and the host is not a known pooler endpoint")


def derived_direct_url(db: DatabaseConfig) -> URL | None:
    """``direct_url``, or for a Neon pooler endpoint the same host without ``-pooler``."""
    if db.direct_url is not None:
        return db.direct_url
    host = db.url.host or ""
    endpoint, dot, rest = host.partition(".")
    if db.pooler is None and neon_pooler_endpoint(db.url) is not None:
        return db.url.set(host=endpoint.removesuffix("-pooler") + dot + rest)
    return None


# What each driver needs behind a transaction-mode pooler, as connect_args.
_TRANSACTION_SETTINGS: Final[dict[str, dict[str, Any]]] = {
    "asyncpg": {"statement_cache_size": 0},
    "psycopg": {"prepare_threshold": None},
    "psycopg_async": {"prepare_threshold": None},
}


def driver_settings(driver: str) -> dict[str, Any]:
    """The connect_args a driver needs behind a transaction-mode pooler."""
    return dict(_TRANSACTION_SETTINGS.get(driver, {}))


def forbidden_settings(connect_args: dict[str, Any]) -> list[tuple[str, str]]:
    """connect_args that cannot work behind a transaction-mode pooler, with the reason."""
    problems = []
    cache = connect_args.get("statement_cache_size")
    if cache not in (None, 0):
        problems.append(
            ("statement_cache_size", "asyncpg's statement cache breaks behind a transaction-mode pooler; remove it")
        )
    if connect_args.get("prepare_threshold") is not None:
        problems.append(
            ("prepare_threshold", "psycopg's prepared statements break behind a transaction-mode pooler; remove it")
        )
    return problems
