"""`EngineCache`: every engine a registry built, by name, sync or async, pooled or direct.

One owner for the built engines: the registry stores into it under its lock,
and everything else reads it. The hot paths index the per-mode dicts directly,
so they are plain dicts: ``Registry.get()`` / ``get_async()`` and the router's
``reader()`` keep references to the pooled ones (the router through the
read-only `BuiltEngines` view) and read them without a lock, one dict lookup
once an engine is built (bench figure 1). That is why nothing here ever
replaces a dict: `detach` and `drop_after_fork` work in place, and a reader
holding a dict always sees the current engines.

A dict may also hold the key None, the alias of the default database, so that
``get()`` (no name) is one lookup too; it is written in `store` and skipped by
every listing, so each engine is listed once, under its name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["BuiltEngine", "EngineCache"]

# (name, "sync" | "async", direct, engine): what `add_engine_listener` is told.
BuiltEngine = tuple[str, str, bool, Any]


class EngineCache:
    """The built engines of one registry; only the registry writes to it, under its lock.

    >>> cache = EngineCache()
    >>> cache.store(cache.sync, None, "main", engine)  # doctest: +SKIP
    >>> cache.sync[None] is cache.sync["main"]         # doctest: +SKIP
    True
    """

    __slots__ = ("async_", "async_direct", "sync", "sync_direct")

    def __init__(self) -> None:
        self.sync: dict[str | None, Engine] = {}
        self.async_: dict[str | None, AsyncEngine] = {}
        self.sync_direct: dict[str | None, Engine] = {}
        self.async_direct: dict[str | None, AsyncEngine] = {}

    def table(self, *, is_async: bool, direct: bool) -> dict[str | None, Any]:
        """The dict of one mode: sync or async, pooled or on ``direct_url``."""
        if is_async:
            return self.async_direct if direct else self.async_
        return self.sync_direct if direct else self.sync

    @staticmethod
    def store(table: dict[str | None, Any], given: str | None, name: str, engine: Any) -> None:
        """Keep ``engine`` as ``name``'s, and as the default's when it was asked for by None."""
        table[name] = engine
        if given is None:
            table[None] = engine

    def has_async(self) -> bool:
        """Whether any async engine (pooled or direct) is built."""
        return bool(self.async_) or bool(self.async_direct)

    def built_count(self) -> int:
        """How many pooled engines (sync and async) are built; what the registry's repr shows."""
        return len(_unique(self.sync)) + len(_unique(self.async_))

    def sync_engines(self) -> list[tuple[str, Engine]]:
        """Every sync engine once, under its name: pooled first, then direct."""
        return _unique(self.sync) + _unique(self.sync_direct)

    def async_engines(self) -> list[tuple[str, AsyncEngine]]:
        """Every async engine once, under its name: pooled first, then direct."""
        return _unique(self.async_) + _unique(self.async_direct)

    def built(self) -> list[BuiltEngine]:
        """Every engine once as ``(name, mode, direct, engine)``, in the order listeners are told of them."""
        return [
            (name, mode, direct, engine)
            for mode, direct, table in (
                ("sync", False, self.sync),
                ("sync", True, self.sync_direct),
                ("async", False, self.async_),
                ("async", True, self.async_direct),
            )
            for name, engine in _unique(table)
        ]

    def detach(self) -> tuple[list[tuple[str, Engine]], list[tuple[str, AsyncEngine]]]:
        """Empty the cache in place and return what it held, for closing: (sync engines, async engines)."""
        sync, async_ = self.sync_engines(), self.async_engines()
        for table in (self.sync, self.async_, self.sync_direct, self.async_direct):
            table.clear()
        return sync, async_

    def drop_after_fork(self) -> None:
        """In a forked child: drop the parent's pooled connections without closing them; keep the engines.

        SQLAlchemy's documented recipe (``dispose(close=False)``): closing would
        end the parent's sessions on the same sockets.
        """
        for _, engine in self.sync_engines():
            engine.dispose(close=False)
        for _, aengine in self.async_engines():
            aengine.sync_engine.dispose(close=False)


def _unique(table: dict[str | None, Any]) -> list[tuple[str, Any]]:
    return [(name, engine) for name, engine in table.items() if name is not None]
