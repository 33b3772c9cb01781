"""errors.redact: the last guard that keeps a password out of every message."""

from __future__ import annotations

import pytest

from dbregistry._errors import redact


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgresql://app:s3cret@db:5432/app", "postgresql://app:***@db:5432/app"),
        ("postgresql+asyncpg://app:s3cret@db/app", "postgresql+asyncpg://app:***@db/app"),
        # A URL whose scheme was lost to a typo still hides its password.
        ("got '//app:s3cret@db/app'", "got '//app:***@db/app'"),
        ("a: x://u:p1@h and y://v:p2@k", "a: x://u:***@h and y://v:***@k"),
        # The documented placeholder and an already-masked URL are left as written.
        ("postgresql://app:password@db/app", "postgresql://app:password@db/app"),
        ("postgresql://app:***@db/app", "postgresql://app:***@db/app"),
        ("no url here", "no url here"),
        ("sqlite:///./dev.db", "sqlite:///./dev.db"),
    ],
)
def test_redact(text: str, shown: str) -> None:
    assert redact(text) == shown
