"""`_replication.REPLICA_STATE_SQL`: one answer for health and routing, on a real primary and streaming replica."""

from __future__ import annotations

import time

import pytest
from servers import PostgresServer, ReplicaServer

from dbregistry import Registry
from dbregistry._replication import REPLICA_STATE_SQL

pytestmark = [pytest.mark.postgres, pytest.mark.replica]


def registry_of(pg: PostgresServer, replica_url: str) -> Registry:
    # A day: right after WAL arrives on an idle replica, the lag reads as the age of the last
    # replayed transaction until it is replayed; this test is about who measures, not how much.
    return Registry.from_dict(
        {
            "databases": {
                "primary": {"url": pg.url_string(), "pool_size": 1},
                "replica": {"url": replica_url, "replica_of": "primary", "replica_max_lag_seconds": 86400},
            }
        },
        environ={},
    )


def test_a_primary_has_no_replay_lag(pg: PostgresServer) -> None:
    # A "replica" that is not in recovery: another database of the primary server.
    registry = registry_of(pg, pg.url_string(database="postgres"))
    try:
        with registry.get("primary").connect() as conn:
            assert tuple(conn.exec_driver_sql(REPLICA_STATE_SQL).one()) == (False, None)
        report = registry.health(timeout=10)["replica"]
        assert (report.status, report.in_recovery, report.replay_lag_s) == ("up", False, None)
        status = registry.check_replicas()["replica"]
        assert (status.up, status.lag_seconds) == (True, None)
    finally:
        registry.close()


def test_health_and_routing_read_the_same_lag_on_a_replica(pg: PostgresServer, pg_replica: ReplicaServer) -> None:
    pg_replica.wait_for_replay()
    registry = registry_of(pg, pg_replica.url_string())
    try:
        report = registry.health(timeout=10)["replica"]
        status = registry.check_replicas()["replica"]
        assert report.in_recovery is True
        assert report.replay_lag_s is not None
        assert status.lag_seconds is not None
        assert status.up
    finally:
        registry.close()


def _lag(registry: Registry) -> float | None:
    with registry.get("replica").connect() as conn:
        lag = conn.exec_driver_sql(REPLICA_STATE_SQL).one()[1]
    return None if lag is None else float(lag)


def test_a_replica_cut_off_from_its_primary_keeps_aging() -> None:
    # Its own pair: the replica's WAL receiver is stopped (primary_conninfo emptied), which is what a
    # primary that is down or unreachable looks like from the replica. It has replayed all it
    # received, but it no longer receives: "0 s behind" would keep it serving stale reads forever.
    with PostgresServer() as primary, primary.start_replica() as replica:
        primary.psql("CREATE TABLE marker (x int); INSERT INTO marker VALUES (1)")
        replica.wait_for_replay()
        registry = registry_of(primary, replica.url_string())  # connects as the unprivileged app role
        try:
            assert _lag(registry) == 0  # streaming and caught up on an idle primary
            replica.psql("ALTER SYSTEM SET primary_conninfo = ''; SELECT pg_reload_conf()")
            deadline = time.monotonic() + 30
            while replica.psql("SELECT count(*) FROM pg_stat_wal_receiver") != [("0",)]:
                assert time.monotonic() < deadline, replica.log_tail()
                time.sleep(0.05)
            first = _lag(registry)
            assert first is not None
            assert first > 0
            time.sleep(0.2)
            second = _lag(registry)
            assert second is not None
            assert second > first
            report = registry.health(timeout=10)["replica"]
            assert report.replay_lag_s is not None
            assert report.replay_lag_s > first
            status = registry.check_replicas()["replica"]
            assert status.lag_seconds is not None
            assert status.lag_seconds > first
        finally:
            registry.close()
