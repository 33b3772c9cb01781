"""`_fork`: one ``os.register_at_fork`` hook; in the child, locks are reset before connections are dropped."""

from __future__ import annotations

import json
import os
import warnings

import pytest

from dbregistry._fork import reset_after_fork

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX-only")


class Owner:
    def __init__(self, calls: list[str], name: str, *, fails: bool = False) -> None:
        self.calls, self.name, self.fails = calls, name, fails

    def _after_fork_in_child(self) -> None:
        self.calls.append(self.name)
        if self.fails:
            raise RuntimeError("cannot reset")


def test_the_child_resets_locks_then_drops_connections_and_one_failure_stops_nothing() -> None:
    calls: list[str] = []
    owners = [
        Owner(calls, "pool"),
        Owner(calls, "router", fails=True),
        Owner(calls, "meter"),
    ]
    reset_after_fork(owners[0], drops_connections=True)
    reset_after_fork(owners[1])
    reset_after_fork(owners[2])
    read, write = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a process with threads; the child here only writes to a pipe.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write, json.dumps(calls).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child_calls = json.loads(pipe.read())
    os.waitpid(pid, 0)
    assert calls == []  # the parent resets nothing
    assert sorted(child_calls[:2]) == ["meter", "router"]
    assert child_calls[2:] == ["pool"]
