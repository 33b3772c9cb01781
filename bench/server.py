"""Figures against a real PostgreSQL 15: registry vs hand-built engines (6), pooled vs NullPool (7)."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

import sqlalchemy
from sqlalchemy import text
from sqlalchemy.pool import AsyncAdaptedQueuePool, QueuePool

from dbregistry import Registry

from .common import POOL_FIELDS, Context, FigureResult, Row, Target, compared, interleave, round_order, run_threads

SELECT_ONE = text("SELECT 1")
CONCURRENCY = 32
ENGINE_OPTIONS = {k: v for k, v in POOL_FIELDS.items() if k != "pool_class"}


def _declaration(url: str, **fields: Any) -> dict[str, Any]:
    return {"url": url, **fields}


def sync_throughput(engine: sqlalchemy.Engine, seconds: float, workers: int) -> float:
    """Queries per second: each query checks a connection out, runs SELECT 1 and returns it."""

    def one() -> None:
        with engine.connect() as conn:
            conn.execute(SELECT_ONE).scalar()

    if workers == 1:
        count = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            one()
            count += 1
            now = time.perf_counter()
            if now >= deadline:
                return count / (now - start)
    counts = [0] * workers

    def work(slot: int, running: Callable[[], bool]) -> None:
        while running():
            one()
            counts[slot] += 1

    elapsed = run_threads(work, workers, seconds)
    return sum(counts) / elapsed


async def async_throughput(engine: Any, seconds: float, workers: int) -> float:
    """Queries per second over ``workers`` asyncio tasks, one checkout per query."""
    start = time.perf_counter()
    deadline = start + seconds

    async def work() -> int:
        count = 0
        while True:
            async with engine.connect() as conn:
                (await conn.execute(SELECT_ONE)).scalar()
            count += 1
            if time.perf_counter() >= deadline:
                return count

    counts = await asyncio.gather(*(work() for _ in range(workers)))
    return sum(counts) / (time.perf_counter() - start)


async def _interleave_async(runs: Mapping[str, Callable[[], Awaitable[float]]], repeats: int) -> dict[str, list[float]]:
    names = list(runs)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        for name in round_order(names, round_):
            samples[name].append(await runs[name]())
    return samples


def _pool_summary(engine: sqlalchemy.Engine) -> str:
    pool = engine.pool
    size = pool.size() if hasattr(pool, "size") else "-"
    return f"{engine.url.drivername}, {type(pool).__name__}(size={size}), pre_ping={pool._pre_ping}"


def _settings(engine: sqlalchemy.Engine) -> dict[str, Any]:
    """What decides an engine's behaviour per query: driver, pool and its options, listeners."""
    pool: Any = engine.pool
    return {
        "driver": engine.url.drivername,
        "pool": type(pool).__name__,
        "size": pool.size() if hasattr(pool, "size") else None,
        "max_overflow": getattr(pool, "_max_overflow", None),
        "timeout": getattr(pool, "_timeout", None),
        "recycle": pool._recycle,
        "pre_ping": pool._pre_ping,
        "reset_on_return": str(pool._reset_on_return),
        "checkout/checkin listeners": len(pool.dispatch.checkout) + len(pool.dispatch.checkin),
    }


def _settings_row(mode: str, mine: sqlalchemy.Engine, hand: sqlalchemy.Engine) -> Row:
    a, b = _settings(mine), _settings(hand)
    differ = [f"{key}: {a[key]!r} vs {b[key]!r}" for key in a if a[key] != b[key]]
    return Row(
        f"{mode}: engine settings vs by hand",
        "differ: " + "; ".join(differ) if differ else "identical",
        target="identical",
        note=repr(a),
    )


def _quartiles(row: Row) -> str:
    ratios = sorted(v / b for v, b in zip(row.samples["value"], row.samples["baseline"], strict=True))
    if len(ratios) < 4:
        return f"{ratios[0]:.2f}-{ratios[-1]:.2f}"
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return f"{q1:.2f}-{q3:.2f}"


def _throughput_rows(result: FigureResult, mode: str, label: str, samples: dict[str, list[float]]) -> None:
    baseline = "create_engine, same settings" if mode == "sync" else "create_async_engine, same"
    call = "registry.get()" if mode == "sync" else "registry.get_async()"
    result.rows.append(
        compared(f"{mode}, {label}: {call}", samples["registry"], samples["hand"], "q/s", baseline, Target(">=", 0.97))
    )
    result.rows.append(
        compared(
            f"  A/A control: by hand again, {mode} {label}",
            samples["again"],
            samples["hand"],
            "q/s",
            "the same, by hand",
            "info",
            note="two identical engines: the ratio shows what noise alone does",
        )
    )


def figure_6(ctx: Context) -> FigureResult:
    """SELECT 1 throughput: registry engine vs create_engine by hand with the same settings.

    A second hand-built engine, measured in the same rounds, is an A/A control: its ratio
    to the first shows how far two identical engines drift apart on this machine.
    """
    result = FigureResult()
    pg = ctx.postgres()
    seconds, repeats = ctx.budget.server_seconds, ctx.budget.server_repeats

    registry = Registry.from_dict(
        {"databases": {"primary": _declaration(pg.url_string("postgresql"), **POOL_FIELDS)}}, environ={}
    )
    mine = registry.get("primary")
    hand = sqlalchemy.create_engine(pg.url("postgresql+psycopg"), poolclass=QueuePool, **ENGINE_OPTIONS)
    again = sqlalchemy.create_engine(pg.url("postgresql+psycopg"), poolclass=QueuePool, **ENGINE_OPTIONS)
    result.data["sync_registry_engine"] = _pool_summary(mine)
    result.data["sync_hand_engine"] = _pool_summary(hand)
    result.rows.append(_settings_row("sync", mine, hand))
    try:
        for workers, label in ((1, "sequential"), (CONCURRENCY, f"{CONCURRENCY} threads")):
            engines = {"registry": mine, "hand": hand, "again": again}
            for engine in engines.values():
                sync_throughput(engine, seconds / 2, workers)  # fill the pool
            samples = interleave(
                {name: partial(sync_throughput, engine, seconds, workers) for name, engine in engines.items()},
                repeats,
            )
            _throughput_rows(result, "sync", label, samples)
    finally:
        registry.close()
        hand.dispose()
        again.dispose()

    async def run_async() -> None:
        from sqlalchemy.ext.asyncio import create_async_engine  # noqa: PLC0415

        registry = Registry.from_dict(
            {"databases": {"primary": _declaration(pg.url_string("postgresql"), **POOL_FIELDS)}}, environ={}
        )
        mine = registry.get_async("primary")
        hand = create_async_engine(pg.url("postgresql+asyncpg"), poolclass=AsyncAdaptedQueuePool, **ENGINE_OPTIONS)
        again = create_async_engine(pg.url("postgresql+asyncpg"), poolclass=AsyncAdaptedQueuePool, **ENGINE_OPTIONS)
        result.data["async_registry_engine"] = _pool_summary(mine.sync_engine)
        result.data["async_hand_engine"] = _pool_summary(hand.sync_engine)
        result.rows.append(_settings_row("async", mine.sync_engine, hand.sync_engine))
        try:
            for workers, label in ((1, "sequential"), (CONCURRENCY, f"{CONCURRENCY} tasks")):
                engines = {"registry": mine, "hand": hand, "again": again}
                for engine in engines.values():
                    await async_throughput(engine, seconds / 2, workers)
                samples = await _interleave_async(
                    {name: partial(async_throughput, engine, seconds, workers) for name, engine in engines.items()},
                    repeats,
                )
                _throughput_rows(result, "async", label, samples)
        finally:
            await registry.aclose()
            await hand.dispose()
            await again.dispose()

    asyncio.run(run_async())
    spread = ", ".join(f"{row.label.split(':')[0].strip()} {_quartiles(row)}" for row in result.rows if row.samples)
    result.notes.append(f"per-round ratios, quartiles (min-max under 4 rounds): {spread}")
    result.notes.append(
        f"one checkout per query (connect, SELECT 1, return: pre-ping and rollback-on-return included); "
        f"pool_size=10, max_overflow=20; {repeats} interleaved rounds of {seconds:g} s per engine "
        f"(registry, hand, hand again; the order rotated each round), medians; "
        f"engines: {result.data['sync_registry_engine']} / {result.data['async_registry_engine']}"
    )
    return result


def figure_7(ctx: Context) -> FigureResult:
    """Sequential SELECT 1 throughput: the registry's QueuePool declaration vs a NullPool one."""
    result = FigureResult()
    pg = ctx.postgres()
    seconds, repeats = ctx.budget.server_seconds, ctx.budget.server_repeats
    declared = {
        "databases": {
            "pooled": _declaration(pg.url_string("postgresql"), **POOL_FIELDS),
            "unpooled": _declaration(pg.url_string("postgresql"), pool_class="NullPool"),
        }
    }
    registry = Registry.from_dict(declared, environ={})
    try:
        pooled, unpooled = registry.get("pooled"), registry.get("unpooled")
        for engine in (pooled, unpooled):
            sync_throughput(engine, seconds / 2, 1)
        samples = interleave(
            {
                "pooled": lambda: sync_throughput(pooled, seconds, 1),
                "null": lambda: sync_throughput(unpooled, seconds, 1),
            },
            repeats,
        )
        result.rows.append(
            compared("sync, sequential: QueuePool", samples["pooled"], samples["null"], "q/s", "NullPool", "info")
        )
    finally:
        registry.close()

    async def run_async() -> None:
        registry = Registry.from_dict(declared, environ={})
        try:
            pooled, unpooled = registry.get_async("pooled"), registry.get_async("unpooled")
            for engine in (pooled, unpooled):
                await async_throughput(engine, seconds / 2, 1)
            samples = await _interleave_async(
                {
                    "pooled": lambda: async_throughput(pooled, seconds, 1),
                    "null": lambda: async_throughput(unpooled, seconds, 1),
                },
                repeats,
            )
            result.rows.append(
                compared("async, sequential: QueuePool", samples["pooled"], samples["null"], "q/s", "NullPool", "info")
            )
        finally:
            await registry.aclose()

    asyncio.run(run_async())
    result.notes.append(
        "QueuePool as declared in figure 6 (pre-ping on); NullPool opens a new connection per query "
        "(TCP + SCRAM-SHA-256 login to a local server); ratio = pooled / NullPool throughput"
    )
    return result
