"""Fresh-process figures: import time (4), memory of 10,000 declared databases (5), cold first query (9)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .common import (
    POOL_FIELDS,
    REPO,
    Context,
    FigureResult,
    Row,
    Target,
    compared,
    fresh_env,
    interleave,
    many_databases_yaml,
    median,
    run_python,
    wall_ms,
)

IMPORT_REGISTRY = "import dbregistry"
IMPORT_BASELINE = "import sqlalchemy, pydantic_settings, yaml"
# Imported only when asked for: an async engine, a session, a driver.
MUST_NOT_IMPORT = ("sqlalchemy.ext.asyncio", "sqlalchemy.orm", "asyncpg", "psycopg", "aiosqlite")


def _pycache(ctx: Context) -> Path:
    path = ctx.workdir / "pycache"
    path.mkdir(exist_ok=True)
    return path


def _warm(ctx: Context, env: dict[str, str], *codes: str) -> None:
    """Run each child first (twice in full runs): its bytecode is cached and its files are in the page cache."""
    for _ in range(ctx.budget.warm_runs):
        for code in codes:
            run_python(code, env)


def _import_times(code: str, env: dict[str, str]) -> dict[str, tuple[int, int]]:
    """``-X importtime``: module -> (self us, cumulative us)."""
    proc = run_python(code, env, args=("-X", "importtime"))
    times: dict[str, tuple[int, int]] = {}
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, cumulative, name = line.removeprefix("import time:").split("|")
        times[name.strip()] = (int(own), int(cumulative))
    return times


def figure_4(ctx: Context) -> FigureResult:
    """``import dbregistry`` vs ``import sqlalchemy, pydantic_settings, yaml`` in fresh processes."""
    result = FigureResult()
    runs = ctx.budget.process_runs
    env = fresh_env(_pycache(ctx))
    _warm(ctx, env, IMPORT_REGISTRY, IMPORT_BASELINE)
    samples = interleave({"registry": wall_ms(IMPORT_REGISTRY, env), "baseline": wall_ms(IMPORT_BASELINE, env)}, runs)
    result.rows.append(
        compared(
            "python -c 'import dbregistry'",
            samples["registry"],
            samples["baseline"],
            "ms",
            "sqlalchemy+pydantic_settings+yaml",
            Target("<=", 1.1),
            note="bytecode cached for both",
        )
    )
    if ctx.budget.extras:
        inherited = fresh_env(None)
        if inherited.get("PYTHONDONTWRITEBYTECODE"):
            label = "  same, inherited PYTHONDONTWRITEBYTECODE=1"
            note = "no .pyc written for the editable checkout (compiled at every start); installed packages keep theirs"
        else:
            label = "  same, inherited environment"
            note = "the caller's environment as it is"
        samples = interleave(
            {"registry": wall_ms(IMPORT_REGISTRY, inherited), "baseline": wall_ms(IMPORT_BASELINE, inherited)},
            max(runs // 2, 2),
        )
        result.rows.append(
            compared(label, samples["registry"], samples["baseline"], "ms", "sqlalchemy+pydantic_settings+yaml", "info")
        )
        result.rows[-1].note = note

    check = (
        f"import dbregistry, sys, json; print(json.dumps([m for m in {list(MUST_NOT_IMPORT)!r} if m in sys.modules]))"
    )
    imported = json.loads(run_python(check, env).stdout)
    for module in MUST_NOT_IMPORT:
        result.rows.append(
            Row(
                f"import dbregistry imports {module}",
                "IMPORTED" if module in imported else "not imported",
                target="not imported",
            )
        )

    mine = _import_times(IMPORT_REGISTRY, env)
    base = _import_times(IMPORT_BASELINE, env)
    extra = sorted(((own, name) for name, (own, _) in mine.items() if name not in base), reverse=True)
    result.data["modules_imported"] = len(mine)
    result.data["baseline_modules_imported"] = len(base)
    result.data["extra_modules"] = {name: own for own, name in extra}
    result.data["extra_self_ms"] = sum(own for own, _ in extra) / 1e3
    result.data["dbregistry_cumulative_ms"] = mine.get("dbregistry", (0, 0))[1] / 1e3
    heavy = [(own, name) for own, name in extra if own >= 500]
    shown = ", ".join(f"{name} {own / 1e3:.1f}" for own, name in heavy[:10])
    result.notes.append(
        f"-X importtime: import dbregistry loads {len(mine)} modules and the baseline {len(base)}; "
        f"{len(extra)} of dbregistry's are not among the baseline's, their own time {result.data['extra_self_ms']:.1f} "
        "ms in all. "
        f"Largest (self ms): {shown}"
    )
    return result


_MEMORY_CHILD = """
import gc, json, os, sys
WHAT, TRACED, PATH = sys.argv[1:4]
from dbregistry import Registry
import yaml
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
def peak():  # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forked parent
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
if WHAT == "dict":
    with open(PATH, encoding="utf-8") as f:
        mapping = yaml.load(f.read(), Loader=yaml.CSafeLoader)
if TRACED:
    import tracemalloc
    tracemalloc.start()
gc.collect()
before = rss()
if WHAT == "dict":
    kept = Registry.from_dict(mapping, environ={})
elif WHAT == "yaml":
    with open(PATH, encoding="utf-8") as f:
        kept = yaml.load(f.read(), Loader=yaml.CSafeLoader)
else:
    kept = Registry.from_yaml(PATH, environ={})
gc.collect()
after = rss()
out = {"before": before, "after": after, "peak": peak()}
if TRACED:
    out["current"], out["traced_peak"] = tracemalloc.get_traced_memory()
    stats = tracemalloc.take_snapshot().statistics("lineno")[:8]
    out["sites"] = [[str(s.traceback[0]), s.size, s.count] for s in stats]
print(json.dumps(out))
"""


def _memory_child(what: str, path: Path, env: dict[str, str], *, traced: bool = False) -> dict[str, Any]:
    code = _MEMORY_CHILD.replace("sys.argv[1:4]", repr((what, "traced" if traced else "", str(path))))
    values: dict[str, Any] = json.loads(run_python(code, env).stdout)
    return values


def figure_5(ctx: Context) -> FigureResult:
    """RSS retained by 10,000 declared, unused databases, measured in fresh processes."""
    result = FigureResult()
    mb = 1024 * 1024
    path = ctx.workdir / "fig5-10000.yaml"
    path.write_text(many_databases_yaml(10_000), encoding="utf-8")
    env = fresh_env(_pycache(ctx))
    runs = ctx.budget.memory_runs
    registry = [_memory_child("registry", path, env) for _ in range(runs)]
    plain = [_memory_child("yaml", path, env) for _ in range(runs)]
    result.rows.append(
        compared(
            "RSS retained after from_yaml(10,000 dbs)",
            [(r["after"] - r["before"]) / mb for r in registry],
            [(r["after"] - r["before"]) / mb for r in plain],
            "MB",
            "yaml.load of the file, kept",
            Target("<=", 40, on="value", unit="MB"),
        )
    )
    result.rows.append(
        compared(
            "  peak RSS during the load (VmHWM - before)",
            [(r["peak"] - r["before"]) / mb for r in registry],
            [(r["peak"] - r["before"]) / mb for r in plain],
            "MB",
            "yaml.load, peak",
            "info",
        )
    )
    if ctx.budget.extras:
        traced = _memory_child("registry", path, env, traced=True)
        plain_traced = _memory_child("yaml", path, env, traced=True)
        result.rows.append(
            Row(
                "  tracemalloc: Python objects retained",
                traced["current"] / mb,
                "MB",
                plain_traced["current"] / mb,
                "yaml.load, kept",
                traced["current"] / plain_traced["current"],
                "info",
                note=f"peak during the load {traced['traced_peak'] / mb:.1f} MB (yaml.load {plain_traced['traced_peak'] / mb:.1f} MB)",
            )
        )
        parsed = _memory_child("dict", path, env, traced=True)
        result.rows.append(
            Row(
                "  tracemalloc: from_dict(same data, parsed before)",
                parsed["current"] / mb,
                "MB",
                target="info",
                note="the registry's own structures; the mapping itself not counted",
            )
        )
        result.data["tracemalloc_peak_mb"] = traced["traced_peak"] / mb
        result.data["tracemalloc_sites"] = traced["sites"]
        sites = "; ".join(
            f"{_short(site)} {size / mb:.1f} MB ({count:,} blocks)" for site, size, count in traced["sites"][:6]
        )
        result.notes.append(f"largest retained allocation sites (tracemalloc): {sites}")
    result.data["file_bytes"] = path.stat().st_size
    result.data["rss_before_mb"] = median([r["before"] / mb for r in registry])
    result.notes.append(
        f"file: 10,000 databases x (url + 6 pool fields), {result.data['file_bytes']:,} bytes; RSS from "
        f"/proc/self/statm after gc.collect(), before = after import; median of {runs} fresh process(es)"
    )
    return result


def _short(site: str) -> str:
    """``/long/path/site-packages/pydantic/main.py:732`` -> ``pydantic/main.py:732``."""
    for marker in ("site-packages/", f"{REPO}/"):
        if marker in site:
            return site.split(marker, 1)[1]
    return site


# Counts the garbage collector's passes by generation and their time; printed when the child exits.
_GC_PROBE = """\
import atexit, gc, time
_passes = [[0, 0.0], [0, 0.0], [0, 0.0]]
_started = [0.0]
def _observe(phase, info):
    if phase == "start":
        _started[0] = time.perf_counter()
    else:
        _passes[info["generation"]][0] += 1
        _passes[info["generation"]][1] += time.perf_counter() - _started[0]
gc.callbacks.append(_observe)
atexit.register(lambda: print("GC", *(f"{n}:{t * 1e3:.1f}" for n, t in _passes)))
"""


def _collections_note(registry_code: str, manual_code: str, env: dict[str, str]) -> str:
    """How many collections of each generation each side runs before it exits, and their time."""

    def passes(code: str) -> str:
        out = run_python(_GC_PROBE + code, env).stdout.split()
        counts = [field.split(":") for field in out[out.index("GC") + 1 :]]
        return ", ".join(f"gen{g} {n} ({float(t):.0f} ms)" for g, (n, t) in enumerate(counts))

    return (
        f"garbage-collector passes until exit, one run each: registry {passes(registry_code)}; "
        f"create_engine {passes(manual_code)}"
    )


def figure_9(ctx: Context) -> FigureResult:
    """Time to the first query result in a cold process, on SQLite: registry vs create_engine by hand."""
    result = FigureResult()
    database = ctx.workdir / "fig9.db"
    config = ctx.workdir / "fig9.yaml"
    fields = "".join(f"    {k}: {'true' if v is True else v}\n" for k, v in POOL_FIELDS.items())
    config.write_text(f"databases:\n  main:\n    url: sqlite:///{database}\n{fields}", encoding="utf-8")
    options = ", ".join(f"{k}={v!r}" for k, v in POOL_FIELDS.items() if k != "pool_class")
    # Each child reports the monotonic clock (system-wide on Linux) when it holds the result;
    # the parent subtracts the moment it spawned the child.
    stamp = "import time; print(time.clock_gettime(time.CLOCK_MONOTONIC))"
    registry_code = (
        "from dbregistry import Registry\n"
        f"registry = Registry.from_yaml({str(config)!r})\n"
        "with registry.get('main').connect() as conn:\n"
        "    conn.exec_driver_sql('SELECT 1').scalar()\n"
        f"{stamp}\n"
    )
    manual_code = (
        "import sqlalchemy\n"
        "from sqlalchemy.pool import QueuePool\n"
        f"engine = sqlalchemy.create_engine({f'sqlite:///{database}'!r}, poolclass=QueuePool, {options})\n"
        "with engine.connect() as conn:\n"
        "    conn.exec_driver_sql('SELECT 1').scalar()\n"
        f"{stamp}\n"
    )
    import_code = f"import dbregistry\n{stamp}\n"
    # The dependencies this path loads (pydantic-settings is not among them: no DBREGISTRY_* variables).
    deps_code = f"import sqlalchemy, yaml\nfrom pydantic import BaseModel\n{stamp}\n"
    # Validating with pydantic also pays for a first model: pydantic imports its schema machinery then.
    model_code = (
        f"import sqlalchemy, yaml\nfrom pydantic import BaseModel\nclass M(BaseModel):\n    x: int = 1\n{stamp}\n"
    )
    env = fresh_env(_pycache(ctx))
    codes = {"registry": registry_code, "manual": manual_code}
    if ctx.budget.extras:
        codes |= {"import": import_code, "deps": deps_code, "model": model_code}
    _warm(ctx, env, *codes.values())

    def first_result(code: str) -> Any:
        def run() -> float:
            start = time.clock_gettime(time.CLOCK_MONOTONIC)
            proc = run_python(code, env)
            return (float(proc.stdout.split()[-1]) - start) * 1e3

        return run

    samples = interleave({name: first_result(code) for name, code in codes.items()}, ctx.budget.process_runs)
    result.rows.append(
        compared(
            "cold process: from_yaml + get + SELECT 1",
            samples["registry"],
            samples["manual"],
            "ms",
            "create_engine + SELECT 1",
            Target("<=", 1.25),
        )
    )
    if ctx.budget.extras:
        base = "create_engine + SELECT 1"
        result.rows.append(
            compared("  of which: import dbregistry", samples["import"], samples["manual"], "ms", base, "info")
        )
        result.rows.append(
            compared(
                "  floor: import sqlalchemy, pydantic, yaml",
                samples["deps"],
                samples["manual"],
                "ms",
                base,
                "info",
            )
        )
        result.rows.append(
            compared("  floor + one pydantic model", samples["model"], samples["manual"], "ms", base, "info")
        )
        result.notes.append(_collections_note(registry_code, manual_code, env))
    result.notes.append(
        "spawn to result in hand (interpreter exit not counted); same QueuePool settings both sides; "
        f"bytecode cached; {ctx.budget.process_runs} alternating runs, medians"
    )
    return result
