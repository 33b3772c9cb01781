"""dbregistry: a declared set of databases becomes a validated registry of SQLAlchemy engines.

>>> from dbregistry import Registry
>>> registry = Registry.from_yaml("config/databases.yaml")   # doctest: +SKIP
>>> engine = registry.get("replica")                          # doctest: +SKIP
"""

from ._causal import CausalBlock
from ._errors import (
    CloseError,
    ConfigError,
    CredentialsError,
    DBRegistryError,
    EventLoopError,
    Problem,
    RegistryClosedError,
    UnknownDatabaseError,
)
from ._health import HealthReport, PoolStats
from ._lifecycle import ShutdownHook
from ._registry import Registry
from ._routing import ReplicaStatus, Unset
from ._schema import DatabaseConfig, RegistryConfig, SessionConfig
from ._sources import Origin, Precedence
from ._yamlfile import Limits

__all__ = [
    "CausalBlock",
    "CloseError",
    "ConfigError",
    "CredentialsError",
    "DBRegistryError",
    "DatabaseConfig",
    "EventLoopError",
    "HealthReport",
    "Limits",
    "Origin",
    "PoolStats",
    "Precedence",
    "Problem",
    "Registry",
    "RegistryClosedError",
    "RegistryConfig",
    "ReplicaStatus",
    "SessionConfig",
    "ShutdownHook",
    "UnknownDatabaseError",
    "Unset",
]

__version__ = "0.1.0"
