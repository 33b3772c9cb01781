"""Figure 8: throughput and correctness through PgBouncer in transaction mode.

One database is declared with ``pooler: pgbouncer-transaction`` (its ``url`` is a PgBouncer
1.18 in transaction mode, its ``direct_url`` the PostgreSQL behind it) and the figure-6 pool
fields. ``registry.get()`` / ``get_async()`` give the pooled engine, with the driver settings
the registry adds behind such a pooler (psycopg ``prepare_threshold=None``, asyncpg
``statement_cache_size=0``); the baseline is ``get(..., direct=True)``, the same declaration
straight to PostgreSQL with the drivers' defaults, in interleaved rounds.

Every query checks its answer: ``SELECT cast(:n AS integer) + 1`` with ``n`` different on
every call, 32 threads (psycopg) or 32 asyncio tasks (asyncpg), one checkout per query.
Exceptions and wrong answers are counted, never raised; afterwards the prepared statements
left on PgBouncer's server connections are counted (target 0). Controls show that these
checks can fail: engines built by hand with the drivers' defaults, through the same PgBouncer,
beside the registry's engine in the same pattern (for psycopg, ``begin()`` per query).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import sqlalchemy
from sqlalchemy import text

from dbregistry import Registry

from .common import (
    POOL_FIELDS,
    Context,
    FigureResult,
    PostgresUnavailableError,
    Row,
    Target,
    compared,
    interleave,
    run_threads,
)
from .server import CONCURRENCY, _interleave_async, _quartiles

if TYPE_CHECKING:
    from servers import PgBouncer

QUERY = text("SELECT cast(:n AS integer) + 1")
SPREAD = 10_000_000  # worker w asks for n in w * SPREAD + 1, 2, ...: every call a different answer
BOUNCER_POOL_SIZE = 10  # PgBouncer's default_pool_size: server connections per (database, user)
ZERO = Target("<=", 0, on="value", unit="")


@dataclass(slots=True)
class Tally:
    """Checked queries on one side: right answers, exceptions, wrong answers, the first error."""

    ok: int = 0
    errors: int = 0
    wrong: int = 0
    first_error: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, ok: int, errors: int, wrong: int, error: str) -> None:
        with self.lock:
            self.ok, self.errors, self.wrong = self.ok + ok, self.errors + errors, self.wrong + wrong
            self.first_error = self.first_error or error

    @property
    def total(self) -> int:
        return self.ok + self.errors + self.wrong

    def __str__(self) -> str:
        first = f"; first error: {self.first_error}" if self.first_error else ""
        return f"{self.errors:,} errors, {self.wrong:,} wrong of {self.total:,}{first}"


def _error(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def checked_sync_throughput(
    engine: sqlalchemy.Engine, seconds: float, workers: int, tally: Tally, *, begin: bool = False
) -> float:
    """Right answers per second from ``workers`` threads, one checkout per query (``begin``: and COMMIT)."""

    def work(slot: int, running: Callable[[], bool]) -> None:
        n, ok, errors, wrong, error = slot * SPREAD, 0, 0, 0, ""
        while running():
            n += 1
            try:
                with engine.begin() if begin else engine.connect() as conn:
                    got = conn.execute(QUERY, {"n": n}).scalar()
            except Exception as e:
                errors, error = errors + 1, error or _error(e)
                continue
            ok, wrong = (ok + 1, wrong) if got == n + 1 else (ok, wrong + 1)
        tally.add(ok, errors, wrong, error)

    before = tally.ok
    elapsed = run_threads(work, workers, seconds)
    return (tally.ok - before) / elapsed


async def checked_async_throughput(engine: Any, seconds: float, workers: int, tally: Tally) -> float:
    """Right answers per second from ``workers`` asyncio tasks, one checkout per query."""
    start = time.perf_counter()
    deadline = start + seconds

    async def work(slot: int) -> int:
        n, ok, errors, wrong, error = slot * SPREAD, 0, 0, 0, ""
        while time.perf_counter() < deadline:
            n += 1
            try:
                async with engine.connect() as conn:
                    got = (await conn.execute(QUERY, {"n": n})).scalar()
            except Exception as e:
                errors, error = errors + 1, error or _error(e)
                continue
            ok, wrong = (ok + 1, wrong) if got == n + 1 else (ok, wrong + 1)
        tally.add(ok, errors, wrong, error)
        return ok

    counts = await asyncio.gather(*(work(i) for i in range(workers)))
    return sum(counts) / (time.perf_counter() - start)


def prepared_statements_behind(bouncer: PgBouncer, pool_size: int) -> dict[int, int]:
    """pg_prepared_statements on each server connection: ``pool_size`` open transactions hold one each."""
    import psycopg  # noqa: PLC0415 - only when the figure runs

    seen: dict[int, int] = {}
    conns = [psycopg.connect(bouncer.url_string(), prepare_threshold=None) for _ in range(pool_size)]
    try:
        for conn in conns:
            conn.execute("BEGIN")
            row = conn.execute("SELECT pg_backend_pid(), count(*) FROM pg_prepared_statements").fetchone()
            assert row is not None
            seen[row[0]] = row[1]
    finally:
        for conn in conns:
            conn.rollback()
            conn.close()
    return seen


def _rows(result: FigureResult, label: str, samples: dict[str, list[float]], pooler: Tally, direct: Tally) -> None:
    result.rows.append(
        compared(
            f"{label}: through PgBouncer",
            samples["pooler"],
            samples["direct"],
            "q/s",
            "direct to PostgreSQL",
            "info",
            note="right answers per second; ratio = through PgBouncer / direct",
        )
    )
    for what, mine, theirs in (("errors", pooler.errors, direct.errors), ("wrong results", pooler.wrong, direct.wrong)):
        note = f"through PgBouncer: {pooler}; direct: {direct}"
        result.rows.append(Row(f"  {label}: {what}", mine, "", theirs, "direct", None, ZERO, note))


def figure_8(ctx: Context) -> FigureResult:
    """Throughput through PgBouncer (transaction mode) vs direct, 32-way, with every answer checked."""
    result = FigureResult()
    pg = ctx.postgres()
    from servers import PgBouncer, pgbouncer_available  # noqa: PLC0415 - tests/ is on sys.path after ctx.postgres()

    reason = pgbouncer_available()
    if reason is not None:
        raise PostgresUnavailableError(reason)
    seconds, repeats = ctx.budget.server_seconds, ctx.budget.server_repeats
    control_seconds = seconds if ctx.quick else 3 * seconds
    fields = {"pooler": "pgbouncer-transaction", **POOL_FIELDS}
    tallies = {mode: {"pooler": Tally(), "direct": Tally()} for mode in ("sync", "async")}
    bouncer = PgBouncer(pg, default_pool_size=BOUNCER_POOL_SIZE)
    try:
        declared = {"databases": {"app": {"url": bouncer.url_string(), "direct_url": pg.url_string(), **fields}}}
        samples = _sync_rounds(declared, seconds, repeats, tallies["sync"])
        _rows(result, f"sync, {CONCURRENCY} threads", samples, **tallies["sync"])
        samples = asyncio.run(_async_rounds(declared, seconds, repeats, tallies["async"]))
        _rows(result, f"async, {CONCURRENCY} tasks", samples, **tallies["async"])
        committed = Tally()  # the pattern that breaks psycopg's defaults, through the registry's engine
        registry = Registry.from_dict(declared, environ={})
        try:
            checked_sync_throughput(registry.get("app"), control_seconds, CONCURRENCY, committed, begin=True)
        finally:
            registry.close()
        left = prepared_statements_behind(bouncer, BOUNCER_POOL_SIZE)
        result.rows.append(
            Row(
                "prepared statements left on PgBouncer's server connections",
                sum(left.values()),
                target=ZERO,
                note=f"pg_prepared_statements per server backend (pid: count) after every run above: {left}",
            )
        )
        plain = _plain_engines(bouncer, control_seconds)
        left_by_plain = sum(prepared_statements_behind(bouncer, BOUNCER_POOL_SIZE).values())
        version = bouncer.show("VERSION")[0].get("version", "?")
    finally:
        bouncer.close()

    for label, mine, theirs in (
        ("psycopg, engine.begin() per query", plain["psycopg"], committed),
        ("asyncpg, engine.connect() per query", plain["asyncpg"], tallies["async"]["pooler"]),
    ):
        result.rows.append(
            Row(
                f"  control, {label}: plain engine, errors + wrong",
                mine.errors + mine.wrong,
                "",
                theirs.errors + theirs.wrong,
                "the registry's engine",
                target="info",
                note=f"plain: {mine}; the registry's: {theirs}",
            )
        )
    queries = {f"{m} {s}": t.total for m, sides in tallies.items() for s, t in sides.items()}
    spread = ", ".join(f"{row.label.split(':')[0]} {_quartiles(row)}" for row in result.rows if row.samples)
    shown = {**fields, "url": "<PgBouncer>", "direct_url": "<PostgreSQL>"}
    result.data.update(queries=queries, pgbouncer=version, declaration=shown)
    result.notes += [
        f"{version}, pool_mode=transaction, default_pool_size={BOUNCER_POOL_SIZE} (server connections); "
        f"declaration: {shown}; baseline: get(name, direct=True) / get_async(name, direct=True), the same "
        "declaration on direct_url with the drivers' defaults (asyncpg caches prepared statements; psycopg would "
        "prepare on the 5th execution, but the rollback of every one-query checkout resets its count)",
        f"{CONCURRENCY}-way, one checkout per query (pre-ping included), SELECT cast(:n AS integer) + 1 with n "
        f"different on every call, answer checked; {repeats} interleaved rounds of {seconds:g} s per side after one "
        f"warm-up slice each, medians; per-round ratio quartiles (min-max under 4 rounds): {spread}",
        "queries run, warm-up included: " + ", ".join(f"{k} {v:,}" for k, v in queries.items()),
        f"controls ({control_seconds:g} s each, after the count of prepared statements): engines built by hand with "
        "the drivers' defaults through the same PgBouncer, beside the registry's engine in the same pattern; "
        "psycopg needs begin() (COMMIT, no rollback) to keep its count and prepare; the plain engines left "
        f"{left_by_plain} prepared statements on the server connections (the count above can see them)",
        "2 shared cores: PgBouncer (single-threaded) competes with the client and PostgreSQL for the same CPUs, "
        "so the ratio includes its CPU cost on this machine, not only its added network hop",
    ]
    return result


def _sync_rounds(
    declared: dict[str, Any], seconds: float, repeats: int, tallies: dict[str, Tally]
) -> dict[str, list[float]]:
    registry = Registry.from_dict(declared, environ={})
    try:
        engines = {"pooler": registry.get("app"), "direct": registry.get("app", direct=True)}
        runs = {
            side: partial(checked_sync_throughput, engine, seconds, CONCURRENCY, tallies[side])
            for side, engine in engines.items()
        }
        for run in runs.values():  # fill the pools; these answers are checked too
            run()
        return interleave(runs, repeats)
    finally:
        registry.close()


async def _async_rounds(
    declared: dict[str, Any], seconds: float, repeats: int, tallies: dict[str, Tally]
) -> dict[str, list[float]]:
    registry = Registry.from_dict(declared, environ={})
    try:
        engines = {"pooler": registry.get_async("app"), "direct": registry.get_async("app", direct=True)}
        runs = {
            side: partial(checked_async_throughput, engine, seconds, CONCURRENCY, tallies[side])
            for side, engine in engines.items()
        }
        for run in runs.values():
            await run()
        return await _interleave_async(runs, repeats)
    finally:
        await registry.aclose()


def _plain_engines(bouncer: PgBouncer, seconds: float) -> dict[str, Tally]:
    """Engines built by hand with the drivers' defaults through the same PgBouncer: the checks can fail."""
    from sqlalchemy.ext.asyncio import create_async_engine  # noqa: PLC0415

    options = {k: v for k, v in POOL_FIELDS.items() if k != "pool_class"}
    tallies = {"psycopg": Tally(), "asyncpg": Tally()}
    engine = sqlalchemy.create_engine(bouncer.url("postgresql+psycopg"), **options)
    try:
        checked_sync_throughput(engine, seconds, CONCURRENCY, tallies["psycopg"], begin=True)
    finally:
        engine.dispose()

    async def run() -> None:
        engine = create_async_engine(bouncer.url("postgresql+asyncpg"), **options)
        try:
            await checked_async_throughput(engine, seconds, CONCURRENCY, tallies["asyncpg"])
        finally:
            await engine.dispose()

    asyncio.run(run())
    return tallies
