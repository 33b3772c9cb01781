"""dbregistry: a declared set of databases becomes a validated registry of SQLAlchemy engines.

>>> from dbregistry import Registry
>>> registry = Registry.from_yaml("config/databases.yaml")   # doctest: +SKIP
>>> engine = registry.get("replica")                          # doctest: +SKIP
"""

from .errors import (
    CloseError,
    ConfigError,
    DBRegistryError,
    EventLoopError,
    Problem,
    RegistryClosedError,
    UnknownDatabaseError,
)
from .health import HealthReport, PoolStats
from .lifecycle import ShutdownHook
from .registry import Registry
from .schema import DatabaseConfig, RegistryConfig, SessionConfig
from .sources import Origin
from .yamlfile import Limits

__all__ = [
    "CloseError",
    "ConfigError",
    "DBRegistryError",
    "DatabaseConfig",
    "EventLoopError",
    "HealthReport",
    "Limits",
    "Origin",
    "PoolStats",
    "Problem",
    "Registry",
    "RegistryClosedError",
    "RegistryConfig",
    "SessionConfig",
    "ShutdownHook",
    "UnknownDatabaseError",
]

__version__ = "0.1.0"
