"""What migrations take from a declaration (dbregistry._migrate) and the CLI's `alembic init` and `show` lines."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dbregistry import Registry
from dbregistry._cli import EXIT_OK, EXIT_PROBLEMS, main
from dbregistry._migrate import lock_key, migration_url, physical_identity, write_alembic_project
from dbregistry._urls import parse_url

PASSWORD = "Mig-Pw-0451"


def _registry(databases: dict[str, dict[str, str]]) -> Registry:
    return Registry.from_dict({"databases": databases}, environ={})


class TestLockKey:
    def test_is_documented_and_stable(self) -> None:
        # SHA-256 of "dbregistry.alembic:primary", first 8 bytes, big-endian, signed.
        assert lock_key("primary") == 818258710906534070
        assert lock_key("analytics") == lock_key("analytics")

    def test_fits_a_signed_64_bit_bigint_and_differs_per_name(self) -> None:
        keys = {lock_key(f"db{i}") for i in range(1000)}
        assert len(keys) == 1000
        assert all(-(2**63) <= k < 2**63 for k in keys)


class TestMigrationURL:
    def test_direct_url_wins(self) -> None:
        registry = _registry(
            {
                "primary": {
                    "url": f"postgresql://app:{PASSWORD}@bouncer:6432/app",
                    "pooler": "pgbouncer-transaction",
                    "direct_url": f"postgresql://app:{PASSWORD}@db:5432/app",
                }
            }
        )
        found = migration_url(registry["primary"])
        assert found.url is not None
        assert (found.url.host, found.url.port, found.reason) == ("db", 5432, "direct_url")

    def test_a_neon_pooler_endpoint_migrates_on_the_derived_direct_host(self) -> None:
        registry = _registry(
            {"primary": {"url": "postgresql://app:pw@ep-cool-1234-pooler.eu-central-1.aws.neon.tech/app"}}
        )
        found = migration_url(registry["primary"])
        assert found.url is not None
        assert found.url.host == "ep-cool-1234.eu-central-1.aws.neon.tech"
        assert found.reason == "the Neon direct host derived from url"

    def test_no_pooler_migrates_on_url(self) -> None:
        found = migration_url(_registry({"primary": {"url": "postgresql://app:pw@db/app"}})["primary"])
        assert found.url is not None
        assert found.url.host == "db"
        assert found.reason == "url: no transaction-mode pooler in front"

    def test_a_session_mode_pooler_is_fine_for_migrations(self) -> None:
        db = _registry({"primary": {"url": "postgresql://app:pw@bouncer/app", "pooler": "pgbouncer-session"}})[
            "primary"
        ]
        assert migration_url(db).reason == "url: no transaction-mode pooler in front"

    def test_a_transaction_mode_pooler_without_direct_url_has_none(self) -> None:
        db = _registry({"primary": {"url": "postgresql://app:pw@x.pooler.supabase.com:6543/app"}})["primary"]
        found = migration_url(db)
        assert found.url is None
        assert found.reason == (
            "refused, url goes through a transaction-mode pooler (Supabase pooler on port 6543: transaction mode) "
            "and no direct_url is declared"
        )

    def test_a_replica_is_never_migrated(self) -> None:
        registry = _registry(
            {
                "primary": {"url": "postgresql://db/app"},
                "replica": {"url": "postgresql://ro/app", "replica_of": "primary"},
            }
        )
        assert migration_url(registry["replica"]).url is None
        assert migration_url(registry["replica"]).reason == "never, a replica of primary"


class TestPhysicalIdentity:
    def test_ignores_driver_and_user(self) -> None:
        a = physical_identity(parse_url("postgresql+psycopg://app:pw@DB:5432/app"))
        b = physical_identity(parse_url("postgresql+asyncpg://other@db:5432/app"))
        assert a == b == ("postgresql", "db", "5432", "app")

    def test_another_database_name_or_port_differs(self) -> None:
        base = physical_identity(parse_url("postgresql://db:5432/app"))
        assert physical_identity(parse_url("postgresql://db:5432/other")) != base
        assert physical_identity(parse_url("postgresql://db:5433/app")) != base

    def test_sqlite_files_compare_by_real_path(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.chdir(tmp_path)
        assert physical_identity(parse_url("sqlite:///app.db")) == ("sqlite", str(tmp_path.resolve() / "app.db"))
        assert physical_identity(parse_url(f"sqlite:///{tmp_path}/./app.db")) == physical_identity(
            parse_url("sqlite:///app.db")
        )

    @pytest.mark.parametrize(
        "url", ["sqlite://", "sqlite:///:memory:", "sqlite:///file::memory:?cache=shared&uri=true"]
    )
    def test_in_memory_sqlite_is_never_shared(self, url: str) -> None:
        assert physical_identity(parse_url(url)) is None


class TestAlembicInit:
    def test_writes_the_template_and_an_ini_pointing_at_it(self, tmp_path: Path) -> None:
        written = write_alembic_project(tmp_path / "db" / "migrations", tmp_path / "alembic.ini")

        assert [p.relative_to(tmp_path).as_posix() for p in written] == [
            "db/migrations/env.py",
            "db/migrations/script.py.mako",
            "db/migrations/versions",
            "alembic.ini",
        ]
        ini = (tmp_path / "alembic.ini").read_text()
        assert "script_location = %(here)s/db/migrations\n" in ini
        assert "revision_environment = true\n" in ini
        assert "from dbregistry.alembic import run_migrations" in (tmp_path / "db/migrations/env.py").read_text()

    def test_keeps_an_existing_ini(self, tmp_path: Path) -> None:
        (tmp_path / "alembic.ini").write_text("[alembic]\nmine = yes\n")
        written = write_alembic_project(tmp_path / "migrations", tmp_path / "alembic.ini")
        assert (tmp_path / "alembic.ini").read_text() == "[alembic]\nmine = yes\n"
        assert tmp_path / "alembic.ini" not in written

    def test_refuses_a_directory_with_files(self, tmp_path: Path) -> None:
        (tmp_path / "migrations").mkdir()
        (tmp_path / "migrations" / "env.py").write_text("# mine\n")
        with pytest.raises(
            FileExistsError, match=re.escape(f"{tmp_path / 'migrations'} exists and is not an empty directory")
        ):
            write_alembic_project(tmp_path / "migrations", tmp_path / "alembic.ini")
        assert (tmp_path / "migrations" / "env.py").read_text() == "# mine\n"

    def test_the_command(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.chdir(tmp_path)
        assert main(["alembic", "init", "migrations"]) == EXIT_OK
        assert capsys.readouterr().out == (
            "wrote migrations/env.py\n"
            "wrote migrations/script.py.mako\n"
            "wrote migrations/versions\n"
            "wrote alembic.ini\n"
            "next: alembic -c alembic.ini revision -m 'first'  (databases from $DBREGISTRY_CONFIG and the environment)\n"
        )
        assert main(["alembic", "init", "migrations"]) == EXIT_PROBLEMS
        assert capsys.readouterr().err == "dbregistry alembic init: migrations exists and is not an empty directory\n"


class TestShow:
    CONFIG = f"""\
databases:
  primary:
    url: postgresql://app:{PASSWORD}@bouncer:6432/app
    pooler: pgbouncer-transaction
    direct_url: postgresql://app:{PASSWORD}@db:5432/app
  analytics:
    url: postgresql://app:{PASSWORD}@x.pooler.supabase.com:6543/analytics
  replica:
    url: postgresql://app:{PASSWORD}@ro:5432/app
    replica_of: primary
"""

    def test_says_which_url_migrations_use(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        config = tmp_path / "databases.yaml"
        config.write_text(self.CONFIG)
        for name in ("DATABASE_URL", "DBREGISTRY_CONFIG", "DBREGISTRY_PROFILE", "APP_ENV"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.chdir(tmp_path)

        assert main(["show", "--config", str(config)]) == EXIT_OK
        text = capsys.readouterr().out
        assert main(["show", "--config", str(config), "--json"]) == EXIT_OK
        data = json.loads(capsys.readouterr().out)

        lines = [line for line in text.splitlines() if line.startswith("  migrations")]
        assert lines == [
            "  migrations run on postgresql://app:***@db:5432/app  (direct_url)",
            "  migrations: refused, url goes through a transaction-mode pooler "
            "(Supabase pooler on port 6543: transaction mode) and no direct_url is declared",
            "  migrations: never, a replica of primary",
        ]
        assert data["migrations"] == {
            "primary": {"url": "postgresql://app:***@db:5432/app", "why": "direct_url"},
            "analytics": {
                "url": None,
                "why": "refused, url goes through a transaction-mode pooler "
                "(Supabase pooler on port 6543: transaction mode) and no direct_url is declared",
            },
            "replica": {"url": None, "why": "never, a replica of primary"},
        }
        assert PASSWORD not in text + json.dumps(data)
