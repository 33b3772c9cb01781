"""A missing driver or greenlet is the same ConfigError on every call of every entry point, in any order.

Each case runs in a child process whose ``sys.modules[name] = None`` makes the
module's import really fail (``ModuleNotFoundError``), as when it is not
installed; nothing of dbregistry is mocked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PASSWORD = "m1ssing-Pw"  # must never be shown

CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    sys.modules[sys.argv[1]] = None  # `import <name>` now fails as if it were not installed
    from dbregistry import ConfigError, Registry

    registry = Registry.from_dict({"databases": {"primary": {"url": sys.argv[2]}}}, environ={})
    calls = json.loads(sys.argv[3])

    def call(entry):
        if entry == "health":
            return registry.health(timeout=5)["primary"].error
        if entry == "ahealth":
            return asyncio.run(registry.ahealth(timeout=5))["primary"].error
        getattr(registry, entry)()
        return None

    outcomes = []
    for entry in calls:
        try:
            error = call(entry)
            outcomes.append([entry, "ok" if error is None else "report: " + error])
        except ConfigError as e:
            outcomes.append([entry, str(e)])
        except BaseException as e:
            outcomes.append([entry, "unexpected " + type(e).__name__ + ": " + str(e)])
    print(json.dumps(outcomes))
    """
)

SYNC = ["get", "reader", "session"]
ASYNC = ["get_async", "async_reader", "async_session"]


def run_child(module: str, url: str, calls: list[str]) -> list[list[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DBREGISTRY_") and not k.endswith("DATABASE_URL")}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, module, url, json.dumps(calls)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert PASSWORD not in proc.stdout + proc.stderr
    outcomes: list[list[str]] = json.loads(proc.stdout)
    return outcomes


def error_text(message: str) -> str:
    return f"1 problem in from_dict\n  from_dict  databases.primary.url: {message}"


PG_URL = f"postgresql://app:{PASSWORD}@127.0.0.1:9/app"
GREENLET_PG = "async engines need the module 'greenlet' (SQLAlchemy's asyncio), not installed; run `pip install 'dbregistry[postgres]'`"
CASES = {
    # module hidden: (URL, entry points that need it, the message, entry points that must still work)
    "greenlet": (PG_URL, ASYNC, GREENLET_PG, SYNC),
    "asyncpg": (
        PG_URL,
        ASYNC,
        "the driver module 'asyncpg' is not installed; run `pip install 'dbregistry[postgres]'`",
        SYNC,
    ),
    "psycopg": (
        PG_URL,
        SYNC,
        "the driver module 'psycopg' is not installed; run `pip install 'dbregistry[postgres]'`",
        ASYNC,
    ),
    "aiosqlite": (
        "sqlite:///app.db",
        ASYNC,
        "the driver module 'aiosqlite' is not installed; run `pip install 'dbregistry[sqlite-async]'`",
        SYNC,
    ),
}


@pytest.mark.parametrize("module", list(CASES))
@pytest.mark.parametrize("order", ["as listed", "reversed"])
def test_every_entry_point_fails_alike_on_every_call(module: str, order: str, tmp_path: Path) -> None:
    url, failing, message, working = CASES[module]
    calls = failing + failing + working  # each twice: the first call must not change the second
    if order == "reversed":
        calls = calls[::-1]
    outcomes = run_child(module, url, calls)
    expected = error_text(message)
    for entry, outcome in outcomes:
        assert outcome == (expected if entry in failing else "ok"), entry


@pytest.mark.parametrize(("module", "health"), [("greenlet", "ahealth"), ("asyncpg", "ahealth"), ("psycopg", "health")])
def test_health_reports_the_same_error_for_that_database(module: str, health: str) -> None:
    url, _, message, _ = CASES[module]
    ((_, first), (_, second)) = run_child(module, url, [health, health])
    # A health report is one line per database: the same ConfigError, its lines joined.
    one_line = "report: ConfigError: " + " ".join(error_text(message).split())
    assert first == second == one_line


def test_the_cli_check_names_what_to_install(tmp_path: Path) -> None:
    config = tmp_path / "databases.yaml"
    config.write_text(f"databases:\n  primary: {{url: '{PG_URL}'}}\n")
    script = "import sys; sys.modules['psycopg'] = None; from dbregistry._cli import main; sys.exit(main(sys.argv[1:]))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DBREGISTRY_") and not k.endswith("DATABASE_URL")}
    proc = subprocess.run(
        [sys.executable, "-c", script, "check", "--config", str(config), "--timeout", "5"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert proc.returncode == 1, proc.stderr
    assert "the driver module 'psycopg' is not installed; run `pip install 'dbregistry[postgres]'`" in proc.stdout
    assert PASSWORD not in proc.stdout + proc.stderr
