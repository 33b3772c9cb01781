"""The connection budget: per pool class, per server, against declared or live limits."""

from __future__ import annotations

import math
import threading
from typing import Any

import pytest
from servers import PostgresServer, frozen, within

from dbregistry import Registry
from dbregistry._budget import ServerLimit, plan, read_limits, server_of
from dbregistry._schema import RegistryConfig


def config(**databases: dict[str, Any]) -> RegistryConfig:
    return Registry.from_dict({"databases": databases}, environ={}).config


def test_pool_classes() -> None:
    budget = plan(
        config(
            queue={"url": "postgresql://app@db/a", "pool_size": 4, "max_overflow": 6},
            defaults={"url": "postgresql://app@db/b"},
            null={"url": "postgresql://app@db/c", "pool_class": "NullPool"},
            file={"url": "sqlite:///x.db"},
        ),
        processes=3,
        threads=8,
    )
    (server,) = budget.servers
    assert server.server == "db:5432"
    assert [(db.name, db.pool_class, db.per_process, db.total) for db in server.databases] == [
        ("queue", "QueuePool", 10, 30),
        ("defaults", "QueuePool", 15, 45),  # SQLAlchemy's 5 + 10
        ("null", "NullPool", 8, 24),  # one per thread
    ]
    assert server.databases[0].formula == "(4 + 6) x 3"
    assert server.total == 99
    assert [(db.name, db.total) for db in budget.serverless] == [("file", 0)]
    assert server.limit is None
    assert server.status == "unknown"
    assert budget.ok  # nothing to compare with is not a failure


def test_static_pool_is_one_per_process() -> None:
    # The registry allows single-connection pools for SQLite only (which counts nothing); the
    # arithmetic is still SQLAlchemy's, as a declaration validated by the schema alone shows.
    declared = RegistryConfig.model_validate(
        {"databases": {"one": {"url": "postgresql://app@db/a", "pool_class": "StaticPool"}}}
    )
    budget = plan(declared, processes=4, threads=8)
    assert budget.servers[0].databases[0].per_process == 1
    assert budget.servers[0].total == 4
    sqlite = plan(config(one={"url": "sqlite://", "pool_class": "StaticPool"}), processes=4)
    assert sqlite.servers == ()
    assert sqlite.serverless[0].total == 0


def test_servers_are_host_and_port() -> None:
    budget = plan(
        config(
            a={"url": "postgresql://app@db/a"},
            b={"url": "postgresql://app@db:5432/b"},
            c={"url": "postgresql://app@db:6432/c"},
            d={"url": "mysql+pymysql://app@db/d"},
        ),
        processes=1,
    )
    assert [(s.server, [db.name for db in s.databases]) for s in budget.servers] == [
        ("db:5432", ["a", "b"]),
        ("db:6432", ["c"]),
        ("db:3306", ["d"]),
    ]


def test_over_budget_says_by_how_much() -> None:
    budget = plan(
        config(
            primary={"url": "postgresql://app@db/a", "pool_size": 10, "max_overflow": 10, "max_connections": 100},
            analytics={"url": "postgresql://app@db/b", "pool_class": "NullPool"},
        ),
        processes=5,
        threads=2,
    )
    (server,) = budget.servers
    assert server.total == 110
    assert server.limit == ServerLimit(100, 3, "declared on primary")
    assert server.available == 97
    assert server.over == 13
    assert server.status == "over"
    assert not budget.ok
    data = budget.as_dict()
    assert data["ok"] is False
    assert data["servers"][0]["over"] == 13


def test_fits() -> None:
    budget = plan(config(primary={"url": "postgresql://app@db/a", "max_connections": 100}), processes=6)
    assert budget.servers[0].total == 90
    assert budget.servers[0].over == 0
    assert budget.ok


def test_smallest_declared_limit_wins() -> None:
    budget = plan(
        config(
            a={"url": "postgresql://app@db/a", "max_connections": 300},
            b={"url": "postgresql://app@db/b", "max_connections": 100},
        ),
        processes=1,
    )
    assert budget.servers[0].limit == ServerLimit(100, 3, "declared on b")


@pytest.mark.parametrize("option", [{"max_overflow": -1}, {"pool_size": 0}])
def test_no_upper_bound(option: dict[str, int]) -> None:
    budget = plan(config(a={"url": "postgresql://app@db/a", "max_connections": 100, **option}), processes=2)
    assert budget.servers[0].total is None
    assert budget.servers[0].status == "unbounded"
    assert not budget.ok


def test_live_beats_declared() -> None:
    budget = plan(
        config(a={"url": "postgresql://app@db/a", "max_connections": 10}),
        processes=1,
        live={"db:5432": ServerLimit(500, 3, "live")},
    )
    assert budget.servers[0].limit == ServerLimit(500, 3, "live")


def test_processes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        plan(config(a={"url": "sqlite://"}), processes=0)


def test_server_of() -> None:
    registry = Registry.from_dict({"databases": {"a": {"url": "postgresql://app@/a"}}}, environ={})
    assert server_of(registry["a"].url) == "localhost:5432"


@pytest.mark.postgres
def test_live_limits_from_postgres(pg: PostgresServer) -> None:
    registry = Registry.from_dict(
        {
            "databases": {
                "primary": {"url": pg.url_string(), "max_connections": 10},
                "other": {"url": pg.url_string(database="postgres"), "pool_class": "NullPool"},
                "gone": {"url": "postgresql://app:x@127.0.0.1:9/app"},
                "file": {"url": "sqlite:///x.db"},
            }
        },
        environ={},
    )
    limits = read_limits(registry, timeout=2.0)
    registry.close()
    assert limits[f"127.0.0.1:{pg.port}"] == ServerLimit(200, 3, "live, through primary")
    assert isinstance(limits["127.0.0.1:9"], str)
    assert limits["127.0.0.1:9"].startswith("could not read the limits through gone: OperationalError")
    budget = plan(registry.config, processes=10, threads=4, live=limits)
    ours = budget.servers[0]
    assert ours.total == 15 * 10 + 4 * 10
    assert ours.over == 0
    assert budget.servers[1].limit is None
    assert budget.servers[1].limit_error == limits["127.0.0.1:9"]
    pg.wait_for_connections(0)


@pytest.mark.postgres
def test_live_limits_from_a_server_that_froze_after_accepting(pg: PostgresServer) -> None:
    # Before: the query on the connection waited for the frozen backend forever.
    registry = Registry.from_dict(
        {
            "databases": {
                "primary": {"url": pg.url_string("postgresql+psycopg"), "pool_size": 1},
                "other": {"url": pg.url_string(database="postgres"), "pool_class": "NullPool"},
            }
        },
        environ={},
    )
    with registry.get("primary").connect() as conn:
        pid = conn.exec_driver_sql("select pg_backend_pid()").scalar_one()  # pooled: read_limits reuses it
    try:
        with frozen(pid):
            limits = within(30, lambda: read_limits(registry, timeout=1))
        assert limits == {f"127.0.0.1:{pg.port}": "could not read the limits through primary: no answer within 1 s"}
    finally:
        # The reader left behind ends once the backend answers again; its connection goes back to the pool.
        for thread in threading.enumerate():
            if thread.name == "dbregistry-budget-primary":
                thread.join(30)
        registry.close(timeout=2)


def test_live_timeout_is_checked() -> None:
    registry = Registry.from_dict({"databases": {"a": {"url": "sqlite://"}}}, environ={})
    with pytest.raises(ValueError, match="timeout must be a finite number of seconds, got inf"):
        read_limits(registry, timeout=math.inf)
