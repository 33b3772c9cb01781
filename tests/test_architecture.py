"""The package's imports flow one way: configuration -> sources -> validated config -> engines -> services.

Every module of ``dbregistry`` is parsed with `ast`; its runtime imports of
other dbregistry modules (module-level and inside functions, not those under
``if TYPE_CHECKING:``) must form no cycle and must point at its own layer or
an earlier one. A new module belongs in `LAYERS`; docs/architecture.md draws them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dbregistry"

# Earliest first. A module may import modules of its own layer or of an earlier one.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    ("foundation", frozenset({"_secrets", "_errors", "_fork"})),
    ("configuration", frozenset({"_yamlfile", "_interpolation", "_files"})),
    ("models", frozenset({"_pools", "_urls", "_hosts", "_waits", "_durations", "_schema"})),
    ("sources", frozenset({"_envsettings", "_sources"})),
    ("validated config", frozenset({"_connect", "_poolers", "_rules", "_pairs", "_credentials", "_loader"})),
    ("engines", frozenset({"_engines", "_engine_cache", "_failover", "_provider", "_replication"})),
    (
        "runtime services",
        frozenset(
            {
                "_causal",
                "_routing",
                "_health",
                "_lifecycle",
                "_poolevents",
                "_sessions",
                "_metrics",
                "_budget",
                "_effective",
                "_migrate",
            }
        ),
    ),
    ("composition", frozenset({"_registry"})),
    ("interfaces", frozenset({"__init__", "__main__", "_cli", "alembic", "asgi", "opentelemetry", "prometheus"})),
)

LAYER_OF = {module: index for index, (_, modules) in enumerate(LAYERS) for module in modules}
MODULES = sorted(path.stem for path in PACKAGE.glob("*.py"))


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(node: ast.AST) -> Iterator[ast.AST]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            for other in child.orelse:
                yield other
                yield from _runtime_nodes(other)
            continue
        yield child
        yield from _runtime_nodes(child)


def _target(name: str) -> str:
    """A name imported from the package: its module, or ``__init__`` for what the package itself defines."""
    return name if name in MODULES else "__init__"


def imports_of(module: str, source: str | None = None) -> set[str]:
    """The dbregistry modules ``module`` (or ``source``, read as that module) imports at run time."""
    if source is None:
        source = (PACKAGE / f"{module}.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    found: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.ImportFrom):
            absolute = node.level == 0 and node.module is not None and node.module.split(".")[0] == "dbregistry"
            if node.level == 1 or absolute:
                path = (node.module or "") if node.level == 1 else (node.module or "").removeprefix("dbregistry")
                path = path.lstrip(".")
                if path:
                    found.add(_target(path.split(".")[0]))
                else:
                    found.update(_target(alias.name) for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "dbregistry":
                    found.add(_target(parts[1]) if len(parts) > 1 else "__init__")
    found.discard(module)
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def test_every_module_has_a_layer() -> None:
    missing = [f"dbregistry/{m}.py" for m in MODULES if m not in LAYER_OF]
    assert not missing, f"{', '.join(missing)}: in no layer; add to LAYERS in tests/test_architecture.py"


@pytest.mark.parametrize("module", MODULES)
def test_imports_only_its_own_or_earlier_layers(module: str) -> None:
    layer = LAYER_OF.get(module)
    if layer is None:
        pytest.fail(f"dbregistry/{module}.py: in no layer")
    backwards = sorted(
        f"{target} ({LAYERS[LAYER_OF[target]][0]})"
        for target in GRAPH[module]
        if target in LAYER_OF and LAYER_OF[target] > layer
    )
    assert not backwards, f"{module} ({LAYERS[layer][0]}) imports a later layer: {', '.join(backwards)}"


def _cycle() -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(GRAPH.get(module, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)) is not None:
                return found
        path.pop()
        state[module] = 2
        return None

    for module in MODULES:
        if module not in state and (found := visit(module)) is not None:
            return found
    return None


def test_no_import_cycle() -> None:
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


class TestTheCheckItself:
    """The parser sees what the two tests above rely on."""

    SOURCE = (
        "from typing import TYPE_CHECKING\n"
        "from . import _urls, __version__\n"
        "from ._schema import DatabaseConfig\n"
        "import dbregistry._pools\n"
        "if TYPE_CHECKING:\n"
        "    from ._registry import Registry\n"
        "else:\n"
        "    from ._rules import check\n"
        "def later() -> None:\n"
        "    from ._health import check_health\n"
    )

    def test_runtime_imports_count_type_checking_ones_do_not(self) -> None:
        found = imports_of("_example", self.SOURCE)
        assert found == {"_urls", "__init__", "_schema", "_pools", "_rules", "_health"}

    def test_the_package_graph_is_read(self) -> None:
        assert "_envsettings" in GRAPH["_sources"]
        assert "_registry" not in GRAPH["_health"]
        assert "__init__" in GRAPH["opentelemetry"]

    def test_a_cycle_is_found(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(GRAPH, "_secrets", {"_errors"})
        assert _cycle() == ["_errors", "_secrets", "_errors"]
