"""Figure 14: reading your own writes through a replica that replays 300 ms behind.

A paced 95% read / 5% write workload of simulated users, each with their own causal
token (as a cookie would carry it): every read asks for the row its user wrote last,
so a stale read is one that misses it. Modes: ``lsn`` (the default), ``2s`` (the
primary for two seconds after a write, as Rails does), "always primary after a
write" (a user who wrote reads the primary from then on) and ``off`` (no token: the
danger). Reported: the share of reads the replica served and the stale reads.
Then: the cost of ``reader()`` with a token whose answer is cached against
``reader()`` without one, and the round trips a writing and a reading transaction
make, counted at the driver (``psycopg.Cursor.execute``), against ``off``.
"""

from __future__ import annotations

import contextlib
import random
import time
import uuid
from collections.abc import Iterator
from typing import Any

from sqlalchemy import text

from dbregistry import Registry, _causal
from dbregistry._causal import CURRENT, LSN, Box, Mark, key_of

from .common import Context, FigureResult, Row, Target, compared, timeit_ns

DELAY = "300ms"
USERS = 20
OPS_PER_SECOND = 200
WRITE_SHARE = 0.05


def _declared(pg: Any, replica: Any, setting: str) -> dict[str, Any]:
    return {
        "databases": {
            "primary": {"url": pg.url_string(), "read_your_writes": setting, "pool_size": 2},
            "replica": {"url": replica.url_string(), "replica_of": "primary", "pool_size": 2},
        }
    }


@contextlib.contextmanager
def _lagging(replica: Any) -> Iterator[None]:
    replica.psql(f"ALTER SYSTEM SET recovery_min_apply_delay = '{DELAY}'")
    replica.psql("SELECT pg_reload_conf()")
    try:
        yield
    finally:
        replica.psql("ALTER SYSTEM RESET recovery_min_apply_delay")
        replica.psql("SELECT pg_reload_conf()")


def _workload(pg: Any, replica: Any, mode: str, seconds: float, seed: int) -> dict[str, int]:
    """Run the paced workload in one mode; counts of reads, replica reads and stale reads."""
    setting = {"always primary": "off", "off": "off", "lsn, no wait": "lsn"}.get(mode, mode)
    registry = Registry.from_dict(_declared(pg, replica, setting), environ={})
    replica_engine = registry.get("replica")
    rng = random.Random(seed)
    tokens: dict[int, str | None] = dict.fromkeys(range(USERS))
    last: dict[int, str] = {}
    wrote: set[int] = set()
    counts = {"reads": 0, "replica": 0, "stale": 0, "writes": 0, "read_us": 0}
    query = text("select count(*) from causal_bench where id = :id")
    try:
        deadline = time.monotonic() + seconds
        step = 1.0 / OPS_PER_SECOND
        next_op = time.monotonic()
        while time.monotonic() < deadline:
            user = rng.randrange(USERS)
            with registry.causal(tokens[user]) as block:
                if rng.random() < WRITE_SHARE or user not in last:
                    key = uuid.uuid4().hex
                    with registry.writer("primary").begin() as conn:
                        conn.execute(text("insert into causal_bench values (:id)"), {"id": key})
                    last[user] = key
                    wrote.add(user)
                    counts["writes"] += 1
                else:
                    started = time.perf_counter()
                    engine = registry.get("primary") if mode == "always primary" and user in wrote else None
                    engine = engine or registry.reader("primary")
                    with engine.connect() as conn:
                        found = conn.execute(query, {"id": last[user]}).scalar()
                    counts["reads"] += 1
                    counts["replica"] += engine is replica_engine
                    counts["stale"] += found != 1
                    counts["read_us"] += int((time.perf_counter() - started) * 1e6)
                tokens[user] = block.token()
            CURRENT.set(None)  # the next request starts from its own user's cookie alone
            next_op += step
            pause = next_op - time.monotonic()
            if pause > 0:
                time.sleep(pause)
    finally:
        registry.close()
    return counts


def _reader_cost(ctx: Context) -> Row:
    """``reader()`` with a cached answer for a token against ``reader()`` without a token (no server needed)."""
    registry = Registry.from_dict(
        {
            "databases": {
                "primary": {"url": "postgresql://bench@127.0.0.1:9/app"},
                "replica": {"url": "postgresql://bench@127.0.0.1:10/app", "replica_of": "primary"},
            }
        },
        environ={},
    )
    positions = registry._router._positions["primary"]
    positions._replica_at("replica", (str(10**9), 0.0))  # as a refresh would: replayed past the token
    registry.reader("primary")  # builds the replica's engine (no connection)
    box = Box({key_of("primary"): Mark(LSN, 10**6)})
    budget = ctx.budget

    def with_token() -> dict[str, list[float]]:
        CURRENT.set(box)
        try:
            return timeit_ns(
                {"token": "reader(name)"}, {"reader": registry.reader, "name": "primary"}, budget.timeit_number, 1
            )
        finally:
            CURRENT.set(None)

    def without() -> dict[str, list[float]]:
        return timeit_ns(
            {"plain": "reader(name)"}, {"reader": registry.reader, "name": "primary"}, budget.timeit_number, 1
        )

    tokens: list[float] = []
    plain: list[float] = []
    for round_ in range(budget.timeit_repeats):
        pair = (with_token, without) if round_ % 2 == 0 else (without, with_token)
        for run in pair:
            for name, values in run().items():
                (tokens if name == "token" else plain).extend(values)
    assert registry.reader("primary") is registry.get("replica")
    registry.close()
    return compared(
        "reader() with a token, answer cached", tokens, plain, "ns", "reader() without a token", Target("<=", 1.5)
    )


def _round_trips(pg: Any, replica: Any, transactions: int) -> dict[str, float]:
    """Driver round trips (``Cursor.execute`` calls) per writing and per reading transaction, lsn minus off."""
    import psycopg  # noqa: PLC0415

    calls = [0]
    original = psycopg.Cursor.execute

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(self, *args, **kwargs)

    per: dict[str, float] = {}
    psycopg.Cursor.execute = counted  # type: ignore[method-assign]
    try:
        for setting in ("lsn", "off"):
            registry = Registry.from_dict(_declared(pg, replica, setting), environ={})
            engine = registry.writer("primary")
            with engine.connect():
                pass  # the connection's own set-up queries are not counted
            for kind, sql in (("write", "insert into causal_bench values (:id)"), ("read", "select :id")):
                calls[0] = 0
                for _ in range(transactions):
                    with registry.causal(), engine.begin() as conn:
                        conn.execute(text(sql), {"id": uuid.uuid4().hex})
                per[f"{setting} {kind}"] = calls[0] / transactions
            registry.close()
    finally:
        psycopg.Cursor.execute = original  # type: ignore[method-assign]
    return per


def figure_14(ctx: Context) -> FigureResult:
    """Replica share and stale reads by mode; reader() cost with a token; extra round trips per transaction."""
    result = FigureResult()
    pg = ctx.postgres()
    pg.psql("CREATE TABLE IF NOT EXISTS causal_bench (id text PRIMARY KEY)", database="app")
    pg.psql("GRANT ALL ON causal_bench TO app", database="app")
    seconds = 1.5 if ctx.quick else 8.0
    modes = ("lsn", "lsn, no wait", "2s", "always primary", "off")
    counts: dict[str, dict[str, int]] = {}
    with pg.start_replica() as replica:
        replica.wait_for_replay()
        with _lagging(replica):
            for seed, mode in enumerate(modes):
                # "no wait": a read the cache cannot send to a replica goes to the primary at once (as async
                # reads do) instead of waiting up to INLINE_WAIT for the refresh it starts
                wait = _causal.INLINE_WAIT
                _causal.INLINE_WAIT = 0.0 if mode == "lsn, no wait" else wait  # type: ignore[misc]
                try:
                    counts[mode] = _workload(pg, replica, mode, seconds, seed)
                finally:
                    _causal.INLINE_WAIT = wait  # type: ignore[misc]
        replica.wait_for_replay()
        trips = _round_trips(pg, replica, 20 if ctx.quick else 200)
    for mode in modes:
        c = counts[mode]
        share = 100.0 * c["replica"] / max(1, c["reads"])
        label = f"{mode}: reads served by the replica" + (" (no token)" if mode == "off" else "")
        mean_read = c["read_us"] / max(1, c["reads"])
        note = f"{c['reads']} reads, {c['writes']} writes, mean read {mean_read:.0f} us"
        result.rows.append(Row(label, round(share, 1), "%", note=note))
        stale_target = Target("<=", 0, on="value", unit="") if mode != "off" else "reported"
        result.rows.append(Row(f"  {mode}: stale reads", c["stale"], "", target=stale_target))
    result.rows.append(_reader_cost(ctx))
    for kind in ("write", "read"):
        extra = trips[f"lsn {kind}"] - trips[f"off {kind}"]
        result.rows.append(
            Row(
                f"extra round trips per {'writing' if kind == 'write' else 'read-only'} transaction (lsn - off)",
                round(extra, 2),
                "",
                target=Target("<=", 1 if kind == "write" else 0, on="value", unit=""),
            )
        )
    result.data.update(counts=counts, round_trips=trips, seconds_per_mode=seconds)
    result.notes.append(
        f"replica with recovery_min_apply_delay = {DELAY}; {USERS} users, {OPS_PER_SECOND} operations/s, "
        f"{WRITE_SHARE:.0%} writes, {seconds:g} s per mode; each read asks for its user's last written row "
        "(stale = not found); one thread, a causal block per operation, the token kept per user as a cookie would"
    )
    return result
