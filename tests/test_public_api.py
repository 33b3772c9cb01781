"""The package namespace is the public surface: `__all__` is sorted, complete and importable."""

from __future__ import annotations

import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import dbregistry


def test_all_is_sorted() -> None:
    assert dbregistry.__all__ == sorted(dbregistry.__all__)


def test_all_names_exist() -> None:
    for name in dbregistry.__all__:
        assert getattr(dbregistry, name) is not None


def test_every_public_class_is_exported() -> None:
    public = {
        name
        for name, value in vars(dbregistry).items()
        if not name.startswith("_") and isinstance(value, type) and value.__module__.startswith("dbregistry")
    }
    assert public <= set(dbregistry.__all__)


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
