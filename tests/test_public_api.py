"""The package namespace is the public surface: `__all__` is sorted, complete and importable."""

from __future__ import annotations

import subprocess
import sys
from importlib.resources import files

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


def test_import_stays_light() -> None:
    """The asyncio extension, the ORM and the drivers load only when first needed."""
    code = (
        "import sys, dbregistry; heavy = ['sqlalchemy.ext.asyncio', 'sqlalchemy.orm', 'asyncpg', 'psycopg', "
        "'aiosqlite', 'fastapi']; print(','.join(m for m in heavy if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_py_typed_ships() -> None:
    assert files("dbregistry").joinpath("py.typed").is_file()
