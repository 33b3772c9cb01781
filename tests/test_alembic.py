"""dbregistry.alembic with real Alembic in subprocesses, against the suite's PostgreSQL, replica, PgBouncer and SQLite.

Each test builds a project with ``dbregistry alembic init``, writes revisions in
Alembic's ``multidb`` layout and runs ``python -m alembic`` as users do.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote_plus

import pytest
import yaml
from servers import HOST, PASSWORD, PgBouncer, PostgresServer, ReplicaServer

from dbregistry._migrate import lock_key

pytestmark = pytest.mark.postgres

RUN_TIMEOUT = 180

# Two revisions for three databases: "primary" and "analytics" on PostgreSQL, "local" on SQLite.
REVISION_1 = '''
"""first"""
from alembic import op
import sqlalchemy as sa

revision = "r1"
down_revision = None
branch_labels = None
depends_on = None


def upgrade(engine_name):
    globals()[f"upgrade_{engine_name}"]()


def downgrade(engine_name):
    globals()[f"downgrade_{engine_name}"]()


def upgrade_primary():
    op.create_table("users", sa.Column("id", sa.Integer, primary_key=True))


def downgrade_primary():
    op.drop_table("users")


def upgrade_analytics():
    op.create_table("events", sa.Column("id", sa.Integer, primary_key=True))


def downgrade_analytics():
    op.drop_table("events")


def upgrade_local():
    op.create_table("notes", sa.Column("id", sa.Integer, primary_key=True))


def downgrade_local():
    op.drop_table("notes")
'''

REVISION_2 = '''
"""second"""
from alembic import op
import sqlalchemy as sa

revision = "r2"
down_revision = "r1"
branch_labels = None
depends_on = None


def upgrade(engine_name):
    globals()[f"upgrade_{engine_name}"]()


def downgrade(engine_name):
    globals()[f"downgrade_{engine_name}"]()


def upgrade_primary():
    op.create_table("orders", sa.Column("id", sa.Integer, primary_key=True))


def downgrade_primary():
    op.drop_table("orders")


def upgrade_analytics():
    op.create_table("sessions", sa.Column("id", sa.Integer, primary_key=True))


def downgrade_analytics():
    op.drop_table("sessions")


def upgrade_local():
    op.create_table("tags", sa.Column("id", sa.Integer, primary_key=True))


def downgrade_local():
    op.drop_table("tags")
'''

# One revision for one database, run by two processes at once: it sleeps inside the lock,
# counts its runs, and builds an index CONCURRENTLY (the deadlock trap of a blocked waiter).
SLOW_REVISION = '''
"""slow"""
from alembic import op
import sqlalchemy as sa

revision = "slow1"
down_revision = None
branch_labels = None
depends_on = None


def upgrade(engine_name):
    globals()[f"upgrade_{engine_name}"]()


def downgrade(engine_name):
    globals()[f"downgrade_{engine_name}"]()


def upgrade_primary():
    op.create_table("runs", sa.Column("id", sa.Integer, primary_key=True), sa.Column("who", sa.Text))
    op.execute("INSERT INTO runs (who) SELECT session_user")
    op.execute("SELECT pg_sleep(4)")
    with op.get_context().autocommit_block():
        op.execute("CREATE INDEX CONCURRENTLY runs_who ON runs (who)")


def downgrade_primary():
    op.drop_table("runs")
'''


# -- helpers ------------------------------------------------------------------------------


def _env(config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBREGISTRY_", "DATABASE_URL"))}
    env["DBREGISTRY_CONFIG"] = str(config)
    env.pop("APP_ENV", None)
    return env


def _run(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=project,
        env=_env(project / "databases.yaml"),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    for secret in (PASSWORD, quote_plus(PASSWORD), "pg-S3cret"):
        assert secret not in result.stdout + result.stderr
    return result


def _ok(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = _run(project, *args)
    assert result.returncode == 0, result.stderr
    return result


def _project(tmp_path: Path, databases: Mapping[str, Mapping[str, str]], revisions: Mapping[str, str]) -> Path:
    init = subprocess.run(
        [sys.executable, "-m", "dbregistry", "alembic", "init", "migrations"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert init.returncode == 0, init.stderr
    (tmp_path / "databases.yaml").write_text(
        yaml.safe_dump({"databases": {k: dict(v) for k, v in databases.items()}}, sort_keys=False)
    )
    for name, text in revisions.items():
        (tmp_path / "migrations" / "versions" / f"{name}.py").write_text(text)
    return tmp_path


@pytest.fixture
def new_database(pg: PostgresServer) -> Iterator[Callable[[], str]]:
    created: list[str] = []

    def create() -> str:
        name = f"mig_{uuid.uuid4().hex[:10]}"
        pg.psql(f"CREATE DATABASE {name} OWNER app", database="postgres")
        created.append(name)
        return name

    yield create
    for name in created:
        pg.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", database="postgres")


def _tables(pg: PostgresServer, database: str) -> list[str]:
    return [
        row[0]
        for row in pg.psql("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1", database=database)
    ]


def _version(pg: PostgresServer, database: str) -> list[str]:
    return [row[0] for row in pg.psql("SELECT version_num FROM alembic_version", database=database)]


def _sqlite_tables(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY 1")]


@dataclass
class Three:
    project: Path
    primary: str
    analytics: str
    sqlite: Path


@pytest.fixture
def three(tmp_path: Path, pg: PostgresServer, pg_replica: ReplicaServer, new_database: Callable[[], str]) -> Three:
    """primary and analytics on PostgreSQL, local on SQLite, and primary's streaming replica."""
    primary, analytics = new_database(), new_database()
    project = _project(
        tmp_path,
        {
            "primary": {"url": pg.url_string("postgresql+psycopg", database=primary)},
            "analytics": {"url": pg.url_string("postgresql+psycopg", database=analytics)},
            "local": {"url": f"sqlite:///{tmp_path / 'local.db'}"},
            # A hot standby refuses every write: migrating it would fail the command.
            "replica": {"url": pg_replica.url_string("postgresql+psycopg", database=primary), "replica_of": "primary"},
        },
        {"r1": REVISION_1, "r2": REVISION_2},
    )
    return Three(project, primary, analytics, tmp_path / "local.db")


# -- every database, each with its own version table ----------------------------------------


def test_upgrade_head_migrates_every_database_but_the_replica(three: Three, pg: PostgresServer) -> None:
    project, primary, analytics, local = three.project, three.primary, three.analytics, three.sqlite
    result = _ok(project, "upgrade", "head")

    assert _tables(pg, primary) == ["alembic_version", "orders", "users"]
    assert _tables(pg, analytics) == ["alembic_version", "events", "sessions"]
    assert _sqlite_tables(local) == ["alembic_version", "notes", "tags"]
    assert _version(pg, primary) == ["r2"]
    assert _version(pg, analytics) == ["r2"]
    assert "INFO  [dbregistry.alembic] skipping replica: a replica (of primary) is never migrated" in result.stderr
    # Declaration order, one after the other.
    order = re.findall(r"database (\w+) on ", result.stderr)
    assert order == ["primary", "analytics", "local"]


def test_downgrade_and_current_per_database(three: Three, pg: PostgresServer) -> None:
    project, primary, analytics = three.project, three.primary, three.analytics
    _ok(project, "upgrade", "head")

    _ok(project, "-x", "db=analytics", "downgrade", "-1")

    assert _tables(pg, analytics) == ["alembic_version", "events"]
    assert _tables(pg, primary) == ["alembic_version", "orders", "users"]
    assert _ok(project, "-x", "db=analytics", "current").stdout.split() == ["r1"]
    assert _ok(project, "-x", "db=primary", "current").stdout.split() == ["r2", "(head)"]
    assert _ok(project, "-x", "db=local,analytics", "current").stdout.splitlines() == ["r1", "r2 (head)"]


def test_x_db_selects_the_databases(three: Three, pg: PostgresServer) -> None:
    project, primary, analytics, local = three.project, three.primary, three.analytics, three.sqlite

    _ok(project, "-x", "db=local, analytics", "upgrade", "r1")

    assert _tables(pg, primary) == []
    assert _tables(pg, analytics) == ["alembic_version", "events"]
    assert _sqlite_tables(local) == ["alembic_version", "notes"]


def test_naming_a_replica_or_an_unknown_database_is_refused(three: Three, pg: PostgresServer) -> None:
    project = three.project

    replica = _run(project, "-x", "db=primary,replica", "upgrade", "head")
    unknown = _run(project, "-x", "db=analytcs", "upgrade", "head")

    assert replica.returncode != 0
    assert (
        "FAILED: 1 problem in alembic -x db=primary,replica\n"
        "  db: 'replica' is a replica of 'primary' and is never migrated; select 'primary'\n"
    ) in replica.stdout
    assert unknown.returncode != 0
    assert (
        "FAILED: 1 problem in alembic -x db=analytcs\n"
        "  db: unknown database 'analytcs'; did you mean 'analytics'? declared: primary, analytics, local, replica\n"
    ) in unknown.stdout
    assert _tables(pg, three.primary) == []


def test_revision_gets_a_function_pair_per_database_and_connects_to_nothing(tmp_path: Path) -> None:
    with _listener() as (port, listener):
        project = _project(
            tmp_path,
            {
                "primary": {"url": f"postgresql://app:{quote_plus(PASSWORD)}@{HOST}:{port}/app"},
                "local": {"url": f"sqlite:///{tmp_path / 'never.db'}"},
            },
            {},
        )
        _ok(project, "revision", "-m", "add things", "--rev-id", "abc")
        _assert_never_connected(listener)

    text = (project / "migrations" / "versions" / "abc_add_things.py").read_text()
    defined = re.findall(r"^def (\w+)\(", text, re.M)
    assert defined == [
        "upgrade",
        "downgrade",
        "_nothing",
        "upgrade_primary",
        "downgrade_primary",
        "upgrade_local",
        "downgrade_local",
    ]
    assert not (tmp_path / "never.db").exists()


# -- one migrator at a time -----------------------------------------------------------------


def test_two_processes_at_once_migrate_once_and_the_second_waits(
    tmp_path: Path, pg: PostgresServer, new_database: Callable[[], str]
) -> None:
    database = new_database()
    project = _project(tmp_path, {"primary": {"url": pg.url_string(database=database)}}, {"slow1": SLOW_REVISION})
    env = _env(project / "databases.yaml")
    command = [sys.executable, "-m", "alembic", "upgrade", "head"]
    procs = [
        subprocess.Popen(command, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=RUN_TIMEOUT) for proc in procs]

    assert [proc.returncode for proc in procs] == [0, 0], [err for _, err in outputs]
    assert pg.psql("SELECT count(*) FROM runs", database=database) == [("1",)]
    assert _version(pg, database) == ["slow1"]
    assert pg.psql(
        "SELECT indexname FROM pg_indexes WHERE tablename = 'runs' AND indexname = 'runs_who'", database=database
    ) == [("runs_who",)]
    ran = [err for _, err in outputs if "Running upgrade  -> slow1" in err]
    waited = [err for _, err in outputs if "waiting for another migrator" in err]
    assert len(ran) == 1
    assert len(waited) == 1
    assert waited[0] is not ran[0]
    assert (
        f"primary: waiting for another migrator (PostgreSQL advisory lock {lock_key('primary')}), up to 300 s"
        in waited[0]
    )
    assert "primary: got the migration lock after" in waited[0]


def test_the_wait_for_the_lock_is_bounded_by_x_lock_timeout(
    tmp_path: Path, pg: PostgresServer, new_database: Callable[[], str]
) -> None:
    import psycopg  # noqa: PLC0415

    database = new_database()
    project = _project(tmp_path, {"primary": {"url": pg.url_string(database=database)}}, {"r1": REVISION_1})
    with psycopg.connect(pg.url_string(database=database), autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (lock_key("primary"),))
        result = _run(project, "-x", "lock_timeout=1.5", "upgrade", "head")
        # The query the README gives for finding the holder.
        holders = pg.psql(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 "
            f"AND ((classid::bigint << 32) | objid::bigint) = {lock_key('primary')}",
            database=database,
        )
        assert holders == [(str(holder.info.backend_pid),)]

    assert result.returncode != 0
    assert (
        f"FAILED: primary: another migrator held the migration lock (PostgreSQL advisory lock {lock_key('primary')}) "
        "for more than 1.5 s; raise -x lock_timeout=SECONDS or run_migrations(lock_timeout=...)"
    ) in result.stdout
    assert _tables(pg, database) == []


def test_sqlite_migrators_take_turns_on_a_lock_file(tmp_path: Path) -> None:
    import fcntl  # noqa: PLC0415

    project = _project(tmp_path, {"local": {"url": f"sqlite:///{tmp_path / 'local.db'}"}}, {"r1": REVISION_1})
    with open(tmp_path / "local.db.migration-lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        blocked = _run(project, "-x", "lock_timeout=1", "upgrade", "head")
    after = _ok(project, "upgrade", "head")

    assert blocked.returncode != 0
    assert (
        f"FAILED: local: another migrator held the migration lock (lock file {tmp_path / 'local.db.migration-lock'}) for more than 1 s"
        in blocked.stdout
    )
    assert "Running upgrade  -> r1" in after.stderr
    assert _sqlite_tables(tmp_path / "local.db") == ["alembic_version", "notes"]


# -- the right connection -------------------------------------------------------------------


def test_a_database_behind_pgbouncer_migrates_over_its_direct_url(
    tmp_path: Path, pg: PostgresServer, pgbouncer: PgBouncer, new_database: Callable[[], str]
) -> None:
    database = new_database()
    project = _project(
        tmp_path,
        {
            "primary": {
                "url": pgbouncer.url_string("postgresql+asyncpg", database=database),
                "pooler": "pgbouncer-transaction",
                "direct_url": pg.url_string(database=database),
            }
        },
        {"slow1": SLOW_REVISION.replace("pg_sleep(4)", "pg_sleep(0)")},
    )

    result = _ok(project, "upgrade", "head")

    # PgBouncer logs in to the server as its own role; the direct connection is app's.
    assert pg.psql("SELECT who FROM runs", database=database) == [("app",)]
    assert f"database primary on postgresql://app:***@{HOST}:{pg.port}/{database}" in result.stderr
    assert pg.psql("SELECT indexname FROM pg_indexes WHERE indexname = 'runs_who'", database=database) == [
        ("runs_who",)
    ]


def test_a_transaction_pooler_without_direct_url_is_refused(tmp_path: Path, pgbouncer: PgBouncer) -> None:
    project = _project(
        tmp_path,
        {"primary": {"url": pgbouncer.url_string(), "pooler": "pgbouncer-transaction"}},
        {"r1": REVISION_1},
    )

    result = _run(project, "upgrade", "head")

    assert result.returncode != 0
    assert (
        f"FAILED: 1 problem in {project / 'databases.yaml'}\n"
        f"  {project / 'databases.yaml'}:2  databases.primary.direct_url: not declared, and migrations never run "
        "through a transaction-mode pooler (pooler: pgbouncer-transaction); "
        "set direct_url to this database's URL without the pooler\n"
    ) in result.stdout


def test_two_names_on_one_database_are_refused(
    tmp_path: Path, pg: PostgresServer, new_database: Callable[[], str]
) -> None:
    database = new_database()
    project = _project(
        tmp_path,
        {
            "primary": {"url": pg.url_string("postgresql+psycopg", database=database)},
            "analytics": {"url": pg.url_string("postgresql+asyncpg", database=database)},
        },
        {"r1": REVISION_1},
    )

    shared = _run(project, "upgrade", "head")
    one = _run(project, "-x", "db=analytics", "upgrade", "head")

    assert shared.returncode != 0
    assert (
        f"FAILED: 1 problem in {project / 'databases.yaml'}\n"
        f"  {project / 'databases.yaml'}:4  databases.analytics: migrates the same database as 'primary' "
        f"(postgresql://app:***@{HOST}:{pg.port}/{database}), and the two would share one alembic_version table: "
        "point it at a database of its own, or migrate one of them (-x db=primary)\n"
    ) in shared.stdout
    assert one.returncode == 0, one.stderr
    assert _tables(pg, database) == ["alembic_version", "events"]


# -- offline --------------------------------------------------------------------------------


def test_sql_mode_writes_one_file_per_database_and_connects_to_nothing(tmp_path: Path) -> None:
    out = tmp_path / "build" / "sql"  # made when missing
    with _listener() as (port, listener):
        project = _project(
            tmp_path,
            {
                "primary": {"url": f"postgresql://app:{quote_plus(PASSWORD)}@{HOST}:{port}/app"},
                "analytics": {"url": f"postgresql+asyncpg://app:{quote_plus(PASSWORD)}@{HOST}:{port}/analytics"},
                "local": {"url": f"sqlite:///{tmp_path / 'local.db'}"},
            },
            {"r1": REVISION_1, "r2": REVISION_2},
        )
        result = _ok(project, "-x", f"sql_dir={out}", "-x", "db=primary,local", "upgrade", "head", "--sql")
        _assert_never_connected(listener)

    assert sorted(p.name for p in out.iterdir()) == ["local.sql", "primary.sql"]
    primary = (out / "primary.sql").read_text()
    local = (out / "local.sql").read_text()
    assert "CREATE TABLE users (" in primary
    assert "CREATE TABLE orders (" in primary
    assert "UPDATE alembic_version SET version_num='r2'" in primary
    assert "BEGIN;" in primary  # PostgreSQL's DDL is transactional
    assert "CREATE TABLE notes (" in local
    assert "CREATE TABLE tags (" in local
    assert "events" not in primary + local
    assert result.stdout == ""
    assert not (tmp_path / "local.db").exists()
    assert not (tmp_path / "local.db.migration-lock").exists()


@contextlib.contextmanager
def _listener() -> Iterator[tuple[int, socket.socket]]:
    """A port that accepts connections into its backlog and never answers: a connection attempt stays visible."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((HOST, 0))
        sock.listen(16)
        yield sock.getsockname()[1], sock
    finally:
        sock.close()


def _assert_never_connected(listener: socket.socket) -> None:
    listener.setblocking(False)
    with pytest.raises(BlockingIOError):
        listener.accept()


# -- the arguments --------------------------------------------------------------------------


def test_a_lock_timeout_that_is_not_seconds_is_refused(tmp_path: Path) -> None:
    project = _project(tmp_path, {"local": {"url": f"sqlite:///{tmp_path / 'local.db'}"}}, {"r1": REVISION_1})

    result = _run(project, "-x", "lock_timeout=soon", "upgrade", "head")

    assert result.returncode != 0
    assert (
        "FAILED: 1 problem in alembic -x lock_timeout\n  lock_timeout: expected a number of seconds above 0, got 'soon'\n"
    ) in result.stdout
    assert not (tmp_path / "local.db").exists()


def test_an_empty_x_db_is_refused(tmp_path: Path) -> None:
    project = _project(tmp_path, {"local": {"url": f"sqlite:///{tmp_path / 'local.db'}"}}, {"r1": REVISION_1})

    result = _run(project, "-x", "db=", "upgrade", "head")

    assert result.returncode != 0
    assert "FAILED: 1 problem in alembic -x db=\n  db: names no database; declared: local\n" in result.stdout


SINGLE_METADATA_ENV = """
from logging.config import fileConfig

from alembic import context
from sqlalchemy import MetaData

from dbregistry import Registry
from dbregistry.alembic import run_migrations

fileConfig(context.config.config_file_name, disable_existing_loggers=False)
with Registry.load() as registry:
    run_migrations(registry, MetaData())
"""


def test_a_single_metadata_belongs_to_the_default_database(tmp_path: Path) -> None:
    databases = {
        "local": {"url": f"sqlite:///{tmp_path / 'local.db'}"},
        "other": {"url": f"sqlite:///{tmp_path / 'other.db'}"},
    }
    project = _project(tmp_path, databases, {"r1": REVISION_1})
    (project / "migrations" / "env.py").write_text(SINGLE_METADATA_ENV)

    ambiguous = _run(project, "upgrade", "head")
    (project / "databases.yaml").write_text(
        yaml.safe_dump({"default": "local", "databases": databases}, sort_keys=False)
    )
    chosen = _ok(project, "upgrade", "head")

    assert ambiguous.returncode != 0
    assert (
        "FAILED: 1 problem in env.py\n"
        "  target_metadata: a single MetaData belongs to the default database or to the only one that is not "
        "a replica, and there are 2 (local, other) with no default: pass {name: MetaData}\n"
    ) in ambiguous.stdout
    assert re.findall(r"database (\w+) on ", chosen.stderr) == ["local"]
    assert _sqlite_tables(tmp_path / "local.db") == ["alembic_version", "notes"]
    assert not (tmp_path / "other.db").exists()
