"""`_pools.sqlalchemy_defaults`: SQLAlchemy's defaults, asked of SQLAlchemy (what `dbregistry show` prints as default)."""

from __future__ import annotations

import sqlalchemy
from sqlalchemy.pool import QueuePool

from dbregistry._pools import QUEUE_OPTIONS, sqlalchemy_defaults


def test_the_defaults_are_those_of_a_queue_pool_sqlalchemy_builds() -> None:
    engine = sqlalchemy.create_engine("sqlite://", poolclass=QueuePool)
    try:
        pool = engine.pool
        assert isinstance(pool, QueuePool)
        defaults = sqlalchemy_defaults()
        assert defaults["pool_size"] == pool.size()
        assert defaults["pool_timeout"] == pool.timeout()
        # SQLAlchemy 2.x documents these for create_engine(); they are not readable off a pool publicly.
        assert (defaults["max_overflow"], defaults["pool_recycle"], defaults["pool_pre_ping"]) == (10, -1, False)
        assert defaults["pool_reset_on_return"] == "rollback"
    finally:
        engine.dispose()


def test_every_queue_option_has_a_default() -> None:
    assert set(sqlalchemy_defaults()) >= QUEUE_OPTIONS


def test_each_call_gives_fresh_mappings() -> None:
    sqlalchemy_defaults()["connect_args"]["x"] = 1
    assert sqlalchemy_defaults()["connect_args"] == {}
