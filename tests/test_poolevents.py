"""log_pool_events: connect, checkout, checkin, invalidate and exhaustion on the dbregistry.pool logger."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from servers import PASSWORD, PostgresServer
from sqlalchemy import text

from dbregistry import Registry

LOGGER = "dbregistry.pool"


def registry_for(tmp_path: Path, top: bool | None = None, **databases: dict[str, Any]) -> Registry:
    mapping: dict[str, Any] = {"databases": databases}
    if top is not None:
        mapping["log_pool_events"] = top
    return Registry.from_dict(mapping, environ={})


def events(caplog: pytest.LogCaptureFixture, database: str | None = None) -> list[str]:
    return [
        r.pool_event  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == LOGGER and (database is None or r.database == database)  # type: ignore[attr-defined]
    ]


def test_connect_checkout_checkin_are_logged_naming_the_database(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    registry = registry_for(tmp_path, primary={"url": f"sqlite:///{tmp_path / 'a.db'}", "log_pool_events": True})
    with registry.get("primary").connect() as conn:
        conn.execute(text("select 1"))
    assert events(caplog) == ["connect", "checkout", "checkin"]
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    # The figures are SQLAlchemy's at the moment of the event (a connection being returned still counts as out).
    assert messages == [
        "primary: connect: opened a new connection [checked out 1, idle 0, overflow -4]",
        "primary: checkout [checked out 1, idle 0, overflow -4]",
        "primary: checkin [checked out 1, idle 0, overflow -4]",
    ]
    levels = [r.levelno for r in caplog.records if r.name == LOGGER]
    assert levels == [logging.INFO, logging.DEBUG, logging.DEBUG]
    registry.close()


def test_off_unless_asked(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    registry = registry_for(tmp_path, primary={"url": f"sqlite:///{tmp_path / 'a.db'}"})
    with registry.get("primary").connect():
        pass
    assert events(caplog) == []
    registry.close()


def test_top_level_switch_and_per_database_override(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    registry = registry_for(
        tmp_path,
        top=True,
        loud={"url": f"sqlite:///{tmp_path / 'a.db'}"},
        quiet={"url": f"sqlite:///{tmp_path / 'b.db'}", "log_pool_events": False},
    )
    for name in ("loud", "quiet"):
        with registry.get(name).connect():
            pass
    assert events(caplog, "loud") == ["connect", "checkout", "checkin"]
    assert events(caplog, "quiet") == []
    registry.close()


def test_listeners_survive_dispose(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """dispose() (and the fork recipe) replaces the pool; the events keep coming."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    registry = registry_for(tmp_path, primary={"url": f"sqlite:///{tmp_path / 'a.db'}", "log_pool_events": True})
    engine = registry.get("primary")
    engine.dispose()
    with engine.connect():
        pass
    assert events(caplog) == ["connect", "checkout", "checkin"]
    registry.close()


def test_invalidate_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    registry = registry_for(tmp_path, primary={"url": f"sqlite:///{tmp_path / 'a.db'}", "log_pool_events": True})
    with registry.get("primary").connect() as conn:
        conn.invalidate()
    invalidations = [r for r in caplog.records if getattr(r, "pool_event", None) == "invalidate"]
    assert len(invalidations) == 1
    assert invalidations[0].levelno == logging.WARNING
    assert (
        invalidations[0].getMessage().startswith("primary: invalidate: connection discarded (invalidated explicitly)")
    )
    registry.close()


def test_exhaustion_is_logged_and_still_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    registry = registry_for(
        tmp_path,
        primary={
            "url": f"sqlite:///{tmp_path / 'a.db'}",
            "log_pool_events": True,
            "pool_size": 1,
            "max_overflow": 0,
            "pool_timeout": 0.05,
        },
    )
    engine = registry.get("primary")
    with engine.connect(), pytest.raises(sqlalchemy.exc.TimeoutError), engine.connect():
        pass
    exhausted = [r for r in caplog.records if getattr(r, "pool_event", None) == "exhausted"]
    assert len(exhausted) == 1
    assert exhausted[0].levelno == logging.WARNING
    assert (
        exhausted[0]
        .getMessage()
        .startswith("primary: exhausted: no connection came free within 0.05 s (pool_timeout) [checked out 1")
    )
    registry.close()


def test_async_engines_log_too(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    registry = registry_for(
        tmp_path,
        top=True,
        primary={"url": f"sqlite:///{tmp_path / 'a.db'}", "pool_size": 1, "max_overflow": 0, "pool_timeout": 0.05},
    )

    async def main() -> None:
        engine = registry.get_async("primary")
        async with engine.connect() as conn:
            await conn.execute(text("select 1"))
            with pytest.raises(sqlalchemy.exc.TimeoutError):
                await engine.connect().start()
        await registry.aclose()

    asyncio.run(main())
    assert events(caplog) == ["connect", "checkout", "exhausted", "checkin"]


@pytest.mark.postgres
def test_no_password_in_pool_logs(pg: PostgresServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    registry = Registry.from_dict(
        {"log_pool_events": True, "databases": {"primary": {"url": pg.url_string(), "pool_pre_ping": True}}},
        environ={},
    )
    engine = registry.get("primary")
    with engine.connect() as conn:
        conn.execute(text("select 1"))
    pg.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app'")
    pg.wait_for_connections(0)
    with engine.connect() as conn:  # pre-ping finds the dead connection: invalidate, then a new connect
        conn.execute(text("select 1"))
    registry.close()
    assert events(caplog)[:3] == ["connect", "checkout", "checkin"]
    assert "invalidate" in events(caplog)
    assert events(caplog).count("connect") == 2
    assert PASSWORD not in caplog.text
    assert "pg-S3cret" not in caplog.text
