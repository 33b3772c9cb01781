"""${VAR} substitution: the forms, the errors, and that it is plain text."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbregistry._interpolation import InterpolationError, interpolate

ENV = {"HOST": "db", "EMPTY": "", "NESTED": "${HOST}"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://${HOST}/app", "postgresql://db/app"),
        ("${MISSING:-fallback}", "fallback"),
        ("${EMPTY:-fallback}", "fallback"),
        ("${EMPTY-fallback}", ""),
        ("${MISSING-fallback}", "fallback"),
        ("${HOST:-x}", "db"),
        ("$${HOST}", "${HOST}"),
        ("a $ b", "a $ b"),
        ("${NESTED}", "${HOST}"),  # no recursion into substituted values
        ("${MISSING:-sqlite:///./dev.db}", "sqlite:///./dev.db"),
        ("no dollars", "no dollars"),
    ],
)
def test_forms(text: str, expected: str) -> None:
    assert interpolate(text, ENV) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("${MISSING}", "environment variable MISSING is not set and has no default"),
        ("${MISSING:?set it in the deploy}", "environment variable MISSING is not set or empty: set it in the deploy"),
        ("${EMPTY:?needed}", "environment variable EMPTY is not set or empty: needed"),
        ("${MISSING?needed}", "environment variable MISSING is not set: needed"),
        (
            "${1BAD}",
            "'${1BAD}' is not a valid substitution; use ${VAR}, ${VAR:-default}, ${VAR:?message} or ${file:/path}",
        ),
        ("${$(rm -rf /)}", "'${$(rm -rf /)}' is not a valid substitution"),
        ("${HOST", "unterminated '${': close it with '}' or write '$${' for a literal '${'"),
        (
            # A URL default with its ':-' lost: the text after the name may be credentials.
            "${NEON_URL//app:s3cret@ep-1-pooler.neon.tech/db}",
            "'${NEON_URL...(not shown: it holds an '@')}' is not a valid substitution",
        ),
    ],
)
def test_errors(text: str, message: str) -> None:
    with pytest.raises(InterpolationError) as info:
        interpolate(text, ENV)
    assert str(info.value).startswith(message)


def test_empty_without_colon_is_kept() -> None:
    assert interpolate("${EMPTY?x}", ENV) == ""


def test_file_content(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    assert interpolate(f"postgresql://app:${{file:{secret}}}@db/app", {}) == "postgresql://app:s3cret@db/app"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InterpolationError, match="does not exist"):
        interpolate(f"${{file:{tmp_path / 'none'}}}", {})
