"""Data safety against the real server: read-only sessions never write, secrets reach every engine, fork is safe."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import PASSWORD, USER, PostgresServer
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from dbregistry import Registry

AUTOCOMMIT_FORMS = {
    "isolation_level": {"isolation_level": "AUTOCOMMIT"},
    "execution_options": {"execution_options": {"isolation_level": "AUTOCOMMIT"}},
}


@pytest.fixture
def table(pg: PostgresServer) -> Iterator[str]:
    name = f"safety_{uuid.uuid4().hex[:8]}"
    pg.psql(f"create table {name} (id int); grant all on {name} to {USER}")
    try:
        yield name
    finally:
        pg.psql(f"drop table {name}")


def rows(pg: PostgresServer, table: str) -> int:
    return int(pg.psql(f"select count(*) from {table}")[0][0])


@pytest.mark.parametrize("form", AUTOCOMMIT_FORMS.values(), ids=AUTOCOMMIT_FORMS.keys())
class TestReadOnlyUnderAutocommit:
    def test_sync_session(self, pg: PostgresServer, table: str, form: dict[str, Any]) -> None:
        # Before: READ ONLY was dropped without a transaction, and the INSERT was committed.
        registry = Registry.from_dict(
            {"databases": {"primary": {"url": pg.url_string("postgresql+psycopg"), **form}}}, environ={}
        )
        try:
            with registry.session(read_only=True) as session:
                with pytest.raises(DBAPIError, match="cannot execute INSERT in a read-only transaction"):
                    session.execute(text(f"insert into {table} values (1)"))
                session.rollback()
                assert session.execute(text(f"select count(*) from {table}")).scalar_one() == 0
            assert rows(pg, table) == 0
            # The pool's connection is AUTOCOMMIT again for everyone else: a write without commit() stays.
            with registry.get().connect() as conn:
                conn.execute(text(f"insert into {table} values (2)"))
            assert rows(pg, table) == 1
        finally:
            registry.close()

    def test_async_session(self, pg: PostgresServer, table: str, form: dict[str, Any]) -> None:
        registry = Registry.from_dict(
            {"databases": {"primary": {"url": pg.url_string("postgresql+asyncpg"), **form}}}, environ={}
        )

        async def main() -> None:
            try:
                async with registry.async_session(read_only=True) as session:
                    with pytest.raises(DBAPIError, match="cannot execute INSERT in a read-only transaction"):
                        await session.execute(text(f"insert into {table} values (1)"))
                    await session.rollback()
                assert rows(pg, table) == 0
                async with registry.get_async().connect() as conn:
                    await conn.execute(text(f"insert into {table} values (2)"))  # AUTOCOMMIT again: no commit()
            finally:
                await registry.aclose()

        asyncio.run(main())
        assert rows(pg, table) == 1


class TestPasswordFileForDirectUrl:
    def test_the_direct_engine_gets_the_password(self, pg: PostgresServer, tmp_path: Path) -> None:
        # Before: the direct engine connected with no password: "fe_sendauth: no password supplied".
        secret = tmp_path / "pw"
        secret.write_text(PASSWORD + "\n")
        full = pg.url("postgresql+psycopg")
        bare = URL.create(full.drivername, full.username, None, full.host, full.port, full.database).render_as_string()
        assert ":" not in bare.split("//")[1].split("@")[0]  # no password in it
        registry = Registry.from_dict(
            {"databases": {"primary": {"url": bare, "direct_url": bare, "password_file": str(secret)}}}, environ={}
        )
        try:
            direct = registry.get("primary", direct=True)
            assert direct is not registry.get("primary")
            with direct.connect() as conn:
                assert conn.exec_driver_sql("select 1").scalar_one() == 1
            assert PASSWORD not in repr(direct)
        finally:
            registry.close()


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_fork_while_another_thread_is_inside_a_first_get(monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: the child inherited the registry's lock held by a thread that does not exist there.
    registry = Registry.from_dict({"databases": {"a": {"url": "sqlite://"}, "b": {"url": "sqlite://"}}}, environ={})
    inside, release = threading.Event(), threading.Event()

    def slow_listener(*_: Any) -> None:
        # Engine listeners run under the registry's lock: this one holds it as a slow build would.
        if threading.current_thread().name == "first-get":
            inside.set()
            release.wait(30)

    registry.add_engine_listener(slow_listener)
    first = threading.Thread(target=registry.get, args=("a",), name="first-get", daemon=True)
    first.start()
    assert inside.wait(30)
    pid = os.fork()
    if pid == 0:  # the child: only this thread exists here
        code = 1
        try:
            signal.alarm(20)  # a blocked get() ends the child with SIGALRM instead of hanging the test
            with registry.get("a").connect() as conn, registry.get("b").connect() as other:
                code = (
                    0
                    if conn.exec_driver_sql("select 1").scalar() == other.exec_driver_sql("select 1").scalar() == 1
                    else 1
                )
        finally:
            os._exit(code)
    try:
        deadline = time.monotonic() + 60
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if done[0] == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the child was still waiting after 60 s")
        assert os.waitstatus_to_exitcode(done[1]) == 0
    finally:
        release.set()
        first.join(30)
        registry.close()
