"""Figures 12 and 13: following a primary (`dbregistry._failover`).

Figure 12: a registry writer declared over a primary and its streaming standby
(``hosts: [primary, standby]``, the default ``target_session_attrs=read-write``)
writes in a loop from 4 threads (sync) or 4 tasks (async); the primary is
stopped (``pg_ctl stop -m fast``) and the standby promoted (``pg_ctl promote``).
The figure is the time from the start of the stop to the first acknowledged
write on the promoted standby, median of several runs, each on a fresh pair
(initdb + pg_basebackup, not timed). Failed writes are counted beside it.

Figure 13: ``with engine.connect(): pass`` (a checkout, with its pre-ping round
trip) on a writer over two hosts with ``pool_pre_ping``: the registry's engine
(which also reads ``in_hot_standby``/``default_transaction_read_only`` after
the ping) against the same engine without that listener (plain pre-ping),
interleaved in time slices.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from typing import Any
from urllib.parse import quote

import sqlalchemy
from sqlalchemy import event, text

from dbregistry import Registry
from dbregistry._failover import _writable_after_ping

from .common import Context, FigureResult, Row, Target, compared, interleave

WRITERS = 4
RESUME_LIMIT_S = 30.0


def _declaration(servers: list[Any], **options: Any) -> dict[str, Any]:
    first = servers[0]
    return {
        "databases": {
            "main": {
                "url": f"postgresql://{first.user}:{quote(first.password, safe='')}@/{first.database}",
                "hosts": [f"{s.host}:{s.port}" for s in servers],
                "pool_size": WRITERS,
                "connect_args": {"connect_timeout": 10},
                **options,
            }
        }
    }


def _fail_over(primary: Any, standby: Any) -> float:
    from servers import PG_BINDIR, _run  # noqa: PLC0415  (tests/ is on sys.path once the server runs)

    started = time.perf_counter()
    primary.stop()
    _run([str(PG_BINDIR / "pg_ctl"), "promote", "-D", str(standby.data_dir), "-w", "-t", "30", "-s"], timeout=60)
    return started


class _Writes:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.failed = 0
        self.first_on: dict[int, float] = {}
        self.counter = 0

    def next_value(self) -> int:
        with self.lock:
            self.counter += 1
            return self.counter

    def acked(self, port: int) -> None:
        now = time.perf_counter()
        with self.lock:
            self.first_on.setdefault(port, now)

    def wait_for(self, port: int, started: float) -> float:
        deadline = time.perf_counter() + RESUME_LIMIT_S
        while time.perf_counter() < deadline:
            with self.lock:
                if port in self.first_on:
                    return self.first_on[port] - started
            time.sleep(0.01)
        raise TimeoutError(f"no write reached the promoted standby within {RESUME_LIMIT_S:.0f} s")


_INSERT = text("INSERT INTO writes VALUES (:v) RETURNING inet_server_port()")


def _sync_run(primary: Any, standby: Any) -> tuple[float, int]:
    registry = Registry.from_dict(_declaration([primary, standby]), environ={})
    engine = registry.get()
    writes = _Writes()

    def write() -> None:
        while not writes.done.is_set():
            try:
                with engine.begin() as conn:
                    port = conn.scalar(_INSERT, {"v": writes.next_value()})
            except Exception:  # any error of a write during the failover is a failed write, as a user sees it
                with writes.lock:
                    writes.failed += 1
                continue
            writes.acked(port)

    threads = [threading.Thread(target=write) for _ in range(WRITERS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)
        started = _fail_over(primary, standby)
        resumed = writes.wait_for(standby.port, started)
    finally:
        writes.done.set()
        for thread in threads:
            thread.join(60)
        registry.close()
    return resumed, writes.failed


def _async_run(primary: Any, standby: Any) -> tuple[float, int]:
    registry = Registry.from_dict(_declaration([primary, standby]), environ={})
    writes = _Writes()

    async def scenario() -> float:
        engine = registry.get_async()

        async def write() -> None:
            while not writes.done.is_set():
                try:
                    async with engine.begin() as conn:
                        port = await conn.scalar(_INSERT, {"v": writes.next_value()})
                except Exception:  # as in the sync loop: a failed write, not the end of the run
                    writes.failed += 1
                    continue
                writes.acked(port)

        tasks = [asyncio.create_task(write()) for _ in range(WRITERS)]
        try:
            await asyncio.sleep(0.3)
            started = await asyncio.to_thread(_fail_over, primary, standby)
            return await asyncio.to_thread(writes.wait_for, standby.port, started)
        finally:
            writes.done.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 60)
            await registry.aclose()

    try:
        resumed = asyncio.run(scenario())
    finally:
        registry.close()
    return resumed, writes.failed


def figure_12(ctx: Context) -> FigureResult:
    """Seconds from the primary's stop to the first write on the promoted standby, sync and async."""
    result = FigureResult()
    ctx.postgres()  # makes sure servers can start here, and puts tests/ on sys.path
    from servers import PostgresServer  # noqa: PLC0415

    runs = 1 if ctx.quick else 5
    for mode, run in (("sync", _sync_run), ("async", _async_run)):
        seconds: list[float] = []
        failed: list[int] = []
        for _ in range(runs):
            with PostgresServer() as primary, primary.start_replica() as standby:
                primary.psql("CREATE TABLE writes (v int PRIMARY KEY); ALTER TABLE writes OWNER TO app;")
                standby.wait_for_replay()
                resumed, failures = run(primary, standby)
            seconds.append(resumed)
            failed.append(failures)
        result.rows.append(
            Row(
                f"{mode}: stop of the primary -> first write on the promoted standby",
                round(statistics.median(seconds), 3),
                "s",
                target=Target("<=", 10.0, on="value", unit="s"),
                note=f"{WRITERS} writers; failed writes per run: {failed}",
                samples={"value": seconds},
            )
        )
    result.notes.append("each run on a fresh primary/standby pair; pg_ctl stop -m fast, then pg_ctl promote -w")
    return result


def figure_13(ctx: Context) -> FigureResult:
    """A checkout with pool_pre_ping and the writability check, against plain pool_pre_ping."""
    result = FigureResult()
    pg = ctx.postgres()
    checked = Registry.from_dict(_declaration([pg, pg], pool_pre_ping=True), environ={})
    plain = Registry.from_dict(_declaration([pg, pg], pool_pre_ping=True), environ={})
    engines = {"checked": checked.get(), "plain": plain.get()}
    event.remove(engines["plain"], "checkout", _writable_after_ping)
    seconds = ctx.budget.server_seconds

    def per_checkout(engine: sqlalchemy.Engine) -> Any:
        def run() -> float:
            count = 0
            started = time.perf_counter()
            deadline = started + seconds
            while time.perf_counter() < deadline:
                with engine.connect():
                    pass
                count += 1
            return (time.perf_counter() - started) / count * 1e6

        return run

    try:
        for engine in engines.values():
            with engine.connect() as conn:  # fill the pool: every later checkout pre-pings
                conn.scalar(text("SELECT 1"))
        samples = interleave({name: per_checkout(e) for name, e in engines.items()}, ctx.budget.server_repeats)
    finally:
        checked.close()
        plain.close()
    result.rows.append(
        compared(
            "checkout with pre-ping + writability check",
            samples["checked"],
            samples["plain"],
            "us",
            "plain pool_pre_ping",
            Target("<=", 1.1),
            note="in_hot_standby / default_transaction_read_only parameter statuses, read after the ping",
        )
    )
    return result
