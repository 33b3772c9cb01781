"""examples/fastapi_app.py driven by FastAPI's TestClient: on the shipped config, and on the suite's real PostgreSQL and replica."""

from __future__ import annotations

import socket
import warnings
from pathlib import Path

import pytest
from example_app import load_example
from servers import PASSWORD, PostgresServer, ReplicaServer

from dbregistry import Registry, RegistryClosedError

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

with warnings.catch_warnings():
    # Starlette 1.x asks for httpx2 in place of httpx for its TestClient; the dev extra installs httpx,
    # which still works. The warning is raised once, at import.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "fastapi_app.py"
SHIPPED = ROOT / "config" / "databases.yaml"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_answers_200_on_the_shipped_config_from_a_fresh_clone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As the docstring runs it: DBREGISTRY_CONFIG names the shipped file, no other variable set,
    # in a directory where nothing exists yet (the SQLite files are created there).
    for variable in ("DATABASE_URL", "REPLICA_DATABASE_URL", "ANALYTICS_DATABASE_URL", "NEON_POOLER_URL"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("DBREGISTRY_CONFIG", str(SHIPPED))
    monkeypatch.chdir(tmp_path)
    example = load_example()
    app = example.create_app()
    with TestClient(app) as client:
        created = client.post("/visits", params={"note": "hello"})
        assert created.status_code == 201, created.text
        assert created.json() == {"id": 1, "note": "hello"}  # read after commit: expire_on_commit is false
        assert client.get("/visits/count").json() == {"count": 1}
        health = client.get("/health/db")
        assert health.status_code == 200, health.text
        assert set(health.json()["databases"]) == {"primary", "replica"}  # not the Neon example entry
    # A second run of the same app in the same process: the lifespan reopens the registry.
    with TestClient(app) as client:
        assert client.post("/visits", params={"note": "again"}).status_code == 201
        assert client.get("/visits/count").json() == {"count": 2}
        assert client.get("/health/db").status_code == 200
    assert app.state.registry.closed
    assert (tmp_path / "dev.db").exists()


@pytest.mark.postgres
@pytest.mark.replica
def test_reads_on_the_replica_writes_on_the_primary_and_nothing_left_after_shutdown(
    pg: PostgresServer, pg_replica: ReplicaServer
) -> None:
    example = load_example()
    pg.psql("DROP TABLE IF EXISTS visits")
    registry = Registry.from_dict(
        {
            "default": "primary",
            "session": {"expire_on_commit": False},
            "databases": {
                "primary": {"url": pg.url_string()},
                "replica": {"url": pg_replica.url_string(), "replica_of": "primary"},
            },
        },
        environ={},
    )
    app = example.create_app(registry)

    with TestClient(app) as client:  # its startup creates the table
        for note in ("first", "second"):
            response = client.post("/visits", params={"note": note})
            assert response.status_code == 201, response.text
        pg_replica.wait_for_replay()
        stats = registry.stats()
        assert "replica" not in stats  # nothing has read yet
        # The client's cookie asks for a replica that has replayed its writes: the check tells routing it has.
        registry.check_replicas()
        response = client.get("/visits/count")
        assert response.status_code == 200
        assert response.json() == {"count": 2}
        # The read went to the replica's pool (the write could not have: it is read-only): its
        # async pool holds the read's connection, its sync pool the check's.
        assert registry.stats()["replica"].checked_in == 2
        assert registry.read_your_writes_fallbacks() == {"primary": 0}

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

    # The same app again, as a second test block would: closed in between, reopened by its startup.
    with pytest.raises(RegistryClosedError):
        registry.get()
    with TestClient(app) as client:
        assert client.post("/visits", params={"note": "third"}).status_code == 201
        pg_replica.wait_for_replay()
        assert client.get("/visits/count").json() == {"count": 3}
    assert registry.closed
    assert pg.wait_for_connections(0) == 0
    assert pg_replica.wait_for_connections(0) == 0


@pytest.mark.postgres
def test_health_is_503_when_a_database_it_uses_is_down(pg: PostgresServer) -> None:
    example = load_example()
    pg.psql("DROP TABLE IF EXISTS visits")
    down = pg.url().set(port=closed_port()).render_as_string(hide_password=False)
    registry = Registry.from_dict(
        {
            "default": "primary",
            "databases": {
                "primary": {"url": pg.url_string()},
                "reports": {"url": down, "replica_of": "primary"},
                "elsewhere": {"url": down},  # not used by the app: never pinged
            },
        },
        environ={},
    )
    with TestClient(example.create_app(registry)) as client:
        response = client.get("/health/db")
    assert response.status_code == 503
    body = response.json()
    assert body["ok"] is False
    assert body["databases"]["primary"]["status"] == "up"
    assert body["databases"]["reports"]["status"] == "down"
    assert "elsewhere" not in body["databases"]
    assert PASSWORD not in response.text
    assert "pg-S3cret" not in response.text
    assert pg.wait_for_connections(0) == 0
