"""dbregistry._metrics and the hooks it uses: Registry.add_engine_listener, Registry.read_fallbacks, observe_health."""

from __future__ import annotations

import os
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from servers import PostgresServer, free_port

from dbregistry import Registry
from dbregistry._metrics import BUCKETS, Histogram, SampleBuffer, meters_of


def sqlite_registry(tmp_path: Path, **options: Any) -> Registry:
    url = f"sqlite:///{tmp_path / 'metrics.db'}"
    return Registry.from_dict({"databases": {"d": {"url": url, "pool_class": "QueuePool", **options}}}, environ={})


class TestEngineListener:
    def test_sees_engines_built_before_and_after_once_each(self, tmp_path: Path) -> None:
        seen: list[tuple[str, str, bool]] = []
        with sqlite_registry(tmp_path) as registry:
            registry.get("d")
            registry.add_engine_listener(lambda name, mode, direct, engine: seen.append((name, mode, direct)))
            assert seen == [("d", "sync", False)]
            registry.get("d")
            registry.get("d", direct=True)  # no pooler: the same engine, nothing new built
            assert seen == [("d", "sync", False)]

    def test_an_async_engine_and_the_default_under_its_name(self, tmp_path: Path) -> None:
        seen: list[tuple[str, str, bool]] = []
        registry = Registry.from_dict(
            {"default": "d", "databases": {"d": {"url": f"sqlite+aiosqlite:///{tmp_path / 'a.db'}"}}}, environ={}
        )
        registry.add_engine_listener(lambda name, mode, direct, engine: seen.append((name, mode, direct)))
        registry.get_async()
        registry.get_async("d")
        assert seen == [("d", "async", False)]
        registry.close()


class TestPoolFigures:
    def test_never_negative_while_sqlalchemy_s_overflow_is(self, tmp_path: Path) -> None:
        with sqlite_registry(tmp_path, pool_size=5) as registry:
            meters = meters_of(registry)
            engine = registry.get("d")
            with engine.connect():
                assert engine.pool.overflow() == -4  # type: ignore[attr-defined]
                (pool,) = meters.pools()
                figures = pool.figures()
                assert (figures.used, figures.idle, figures.max, figures.idle_max, figures.idle_min) == (1, 0, 15, 5, 0)
                assert (figures.pending, figures.timeouts) == (0, 0)

    def test_a_pool_of_size_zero_is_unbounded(self, tmp_path: Path) -> None:
        with sqlite_registry(tmp_path, pool_size=0) as registry:
            meters = meters_of(registry)
            registry.get("d").connect().close()
            assert meters.pools()[0].figures().max is None

    def test_the_figures_follow_the_engine_through_dispose(self, tmp_path: Path) -> None:
        with sqlite_registry(tmp_path) as registry:
            meters = meters_of(registry)
            engine = registry.get("d")
            engine.connect().close()
            engine.dispose()
            with engine.connect():
                assert meters.pools()[0].figures().used == 1

    def test_32_threads_lose_no_sample_and_no_pending_count(self, tmp_path: Path) -> None:
        with sqlite_registry(tmp_path, pool_size=4, max_overflow=4) as registry:
            meters = meters_of(registry)
            meters.add_pool_listener(lambda pool: pool.keep_histograms())
            engine = registry.get("d")

            def work() -> None:
                for _ in range(200):
                    with engine.connect():
                        pass

            threads = [threading.Thread(target=work) for _ in range(32)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            (pool,) = meters.pools()
            histograms = pool.histograms
            assert histograms is not None
            for kind in ("wait_time", "use_time"):
                buckets, _ = histograms[kind].snapshot()
                assert buckets[-1] == ("+Inf", 32 * 200), kind
            assert pool.figures().pending == 0


class TestHistogram:
    def test_cumulative_buckets_and_sum(self) -> None:
        histogram = Histogram()
        for value in (0.0002, 0.2, 0.2, 100.0):
            histogram.observe(value)
        buckets, total = histogram.snapshot()
        assert buckets[0] == ("0.0005", 1)
        assert dict(buckets)["0.25"] == 3
        assert buckets[-2] == (repr(BUCKETS[-1]), 3)
        assert buckets[-1] == ("+Inf", 4)
        assert total == pytest.approx(100.4002)

    def test_a_sample_on_a_bound_is_counted_in_that_bucket(self) -> None:
        histogram = Histogram()
        histogram.observe(0.1)
        assert dict(histogram.snapshot()[0])["0.1"] == 1
        assert dict(histogram.snapshot()[0])["0.05"] == 0

    def test_the_buffer_folds_itself_at_its_limit(self) -> None:
        buffer = SampleBuffer({"wait_time": Histogram()}, limit=3)
        buffer.add("wait_time", 0.1)
        buffer.add("wait_time", 0.1)
        assert buffer.histograms["wait_time"].snapshot()[0][-1] == ("+Inf", 0)
        buffer.add("wait_time", 0.1)
        assert buffer.histograms["wait_time"].snapshot()[0][-1] == ("+Inf", 3)


@pytest.mark.postgres
def test_read_fallbacks_counts_reader_calls_that_found_no_healthy_replica(pg: PostgresServer) -> None:
    refused = pg.url().set(port=free_port()).render_as_string(hide_password=False)
    registry = Registry.from_dict(
        {
            "databases": {
                "primary": {"url": pg.url_string()},
                "gone": {"url": refused, "replica_of": "primary"},
                "alone": {"url": pg.url_string()},
            }
        },
        environ={},
    )
    with registry:
        registry.reader("primary")  # the replica is not known to be down yet: no fallback
        assert registry.read_fallbacks() == {"primary": 0}
        registry.check_replicas()
        registry.reader("primary")
        registry.reader("alone")  # no replica declared: its own reader, not a fallback
        registry.reader("gone")
        assert registry.read_fallbacks() == {"primary": 1}


def test_health_latency_is_seen_for_each_database_up(tmp_path: Path) -> None:
    with sqlite_registry(tmp_path) as registry:
        meters = meters_of(registry)
        meters.health.keep_histograms()
        reports = registry.health(timeout=5)
        latency = meters.health.snapshot()[("d", "sync")]
        buckets, total = latency.snapshot()
        assert buckets[-1] == ("+Inf", 1)
        latency_ms = reports["d"].latency_ms
        assert latency_ms is not None
        assert total == pytest.approx(latency_ms / 1000)


def test_a_failing_recorder_does_not_fail_the_checkout(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def broken(kind: str, seconds: float) -> None:
        raise RuntimeError("backend down")

    with sqlite_registry(tmp_path) as registry:
        meters = meters_of(registry)
        meters.add_pool_listener(lambda pool: pool.add_recorder(broken))
        with registry.get("d").connect() as conn:
            assert conn.exec_driver_sql("select 1").scalar() == 1
    assert [r.getMessage() for r in caplog.records if r.name == "dbregistry.metrics"] == [
        "d: recording create_time failed",
        "d: recording wait_time failed",
        "d: recording use_time failed",
    ]


def test_a_forked_child_forgets_the_parent_s_checkouts_under_way(tmp_path: Path) -> None:
    with sqlite_registry(tmp_path, pool_size=1, max_overflow=0, pool_timeout=10) as registry:
        meters = meters_of(registry)
        engine = registry.get("d")
        held = engine.connect()
        waiter = threading.Thread(target=lambda: engine.connect().close())
        waiter.start()
        (pool,) = meters.pools()
        deadline = time.monotonic() + 30  # a hang, not speed
        while pool.figures().pending == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads, on Python 3.12+
            pid = os.fork()
        if pid == 0:
            os._exit(0 if pool.figures().pending == 0 else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert pool.figures().pending == 1  # the parent's own thread is still waiting
        held.close()
        waiter.join(10)
        assert pool.figures().pending == 0
