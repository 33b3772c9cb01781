"""In-process figures: the cost of ``get()`` (1, 2) and of loading a large YAML file (3)."""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

import yaml

from dbregistry import Registry

from .common import (
    Context,
    FigureResult,
    Row,
    Target,
    compared,
    interleave,
    many_databases_yaml,
    median,
    paired_ratio,
    timeit_ns,
)


def _net_row(
    label: str,
    samples: dict[str, list[float]],
    key: str,
    base: str,
    base_label: str,
    target: Target | None,
    note: str = "",
) -> Row:
    """Per-call times net of the empty loop of the same round; the ratio is net / net, paired by round."""
    value = [a - e for a, e in zip(samples[key], samples["empty"], strict=True)]
    baseline = [b - e for b, e in zip(samples[base], samples["empty"], strict=True)]
    return Row(
        label,
        median(value),
        "ns",
        median(baseline),
        base_label,
        paired_ratio(value, baseline),
        target,
        note,
        {"value": samples[key], "baseline": samples[base], "empty": samples["empty"]},
    )


class _TrivialMethod:
    """The floor for any method-based lookup: one call, one dict subscript."""

    def __init__(self, engines: dict[str | None, Any]) -> None:
        self._engines = engines

    def get(self, name: str | None = None) -> Any:
        return self._engines[name]


def figure_1(ctx: Context) -> FigureResult:
    """``registry.get(name)`` / ``get_async(name)`` on a built engine vs a plain dict lookup."""
    result = FigureResult()
    budget = ctx.budget
    registry = Registry.from_dict(
        {
            "databases": {
                "primary": {"url": f"sqlite:///{ctx.workdir / 'fig1.db'}", "pool_class": "QueuePool", "pool_size": 5},
                "replica": {"url": f"sqlite:///{ctx.workdir / 'fig1.db'}"},
            }
        },
        environ={},
    )
    try:
        for mode, method in (("get", "get"), ("get_async", "get_async")):
            engine = getattr(registry, method)("primary")
            engines: dict[str | None, Any] = {"primary": engine}
            namespace = {
                "registry": registry,
                "engines": engines,
                "trivial": _TrivialMethod(engines),
                "getitem": engines.__getitem__,
                "name": "primary",
            }
            samples = timeit_ns(
                {
                    "registry": f"registry.{method}(name)",
                    "dict": "engines[name]",
                    "trivial": "trivial.get(name)",
                    "getitem": "getitem(name)",
                    "empty": "pass",
                },
                namespace,
                budget.timeit_number,
                budget.timeit_repeats,
            )
            result.rows.append(
                compared(
                    f"{mode}(name), raw (incl. loop)",
                    samples["registry"],
                    samples["dict"],
                    "ns",
                    "engines[name], raw",
                    "info",
                )
            )
            result.rows.append(
                _net_row(
                    f"{mode}(name), net of empty loop",
                    samples,
                    "registry",
                    "dict",
                    "engines[name], net",
                    Target("<=", 2.0),
                )
            )
            result.rows.append(
                _net_row(
                    f"  reference: trivial method, net ({mode})",
                    samples,
                    "trivial",
                    "dict",
                    "engines[name], net",
                    None,
                    note="def get(self, n): return self._d[n]; the floor of any method call",
                )
            )
            result.rows.append(
                _net_row(
                    f"  reference: a bound C method, engines.__getitem__, net ({mode})",
                    samples,
                    "getitem",
                    "dict",
                    "engines[name], net",
                    None,
                    note="no Python frame at all: what a <= 2x target presumes",
                )
            )
            result.rows.append(
                _net_row(
                    f"  {mode}(name) vs trivial method, net",
                    samples,
                    "registry",
                    "trivial",
                    "trivial method, net",
                    None,
                )
            )
            result.data[f"{mode}_empty_loop_ns"] = median(samples["empty"])
        result.notes.append(
            f"empty timeit loop: {result.data['get_empty_loop_ns']:.1f} ns per iteration (subtracted for the net rows); "
            f"{budget.timeit_number:,} loops x {budget.timeit_repeats} interleaved repeats, medians"
        )
    finally:
        registry.close()
    return result


def _sqlite_databases(count: int, workdir: Path) -> dict[str, Any]:
    return {"databases": {f"db{i}": {"url": f"sqlite:///{workdir / f'db{i}.db'}"} for i in range(count)}}


def figure_2(ctx: Context) -> FigureResult:
    """``registry.get(name)`` with 10 vs 10,000 declared databases."""
    result = FigureResult()
    budget = ctx.budget
    small = Registry.from_dict(_sqlite_databases(10, ctx.workdir), environ={})
    start = time.perf_counter()
    large = Registry.from_dict(_sqlite_databases(10_000, ctx.workdir), environ={})
    result.data["load_10000_from_dict_s"] = time.perf_counter() - start
    try:
        small.get("db5")
        large.get("db5000")
        namespace = {"small": small, "large": large, "small_name": "db5", "large_name": "db5000"}

        def lookups() -> dict[str, list[float]]:
            return timeit_ns(
                {"large": "large.get(large_name)", "small": "small.get(small_name)", "empty": "pass"},
                namespace,
                budget.timeit_number,
                budget.timeit_repeats,
            )

        samples = lookups()
        result.rows.append(
            _net_row(
                "get(), 10,000 declared vs 10, net", samples, "large", "small", "10 declared, net", Target("<=", 1.2)
            )
        )
        result.rows.append(
            compared("get(), 10,000 declared vs 10, raw", samples["large"], samples["small"], "ns", "10 declared, raw")
        )
        result.rows[-1].target = "info"
        if budget.extras:
            # Declared-but-unused databases never enter the engine dict; building them all
            # shows the lookup does not grow with the dict either.
            start = time.perf_counter()
            for name in large:
                large.get(name)
            for name in small:
                small.get(name)
            result.data["build_10000_sync_engines_s"] = time.perf_counter() - start
            samples = lookups()
            result.rows.append(
                _net_row(
                    "  all built: 10,000 engines vs 10, net",
                    samples,
                    "large",
                    "small",
                    "10 built, net",
                    None,
                    note="every declared engine built first",
                )
            )
        result.notes.append(
            f"loading 10,000 databases with from_dict took {result.data['load_10000_from_dict_s']:.2f} s "
            "(setup, not timed)"
        )
    finally:
        small.close()
        large.close()
    return result


def figure_3(ctx: Context) -> FigureResult:
    """Load + validate a YAML file of 1,000 databases vs parsing it with libyaml alone."""
    from dbregistry._loader import load_config  # noqa: PLC0415 - internal, for the breakdown only
    from dbregistry._yamlfile import load_yaml_file  # noqa: PLC0415

    result = FigureResult()
    path = ctx.workdir / "fig3-1000.yaml"
    path.write_text(many_databases_yaml(1000), encoding="utf-8")
    result.data["file_bytes"] = path.stat().st_size

    def timed(func: Any) -> Any:
        def run() -> float:
            gc.collect()
            start = time.perf_counter()
            func()
            return (time.perf_counter() - start) * 1e3

        return run

    def registry() -> None:
        Registry.from_yaml(path, environ={})

    def libyaml() -> None:
        yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.CSafeLoader)

    def read_file() -> None:
        load_yaml_file(path)

    document = load_yaml_file(path)

    def validate() -> None:
        load_config(document=document, environ={})

    registry()  # warm: first-use caches (pydantic, URL parsing) are not what is compared
    samples = interleave(
        {"registry": timed(registry), "libyaml": timed(libyaml), "read": timed(read_file), "validate": timed(validate)},
        ctx.budget.load_repeats,
    )
    base = "yaml.load(CSafeLoader)"
    result.rows.append(
        compared(
            "from_yaml(1,000 dbs, environ={})",
            samples["registry"],
            samples["libyaml"],
            "ms",
            base,
            Target("<=", 1.5),
        )
    )
    result.rows.append(
        compared(
            "  of which: read (parse, build, lines, checks)", samples["read"], samples["libyaml"], "ms", base, "info"
        )
    )
    result.rows.append(
        compared("  of which: merge + validate", samples["validate"], samples["libyaml"], "ms", base, "info")
    )
    result.notes.append(
        f"file: 1,000 databases x (url + 6 pool fields), {result.data['file_bytes']:,} bytes; "
        f"{ctx.budget.load_repeats} interleaved repeats, gc.collect() before each, medians"
    )
    return result
