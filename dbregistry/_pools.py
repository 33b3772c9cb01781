"""SQLAlchemy's pool classes by name, and which engine options each of them takes."""

from __future__ import annotations

import inspect
from typing import Any, Final, Literal

from sqlalchemy import pool

from ._errors import closest
from ._secrets import shown_name

__all__ = [
    "POOL_CLASSES",
    "POOL_NAMES",
    "QUEUE_OPTIONS",
    "PoolName",
    "accepted_options",
    "normalize_pool_name",
    "pool_class_for",
    "sqlalchemy_defaults",
    "why_not",
]

PoolName = Literal["QueuePool", "AsyncAdaptedQueuePool", "NullPool", "StaticPool", "SingletonThreadPool"]

POOL_CLASSES: Final[dict[str, type[pool.Pool]]] = {
    "QueuePool": pool.QueuePool,
    "AsyncAdaptedQueuePool": pool.AsyncAdaptedQueuePool,
    "NullPool": pool.NullPool,
    "StaticPool": pool.StaticPool,
    "SingletonThreadPool": pool.SingletonThreadPool,
}

_SHORT: Final = {"queue": "QueuePool", "null": "NullPool", "static": "StaticPool", "singleton": "SingletonThreadPool"}
POOL_NAMES: Final[dict[str, str]] = {name.lower(): name for name in POOL_CLASSES} | _SHORT

QUEUE_OPTIONS: Final = frozenset({"pool_size", "max_overflow", "pool_timeout", "pool_use_lifo"})

_ACCEPTS: Final[dict[str, frozenset[str]]] = {
    "QueuePool": QUEUE_OPTIONS,
    "AsyncAdaptedQueuePool": QUEUE_OPTIONS,
    "NullPool": frozenset(),
    "StaticPool": frozenset(),
    "SingletonThreadPool": frozenset({"pool_size"}),
}

_WHY: Final[dict[str, str]] = {
    "NullPool": "NullPool keeps no connections",
    "StaticPool": "StaticPool holds exactly one connection",
    "SingletonThreadPool": "SingletonThreadPool keeps one connection per thread",
}

# A sync engine cannot use the asyncio queue and an async engine cannot use the
# thread one; a declaration names the concept and each mode gets its own class.
_FOR_MODE: Final[dict[tuple[str, bool], str]] = {
    ("QueuePool", True): "AsyncAdaptedQueuePool",
    ("AsyncAdaptedQueuePool", False): "QueuePool",
}


def normalize_pool_name(value: str) -> PoolName:
    """``"queue"``, ``"nullpool"``, ``"NullPool"`` ... to SQLAlchemy's class name."""
    name = POOL_NAMES.get(value.strip().lower())
    if name is None:
        # Suggest the class name: the short form `null` would read as YAML's null.
        hint = closest(value, list(POOL_NAMES))
        did_you_mean = f"did you mean {POOL_NAMES[hint]!r}? " if hint else ""
        raise ValueError(f"unknown pool class {shown_name(value)}; {did_you_mean}known: {', '.join(POOL_CLASSES)}")
    return name  # type: ignore[return-value]


def pool_class_for(name: str, *, is_async: bool) -> type[pool.Pool]:
    """The pool class to hand SQLAlchemy for a declared name in one mode."""
    return POOL_CLASSES[_FOR_MODE.get((name, is_async), name)]


def accepted_options(name: str) -> frozenset[str]:
    """Which of the queue options (`QUEUE_OPTIONS`) the pool class takes."""
    return _ACCEPTS[name]


# create_engine() reads these from **kwargs, so no signature states them: its documentation does.
_ENGINE_DEFAULTS: Final[dict[str, Any]] = {"echo": False, "echo_pool": False, "isolation_level": None}
# Our option name -> (pool class whose __init__ declares the default, its parameter there).
_POOL_PARAMETERS: Final[dict[str, tuple[type[pool.Pool], str]]] = {
    "pool_size": (pool.QueuePool, "pool_size"),
    "max_overflow": (pool.QueuePool, "max_overflow"),
    "pool_timeout": (pool.QueuePool, "timeout"),
    "pool_use_lifo": (pool.QueuePool, "use_lifo"),
    "pool_recycle": (pool.Pool, "recycle"),
    "pool_pre_ping": (pool.Pool, "pre_ping"),
    "pool_reset_on_return": (pool.Pool, "reset_on_return"),
}


def sqlalchemy_defaults() -> dict[str, Any]:
    """What SQLAlchemy uses for each engine option left unset, asked of SQLAlchemy.

    The pool options are read from the signatures of its pool classes, so they
    follow SQLAlchemy's own defaults across versions; ``pool_reset_on_return``
    is shown as the word ``create_engine`` takes (True means ``"rollback"``).

    >>> sqlalchemy_defaults()["pool_size"], sqlalchemy_defaults()["pool_reset_on_return"]
    (5, 'rollback')
    """
    defaults: dict[str, Any] = {
        option: inspect.signature(cls.__init__).parameters[parameter].default
        for option, (cls, parameter) in _POOL_PARAMETERS.items()
    }
    if defaults["pool_reset_on_return"] is True:
        defaults["pool_reset_on_return"] = "rollback"
    return defaults | _ENGINE_DEFAULTS | {"connect_args": {}, "execution_options": {}}


def why_not(name: str) -> str:
    """A short reason a pool class takes no queue options."""
    return _WHY.get(name, f"{name} does not take it")
