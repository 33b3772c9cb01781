"""``DBREGISTRY_*`` variables and ``.env`` files as pydantic-settings reads them (`dbregistry._envsettings`).

How a variable's name becomes a field path and its text a value, and how a
``.env`` file is read; the precedence between sources is in test_sources.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dbregistry import ConfigError, Registry


class TestPrefixedVariables:
    def test_field_of_a_declared_database(self, base_file: Path) -> None:
        registry = Registry.from_yaml(base_file, environ={"DBREGISTRY_DATABASES__REPLICA__POOL_SIZE": "30"})
        assert registry["replica"].pool_size == 30
        assert str(registry.origin("replica", "pool_size")) == "DBREGISTRY_DATABASES__REPLICA__POOL_SIZE"

    def test_declares_a_new_database(self, base_file: Path) -> None:
        registry = Registry.from_yaml(
            base_file,
            environ={
                "DBREGISTRY_DATABASES__REPORTING__URL": "postgresql://u@reports/app",
                "DBREGISTRY_DATABASES__REPORTING__POOL_CLASS": "null",
            },
        )
        assert registry.names == ["primary", "replica", "reporting"]
        assert registry["reporting"].pool_class == "NullPool"

    def test_names_match_declared_ones_of_any_case(self) -> None:
        registry = Registry.from_dict(
            {"databases": {"Reporting": {"url": "sqlite:///r.db"}}},
            environ={"DBREGISTRY_DATABASES__REPORTING__POOL_SIZE": "4"},
        )
        assert registry.names == ["Reporting"]
        assert registry["Reporting"].pool_size == 4

    def test_json_for_mappings(self, base_file: Path) -> None:
        registry = Registry.from_yaml(
            base_file, environ={"DBREGISTRY_DATABASES__PRIMARY__CONNECT_ARGS": '{"connect_timeout": 5}'}
        )
        assert registry["primary"].connect_args == {"connect_timeout": 5}

    def test_nested_keys_of_mappings(self, base_file: Path) -> None:
        registry = Registry.from_yaml(
            base_file, environ={"DBREGISTRY_DATABASES__PRIMARY__CONNECT_ARGS__APPLICATION_NAME": "api"}
        )
        assert registry["primary"].connect_args == {"application_name": "api"}

    def test_bad_value_names_the_variable(self, base_file: Path) -> None:
        with pytest.raises(ConfigError) as info:
            Registry.from_yaml(base_file, environ={"DBREGISTRY_DATABASES__REPLICA__POOL_SIZE": "ten"})
        (problem,) = info.value.problems
        assert problem.path == "databases.replica.pool_size"
        assert problem.source == "DBREGISTRY_DATABASES__REPLICA__POOL_SIZE"
        assert problem.file is None
        assert problem.line is None
        assert str(info.value) == (
            f"1 problem in {base_file}\n"
            "  DBREGISTRY_DATABASES__REPLICA__POOL_SIZE  databases.replica.pool_size: must be a whole number, got 'ten'"
        )

    def test_bad_json_names_the_variable(self, base_file: Path) -> None:
        with pytest.raises(ConfigError) as info:
            Registry.from_yaml(base_file, environ={"DBREGISTRY_DATABASES__PRIMARY__CONNECT_ARGS": "{not json"})
        (problem,) = info.value.problems
        assert problem.source == "DBREGISTRY_DATABASES__PRIMARY__CONNECT_ARGS"
        assert problem.message == (
            "is not JSON (Expecting property name enclosed in double quotes: line 1 column 2); "
            "a mapping is written in JSON here"
        )

    @pytest.mark.parametrize(
        ("text", "reason"),
        [
            ('{"primary": {"url": "postgresql://app:Zq8-pw@db/app"', "Expecting ',' delimiter: line 1 column 53"),
            ("postgresql://app:Zq8-pw@db/app", "Expecting value: line 1 column 1"),
            (
                '{"a": {"url": "sqlite://", "pool_size": ' + "9" * 5000 + "}}",
                "a number has more digits than Python converts (4300)",
            ),
        ],
    )
    def test_databases_that_are_not_json_say_why_and_show_nothing(self, text: str, reason: str) -> None:
        # Before: "must be a mapping of database name to settings", whatever was wrong.
        with pytest.raises(ConfigError) as info:
            Registry.from_dict({}, environ={"DBREGISTRY_DATABASES": text})
        assert str(info.value) == (
            "1 problem in from_dict\n"
            f"  DBREGISTRY_DATABASES  databases: is not JSON ({reason}); "
            "a mapping of database name to settings is written in JSON here"
        )

    def test_default_from_the_environment(self, base_file: Path) -> None:
        registry = Registry.from_yaml(base_file, environ={"DBREGISTRY_DEFAULT": "replica"})
        assert registry.default == "replica"

    def test_environ_empty_ignores_the_environment(self, base_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("DBREGISTRY_DATABASES__PRIMARY__POOL_SIZE", "99")
        assert Registry.from_yaml(base_file, environ={})["primary"].pool_size == 5
        assert Registry.from_yaml(base_file)["primary"].pool_size == 99

    def test_every_constructor_reads_os_environ_by_default(
        self, base_file: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("DBREGISTRY_DATABASES__PRIMARY__POOL_SIZE", "42")
        monkeypatch.setenv("DBREGISTRY_CONFIG", str(base_file))
        assert Registry.from_yaml(base_file)["primary"].pool_size == 42
        assert Registry.from_dict({"databases": {"primary": {"url": "sqlite://"}}})["primary"].pool_size == 42
        assert Registry.load()["primary"].pool_size == 42
        monkeypatch.delenv("DBREGISTRY_CONFIG")
        monkeypatch.setenv("DATABASE_URL", "sqlite:///x.db")
        assert Registry.from_env()["primary"].pool_size == 42


class TestVariableNames:
    def test_the_prefix_and_keys_are_case_insensitive(self, base_file: Path) -> None:
        registry = Registry.from_yaml(base_file, environ={"dbregistry_databases__replica__pool_size": "7"})
        assert registry["replica"].pool_size == 7

    def test_top_level_settings(self, base_file: Path) -> None:
        registry = Registry.from_yaml(
            base_file,
            environ={"DBREGISTRY_LOG_POOL_EVENTS": "yes", "DBREGISTRY_SESSION__EXPIRE_ON_COMMIT": "false"},
        )
        assert registry.config.log_pool_events is True
        assert registry.config.session.options() == {"expire_on_commit": False}

    def test_json_values_keep_their_types(self, base_file: Path) -> None:
        registry = Registry.from_yaml(
            base_file, environ={"DBREGISTRY_DATABASES__PRIMARY__EXECUTION_OPTIONS": '{"tags": [1, 2], "x": null}'}
        )
        assert registry["primary"].execution_options == {"tags": [1, 2], "x": None}


class TestEnvFileFormat:
    def test_comments_export_and_quotes(self, base_file: Path, tmp_path: Path) -> None:
        env = tmp_path / ".env"
        env.write_text(
            "# a comment\n"
            "export DBREGISTRY_DATABASES__PRIMARY__POOL_SIZE=3\n"
            'DBREGISTRY_DATABASES__REPLICA__EXECUTION_OPTIONS=\'{"note": "a # b"}\'\n'
            "DBREGISTRY_DATABASES__PRIMARY__ECHO=true # after the value\n"
        )
        registry = Registry.from_yaml(base_file, environ={}, env_file=env)
        assert registry["primary"].pool_size == 3
        assert registry["primary"].echo is True
        assert registry["replica"].execution_options == {"note": "a # b"}  # quoted: no comment

    def test_a_file_that_is_not_utf8_names_the_line_and_offset_not_the_bytes(
        self, base_file: Path, tmp_path: Path
    ) -> None:
        env = tmp_path / ".env"
        env.write_bytes(b"DBREGISTRY_DEFAULT=primary\nPASSWORD=caf\xe9-s3cret\n")
        with pytest.raises(ConfigError) as info:
            Registry.from_yaml(base_file, environ={}, env_file=env)
        [problem] = info.value.problems
        assert str(problem) == f"{env}:2  env file {env} is not UTF-8 text (invalid byte at offset 39)"
        assert "s3cret" not in str(info.value)
