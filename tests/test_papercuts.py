"""Messages from a new user's first hour: the YAML hint for an unquoted URL, and the CLI's --version, budget and check."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from dbregistry import ConfigError, Registry, __version__
from dbregistry._cli import EXIT_OK, main


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "databases.yaml"
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


class TestUnquotedURL:
    def test_sqlite_memory_gets_a_hint_to_quote_it(self, tmp_path: Path) -> None:
        path = write(
            tmp_path,
            """\
            databases:
              dev:
                url: sqlite:///:memory:
            """,
        )
        with pytest.raises(ConfigError) as info:
            Registry.from_yaml(path, environ={})
        (problem,) = info.value.problems
        # libyaml says "in this context", PyYAML's pure-Python reader "here".
        assert str(problem).startswith(f"{path}:3  is not valid YAML: mapping values are not allowed ")
        assert str(problem).endswith(
            """; a URL that ends in ':' or holds ': ' must be quoted, as in url: "sqlite:///:memory:\""""
        )

    def test_no_hint_where_there_is_no_url(self, tmp_path: Path) -> None:
        path = write(
            tmp_path,
            """\
            databases:
              dev:
                pool_size: a: b
            """,
        )
        with pytest.raises(ConfigError) as info:
            Registry.from_yaml(path, environ={})
        assert "quoted" not in str(info.value)

    def test_the_hint_never_echoes_the_line(self, tmp_path: Path) -> None:
        path = write(
            tmp_path,
            """\
            databases:
              app:
                url: postgresql://app:pg-S3cret@db/app?options=-c statement_timeout: 5
            """,
        )
        with pytest.raises(ConfigError) as info:
            Registry.from_yaml(path, environ={})
        assert "must be quoted" in str(info.value)
        assert "pg-S3cret" not in str(info.value)


class TestVersion:
    def test_prints_the_version(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["--version"]) == EXIT_OK
        assert capsys.readouterr().out == f"dbregistry {__version__}\n"


class TestBudgetJSON:
    def test_an_unknown_limit_is_not_ok_true(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        path = write(
            tmp_path,
            """\
            databases:
              app:
                url: postgresql://app@db.example/app
                pool_size: 5
                max_overflow: 5
            """,
        )
        assert main(["budget", "--config", str(path), "--processes", "2", "--json"]) == EXIT_OK
        data = json.loads(capsys.readouterr().out)
        assert (data["ok"], data["status"], data["unknown_limits"]) == (None, "unknown", ["db.example:5432"])

    def test_a_known_limit_is_ok(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        path = write(
            tmp_path,
            """\
            databases:
              app:
                url: postgresql://app@db.example/app
                max_connections: 100
            """,
        )
        assert main(["budget", "--config", str(path), "--processes", "2", "--json"]) == EXIT_OK
        data = json.loads(capsys.readouterr().out)
        assert (data["ok"], data["status"], data["unknown_limits"]) == (True, "ok", [])


class TestCheckCreatesNoFile:
    def test_a_sqlite_file_that_does_not_exist_is_up_and_not_created(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        new = tmp_path / "new.db"
        path = write(
            tmp_path,
            f"""\
            databases:
              local:
                url: sqlite:///{new}
            """,
        )
        assert main(["check", "--config", str(path)]) == EXIT_OK
        out = capsys.readouterr().out
        assert not new.exists()
        assert out.splitlines()[-1] == (
            f"local: {new} does not exist yet; SQLite creates it on first use (not opened: `check` creates no file)"
        )
        assert main(["check", "--config", str(path), "--json"]) == EXIT_OK
        local = json.loads(capsys.readouterr().out)["databases"]["local"]
        assert (local["status"], local["latency_ms"]) == ("up", None)
        assert local["note"] == (
            f"{new} does not exist yet; SQLite creates it on first use (not opened: `check` creates no file)"
        )
        assert not new.exists()

    def test_an_existing_file_is_opened(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        existing = tmp_path / "there.db"
        with Registry.from_dict({"databases": {"x": {"url": f"sqlite:///{existing}"}}}, environ={}) as registry:
            registry.get().connect().close()
        path = write(tmp_path, f"databases:\n  local:\n    url: sqlite:///{existing}\n")
        assert main(["check", "--config", str(path), "--json"]) == EXIT_OK
        local = json.loads(capsys.readouterr().out)["databases"]["local"]
        assert local["latency_ms"] > 0
        assert "note" not in local
