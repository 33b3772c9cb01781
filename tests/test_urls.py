"""URL parsing, masking, driver pairs, and provider URLs working in both modes against real PostgreSQL."""

from __future__ import annotations

import asyncio
import re

import pytest
from servers import PostgresServer
from sqlalchemy import text
from sqlalchemy.engine import make_url

from dbregistry import Registry
from dbregistry._urls import DriverError, is_sqlite_memory, mask, parse_url, resolve_driver


class TestParse:
    def test_postgres_scheme_is_postgresql(self) -> None:
        assert parse_url("postgres://u:p@h/d").drivername == "postgresql"
        assert parse_url("postgres+asyncpg://u:p@h/d").drivername == "postgresql+asyncpg"

    def test_error_never_repeats_the_input(self) -> None:
        with pytest.raises(ValueError) as info:
            parse_url("not a url with Secret-9")
        assert "Secret-9" not in str(info.value)
        assert str(info.value).startswith("is not a database URL")

    def test_empty(self) -> None:
        with pytest.raises(ValueError, match="is empty"):
            parse_url("  ")

    def test_mask(self) -> None:
        assert mask(parse_url("postgresql://app:s3cret@host/db")) == "postgresql://app:***@host/db"


class TestResolveDriver:
    def test_unknown_driver_for_async(self) -> None:
        with pytest.raises(DriverError, match=re.escape("declare one of asyncpg, psycopg")):
            resolve_driver(make_url("postgresql+pg9000://h/d"), is_async=True)

    def test_mysql_pair(self) -> None:
        assert resolve_driver(make_url("mysql://h/d"), is_async=True).drivername == "mysql+aiomysql"
        assert resolve_driver(make_url("mysql+asyncmy://h/d"), is_async=False).drivername == "mysql+pymysql"

    @pytest.mark.parametrize(
        ("url", "memory"),
        [
            ("sqlite://", True),
            ("sqlite:///:memory:", True),
            ("sqlite:///x.db", False),
            ("sqlite:///file::memory:?cache=shared&uri=true", False),
            ("postgresql://h/d", False),
        ],
    )
    def test_memory_detection(self, url: str, memory: bool) -> None:
        assert is_sqlite_memory(make_url(url)) is memory


@pytest.mark.postgres
def test_a_provider_url_works_in_both_modes(pg: PostgresServer) -> None:
    """The libpq parameters providers hand out, through psycopg (as is) and asyncpg (translated)."""
    provider_url = pg.url_string("postgres") + "?sslmode=disable&connect_timeout=5&channel_binding=disable"
    registry = Registry.from_dict({"databases": {"neon": {"url": provider_url}}}, environ={})
    ssl_in_use = text("select ssl from pg_stat_ssl where pid = pg_backend_pid()")
    with registry.get("neon").connect() as conn:
        assert conn.execute(ssl_in_use).scalar() is False

    async def query() -> object:
        async with registry.get_async("neon").connect() as conn:
            value = (await conn.execute(ssl_in_use)).scalar_one()
        await registry.aclose()
        return value

    assert asyncio.run(query()) is False
    registry.close()
