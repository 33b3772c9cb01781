"""The `dbregistry` command, run for real in a subprocess: every command, --json, exit codes, no password shown.

The subprocesses of one configuration start together (`Runs`), so the module
costs about as much as its slowest command; a few variations of the same code
path run in-process through `main()`.
"""

from __future__ import annotations

import json
import os
import pty
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from servers import PASSWORD, PostgresServer, ReplicaServer

from dbregistry._cli import EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, config_schema, main
from dbregistry._schema import DatabaseConfig

pytestmark = pytest.mark.postgres

YAML_PASSWORD = "Yaml-Pw-7731"
SECRETS = (PASSWORD, "pg-S3cret", "pg-S3cret%40%2F%3A%25pw", YAML_PASSWORD)


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DBREGISTRY_") and not k.endswith("DATABASE_URL") and k not in ("APP_ENV", "NO_COLOR")
    }
    return {**env, **extra}


def command(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m dbregistry ARGS``, checked for passwords and colour in everything it printed."""
    proc = subprocess.run(
        [sys.executable, "-m", "dbregistry", *args],
        cwd=cwd,
        env=env if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert_clean(proc.stdout + proc.stderr, args)
    assert "\x1b[" not in proc.stdout  # not a terminal: no colour
    return proc


def assert_clean(text: str, args: object) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} in the output of {args}"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class Files:
    dir: Path
    config: Path
    invalid: Path


@dataclass
class Runs:
    files: Files
    results: dict[str, subprocess.CompletedProcess[str]]

    def __call__(self, name: str, expect: int) -> subprocess.CompletedProcess[str]:
        proc = self.results[name]
        assert proc.returncode == expect, f"{name}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc

    def json(self, name: str, expect: int) -> dict[str, object]:
        data: dict[str, object] = json.loads(self(name, expect).stdout)
        return data


def write_files(directory: Path, pg: PostgresServer) -> Files:
    config = directory / "databases.yaml"
    config.write_text(
        f"""\
# yaml-language-server: $schema=dbregistry.schema.json
default: primary
databases:
  primary:
    url: {pg.url_string()}
    pool_size: 3
    max_connections: 200
  offline:
    url: postgresql://app:{YAML_PASSWORD}@127.0.0.1:{closed_port()}/app
    pool_class: NullPool
  local:
    url: sqlite:///{directory / "local.db"}
profiles:
  big:
    databases:
      primary:
        pool_size: 60
""",
        encoding="utf-8",
    )
    invalid = directory / "invalid.yaml"
    invalid.write_text(
        f"""\
databases:
  primary:
    url: postgresql://app:{YAML_PASSWORD}@db/app
    pool_sise: 3
  other:
    url: "not a url {YAML_PASSWORD}"
""",
        encoding="utf-8",
    )
    return Files(directory, config, invalid)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, pg: PostgresServer) -> Iterator[Runs]:
    files = write_files(tmp_path_factory.mktemp("cli"), pg)
    c, i = str(files.config), str(files.invalid)
    invocations: dict[str, tuple[list[str], dict[str, str]]] = {
        "validate": (["validate", "--config", c], {}),
        "validate_json": (["validate", "--config", c, "--profile", "big", "--json"], {}),
        "validate_invalid": (["validate", "--config", i], {}),
        "show": (["show", "--config", c, "--profile", "big"], {"DBREGISTRY_DATABASES__PRIMARY__MAX_OVERFLOW": "7"}),
        "show_json": (["show", "--config", c, "--json"], {}),
        "check": (["check", "--config", c, "--timeout", "20"], {}),
        "check_json": (["check", "--config", c, "--allow-down", "offline", "--timeout", "20", "--json"], {}),
        "budget": (["budget", "--config", c, "--processes", "4", "--threads", "2"], {}),
        "budget_over_json": (["budget", "--config", c, "--processes", "16", "--json"], {}),
        "budget_live_json": (
            ["budget", "--config", c, "--profile", "big", "--processes", "3", "--live", "--timeout", "20", "--json"],
            {},
        ),
        "schema": (["schema"], {}),
        "no_command": ([], {}),
    }
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        futures = {
            name: pool.submit(command, *args, cwd=files.dir, env=clean_env(**env))
            for name, (args, env) in invocations.items()
        }
        results = {name: future.result() for name, future in futures.items()}
    yield Runs(files, results)
    assert pg.wait_for_connections(0) == 0


@pytest.fixture
def files(tmp_path: Path, pg: PostgresServer) -> Files:
    return write_files(tmp_path, pg)


def in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The same command through `main()`, for variations that need no process of their own."""
    code = main(list(args))
    out, err = capsys.readouterr()
    assert_clean(out + err, args)
    return code, out, err


class TestValidate:
    def test_ok(self, runs: Runs) -> None:
        lines = runs("validate", EXIT_OK).stdout.splitlines()
        assert lines[0] == f"ok: 3 databases from {runs.files.config}"
        assert lines[1].split() == ["name", "url", "pool", "options", "notes"]
        assert lines[2].split()[0] == "primary"
        assert "postgresql://app:***@127.0.0.1" in lines[2]
        assert lines[2].split()[-2:] == ["pool_size=3", "default"]
        assert lines[3].split()[0] == "offline"
        assert "NullPool" in lines[3]

    def test_json(self, runs: Runs) -> None:
        data = runs.json("validate_json", EXIT_OK)
        assert data["ok"] is True
        assert data["profile"] == "big"
        assert data["default"] == "primary"
        databases = data["databases"]
        assert isinstance(databases, dict)
        assert list(databases) == ["primary", "offline", "local"]
        assert databases["offline"]["url"].startswith("postgresql://app:***@127.0.0.1:")
        assert databases["primary"]["origin"] == f"{runs.files.config}:4"

    def test_every_problem_and_exit_1(self, runs: Runs) -> None:
        invalid = runs.files.invalid
        out = runs("validate_invalid", EXIT_PROBLEMS).stdout
        assert out.startswith(f"invalid: 2 problems in {invalid}")
        assert f"{invalid}:4" in out
        assert "databases.primary.pool_sise: unknown field; did you mean 'pool_size'?" in out
        assert "databases.other.url: is not a database URL" in out

    def test_every_problem_json(self, runs: Runs, capsys: pytest.CaptureFixture[str]) -> None:
        code, out, _ = in_process(capsys, "validate", "--config", str(runs.files.invalid), "--json")
        assert code == EXIT_PROBLEMS
        data = json.loads(out)
        assert data["ok"] is False
        problems = data["problems"]
        assert isinstance(problems, list)
        assert [(p["path"], p["line"]) for p in problems] == [
            ("databases.primary.pool_sise", 4),
            ("databases.other.url", 6),
        ]

    def test_config_from_the_environment(
        self, runs: Runs, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("DBREGISTRY_CONFIG", str(runs.files.config))
        monkeypatch.setenv("DBREGISTRY_PROFILE", "big")
        code, out, _ = in_process(capsys, "validate", "--json")
        assert code == EXIT_OK
        data = json.loads(out)
        assert data["source"] == str(runs.files.config)
        assert data["profile"] == "big"

    def test_only_the_environment(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.chdir(tmp_path)
        for key in [k for k in os.environ if k.startswith("DBREGISTRY_") or k.endswith("DATABASE_URL")]:
            monkeypatch.delenv(key)
        monkeypatch.setenv("DATABASE_URL", f"postgresql://app:{YAML_PASSWORD}@db/app")
        code, out, _ = in_process(capsys, "validate", "--json")
        assert code == EXIT_OK
        data = json.loads(out)
        assert data["source"] == "the environment"
        assert data["databases"]["primary"]["url"] == "postgresql://app:***@db/app"

    def test_missing_file(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        code, out, _ = in_process(capsys, "validate", "--config", str(tmp_path / "nope.yaml"))
        assert code == EXIT_PROBLEMS
        assert "file not found" in out


class TestShow:
    def test_every_field_with_its_origin(self, runs: Runs) -> None:
        config = runs.files.config
        out = runs("show", EXIT_OK).stdout
        assert out.splitlines()[0] == f"source {config}  profile big  default primary"
        primary = out.split("\nprimary (default)\n")[1].split("\n\n")[0].splitlines()
        assert primary[0].split() == ["field", "value", "from"]
        rows = {line.split()[0]: line.split() for line in primary[1:]}
        assert len(rows) == len(DatabaseConfig.model_fields)  # every field
        assert rows["url"][1].startswith("postgresql://app:***@127.0.0.1:")
        assert rows["url"][2] == f"{config}:5"
        assert rows["pool_size"][1:] == ["60", f"{config}:17", "(profile", "big)"]
        assert rows["max_overflow"][1:] == ["7", "DBREGISTRY_DATABASES__PRIMARY__MAX_OVERFLOW"]
        assert rows["pool_timeout"][1:] == ["30", "default"]
        assert rows["pool_class"][1:] == ["QueuePool", "default"]
        assert rows["max_connections"][1:] == ["200", f"{config}:7"]
        offline = out.split("\noffline\n")[1].split("\n\n")[0].splitlines()
        pool_size = next(line.split() for line in offline if line.split()[0] == "pool_size")
        assert pool_size == ["pool_size", "-", "not", "used", "by", "NullPool"]

    def test_json(self, runs: Runs) -> None:
        config = runs.files.config
        databases = runs.json("show_json", EXIT_OK)["databases"]
        assert isinstance(databases, dict)
        primary = databases["primary"]
        assert set(primary) >= {"url", "pool_class", "pool_size", "max_overflow", "replica_of", "log_pool_events"}
        assert primary["pool_size"] == {
            "value": 3,
            "origin": f"{config}:6",
            "source": str(config),
            "file": str(config),
            "line": 6,
            "precedence": "yaml",
        }
        assert primary["max_overflow"]["value"] == 10
        assert primary["max_overflow"]["origin"] == "default"
        assert primary["url"]["value"].startswith("postgresql://app:***@")
        assert databases["offline"]["url"]["value"].startswith("postgresql://app:***@")


class TestCheck:
    def test_down_database_fails(self, runs: Runs) -> None:
        out = runs("check", EXIT_PROBLEMS).stdout
        lines = out.splitlines()
        assert lines[0].split() == ["name", "url", "driver", "pool", "status", "latency", "version"]
        primary = lines[1].split()
        assert primary[0] == "primary"
        assert primary[1].startswith("postgresql://app:***@127.0.0.1:")
        assert primary[2:5] == ["postgresql+psycopg", "QueuePool", "up"]
        assert primary[6] == "ms"
        assert primary[7].startswith("15.")
        assert lines[2].split()[2:7] == ["postgresql+psycopg", "NullPool", "down", "-", "-"]
        assert lines[3].split()[2:5] == ["sqlite+pysqlite", "QueuePool", "up"]
        assert "offline: OperationalError: connection failed" in out
        assert out.rstrip().endswith("1 of 3 down: offline")

    def test_allow_down_and_json(self, runs: Runs, capsys: pytest.CaptureFixture[str]) -> None:
        data = runs.json("check_json", EXIT_OK)
        assert data["ok"] is True
        databases = data["databases"]
        assert isinstance(databases, dict)
        statuses = {name: (db["status"], db["allowed_down"]) for name, db in databases.items()}
        assert statuses == {"primary": ("up", False), "offline": ("down", True), "local": ("up", False)}
        primary = databases["primary"]
        assert primary["driver"] == "postgresql+psycopg"
        assert primary["pool_class"] == "QueuePool"
        assert primary["latency_ms"] > 0
        assert primary["pool"]["size"] == 3
        assert "Connection refused" in databases["offline"]["error"]
        code, out, _ = in_process(capsys, "check", "--config", str(runs.files.config), "--allow-down", "offline")
        assert code == EXIT_OK
        assert "down (allowed)" in out

    def test_allow_down_must_name_a_database(self, files: Files, capsys: pytest.CaptureFixture[str]) -> None:
        code, _, err = in_process(capsys, "check", "--config", str(files.config), "--allow-down", "ofline")
        assert code == EXIT_USAGE
        assert "dbregistry check: --allow-down: 'ofline' is not a declared database; did you mean 'offline'?" in err

    @pytest.mark.replica
    def test_replica_shows_recovery_and_lag(
        self, tmp_path: Path, pg: PostgresServer, pg_replica: ReplicaServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        path = tmp_path / "replica.yaml"
        path.write_text(
            f"databases:\n  primary:\n    url: {pg.url_string()}\n"
            f"  replica:\n    url: {pg_replica.url_string()}\n    replica_of: primary\n",
            encoding="utf-8",
        )
        pg.psql("select txid_current()")  # something to replay, so the lag is measured, not unknown
        pg_replica.wait_for_replay()
        proc = command("check", "--config", str(path), cwd=tmp_path)
        assert proc.returncode == EXIT_OK, proc.stdout + proc.stderr
        header, primary, replica = proc.stdout.splitlines()[:3]
        assert header.split()[-2:] == ["recovery", "lag"]
        recovery = header.index("recovery")
        assert primary[recovery:].split() == ["-", "-"]
        assert replica[recovery:].split()[0] == "yes"
        assert replica.rstrip().endswith(" s")
        code, out, _ = in_process(capsys, "check", "--config", str(path), "--json")
        assert code == EXIT_OK
        data = json.loads(out)
        assert data["databases"]["replica"]["in_recovery"] is True
        assert data["databases"]["replica"]["replay_lag_s"] >= 0


class TestBudget:
    def test_within(self, runs: Runs) -> None:
        out = runs("budget", EXIT_OK).stdout
        assert out.splitlines()[0] == "connection budget for 4 processes x 2 threads"
        assert "(3 + 10) x 4" in out
        assert "4 x 2 threads" in out  # the NullPool database
        # primary: 13 x 4 = 52 on its server, against 200 - 3 reserved
        assert "52 of 197 allowed (max_connections 200 - 3 reserved, declared on primary): ok, 145 to spare" in out
        assert "limit unknown" in out  # the offline server declares none

    def test_over(self, runs: Runs, capsys: pytest.CaptureFixture[str]) -> None:
        data = runs.json("budget_over_json", EXIT_PROBLEMS)
        assert data["ok"] is False
        servers = data["servers"]
        assert isinstance(servers, list)
        ours = servers[0]
        assert (ours["total"], ours["available"], ours["over"], ours["status"]) == (208, 197, 11, "over")
        assert [db["name"] for db in data["serverless"]] == ["local"]  # type: ignore[attr-defined]
        code, out, _ = in_process(capsys, "budget", "--config", str(runs.files.config), "--processes", "16")
        assert code == EXIT_PROBLEMS
        assert "208 of 197 allowed" in out
        assert "OVER by 11" in out

    def test_live(self, runs: Runs, pg: PostgresServer) -> None:
        servers = runs.json("budget_live_json", EXIT_PROBLEMS)["servers"]
        assert isinstance(servers, list)
        ours = next(s for s in servers if s["server"] == f"127.0.0.1:{pg.port}")
        assert ours["limit_source"] == "live, through primary"
        assert (ours["max_connections"], ours["reserved"], ours["total"], ours["over"]) == (200, 3, 210, 13)
        offline = next(s for s in servers if s["server"] != f"127.0.0.1:{pg.port}")
        assert offline["limit_error"].startswith("could not read the limits through offline")


class TestSchema:
    def test_prints_the_schema(self, runs: Runs) -> None:
        data = runs.json("schema", EXIT_OK)
        assert data == json.loads(json.dumps(config_schema()))
        assert data["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        properties = data["properties"]
        assert isinstance(properties, dict)
        assert set(properties) == {"default", "databases", "log_pool_events", "profiles", "session"}
        database = data["$defs"]["DatabaseConfig"]  # type: ignore[index]
        assert database["required"] == ["url"]
        assert {"pool_class", "poolclass", "pool_size", "replica_of", "max_connections"} <= set(database["properties"])

    def test_the_schema_accepts_what_the_loader_accepts(self) -> None:
        jsonschema = pytest.importorskip("jsonschema")
        yaml = pytest.importorskip("yaml")
        schema = config_schema()
        example = yaml.safe_load((Path(__file__).parent.parent / "config" / "databases.yaml").read_text())
        jsonschema.validate(example, schema)
        jsonschema.validate(
            {
                "log_pool_events": "${LOG_POOL:-false}",
                "databases": {"a": {"url": "sqlite://", "poolclass": "static", "pool_size": "${SIZE:-5}"}},
                "profiles": {"prod": {"default": "a", "databases": {"a": {"pool_size": 10}}}},
            },
            schema,
        )
        bad: dict[str, Any]
        for bad in (
            {"databases": {"a": {"url": "sqlite://", "pool_sise": 3}}},
            {"databases": {"a": {"pool_size": 3}}},
            {"databases": {"a": {"url": "sqlite://", "pool_class": "LakePool"}}},
            {"databases": {"1st": {"url": "sqlite://"}}},
            {"profiles": {"prod": {"databasez": {}}}},
        ):
            with pytest.raises(jsonschema.ValidationError):
                jsonschema.validate(bad, schema)


class TestUsage:
    def test_usage_errors_exit_2(self, runs: Runs, capsys: pytest.CaptureFixture[str]) -> None:
        assert "usage: dbregistry" in runs("no_command", EXIT_USAGE).stderr
        code, _, err = in_process(capsys, "budget", "--processes", "0")
        assert code == EXIT_USAGE
        assert "--processes: must be at least 1, got 0" in err
        for args in (["frobnicate"], ["budget"], ["check", "--timeout", "soon"]):
            code, _, err = in_process(capsys, *args)
            assert code == EXIT_USAGE
            assert "usage: dbregistry" in err

    def test_invalid_configuration_is_exit_1_for_every_command(
        self, runs: Runs, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, _, err = in_process(capsys, "show", "--config", str(runs.files.invalid))
        assert code == EXIT_PROBLEMS
        assert "dbregistry show: invalid configuration: 2 problems" in err
        for name in ("check", "budget", "show"):
            extra = ["--processes", "2"] if name == "budget" else []
            code, out, _ = in_process(capsys, name, "--config", str(runs.files.invalid), "--json", *extra)
            assert code == EXIT_PROBLEMS
            data = json.loads(out)
            assert data["ok"] is False
            assert len(data["problems"]) == 2


def test_colour_on_a_terminal(files: Files) -> None:
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "dbregistry", "validate", "--config", str(files.config)],
            cwd=files.dir,
            env=clean_env(),
            stdout=terminal,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
        os.close(terminal)
        terminal = -1
        chunks: list[bytes] = []
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the terminal side is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(controller)
        if terminal != -1:
            os.close(terminal)
    output = b"".join(chunks).decode()
    assert proc.returncode == EXIT_OK
    assert "\x1b[32mok\x1b[0m" in output
    assert_clean(output, "validate on a terminal")
