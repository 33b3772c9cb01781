"""Closing the registry when the process ends: the shutdown hook and the ASGI lifespan.

``registry.install_shutdown_hook()`` closes every engine at interpreter exit
and on SIGTERM / SIGINT, then hands the signal on: a Python handler that was
installed before is called; where there was none the signal's default action
runs, so the process ends exactly as it would have (killed by SIGTERM, exit
status -15). A signal that was ignored stays ignored and untouched.

``registry.lifespan`` is for ASGI servers, which handle signals themselves:
``FastAPI(lifespan=registry.lifespan)`` closes every engine, in the app's event
loop, when the app shuts down, and reopens the registry when the app starts
(again): the same app can run several times in one process, each run with
engines of its own event loop.

>>> from dbregistry import Registry
>>> registry = Registry.from_dict({"databases": {"dev": {"url": "sqlite://"}}}, environ={})
>>> hook = registry.install_shutdown_hook()
>>> hook is registry.install_shutdown_hook()
True
>>> hook.uninstall()
>>> registry.close()
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import signal
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from types import FrameType
from typing import TYPE_CHECKING, Any

from ._errors import CloseError
from ._fork import reset_after_fork
from ._secrets import describe_error
from ._waits import check_seconds

if TYPE_CHECKING:
    from ._registry import Registry

__all__ = ["DEFAULT_SIGNALS", "ShutdownHook", "install_shutdown_hook", "lifespan"]

logger = logging.getLogger("dbregistry")

DEFAULT_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)

Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None

_HOOKS: weakref.WeakKeyDictionary[Registry, ShutdownHook] = weakref.WeakKeyDictionary()


class _HooksLock:
    """The lock of `_HOOKS`, new in a forked child: one held by a thread of the parent would never be released."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        reset_after_fork(self)

    def _after_fork_in_child(self) -> None:
        self.lock = threading.Lock()


_HOOKS_LOCK = _HooksLock()


class ShutdownHook:
    """The handle `Registry.install_shutdown_hook` returns; ``uninstall()`` puts everything back.

    >>> hook = registry.install_shutdown_hook()    # doctest: +SKIP
    >>> hook.installed, hook.signals                 # doctest: +SKIP
    (True, (<Signals.SIGTERM: 15>, <Signals.SIGINT: 2>))
    >>> hook.uninstall()                             # doctest: +SKIP
    """

    def __init__(self, registry: Registry, signals: Iterable[int], timeout: float) -> None:
        self._registry = registry
        self._wanted = tuple(signal.Signals(s) for s in signals)
        self._timeout = check_seconds(timeout, "timeout")  # an infinite join would raise OverflowError in the handler
        self._previous: dict[signal.Signals, Handler] = {}
        self._installed = False

    @property
    def installed(self) -> bool:
        return self._installed

    @property
    def signals(self) -> tuple[signal.Signals, ...]:
        """The signals this hook handles (an ignored signal is left alone and not listed)."""
        return tuple(self._previous)

    def _install(self) -> None:
        if self._wanted and threading.current_thread() is not threading.main_thread():
            raise RuntimeError(
                "install_shutdown_hook() must run in the main thread (Python sets signal handlers only there); "
                "pass signals=() for the exit hook alone"
            )
        for sig in self._wanted:
            previous = signal.getsignal(sig)
            if previous == signal.SIG_IGN:
                continue
            self._previous[sig] = previous
            signal.signal(sig, self._on_signal)
        atexit.register(self._at_exit)
        self._installed = True

    def uninstall(self) -> None:
        """Remove the exit hook and restore the signal handlers that were there before; idempotent.

        A handler someone installed after this hook is left in place.
        """
        if not self._installed:
            return
        atexit.unregister(self._at_exit)
        for sig, previous in self._previous.items():
            if signal.getsignal(sig) == self._on_signal:
                signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._installed = False
        with _HOOKS_LOCK.lock:
            if _HOOKS.get(self._registry) is self:
                del _HOOKS[self._registry]

    def _at_exit(self) -> None:
        self._close_quietly()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        if self._installed:
            logger.info("%s: closing every database engine before handing the signal on", sig.name)
            self._close_for_signal()
        previous = self._previous.get(sig, signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
            return
        # No Python handler before us: run the default action, which ends the process
        # the way the signal would have (status -15 for SIGTERM).
        signal.signal(sig, signal.SIG_DFL)
        signal.raise_signal(sig)

    def _close_for_signal(self) -> None:
        if loop_running():
            # The handler runs inside the event loop, which cannot serve the async engines'
            # close while it waits here; close() refuses at once when such engines exist.
            self._close_quietly()
            return
        # The signal may have interrupted code holding the registry's lock: close from a
        # helper thread and wait a bounded time, so that the handler can never deadlock.
        closer = threading.Thread(target=self._close_quietly, name="dbregistry-shutdown", daemon=True)
        closer.start()
        closer.join(self._timeout)
        if closer.is_alive():
            logger.warning("closing the database engines took longer than %g s; handing the signal on", self._timeout)

    def _close_quietly(self) -> None:
        try:
            self._registry.close()
        except CloseError as e:
            details = "; ".join(
                f"{name}: {describe_error(error)}" for name, error in zip(e.names, e.exceptions, strict=False)
            )
            logger.warning("shutdown: some engines failed to dispose: %s", details)
        except RuntimeError as e:
            logger.warning(
                "shutdown: %s; in an asyncio application close the registry in the app's shutdown "
                "(`FastAPI(lifespan=registry.lifespan)` or `await registry.aclose()`)",
                e,
            )
        except Exception as e:
            logger.warning("shutdown: closing the registry failed: %s", describe_error(e))

    def __repr__(self) -> str:
        state = "installed" if self._installed else "uninstalled"
        names = ", ".join(s.name for s in self.signals)
        return f"<ShutdownHook {state} atexit{', ' + names if names else ''}>"


def install_shutdown_hook(
    registry: Registry, *, signals: Iterable[int] = DEFAULT_SIGNALS, timeout: float = 10.0
) -> ShutdownHook:
    """Install (once per registry) the hook described in the module docstring; see `Registry.install_shutdown_hook`."""
    with _HOOKS_LOCK.lock:
        hook = _HOOKS.get(registry)
        if hook is not None and hook.installed:
            return hook
        hook = ShutdownHook(registry, signals, timeout)
        hook._install()
        _HOOKS[registry] = hook
        return hook


@contextlib.asynccontextmanager
async def lifespan(registry: Registry, app: object = None) -> AsyncIterator[None]:
    """``registry.reopen()`` on startup (engines are built on first use); ``await registry.aclose()`` on shutdown."""
    registry.reopen()
    try:
        yield
    finally:
        await registry.aclose()


def loop_running() -> bool:
    """Whether an event loop runs in this thread (async engines must then be closed with await)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
