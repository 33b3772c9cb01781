"""Per-environment profiles: selection, field-by-field overlay, and validation of every profile."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dbregistry import ConfigError, Registry

CONFIG = """\
databases:
  primary:
    url: postgresql://app@db/app
    pool_size: 5
    pool_recycle: 300
profiles:
  development:
    databases:
      primary: {url: "sqlite:///./dev.db", pool_class: StaticPool, pool_size: null}
  production:
    databases:
      primary: {pool_size: 20, max_overflow: 30, pool_pre_ping: true}
      reporting: {url: "postgresql://app@reports/app", pool_class: NullPool}
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "databases.yaml"
    path.write_text(CONFIG)
    return path


def test_no_profile_is_the_base(config: Path) -> None:
    registry = Registry.from_yaml(config, environ={})
    assert registry.profile is None
    assert registry.names == ["primary"]
    assert registry["primary"].pool_size == 5


def test_overlay_merges_field_by_field(config: Path) -> None:
    registry = Registry.from_yaml(config, environ={}, profile="production")
    primary = registry["primary"]
    assert (primary.pool_size, primary.max_overflow, primary.pool_pre_ping) == (20, 30, True)
    assert primary.pool_recycle == 300  # kept from the base
    assert primary.url.host == "db"
    assert registry.origin("primary", "pool_size").line == 12
    assert registry.origin("primary", "pool_recycle").line == 5


def test_overlay_adds_databases(config: Path) -> None:
    registry = Registry.from_yaml(config, environ={}, profile="production")
    assert registry.names == ["primary", "reporting"]


def test_selected_by_dbregistry_profile(config: Path) -> None:
    registry = Registry.from_yaml(config, environ={"DBREGISTRY_PROFILE": "development", "APP_ENV": "production"})
    assert registry.profile == "development"
    assert registry["primary"].pool_class == "StaticPool"
    assert registry["primary"].pool_size is None  # `null` in the overlay unsets the base's value


def test_selected_by_app_env(config: Path) -> None:
    assert Registry.from_yaml(config, environ={"APP_ENV": "production"}).profile == "production"


def test_argument_beats_variables(config: Path) -> None:
    registry = Registry.from_yaml(config, environ={"DBREGISTRY_PROFILE": "development"}, profile="production")
    assert registry.profile == "production"


def test_unknown_profile_lists_the_profiles(config: Path) -> None:
    with pytest.raises(ConfigError) as info:
        Registry.from_yaml(config, environ={}, profile="prodution")
    (problem,) = info.value.problems
    assert problem.path == "profiles"
    assert problem.message == (
        "profile 'prodution' (from profile=) is not in the file; did you mean 'production'? "
        "profiles: development, production"
    )


def test_unknown_profile_from_the_environment(config: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape("profile 'staging' (from DBREGISTRY_PROFILE) is not in the file")):
        Registry.from_yaml(config, environ={"DBREGISTRY_PROFILE": "staging"})


def test_app_env_is_ignored_by_a_file_without_profiles(tmp_path: Path) -> None:
    path = tmp_path / "plain.yaml"
    path.write_text("databases:\n  a: {url: 'sqlite://'}\n")
    assert Registry.from_yaml(path, environ={"APP_ENV": "staging"}).profile is None


def test_every_profile_is_validated_selected_or_not(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text(CONFIG.replace("max_overflow: 30", "max_overflw: 30"))
    with pytest.raises(ConfigError) as info:
        Registry.from_yaml(path, environ={}, profile="development")
    (problem,) = info.value.problems
    assert problem.path == "profiles.production.databases.primary.max_overflw"
    assert problem.line == 12
    assert problem.message == "unknown field; did you mean 'max_overflow'?"


def test_unset_variables_of_other_profiles_are_not_errors(tmp_path: Path) -> None:
    path = tmp_path / "vars.yaml"
    path.write_text(CONFIG.replace("postgresql://app@reports/app", "${REPORTS_URL}"))
    assert Registry.from_yaml(path, environ={}).names == ["primary"]
    with pytest.raises(ConfigError, match="environment variable REPORTS_URL is not set"):
        Registry.from_yaml(path, environ={}, profile="production")


def test_profile_with_unknown_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(CONFIG.replace("  production:\n    databases:", "  production:\n    databses:"))
    with pytest.raises(ConfigError) as info:
        Registry.from_yaml(path, environ={})
    assert [p.message for p in info.value.problems] == ["unknown key in a profile; did you mean 'databases'?"]
