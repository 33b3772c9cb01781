"""Run the figures, print one table of figures and ratios, write it as JSON.

    python -m bench                 # every figure (a few minutes)
    python -m bench --quick         # a few iterations of each: proves they run (< 60 s)
    python -m bench --only 1,3      # some figures
    python -m bench --no-postgres   # skip the figures that need a PostgreSQL server
    python bench/run.py ...         # the same

Figures live in `FIGURES` (number -> `Figure`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script, python bench/run.py: import the package from the repository root
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.causal import figure_14
from bench.common import (
    FULL,
    QUICK,
    REPO,
    Context,
    FigureResult,
    PostgresUnavailableError,
)
from bench.failover import figure_12, figure_13
from bench.health import figure_10
from bench.metrics import figure_11
from bench.micro import figure_1, figure_2, figure_3
from bench.pooler import figure_8
from bench.process import figure_4, figure_5, figure_9
from bench.server import figure_6, figure_7

RESULTS = REPO / "bench" / "results"


@dataclass(frozen=True, slots=True)
class Figure:
    number: int
    title: str
    baseline: str
    target: str
    run: Callable[[Context], FigureResult]
    needs_postgres: bool = False


FIGURES: dict[int, Figure] = {
    f.number: f
    for f in (
        Figure(1, "get()/get_async() on a built engine", "engines[name] on a dict", "<= 2x (net)", figure_1),
        Figure(2, "get() with 10,000 vs 10 declared databases", "10 declared", "<= 1.2x", figure_2),
        Figure(3, "from_yaml of 1,000 databases", "yaml.load(CSafeLoader)", "<= 1.5x", figure_3),
        Figure(4, "import dbregistry", "import sqlalchemy, pydantic_settings, yaml", "<= 1.1x", figure_4),
        Figure(5, "memory of 10,000 declared, unused databases", "(absolute)", "<= 40 MB", figure_5),
        Figure(6, "SELECT 1 throughput, PostgreSQL", "hand-built engine", ">= 0.97x", figure_6, needs_postgres=True),
        Figure(7, "QueuePool vs NullPool, PostgreSQL", "NullPool", "reported", figure_7, needs_postgres=True),
        Figure(
            8,
            "PgBouncer transaction mode, registry pooler settings",
            "direct PostgreSQL",
            "0 errors, 0 wrong, 0 prepared left",
            figure_8,
            needs_postgres=True,
        ),
        Figure(9, "cold process to first query, SQLite", "create_engine by hand", "<= 1.25x", figure_9),
        Figure(
            10,
            "ahealth() over 20 databases, one hanging",
            "its timeout",
            "<= timeout + 0.5 s",
            figure_10,
            needs_postgres=True,
        ),
        Figure(
            11,
            "SELECT 1 throughput, 32-way, with metrics",
            "uninstrumented engine",
            ">= 0.97x",
            figure_11,
            needs_postgres=True,
        ),
        Figure(
            12,
            "failover: primary stop to first write on the promoted standby",
            "(absolute)",
            "<= 10 s",
            figure_12,
            needs_postgres=True,
        ),
        Figure(
            13,
            "pool_pre_ping with the writability check, two hosts",
            "plain pool_pre_ping",
            "<= 1.1x",
            figure_13,
            needs_postgres=True,
        ),
        Figure(
            14,
            "read your own writes, replica 300 ms behind",
            "reader() without a token; off",
            "0 stale; <= 1.5x; <= 1 round trip",
            figure_14,
            needs_postgres=True,
        ),
    )
}


# -- the command line ---------------------------------------------------------------


def _figure_numbers(text: str) -> list[int]:
    try:
        numbers = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected figure numbers such as 1,3; got {text!r}") from None
    unknown = [n for n in numbers if n not in FIGURES]
    if unknown or not numbers:
        raise argparse.ArgumentTypeError(f"no figure {unknown or text}; figures: {', '.join(map(str, FIGURES))}")
    return numbers


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few iterations of each figure (smoke test)")
    parser.add_argument("--only", type=_figure_numbers, metavar="N[,N]", help="run only these figures")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the results here (default: bench/results/)")
    parser.add_argument("--no-postgres", action="store_true", help="skip the figures that need PostgreSQL")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    numbers = args.only or list(FIGURES)
    budget = QUICK if args.quick else FULL
    started = dt.datetime.now(dt.UTC)
    workdir = Path(tempfile.mkdtemp(prefix="dbregistry-bench-"))
    ctx = Context(budget, args.quick, workdir, postgres_disabled="--no-postgres" if args.no_postgres else None)
    load_before = os.getloadavg()
    figures: dict[str, dict[str, Any]] = {}
    try:
        for number in numbers:
            figures[str(number)] = _run_one(FIGURES[number], ctx, args.no_postgres)
        machine = machine_info(ctx, started, load_before)
    finally:
        ctx.close()
        shutil.rmtree(workdir, ignore_errors=True)
    report = {
        "machine": machine,
        "mode": "quick" if args.quick else "full",
        "figures": figures,
    }
    print(render(report))
    for path in _write(report, args, complete=numbers == list(FIGURES)):
        print(f"wrote {_shown(path)}")
    failed = [n for n, f in figures.items() if f["status"] == "error"]
    if failed:
        print(f"figures that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _run_one(figure: Figure, ctx: Context, no_postgres: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "title": figure.title,
        "baseline": figure.baseline,
        "target": figure.target,
        "status": "ok",
        "rows": [],
        "notes": [],
        "data": {},
    }
    if figure.needs_postgres and no_postgres:
        entry["status"] = "skipped"
        entry["notes"] = ["--no-postgres"]
        return entry
    print(f"[figure {figure.number}] {figure.title} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        result = figure.run(ctx)
    except PostgresUnavailableError as e:
        entry["status"] = "error"
        entry["notes"] = [f"PostgreSQL unavailable: {e}"]
    except Exception as e:
        entry["status"] = "error"
        entry["notes"] = [f"{type(e).__name__}: {e}"]
        entry["traceback"] = traceback.format_exc()
        traceback.print_exc()
    else:
        entry["rows"] = [row.as_json() for row in result.rows]
        entry["notes"] = result.notes
        entry["data"] = result.data
    entry["seconds"] = round(time.perf_counter() - start, 2)
    print(f"[figure {figure.number}] {entry['status']} in {entry['seconds']:.1f} s", file=sys.stderr, flush=True)
    return entry


def _write(report: dict[str, Any], args: argparse.Namespace, *, complete: bool) -> list[Path]:
    if args.json is not None:
        paths = [args.json]
    else:
        paths = [RESULTS / "latest.json"]
        if complete and not args.quick and not args.no_postgres:
            day = report["machine"]["date"][:10]
            paths.append(RESULTS / f"{day}-{report['machine']['cpus']}cpu-py{platform.python_version()}.json")
    text = json.dumps(report, indent=2, default=str) + "\n"
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return paths


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# -- the machine --------------------------------------------------------------------


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "dbregistry"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{out}{' (dbregistry/ modified)' if dirty else ''}"


def _source_digest() -> str:
    """A digest of the measured package's sources: names the state of a modified checkout."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "dbregistry").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def machine_info(ctx: Context, started: dt.datetime, load_before: tuple[float, float, float]) -> dict[str, Any]:
    import yaml  # noqa: PLC0415

    return {
        "date": started.isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "sqlalchemy": _version("sqlalchemy"),
        "asyncpg": _version("asyncpg"),
        "psycopg": _version("psycopg"),
        "pydantic": _version("pydantic"),
        "pydantic_settings": _version("pydantic-settings"),
        "pyyaml": f"{_version('pyyaml')} (libyaml {'yes' if yaml.__with_libyaml__ else 'no'})",
        "aiosqlite": _version("aiosqlite"),
        "postgresql": ctx.postgres_version,
        "dbregistry_commit": _git_commit(),
        "dbregistry_sources_sha256": _source_digest(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }


# -- the table ----------------------------------------------------------------------


def _number(value: Any, unit: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if unit == "q/s":
        return f"{value:,.0f} q/s"
    if unit == "ns":
        return f"{value:.1f} ns"
    if unit == "" and float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:,.1f} {unit}" if abs(value) < 1000 else f"{value:,.0f} {unit}"


def _verdict(row: dict[str, Any]) -> str:
    if row["met"] is None:
        return "info" if row["target"] == "info" else ""
    return "met" if row["met"] else "MISSED"


def render(report: dict[str, Any]) -> str:
    """The machine and one table of every figure's rows."""
    m = report["machine"]
    header = [
        f"dbregistry benchmarks ({report['mode']}) - {m['date']}",
        f"machine: {m['cpus']} cpus ({m['cpu_model']}), {m['platform']}",
        f"{m['python']}, SQLAlchemy {m['sqlalchemy']}, asyncpg {m['asyncpg']}, psycopg {m['psycopg']}, "
        f"pydantic {m['pydantic']}, pydantic-settings {m['pydantic_settings']}, PyYAML {m['pyyaml']}, "
        f"PostgreSQL {m['postgresql'] or '-'}",
        f"commit {m['dbregistry_commit']}, sources sha256 {m['dbregistry_sources_sha256']}; load average before {_load(m['loadavg_before'])}, "
        f"after {_load(m['loadavg_after'])}",
        "",
    ]
    columns = ["fig", "measurement", "value", "baseline", "ratio", "target", "result"]
    lines: list[list[str]] = []
    notes: list[str] = []
    for number, figure in report["figures"].items():
        if figure["status"] != "ok":
            lines.append([number, figure["title"], figure["status"].upper(), "", "", figure["target"], ""])
            notes.extend(f"  {number}: {figure['status']}: {note}" for note in figure["notes"])
            continue
        for i, row in enumerate(figure["rows"]):
            lines.append(
                [
                    number if i == 0 else "",
                    row["label"],
                    _number(row["value"], row["unit"]),
                    _number(row["baseline"], row["unit"]),
                    f"{row['ratio']:.2f}x" if row["ratio"] is not None else "",
                    row["target"] if row["target"] not in (None, "info") else "",
                    _verdict(row),
                ]
            )
        notes.extend(f"  {number}: {note}" for note in figure["notes"])
    widths = [max(len(columns[i]), *(len(line[i]) for line in lines)) for i in range(len(columns))]
    right = {2, 3, 4}

    def fmt(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    rule = fmt(["-" * w for w in widths]).rstrip()
    table = [fmt(columns).rstrip(), rule]
    for line in lines:
        if line[0] and table[-1] != rule:
            table.append("")
        table.append(fmt(line).rstrip())
    return "\n".join([*header, *table, "", "notes:", *notes])


def _load(values: Sequence[float]) -> str:
    return "/".join(f"{v:.2f}" for v in values)


if __name__ == "__main__":
    raise SystemExit(main())
