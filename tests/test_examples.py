"""Every script in examples/ runs from a fresh clone exactly as its docstring says, and runs again."""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# fastapi_app.py is served by uvicorn (not a dependency); tests/test_fastapi_example.py runs the app.
SCRIPTS = sorted(p for p in (ROOT / "examples").glob("*.py") if p.name != "fastapi_app.py")
COMMAND = re.compile(r"``(python [^`]+)``")
# The password of config/databases.yaml's placeholder Neon URL.
PLACEHOLDER_PASSWORD = "secret"


def fresh_clone(target: Path) -> Path:
    """The files a clone has (git's tracked files, as they are now), without databases or caches."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "config", "examples"], cwd=ROOT, capture_output=True, check=False, timeout=30
    )
    if listed.returncode == 0 and listed.stdout:
        for name in listed.stdout.decode().split("\0"):
            if name and (ROOT / name).is_file():
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, target / name)
    else:  # not a git checkout (an sdist): the folders as they are
        ignore = shutil.ignore_patterns("*.db", "__pycache__")
        for name in ("config", "examples"):
            shutil.copytree(ROOT / name, target / name, ignore=ignore)
    return target


def clean_environment() -> dict[str, str]:
    """The environment of a new shell: nothing that would point the examples at another configuration."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.endswith("DATABASE_URL")
        and not name.endswith("_POOLER_URL")
        and not name.startswith("DBREGISTRY_")
        and name != "APP_ENV"
    }


def documented_command(script: Path) -> list[str]:
    docstring = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8"))) or ""
    commands = COMMAND.findall(docstring)
    assert len(commands) == 1, f"{script.name}: its docstring should say how to run it (``python examples/...``)"
    argv = shlex.split(commands[0])
    return [sys.executable, *argv[1:]]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_example_runs_from_a_fresh_clone_as_documented(script: Path, tmp_path: Path) -> None:
    clone = fresh_clone(tmp_path)
    command = documented_command(script)
    for attempt in ("first run", "second run"):
        result = subprocess.run(
            command, cwd=clone, env=clean_environment(), capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, f"{attempt} of {shlex.join(command)}:\n{result.stdout}\n{result.stderr}"
        assert PLACEHOLDER_PASSWORD not in result.stdout + result.stderr


def test_every_example_is_covered() -> None:
    assert {p.name for p in (ROOT / "examples").glob("*.py")} == {p.name for p in SCRIPTS} | {"fastapi_app.py"}
