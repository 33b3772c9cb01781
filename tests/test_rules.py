"""The checks that need more than one field (`dbregistry._rules`): each rule's exact message, at load.

Each is something SQLAlchemy or the driver would refuse late (at the first
``create_engine`` or connection) or never (an in-memory database per connection).
The pool-option rule is in test_pools.py; connection settings in test_connect_args.py.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest

from dbregistry import ConfigError, Registry

PG = "postgresql://app@db.internal/app"


def refusal(**databases: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        Registry.from_dict({"databases": databases}, environ={})
    return [str(problem) for problem in info.value.problems]


def accepted(**databases: dict[str, Any]) -> Registry:
    return Registry.from_dict({"databases": databases}, environ={})


class TestSingleConnectionPoolsAreForSqlite:
    @pytest.mark.parametrize("declared", ["StaticPool", "SingletonThreadPool"])
    def test_on_a_server_database(self, declared: str) -> None:
        assert refusal(a={"url": PG, "pool_class": declared}) == [
            f"from_dict  databases.a.pool_class: {declared} is for SQLite only: it shares connections between "
            "threads, which a postgresql server connection does not allow; use QueuePool, or NullPool behind an "
            "external pooler"
        ]

    def test_on_sqlite_they_are_fine(self) -> None:
        accepted(a={"url": "sqlite://", "pool_class": "StaticPool"}).close()


class TestMemorySqliteNeedsOneSharedConnection:
    @pytest.mark.parametrize("declared", ["QueuePool", "AsyncAdaptedQueuePool", "NullPool"])
    @pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
    def test_a_pool_of_many_connections(self, declared: str, url: str) -> None:
        assert refusal(a={"url": url, "pool_class": declared}) == [
            f"from_dict  databases.a.pool_class: {declared} gives each connection its own empty in-memory "
            "database; use pool_class: StaticPool (one shared connection) or a file database"
        ]

    def test_a_file_database_may_have_a_queue(self, tmp_path: Path) -> None:
        accepted(a={"url": f"sqlite:///{tmp_path / 'a.db'}", "pool_class": "QueuePool"}).close()


class TestIsolationLevelFitsTheDialect:
    @pytest.mark.parametrize("level", ["READ COMMITTED", "REPEATABLE READ"])
    def test_sqlite_names_the_levels_it_has(self, level: str) -> None:
        assert refusal(a={"url": "sqlite://", "isolation_level": level}) == [
            f"from_dict  databases.a.isolation_level: sqlite supports AUTOCOMMIT, READ UNCOMMITTED, SERIALIZABLE, "
            f"not {level}"
        ]

    def test_postgresql_takes_every_level(self) -> None:
        for level in ("AUTOCOMMIT", "READ COMMITTED", "READ UNCOMMITTED", "REPEATABLE READ", "SERIALIZABLE"):
            accepted(a={"url": PG, "isolation_level": level}).close()


class TestReplicaOfNamesAnotherDatabase:
    def test_itself(self) -> None:
        assert refusal(a={"url": PG, "replica_of": "a"}) == [
            "from_dict  databases.a.replica_of: a database cannot be a replica of itself"
        ]

    def test_an_unknown_name_suggests_the_closest(self) -> None:
        assert refusal(primary={"url": PG}, replica={"url": PG, "replica_of": "primry"}) == [
            "from_dict  databases.replica.replica_of: 'primry' is not a declared database; did you mean 'primary'? "
            "declared: primary, replica"
        ]

    def test_a_cycle_is_named_from_each_member(self) -> None:
        assert refusal(
            a={"url": PG, "replica_of": "b"}, b={"url": PG, "replica_of": "c"}, c={"url": PG, "replica_of": "a"}
        ) == [
            "from_dict  databases.a.replica_of: replica_of forms a cycle: a -> b -> c -> a",
            "from_dict  databases.b.replica_of: replica_of forms a cycle: b -> c -> a -> b",
            "from_dict  databases.c.replica_of: replica_of forms a cycle: c -> a -> b -> c",
        ]

    def test_a_chain_without_a_cycle_is_fine(self) -> None:
        urls = {name: f"postgresql://app@{name}.internal/app" for name in ("p", "r1", "r2")}
        with accepted(
            p={"url": urls["p"]}, r1={"url": urls["r1"], "replica_of": "p"}, r2={"url": urls["r2"], "replica_of": "r1"}
        ) as r:
            assert r["r2"].replica_of == "r1"


class TestSettingsThatWorkBehindATransactionPooler:
    def test_a_postgresql_pooler_on_another_dialect(self) -> None:
        assert refusal(a={"url": "sqlite://", "pooler": "pgbouncer-transaction"}) == [
            "from_dict  databases.a.pooler: pgbouncer-transaction is a PostgreSQL pooler; this URL is sqlite"
        ]

    def test_a_driver_setting_that_breaks_behind_it(self) -> None:
        assert refusal(
            a={
                "url": PG,
                "pooler": "pgbouncer-transaction",
                "driver_args": {"asyncpg": {"statement_cache_size": 100}},
            }
        ) == [
            "from_dict  databases.a.driver_args.asyncpg: statement_cache_size: asyncpg's statement cache breaks "
            "behind a transaction-mode pooler; remove it (the registry sets what pgbouncer-transaction needs)"
        ]

    def test_session_mode_allows_it(self) -> None:
        database = {"url": PG, "pooler": "pgbouncer-session", "driver_args": {"asyncpg": {"statement_cache_size": 9}}}
        accepted(a=database).close()


class TestCertificateFilesExist:
    def test_a_missing_file_is_named(self, tmp_path: Path) -> None:
        missing = tmp_path / "ca.pem"
        problems = refusal(a={"url": f"{PG}?sslmode=verify-full&sslrootcert={missing}"})
        assert problems == [f"from_dict  databases.a.url: the sslrootcert file {missing} does not exist"]

    def test_a_file_that_exists_is_fine(self) -> None:
        bundle = ssl.get_default_verify_paths().openssl_cafile  # the system's CA bundle: a real certificate file
        accepted(a={"url": f"{PG}?sslmode=verify-full&sslrootcert={bundle}"}).close()


def test_every_rule_s_finding_is_reported_at_once_by_field_path() -> None:
    problems = refusal(
        b={"url": "sqlite://", "pool_class": "NullPool", "isolation_level": "READ COMMITTED"},
        a={"url": PG, "pool_class": "StaticPool", "replica_of": "a"},
    )
    assert [p.split(":")[0] for p in problems] == [  # no lines in a mapping: ordered by path
        "from_dict  databases.a.pool_class",
        "from_dict  databases.a.replica_of",
        "from_dict  databases.b.isolation_level",
        "from_dict  databases.b.pool_class",
    ]


class TestDriversExist:
    @pytest.mark.parametrize(
        ("url", "message"),
        [
            (
                "sqlite+pysqlit:///app.db",
                "sqlite has no driver 'pysqlit'; did you mean 'pysqlite'? drivers: aiosqlite, pysqlcipher, pysqlite",
            ),
            (
                "postgresql+nosuch://app@db/app",
                "postgresql has no driver 'nosuch'; drivers: asyncpg, pg8000, psycopg, psycopg2, psycopg2cffi",
            ),
        ],
    )
    def test_a_driver_no_mode_has_is_refused_at_load(self, url: str, message: str) -> None:
        with pytest.raises(ConfigError) as info:
            Registry.from_dict({"databases": {"a": {"url": url}}}, environ={})
        assert [str(p) for p in info.value.problems] == [f"from_dict  databases.a.url: {message}"]

    def test_a_third_party_dialect_is_left_to_sqlalchemy(self) -> None:
        Registry.from_dict({"databases": {"a": {"url": "snowflake://app@account/db"}}}, environ={})
