"""What a number of seconds the library waits may be: one rule for every timeout and interval.

A wait must be a finite number of seconds above 0 and at most `MAX_SECONDS`
(one day): ``inf``, ``nan`` and ``1e12`` are refused where they are given, not
found at the first wait (Python's lock and queue waits fail with
`OverflowError` beyond about 292 years, and PostgreSQL's ``statement_timeout``
beyond 24.8 days).
"""

from __future__ import annotations

import math
from typing import Final

__all__ = ["MAX_SECONDS", "check_seconds", "seconds_problem"]

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
