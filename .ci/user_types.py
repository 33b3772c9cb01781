"""A user's file: mypy --strict must see dbregistry's real types, not Any (run by .ci/run)."""

from typing import assert_type

from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

import dbregistry
from dbregistry import ConfigError, Registry

registry = Registry.from_dict({"databases": {"dev": {"url": "sqlite://", "pool_class": "StaticPool"}}}, environ={})
assert_type(registry, Registry)
assert_type(registry.get("dev"), Engine)
assert_type(registry.get_async("dev"), AsyncEngine)
assert_type(registry.reader("dev"), Engine)
assert_type(registry.names, list[str])
assert_type(dbregistry.__version__, str)
try:
    Registry.from_dict({"databases": {}}, environ={})
except ConfigError as error:
    assert_type(error.problems, list[dbregistry.Problem])
