"""The suite's real servers work with the real drivers."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from servers import PASSWORD, PgBouncer, PostgresServer, ReplicaServer
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool


def _table_name() -> str:
    return f"servers_{uuid.uuid4().hex[:12]}"


@pytest.mark.postgres
def test_psycopg_select_one(pg: PostgresServer) -> None:
    engine = create_engine(pg.url("postgresql+psycopg"))
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
            assert conn.execute(text("SELECT current_user")).scalar_one() == "app"
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_asyncpg_select_one(pg: PostgresServer) -> None:
    async def select_one() -> int:
        engine = create_async_engine(pg.url("postgresql+asyncpg"))
        try:
            async with engine.connect() as conn:
                value: int = (await conn.execute(text("SELECT 1"))).scalar_one()
                return value
        finally:
            await engine.dispose()

    assert asyncio.run(select_one()) == 1


@pytest.mark.postgres
def test_url_string_round_trips_the_awkward_password(pg: PostgresServer) -> None:
    url = pg.url_string("postgresql+psycopg")
    assert PASSWORD not in url
    assert make_url(url).password == PASSWORD
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_psql_and_connection_count(pg: PostgresServer) -> None:
    assert pg.psql("SELECT 1, 'a b'; SELECT 2, ''") == [("1", "a b"), ("2", "")]
    assert pg.psql("SELECT 1 WHERE false") == []
    before = pg.wait_for_connections(0)
    engine = create_engine(pg.url("postgresql+psycopg"), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            assert pg.connections() == before + 1
    finally:
        engine.dispose()
    assert pg.wait_for_connections(before) == before


@pytest.mark.replica
def test_replica_sees_primary_write(pg: PostgresServer, pg_replica: ReplicaServer) -> None:
    table = _table_name()
    primary = create_engine(pg.url("postgresql+psycopg"))
    replica = create_engine(pg_replica.url("postgresql+psycopg"))
    try:
        with primary.begin() as conn:
            conn.execute(text(f"CREATE TABLE {table} (id int PRIMARY KEY, name text)"))
            conn.execute(text(f"INSERT INTO {table} VALUES (1, 'written on the primary')"))
        pg_replica.wait_for_replay()
        with replica.connect() as conn:
            assert conn.execute(text("SELECT pg_is_in_recovery()")).scalar_one() is True
            name = conn.execute(text(f"SELECT name FROM {table} WHERE id = 1")).scalar_one()
            assert name == "written on the primary"
    finally:
        primary.dispose()
        replica.dispose()


@pytest.mark.replica
def test_replica_refuses_writes(pg: PostgresServer, pg_replica: ReplicaServer) -> None:
    table = _table_name()
    pg.psql(f"CREATE TABLE {table} (id int)")
    pg_replica.wait_for_replay()
    engine = create_engine(pg_replica.url("postgresql+psycopg"))
    try:
        with pytest.raises(DBAPIError) as caught, engine.begin() as conn:
            conn.execute(text(f"INSERT INTO {table} VALUES (1)"))
        assert caught.value.orig is not None
        assert getattr(caught.value.orig, "sqlstate", None) == "25006"
    finally:
        engine.dispose()


@pytest.mark.replica
def test_replica_restarts_on_the_same_port(pg: PostgresServer, pg_replica: ReplicaServer) -> None:
    port = pg_replica.port
    pg_replica.stop()
    assert not pg_replica.running
    pg_replica.start()
    assert pg_replica.port == port
    table = _table_name()
    pg.psql(f"CREATE TABLE {table} (id int); INSERT INTO {table} VALUES (7)")
    pg_replica.wait_for_replay()
    assert pg_replica.psql(f"SELECT id FROM {table}") == [("7",)]


@pytest.mark.pgbouncer
def test_pgbouncer_select_one(pgbouncer: PgBouncer) -> None:
    engine = create_engine(
        pgbouncer.url("postgresql+psycopg"),
        poolclass=NullPool,
        connect_args={"prepare_threshold": None},
    )
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
            assert conn.execute(text("SELECT current_database()")).scalar_one() == "app"
    finally:
        engine.dispose()
    pools = {row["database"]: row for row in pgbouncer.show("POOLS")}
    assert pools["app"]["pool_mode"] == "transaction"
