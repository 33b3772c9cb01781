"""What every figure shares: budgets, results, targets, interleaved timing and fresh processes."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from servers import PostgresServer

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"


@dataclass(frozen=True, slots=True)
class Budget:
    """How much repetition a run gets; ``--quick`` only proves that every figure runs."""

    timeit_number: int
    timeit_repeats: int
    load_repeats: int
    process_runs: int
    memory_runs: int
    server_seconds: float
    server_repeats: int
    warm_runs: int
    extras: bool  # the informational rows that cost time: all built, tracemalloc, inherited environment


FULL = Budget(
    timeit_number=1_000_000,
    timeit_repeats=15,
    load_repeats=15,
    process_runs=25,
    memory_runs=5,
    server_seconds=0.3,
    server_repeats=25,
    warm_runs=2,
    extras=True,
)
QUICK = Budget(
    timeit_number=20_000,
    timeit_repeats=3,
    load_repeats=3,
    process_runs=3,
    memory_runs=1,
    server_seconds=0.05,
    server_repeats=2,
    warm_runs=1,
    extras=False,
)


@dataclass(frozen=True, slots=True)
class Target:
    """``ratio <= 1.2``, ``ratio >= 0.97`` or ``value <= 40`` (MB)."""

    op: str
    limit: float
    on: str = "ratio"
    unit: str = "x"

    def met(self, row: Row) -> bool | None:
        subject = row.ratio if self.on == "ratio" else row.value
        if not isinstance(subject, int | float):
            return None
        return subject <= self.limit if self.op == "<=" else subject >= self.limit

    def __str__(self) -> str:
        sep = "" if self.unit in ("x", "") else " "
        return f"{self.op} {self.limit:g}{sep}{self.unit}"


@dataclass(slots=True)
class Row:
    """One line of the table: a measurement, what it is compared with, and the verdict."""

    label: str
    value: float | str | None
    unit: str = ""
    baseline: float | None = None
    baseline_label: str = ""
    ratio: float | None = None
    target: Target | str | None = None
    note: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)

    @property
    def met(self) -> bool | None:
        if isinstance(self.target, Target):
            return self.target.met(self)
        if self.target in ("not imported", "identical"):
            return self.value == self.target
        return None

    def as_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "value": self.value,
            "unit": self.unit,
            "baseline": self.baseline,
            "baseline_label": self.baseline_label,
            "ratio": self.ratio,
            "target": None if self.target is None else str(self.target),
            "met": self.met,
            "note": self.note,
            "samples": self.samples,
        }


def compared(
    label: str,
    samples: Sequence[float],
    baseline_samples: Sequence[float],
    unit: str,
    baseline_label: str,
    target: Target | str | None = None,
    *,
    note: str = "",
) -> Row:
    """Medians of both, and the ratio as the median of the per-round ratios.

    Samples taken in the same round (see `interleave`) share the machine's state of
    that moment, so the ratio of each pair cancels drift that the ratio of two
    medians would keep; with unpaired samples it is the ratio of the medians.
    """
    return Row(
        label,
        statistics.median(samples),
        unit,
        statistics.median(baseline_samples),
        baseline_label,
        paired_ratio(samples, baseline_samples),
        target,
        note,
        {"value": list(samples), "baseline": list(baseline_samples)},
    )


@dataclass(slots=True)
class FigureResult:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


class PostgresUnavailableError(RuntimeError):
    """The server figures were asked for and no PostgreSQL can be started here."""


@dataclass(slots=True)
class Context:
    """What a figure function gets: the budget, a scratch directory and a PostgreSQL on demand."""

    budget: Budget
    quick: bool
    workdir: Path
    postgres_disabled: str | None = None
    _pg: PostgresServer | None = None
    _pg_error: str | None = None

    def postgres(self) -> PostgresServer:
        """The one PostgreSQL server of this run, started on first use."""
        if self._pg is not None:
            return self._pg
        if self.postgres_disabled:
            raise PostgresUnavailableError(self.postgres_disabled)
        if self._pg_error:
            raise PostgresUnavailableError(self._pg_error)
        if str(TESTS) not in sys.path:
            sys.path.insert(0, str(TESTS))
        from servers import PostgresServer, postgres_binaries_available  # noqa: PLC0415

        reason = postgres_binaries_available()
        if reason is not None:
            self._pg_error = f"{reason}; pass --no-postgres to skip the server figures"
            raise PostgresUnavailableError(self._pg_error)
        try:
            self._pg = PostgresServer()
        except Exception as e:
            self._pg_error = f"PostgreSQL did not start: {e}"
            raise
        return self._pg

    @property
    def postgres_version(self) -> str | None:
        if self._pg is None:
            return None
        return self._pg.psql("SHOW server_version")[0][0]

    def close(self) -> None:
        if self._pg is not None:
            self._pg.close()
            self._pg = None


# -- timing -------------------------------------------------------------------------


def round_order(names: Sequence[str], round_: int) -> list[str]:
    """The order of one round: rotated by one each round (A,B,C; B,C,A; C,A,B), so that every
    measurement takes every position equally often and neither drift nor position favours one."""
    shift = round_ % len(names)
    return [*names[shift:], *names[:shift]]


def interleave(runs: Mapping[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Call each measurement once per round, in `round_order`."""
    names = list(runs)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        for name in round_order(names, round_):
            samples[name].append(runs[name]())
    return samples


def run_threads(work: Callable[[int, Callable[[], bool]], None], workers: int, seconds: float) -> float:
    """Run ``work(slot, running)`` in ``workers`` threads released together; ``running()`` holds for ``seconds``.

    Returns the elapsed time, from the release to the last thread's end.
    """
    gate = threading.Barrier(workers + 1)
    deadline = [0.0]

    def running() -> bool:
        return time.perf_counter() < deadline[0]

    def released(slot: int) -> None:
        gate.wait()
        work(slot, running)

    threads = [threading.Thread(target=released, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    start = time.perf_counter()
    deadline[0] = start + seconds
    gate.wait()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start


def timeit_ns(
    statements: Mapping[str, str], namespace: Mapping[str, Any], number: int, repeats: int
) -> dict[str, list[float]]:
    """Nanoseconds per execution of each statement, interleaved round by round.

    Every name in ``namespace`` is bound as a local of the timing function, so each
    statement pays the same (fast) local lookups; ``timeit`` turns GC off while timing.
    """
    import timeit  # noqa: PLC0415

    setup = "; ".join(f"{name} = _ns[{name!r}]" for name in namespace) or "pass"
    timers = {label: timeit.Timer(stmt, setup, globals={"_ns": namespace}) for label, stmt in statements.items()}
    return interleave({label: _per_call(timer, number) for label, timer in timers.items()}, repeats)


def _per_call(timer: Any, number: int) -> Callable[[], float]:
    def run() -> float:
        return float(timer.timeit(number)) / number * 1e9

    return run


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def paired_ratio(samples: Sequence[float], baseline_samples: Sequence[float]) -> float | None:
    """median(a_i / b_i) over rounds; median(a) / median(b) when the counts differ."""
    if len(samples) == len(baseline_samples) and all(b > 0 for b in baseline_samples):
        return statistics.median(a / b for a, b in zip(samples, baseline_samples, strict=True))
    baseline = statistics.median(baseline_samples)
    return statistics.median(samples) / baseline if baseline > 0 else None


# -- fresh processes ----------------------------------------------------------------

_SCRUBBED_PREFIXES = ("DBREGISTRY_", "PYTHONPROFILEIMPORTTIME", "PYTHONSTARTUP", "PYTHONTRACEMALLOC")


def fresh_env(pycache: Path | None) -> dict[str, str]:
    """The environment for a cold child process.

    With ``pycache`` every module's bytecode is cached under that directory for both
    sides of a comparison (``PYTHONDONTWRITEBYTECODE`` removed): an installed package
    has its ``.pyc`` files, while an editable checkout run with
    ``PYTHONDONTWRITEBYTECODE=1`` would be compiled from source at every start.
    Variables the registry reads are removed so a child sees only its YAML file.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_SCRUBBED_PREFIXES) and not k.endswith("DATABASE_URL") and k != "APP_ENV"
    }
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def run_python(code: str, env: Mapping[str, str], *, args: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """``python [args] -c code`` from the repository root; raises with its stderr when it fails."""
    proc = subprocess.run(
        [sys.executable, *args, "-c", code],
        cwd=REPO,
        env=dict(env),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child process failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc


def wall_ms(code: str, env: Mapping[str, str]) -> Callable[[], float]:
    """A measurement: the wall time of ``python -c code`` from spawn to exit, in ms."""

    def run() -> float:
        start = time.perf_counter()
        run_python(code, env)
        return (time.perf_counter() - start) * 1e3

    return run


# -- configuration files ------------------------------------------------------------

POOL_FIELDS = {
    "pool_size": 10,
    "max_overflow": 20,
    "pool_timeout": 30,
    "pool_recycle": 3600,
    "pool_pre_ping": True,
    "pool_class": "QueuePool",
}


def many_databases_yaml(count: int) -> str:
    """A YAML file of ``count`` PostgreSQL databases, each with a URL and the six pool fields."""
    lines = ["default: db0", "databases:"]
    for i in range(count):
        lines.append(f"  db{i}:")
        lines.append(f"    url: postgresql://app:secret@db{i}.example.com:5432/app{i}")
        lines.extend(f"    {key}: {'true' if value is True else value}" for key, value in POOL_FIELDS.items())
    return "\n".join(lines) + "\n"
