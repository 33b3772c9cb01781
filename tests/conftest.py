from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

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


# A primary and its replica in a YAML file, for the tests of how sources layer over a file.
SOURCES_BASE = """\
default: primary
databases:
  primary:
    url: postgresql://app:yaml-pw@db.internal/app
    pool_size: 5
  replica:
    url: postgresql://app:yaml-pw@replica.internal/app
    replica_of: primary
"""


@pytest.fixture
def base_file(tmp_path: Path) -> Path:
    path = tmp_path / "databases.yaml"
    path.write_text(SOURCES_BASE)
    return path
