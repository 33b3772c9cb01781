"""The values of ``read_your_writes``: ``lsn``, ``off`` or a duration, parsed once for the schema and routing."""

from __future__ import annotations

import math
import re
from typing import Any, Final

__all__ = ["SettingError", "normalize_setting", "seconds_of"]

_DURATION: Final = re.compile(r"\s*([-+]?\d+(?:\.\d*)?|[-+]?\.\d+)\s*(ms|s|m)?\s*")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0}


class SettingError(ValueError):
    """A ``read_your_writes`` value that is not ``lsn``, ``off`` or a duration above 0."""


def normalize_setting(value: Any) -> str:
    """``lsn``, ``off`` (also YAML's false) or a duration (``2s``, ``500ms``, ``1m``, seconds as a number).

    >>> normalize_setting(False), normalize_setting("LSN"), normalize_setting("500ms"), normalize_setting(2)
    ('off', 'lsn', '500ms', '2s')
    """
    if value is False or (isinstance(value, str) and value.strip().lower() in ("off", "false", "no")):
        return "off"
    if isinstance(value, str) and value.strip().lower() == "lsn":
        return "lsn"
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise SettingError(f"must be lsn, off or a duration such as 2s, got {value!r}")
    text = f"{value}s" if isinstance(value, (int, float)) else value
    match = _DURATION.fullmatch(text)
    if match is None:
        raise SettingError(f"must be lsn, off or a duration such as 2s, got {value!r}")
    number = float(match.group(1))
    if not math.isfinite(number) or number < 0:
        raise SettingError(f"must be lsn, off or a duration above 0 such as 2s, got {value!r}")
    if number == 0:
        raise SettingError(
            f"{value!r} sends no read to the primary after a write; use off to turn read_your_writes off"
        )
    unit = match.group(2) or "s"
    return f"{number:g}{unit}"


def seconds_of(setting: str) -> float:
    """The seconds of a normalized duration setting.

    >>> seconds_of("500ms"), seconds_of("2s"), seconds_of("1m")
    (0.5, 2.0, 60.0)
    """
    match = _DURATION.fullmatch(setting)
    if match is None:
        raise ValueError(f"not a duration: {setting!r}")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]
