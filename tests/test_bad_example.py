"""config/bad.yaml gives exactly the error shown in the issue and in docs/configuration-errors.md."""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest

from dbregistry import ConfigError, Problem, Registry

ROOT = Path(__file__).resolve().parent.parent
BAD = ROOT / "config" / "bad.yaml"

EXPECTED = """\
3 problems in {file}
  {file}:7   databases.replica.pool_sise: unknown field; did you mean 'pool_size'?
  {file}:12  databases.analytics.pool_size: not allowed with pool_class NullPool (NullPool keeps no connections); remove it or use QueuePool
  {file}:18  databases.neon.url: environment variable NEON_POOLER_URL is not set and has no default"""


def load(path: str | Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        Registry.from_yaml(path, environ={})
    return info.value


def test_the_message_names_the_path_it_was_given() -> None:
    error = load(BAD)
    assert str(error) == EXPECTED.format(file=BAD)


def test_the_message_of_the_documented_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    error = load("config/bad.yaml")
    assert str(error) == EXPECTED.format(file="config/bad.yaml")
    last_line = "".join(traceback.format_exception_only(error)).splitlines()[0]
    assert last_line == "dbregistry.ConfigError: 3 problems in config/bad.yaml"


def test_the_problems_as_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    error = load("config/bad.yaml")
    file = "config/bad.yaml"
    assert error.problems == [
        Problem("databases.replica.pool_sise", "unknown field; did you mean 'pool_size'?", file, file, 7),
        Problem(
            "databases.analytics.pool_size",
            "not allowed with pool_class NullPool (NullPool keeps no connections); remove it or use QueuePool",
            file,
            file,
            12,
        ),
        Problem(
            "databases.neon.url", "environment variable NEON_POOLER_URL is not set and has no default", file, file, 18
        ),
    ]


def test_no_password_of_the_file_is_shown() -> None:
    assert "change-me" in BAD.read_text()
    error = load(BAD)
    assert "change-me" not in "".join(traceback.format_exception(error))


def test_setting_the_variable_leaves_the_two_other_problems() -> None:
    with pytest.raises(ConfigError) as info:
        Registry.from_yaml(BAD, environ={"NEON_POOLER_URL": "postgresql://app:change-me@ep-1-pooler.neon.tech/db"})
    assert [p.line for p in info.value.problems] == [7, 12]
