"""Environment variables, .env files, secret files, and the precedence between every source."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from dbregistry import ConfigError, Registry
from dbregistry._sources import (
    PRECEDENCE,
    Layer,
    Origin,
    Origins,
    Precedence,
    base_layer,
    merge,
    overrides_layer,
    profile_layer,
)
from dbregistry._yamlfile import PathKey, load_yaml_text


class TestDatabaseUrlConventions:
    def test_database_url_alone_gives_primary(self) -> None:
        registry = Registry.from_env(environ={"DATABASE_URL": "postgres://u:p@h:5432/app"}, env_file=None)
        assert registry.names == ["primary"]
        assert registry.default == "primary"
        assert registry["primary"].url.drivername == "postgresql"
        assert str(registry.origin("primary", "url")) == "DATABASE_URL"

    def test_database_url_overrides_the_default_database(self, base_file: Path) -> None:
        registry = Registry.from_yaml(base_file, environ={"DATABASE_URL": "postgresql://u@env-host/app"})
        assert registry["primary"].url.host == "env-host"
        assert registry["replica"].url.host == "replica.internal"

    def test_database_url_follows_the_declared_default(self, base_file: Path) -> None:
        registry = Registry.from_yaml(
            base_file, environ={"DATABASE_URL": "postgresql://u@env-host/app", "DBREGISTRY_DEFAULT": "replica"}
        )
        assert registry.default == "replica"
        assert registry["replica"].url.host == "env-host"
        assert registry["primary"].url.host == "db.internal"

    def test_name_database_url_overrides_a_declared_database(self, base_file: Path) -> None:
        registry = Registry.from_yaml(base_file, environ={"REPLICA_DATABASE_URL": "postgresql://u@r2/app"})
        assert registry["replica"].url.host == "r2"
        assert str(registry.origin("replica", "url")) == "REPLICA_DATABASE_URL"

    def test_name_database_url_invents_nothing(self, base_file: Path) -> None:
        registry = Registry.from_yaml(base_file, environ={"TEST_DATABASE_URL": "postgresql://u@t/app"})
        assert registry.names == ["primary", "replica"]

    def test_dashes_in_names_become_underscores(self, tmp_path: Path) -> None:
        registry = Registry.from_dict(
            {"databases": {"read-replica": {"url": "sqlite://"}}},
            environ={"READ_REPLICA_DATABASE_URL": "postgresql://u@rr/app"},
        )
        assert registry["read-replica"].url.host == "rr"

    def test_nothing_declared_anywhere(self) -> None:
        with pytest.raises(ConfigError, match=re.escape("databases: no database is declared; set DATABASE_URL")):
            Registry.from_env(environ={}, env_file=None)


class TestMissingUrlFromTheEnvironment:
    def test_names_the_variable_that_declared_the_database(self) -> None:
        with pytest.raises(ConfigError) as info:
            Registry.from_env(environ={"DBREGISTRY_DATABASES__REPORTS__POOL_SIZE": "5"})
        assert str(info.value) == (
            "1 problem in environment\n"
            "  DBREGISTRY_DATABASES__REPORTS__POOL_SIZE  databases.reports.url: required: every database needs a url"
        )


class TestUnknownPrefixedVariables:
    """A DBREGISTRY_ variable that nothing reads is a typo: reported, never silently ignored."""

    @pytest.mark.parametrize(
        ("variable", "message"),
        [
            ("DBREGISTRY_DATABASE__PRIMARY__POOL_SIZE", "did you mean DBREGISTRY_DATABASES__PRIMARY__POOL_SIZE?"),
            ("DBREGISTRY_DEFAUT", "did you mean DBREGISTRY_DEFAULT?"),
            ("dbregistry_profle", "did you mean DBREGISTRY_PROFILE?"),
            (
                "DBREGISTRY_POOLSIZE",
                "dbregistry reads DBREGISTRY_DATABASES__<NAME>__<FIELD>, DBREGISTRY_DEFAULT, "
                "DBREGISTRY_LOG_POOL_EVENTS, DBREGISTRY_SESSION__<OPTION>, DBREGISTRY_CONFIG and DBREGISTRY_PROFILE",
            ),
        ],
    )
    def test_is_a_config_error_naming_the_variable(self, base_file: Path, variable: str, message: str) -> None:
        with pytest.raises(ConfigError) as info:
            Registry.from_yaml(base_file, environ={variable: "postgresql://app:s3cret@db/app"})
        assert str(info.value) == f"1 problem in {base_file}\n  {variable}  unknown variable; {message}"
        assert "s3cret" not in str(info.value)

    def test_in_an_env_file_names_the_file(self, base_file: Path, tmp_path: Path) -> None:
        env = tmp_path / ".env"
        env.write_text("DBREGISTRY_DEFAUT=primary\n")
        with pytest.raises(ConfigError) as info:
            Registry.from_yaml(base_file, environ={}, env_file=env)
        assert [p.source for p in info.value.problems] == [f"DBREGISTRY_DEFAUT (from {env})"]

    def test_the_variables_dbregistry_reads_are_accepted(self, base_file: Path) -> None:
        registry = Registry.from_yaml(
            base_file,
            environ={
                "DBREGISTRY_DEFAULT": "replica",
                "DBREGISTRY_LOG_POOL_EVENTS": "false",
                "DBREGISTRY_CONFIG": str(base_file),
                "DBREGISTRY_PROFILE": "",
            },
        )
        assert registry.default == "replica"


class TestDotEnv:
    def test_env_file_is_read(self, base_file: Path, tmp_path: Path) -> None:
        env = tmp_path / ".env"
        env.write_text("DBREGISTRY_DATABASES__PRIMARY__POOL_SIZE=11\nREPLICA_DATABASE_URL=postgresql://u@dotenv/app\n")
        registry = Registry.from_yaml(base_file, environ={}, env_file=env)
        assert registry["primary"].pool_size == 11
        assert registry["replica"].url.host == "dotenv"
        assert str(registry.origin("primary", "pool_size")) == f"DBREGISTRY_DATABASES__PRIMARY__POOL_SIZE (from {env})"

    def test_real_environment_beats_the_file(self, base_file: Path, tmp_path: Path) -> None:
        env = tmp_path / ".env"
        env.write_text("DBREGISTRY_DATABASES__PRIMARY__POOL_SIZE=11\n")
        registry = Registry.from_yaml(
            base_file, environ={"DBREGISTRY_DATABASES__PRIMARY__POOL_SIZE": "12"}, env_file=env
        )
        assert registry["primary"].pool_size == 12

    def test_env_file_values_fill_interpolation(self, tmp_path: Path) -> None:
        env = tmp_path / ".env"
        env.write_text("MY_DB=sqlite:///from-dotenv.db\n")
        registry = Registry.from_dict({"databases": {"a": {"url": "${MY_DB}"}}}, environ={}, env_file=env)
        assert registry["a"].url.database == "from-dotenv.db"

    def test_load_and_from_env_read_dot_env_when_present(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.chdir(tmp_path)
        assert not (tmp_path / ".env").exists()
        with pytest.raises(ConfigError):
            Registry.from_env(environ={})
        (tmp_path / ".env").write_text("DATABASE_URL=sqlite:///dotenv.db\n")
        assert Registry.from_env(environ={})["primary"].url.database == "dotenv.db"
        assert Registry.load(environ={})["primary"].url.database == "dotenv.db"

    def test_explicit_missing_env_file_is_an_error(self, base_file: Path, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match=re.escape(f"env file {tmp_path / 'nope.env'} not found")):
            Registry.from_yaml(base_file, environ={}, env_file=tmp_path / "nope.env")


AWKWARD = "p@ss/w:rd%20#?&x"


class TestSecretFiles:
    def test_password_file_is_quoted_into_the_url(self, tmp_path: Path) -> None:
        secret = tmp_path / "db_password"
        secret.write_text(AWKWARD + "\n")
        registry = Registry.from_dict(
            {"databases": {"a": {"url": "postgresql://app@db/app", "password_file": str(secret)}}}, environ={}
        )
        url = registry["a"].url
        assert url.password == AWKWARD
        assert url.username == "app"
        assert url.host == "db"
        assert AWKWARD not in repr(registry["a"])
        rendered = url.render_as_string(hide_password=False)
        assert make_url(rendered).password == AWKWARD

    def test_password_file_beats_the_password_in_the_file_url(self, tmp_path: Path) -> None:
        secret = tmp_path / "pw"
        secret.write_text("from-secret")
        registry = Registry.from_dict(
            {"databases": {"a": {"url": "postgresql://app:in-yaml@db/app", "password_file": str(secret)}}},
            environ={},
        )
        assert registry["a"].url.password == "from-secret"

    def test_password_file_from_the_environment(self, tmp_path: Path) -> None:
        secret = tmp_path / "pw"
        secret.write_text("from-secret")
        registry = Registry.from_dict(
            {"databases": {"a": {"url": "postgresql://app@db/app"}}},
            environ={"DBREGISTRY_DATABASES__A__PASSWORD_FILE": str(secret)},
        )
        assert registry["a"].url.password == "from-secret"

    def test_missing_password_file(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError) as info:
            Registry.from_dict(
                {"databases": {"a": {"url": "postgresql://app@db/app", "password_file": str(tmp_path / "none")}}},
                environ={},
            )
        (problem,) = info.value.problems
        assert problem.path == "databases.a.password_file"
        assert problem.message == f"password file {tmp_path / 'none'} does not exist"

    @pytest.mark.parametrize("content", ["", "\n", "\r\n"])
    def test_empty_password_file_is_refused_at_load(self, tmp_path: Path, content: str) -> None:
        secret = tmp_path / "pw"
        secret.write_text(content, newline="")
        with pytest.raises(ConfigError) as info:
            Registry.from_dict(
                {"databases": {"a": {"url": "postgresql://app@db/app", "password_file": str(secret)}}},
                environ={},
            )
        (problem,) = info.value.problems
        assert problem.path == "databases.a.password_file"
        assert problem.message == f"password file {secret} is empty; write the password into it"

    def test_file_substitution_is_plain_text(self, tmp_path: Path) -> None:
        secret = tmp_path / "url"
        secret.write_text("sqlite:///from-file.db\n")
        registry = Registry.from_dict({"databases": {"a": {"url": f"${{file:{secret}}}"}}}, environ={})
        assert registry["a"].url.database == "from-file.db"


class TestPrecedence:
    """overrides > environment > .env > secret files > profile > YAML base > defaults, one step at a time."""

    YAML = """\
databases:
  primary:
    url: postgresql://app:base-pw@db/app
    pool_size: 1
profiles:
  production:
    databases:
      primary: {pool_size: 2, url: "postgresql://app:profile-pw@db/app"}
"""

    @pytest.fixture
    def files(self, tmp_path: Path) -> tuple[Path, Path, Path]:
        config = tmp_path / "c.yaml"
        config.write_text(self.YAML)
        secret = tmp_path / "pw"
        secret.write_text("secret-pw")
        env = tmp_path / ".env"
        env.write_text("DBREGISTRY_DATABASES__PRIMARY__POOL_SIZE=4\n")
        return config, secret, env

    def test_base_beats_defaults(self, files: tuple[Path, Path, Path]) -> None:
        config, _, _ = files
        registry = Registry.from_yaml(config, environ={})
        assert registry["primary"].pool_size == 1
        assert registry["primary"].max_overflow is None  # SQLAlchemy's default applies (test_engines.py)
        registry.close()

    def test_profile_beats_base(self, files: tuple[Path, Path, Path]) -> None:
        config, _, _ = files
        registry = Registry.from_yaml(config, environ={}, profile="production")
        assert registry["primary"].pool_size == 2
        assert registry["primary"].url.password == "profile-pw"
        assert registry.origin("primary", "pool_size").line == 8

    def test_secret_file_beats_profile(self, files: tuple[Path, Path, Path]) -> None:
        config, secret, _ = files
        registry = Registry.from_yaml(
            config, environ={"DBREGISTRY_DATABASES__PRIMARY__PASSWORD_FILE": str(secret)}, profile="production"
        )
        assert registry["primary"].url.password == "secret-pw"

    def test_dotenv_beats_secret_file(self, files: tuple[Path, Path, Path], tmp_path: Path) -> None:
        config, secret, _ = files
        env = tmp_path / "url.env"
        env.write_text(
            f"DATABASE_URL=postgresql://app:dotenv-pw@db/app\nDBREGISTRY_DATABASES__PRIMARY__PASSWORD_FILE={secret}\n"
        )
        registry = Registry.from_yaml(config, environ={}, env_file=env, profile="production")
        assert registry["primary"].url.password == "dotenv-pw"

    def test_environment_beats_dotenv(self, files: tuple[Path, Path, Path]) -> None:
        config, _, env = files
        registry = Registry.from_yaml(
            config, environ={"DBREGISTRY_DATABASES__PRIMARY__POOL_SIZE": "5"}, env_file=env, profile="production"
        )
        assert registry["primary"].pool_size == 5

    def test_overrides_beat_the_environment(self, files: tuple[Path, Path, Path]) -> None:
        config, _, env = files
        registry = Registry.from_yaml(
            config,
            environ={"DBREGISTRY_DATABASES__PRIMARY__POOL_SIZE": "5"},
            env_file=env,
            profile="production",
            overrides={"databases": {"primary": {"pool_size": 6}}},
        )
        assert registry["primary"].pool_size == 6

    def test_env_url_without_password_takes_the_secret(self, files: tuple[Path, Path, Path]) -> None:
        config, secret, _ = files
        registry = Registry.from_yaml(
            config,
            environ={
                "DATABASE_URL": "postgresql://app@env-host/app",
                "DBREGISTRY_DATABASES__PRIMARY__PASSWORD_FILE": str(secret),
            },
        )
        assert registry["primary"].url.host == "env-host"
        assert registry["primary"].url.password == "secret-pw"


# -- merge(): values shared with the layers, copied on write; Origins -----------------------

LAYERED = """\
databases:
  primary:
    url: postgresql://app:yaml-pw@db.internal/app
    pool_size: 5
    connect_args:
      connect_timeout: 3
  replica: &replica
    url: postgresql://app:yaml-pw@replica.internal/app
    replica_of: primary
  reporting: *replica
profiles:
  production:
    databases:
      primary:
        pool_size: 20
"""


def env_layer(data: dict[str, Any], variable: str) -> Layer:
    return Layer(Precedence.ENVIRON, data, lambda _path: Origin(Precedence.ENVIRON, variable), "environment")


def in_file(line: int, precedence: Precedence = Precedence.YAML) -> Origin:
    return Origin(precedence, "databases.yaml", "databases.yaml", line)


OVERRIDDEN = Origin(Precedence.OVERRIDES, "overrides")


class TestMergeCopyOnWriteAndOrigins:
    """merge() never changes a layer: it shares their values and copies a mapping only to merge into it."""

    @pytest.fixture
    def base(self) -> Layer:
        return base_layer(load_yaml_text(LAYERED, "databases.yaml"))

    @pytest.fixture
    def overrides(self) -> Layer:
        return overrides_layer(
            {
                "databases": {
                    "primary": {"pool_size": 9, "connect_args": {"application_name": "api"}},
                    "cache": {"url": "sqlite://"},
                }
            }
        )

    def test_no_layer_is_changed(self, base: Layer, overrides: Layer) -> None:
        before = copy.deepcopy((base.data, overrides.data))
        merged = merge([overrides, base])
        merged.set(("databases", "primary", "url"), "sqlite:///p.db")
        merged.set(("databases", "cache", "url"), "sqlite:///c.db")
        merged.set(("databases", "replica", "echo"), True)
        assert (base.data, overrides.data) == before
        assert merged.data["databases"]["primary"] == {
            "url": "sqlite:///p.db",
            "pool_size": 9,
            "connect_args": {"connect_timeout": 3, "application_name": "api"},
        }

    def test_a_mapping_merged_into_is_a_copy(self, base: Layer, overrides: Layer) -> None:
        merged = merge([base, overrides])
        databases = merged.data["databases"]
        written = base.data["databases"]
        assert databases is not written
        assert databases["primary"] is not written["primary"]
        assert databases["primary"]["connect_args"] is not written["primary"]["connect_args"]

    def test_what_no_higher_layer_merges_into_is_shared(self, base: Layer, overrides: Layer) -> None:
        merged = merge([base, overrides])
        assert merged.data["databases"]["replica"] is base.data["databases"]["replica"]
        assert merged.data["databases"]["cache"] is overrides.data["databases"]["cache"]

    def test_a_single_layer_is_not_copied(self, base: Layer) -> None:
        merged = merge([base])
        assert merged.data == base.data
        assert merged.data["databases"] is base.data["databases"]

    def test_set_copies_the_shared_parents_once(self, base: Layer) -> None:
        merged = merge([base])
        merged.set(("databases", "primary", "pool_size"), 1)
        primary = merged.data["databases"]["primary"]
        assert primary["pool_size"] == 1
        assert base.data["databases"]["primary"]["pool_size"] == 5
        assert primary["connect_args"] is base.data["databases"]["primary"]["connect_args"]
        merged.set(("databases", "primary", "echo"), True)
        assert merged.data["databases"]["primary"] is primary

    def test_set_on_a_yaml_alias_changes_only_that_database(self, base: Layer) -> None:
        assert base.data["databases"]["reporting"] is base.data["databases"]["replica"]
        merged = merge([base])
        merged.set(("databases", "reporting", "url"), "sqlite:///r.db")
        assert merged.data["databases"]["reporting"]["url"] == "sqlite:///r.db"
        assert merged.data["databases"]["replica"]["url"] == "postgresql://app:yaml-pw@replica.internal/app"

    def test_merging_into_a_yaml_alias_changes_only_that_database(self, base: Layer) -> None:
        env = env_layer({"databases": {"reporting": {"pool_size": 2}}}, "DBREGISTRY_DATABASES__REPORTING__POOL_SIZE")
        merged = merge([base, env])
        assert merged.data["databases"]["reporting"]["pool_size"] == 2
        assert "pool_size" not in merged.data["databases"]["replica"]
        assert "pool_size" not in base.data["databases"]["replica"]

    @pytest.mark.parametrize(
        ("path", "origin"),
        [
            (("databases",), in_file(1)),
            (("databases", "primary"), in_file(2)),
            (("databases", "primary", "url"), in_file(3)),
            (("databases", "primary", "pool_size"), OVERRIDDEN),
            (("databases", "primary", "connect_args"), in_file(5)),
            (("databases", "primary", "connect_args", "connect_timeout"), in_file(6)),
            (("databases", "primary", "connect_args", "application_name"), OVERRIDDEN),
            (("databases", "reporting", "url"), in_file(8)),
            (("databases", "cache"), OVERRIDDEN),
            (("databases", "cache", "url"), OVERRIDDEN),
            (("default",), Origin(Precedence.DEFAULT, "default")),
        ],
    )
    def test_origin_of_a_nested_path(self, base: Layer, overrides: Layer, path: PathKey, origin: Origin) -> None:
        assert merge([base, overrides]).origin(path) == origin

    def test_a_profile_points_into_its_own_lines(self) -> None:
        document = load_yaml_text(LAYERED, "databases.yaml")
        merged = merge([base_layer(document), profile_layer(document, "production", Precedence.PROFILE)])
        assert merged.data["databases"]["primary"]["pool_size"] == 20
        assert merged.origin(("databases", "primary", "pool_size")) == in_file(15, Precedence.PROFILE)
        assert merged.origin(("databases", "primary", "url")) == in_file(3)
        assert str(merged.origin(("databases", "primary", "pool_size"))) == "databases.yaml:15"

    def test_only_the_top_of_what_each_layer_put_is_recorded(self, base: Layer, overrides: Layer) -> None:
        assert set(merge([base, overrides]).origins.setters) == {
            ("databases",),
            ("databases", "primary", "pool_size"),
            ("databases", "primary", "connect_args", "application_name"),
            ("databases", "cache"),
        }

    def test_the_layer_is_asked_about_the_whole_path(self) -> None:
        asked: list[PathKey] = []

        def origin_of(path: PathKey) -> Origin:
            asked.append(path)
            return OVERRIDDEN

        origins = Origins({("databases",): origin_of})
        assert origins.of(("databases", "a", "url")) == OVERRIDDEN
        assert asked == [("databases", "a", "url")]
        assert Origins().of(("databases",)) == Origin(Precedence.DEFAULT, "default")

    def test_replacing_a_mapping_forgets_the_origins_inside_it(self, base: Layer) -> None:
        env = env_layer(
            {"databases": {"primary": {"connect_args": {"sslmode": "require"}}}},
            "DBREGISTRY_DATABASES__PRIMARY__CONNECT_ARGS__SSLMODE",
        )
        merged = merge([base, env, overrides_layer({"databases": {"primary": "sqlite://"}})])
        assert merged.data["databases"]["primary"] == "sqlite://"
        assert merged.origin(("databases", "primary")) == OVERRIDDEN
        assert merged.origin(("databases", "primary", "connect_args", "sslmode")) == OVERRIDDEN
        assert ("databases", "primary", "connect_args", "sslmode") not in merged.origins.setters

    def test_null_in_an_overlay_removes_the_key(self, base: Layer) -> None:
        before = copy.deepcopy(base.data)
        variable = "DBREGISTRY_DATABASES__PRIMARY__POOL_SIZE"
        merged = merge([base, env_layer({"databases": {"primary": {"pool_size": None}}}, variable)])
        assert merged.data["databases"]["primary"] == {
            "url": "postgresql://app:yaml-pw@db.internal/app",
            "connect_args": {"connect_timeout": 3},
        }
        assert base.data == before
        assert merged.origin(("databases", "primary", "pool_size")) == Origin(Precedence.ENVIRON, variable)

    def test_null_above_field_depth_replaces(self, base: Layer) -> None:
        merged = merge([base, overrides_layer({"databases": {"replica": None}})])
        assert merged.data["databases"]["replica"] is None
        assert base.data["databases"]["replica"] is not None


class TestPrecedenceIsStatedOnce:
    """`PRECEDENCE` is the order; the `Precedence` tiers an `Origin` reports must agree with it."""

    def test_the_tiers_descend_in_the_declared_order(self) -> None:
        tiers = [tier for tier, _ in PRECEDENCE]
        assert tiers == sorted(tiers, reverse=True)
        assert set(tiers) == set(Precedence)

    def test_within_a_tier_the_specific_variable_beats_database_url(self) -> None:
        registry = Registry.from_env(
            environ={"DATABASE_URL": "sqlite:///conventional.db", "DBREGISTRY_DATABASES__PRIMARY__URL": "sqlite://"},
            env_file=None,
        )
        assert registry["primary"].url.render_as_string() == "sqlite://"
        assert registry.origin("primary", "url").source == "DBREGISTRY_DATABASES__PRIMARY__URL"
