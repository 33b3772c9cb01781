"""What a number of seconds the library waits may be: one rule for every timeout and interval.

A wait must be a finite number of seconds above 0 and at most `MAX_SECONDS`
(one day): ``inf``, ``nan`` and ``1e12`` are refused where they are given, not
found at the first wait (Python's lock and queue waits fail with
`OverflowError` beyond about 292 years, and PostgreSQL's ``statement_timeout``
beyond 24.8 days). `run_all_within` is the one way calls that talk to servers
(health pings, ``budget --live`` reads) are run at once and waited on for at most a timeout.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Final

__all__ = ["MAX_SECONDS", "check_seconds", "run_all_within", "seconds_problem"]

MAX_SECONDS: Final = 86400.0


def seconds_problem(value: object) -> str | None:
    """Why ``value`` is not a number of seconds to wait, or None when it is one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"must be a number of seconds, got {type(value).__name__}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number of seconds, got {value!r}"
    if not value > 0:
        return f"must be a positive number of seconds, got {value!r}"
    if value > MAX_SECONDS:
        return f"must be at most {MAX_SECONDS:g} seconds (one day), got {value:g}"
    return None


def check_seconds(value: float, what: str) -> float:
    """``value`` as a float when it is a number of seconds to wait; `ValueError` naming ``what`` otherwise.

    >>> check_seconds(5, "timeout")
    5.0
    """
    problem = seconds_problem(value)
    if problem is not None:
        raise ValueError(f"{what} {problem}")
    return float(value)


def run_all_within(calls: Mapping[str, Callable[[], object]], timeout: float, purpose: str) -> None:
    """Run every call at once in a daemon thread of its own; return when all have ended or after ``timeout`` s.

    The threads are named ``dbregistry-<purpose>-<name>``. A call still running at the timeout
    is left behind, never waited on: a server that stopped answering cannot hold the caller
    past it. Calls report through what they close over.
    """
    deadline = time.monotonic() + timeout
    threads = [
        threading.Thread(target=call, name=f"dbregistry-{purpose}-{name}", daemon=True) for name, call in calls.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
