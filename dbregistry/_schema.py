"""The configuration as pydantic models: what one database and the whole registry declare.

Field names are SQLAlchemy's own ``create_engine`` names; anything left unset
keeps SQLAlchemy's default for the dialect (options are forwarded with
``exclude_unset``).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError
from sqlalchemy.engine import URL

from ._durations import SettingError, normalize_setting
from ._hosts import parse_host
from ._pools import POOL_NAMES, PoolName, normalize_pool_name
from ._secrets import mask_mapping, normalize_url
from ._urls import mask, parse_url
from ._waits import MAX_SECONDS

__all__ = [
    "ENGINE_OPTIONS",
    "ISOLATION_LEVELS",
    "NAME_PATTERN",
    "TOP_LEVEL_KEYS",
    "DatabaseConfig",
    "RegistryConfig",
    "SessionConfig",
    "config_schema",
    "field_names",
]


def _to_url(value: Any) -> URL:
    if isinstance(value, URL):
        return normalize_url(value)
    if not isinstance(value, str):
        raise PydanticCustomError("url_type", "must be a URL string, got {kind}", {"kind": type(value).__name__})
    try:
        return parse_url(value)
    except ValueError as e:
        raise PydanticCustomError("url_parsing", str(e)) from None


def _to_pool_name(value: Any) -> Any:
    if isinstance(value, type):
        value = value.__name__
    if isinstance(value, str):
        try:
            return normalize_pool_name(value)
        except ValueError as e:
            raise PydanticCustomError("pool_class", str(e)) from None
    return value


DatabaseURL = Annotated[
    URL,
    BeforeValidator(_to_url),
    PlainSerializer(mask, return_type=str),
    WithJsonSchema({"type": "string", "format": "uri", "description": "dialect[+driver]://user:password@host:port/db"}),
]
PoolClassName = Annotated[PoolName, BeforeValidator(_to_pool_name)]


def _to_host(value: Any) -> Any:
    try:
        parse_host(value)
    except ValueError as e:
        raise PydanticCustomError("host", str(e)) from None
    return value.strip()


def _to_provider(value: Any) -> Any:
    if isinstance(value, str) and not _PROVIDER.match(value):
        raise PydanticCustomError(
            "password_provider", "must be package.module:function (a dotted module path, ':', the function's name)"
        )
    return value


HostText = Annotated[str, BeforeValidator(_to_host)]
_PROVIDER: Final = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
EchoFlag = bool | Literal["debug"]

ISOLATION_LEVELS: Final = ("AUTOCOMMIT", "READ COMMITTED", "READ UNCOMMITTED", "REPEATABLE READ", "SERIALIZABLE")
NAME_PATTERN: Final = r"^[A-Za-z][A-Za-z0-9_-]*$"


class SessionConfig(BaseModel):
    """Defaults for the ORM sessions the registry opens (``Session`` / ``AsyncSession`` keywords).

    Declared under ``session:`` at the top level of the file (every database)
    and per database (which wins, key by key); a keyword given to
    ``registry.session(...)`` wins over both. Unset keys keep SQLAlchemy's
    defaults (``expire_on_commit=True``, ``autoflush=True``, ``autobegin=True``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    expire_on_commit: bool | None = Field(
        default=None, description="expire every object on commit (false: attributes stay readable after commit)"
    )
    autoflush: bool | None = Field(default=None, description="flush pending changes before each query")
    autobegin: bool | None = Field(default=None, description="begin a transaction on first use")

    def options(self) -> dict[str, bool]:
        """The keys that were set, as ``Session`` keyword arguments."""
        return {k: v for k, v in self.model_dump(exclude_none=True).items() if isinstance(v, bool)}


class DatabaseConfig(BaseModel):
    """One declared database: its URL, its engine options and how it relates to the others."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        arbitrary_types_allowed=True,
        populate_by_name=True,
        hide_input_in_errors=True,
    )

    url: DatabaseURL = Field(description="dialect[+driver]://user:password@host:port/database")
    pool_class: PoolClassName | None = Field(
        default=None,
        alias="poolclass",
        description="QueuePool, NullPool, StaticPool, SingletonThreadPool, AsyncAdaptedQueuePool "
        "(case-insensitive; also queue, null, static, singleton)",
    )
    pool_size: int | None = Field(default=None, ge=0)
    max_overflow: int | None = Field(default=None, ge=-1)
    pool_timeout: float | None = Field(default=None, gt=0, le=MAX_SECONDS, allow_inf_nan=False)
    pool_recycle: int | None = Field(default=None, ge=-1)
    pool_pre_ping: bool | None = None
    pool_use_lifo: bool | None = None
    pool_reset_on_return: Literal["rollback", "commit", "none"] | None = None
    echo: EchoFlag | None = None
    echo_pool: EchoFlag | None = None
    isolation_level: str | None = None
    connect_args: dict[str, Any] | None = Field(
        default=None,
        description="connection settings in the user's words (libpq's for PostgreSQL), translated for each driver",
    )
    driver_args: dict[str, dict[str, Any]] | None = Field(
        default=None,
        description="connect() keywords for one driver alone, unchanged: {asyncpg: {command_timeout: 5}}",
    )
    execution_options: dict[str, Any] | None = None
    replica_of: str | None = Field(default=None, description="the database this one is a read replica of")
    password_file: Path | None = Field(
        default=None, description="file holding the password (a Docker or Kubernetes secret)"
    )
    password_provider: str | None = Field(
        default=None,
        description="package.module:function called for the password of every new connection (name=, url=)",
    )
    hosts: list[HostText] | None = Field(
        default=None,
        description="host:port of every server, tried in order, beside a URL without a host (postgresql://u@/db)",
    )
    pooler: Literal["pgbouncer-transaction", "pgbouncer-session", "none"] | None = Field(
        default=None,
        description="the external pooler in front of the server; detected for Neon -pooler hosts when unset",
    )
    direct_url: DatabaseURL | None = Field(
        default=None, description="the same database without the pooler: migrations, LISTEN/NOTIFY, advisory locks"
    )
    weight: int = Field(default=1, ge=1, description="a replica's share of reads among the replicas of its primary")
    replica_max_lag_seconds: float | None = Field(
        default=None,
        gt=0,
        le=MAX_SECONDS,
        allow_inf_nan=False,
        description="mark a replica down while its replay lag is above this",
    )
    log_pool_events: bool | None = Field(
        default=None, description="log connect, checkout, checkin, invalidate and exhaustion on dbregistry.pool"
    )
    max_connections: int | None = Field(
        default=None, ge=1, description="the server's max_connections, for `dbregistry budget`"
    )
    session: SessionConfig | None = Field(
        default=None, description="defaults for this database's ORM sessions; beats the top-level `session:`"
    )
    read_your_writes: str | None = Field(
        default=None,
        description="after a write, where its reads go: lsn (a replica that has replayed it; PostgreSQL's default), "
        "a duration such as 2s (the primary, for that long), or off",
    )

    # The URL fields whose own password, from a higher source, beats password_file (the loader decides).
    # No default: an unset private attribute costs no object per database (10,000 declared: ~3 MB less).
    _password_file_skips: frozenset[str] = PrivateAttr()

    def password_file_applies(self, url_field: str = "url") -> bool:
        """Whether ``password_file`` supplies the password of ``url`` or ``direct_url`` (see `dbregistry._loader`)."""
        return self.password_file is not None and url_field not in getattr(self, "_password_file_skips", ())

    def _skip_password_file(self, url_field: str) -> None:
        self._password_file_skips = frozenset({url_field, *getattr(self, "_password_file_skips", ())})

    @field_validator("password_provider", mode="before")
    @classmethod
    def _password_provider(cls, value: Any) -> Any:
        return _to_provider(value)

    @field_validator("isolation_level", mode="before")
    @classmethod
    def _isolation_level(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        level = " ".join(value.replace("_", " ").upper().split())
        if level not in ISOLATION_LEVELS:
            raise PydanticCustomError(
                "isolation_level",
                "must be one of {levels}, got {value!r}",
                {"levels": ", ".join(ISOLATION_LEVELS), "value": value},
            )
        return level

    @field_validator("read_your_writes", mode="before")
    @classmethod
    def _read_your_writes(cls, value: Any) -> Any:
        if value is None:
            return value
        try:
            return normalize_setting(value)
        except SettingError as e:
            raise PydanticCustomError("read_your_writes", str(e)) from None

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            if name in ("connect_args", "driver_args") and isinstance(value, dict):
                yield name, mask_mapping(value)
            elif isinstance(value, URL):
                yield name, _Shown(mask(value))
            elif value is not None:
                yield name, value


# The fields that are create_engine() keywords; the rest are the registry's own.
ENGINE_OPTIONS: Final = frozenset(
    {
        "pool_size",
        "max_overflow",
        "pool_timeout",
        "pool_recycle",
        "pool_pre_ping",
        "pool_use_lifo",
        "pool_reset_on_return",
        "echo",
        "echo_pool",
        "isolation_level",
        "connect_args",
        "execution_options",
    }
)


class _Shown(str):
    """Text that a ``repr`` shows as it is (a masked URL, unquoted like SQLAlchemy's own ``repr``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return str(self)


class RegistryConfig(BaseModel):
    """The validated declaration: the databases in file order and the default name."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    default: str | None = Field(default=None, description="the name get() uses when given none")
    databases: dict[str, DatabaseConfig] = Field(default_factory=dict)
    log_pool_events: bool = Field(default=False, description="pool event logging for every database")
    session: SessionConfig = Field(
        default_factory=SessionConfig, description="defaults for the ORM sessions of every database"
    )


TOP_LEVEL_KEYS: Final = ("default", "databases", "profiles", "log_pool_events", "session")


def field_names() -> list[str]:
    """Every name a database entry accepts, aliases included (for did-you-mean)."""
    names: list[str] = []
    for name, info in DatabaseConfig.model_fields.items():
        names.append(name)
        if info.alias:
            names.append(info.alias)
    return names


# -- the file's JSON Schema ------------------------------------------------------------


def config_schema() -> dict[str, Any]:
    """The JSON Schema of the configuration file, for editors (``# yaml-language-server: $schema=...``).

    It is pydantic's schema of `RegistryConfig`, adjusted to what the file
    really accepts: both ``pool_class`` and ``poolclass``, the pool names in
    any case and their short forms, ``${VAR}`` in any value, and ``profiles:``.
    """
    schema = RegistryConfig.model_json_schema()
    defs = schema["$defs"]
    db = defs["DatabaseConfig"]
    properties: dict[str, Any] = {}
    for key, prop in db["properties"].items():
        if key == "poolclass":
            names = sorted(set(POOL_NAMES) | set(POOL_NAMES.values()))
            properties["pool_class"] = {**prop, "anyOf": [{"enum": names}, {"type": "null"}], "title": "Pool Class"}
        elif key in ("url", "direct_url"):
            properties[key] = _without_uri_format(prop)
        else:
            properties[key] = prop
    properties["poolclass"] = {**properties["pool_class"], "description": "alias of pool_class"}
    db["properties"] = {key: _interpolatable(prop) for key, prop in properties.items()}
    overlay = copy.deepcopy(db)
    overlay.pop("required", None)
    overlay["title"] = "DatabaseOverlay"
    overlay["description"] = "A profile's changes to one database: any field, none required."
    defs["DatabaseOverlay"] = overlay
    schema["properties"]["databases"]["propertyNames"] = {"pattern": NAME_PATTERN}
    schema["properties"]["log_pool_events"] = _interpolatable(schema["properties"]["log_pool_events"])
    schema["properties"]["profiles"] = {
        "description": "named overlays chosen by --profile, DBREGISTRY_PROFILE or APP_ENV",
        "type": "object",
        "additionalProperties": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "default": {"type": "string"},
                "databases": {
                    "type": "object",
                    "propertyNames": {"pattern": NAME_PATTERN},
                    "additionalProperties": {"$ref": "#/$defs/DatabaseOverlay"},
                },
            },
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "dbregistry configuration",
        **{k: v for k, v in schema.items() if k != "title"},
    }


def _without_uri_format(prop: dict[str, Any]) -> dict[str, Any]:
    # ${DATABASE_URL:-sqlite:///./dev.db} is a valid value but not a URI.
    prop = copy.deepcopy(prop)
    for branch in [prop, *prop.get("anyOf", [])]:
        branch.pop("format", None)
    return prop


def _interpolatable(prop: dict[str, Any]) -> dict[str, Any]:
    # Any value may be written as ${VAR...}, substituted before validation.
    if _any_string(prop):
        return prop
    meta: dict[str, Any] = {k: prop[k] for k in ("title", "description", "default") if k in prop}
    body = {k: v for k, v in prop.items() if k not in meta}
    return {**meta, "anyOf": [body, {"type": "string", "pattern": r"\$\{"}]}


def _any_string(prop: dict[str, Any]) -> bool:
    if prop.get("type") == "string" and not {"enum", "const", "pattern", "format"} & prop.keys():
        return True
    return any(_any_string(branch) for branch in prop.get("anyOf", []))
