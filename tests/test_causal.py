"""read_your_writes without a server: the setting, its validation, tokens and causal blocks."""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dbregistry import ConfigError, Registry
from dbregistry._causal import (
    CURRENT,
    LSN,
    TIME,
    CausalBlock,
    Mark,
    PrimaryPositions,
    decode,
    encode,
    key_of,
    writes,
)
from dbregistry._durations import normalize_setting


@pytest.fixture(autouse=True)
def _own_context() -> Any:
    """Each test starts with no token and leaves none behind."""
    reset = CURRENT.set(None)
    yield
    CURRENT.reset(reset)


def pair(tmp_path: Path, **primary: Any) -> dict[str, Any]:
    return {
        "databases": {
            "primary": {"url": f"sqlite:///{tmp_path / 'p.db'}", **primary},
            "replica": {"url": f"sqlite:///{tmp_path / 'r.db'}", "replica_of": "primary"},
        }
    }


class TestSetting:
    @pytest.mark.parametrize(
        ("given", "normalized"),
        [(False, "off"), ("off", "off"), ("LSN", "lsn"), ("2s", "2s"), ("500ms", "500ms"), ("1m", "1m"), (2, "2s")],
    )
    def test_normalized(self, given: Any, normalized: str) -> None:
        assert normalize_setting(given) == normalized

    def test_postgresql_with_replicas_defaults_to_lsn(self) -> None:
        registry = Registry.from_dict(
            {
                "databases": {
                    "primary": {"url": "postgresql://app:pw@db/app"},
                    "replica": {"url": "postgresql://app:pw@db2/app", "replica_of": "primary"},
                    "alone": {"url": "postgresql://app:pw@db3/app"},
                }
            },
            environ={},
        )
        assert {name: p.kind for name, p in registry._router._positions.items()} == {"primary": LSN}

    def test_sqlite_has_none_by_default_and_a_duration_when_declared(self, tmp_path: Path) -> None:
        assert Registry.from_dict(pair(tmp_path), environ={})._router._positions == {}
        positions = Registry.from_dict(pair(tmp_path, read_your_writes="2s"), environ={})._router._positions
        assert positions["primary"].kind == TIME
        assert positions["primary"].window_ms == 2000

    def test_off_unquoted_in_yaml(self, tmp_path: Path) -> None:
        path = tmp_path / "databases.yaml"
        path.write_text(
            "databases:\n"
            "  primary:\n"
            "    url: postgresql://app:pw@db/app\n"
            "    read_your_writes: off\n"
            "  replica:\n"
            "    url: postgresql://app:pw@db2/app\n"
            "    replica_of: primary\n"
        )
        registry = Registry.from_yaml(path, environ={})
        assert registry["primary"].read_your_writes == "off"
        assert registry._router._positions == {}

    def test_accepted_without_replicas_and_does_nothing(self, tmp_path: Path) -> None:
        registry = Registry.from_dict(
            {"databases": {"alone": {"url": f"sqlite:///{tmp_path / 'a.db'}", "read_your_writes": "2s"}}}, environ={}
        )
        assert registry["alone"].read_your_writes == "2s"
        assert registry._router._positions == {}

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            ("-2s", "must be lsn, off or a duration above 0 such as 2s, got '-2s'"),
            ("0s", "'0s' sends no read to the primary after a write; use off to turn read_your_writes off"),
            ("soon", "must be lsn, off or a duration such as 2s, got 'soon'"),
            (True, "must be lsn, off or a duration such as 2s, got True"),
        ],
    )
    def test_invalid_values_name_the_file_and_line(self, tmp_path: Path, value: Any, message: str) -> None:
        path = tmp_path / "databases.yaml"
        shown = {True: "true"}.get(value, value) if isinstance(value, bool) else f"'{value}'"
        path.write_text(
            "databases:\n"
            "  primary:\n"
            "    url: postgresql://app:pw@db/app\n"
            f"    read_your_writes: {shown}\n"
            "  replica:\n"
            "    url: postgresql://app:pw@db2/app\n"
            "    replica_of: primary\n"
        )
        with pytest.raises(ConfigError) as caught:
            Registry.from_yaml(path, environ={})
        [problem] = caught.value.problems
        assert problem.path == "databases.primary.read_your_writes"
        assert problem.message == message
        assert problem.line == 4
        assert problem.file == str(path)

    def test_invalid_value_from_a_variable_names_it(self) -> None:
        environ = {
            "DBREGISTRY_DATABASES__PRIMARY__URL": "postgresql://app:pw@db/app",
            "DBREGISTRY_DATABASES__PRIMARY__READ_YOUR_WRITES": "-2s",
            "DBREGISTRY_DATABASES__REPLICA__URL": "postgresql://app:pw@db2/app",
            "DBREGISTRY_DATABASES__REPLICA__REPLICA_OF": "primary",
        }
        with pytest.raises(ConfigError) as caught:
            Registry.from_env(environ=environ, env_file=None)
        [problem] = caught.value.problems
        assert problem.path == "databases.primary.read_your_writes"
        assert problem.source == "DBREGISTRY_DATABASES__PRIMARY__READ_YOUR_WRITES"
        assert "pw" not in str(caught.value)

    def test_lsn_on_sqlite(self, tmp_path: Path) -> None:
        message = (
            "lsn follows PostgreSQL's WAL positions; this URL is sqlite: "
            "use a duration such as 2s (reads go to the primary that long after a write), or off"
        )
        with pytest.raises(ConfigError, match=re.escape(f"databases.primary.read_your_writes: {message}")):
            Registry.from_dict(pair(tmp_path, read_your_writes="lsn"), environ={})

    def test_on_a_replica(self, tmp_path: Path) -> None:
        config = pair(tmp_path)
        config["databases"]["replica"]["read_your_writes"] = "2s"
        message = "declare read_your_writes on the primary (primary): it follows the writes made there"
        with pytest.raises(ConfigError, match=re.escape(f"databases.replica.read_your_writes: {message}")):
            Registry.from_dict(config, environ={})


class TestToken:
    def test_round_trip_of_two_primaries(self) -> None:
        marks = {key_of("a"): Mark(LSN, 0x1_0000_0028), key_of("b"): Mark(TIME, int(time.time() * 1000) - 5)}
        token = encode(marks)
        assert token is not None
        assert token.startswith("v1.")
        assert re.fullmatch(r"v1\.[A-Za-z0-9_-]+", token)  # cookie- and header-safe
        assert len(token) <= 40
        decoded = decode(token)
        assert decoded is not None
        assert {k: (m.kind, m.value) for k, m in decoded.items()} == {k: (m.kind, m.value) for k, m in marks.items()}

    def test_names_do_not_appear(self) -> None:
        token = encode({key_of("billing-primary"): Mark(LSN, 1)})
        assert token is not None
        assert "billing" not in token

    @pytest.mark.parametrize(
        ("token", "logged"),
        [
            ("hello", "causal token ignored: not a v1 token (5 characters)"),
            ("v2.AAAA", "causal token ignored: not a v1 token (7 characters)"),
            ("v1.!!!!", "causal token ignored: 0 bytes, not a whole number of entries"),
            ("v1.AAAA", "causal token ignored: 3 bytes, not a whole number of entries"),
            ("v1." + "A" * 500, "causal token ignored: 503 characters, longer than any token (283)"),
        ],
    )
    def test_malformed_tokens_are_logged_never_raised(
        self, token: str, logged: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        with caplog.at_level(logging.INFO, logger="dbregistry.routing"):
            assert decode(token) is None
            with CausalBlock(token) as block:
                assert block.token() is None
        assert [r.getMessage() for r in caplog.records] == [logged, logged]

    def test_unknown_kind(self, caplog: pytest.LogCaptureFixture) -> None:
        token = encode({key_of("a"): Mark(7, 1)})
        assert token is not None
        with caplog.at_level(logging.INFO, logger="dbregistry.routing"):
            assert decode(token) is None
        assert caplog.messages == ["causal token ignored: an entry of an unknown kind"]

    def test_a_write_time_in_the_future_counts_as_now(self) -> None:
        future = int(time.time() * 1000) + 3_600_000
        decoded = decode(encode({key_of("a"): Mark(TIME, future)}) or "")
        assert decoded is not None
        assert decoded[key_of("a")].value <= time.time() * 1000

    def test_a_position_beyond_the_primary_is_held_only_until_the_primary_is_asked(self) -> None:
        positions = PrimaryPositions("a", "lsn")
        positions.primary_position = 1000
        decoded = decode(encode({key_of("a"): Mark(LSN, 10**12)}) or "")
        assert decoded is not None
        mark = decoded[key_of("a")]
        assert positions.needed(mark) == 10**12
        assert positions.want_primary  # the next refresh asks the primary
        positions._primary_at("2000", time.monotonic())
        assert positions.needed(mark) == 2000  # clamped to what the primary had reached when asked
        own = Mark(LSN, 10**12)  # a position this process saw committed is never clamped
        assert positions.needed(own) == 10**12


class TestBlocks:
    def test_no_write_no_token(self, tmp_path: Path) -> None:
        registry = Registry.from_dict(pair(tmp_path, read_your_writes="2s"), environ={})
        with registry.reader("primary").connect() as conn:
            conn.exec_driver_sql("select 1")
        assert registry.causal_token() is None
        with registry.causal() as block:
            assert block.token() is None
        assert registry.causal_token() is None

    def test_the_blocks_writes_stay_in_the_enclosing_context(self, tmp_path: Path) -> None:
        registry = Registry.from_dict(pair(tmp_path, read_your_writes="2s"), environ={})
        given = encode({key_of("elsewhere"): Mark(LSN, 5)})
        with registry.causal(given) as block:
            with registry.writer("primary").begin() as conn:
                conn.exec_driver_sql("create table if not exists t (x int)")
            inner = block.token()
            assert registry.causal_token() == inner
        outer = decode(registry.causal_token() or "")
        assert outer is not None
        # the block's own write stays; the token it was given belonged to the block alone
        assert list(outer) == [key_of("primary")]
        assert inner is not None
        assert len(decode(inner) or {}) == 2

    def test_time_mode_sends_reads_to_the_primary_for_the_window(self, tmp_path: Path) -> None:
        for name in ("p.db", "r.db"):
            sqlite3.connect(tmp_path / name).close()
        registry = Registry.from_dict(pair(tmp_path, read_your_writes="30s"), environ={})
        replica, primary = registry.get("replica"), registry.get("primary")
        with registry.causal():
            assert registry.reader("primary") is replica
            with registry.writer("primary").connect() as conn:
                conn.exec_driver_sql("create table if not exists t (x int)")
                conn.commit()
            assert registry.reader("primary") is primary
            assert registry.read_your_writes_fallbacks() == {"primary": 1}
            box = CURRENT.get()
            assert box is not None
            box.marks[key_of("primary")].value -= 30_000  # the window has passed
            assert registry.reader("primary") is replica
        assert registry.causal_token() is not None  # the block's write stays in the enclosing context
        registry.close()

    def test_async_blocks(self, tmp_path: Path) -> None:
        async def main() -> str | None:
            registry = Registry.from_dict(pair(tmp_path, read_your_writes="2s"), environ={})
            async with registry.causal() as block:
                async with registry.async_writer("primary").begin() as conn:
                    await conn.exec_driver_sql("create table if not exists t (x int)")
                assert registry.async_reader("primary") is registry.get_async("primary")
                token = block.token()
            await registry.aclose()
            return token

        assert asyncio.run(main()) is not None

    def test_tasks_and_threads_without_a_block_are_separate(self, tmp_path: Path) -> None:
        registry = Registry.from_dict(pair(tmp_path, read_your_writes="30s"), environ={})

        def write() -> str | None:
            with registry.writer("primary").begin() as conn:
                conn.exec_driver_sql("create table if not exists t (x int)")
            return registry.causal_token()

        async def main() -> tuple[str | None, str | None, str | None]:
            written = asyncio.Event()

            async def writer() -> str | None:
                token = await asyncio.to_thread(write)
                written.set()
                return token

            async def other() -> str | None:
                await written.wait()
                return registry.causal_token()

            first, second = await asyncio.gather(writer(), other())
            return first, second, registry.causal_token()

        wrote, other, parent = asyncio.run(main())
        assert wrote is not None
        assert (other, parent) == (None, None)
        thread = threading.Thread(target=write)
        thread.start()
        thread.join()
        assert registry.causal_token() is None
        registry.close()


class TestWhatWrites:
    @pytest.mark.parametrize(
        ("statement", "wrote"),
        [
            ("select 1", False),
            ("  /* hi */ SELECT 1", False),
            ("-- a comment\nshow server_version", False),
            ("insert into t values (1)", True),
            ("update t set x = 1", True),
            ("with x as (select 1) select * from x", False),
            ("with x as (delete from t returning *) select * from x", True),
            ("create table t (x int)", True),
            ("set search_path to public", False),
            ("call do_things()", True),
        ],
    )
    def test_sql_text(self, statement: str, wrote: bool) -> None:
        assert writes(None, statement) is wrote
