"""Session defaults (file, environment, code), the FastAPI dependencies, reopening, and the event-loop rule."""

# No `from __future__ import annotations`: FastAPI must see the endpoints' annotations, which use locals.

import asyncio
import gc
import re
import subprocess
import sys
import textwrap
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
from servers import PostgresServer
from sqlalchemy import String, select, text
from sqlalchemy.exc import MissingGreenlet
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from dbregistry import ConfigError, EventLoopError, Registry, RegistryClosedError, UnknownDatabaseError

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi import Depends, FastAPI, HTTPException

with warnings.catch_warnings():
    # As in test_fastapi_example.py: Starlette 1.x warns once, at import, about httpx.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "session_notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(100))


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "databases.yaml"
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def sqlite_registry(tmp_path: Path, extra: str = "", environ: dict[str, str] | None = None) -> Registry:
    path = write(
        tmp_path,
        f"""\
        databases:
          primary:
            url: sqlite:///{tmp_path / "app.db"}
          other:
            url: sqlite:///{tmp_path / "other.db"}
        """
        + textwrap.dedent(extra),
    )
    return Registry.from_yaml(path, environ=environ or {})


def pg_registry(pg: PostgresServer, **session: bool) -> Registry:
    config: dict[str, Any] = {"databases": {"primary": {"url": pg.url_string()}}}
    if session:
        config["session"] = session
    return Registry.from_dict(config, environ={})


# -- defaults -----------------------------------------------------------------------------------


class TestSessionDefaults:
    def test_sqlalchemy_defaults_when_nothing_is_declared(self, tmp_path: Path) -> None:
        with sqlite_registry(tmp_path) as registry, registry.session() as session:
            assert (session.expire_on_commit, session.autoflush, session.autobegin) == (True, True, True)
            assert registry.session_options() == {}

    def test_top_level_applies_to_every_database_and_the_database_beats_it(self, tmp_path: Path) -> None:
        registry = Registry.from_yaml(
            write(
                tmp_path,
                f"""\
                session:
                  expire_on_commit: false
                  autoflush: false
                databases:
                  primary:
                    url: sqlite:///{tmp_path / "app.db"}
                  other:
                    url: sqlite:///{tmp_path / "other.db"}
                    session:
                      autoflush: true
                """,
            ),
            environ={},
        )
        with registry:
            assert registry.session_options("primary") == {"expire_on_commit": False, "autoflush": False}
            assert registry.session_options("other") == {"expire_on_commit": False, "autoflush": True}
            with registry.session("other") as session:
                assert (session.expire_on_commit, session.autoflush) == (False, True)

    def test_keywords_of_the_call_win(self, tmp_path: Path) -> None:
        registry = sqlite_registry(tmp_path, "session: {expire_on_commit: false}\n")
        with registry, registry.session(expire_on_commit=True) as session:
            assert session.expire_on_commit is True

    def test_async_session_gets_them_too(self, tmp_path: Path) -> None:
        registry = sqlite_registry(tmp_path, "session: {expire_on_commit: false, autobegin: false}\n")

        async def main() -> tuple[bool, bool]:
            async with registry, registry.async_session() as session:
                return session.sync_session.expire_on_commit, session.sync_session.autobegin

        assert asyncio.run(main()) == (False, False)

    def test_from_the_environment(self, tmp_path: Path) -> None:
        environ = {
            "DBREGISTRY_SESSION__EXPIRE_ON_COMMIT": "false",
            "DBREGISTRY_DATABASES__OTHER__SESSION__AUTOFLUSH": "false",
        }
        with sqlite_registry(tmp_path, environ=environ) as registry:
            assert registry.session_options("primary") == {"expire_on_commit": False}
            assert registry.session_options("other") == {"expire_on_commit": False, "autoflush": False}

    def test_in_code_beats_the_file_at_the_same_level(self, tmp_path: Path) -> None:
        registry = Registry.from_yaml(
            write(
                tmp_path,
                f"""\
                session: {{autoflush: false}}
                databases:
                  primary:
                    url: sqlite:///{tmp_path / "app.db"}
                    session: {{expire_on_commit: true}}
                """,
            ),
            environ={},
        )
        with registry:
            registry.configure_sessions(autoflush=True, expire_on_commit=False)
            # The database's own `session:` beats every database's, even set in code.
            assert registry.session_options() == {"autoflush": True, "expire_on_commit": True}
            registry.configure_sessions("primary", expire_on_commit=False)
            assert registry.session_options() == {"autoflush": True, "expire_on_commit": False}
            registry.configure_sessions()  # replaces the code defaults of every database: none
            assert registry.session_options() == {"autoflush": False, "expire_on_commit": False}

    def test_configure_sessions_names_a_declared_database(self, tmp_path: Path) -> None:
        with sqlite_registry(tmp_path) as registry, pytest.raises(UnknownDatabaseError, match="did you mean 'other'"):
            registry.configure_sessions("othr", autoflush=False)


class TestSessionDefaultsErrors:
    def test_unknown_keys_and_wrong_values_name_the_file_and_line(self, tmp_path: Path) -> None:
        path = write(
            tmp_path,
            """\
            session:
              expire_on_comit: false
            databases:
              primary:
                url: sqlite://
                session:
                  autoflush: sometimes
              other:
                url: sqlite://
                session: false
            """,
        )
        with pytest.raises(ConfigError) as info:
            Registry.from_yaml(path, environ={})
        assert str(info.value) == (
            f"3 problems in {path}\n"
            f"  {path}:2   session.expire_on_comit: unknown field; did you mean 'expire_on_commit'?\n"
            f"  {path}:7   databases.primary.session.autoflush: must be true or false, got 'sometimes'\n"
            f"  {path}:10  databases.other.session: must be a mapping of session options "
            "(expire_on_commit, autoflush, autobegin), got False"
        )

    def test_a_wrong_variable_is_named(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError) as info:
            sqlite_registry(tmp_path, environ={"DBREGISTRY_SESSION__AUTOFLUSH": "maybe"})
        assert [str(p) for p in info.value.problems] == [
            "DBREGISTRY_SESSION__AUTOFLUSH  session.autoflush: must be true or false, got 'maybe'"
        ]


# -- expire_on_commit: false, for real ----------------------------------------------------------


@pytest.mark.postgres
class TestExpireOnCommit:
    def test_an_attribute_reads_after_await_commit(self, pg: PostgresServer) -> None:
        pg.psql("DROP TABLE IF EXISTS session_notes")

        async def main(registry: Registry) -> str:
            async with registry:
                async with registry.get_async().begin() as conn:
                    await conn.run_sync(Base.metadata.create_all)
                async with registry.async_session() as session:
                    note = Note(text="kept")
                    session.add(note)
                    await session.commit()
                    return note.text  # no lazy load: nothing was expired

        assert asyncio.run(main(pg_registry(pg, expire_on_commit=False))) == "kept"

        async def expired(registry: Registry) -> None:
            async with registry, registry.async_session() as session:
                note = Note(text="expired")
                session.add(note)
                await session.commit()
                with pytest.raises(MissingGreenlet):
                    _ = note.text  # SQLAlchemy's default expires it: a lazy load outside await

        asyncio.run(expired(pg_registry(pg)))
        assert pg.wait_for_connections(0) == 0


# -- the dependencies ---------------------------------------------------------------------------


def count_notes(registry: Registry) -> int:
    with registry.get().connect() as conn:
        return int(conn.execute(text("select count(*) from session_notes")).scalar_one())


@pytest.fixture
def notes_registry(pg: PostgresServer) -> Iterator[Registry]:
    pg.psql("DROP TABLE IF EXISTS session_notes")
    registry = pg_registry(pg, expire_on_commit=False)
    Base.metadata.create_all(registry.get())
    registry.close()
    registry.reopen()
    yield registry
    registry.close()
    assert pg.wait_for_connections(0) == 0


@pytest.mark.postgres
class TestDependencies:
    def test_async_dependency_commits_nothing_rolls_back_on_error_and_closes(self, notes_registry: Registry) -> None:
        registry = notes_registry
        db_session = Annotated[AsyncSession, Depends(registry.async_session_dependency())]
        seen: list[AsyncSession] = []
        app = FastAPI(lifespan=registry.lifespan)

        @app.post("/notes")
        async def add(note: str, db: db_session, also: db_session, commit: bool = True) -> dict[str, Any]:
            seen.extend([db, also])
            row = Note(text=note)
            db.add(row)
            await db.flush()
            if note == "fail":
                raise HTTPException(status_code=409, detail="refused")
            if commit:
                await db.commit()
            return {"id": row.id, "text": row.text}  # readable after commit: expire_on_commit is false

        with TestClient(app) as client:
            response = client.post("/notes", params={"note": "first"})
            assert response.status_code == 200, response.text
            assert response.json()["text"] == "first"
            assert seen[0] is seen[1]  # one session per request, however many parameters ask
            assert client.post("/notes", params={"note": "fail"}).status_code == 409
            assert client.post("/notes", params={"note": "uncommitted", "commit": "false"}).status_code == 200
            assert seen[2] is not seen[0]
            assert registry.stats()["primary"].checked_out == 0  # every session was closed
        assert registry.closed
        registry.reopen()
        assert count_notes(registry) == 1  # neither the failed nor the uncommitted write stayed

    def test_sync_dependency_with_depends(self, notes_registry: Registry) -> None:
        registry = notes_registry
        app = FastAPI(lifespan=registry.lifespan)

        @app.post("/notes")
        def add(note: str, db: Session = Depends(registry.session_dependency())) -> dict[str, Any]:  # noqa: B008
            row = Note(text=note)
            db.add(row)
            db.flush()
            if note == "fail":
                raise HTTPException(status_code=409, detail="refused")
            db.commit()
            return {"text": row.text}

        @app.get("/notes")
        def count(db: Annotated[Session, Depends(registry.session_dependency(read_only=True))]) -> int:
            return len(db.scalars(select(Note)).all())

        with TestClient(app) as client:
            assert client.post("/notes", params={"note": "a"}).json() == {"text": "a"}
            assert client.post("/notes", params={"note": "fail"}).status_code == 409
            assert client.get("/notes").json() == 1
            assert registry.stats()["primary"].checked_out == 0

    def test_the_same_arguments_give_the_same_function(self, tmp_path: Path) -> None:
        with sqlite_registry(tmp_path) as registry:
            assert registry.session_dependency() is registry.session_dependency()
            assert registry.session_dependency("other") is not registry.session_dependency("other", read_only=True)
            assert id(registry.async_session_dependency()) != id(registry.session_dependency())

    def test_a_typo_fails_where_the_dependency_is_declared(self, tmp_path: Path) -> None:
        with sqlite_registry(tmp_path) as registry, pytest.raises(UnknownDatabaseError, match="did you mean 'other'"):
            registry.async_session_dependency("othr")


def test_importing_dbregistry_does_not_import_fastapi() -> None:
    code = "import sys, dbregistry; print(sorted(m for m in ('fastapi', 'starlette') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "[]"


# -- lifespan and reopen ------------------------------------------------------------------------


class TestReopen:
    def test_close_is_final_until_reopen(self, tmp_path: Path) -> None:
        registry = sqlite_registry(tmp_path)
        first = registry.get()
        registry.close()
        with pytest.raises(RegistryClosedError, match="the registry is closed; cannot open 'primary'"):
            registry.get()
        registry.reopen()
        assert not registry.closed
        assert registry.get() is not first  # built anew
        registry.reopen()  # open already: nothing happens
        registry.close()

    @pytest.mark.postgres
    def test_one_app_runs_twice_closed_in_between(self, pg: PostgresServer) -> None:
        registry = pg_registry(pg)
        app = FastAPI(lifespan=registry.lifespan)

        @app.get("/one")
        async def one(db: Annotated[AsyncSession, Depends(registry.async_session_dependency())]) -> int:
            return int((await db.execute(text("select 1"))).scalar_one())

        for _ in range(2):
            with TestClient(app) as client:
                assert client.get("/one").json() == 1
                assert pg.connections() > 0
            assert registry.closed
            with pytest.raises(RegistryClosedError):
                registry.get()
            assert pg.wait_for_connections(0) == 0


# -- one event loop per engine ------------------------------------------------------------------


@pytest.mark.postgres
class TestEventLoops:
    async def query(self, registry: Registry, *, read_only: bool = False) -> int:
        async with registry.async_session(read_only=read_only) as session:
            return int((await session.execute(text("select 1"))).scalar_one())

    def test_a_second_asyncio_run_gets_a_dbregistry_error(self, pg: PostgresServer) -> None:
        registry = pg_registry(pg)
        assert asyncio.run(self.query(registry)) == 1
        with pytest.raises(EventLoopError) as info:
            asyncio.run(self.query(registry))
        assert re.fullmatch(
            r"the async engine of 'primary' holds connections opened in another event loop "
            r"\(_UnixSelectorEventLoop at 0x[0-9a-f]+, which has ended\); this code runs in "
            r"_UnixSelectorEventLoop at 0x[0-9a-f]+\. Close the async engines inside the loop that used them: "
            r"`await registry\.aclose\(\)` before it ends, then `registry\.reopen\(\)` "
            r"\(an app's lifespan, `FastAPI\(lifespan=registry\.lifespan\)`, does both\)",
            str(info.value),
        )
        with pytest.raises(EventLoopError):
            asyncio.run(self.query_engine(registry))
        with pytest.raises(EventLoopError):
            asyncio.run(self.query(registry, read_only=True))
        del info
        with warnings.catch_warnings():
            # The sockets of the ended loop cannot be closed through it: close() drops them
            # (logged) and they close as they are collected, which Python reports as unclosed.
            warnings.simplefilter("ignore", ResourceWarning)
            registry.close()
            gc.collect()
        assert pg.wait_for_connections(0) == 0

    async def query_engine(self, registry: Registry) -> int:
        async with registry.get_async().connect() as conn:
            return int((await conn.execute(text("select 1"))).scalar_one())

    def test_a_loop_running_in_another_thread_is_named(self, pg: PostgresServer) -> None:
        registry = pg_registry(pg)
        other = asyncio.new_event_loop()
        thread = threading.Thread(target=other.run_forever, daemon=True)
        thread.start()
        try:
            assert asyncio.run_coroutine_threadsafe(self.query(registry), other).result(timeout=30) == 1
            with pytest.raises(EventLoopError, match=re.escape("which is still running); this code runs in")):
                asyncio.run(self.query(registry))
            asyncio.run_coroutine_threadsafe(registry.aclose(), other).result(timeout=30)
        finally:
            other.call_soon_threadsafe(other.stop)
            thread.join(timeout=30)
            other.close()
        assert pg.wait_for_connections(0) == 0

    def test_aclose_then_reopen_between_loops_works(self, pg: PostgresServer) -> None:
        registry = pg_registry(pg)

        async def run_and_close() -> int:
            try:
                return await self.query(registry)
            finally:
                await registry.aclose()

        for _ in range(2):
            assert asyncio.run(run_and_close()) == 1
            registry.reopen()
        assert pg.wait_for_connections(0) == 0
        registry.close()

    def test_a_loop_with_nothing_pooled_is_no_problem(self, pg: PostgresServer) -> None:
        registry = Registry.from_dict(
            {"databases": {"primary": {"url": pg.url_string(), "pool_class": "NullPool"}}}, environ={}
        )
        assert asyncio.run(self.query(registry)) == 1
        assert asyncio.run(self.query(registry)) == 1
        registry.close()
