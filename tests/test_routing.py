"""Read/write routing on SQLite files and unreachable ports: weights, fallback, down-marking, back-off, probes."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from dbregistry import Registry, RegistryClosedError, UnknownDatabaseError
from dbregistry._routing import weighted_order

SECRET = "Rout3-pw-Qz7"


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def make(tmp_path: Path, databases: dict[str, dict[str, Any]], **top: Any) -> Registry:
    return Registry.from_dict({"databases": databases, **top}, environ={})


def pair(tmp_path: Path, replica_url: str | None = None, **replica: Any) -> Registry:
    """primary + one replica (by default a healthy SQLite file).

    A PostgreSQL replica gets a PostgreSQL primary, never connected to here: a replica on
    another dialect than its primary is refused at load.
    """
    primary = sqlite_url(tmp_path / "primary.db")
    if replica_url is not None and replica_url.startswith("postgresql"):
        primary = "postgresql://app@127.0.0.1:2/app"
    return make(
        tmp_path,
        {
            "primary": {"url": primary},
            "replica": {"url": replica_url or sqlite_url(tmp_path / "replica.db"), "replica_of": "primary", **replica},
        },
    )


def name_of(engine: Engine | AsyncEngine) -> str:
    return Path(engine.url.database or "").stem


def routing_records(caplog: pytest.LogCaptureFixture, level: int | None = None) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "dbregistry.routing" and (level is None or r.levelno == level)]


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def fail_once(engine: Engine) -> None:
    with pytest.raises(Exception, match="unable to open database file"), engine.connect():
        pass


class CountingLock:
    def __init__(self) -> None:
        self.inner = threading.Lock()
        self.count = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        self.count += 1
        return self.inner.acquire(blocking, timeout)

    def release(self) -> None:
        self.inner.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class TestRoutes:
    def test_reads_go_to_the_replica_and_writes_to_the_primary(self, tmp_path: Path) -> None:
        registry = pair(tmp_path)
        assert registry.reader("primary") is registry.get("replica")
        assert registry.writer("primary") is registry.get("primary")
        with registry.writer("primary").begin() as conn:
            conn.execute(text("create table t (x int)"))
        with registry.reader("primary").connect() as conn:  # a separate file: the "replica" has no table
            assert conn.execute(text("select count(*) from sqlite_master where name = 't'")).scalar() == 0
        registry.close()

    def test_no_name_uses_the_default(self, tmp_path: Path) -> None:
        registry = pair(tmp_path)
        assert registry.default == "primary"
        assert registry.reader() is registry.get("replica")
        assert registry.writer() is registry.get("primary")
        registry.close()

    def test_weights_one_and_two_share_reads_one_to_two(self, tmp_path: Path) -> None:
        registry = make(
            tmp_path,
            {
                "primary": {"url": sqlite_url(tmp_path / "primary.db")},
                "replica_a": {"url": sqlite_url(tmp_path / "a.db"), "replica_of": "primary"},
                "replica_b": {"url": sqlite_url(tmp_path / "b.db"), "replica_of": "primary", "weight": 2},
            },
        )
        picks = [name_of(registry.reader("primary")) for _ in range(300)]
        assert Counter(picks) == {"a": 100, "b": 200}
        assert "aa" not in "".join(p[0] for p in picks)  # spread out, not a run of a then a run of b
        registry.close()

    def test_weighted_order(self) -> None:
        assert weighted_order([]) == ()
        assert weighted_order([("a", 1), ("b", 2)]) == ("b", "a", "b")
        assert weighted_order([("a", 10), ("b", 20)]) == ("b", "a", "b")  # divided by the gcd
        assert Counter(weighted_order([("a", 1), ("b", 1), ("c", 3)])) == {"a": 1, "b": 1, "c": 3}
        huge = weighted_order([("a", 10**9), ("b", 1)])
        assert len(huge) <= 4097
        assert "b" in huge

    def test_unknown_names(self, tmp_path: Path) -> None:
        registry = pair(tmp_path)
        for method in (registry.reader, registry.writer, registry.async_reader, registry.async_writer):
            with pytest.raises(
                UnknownDatabaseError, match="'replcia' is not a declared database; did you mean 'replica'"
            ):
                method("replcia")
        no_default = make(tmp_path, {"a": {"url": "sqlite://"}, "b": {"url": "sqlite://"}})
        with pytest.raises(UnknownDatabaseError, match="no default database is declared"):
            no_default.reader()
        registry.close()

    def test_a_replica_is_its_own_reader_and_writes_go_to_its_primary(self, tmp_path: Path) -> None:
        registry = make(
            tmp_path,
            {
                "primary": {"url": sqlite_url(tmp_path / "primary.db")},
                "replica": {"url": sqlite_url(tmp_path / "replica.db"), "replica_of": "primary"},
                "cascaded": {"url": sqlite_url(tmp_path / "cascaded.db"), "replica_of": "replica"},
            },
        )
        assert registry.reader("primary") is registry.get("replica")  # direct replicas only
        assert registry.reader("replica") is registry.get("cascaded")
        assert registry.reader("cascaded") is registry.get("cascaded")
        assert registry.writer("cascaded") is registry.get("primary")
        assert registry.writer("replica") is registry.get("primary")
        registry.close()

    def test_no_replica_falls_back_to_the_primary_logged_once(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG, "dbregistry.routing")
        registry = make(tmp_path, {"primary": {"url": sqlite_url(tmp_path / "primary.db")}})
        for _ in range(100):
            assert registry.reader("primary") is registry.get("primary")
            assert registry.reader() is registry.get("primary")
        [record] = routing_records(caplog)
        assert record.levelno == logging.INFO
        assert record.getMessage().startswith("'primary' has no replica declared: its reads go to 'primary'")
        registry.close()

    def test_read_only_sessions_are_bound_to_the_reader(self, tmp_path: Path) -> None:
        registry = pair(tmp_path)
        with registry.session("primary", read_only=True) as session:
            assert session.get_bind() is registry.get("replica")
        with registry.session("primary") as session:
            assert session.get_bind() is registry.get("primary")

        async def main() -> None:
            async with registry.async_session("primary", read_only=True, expire_on_commit=False) as session:
                assert session.bind is registry.get_async("replica")
                assert session.sync_session.expire_on_commit is False
                assert (await session.execute(text("select 1"))).scalar() == 1
            async with registry.async_session("primary") as session:
                assert session.bind is registry.get_async("primary")
            await registry.aclose()

        asyncio.run(main())

    def test_async_reader_and_writer(self, tmp_path: Path) -> None:
        registry = pair(tmp_path)

        async def main() -> None:
            assert registry.async_reader("primary") is registry.get_async("replica")
            assert registry.async_writer("primary") is registry.get_async("primary")
            async with registry.async_reader().connect() as conn:
                assert (await conn.execute(text("select 1"))).scalar() == 1
            await registry.aclose()

        asyncio.run(main())

    def test_the_hot_path_takes_no_lock(self, tmp_path: Path) -> None:
        registry = pair(tmp_path)
        registry.reader("primary")  # first call: announcements, engine built
        registry.async_reader("primary")
        lock = CountingLock()
        # The one private attribute left in the tests: no public API shows whether a call takes
        # the router's lock, and a lock on the hot path costs ~250 ns a call (FACTS.md).
        registry._router._lock = lock  # type: ignore[assignment]
        for _ in range(1000):
            registry.reader("primary")
            registry.async_reader("primary")
            registry.writer("primary")
        assert lock.count == 0
        registry.close()

    def test_the_hot_path_does_not_wait_for_an_engine_being_built(self, tmp_path: Path) -> None:
        """While another thread builds an engine (holding the registry's lock), routed calls still answer."""
        registry = make(
            tmp_path,
            {
                "primary": {"url": sqlite_url(tmp_path / "primary.db")},
                "replica": {"url": sqlite_url(tmp_path / "replica.db"), "replica_of": "primary"},
                "other": {"url": sqlite_url(tmp_path / "other.db")},
            },
        )
        replica = registry.reader("primary")
        building, release = threading.Event(), threading.Event()

        def slow_listener(name: str, mode: str, direct: bool, engine: object) -> None:
            if name == "other":  # called under the registry's lock, before get("other") returns
                building.set()
                release.wait(30)

        registry.add_engine_listener(slow_listener)
        builder = threading.Thread(target=registry.get, args=("other",))
        builder.start()
        try:
            assert building.wait(30)
            answers: list[bool] = []
            reader = threading.Thread(
                target=lambda: answers.extend(registry.reader("primary") is replica for _ in range(1000))
            )
            reader.start()
            reader.join(timeout=30)  # a hang, not speed: a reader waiting for the lock never ends
            assert answers == [True] * 1000
        finally:
            release.set()
            builder.join(timeout=30)
        registry.close()

    def test_after_close_reader_raises(self, tmp_path: Path) -> None:
        registry = pair(tmp_path)
        registry.reader("primary")
        registry.close()
        with pytest.raises(RegistryClosedError):
            registry.reader("primary")
        with pytest.raises(RegistryClosedError):
            registry.async_reader()
        with pytest.raises(RegistryClosedError):
            registry.check_replicas()

    def test_configure_routing_checks_its_values(self, tmp_path: Path) -> None:
        registry = pair(tmp_path)
        with pytest.raises(ValueError, match="backoff must be a number of seconds above 0, got 0"):
            registry.configure_routing(backoff=0)
        with pytest.raises(ValueError, match="lag_check_interval must be"):
            registry.configure_routing(lag_check_interval=-1)
        registry.configure_routing(backoff=2.5, lag_check_interval=None)
        registry.configure_routing(backoff=3)  # lag_check_interval is left as it was: no error
        registry.close()

    def test_configure_routing_sets_the_back_off_a_down_replica_waits(self, tmp_path: Path) -> None:
        registry = pair(tmp_path, sqlite_url(tmp_path / "missing" / "replica.db"))
        registry.configure_routing(backoff=25)
        fail_once(registry.reader("primary"))
        retry_in = registry.replica_status()["replica"].retry_in
        assert retry_in is not None
        assert 5 < retry_in <= 25  # 25 s, counting down since the failure; the default would be 30
        registry.configure_routing(backoff=60)  # waits under way are shortened, never lengthened
        later = registry.replica_status()["replica"].retry_in
        assert later is not None
        assert later <= retry_in
        registry.configure_routing(backoff=2)
        shortened = registry.replica_status()["replica"].retry_in
        assert shortened is not None
        assert shortened <= 2
        registry.close()


class TestHealth:
    def test_a_failed_connection_marks_the_replica_down_at_once(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG, "dbregistry.routing")
        registry = pair(tmp_path, sqlite_url(tmp_path / "missing" / "replica.db"))
        replica = registry.reader("primary")
        assert replica is registry.get("replica")
        fail_once(replica)  # the request that discovers it fails with its own error
        for _ in range(50):
            assert registry.reader("primary") is registry.get("primary")
        [warning] = routing_records(caplog)
        assert warning.levelno == logging.WARNING
        assert warning.getMessage() == (
            f"replica 'replica' (sqlite:///{tmp_path}/missing/replica.db) is down: OperationalError: unable to open "
            f"database file; no healthy replica of 'primary' is left: its reads go to 'primary' "
            f"(sqlite:///{tmp_path}/primary.db); next try in 30s"
        )
        status = registry.replica_status()["replica"]
        assert not status.up
        assert status.reason == "OperationalError: unable to open database file"
        assert status.retry_in is not None
        assert 10 < status.retry_in <= 30  # the default back-off, counting down since the failure (20 s to spare)
        registry.close()

    def test_a_replica_engine_taken_with_get_is_watched_too(self, tmp_path: Path) -> None:
        registry = pair(tmp_path, sqlite_url(tmp_path / "missing" / "replica.db"))
        fail_once(registry.get("replica"))  # before reader() ever handed it out
        assert not registry.replica_status()["replica"].up
        assert registry.reader("primary") is registry.get("primary")
        registry.close()

    def test_an_async_replica_engine_taken_with_get_async_is_watched_too(self, tmp_path: Path) -> None:
        # A refused asyncpg connection, not a missing aiosqlite file: aiosqlite's worker thread
        # may still post to the event loop after asyncio.run() has closed it.
        registry = pair(tmp_path, f"postgresql://app:{SECRET}@127.0.0.1:1/app")

        async def main() -> None:
            with pytest.raises(OSError, match="Connect call failed"):
                async with registry.get_async("replica").connect():
                    pass
            assert not registry.replica_status()["replica"].up
            assert registry.async_reader("primary") is registry.get_async("primary")
            await registry.aclose()

        asyncio.run(main())

    def test_the_other_replicas_take_over(self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        registry = make(
            tmp_path,
            {
                "primary": {"url": sqlite_url(tmp_path / "primary.db")},
                "replica_a": {"url": sqlite_url(tmp_path / "missing" / "a.db"), "replica_of": "primary"},
                "replica_b": {"url": sqlite_url(tmp_path / "b.db"), "replica_of": "primary", "weight": 2},
                "replica_c": {"url": sqlite_url(tmp_path / "c.db"), "replica_of": "primary"},
            },
        )
        while (engine := registry.reader("primary")) is not registry.get("replica_a"):
            pass
        fail_once(engine)
        picks = Counter(name_of(registry.reader("primary")) for _ in range(300))
        assert picks == {"b": 200, "c": 100}
        [warning] = routing_records(caplog, logging.WARNING)
        assert "reads of 'primary' go to the other replicas" in warning.getMessage()
        registry.close()

    def test_after_the_backoff_a_probe_brings_it_back(self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.DEBUG, "dbregistry.routing")
        registry = pair(tmp_path, sqlite_url(tmp_path / "missing" / "replica.db"))
        registry.configure_routing(backoff=0.2)
        fail_once(registry.reader("primary"))
        assert registry.reader("primary") is registry.get("primary")
        (tmp_path / "missing").mkdir()  # the replica "comes back"
        assert registry.reader("primary") is registry.get("primary")  # still backing off: not tried
        assert wait_until(lambda: registry.reader("primary") is registry.get("replica"))
        assert [r.levelno for r in routing_records(caplog)] == [logging.WARNING, logging.INFO]
        assert routing_records(caplog)[1].getMessage() == (
            f"replica 'replica' (sqlite:///{tmp_path}/missing/replica.db) is back up; "
            "reads of 'primary' go to replicas again"
        )
        assert registry.replica_status()["replica"].up
        registry.close()

    def test_a_probe_that_fails_keeps_reads_on_the_primary(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG, "dbregistry.routing")
        registry = pair(tmp_path, sqlite_url(tmp_path / "missing" / "replica.db"))
        registry.configure_routing(backoff=0.05)
        fail_once(registry.reader("primary"))

        def probed_twice() -> bool:  # several back-offs, each ending in a probe in the background
            assert registry.reader("primary") is registry.get("primary")
            return len([r for r in routing_records(caplog) if r.levelno == logging.DEBUG]) >= 2

        assert wait_until(probed_twice)
        records = routing_records(caplog)
        assert [r.levelno for r in records].count(logging.WARNING) == 1
        still_down = [r for r in records if r.levelno == logging.DEBUG]
        assert len(still_down) >= 2
        assert still_down[0].getMessage().startswith("replica 'replica' is still down (OperationalError")
        registry.close()
        assert not [t for t in threading.enumerate() if t.name.startswith("dbregistry probe")]

    def test_check_replicas_probes_now_back_off_or_not(self, tmp_path: Path) -> None:
        registry = pair(tmp_path, sqlite_url(tmp_path / "missing" / "replica.db"))
        fail_once(registry.reader("primary"))
        statuses = registry.check_replicas()
        assert not statuses["replica"].up
        (tmp_path / "missing").mkdir()
        statuses = registry.check_replicas("primary")
        assert statuses["replica"].up
        assert statuses["replica"].reason is None
        assert statuses["replica"].lag_seconds is None  # SQLite: no lag to measure
        assert registry.reader("primary") is registry.get("replica")
        assert registry.check_replicas("replica") == {}
        registry.close()

    def test_unreachable_postgres_marks_down_without_showing_the_password(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        registry = pair(tmp_path, f"postgresql://app:{SECRET}@127.0.0.1:1/app")
        engine = registry.reader("primary")
        assert engine is registry.get("replica")
        with pytest.raises(Exception, match="Connection refused"), engine.connect():
            pass
        assert registry.reader("primary") is registry.get("primary")
        [warning] = routing_records(caplog, logging.WARNING)
        assert "replica 'replica' (postgresql://app:***@127.0.0.1:1/app) is down" in warning.getMessage()
        assert "Connection refused" in warning.getMessage()
        assert SECRET not in caplog.text
        registry.close()

    def test_async_unreachable_postgres_marks_down(self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        """asyncpg's refused connection is an OSError that SQLAlchemy's handle_error never sees."""
        registry = pair(tmp_path, f"postgresql://app:{SECRET}@127.0.0.1:1/app")

        async def main() -> None:
            engine = registry.async_reader("primary")
            assert engine is registry.get_async("replica")
            with pytest.raises(OSError, match="Connect call failed"):
                async with engine.connect():
                    pass
            assert registry.async_reader("primary") is registry.get_async("primary")
            await registry.aclose()

        asyncio.run(main())
        [warning] = routing_records(caplog, logging.WARNING)
        assert "is down: ConnectionRefusedError" in warning.getMessage()
        assert SECRET not in caplog.text

    def test_async_back_off_and_probe(self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.INFO, "dbregistry.routing")
        registry = pair(tmp_path, sqlite_url(tmp_path / "missing" / "replica.db"))
        registry.configure_routing(backoff=0.2)

        async def main() -> None:
            with pytest.raises(Exception, match="unable to open database file"):
                async with registry.async_reader("primary").connect():
                    pass
            assert registry.async_reader("primary") is registry.get_async("primary")
            (tmp_path / "missing").mkdir()
            deadline = time.monotonic() + 30  # a hang, not speed: the probe runs in the background
            while registry.async_reader("primary") is not registry.get_async("replica"):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            statuses = await registry.acheck_replicas()
            assert statuses["replica"].up
            await registry.aclose()

        asyncio.run(main())
        assert [r.levelno for r in routing_records(caplog)] == [logging.WARNING, logging.INFO]

    def test_lag_limit_on_sqlite_is_ignored_with_one_warning(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        registry = pair(tmp_path, replica_max_lag_seconds=0.5)
        for _ in range(10):
            assert registry.reader("primary") is registry.get("replica")
        [warning] = routing_records(caplog, logging.WARNING)
        assert warning.getMessage() == (
            "replica 'replica': replica_max_lag_seconds is only measured on PostgreSQL; ignored"
        )
        registry.close()

    def test_threads_reading_while_the_replica_goes_down(self, tmp_path: Path) -> None:
        registry = pair(tmp_path, sqlite_url(tmp_path / "missing" / "replica.db"))
        primary, replica = registry.get("primary"), registry.reader("primary")
        seen: list[set[int]] = []
        errors: list[BaseException] = []
        start = threading.Barrier(9)

        def read() -> None:
            mine: set[int] = set()
            start.wait()
            try:
                for _ in range(5000):
                    mine.add(id(registry.reader("primary")))
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)
            seen.append(mine)

        threads = [threading.Thread(target=read) for _ in range(8)]
        for t in threads:
            t.start()
        start.wait()
        fail_once(replica)
        for t in threads:
            t.join()
        assert not errors
        assert set().union(*seen) <= {id(primary), id(replica)}
        assert all(registry.reader("primary") is primary for _ in range(100))
        registry.close()

    def test_close_waits_for_the_probe_in_flight(self, tmp_path: Path) -> None:
        registry = pair(tmp_path, sqlite_url(tmp_path / "missing" / "replica.db"))
        registry.configure_routing(backoff=0.01)
        fail_once(registry.reader("primary"))
        time.sleep(0.02)
        registry.reader("primary")  # starts a probe thread
        registry.close()
        assert not [t for t in threading.enumerate() if t.name.startswith("dbregistry probe")]
