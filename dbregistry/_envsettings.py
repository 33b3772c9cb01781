"""``DBREGISTRY_*`` variables and ``.env`` files, read by pydantic-settings.

pydantic-settings is imported only when there is something to read: it is a
fifth of the registry's own import time, which a cold start (Lambda, a CLI)
without ``DBREGISTRY_*`` variables or a ``.env`` file does not need to pay.
This module owns the variables' prefix and nesting delimiter; `_sources`
turns what it reads into a layer.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Mapping
from functools import cache
from typing import TYPE_CHECKING, Any

from ._files import MAX_ENV_FILE_BYTES, read_bounded
from ._schema import DatabaseConfig, SessionConfig
from ._secrets import utf8_text

if TYPE_CHECKING:
    from pydantic_settings import BaseSettings, EnvSettingsSource

__all__ = ["ENV_PREFIX", "NESTING", "NotJson", "read_env_file", "read_prefixed"]

ENV_PREFIX = "DBREGISTRY_"
NESTING = "__"  # DBREGISTRY_DATABASES__REPLICA__POOL_SIZE


class NotJson(str):
    """A variable's text where JSON was expected (a mapping), and why it is not JSON.

    The reason names a position, never a part of the text: the value may hold a password.
    """

    reason: str

    def __new__(cls, text: str, error: ValueError) -> NotJson:
        self = super().__new__(cls, text)
        if isinstance(error, json.JSONDecodeError):
            self.reason = f"{error.msg}: line {error.lineno} column {error.colno}"
        elif "integer string conversion" in str(error):
            self.reason = "a number has more digits than Python converts (4300)"
        else:
            self.reason = type(error).__name__
        return self


@cache
def _env_schema() -> type[BaseSettings]:
    """The shape pydantic-settings reads ``DBREGISTRY_*`` variables into (built on first read)."""
    from pydantic_settings import BaseSettings, SettingsConfigDict  # noqa: PLC0415 - see the module docstring

    class _EnvSchema(BaseSettings):
        model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter=NESTING, case_sensitive=False)

        default: str | None = None
        databases: dict[str, DatabaseConfig] = {}
        log_pool_events: bool | None = None
        session: SessionConfig | None = None

    return _EnvSchema


@cache
def _mapping_env_source() -> Callable[[Mapping[str, str]], EnvSettingsSource]:
    """pydantic-settings' environment source, reading a given mapping instead of os.environ."""
    from pydantic_settings import EnvSettingsSource  # noqa: PLC0415 - see the module docstring

    class _MappingEnvSource(EnvSettingsSource):
        def __init__(self, environ: Mapping[str, str]) -> None:
            self._environ = environ
            super().__init__(_env_schema())

        # `_load_env_vars` is the hook pydantic-settings' own providers (dotenv, AWS, GCP,
        # Azure) override, unchanged from 2.3 to 2.16; .ci/run tests both ends of the range.
        def _load_env_vars(self) -> Mapping[str, str | None]:
            return {key.lower(): value for key, value in self._environ.items()}

        def decode_complex_value(self, field_name: str, field: Any, value: Any) -> Any:
            # A value that is not JSON is kept as text, so that validation reports
            # it against its variable instead of pydantic-settings failing the lot.
            try:
                return super().decode_complex_value(field_name, field, value)
            except ValueError as e:
                return NotJson(value, e) if isinstance(value, str) else value

    return _MappingEnvSource


def read_prefixed(environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``DBREGISTRY_*`` variables of ``environ`` as nested data (not validated yet)."""
    return _mapping_env_source()(environ)()


def read_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """The variables of a ``.env`` file, parsed as pydantic-settings does (python-dotenv).

    The file is read here, bounded (`_files.read_bounded`), and parsed from
    memory: python-dotenv would read a file of any size. Raises `FileReadError`,
    or `NotUtf8Error` (naming the offset, holding nothing of the file) when it is not UTF-8.
    """
    from dotenv import dotenv_values  # noqa: PLC0415 - only when there is a .env file

    text = utf8_text(read_bounded(path, MAX_ENV_FILE_BYTES))
    return {k: v for k, v in dotenv_values(stream=io.StringIO(text)).items() if v is not None}
