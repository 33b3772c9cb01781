"""The package namespace is the public surface: `__all__` is sorted, complete and importable."""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
import types
import typing
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest

import dbregistry


def test_all_is_sorted() -> None:
    assert dbregistry.__all__ == sorted(dbregistry.__all__)


def test_all_is_exactly_the_public_names() -> None:
    """httpx's check: every public name the package defines is in `__all__`, and nothing else is.

    Modules are left out: the public integration modules (``dbregistry.prometheus``, ...)
    become attributes of the package once imported, and are named by their import path.
    """
    public = {
        name
        for name, value in vars(dbregistry).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(dbregistry.__all__)


def _type_checking_names(module: types.ModuleType) -> dict[str, Any]:
    """What ``module`` imports under ``if TYPE_CHECKING:``, imported now so its annotations resolve."""
    tree = ast.parse(inspect.getsource(module))
    names: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) in {"TYPE_CHECKING", "typing.TYPE_CHECKING"}:
            for statement in node.body:
                if isinstance(statement, ast.ImportFrom):
                    source = importlib.import_module(
                        "." * statement.level + (statement.module or ""), module.__package__
                    )
                    names.update({a.asname or a.name: getattr(source, a.name) for a in statement.names})
    return names


def _annotated_classes(owner: type) -> Iterator[tuple[str, type]]:
    """(``Class.member``, class) for every dbregistry class in a public member's annotations."""
    for member_name, member in vars(owner).items():
        if member_name.startswith("_") and member_name not in {"__init__", "__getitem__", "__iter__"}:
            continue
        function = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
        if not callable(function):
            continue
        # Its globals, not owner.__module__: the public classes say they live in ``dbregistry``.
        module = sys.modules[function.__globals__["__name__"]]
        hints = typing.get_type_hints(function, globalns={**_type_checking_names(module), **vars(module)})
        for hint in hints.values():
            stack = [hint]
            while stack:
                item = stack.pop()
                stack.extend(typing.get_args(item))
                if isinstance(item, type) and item.__module__.startswith("dbregistry"):
                    yield f"{owner.__name__}.{member_name}", item


def test_every_type_a_public_method_takes_or_returns_is_exported() -> None:
    exported = {getattr(dbregistry, name) for name in dbregistry.__all__}
    missing = sorted(
        f"{where} uses {cls.__name__} ({cls.__module__})"
        for owner in exported
        if isinstance(owner, type)
        for where, cls in _annotated_classes(owner)
        if cls not in exported
    )
    assert not missing


def test_errors_have_the_documented_bases() -> None:
    assert issubclass(dbregistry.ConfigError, ValueError)
    assert issubclass(dbregistry.UnknownDatabaseError, KeyError)
    assert issubclass(dbregistry.RegistryClosedError, RuntimeError)
    assert issubclass(dbregistry.CloseError, ExceptionGroup)
    for error in (dbregistry.ConfigError, dbregistry.UnknownDatabaseError, dbregistry.RegistryClosedError):
        assert issubclass(error, dbregistry.DBRegistryError)


HEAVY = ["sqlalchemy.ext.asyncio", "sqlalchemy.orm", "asyncpg", "psycopg", "aiosqlite", "fastapi", "pydantic_settings"]


def _loaded_after(code: str, env: dict[str, str] | None = None) -> list[str]:
    check = f"{code}\nimport sys; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True, env=env)
    return [m for m in result.stdout.strip().split(",") if m]


def test_import_stays_light() -> None:
    """The asyncio extension, the ORM, the drivers and pydantic-settings load only when first needed."""
    assert _loaded_after("import dbregistry") == []


def test_a_cold_start_on_sqlite_loads_nothing_it_does_not_use(tmp_path: Path) -> None:
    config = tmp_path / "databases.yaml"
    config.write_text("databases:\n  dev: {url: 'sqlite://', pool_class: StaticPool}\n")
    code = (
        "from dbregistry import Registry\n"
        f"registry = Registry.from_yaml({str(config)!r}, environ={{}})\n"
        "with registry.get().connect() as conn: conn.exec_driver_sql('select 1')"
    )
    assert _loaded_after(code) == []


def test_pydantic_settings_loads_for_dbregistry_variables() -> None:
    code = "from dbregistry import Registry; Registry.from_env(environ={'DBREGISTRY_DATABASES__X__URL': 'sqlite://'})"
    assert _loaded_after(code) == ["pydantic_settings"]


def test_py_typed_ships() -> None:
    assert files("dbregistry").joinpath("py.typed").is_file()


class TestSignatures:
    """What the naming convention in CONTRIBUTING.md promises callers."""

    def test_direct_is_keyword_only(self) -> None:
        registry = dbregistry.Registry.from_dict({"databases": {"dev": {"url": "sqlite://"}}}, environ={})
        try:
            assert registry.get("dev", direct=True) is registry.get("dev")
            for method in (registry.get, registry.get_async):
                with pytest.raises(TypeError, match=r"takes from 1 to 2 positional arguments but 3 were given"):
                    method("dev", True)  # type: ignore[call-arg]
        finally:
            registry.close()

    def test_coroutine_methods_start_with_a_and_async_constructors_with_async(self) -> None:
        coroutines = {
            name
            for name, member in vars(dbregistry.Registry).items()
            if not name.startswith("_") and inspect.iscoroutinefunction(member)
        }
        assert coroutines == {"aclose", "ahealth", "acheck_replicas"}
        returns_async_objects = {
            name
            for name, member in vars(dbregistry.Registry).items()
            if not name.startswith("_") and "Async" in str(getattr(member, "__annotations__", {}).get("return", ""))
        }
        # get_async() keeps its name (users write it); lifespan is the name ASGI frameworks ask for.
        assert returns_async_objects - {"get_async", "lifespan"} == {
            "async_reader",
            "async_writer",
            "async_session",
            "async_session_dependency",
        }
