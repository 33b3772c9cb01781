"""The one fork hook: in a child of ``os.fork()``, every registered owner resets what the parent left.

A forked child has one thread; the parent's others (probes, checkouts under
way) do not exist there, so a lock one of them held would never be released,
and pooled connections are the parent's sockets. Owners register here instead
of each installing an ``os.register_at_fork`` hook of their own: locks and
per-thread state are reset first (`reset_after_fork`), then pooled connections
are dropped (``drops_connections=True``), so that nothing the dropping triggers
waits on a lock of the parent's.
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Protocol

from ._secrets import describe_error

__all__ = ["ForkAware", "reset_after_fork"]

logger = logging.getLogger("dbregistry")


class ForkAware(Protocol):
    """An owner of locks, threads or connections that a forked child must reset."""

    def _after_fork_in_child(self) -> None: ...


# Locks and thread state first, then pooled connections.
_STAGES: tuple[weakref.WeakSet[ForkAware], weakref.WeakSet[ForkAware]] = (weakref.WeakSet(), weakref.WeakSet())


def reset_after_fork(owner: ForkAware, *, drops_connections: bool = False) -> None:
    """Call ``owner._after_fork_in_child()`` in the child of every later ``os.fork()``, while ``owner`` lives."""
    _STAGES[drops_connections].add(owner)


def _after_fork_in_child() -> None:
    for stage in _STAGES:
        for owner in list(stage):
            try:
                owner._after_fork_in_child()
            except Exception as e:  # one owner's failure must not leave the others unreset
                logger.warning("after fork: resetting %s failed: %s", type(owner).__name__, describe_error(e))


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
