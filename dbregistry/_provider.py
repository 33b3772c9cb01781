"""`EngineProvider`: what the runtime services (routing, health, budget) ask of a registry.

The services take this narrow interface, not `Registry`: they get engines and
declarations by name and never reach into the registry's state. `Registry`
implements it and passes itself as one when it composes them, so a service can
be given any object of this shape (a test double, a future failover wrapper).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping

    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

    from ._schema import DatabaseConfig, RegistryConfig

__all__ = ["BuiltEngines", "EngineProvider"]


class BuiltEngines(Protocol):
    """A read-only view of the pooled engines built so far, by name (None: the default, once asked for so).

    The mappings are live: they change as engines are built and are emptied on
    close, never replaced, so a service may keep them and read them without a lock.
    """

    @property
    def sync(self) -> Mapping[str | None, Engine]: ...

    @property
    def async_(self) -> Mapping[str | None, AsyncEngine]: ...


class EngineProvider(Protocol):
    """Engines and declarations by name; unknown names raise `UnknownDatabaseError`."""

    @property
    def names(self) -> list[str]:
        """The declared names, in declaration order."""
        ...

    @property
    def default(self) -> str | None:
        """The name used when None is given."""
        ...

    @property
    def config(self) -> RegistryConfig:
        """The validated declarations."""
        ...

    @property
    def closed(self) -> bool:
        """True once closed: asking for an engine raises `RegistryClosedError`."""
        ...

    def __getitem__(self, name: str) -> DatabaseConfig:
        """The declaration of ``name``."""
        ...

    def get(self, name: str | None = None, *, direct: bool = False) -> Engine:
        """The sync engine of ``name`` (the default when None), built on first use."""
        ...

    def get_async(self, name: str | None = None, *, direct: bool = False) -> AsyncEngine:
        """The async engine of ``name`` (the default when None), built on first use."""
        ...
