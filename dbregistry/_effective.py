"""What one database's engines really get: every field's effective value and where it came from.

``dbregistry show`` prints these; they are computed here, from the registry's
declarations, origins and SQLAlchemy's own defaults (`_pools.sqlalchemy_defaults`),
so the command only formats them. Passwords are masked in every value.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import URL

from ._connect import describe_tls, driver_name
from ._engines import engine_spec
from ._hosts import hosts_of
from ._poolers import detect as detect_pooler
from ._pools import QUEUE_OPTIONS, accepted_options, sqlalchemy_defaults
from ._rules import effective_pool_class
from ._schema import DatabaseConfig
from ._secrets import mask_mapping
from ._sources import Origin, Precedence
from ._urls import mask

if TYPE_CHECKING:
    from ._registry import Registry

__all__ = ["driver_arguments", "effective_fields", "jsonable"]


def jsonable(value: Any) -> Any:
    """``value`` as JSON-ready data: URLs masked, paths as text, a TLS context described."""
    if isinstance(value, URL):
        return mask(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, ssl.SSLContext):
        return describe_tls(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def _label(origin: Origin, profile: str | None) -> str:
    if origin.precedence is Precedence.PROFILE and profile:
        return f"{origin} (profile {profile})"
    return str(origin)


def effective_fields(registry: Registry, name: str) -> list[dict[str, Any]]:
    """Every field of one database: its effective value (passwords masked) and where it came from.

    An unset field shows the value SQLAlchemy (or the registry) uses for it,
    from ``default``; a queue option of a pool class that takes none shows None.
    """
    db = registry[name]
    pool_class, _ = effective_pool_class(db)
    fields: list[dict[str, Any]] = []
    for field in DatabaseConfig.model_fields:
        value: Any = getattr(db, field)
        origin: Origin | None = None
        if field in db.model_fields_set:
            origin = registry.origin(name, field)
            label = _label(origin, registry.profile)
        elif field == "pool_class":
            value, label = pool_class, "default"
        elif field == "log_pool_events":
            value = registry.config.log_pool_events
            label = "top-level log_pool_events" if value else "default"
        elif field == "pooler":
            found = detect_pooler(db)
            value, label = found.mode, (f"detected: {found.reason}" if found.mode != "none" else "default")
        elif field == "hosts":
            # Every host the URL names (libpq's list and ?host= read alike), the form `hosts:` takes.
            value, label = [str(h) for h in hosts_of(db.url)] or None, "url"
        elif field in QUEUE_OPTIONS and field not in accepted_options(pool_class):
            value, label = None, f"not used by {pool_class}"
        else:
            value, label = sqlalchemy_defaults().get(field, value), "default"
        if field in ("connect_args", "driver_args") and isinstance(value, dict):
            value = mask_mapping(value)
        if field == "session":
            # The effective defaults: the top-level `session:` merged with this database's own.
            value = registry.session_options(name)
            if origin is None and value:
                label = "top-level session"
        fields.append(
            {
                "field": field,
                "value": jsonable(value),
                "origin": label,
                "source": origin.source if origin else None,
                "file": origin.file if origin else None,
                "line": origin.line if origin else None,
                "precedence": origin.precedence.name.lower() if origin else "default",
            }
        )
    return fields


def driver_arguments(registry: Registry, name: str) -> dict[str, dict[str, Any]]:
    """Per mode, the driver and the ``connect_args`` it will receive (secrets masked), or why there is none."""
    shown: dict[str, dict[str, Any]] = {}
    for mode, is_async in (("sync", False), ("async", True)):
        try:
            spec = engine_spec(registry[name], is_async=is_async)
        except ValueError as e:  # no driver for this mode (DriverError)
            shown[mode] = {"driver": None, "url": None, "connect_args": None, "error": str(e)}
            continue
        # The driver gets the URL's query too (psycopg: libpq's words left there), connect_args winning.
        query = {k: v for k, v in spec.url.query.items() if k not in ("host", "port")}
        connect_args = mask_mapping({**query, **spec.kwargs.get("connect_args", {})})
        shown[mode] = {"driver": driver_name(spec.url), "url": mask(spec.url), "connect_args": jsonable(connect_args)}
    return shown
