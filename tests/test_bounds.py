"""Bounds on what a configuration can ask for: numbers that cannot be honoured, names, substitution, regex time."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any

import pytest

from dbregistry import ConfigError, Registry
from dbregistry._cli import EXIT_PROBLEMS, EXIT_USAGE, main
from dbregistry._interpolation import MAX_OUTPUT, Budget, interpolate_tree
from dbregistry._waits import MAX_SECONDS, check_seconds

PW = "Bounds-Pw-3319"
URL = f"postgresql://app:{PW}@db.internal:5432/app"


def problems(config: dict[str, Any], environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        Registry.from_dict(config, environ=environ or {})
    assert PW not in str(info.value)
    return [str(p) for p in info.value.problems]


class TestWaits:
    @pytest.mark.parametrize(
        ("value", "message"),
        [
            (math.inf, "timeout must be a finite number of seconds, got inf"),
            (math.nan, "timeout must be a finite number of seconds, got nan"),
            (0, "timeout must be a positive number of seconds, got 0"),
            (1e12, "timeout must be at most 86400 seconds (one day), got 1e+12"),
        ],
    )
    def test_check_seconds(self, value: float, message: str) -> None:
        with pytest.raises(ValueError, match=re.escape(message)):
            check_seconds(value, "timeout")

    def test_a_day_is_allowed(self) -> None:
        assert check_seconds(MAX_SECONDS, "timeout") == 86400.0

    @pytest.mark.parametrize("value", [math.inf, 1e12])
    def test_health_refuses_a_timeout_it_cannot_wait(self, value: float) -> None:
        # Before: health(timeout=inf) started its pings, then Thread.join(inf) raised OverflowError.
        registry = Registry.from_dict({"databases": {"a": {"url": "sqlite://"}}}, environ={})
        with pytest.raises(ValueError, match=r"^timeout must be"):
            registry.health(timeout=value)
        registry.close()

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("inf", "must be a finite number of seconds, got inf"),
            ("nan", "must be a finite number of seconds, got nan"),
            ("1e12", "must be at most 86400 seconds (one day), got 1e+12"),
        ],
    )
    def test_check_timeout_on_the_command_line_exits_2(
        self, text: str, message: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code = main(["check", "--timeout", text])
        assert code == EXIT_USAGE
        assert f"argument --timeout: {message}" in capsys.readouterr().err

    def test_shutdown_hook_timeout(self) -> None:
        registry = Registry.from_dict({"databases": {"a": {"url": "sqlite://"}}}, environ={})
        with pytest.raises(ValueError, match=re.escape("timeout must be a finite number of seconds, got inf")):
            registry.install_shutdown_hook(signals=(), timeout=math.inf)


class TestNumbers:
    @pytest.mark.parametrize(
        ("value", "message"),
        [
            (math.inf, "must be a finite number, got inf"),
            (math.nan, "must be a finite number, got nan"),
            (1e12, "must be <= 86400, got 1000000000000.0"),
        ],
    )
    def test_pool_timeout(self, value: float, message: str) -> None:
        # Before: accepted; the first wait on an exhausted pool raised OverflowError (inf, 1e12).
        assert problems({"databases": {"a": {"url": URL, "pool_timeout": value}}}) == [
            f"from_dict  databases.a.pool_timeout: {message}"
        ]

    def test_pool_timeout_from_the_environment(self) -> None:
        assert problems({"databases": {"a": {"url": URL}}}, {"DBREGISTRY_DATABASES__A__POOL_TIMEOUT": "inf"}) == [
            "DBREGISTRY_DATABASES__A__POOL_TIMEOUT  databases.a.pool_timeout: must be a finite number, got 'inf'"
        ]

    def test_replica_max_lag_seconds_infinite(self) -> None:
        config = {
            "databases": {"a": {"url": URL}, "b": {"url": URL, "replica_of": "a", "replica_max_lag_seconds": math.inf}}
        }
        assert problems(config) == ["from_dict  databases.b.replica_max_lag_seconds: must be a finite number, got inf"]

    def test_integer_beyond_the_digit_limit_in_yaml(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        # Before: int() raised "ValueError: Exceeds the limit (4300 digits)", and `validate` printed a traceback.
        config = tmp_path / "c.yaml"
        config.write_text(f"databases:\n  a:\n    url: {URL}\n    pool_size: {'7' * 5000}\n")
        with pytest.raises(ConfigError) as info:
            Registry.from_yaml(config, environ={})
        assert [str(p) for p in info.value.problems] == [
            f"{config}:4  databases.a.pool_size: a number of 5,000 characters is longer than any setting takes"
        ]
        assert main(["validate", "--config", str(config)]) == EXIT_PROBLEMS
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err + captured.out
        assert "a number of 5,000 characters is longer than any setting takes" in captured.out + captured.err

    @pytest.mark.parametrize("value", [10**5000, -(10**5000), 10**18], ids=["huge", "huge-negative", "1e18"])
    def test_integer_beyond_the_digit_limit_in_code(self, value: int) -> None:
        # Before: 10**5000 was accepted (and `show` failed printing it); -(10**5000) escaped as ValueError.
        assert problems({"databases": {"a": {"url": URL, "pool_size": value}}}) == [
            "from_dict  databases.a.pool_size: is a number too long for any setting (over 18 digits)"
        ]


class TestNames:
    def test_trailing_newline(self) -> None:
        # Before: accepted: NAME_PATTERN's `$` matches before a final newline.
        assert problems({"databases": {"a": {"url": URL}, "b\n": {"url": URL}}}) == [
            "from_dict  databases.b\\n: a database name starts with a letter and has only letters, digits, '_' and '-'"
        ]

    def test_names_differing_only_in_dash_and_underscore(self) -> None:
        # Before: both accepted; READ_REPLICA_DATABASE_URL set both.
        assert problems({"databases": {"read-replica": {"url": URL}, "read_replica": {"url": URL}}}) == [
            "from_dict  databases.read_replica: 'read-replica' and 'read_replica' would both be set by "
            "READ_REPLICA_DATABASE_URL; names that differ only in '-' and '_' cannot be told apart there: rename one"
        ]

    def test_names_differing_only_in_case_keep_their_message(self) -> None:
        assert problems({"databases": {"Main": {"url": URL}, "main": {"url": URL}}}) == [
            "from_dict  databases.main: duplicate database name (as 'Main'); names are case-insensitive "
            "because environment variables are"
        ]


class TestSubstitutionBound:
    def test_total_output_is_bounded_across_nodes(self) -> None:
        # One shared value, as YAML aliases give it: each use counts.
        value = "${PAD:-" + "x" * 100_000 + "}"
        data = {"items": [value] * 100}
        errors: list[tuple[tuple[str | int, ...], str]] = []
        interpolate_tree(data, {}, lambda path, message: errors.append((path, message)))
        assert errors == [
            (
                ("items", 20),
                f"substitution produces more than {MAX_OUTPUT:,} characters in this document "
                "(a substituted value used through many aliases?)",
            )
        ]

    def test_one_budget_across_calls(self) -> None:
        budget = Budget()
        value = "${PAD:-" + "x" * 1_000_000 + "}"
        errors: list[str] = []
        for _ in range(3):
            interpolate_tree({"a": value}, {}, lambda _p, m: errors.append(m), budget=budget)
        assert len(errors) == 1
        assert budget.exhausted


# Every value a user writes that a regular expression (or difflib) of the loader reads; 100 kB each.
N = 100_000
HOSTILE: dict[str, dict[str, Any]] = {
    "unterminated substitution": {"databases": {"a": {"url": "${" + "a" * N}}},
    "many unterminated substitutions": {"databases": {"a": {"url": "${" * (N // 2)}}},
    "bad substitution": {"databases": {"a": {"url": "${" + "a" * N + "!}"}}},
    "bad substitution with an @": {"databases": {"a": {"url": "${" + "a:" * (N // 2) + "@}"}}},
    "bad name": {"databases": {"a" * N + "!": {"url": "sqlite://"}}},
    "names one variable apart": {"databases": {"a" * N: {"url": "sqlite://"}, "A" * N: {"url": "sqlite://"}}},
    "unknown field": {"databases": {"a": {"url": "sqlite://", "pool_sizx" * (N // 9): 1}}},
    "unknown top-level key": {"databasex" * (N // 9): 1, "databases": {"a": {"url": "sqlite://"}}},
    "unknown default": {"default": "a" * N, "databases": {"a": {"url": "sqlite://"}}},
    "unknown pool class": {"databases": {"a": {"url": "sqlite://", "pool_class": "QueuePoo" * (N // 8)}}},
    "isolation level": {"databases": {"a": {"url": "sqlite://", "isolation_level": "read_" * (N // 5)}}},
    "replica of an unknown name": {"databases": {"a": {"url": "sqlite://", "replica_of": "b" * N}}},
    "url": {"databases": {"a": {"url": "x" * N}}},
}


@pytest.mark.parametrize("config", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_100_kb_bad_value_is_reported_quickly(config: dict[str, Any]) -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError):
        Registry.from_dict(config, environ={})
    assert time.monotonic() - started < 5  # a quadratic pattern takes minutes on 100 kB


def test_a_100_kb_unknown_variable_is_reported_quickly() -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError):
        Registry.from_dict({"databases": {"a": {"url": "sqlite://"}}}, environ={"DBREGISTRY_DATABASEX" + "X" * N: "1"})
    assert time.monotonic() - started < 5
