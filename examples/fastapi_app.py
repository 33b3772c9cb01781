"""A FastAPI app wired to a registry: reads on the replica, writes on the primary, closed on shutdown.

Run it (from the repository root, with ``pip install -e '.[dev]' uvicorn``)::

    DBREGISTRY_CONFIG=config/databases.yaml uvicorn --factory examples.fastapi_app:create_app

- ``FastAPI(lifespan=registry.lifespan)`` disposes every pool, in the app's own
  event loop, when the server shuts the app down: no connection is left behind.
- ``read_session`` is bound to a healthy replica of the database
  (``registry.async_session(name, read_only=True)``; the primary itself when no
  replica is declared or none is healthy); ``write_session`` to the primary.
- ``GET /health/db`` pings every database concurrently and answers 503 when one
  is down, for a load balancer or an orchestrator's readiness probe.
- ``GET /metrics`` serves every pool's and replica's figures to Prometheus, from a
  ``CollectorRegistry`` of the app's own (the global one would refuse a second app).

``create_app(registry)`` takes a ready registry (the tests pass one that points
at their own servers); without one it reads the configuration the way the
``dbregistry`` command does (``Registry.load()``: ``DBREGISTRY_CONFIG``, the
environment, ``.env``).
"""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from dbregistry import Registry
from dbregistry.prometheus import RegistryCollector

metadata = MetaData()
visits = Table(
    "visits",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("note", String(200), nullable=False),
)

HEALTH_TIMEOUT = 2.0


def create_tables(registry: Registry, database: str | None = None) -> None:
    """Create the example's table on the primary (a migration tool's job in a real service)."""
    metadata.create_all(registry.get(database, direct=True))


def create_app(registry: Registry | None = None, *, database: str | None = None) -> FastAPI:
    """The app for ``registry`` (else ``Registry.load()``); ``database`` names the primary (else the default)."""
    if registry is None:
        registry = Registry.load()
    app = FastAPI(title="dbregistry example", lifespan=registry.lifespan)
    app.state.registry = registry
    app.state.database = database
    app.state.metrics = metrics_registry(registry)
    app.include_router(routes)
    return app


def metrics_registry(registry: Registry) -> CollectorRegistry:
    """A Prometheus registry of the app's own, collecting ``registry``'s pool, routing and health figures."""
    metrics = CollectorRegistry()
    metrics.register(RegistryCollector(registry))
    return metrics


# -- dependencies ---------------------------------------------------------------------


def get_registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


async def read_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A session on a replica of the app's database (the primary when none is healthy)."""
    registry = get_registry(request)
    async with registry.async_session(request.app.state.database, read_only=True) as session:
        yield session


async def write_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A session on the primary; the endpoint commits."""
    registry = get_registry(request)
    async with registry.async_session(request.app.state.database) as session:
        yield session


Reads = Annotated[AsyncSession, Depends(read_session)]
Writes = Annotated[AsyncSession, Depends(write_session)]


# -- endpoints ------------------------------------------------------------------------

routes = APIRouter()


@routes.post("/visits", status_code=201)
async def add_visit(note: str, session: Writes) -> dict[str, int]:
    new_id = (await session.execute(insert(visits).values(note=note).returning(visits.c.id))).scalar_one()
    await session.commit()
    return {"id": new_id}


@routes.get("/visits/count")
async def count_visits(session: Reads) -> dict[str, int]:
    count = (await session.execute(select(func.count()).select_from(visits))).scalar_one()
    return {"count": count}


@routes.get("/health/db")
async def database_health(registry: Annotated[Registry, Depends(get_registry)]) -> JSONResponse:
    """200 when every database answers within the timeout, else 503; passwords never appear."""
    reports = await registry.ahealth(timeout=HEALTH_TIMEOUT)
    up = all(report.ok for report in reports.values())
    body = {"ok": up, "databases": {name: report.as_dict() for name, report in reports.items()}}
    return JSONResponse(body, status_code=200 if up else 503)


@routes.get("/metrics")
def prometheus_metrics(request: Request) -> Response:
    """Every pool's and replica's figures in Prometheus' text format."""
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)
