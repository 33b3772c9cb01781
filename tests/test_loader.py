"""From sources to a validated configuration (`dbregistry._loader`): every problem at once, in order, with its origin.

Through the public constructors (`Registry.from_yaml`, `Registry.load`) and
`Registry.origin`; YAML written to ``tmp_path``, the environment passed explicitly.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dbregistry import ConfigError, Origin, Registry

YAML = """\
databases:
  cache:
    url: sqlite://
    pool_class: QueuePool
  primary:
    url: postgresql://app@db/app
    pool_size: -1
  replica:
    url: postgresql://app@replica/app
    replica_of: primry
"""

QUEUE_ON_MEMORY = (
    "QueuePool gives each connection its own empty in-memory database; "
    "use pool_class: StaticPool (one shared connection) or a file database"
)


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems_of(error: pytest.ExceptionInfo[ConfigError]) -> list[tuple[str, str, str, int | None]]:
    return [(p.source or "", p.path, p.message, p.line) for p in error.value.problems]


class TestEveryProblemAtOnce:
    def test_field_errors_and_rule_findings_in_file_order(self, tmp_path: Path) -> None:
        config = write(tmp_path, YAML)
        with pytest.raises(ConfigError) as info:
            Registry.from_yaml(config, environ={})
        assert problems_of(info) == [
            (str(config), "databases.cache.pool_class", QUEUE_ON_MEMORY, 4),
            (str(config), "databases.primary.pool_size", "must be >= 0, got -1", 7),
            (
                str(config),
                "databases.replica.replica_of",
                "'primry' is not a declared database; did you mean 'primary'? declared: cache, primary, replica",
                10,
            ),
        ]
        assert str(info.value).splitlines()[:2] == [
            f"3 problems in {config}",
            f"  {config}:4   databases.cache.pool_class: {QUEUE_ON_MEMORY}",
        ]

    def test_the_file_s_lines_first_then_the_variables(self, tmp_path: Path) -> None:
        config = write(tmp_path, YAML.replace("    replica_of: primry\n", "    replica_of: primary\n"))
        dotenv = write(tmp_path, "DBREGISTRY_DATABASES__PRIMARY__ECHO=loud\n", ".env")
        environ = {"DBREGISTRY_DATABASES__REPLICA__WEIGHT": "0"}
        with pytest.raises(ConfigError) as info:
            Registry.load(config, environ=environ, env_file=dotenv)
        assert problems_of(info) == [
            (str(config), "databases.cache.pool_class", QUEUE_ON_MEMORY, 4),
            (str(config), "databases.primary.pool_size", "must be >= 0, got -1", 7),
            (
                f"DBREGISTRY_DATABASES__PRIMARY__ECHO (from {dotenv})",
                "databases.primary.echo",
                "must be true or false or 'debug', got 'loud'",
                None,
            ),
            ("DBREGISTRY_DATABASES__REPLICA__WEIGHT", "databases.replica.weight", "must be >= 1, got '0'", None),
        ]

    def test_a_profile_that_is_not_selected_is_checked_too(self, tmp_path: Path) -> None:
        config = write(
            tmp_path,
            "databases:\n  primary:\n    url: sqlite:///x.db\n"
            "profiles:\n  prod:\n    databases:\n      primary: {pool_size: -3}\n",
        )
        with pytest.raises(ConfigError) as info:
            Registry.from_yaml(config, environ={})
        [(source, path, message, line)] = problems_of(info)
        assert (source, message, line) == (str(config), "must be >= 0, got -3", 7)
        assert path.endswith("databases.primary.pool_size")

    def test_a_thousand_wrong_databases_are_all_reported(self, tmp_path: Path) -> None:
        entries = "".join(f"  db{i}:\n    url: sqlite:///x.db\n    pool_size: -1\n" for i in range(1000))
        with pytest.raises(ConfigError) as info:
            Registry.from_yaml(write(tmp_path, "databases:\n" + entries), environ={})
        lines = [p.line or 0 for p in info.value.problems]
        assert len(lines) == 1000
        assert lines == sorted(lines)
        assert lines[0] == 4  # db0.pool_size


class TestOrigins:
    @pytest.fixture
    def config(self, tmp_path: Path) -> Path:
        return write(
            tmp_path,
            YAML.replace("pool_class: QueuePool", "pool_class: StaticPool")
            .replace("primry", "primary")
            .replace("pool_size: -1", "pool_size: 1")
            + "profiles:\n  prod:\n    databases:\n      primary: {pool_size: 20}\n",
        )

    def test_each_value_names_the_layer_it_came_from(self, config: Path, tmp_path: Path) -> None:
        dotenv = write(tmp_path, "DBREGISTRY_DATABASES__PRIMARY__ECHO=true\n", ".env")
        registry = Registry.load(
            config,
            profile="prod",
            environ={"DBREGISTRY_DATABASES__REPLICA__WEIGHT": "2"},
            env_file=dotenv,
            overrides={"databases": {"cache": {"echo": False}}},
        )
        assert str(registry.origin("primary", "url")) == f"{config}:6"
        assert str(registry.origin("primary", "pool_size")) == f"{config}:14"  # the profile's line
        assert str(registry.origin("replica", "weight")) == "DBREGISTRY_DATABASES__REPLICA__WEIGHT"
        assert str(registry.origin("primary", "echo")) == f"DBREGISTRY_DATABASES__PRIMARY__ECHO (from {dotenv})"
        assert str(registry.origin("cache", "echo")) == "overrides"
        assert registry.origin("replica") == Origin(registry.origin("replica").precedence, str(config), str(config), 8)
        registry.close()

    def test_from_dict_names_itself(self) -> None:
        registry = Registry.from_dict({"databases": {"a": {"url": "sqlite://"}}}, environ={})
        assert str(registry.origin("a", "url")) == "from_dict"
