"""The configuration models (`dbregistry._schema`): every field's validation message, as users read it.

Each wrong value is a `ConfigError` at load naming the field path; the
values each field accepts are normalized the way the engines will use them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import pool

from dbregistry import ConfigError, DatabaseConfig, Registry, RegistryConfig, SessionConfig

FILE = "sqlite:////tmp/dbregistry-test-schema.db"  # never opened: validation builds no engine

# (field, value, reported path under databases.a, message)
WRONG_VALUES: list[tuple[str, Any, str, str]] = [
    ("url", 5, "url", "must be a URL string, got int"),
    (
        "url",
        "not a url",
        "url",
        "is not a database URL; expected dialect[+driver]://user:password@host:port/database (special characters in the password must be %-encoded)",
    ),
    ("url", "", "url", "is empty; expected a URL such as postgresql://user:password@host/db"),
    ("pool_size", -1, "pool_size", "must be >= 0, got -1"),
    ("pool_size", "x", "pool_size", "must be a whole number, got 'x'"),
    ("pool_size", 1.5, "pool_size", "must be a whole number, got 1.5"),
    ("pool_size", True, "pool_size", "must be a whole number, got True"),
    ("max_overflow", -2, "max_overflow", "must be >= -1, got -2"),
    ("pool_timeout", 0, "pool_timeout", "must be > 0, got 0"),
    ("pool_timeout", "soon", "pool_timeout", "must be a number, got 'soon'"),
    ("pool_recycle", -2, "pool_recycle", "must be >= -1, got -2"),
    ("pool_pre_ping", "maybe", "pool_pre_ping", "must be true or false, got 'maybe'"),
    ("pool_use_lifo", 3, "pool_use_lifo", "must be true or false, got 3"),
    (
        "pool_reset_on_return",
        "always",
        "pool_reset_on_return",
        "must be one of 'rollback', 'commit' or 'none', got 'always'",
    ),
    ("echo", "loud", "echo", "must be true or false or 'debug', got 'loud'"),
    ("echo_pool", 2, "echo_pool", "must be true or false or 'debug', got 2"),
    (
        "isolation_level",
        "SOMETIMES",
        "isolation_level",
        "must be one of AUTOCOMMIT, READ COMMITTED, READ UNCOMMITTED, REPEATABLE READ, SERIALIZABLE, got 'SOMETIMES'",
    ),
    ("isolation_level", 3, "isolation_level", "must be a string, got 3"),
    ("connect_args", "x", "connect_args", "must be a mapping"),
    ("driver_args", {"asyncpg": 3}, "driver_args.asyncpg", "must be a mapping"),
    ("driver_args", "x", "driver_args", "must be a mapping"),
    ("execution_options", [], "execution_options", "must be a mapping, got a list"),
    ("replica_of", 3, "replica_of", "must be a string, got 3"),
    ("password_file", 3, "password_file", "must be a file path"),
    ("pooler", "pgcat", "pooler", "must be one of 'pgbouncer-transaction', 'pgbouncer-session' or 'none', got 'pgcat'"),
    (
        "direct_url",
        "nope",
        "direct_url",
        "is not a database URL; expected dialect[+driver]://user:password@host:port/database (special characters in the password must be %-encoded)",
    ),
    ("weight", 0, "weight", "must be >= 1, got 0"),
    ("weight", "heavy", "weight", "must be a whole number, got 'heavy'"),
    ("replica_max_lag_seconds", 0, "replica_max_lag_seconds", "must be > 0, got 0"),
    ("log_pool_events", "often", "log_pool_events", "must be true or false, got 'often'"),
    ("max_connections", 0, "max_connections", "must be >= 1, got 0"),
    ("session", {"expire_on_commit": "x"}, "session.expire_on_commit", "must be true or false, got 'x'"),
    ("session", {"autoflsh": True}, "session.autoflsh", "unknown field; did you mean 'autoflush'?"),
    ("hosts", 3, "hosts", "must be a list, got 3"),
    ("hosts", ["h1:x"], "hosts.0", "'h1:x' has no valid port; a port is a number from 1 to 65535"),
    ("password_provider", 3, "password_provider", "must be a string, got 3"),
    (
        "password_provider",
        "nomodule",
        "password_provider",
        "must be package.module:function (a dotted module path, ':', the function's name)",
    ),
    ("read_your_writes", "-2s", "read_your_writes", "must be lsn, off or a duration above 0 such as 2s, got '-2s'"),
    ("read_your_writes", "sometimes", "read_your_writes", "must be lsn, off or a duration such as 2s, got 'sometimes'"),
    ("session", 3, "session", "must be a mapping of session options (expire_on_commit, autoflush, autobegin), got 3"),
]


def problems_of(declaration: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        Registry.from_dict(declaration, environ={})
    return [str(problem) for problem in info.value.problems]


def database(**fields: Any) -> DatabaseConfig:
    registry = Registry.from_dict({"databases": {"a": {"url": FILE, **fields}}}, environ={})
    return registry["a"]


class TestDatabaseFields:
    @pytest.mark.parametrize(
        ("field", "value", "path", "message"),
        WRONG_VALUES,
        ids=[f"{field}={value!r}" for field, value, _, _ in WRONG_VALUES],
    )
    def test_a_wrong_value_names_the_field_and_what_is_allowed(
        self, field: str, value: Any, path: str, message: str
    ) -> None:
        assert problems_of({"databases": {"a": {"url": FILE, field: value}}}) == [
            f"from_dict  databases.a.{path}: {message}"
        ]

    def test_every_field_is_covered_here(self) -> None:
        """A new field gets a row in WRONG_VALUES (or is listed here as taking anything)."""
        takes_anything = {"pool_class"}  # its own tests: test_pools.py
        assert {field for field, *_ in WRONG_VALUES} | takes_anything == set(DatabaseConfig.model_fields)

    def test_every_wrong_field_is_reported_at_once(self) -> None:
        assert problems_of({"databases": {"a": {"url": FILE, "pool_size": -1, "weight": 0, "echo": "loud"}}}) == [
            "from_dict  databases.a.echo: must be true or false or 'debug', got 'loud'",
            "from_dict  databases.a.pool_size: must be >= 0, got -1",
            "from_dict  databases.a.weight: must be >= 1, got 0",
        ]

    def test_an_unknown_field_suggests_the_closest(self) -> None:
        assert problems_of({"databases": {"a": {"url": FILE, "pool_sise": 3}}}) == [
            "from_dict  databases.a.pool_sise: unknown field; did you mean 'pool_size'?"
        ]

    def test_a_missing_url(self) -> None:
        assert problems_of({"databases": {"a": {"pool_size": 3}}}) == [
            "from_dict  databases.a.url: required: every database needs a url"
        ]

    def test_a_database_name_starts_with_a_letter(self) -> None:
        assert problems_of({"databases": {"1st": {"url": FILE}}}) == [
            "from_dict  databases.1st: a database name starts with a letter and has only letters, digits, '_' and '-'"
        ]


class TestAcceptedValues:
    @pytest.mark.parametrize("spelled", ["read uncommitted", "READ_UNCOMMITTED", " Read  Uncommitted "])
    def test_isolation_level_is_normalized_to_sqlalchemy_s_spelling(self, spelled: str) -> None:
        assert database(isolation_level=spelled).isolation_level == "READ UNCOMMITTED"

    def test_pool_class_takes_sqlalchemy_s_class_itself(self) -> None:
        assert database(pool_class=pool.NullPool).pool_class == "NullPool"

    @pytest.mark.parametrize("value", [True, False, "debug"])
    def test_echo_takes_a_flag_or_debug(self, value: bool | str) -> None:
        assert database(echo=value, echo_pool=value).echo == value

    def test_unset_fields_stay_unset_so_sqlalchemy_keeps_its_defaults(self) -> None:
        declared = database(pool_size=3)
        assert declared.model_fields_set == {"url", "pool_size"}
        assert (declared.max_overflow, declared.pool_timeout, declared.weight) == (None, None, 1)

    def test_password_file_is_a_path(self, tmp_path: Path) -> None:
        secret = tmp_path / "pw"
        secret.write_text("s3cret")
        declared = database(url="postgresql://app@db/app", password_file=str(secret))
        assert declared.password_file == secret
        assert declared.url.password == "s3cret"

    def test_repr_masks_the_password(self) -> None:
        declared = database(url="postgresql://app:s3cret@db/app", connect_args={"password": "s3cret"})
        assert "s3cret" not in repr(declared)
        assert re.search(r"url=postgresql://app:\*\*\*@db/app", repr(declared))

    def test_models_are_frozen(self) -> None:
        declared = database()
        with pytest.raises(ValueError, match="frozen"):
            declared.pool_size = 3


class TestTopLevel:
    @pytest.mark.parametrize(
        ("extra", "message"),
        [
            ({"default": 3}, "default: must be a database name, got int"),
            ({"default": "b"}, "default: 'b' is not a declared database; declared: a"),
            ({"log_pool_events": "x"}, "log_pool_events: must be true or false"),
            ({"databases": []}, "databases: must be a mapping of database name to settings"),
            ({"profiles": 3}, "profiles: must be a mapping of profile name to overlay"),
            ({"session": {"x": 1}}, "session.x: unknown field; allowed: expire_on_commit, autoflush, autobegin"),
            ({"colour": 1}, "colour: unknown field; allowed: default, databases, profiles, log_pool_events, session"),
        ],
    )
    def test_a_wrong_top_level_value(self, extra: dict[str, Any], message: str) -> None:
        assert problems_of({"databases": {"a": {"url": FILE}}} | extra) == [f"from_dict  {message}"]

    def test_the_validated_declaration(self) -> None:
        registry = Registry.from_dict(
            {"databases": {"b": {"url": FILE}, "a": {"url": FILE}}, "session": {"expire_on_commit": False}},
            environ={},
        )
        config = registry.config
        assert isinstance(config, RegistryConfig)
        assert list(config.databases) == ["b", "a"]  # declaration order
        assert config.session == SessionConfig(expire_on_commit=False)
        assert config.session.options() == {"expire_on_commit": False}
        assert config.log_pool_events is False
