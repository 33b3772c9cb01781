"""Every file in config/ really loads, and every script in examples/ really runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dbregistry import Registry

ROOT = Path(__file__).resolve().parent.parent
GOOD_CONFIGS = sorted(p for p in (ROOT / "config").glob("*.yaml") if p.name != "bad.yaml")


@pytest.mark.parametrize("path", GOOD_CONFIGS, ids=lambda p: p.name)
def test_config_loads_with_no_environment(path: Path) -> None:
    registry = Registry.from_yaml(path, environ={})
    assert registry.names


def test_databases_yaml_declares_the_documented_set() -> None:
    registry = Registry.from_yaml(ROOT / "config" / "databases.yaml", environ={})
    assert registry.names == ["primary", "replica", "analytics", "dev", "neon"]
    assert registry.default == "primary"
    assert registry["primary"].pool_size == 10
    assert registry["replica"].replica_of == "primary"
    assert registry["dev"].pool_class == "StaticPool"


def test_env_example_loads_with_the_config(tmp_path: Path) -> None:
    registry = Registry.from_yaml(
        ROOT / "config" / "databases.yaml", environ={}, env_file=ROOT / "config" / ".env.example"
    )
    assert registry["replica"].pool_size == 30
    assert registry["primary"].url.host == "localhost"
    assert registry["primary"].connect_args == {"application_name": "api"}
    assert "reporting" in registry


EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("fastapi"))


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("DATABASE_URL") and not k.startswith("DBREGISTRY_")}
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "closed every pool" in result.stdout
