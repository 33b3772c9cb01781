"""``DBREGISTRY_*`` variables and ``.env`` files, read by pydantic-settings.

Imported only when there is something to read: pydantic-settings is a fifth of
the registry's own import time, which a cold start (Lambda, a CLI) without
``DBREGISTRY_*`` variables or a ``.env`` file does not need to pay.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from typing import Any

from dotenv import dotenv_values
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from ._files import MAX_ENV_FILE_BYTES, read_bounded
from .schema import DatabaseConfig
from .sources import ENV_PREFIX, NESTING

__all__ = ["read_env_file", "read_prefixed"]


class _EnvSchema(BaseSettings):
    """The shape pydantic-settings reads ``DBREGISTRY_*`` variables into."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter=NESTING, case_sensitive=False)

    default: str | None = None
    databases: dict[str, DatabaseConfig] = {}
    log_pool_events: bool | None = None


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source, reading a given mapping instead of os.environ."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(_EnvSchema)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, case_sensitive=False)

    def decode_complex_value(self, field_name: str, field: Any, value: Any) -> Any:
        # A value that is not JSON is kept as text, so that validation reports
        # it against its variable instead of pydantic-settings failing the lot.
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError:
            return value


def read_prefixed(environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``DBREGISTRY_*`` variables of ``environ`` as nested data (not validated yet)."""
    return _MappingEnvSource(environ)()


def read_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """The variables of a ``.env`` file, parsed as pydantic-settings does (python-dotenv).

    The file is read here, bounded (`_files.read_bounded`), and parsed from
    memory: python-dotenv would read a file of any size. Raises `FileReadError`.
    """
    text = read_bounded(path, MAX_ENV_FILE_BYTES).decode("utf-8")
    variables = parse_env_vars(dotenv_values(stream=io.StringIO(text)), case_sensitive=True)
    return {k: v for k, v in variables.items() if v is not None}
