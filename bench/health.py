"""Figure 10: ``await registry.ahealth(timeout=T)`` over 20 databases, one of which hangs.

Nineteen databases are real (19 names, each with its own engine and pool, on the run's
PostgreSQL 15); the twentieth points at a TCP listener on 127.0.0.1 that accepts connections
(the kernel completes the handshake) and never answers, so its ping can only end by the
timeout. The baseline is
that timeout itself: no check of a hanging database returns sooner, and the pings run
concurrently, so the target is that the whole call returns within T + 0.5 s. Each round
times a cold call (fresh registry: engines built and connections opened inside the call),
then a warm one (same registry, pools filled), and the same two with the sync
``registry.health()`` (a thread per ping); the order of async and sync alternates by round.
Every report is checked: 19 "up" and the hanging one "timeout", in every call.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from dbregistry import HealthReport, Registry

from .common import Context, FigureResult, Row, Target, compared

REAL = 19
HANGING = "hangs"
SLACK_S = 0.5


def _declaration(pg: Any, databases: list[str], port: int) -> dict[str, Any]:
    """The 19 names on the server's one database, told apart by ``application_name``; the 20th hangs."""
    declared = {name: {"url": f"{pg.url_string('postgresql')}?application_name={name}"} for name in databases}
    declared[HANGING] = {"url": pg.url("postgresql").set(port=port).render_as_string(hide_password=False)}
    return {"databases": declared}


def _connected(pg: Any) -> int:
    """How many of the 19 names hold a server connection now (pg_stat_activity)."""
    rows = pg.psql("SELECT count(DISTINCT application_name) FROM pg_stat_activity WHERE application_name LIKE 'db%'")
    return int(rows[0][0])


def _unexpected(reports: dict[str, HealthReport], databases: list[str]) -> list[str]:
    """The databases not reported as expected: every real one "up", the hanging one "timeout"."""
    expected = {**dict.fromkeys(databases, "up"), HANGING: "timeout"}
    wrong = [f"{name}: not reported" for name in expected if name not in reports]
    wrong += [f"{n}: {r.status} ({r.error})" for n, r in reports.items() if r.status != expected.get(n)]
    return wrong


def _slowest_up_ms(reports: dict[str, HealthReport]) -> float:
    return max((r.latency_ms or 0.0 for r in reports.values() if r.status == "up"), default=float("nan"))


async def _ahealth_and_close(registry: Registry) -> None:
    async with registry:
        await registry.ahealth(timeout=5.0)


def figure_10(ctx: Context) -> FigureResult:
    """Wall time of ``ahealth()`` (cold and warm) and ``health()`` over 19 real databases and a hanging one."""
    result = FigureResult()
    pg = ctx.postgres()
    from servers import silent_server  # noqa: PLC0415  (tests/ is on sys.path once the server runs)

    timeout = 0.5 if ctx.quick else 1.0
    rounds = 2 if ctx.quick else 5
    databases = [f"db{i:02d}" for i in range(REAL)]
    connected: list[int] = []
    calls = ("async cold", "async warm", "sync cold", "sync warm")
    samples: dict[str, list[float]] = {call: [] for call in calls}
    slowest: dict[str, list[float]] = {call: [] for call in calls}
    wrong: list[str] = []

    def record(call: str, round_: int, started: float, reports: dict[str, HealthReport]) -> None:
        samples[call].append((time.perf_counter() - started) * 1e3)
        slowest[call].append(_slowest_up_ms(reports))
        wrong.extend(f"round {round_ + 1} {call}: {problem}" for problem in _unexpected(reports, databases))
        result.data.setdefault("hanging_error", getattr(reports.get(HANGING), "error", None))

    async def async_round(declared: dict[str, Any], round_: int) -> None:
        async with Registry.from_dict(declared, environ={}) as registry:
            for call in calls[:2]:
                started = time.perf_counter()
                record(call, round_, started, await registry.ahealth(timeout=timeout))
            connected.append(_connected(pg))  # untimed: one pooled connection per name after the warm call

    def sync_round(declared: dict[str, Any], round_: int) -> None:
        with Registry.from_dict(declared, environ={}) as registry:
            for call in calls[2:]:
                started = time.perf_counter()
                record(call, round_, started, registry.health(timeout=timeout))

    # Untimed warm-up on one real database: imports the drivers and dialects for both modes.
    warm_up = {"databases": {"one": {"url": pg.url_string("postgresql")}}}
    with Registry.from_dict(warm_up, environ={}) as registry:
        registry.health(timeout=5.0)
    asyncio.run(_ahealth_and_close(Registry.from_dict(warm_up, environ={})))

    for round_ in range(rounds):
        with silent_server() as port:  # a fresh listener per round, so its accept queue never fills
            declared = _declaration(pg, databases, port)
            order = ("async", "sync") if round_ % 2 == 0 else ("sync", "async")
            for mode in order:
                if mode == "async":
                    asyncio.run(async_round(declared, round_))
                else:
                    sync_round(declared, round_)

    baseline = [timeout * 1e3] * rounds
    target = Target("<=", (timeout + SLACK_S) * 1e3, on="value", unit="ms")
    labels = {
        "async cold": "ahealth(), cold: fresh registry, first call",
        "async warm": "ahealth(), warm: second call, pools filled",
        "sync cold": "  health() (sync, threads), cold",
        "sync warm": "  health() (sync, threads), warm",
    }
    for call in calls:
        result.rows.append(compared(labels[call], samples[call], baseline, "ms", f"timeout {timeout:g} s", target))
    result.rows.append(
        Row(
            f"statuses vs {REAL} up + 1 timeout, all {rounds * len(calls)} calls",
            "differ: " + "; ".join(wrong) if wrong else "identical",
            target="identical",
        )
    )
    result.data.update(
        timeout_s=timeout,
        rounds=rounds,
        wall_ms=samples,
        slowest_up_latency_ms=slowest,
        unexpected=wrong,
        names_connected_after_async_warm=connected,
    )
    slow = ", ".join(f"{call} {max(values):.0f}" for call, values in slowest.items())
    result.notes.append(
        f"20 databases: {REAL} names on the run's PostgreSQL, all in its one database 'app' (each its own engine, "
        f"pool and connection, told apart by application_name; names holding a server connection after the warm "
        f"ahealth() of each round: {', '.join(map(str, connected))}), bare postgresql:// URLs "
        f"(asyncpg for ahealth, psycopg for health), default pools; 1 at a 127.0.0.1 listener that accepts and "
        f"never answers (its report: {result.data.get('hanging_error')!r})"
    )
    result.notes.append(
        f"timeout {timeout:g} s; {rounds} rounds, each: a fresh registry, cold call then warm call, async and sync "
        f"(order alternating by round), medians; cold includes building the 20 engines (drivers imported before, "
        f"untimed); ratio = wall / timeout; slowest real database's latency, max over rounds (ms): {slow}"
    )
    return result
