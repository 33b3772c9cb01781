"""Declarations that cannot be meant are refused at load, naming both URLs' sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbregistry import ConfigError, Registry

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "pa1rs-secret"  # must never be shown
PG = f"postgresql://app:{PASSWORD}@db-primary/app"
PG_REPLICA = f"postgresql://app:{PASSWORD}@db-replica/app"

# The shipped file's layout: each URL is a variable with a laptop default.
FALLBACKS = """\
default: primary
databases:
  primary:
    url: ${DATABASE_URL:-sqlite:///./dev.db}
  replica:
    url: ${REPLICA_DATABASE_URL:-sqlite:///./replica.db}
    replica_of: primary
"""


def problems(path: Path, environ: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        Registry.from_yaml(path, environ=environ)
    assert PASSWORD not in str(info.value)
    assert PASSWORD not in repr(info.value)
    return [str(p) for p in info.value.problems]


@pytest.fixture
def fallbacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "databases.yaml"
    path.write_text(FALLBACKS)
    return path


class TestReplicaOnAnotherDialect:
    def test_a_forgotten_replica_variable_names_itself(self, fallbacks: Path) -> None:
        assert problems(fallbacks, {"DATABASE_URL": PG}) == [
            f"{fallbacks}:6  databases.replica.url: a sqlite replica of a postgresql primary (this url from "
            f"{fallbacks}:6, primary's from DATABASE_URL); REPLICA_DATABASE_URL is not set, so replica's url is "
            "the default of its ${REPLICA_DATABASE_URL:-...}; set REPLICA_DATABASE_URL to the replica's postgresql URL"
        ]

    def test_a_forgotten_primary_variable_names_itself(self, fallbacks: Path) -> None:
        assert problems(fallbacks, {"REPLICA_DATABASE_URL": PG_REPLICA}) == [
            f"REPLICA_DATABASE_URL  databases.replica.url: a postgresql replica of a sqlite primary (this url from "
            f"REPLICA_DATABASE_URL, primary's from {fallbacks}:4); DATABASE_URL is not set, so primary's url is "
            "the default of its ${DATABASE_URL:-...}; set DATABASE_URL to the primary's postgresql URL"
        ]

    def test_an_empty_replica_variable_is_an_empty_url_not_a_fallback(self, fallbacks: Path) -> None:
        assert problems(fallbacks, {"DATABASE_URL": PG, "REPLICA_DATABASE_URL": ""}) == [
            "REPLICA_DATABASE_URL  databases.replica.url: is empty; expected a URL such as "
            "postgresql://user:password@host/db"
        ]

    def test_without_a_fallback_the_conventional_variable_is_suggested(self, tmp_path: Path) -> None:
        path = tmp_path / "databases.yaml"
        path.write_text(
            f"databases:\n  primary: {{url: '{PG}'}}\n  read-1: {{url: 'sqlite:///r.db', replica_of: primary}}\n"
        )
        assert problems(path, {}) == [
            f"{path}:3  databases.read-1.url: a sqlite replica of a postgresql primary (this url from {path}:3, "
            f"primary's from {path}:2); point it at a postgresql replica (for example with READ_1_DATABASE_URL)"
        ]

    def test_drivers_do_not_make_a_dialect(self, fallbacks: Path) -> None:
        registry = Registry.from_yaml(
            fallbacks,
            environ={
                "DATABASE_URL": PG,
                "REPLICA_DATABASE_URL": PG_REPLICA.replace("postgresql", "postgresql+asyncpg"),
            },
        )
        assert registry["replica"].replica_of == "primary"


class TestReplicaOnItsPrimary:
    def test_the_same_url_through_variables(self, fallbacks: Path) -> None:
        assert problems(fallbacks, {"DATABASE_URL": PG, "REPLICA_DATABASE_URL": PG.replace("app:", "reader:")}) == [
            "REPLICA_DATABASE_URL  databases.replica.url: is the same database as its primary 'primary' "
            "(this url from REPLICA_DATABASE_URL, primary's from DATABASE_URL), so every read would go to the "
            "primary; point it at the replica, or remove replica_of"
        ]

    def test_the_default_port_and_the_host_case_do_not_make_another_server(self, tmp_path: Path) -> None:
        path = tmp_path / "databases.yaml"
        path.write_text(
            "databases:\n  primary: {url: 'postgresql://app@DB/app'}\n"
            "  replica: {url: 'postgresql+asyncpg://app@db:5432/app?ssl=require', replica_of: primary}\n"
        )
        (problem,) = problems(path, {})
        assert problem.startswith(f"{path}:3  databases.replica.url: is the same database as its primary 'primary'")

    def test_the_same_url_in_the_file_with_no_fallback(self, tmp_path: Path) -> None:
        path = tmp_path / "databases.yaml"
        path.write_text(f"databases:\n  primary: {{url: '{PG}'}}\n  replica: {{url: '{PG}', replica_of: primary}}\n")
        assert problems(path, {}) == [
            f"{path}:3  databases.replica.url: is the same database as its primary 'primary' (this url from "
            f"{path}:3, primary's from {path}:2), so every read would go to the primary; point it at the "
            "replica, or remove replica_of"
        ]

    def test_a_fallback_to_the_primarys_server_names_the_variable(self, tmp_path: Path) -> None:
        path = tmp_path / "databases.yaml"
        path.write_text(
            f"databases:\n  primary: {{url: '{PG}'}}\n"
            f"  replica: {{url: '${{REPLICA_DATABASE_URL:-{PG}}}', replica_of: primary}}\n"
        )
        (problem,) = problems(path, {})
        assert problem.endswith(
            "REPLICA_DATABASE_URL is not set, so replica's url is the default of its ${REPLICA_DATABASE_URL:-...}; "
            "set REPLICA_DATABASE_URL to the replica's URL"
        )

    def test_another_database_on_the_same_server_is_a_replica(self, fallbacks: Path) -> None:
        registry = Registry.from_yaml(
            fallbacks, environ={"DATABASE_URL": PG, "REPLICA_DATABASE_URL": PG.replace("/app", "/app_copy")}
        )
        assert registry["replica"].url.database == "app_copy"

    def test_a_replica_on_its_primarys_sqlite_file_is_the_laptop_stand_in(self, tmp_path: Path) -> None:
        path = tmp_path / "databases.yaml"
        path.write_text(
            "databases:\n  primary: {url: 'sqlite:///./dev.db'}\n  replica: {url: 'sqlite:///./dev.db', replica_of: primary}\n"
        )
        assert Registry.from_yaml(path, environ={})["replica"].replica_of == "primary"

    def test_an_in_memory_primary_has_no_replica(self, tmp_path: Path) -> None:
        path = tmp_path / "databases.yaml"
        path.write_text(
            "databases:\n  primary: {url: 'sqlite://', pool_class: StaticPool}\n"
            "  replica: {url: 'sqlite:///r.db', replica_of: primary}\n"
        )
        assert problems(path, {}) == [
            f"{path}:3  databases.replica.url: an in-memory SQLite database is private to its connection, so a "
            f"replica can never see its primary's data (this url from {path}:3, primary's from {path}:2); use a "
            "file or a server for both"
        ]


class TestDirectUrl:
    def test_on_another_dialect(self, tmp_path: Path) -> None:
        path = tmp_path / "databases.yaml"
        path.write_text(
            f"databases:\n  neon:\n    url: '{PG}'\n    pooler: pgbouncer-transaction\n"
            "    direct_url: 'mysql://app@db/app'\n"
        )
        assert problems(path, {}) == [
            f"{path}:5  databases.neon.direct_url: a mysql URL for a postgresql database (url from {path}:3); "
            "direct_url is the same database reached past its pooler, so it has the url's dialect"
        ]

    def test_at_the_poolers_own_address(self, tmp_path: Path) -> None:
        path = tmp_path / "databases.yaml"
        path.write_text(
            f"databases:\n  app:\n    url: '{PG}'\n    pooler: pgbouncer-transaction\n"
            f"    direct_url: '{PG.replace('postgresql', 'postgresql+psycopg')}'\n"
        )
        assert problems(path, {}) == [
            f"{path}:5  databases.app.direct_url: is the pooler's own address, as url is (url from {path}:3; "
            "declared (pooler:)), so get(direct=True) would still go through the pooler; give the server's own "
            "host or port"
        ]

    def test_past_the_pooler_on_another_port(self, tmp_path: Path) -> None:
        path = tmp_path / "databases.yaml"
        path.write_text(
            f"databases:\n  app:\n    url: '{PG.replace('db-primary', 'db-primary:6432')}'\n"
            f"    pooler: pgbouncer-transaction\n    direct_url: '{PG}'\n"
        )
        assert Registry.from_yaml(path, environ={})["app"].direct_url is not None


class TestTheShippedFile:
    def test_loads_on_a_laptop(self) -> None:
        registry = Registry.from_yaml(ROOT / "config" / "databases.yaml", environ={})
        assert registry["replica"].url == registry["primary"].url

    def test_loads_in_production(self) -> None:
        registry = Registry.from_yaml(
            ROOT / "config" / "databases.yaml", environ={"DATABASE_URL": PG, "REPLICA_DATABASE_URL": PG_REPLICA}
        )
        assert registry["replica"].url.host == "db-replica"

    def test_a_forgotten_replica_url_is_refused(self) -> None:
        shipped = ROOT / "config" / "databases.yaml"
        (problem,) = problems(shipped, {"DATABASE_URL": PG})
        line = next(n for n, text in enumerate(shipped.read_text().splitlines(), 1) if "REPLICA_DATABASE_URL" in text)
        assert problem == (
            f"{shipped}:{line}  databases.replica.url: a sqlite replica of a postgresql primary (this url "
            f"from {shipped}:{line}, primary's from DATABASE_URL); REPLICA_DATABASE_URL is not set, so "
            "replica's url is the default of its ${REPLICA_DATABASE_URL:-...}; set REPLICA_DATABASE_URL to the replica's "
            "postgresql URL"
        )
