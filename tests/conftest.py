from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from servers import (
    PgBouncer,
    PostgresServer,
    ReplicaServer,
    pgbouncer_available,
    postgres_binaries_available,
)


@pytest.fixture(autouse=True)
def _no_causal_token() -> Iterator[None]:
    """Each test starts with no read-your-writes token: a write in one test must not route the reads of the next."""
    from dbregistry._causal import CURRENT  # noqa: PLC0415

    reset = CURRENT.set(None)
    yield
    CURRENT.reset(reset)


def _require(reason: str | None) -> None:
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI needs the real servers: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresServer]:
    _require(postgres_binaries_available())
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def pg_replica(pg: PostgresServer) -> Iterator[ReplicaServer]:
    with pg.start_replica() as replica:
        yield replica


@pytest.fixture(scope="session")
def pgbouncer(pg: PostgresServer) -> Iterator[PgBouncer]:
    _require(pgbouncer_available())
    with PgBouncer(pg, default_pool_size=3) as bouncer:
        yield bouncer
