"""examples/migrations run end to end with real Alembic: on its SQLite defaults, and on the suite's PostgreSQL."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import PASSWORD, PostgresServer, ReplicaServer

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "migrations"
RUN_TIMEOUT = 180


def _alembic(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for secret in (PASSWORD, "pg-S3cret"):  # raw, and the start of every encoded form
        assert secret not in result.stdout + result.stderr
    return result


def _environ(**urls: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBREGISTRY_", "DATABASE_URL", "APP_ENV"))}
    env.update(urls)
    return env


@pytest.fixture
def example(tmp_path: Path) -> Path:
    target = tmp_path / "example"
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns("__pycache__", "*.db", "*.migration-lock"))
    return target


def _function_bodies(revision: Path) -> dict[str, str]:
    text = revision.read_text()
    return dict(re.findall(r"^def ((?:up|down)grade_\w+)\(\) -> None:\n((?:    .*\n|\n)*)", text, re.M))


def test_the_example_migrates_its_sqlite_defaults(example: Path) -> None:
    result = _alembic(example, _environ(), "upgrade", "head")

    with sqlite3.connect(example / "primary.db") as conn:
        primary = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY 1")]
    with sqlite3.connect(example / "analytics.db") as conn:
        analytics = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY 1")]
    assert primary == ["alembic_version", "teams", "users"]
    assert analytics == ["alembic_version", "events"]
    assert re.findall(r"database (\w+) on ", result.stderr) == ["primary", "analytics"]


@pytest.fixture
def two_databases(pg: PostgresServer) -> Iterator[tuple[str, str]]:
    names = (f"ex_{uuid.uuid4().hex[:10]}", f"ex_{uuid.uuid4().hex[:10]}")
    for name in names:
        pg.psql(f"CREATE DATABASE {name} OWNER app", database="postgres")
    yield names
    for name in names:
        pg.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", database="postgres")


def _tables(pg: PostgresServer, database: str) -> list[str]:
    rows = pg.psql("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1", database=database)
    return [row[0] for row in rows]


@pytest.mark.postgres
@pytest.mark.replica
def test_the_example_on_postgresql_upgrades_autogenerates_nothing_more_and_downgrades(
    example: Path, pg: PostgresServer, pg_replica: ReplicaServer, two_databases: tuple[str, str]
) -> None:
    primary, analytics = two_databases
    env = _environ(
        PRIMARY_URL=pg.url_string("postgresql+asyncpg", database=primary),
        ANALYTICS_URL=pg.url_string(database=analytics),
        # A hot standby refuses writes: migrating it would fail the command.
        PRIMARY_REPLICA_URL=pg_replica.url_string(database=primary),
    )

    _alembic(example, env, "upgrade", "head")
    assert _tables(pg, primary) == ["alembic_version", "teams", "users"]
    assert _tables(pg, analytics) == ["alembic_version", "events"]

    # Autogenerate compares each database with its own MetaData: the models match revision 0001.
    _alembic(example, env, "revision", "--autogenerate", "-m", "nothing new", "--rev-id", "0002")
    bodies = _function_bodies(example / "migrations" / "versions" / "0002_nothing_new.py")
    assert sorted(bodies) == ["downgrade_analytics", "downgrade_primary", "upgrade_analytics", "upgrade_primary"]
    assert all("op." not in body for body in bodies.values()), bodies

    _alembic(example, env, "downgrade", "base")
    assert _tables(pg, primary) == ["alembic_version"]
    assert _tables(pg, analytics) == ["alembic_version"]
