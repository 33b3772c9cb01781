"""What a PostgreSQL server says about its replication, asked in one query.

`REPLICA_STATE_SQL` returns two columns: whether the server is in recovery (a
standby), and its replay lag in seconds:

* NULL on a primary: it replays nothing, so it has no replay lag. Reporting 0
  would claim "a caught-up replica" for a server that is not one (a promoted
  replica, a replica URL pointing at the primary); health shows it as None and
  routing counts it as no lag, the same as any unknown lag.
* 0 when the standby streams from its primary (a WAL receiver runs) and has
  replayed everything it received: an idle primary sends nothing, and
  ``now() - pg_last_xact_replay_timestamp()`` would keep growing without any lag.
* else the age of the last replayed transaction. This includes a standby cut off
  from its primary (no WAL receiver: the primary is down or unreachable, or
  ``primary_conninfo`` is gone): it has replayed all it received, but that says
  nothing about what it missed, so it ages and ``replica_max_lag_seconds`` applies.
  Any role may ask: ``pg_stat_wal_receiver`` hides its details, not the receiver's pid.

`_health` (``replay_lag_s``) and `_routing` (``replica_max_lag_seconds``) both use it.
"""

from __future__ import annotations

from typing import Final

__all__ = ["REPLICA_STATE_SQL"]

REPLICA_STATE_SQL: Final = (
    "SELECT pg_is_in_recovery(), "
    "CASE WHEN NOT pg_is_in_recovery() THEN NULL "
    "WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() "
    "AND EXISTS (SELECT FROM pg_stat_wal_receiver WHERE pid IS NOT NULL) THEN 0 "
    "ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) END"
)
