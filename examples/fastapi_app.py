"""A FastAPI app wired to a registry: reads on the replica, writes on the primary, closed on shutdown.

Run it (from the repository root, with ``pip install -e '.[dev]' uvicorn``)::

    DBREGISTRY_CONFIG=config/databases.yaml uvicorn --factory examples.fastapi_app:create_app

With the shipped ``config/databases.yaml`` and no variables set, the app uses
SQLite files in the working directory (``./dev.db``) and answers 200 from a
fresh clone: ``POST /visits?note=hi``, ``GET /visits/count``, ``GET /health/db``.

- ``lifespan`` creates the example's table when the app starts (a migration
  tool's job in a real service) inside ``registry.lifespan``, which reopens the
  registry on startup and disposes every pool, in the app's own event loop,
  on shutdown: the same app can be started again (as tests do with several
  ``with TestClient(app)`` blocks).
- ``Writes`` and ``Reads`` are the registry's own dependencies:
  ``registry.async_session_dependency(name)`` opens one session per request on
  the primary, ``read_only=True`` one on a healthy replica of it (the primary
  itself when none is declared or none is healthy). They commit nothing: the
  endpoint commits. The shipped file declares ``session: {expire_on_commit: false}``,
  so ``visit.id`` is readable after ``await session.commit()``.
- ``CausalConsistencyMiddleware`` lets a client read its own writes: after
  ``POST /visits`` the response carries a causal token (cookie and
  ``X-Causal-Token`` header), and the client's next reads go to a replica that
  has replayed the write, else to the primary.
- ``GET /health/db`` pings the databases this app uses (its primary and that
  primary's replicas, not every database in the file) concurrently and answers
  503 when one is down, for a load balancer or an orchestrator's readiness probe.
- ``GET /metrics`` serves every pool's and replica's figures to Prometheus, from a
  ``CollectorRegistry`` of the app's own (the global one would refuse a second app).

``create_app(registry)`` takes a ready registry (the tests pass one that points
at their own servers); without one it reads the configuration the way the
``dbregistry`` command does (``Registry.load()``: ``DBREGISTRY_CONFIG``, the
environment, ``.env``).
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import String, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dbregistry import Registry
from dbregistry.asgi import CausalConsistencyMiddleware
from dbregistry.prometheus import RegistryCollector

HEALTH_TIMEOUT = 2.0


class Base(DeclarativeBase):
    pass


class Visit(Base):
    __tablename__ = "visits"

    id: Mapped[int] = mapped_column(primary_key=True)
    note: Mapped[str] = mapped_column(String(200))


def databases_used(registry: Registry, database: str | None) -> list[str]:
    """The app's primary and the replicas its reads may go to."""
    primary = database if database is not None else registry.default
    return [name for name in registry if name == primary or registry[name].replica_of == primary]


def create_app(registry: Registry | None = None, *, database: str | None = None) -> FastAPI:
    """The app for ``registry`` (else ``Registry.load()``); ``database`` names the primary (else the default)."""
    if registry is None:
        registry = Registry.load()
    used = databases_used(registry, database)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with registry.lifespan(app):
            async with registry.get_async(database, direct=True).begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
            yield

    # Annotated aliases, named as types as FastAPI's documentation does.
    Writes = Annotated[AsyncSession, Depends(registry.async_session_dependency(database))]  # noqa: N806
    Reads = Annotated[AsyncSession, Depends(registry.async_session_dependency(database, read_only=True))]  # noqa: N806

    app = FastAPI(title="dbregistry example", lifespan=lifespan)
    app.add_middleware(CausalConsistencyMiddleware, registry=registry)
    app.state.registry = registry
    metrics = metrics_registry(registry)

    @app.post("/visits", status_code=201)
    async def add_visit(note: str, session: Writes) -> dict[str, int | str]:
        visit = Visit(note=note)
        session.add(visit)
        await session.commit()
        return {"id": visit.id, "note": visit.note}

    @app.get("/visits/count")
    async def count_visits(session: Reads) -> dict[str, int]:
        count = (await session.execute(select(func.count()).select_from(Visit))).scalar_one()
        return {"count": count}

    @app.get("/health/db")
    async def database_health() -> JSONResponse:
        """200 when every database the app uses answers within the timeout, else 503; passwords never appear."""
        reports = await registry.ahealth(timeout=HEALTH_TIMEOUT, names=used)
        up = all(report.ok for report in reports.values())
        body = {"ok": up, "databases": {name: report.as_dict() for name, report in reports.items()}}
        return JSONResponse(body, status_code=200 if up else 503)

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        """Every pool's, replica's and health check's figures, in Prometheus' text format."""
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    return app


def metrics_registry(registry: Registry) -> CollectorRegistry:
    """A Prometheus registry of the app's own, collecting ``registry``'s pool, routing and health figures."""
    metrics = CollectorRegistry()
    metrics.register(RegistryCollector(registry))
    return metrics
