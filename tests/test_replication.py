"""`_replication.REPLICA_STATE_SQL`: one answer for health and routing, on a real primary and streaming replica."""

from __future__ import annotations

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
