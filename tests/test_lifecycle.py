"""Shutdown: the exit and signal hook, the ASGI lifespan, and fork safety."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from servers import PostgresServer
from sqlalchemy import text

from dbregistry import Registry, ShutdownHook


def sqlite_registry() -> Registry:
    return Registry.from_dict({"databases": {"dev": {"url": "sqlite://", "pool_class": "StaticPool"}}}, environ={})


@pytest.fixture
def restore_signals() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


@pytest.mark.usefixtures("restore_signals")
class TestHook:
    def test_twice_gives_the_same_handle_and_uninstall_restores(self) -> None:
        before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        registry = sqlite_registry()
        hook = registry.install_shutdown_hook()
        assert isinstance(hook, ShutdownHook)
        assert hook.installed
        assert registry.install_shutdown_hook() is hook
        assert hook.signals == (signal.SIGTERM, signal.SIGINT)
        assert {sig: signal.getsignal(sig) for sig in before} != before  # its handler is in place
        hook.uninstall()
        hook.uninstall()  # idempotent
        assert not hook.installed
        assert {sig: signal.getsignal(sig) for sig in before} == before
        again = registry.install_shutdown_hook()
        assert again is not hook
        again.uninstall()
        registry.close()

    def test_signal_closes_then_calls_the_previous_handler(self) -> None:
        seen: list[tuple[int, bool]] = []
        registry = sqlite_registry()
        with registry.get("dev").connect() as conn:
            conn.execute(text("select 1"))

        def previous(signum: int, frame: FrameType | None) -> None:
            seen.append((signum, registry.closed))

        signal.signal(signal.SIGUSR1, previous)
        hook = registry.install_shutdown_hook(signals=[signal.SIGUSR1])
        signal.raise_signal(signal.SIGUSR1)
        assert seen == [(signal.SIGUSR1, True)]  # closed first, then handed on
        hook.uninstall()
        assert signal.getsignal(signal.SIGUSR1) is previous

    def test_an_ignored_signal_stays_ignored(self) -> None:
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        registry = sqlite_registry()
        hook = registry.install_shutdown_hook(signals=[signal.SIGUSR2])
        assert hook.signals == ()
        assert signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN
        signal.raise_signal(signal.SIGUSR2)
        assert not registry.closed
        hook.uninstall()
        registry.close()

    def test_a_later_handler_is_left_in_place_by_uninstall(self) -> None:
        registry = sqlite_registry()
        hook = registry.install_shutdown_hook(signals=[signal.SIGUSR1])

        def later(signum: int, frame: FrameType | None) -> None:
            pass

        signal.signal(signal.SIGUSR1, later)
        hook.uninstall()
        assert signal.getsignal(signal.SIGUSR1) is later
        registry.close()

    def test_signals_need_the_main_thread(self) -> None:
        registry = sqlite_registry()
        errors: list[BaseException] = []
        hooks: list[ShutdownHook] = []

        def install() -> None:
            try:
                registry.install_shutdown_hook()
            except RuntimeError as e:
                errors.append(e)
            hooks.append(registry.install_shutdown_hook(signals=()))

        thread = threading.Thread(target=install)
        thread.start()
        thread.join()
        assert "must run in the main thread" in str(errors[0])
        assert hooks[0].signals == ()
        hooks[0].uninstall()
        registry.close()


def run_child(tmp_path: Path, script: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    path = tmp_path / "child.py"
    path.write_text(textwrap.dedent(script), encoding="utf-8")
    return subprocess.Popen(
        [sys.executable, str(path)],
        cwd=tmp_path,
        env={**os.environ, **(env or {})},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_atexit_closes_the_registry(tmp_path: Path) -> None:
    child = run_child(
        tmp_path,
        """
        import atexit
        from dbregistry import Registry

        registry = Registry.from_dict({"databases": {"dev": {"url": "sqlite://"}}}, environ={})
        registry.get("dev").connect().close()
        # Registered before the hook, so it runs after it (atexit is last in, first out).
        atexit.register(lambda: print("closed at exit:", registry.closed, flush=True))
        registry.install_shutdown_hook()
        print("running:", registry.closed, flush=True)
        """,
    )
    out, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    assert out.splitlines() == ["running: False", "closed at exit: True"]


CHILD_HOLDING_CONNECTIONS = """
    import os, signal, sys, time
    from sqlalchemy import text
    from dbregistry import Registry

    mode = sys.argv[1] if len(sys.argv) > 1 else os.environ["MODE"]
    handled = []
    if mode == "handler":
        def previous(signum, frame):
            handled.append(signum)
        signal.signal(signal.SIGTERM, previous)

    registry = Registry.from_dict({"databases": {"primary": {"url": os.environ["URL"], "pool_size": 3}}}, environ={})
    engine = registry.get("primary")
    held = [engine.connect() for _ in range(3)]
    for conn in held:
        conn.execute(text("select 1"))
    for conn in held:
        conn.close()  # back into the pool: three open pooled connections
    registry.install_shutdown_hook()
    print("ready", flush=True)
    while not handled:
        time.sleep(0.01)
    print("handled", handled, "closed", registry.closed, flush=True)
    sys.stdin.read()  # stay alive until the parent has looked at the server
"""


@pytest.mark.postgres
def test_sigterm_closes_pooled_connections_and_dies_as_without_the_hook(tmp_path: Path, pg: PostgresServer) -> None:
    child = run_child(tmp_path, CHILD_HOLDING_CONNECTIONS, {"URL": pg.url_string(), "MODE": "default"})
    assert child.stdout is not None
    assert child.stdout.readline() == "ready\n"
    assert pg.wait_for_connections(3) == 3
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGTERM, err  # killed by SIGTERM, as without the hook
    assert out == ""
    assert pg.wait_for_connections(0) == 0


@pytest.mark.postgres
def test_sigterm_closes_before_calling_the_previous_handler(tmp_path: Path, pg: PostgresServer) -> None:
    """The previous handler keeps the process alive: the connections are gone while it still runs."""
    child = run_child(tmp_path, CHILD_HOLDING_CONNECTIONS, {"URL": pg.url_string(), "MODE": "handler"})
    assert child.stdout is not None
    assert child.stdout.readline() == "ready\n"
    assert pg.wait_for_connections(3) == 3
    child.send_signal(signal.SIGTERM)
    assert child.stdout.readline() == f"handled [{int(signal.SIGTERM)}] closed True\n"
    assert pg.wait_for_connections(0) == 0
    assert child.poll() is None  # still running: the hook closed them, not the process ending
    _, err = child.communicate("", timeout=30)
    assert child.returncode == 0, err


def test_sigint_still_raises_keyboard_interrupt(tmp_path: Path) -> None:
    child = run_child(
        tmp_path,
        """
        import signal, time
        from dbregistry import Registry

        # Python's own SIGINT handler, even when the parent left SIGINT ignored for its children.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        registry = Registry.from_dict({"databases": {"dev": {"url": "sqlite://"}}}, environ={})
        registry.get("dev").connect().close()
        registry.install_shutdown_hook()
        try:
            # Inside the try: the parent sends SIGINT as soon as it reads this line.
            print("ready", flush=True)
            time.sleep(30)
        except KeyboardInterrupt:
            print("KeyboardInterrupt, closed:", registry.closed, flush=True)
            raise
        """,
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "ready\n"
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=30)
    assert out == "KeyboardInterrupt, closed: True\n"
    assert "KeyboardInterrupt" in err
    assert child.returncode == -signal.SIGINT  # Python's own exit for an unhandled KeyboardInterrupt


class TestLifespan:
    def test_closes_on_exit(self) -> None:
        registry = sqlite_registry()

        async def main() -> None:
            async with registry.lifespan(object()):
                async with registry.get_async("dev").connect() as conn:
                    await conn.execute(text("select 1"))
                assert not registry.closed
            assert registry.closed

        asyncio.run(main())

    def test_closes_when_the_app_fails(self) -> None:
        registry = sqlite_registry()

        async def main() -> None:
            async with registry.lifespan(None):
                registry.get("dev")
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            asyncio.run(main())
        assert registry.closed

    @pytest.mark.postgres
    def test_no_connection_left_on_the_server(self, pg: PostgresServer) -> None:
        registry = Registry.from_dict({"databases": {"primary": {"url": pg.url_string()}}}, environ={})

        async def main() -> None:
            async with registry.lifespan(None):
                engine = registry.get_async("primary")
                conns = [await engine.connect() for _ in range(3)]
                for conn in conns:
                    await conn.execute(text("select 1"))
                    await conn.close()
                assert pg.connections() == 3

        asyncio.run(main())
        assert pg.wait_for_connections(0) == 0


@pytest.mark.postgres
def test_fork_child_never_uses_the_parents_connections(pg: PostgresServer) -> None:
    registry = Registry.from_dict({"databases": {"primary": {"url": pg.url_string(), "pool_size": 2}}}, environ={})
    engine = registry.get("primary")
    warm = [engine.connect() for _ in range(2)]
    parent_backends = {conn.execute(text("select pg_backend_pid()")).scalar_one() for conn in warm}
    for conn in warm:
        conn.close()
    assert registry.stats()["primary"].checked_in == 2

    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a process with threads; the child here only talks to PostgreSQL.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child
        status = 1
        try:
            os.close(read_end)
            report: dict[str, Any] = {"idle_after_fork": registry.stats()["primary"].checked_in}
            with engine.connect() as conn:
                report["backend"] = conn.execute(text("select pg_backend_pid()")).scalar_one()
            registry.close()
            os.write(write_end, json.dumps(report).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child_report = json.loads(pipe.read())
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_report["idle_after_fork"] == 0  # the child dropped the parent's pool
    assert child_report["backend"] not in parent_backends  # and opened its own connection

    # The parent's pooled connections were neither used nor closed by the child.
    with engine.connect() as conn:
        assert conn.execute(text("select pg_backend_pid()")).scalar_one() in parent_backends
    assert pg.wait_for_connections(2) == 2
    registry.close()
    assert pg.wait_for_connections(0) == 0
