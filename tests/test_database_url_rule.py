"""The DATABASE_URL rule: a set DATABASE_URL either applies or fails naming itself.

The rule (README, "12-factor deploys"): ``DATABASE_URL`` is the URL of the default
database. The default is the one ``default:`` / ``DBREGISTRY_DEFAULT`` names, else
``primary``, else the only database. With no file, ``DATABASE_URL`` declares that
database (``primary``) beside any a ``DBREGISTRY_`` variable declares; with a file
whose databases have no default, a set ``DATABASE_URL`` is a `ConfigError`.
``<NAME>_DATABASE_URL`` sets a declared database only; ``DBREGISTRY_`` variables beat both.

The table crosses every layout with each of the three kinds of variable, set or unset.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from pathlib import Path

import pytest
from servers import PostgresServer, ReplicaServer
from sqlalchemy import text

from dbregistry import ConfigError, Registry

PASSWORD = "s3cr3t-du"  # must never be shown
DATABASE_URL = f"postgresql://app:{PASSWORD}@from-database-url/app"
NAME_URL = "postgresql://app@from-name-url/app"  # REPORTING_DATABASE_URL
PREFIXED_URL = "postgresql://app@from-prefixed/app"  # DBREGISTRY_DATABASES__AUDIT__URL

LAYOUTS = {
    "no file": None,
    "one, no default": "databases:\n  main: {url: 'sqlite:///main.db'}\n",
    "one, default": "default: main\ndatabases:\n  main: {url: 'sqlite:///main.db'}\n",
    "several with primary, no default": (
        "databases:\n  primary: {url: 'sqlite:///primary.db'}\n  reporting: {url: 'sqlite:///reporting.db'}\n"
    ),
    "several, no default": (
        "databases:\n  main: {url: 'sqlite:///main.db'}\n  reporting: {url: 'sqlite:///reporting.db'}\n"
    ),
    "several, default": (
        "default: reporting\ndatabases:\n"
        "  main: {url: 'sqlite:///main.db'}\n  reporting: {url: 'sqlite:///reporting.db'}\n"
    ),
}

# Where each database's URL must come from: "file" (its line in the file) or the variable.
F, DU, NU, PX = "file", "DATABASE_URL", "REPORTING_DATABASE_URL", "DBREGISTRY_DATABASES__AUDIT__URL"
NOTHING = "1 problem in environment\n  environment  databases: no database is declared; set DATABASE_URL or pass a configuration file"


def ambiguous(file: str, names: str) -> str:
    return (
        f"1 problem in {file}\n  DATABASE_URL  is the default database's URL, but none of the declared {names} "
        "is the default; name the one it is for with `default: <name>` or DBREGISTRY_DEFAULT=<name>"
    )


# (layout, DATABASE_URL set, REPORTING_DATABASE_URL set, DBREGISTRY_DATABASES__AUDIT__URL set)
#   -> (default, {database: source of its url})  or  the exact error text ("{file}" is the file's path)
EXPECTED: dict[tuple[str, bool, bool, bool], tuple[str | None, dict[str, str]] | str] = {
    ("no file", False, False, False): NOTHING,
    ("no file", True, False, False): ("primary", {"primary": DU}),
    ("no file", False, True, False): NOTHING,  # REPORTING_DATABASE_URL declares nothing
    ("no file", True, True, False): ("primary", {"primary": DU}),
    ("no file", False, False, True): ("audit", {"audit": PX}),
    ("no file", True, False, True): ("primary", {"primary": DU, "audit": PX}),
    ("no file", False, True, True): ("audit", {"audit": PX}),
    ("no file", True, True, True): ("primary", {"primary": DU, "audit": PX}),
    ("one, no default", False, False, False): ("main", {"main": F}),
    ("one, no default", True, False, False): ("main", {"main": DU}),
    ("one, no default", False, True, False): ("main", {"main": F}),
    ("one, no default", True, True, False): ("main", {"main": DU}),
    ("one, no default", False, False, True): (None, {"main": F, "audit": PX}),
    ("one, no default", True, False, True): ambiguous("{file}", "main, audit"),
    ("one, no default", False, True, True): (None, {"main": F, "audit": PX}),
    ("one, no default", True, True, True): ambiguous("{file}", "main, audit"),
    ("one, default", False, False, False): ("main", {"main": F}),
    ("one, default", True, False, False): ("main", {"main": DU}),
    ("one, default", False, True, False): ("main", {"main": F}),
    ("one, default", True, True, False): ("main", {"main": DU}),
    ("one, default", False, False, True): ("main", {"main": F, "audit": PX}),
    ("one, default", True, False, True): ("main", {"main": DU, "audit": PX}),
    ("one, default", False, True, True): ("main", {"main": F, "audit": PX}),
    ("one, default", True, True, True): ("main", {"main": DU, "audit": PX}),
    ("several with primary, no default", False, False, False): ("primary", {"primary": F, "reporting": F}),
    ("several with primary, no default", True, False, False): ("primary", {"primary": DU, "reporting": F}),
    ("several with primary, no default", False, True, False): ("primary", {"primary": F, "reporting": NU}),
    ("several with primary, no default", True, True, False): ("primary", {"primary": DU, "reporting": NU}),
    ("several with primary, no default", False, False, True): (
        "primary",
        {"primary": F, "reporting": F, "audit": PX},
    ),
    ("several with primary, no default", True, False, True): (
        "primary",
        {"primary": DU, "reporting": F, "audit": PX},
    ),
    ("several with primary, no default", False, True, True): (
        "primary",
        {"primary": F, "reporting": NU, "audit": PX},
    ),
    ("several with primary, no default", True, True, True): (
        "primary",
        {"primary": DU, "reporting": NU, "audit": PX},
    ),
    ("several, no default", False, False, False): (None, {"main": F, "reporting": F}),
    ("several, no default", True, False, False): ambiguous("{file}", "main, reporting"),
    ("several, no default", False, True, False): (None, {"main": F, "reporting": NU}),
    ("several, no default", True, True, False): ambiguous("{file}", "main, reporting"),
    ("several, no default", False, False, True): (None, {"main": F, "reporting": F, "audit": PX}),
    ("several, no default", True, False, True): ambiguous("{file}", "main, reporting, audit"),
    ("several, no default", False, True, True): (None, {"main": F, "reporting": NU, "audit": PX}),
    ("several, no default", True, True, True): ambiguous("{file}", "main, reporting, audit"),
    ("several, default", False, False, False): ("reporting", {"main": F, "reporting": F}),
    ("several, default", True, False, False): ("reporting", {"main": F, "reporting": DU}),
    # The specific beats the conventional: REPORTING_DATABASE_URL names this database itself.
    ("several, default", False, True, False): ("reporting", {"main": F, "reporting": NU}),
    ("several, default", True, True, False): ("reporting", {"main": F, "reporting": NU}),
    ("several, default", False, False, True): ("reporting", {"main": F, "reporting": F, "audit": PX}),
    ("several, default", True, False, True): ("reporting", {"main": F, "reporting": DU, "audit": PX}),
    ("several, default", False, True, True): ("reporting", {"main": F, "reporting": NU, "audit": PX}),
    ("several, default", True, True, True): ("reporting", {"main": F, "reporting": NU, "audit": PX}),
}
URL_OF = {DU: DATABASE_URL, NU: NAME_URL, PX: PREFIXED_URL}
CASES = list(itertools.product(LAYOUTS, (False, True), (False, True), (False, True)))


def test_the_table_covers_every_combination() -> None:
    assert set(EXPECTED) == set(CASES)


def _load(tmp_path: Path, layout: str, environ: dict[str, str]) -> tuple[Registry, str]:
    text = LAYOUTS[layout]
    if text is None:
        return Registry.from_env(environ=environ, env_file=None), "environment"
    path = tmp_path / "databases.yaml"
    path.write_text(text)
    return Registry.from_yaml(path, environ=environ), str(path)


@pytest.mark.parametrize(
    ("layout", "database_url", "name_url", "prefixed"),
    CASES,
    ids=[f"{layout}|DU={du:d}|NAME={nu:d}|PREFIXED={px:d}" for layout, du, nu, px in CASES],
)
def test_database_url_applies_or_fails_naming_itself(
    tmp_path: Path, layout: str, database_url: bool, name_url: bool, prefixed: bool
) -> None:
    environ = {"TEST_DATABASE_URL": "postgresql://stray@nowhere/x"}  # always set: a stray one does no harm
    if database_url:
        environ[DU] = DATABASE_URL
    if name_url:
        environ[NU] = NAME_URL
    if prefixed:
        environ[PX] = PREFIXED_URL
    expected = EXPECTED[(layout, database_url, name_url, prefixed)]
    file = str(tmp_path / "databases.yaml")
    if isinstance(expected, str):
        with pytest.raises(ConfigError) as info:
            _load(tmp_path, layout, environ)
        assert str(info.value) == expected.format(file=file)
        assert PASSWORD not in str(info.value)
        return
    registry, source = _load(tmp_path, layout, environ)
    default, sources = expected
    assert registry.default == default
    assert sorted(registry.names) == sorted(sources)
    for name, where in sources.items():
        origin = registry.origin(name, "url")
        if where == F:
            assert (origin.file, registry[name].url.database) == (source, f"{name}.db")
        else:
            assert str(origin) == where
            assert registry[name].url.render_as_string(hide_password=False) == URL_OF[where]
    registry.close()


class TestAroundTheTable:
    def test_readme_recipe_with_no_file(self) -> None:
        registry = Registry.from_env(
            environ={
                "DATABASE_URL": "postgresql://app@db-primary:5432/app",
                "DBREGISTRY_DATABASES__REPLICA__URL": "postgresql://app@db-replica:5432/app",
                "DBREGISTRY_DATABASES__REPLICA__REPLICA_OF": "primary",
            },
            env_file=None,
        )
        assert (registry.names, registry.default) == (["primary", "replica"], "primary")
        assert registry["replica"].replica_of == "primary"
        assert registry["primary"].url.host == "db-primary"

    def test_dbregistry_default_chooses_where_database_url_goes(self, tmp_path: Path) -> None:
        path = tmp_path / "databases.yaml"
        path.write_text(LAYOUTS["several, no default"] or "")
        registry = Registry.from_yaml(path, environ={DU: DATABASE_URL, "DBREGISTRY_DEFAULT": "reporting"})
        assert registry.default == "reporting"
        assert str(registry.origin("reporting", "url")) == DU
        assert registry["main"].url.database == "main.db"

    def test_dbregistry_default_names_the_database_it_declares_with_no_file(self) -> None:
        registry = Registry.from_env(environ={DU: DATABASE_URL, "DBREGISTRY_DEFAULT": "main"}, env_file=None)
        assert (registry.names, registry.default) == (["main"], "main")

    def test_a_prefixed_url_of_the_default_beats_database_url(self) -> None:
        registry = Registry.from_env(
            environ={DU: DATABASE_URL, "DBREGISTRY_DATABASES__PRIMARY__URL": PREFIXED_URL}, env_file=None
        )
        assert str(registry.origin("primary", "url")) == "DBREGISTRY_DATABASES__PRIMARY__URL"
        assert registry["primary"].url.host == "from-prefixed"

    def test_a_file_that_substitutes_database_url_itself_uses_it(self, tmp_path: Path) -> None:
        path = tmp_path / "databases.yaml"
        path.write_text("databases:\n  main: {url: '${DATABASE_URL}'}\n  reporting: {url: 'sqlite:///r.db'}\n")
        registry = Registry.from_yaml(path, environ={DU: DATABASE_URL})
        assert registry.default is None
        assert registry["main"].url.host == "from-database-url"

    def test_a_default_that_names_no_database_is_reported_once(self, tmp_path: Path) -> None:
        path = tmp_path / "databases.yaml"
        path.write_text(LAYOUTS["several, no default"] or "")
        with pytest.raises(ConfigError) as info:
            Registry.from_yaml(path, environ={DU: DATABASE_URL, "DBREGISTRY_DEFAULT": "mian"})
        assert [str(p) for p in info.value.problems] == [
            "DBREGISTRY_DEFAULT  default: 'mian' is not a declared database; did you mean 'main'? "
            "declared: main, reporting"
        ]

    def test_from_a_dotenv_file_the_error_names_the_file(self, tmp_path: Path) -> None:
        path = tmp_path / "databases.yaml"
        path.write_text(LAYOUTS["several, no default"] or "")
        dotenv = tmp_path / ".env"
        dotenv.write_text(f"DATABASE_URL={DATABASE_URL}\n")
        with pytest.raises(ConfigError) as info:
            Registry.from_yaml(path, environ={}, env_file=dotenv)
        (problem,) = info.value.problems
        assert problem.source == f"DATABASE_URL (from {dotenv})"
        assert PASSWORD not in str(info.value)

    def test_from_dict_counts_as_a_declaration(self) -> None:
        mapping = {"databases": {"main": {"url": "sqlite://"}, "reporting": {"url": "sqlite://"}}}
        with pytest.raises(ConfigError, match=re.escape("  DATABASE_URL  is the default database's URL, but")):
            Registry.from_dict(mapping, environ={DU: DATABASE_URL})


@pytest.mark.postgres
@pytest.mark.replica
def test_the_readme_recipe_reads_from_the_real_replica_in_both_modes(
    pg: PostgresServer, pg_replica: ReplicaServer
) -> None:
    registry = Registry.from_env(
        environ={
            "DATABASE_URL": pg.url_string(),
            "DBREGISTRY_DATABASES__REPLICA__URL": pg_replica.url_string(),
            "DBREGISTRY_DATABASES__REPLICA__REPLICA_OF": "primary",
        },
        env_file=None,
    )
    in_recovery = text("SELECT pg_is_in_recovery()")
    with registry.get().connect() as conn:
        assert conn.execute(in_recovery).scalar() is False
    with registry.reader().connect() as conn:
        assert conn.execute(in_recovery).scalar() is True

    async def async_reads() -> tuple[object, object]:
        async with registry.get_async().connect() as conn:
            writer = (await conn.execute(in_recovery)).scalar()
        async with registry.async_reader().connect() as conn:
            reader = (await conn.execute(in_recovery)).scalar()
        await registry.aclose()
        return writer, reader

    assert asyncio.run(async_reads()) == (False, True)
