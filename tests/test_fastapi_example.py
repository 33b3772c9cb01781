"""examples/fastapi_app.py driven by FastAPI's TestClient against the suite's real PostgreSQL and replica."""

from __future__ import annotations

import importlib.util
import socket
import sys
import warnings
from pathlib import Path
from types import ModuleType

import pytest
from servers import PASSWORD, PostgresServer, ReplicaServer

from dbregistry import Registry

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

with warnings.catch_warnings():
    # Starlette 1.x asks for httpx2 in place of httpx for its TestClient; the dev extra installs httpx,
    # which still works. The warning is raised once, at import.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient

pytestmark = [pytest.mark.postgres, pytest.mark.replica]

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fastapi_app.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fastapi_app_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_reads_on_the_replica_writes_on_the_primary_and_nothing_left_after_shutdown(
    pg: PostgresServer, pg_replica: ReplicaServer
) -> None:
    example = load_example()
    pg.psql("DROP TABLE IF EXISTS visits")
    registry = Registry.from_dict(
        {
            "default": "primary",
            "databases": {
                "primary": {"url": pg.url_string()},
                "replica": {"url": pg_replica.url_string(), "replica_of": "primary"},
            },
        },
        environ={},
    )
    example.create_tables(registry)
    pg_replica.wait_for_replay()

    with TestClient(example.create_app(registry)) as client:
        for note in ("first", "second"):
            response = client.post("/visits", params={"note": note})
            assert response.status_code == 201, response.text
        pg_replica.wait_for_replay()
        stats = registry.stats()
        assert "replica" not in stats  # nothing has read yet
        response = client.get("/visits/count")
        assert response.status_code == 200
        assert response.json() == {"count": 2}
        # The read went to the replica's pool (the write could not have: it is read-only).
        assert registry.stats()["replica"].checked_in == 1

        health = client.get("/health/db")
        assert health.status_code == 200
        body = health.json()
        assert body["ok"] is True
        assert body["databases"]["replica"]["in_recovery"] is True
        assert pg.connections() > 0
        assert pg_replica.connections() > 0

    assert registry.closed
    assert pg.wait_for_connections(0) == 0
    assert pg_replica.wait_for_connections(0) == 0


def test_health_is_503_when_a_database_is_down(pg: PostgresServer) -> None:
    example = load_example()
    down = pg.url().set(port=closed_port()).render_as_string(hide_password=False)
    registry = Registry.from_dict(
        {"default": "primary", "databases": {"primary": {"url": pg.url_string()}, "reports": {"url": down}}},
        environ={},
    )
    with TestClient(example.create_app(registry)) as client:
        response = client.get("/health/db")
    assert response.status_code == 503
    body = response.json()
    assert body["ok"] is False
    assert body["databases"]["primary"]["status"] == "up"
    assert body["databases"]["reports"]["status"] == "down"
    assert PASSWORD not in response.text
    assert "pg-S3cret" not in response.text
    assert pg.wait_for_connections(0) == 0
