"""Every file the library reads is read within a size bound and a time bound, whatever it is (dbregistry._files)."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbregistry import ConfigError, Registry
from dbregistry._files import MAX_ENV_FILE_BYTES, MAX_SECRET_FILE_BYTES, FileReadError, read_bounded

PW = "Files-Pw-5521"


def only_problem(error: ConfigError) -> str:
    (problem,) = error.problems
    return str(problem)


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


@pytest.fixture
def idle_writer(fifo: Path) -> Iterator[Path]:
    """The FIFO with a writer that holds it open and never writes."""
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    try:
        yield fifo
    finally:
        os.close(fd)


class TestReadBounded:
    def test_dev_zero_reports_zero_bytes_and_is_refused(self) -> None:
        assert os.stat("/dev/zero").st_size == 0
        with pytest.raises(FileReadError, match=re.escape("holds more than 1,000 bytes, the limit for this file")):
            read_bounded("/dev/zero", 1000)

    def test_proc_file_reports_zero_bytes_and_is_read(self) -> None:
        assert os.stat("/proc/self/status").st_size == 0
        assert b"Name:" in read_bounded("/proc/self/status", 100_000)

    def test_fifo_without_a_writer_reads_as_empty_at_once(self, fifo: Path) -> None:
        assert read_bounded(fifo, 100) == b""

    def test_fifo_whose_writer_never_writes_gives_up_at_the_deadline(self, idle_writer: Path) -> None:
        outcome: list[BaseException | bytes] = []
        reader = threading.Thread(target=lambda: outcome.append(_try(idle_writer)), daemon=True)
        reader.start()
        reader.join(30)
        assert not reader.is_alive(), "the read of an idle FIFO did not end"
        (error,) = outcome
        assert isinstance(error, FileReadError)
        assert str(error) == "gave nothing to read within 5 s (a FIFO or device?)"

    def test_nul_in_the_path(self) -> None:
        with pytest.raises(FileReadError, match="the path contains a NUL character"):
            read_bounded("/run/secrets/a\x00b", 10)

    def test_directory(self, tmp_path: Path) -> None:
        with pytest.raises(FileReadError, match="is a directory, not a file"):
            read_bounded(tmp_path, 10)


def _try(path: Path) -> BaseException | bytes:
    try:
        return read_bounded(path, 100, timeout=0.5)
    except FileReadError as e:
        return e


class TestConfigurationFile:
    def test_dev_zero_as_the_yaml_file(self) -> None:
        with pytest.raises(ConfigError) as info:
            Registry.from_yaml("/dev/zero", environ={})
        assert only_problem(info.value) == "/dev/zero  holds more than 4,194,304 bytes, the limit for this file"

    def test_fifo_as_the_yaml_file_does_not_block(self, fifo: Path) -> None:
        with pytest.raises(ConfigError) as info:
            Registry.from_yaml(fifo, environ={})
        assert only_problem(info.value) == f"{fifo}:1  the file is empty; declare at least `databases:`"

    def test_env_file_over_the_bound(self, tmp_path: Path) -> None:
        env = tmp_path / ".env"
        with env.open("wb") as f:
            f.truncate(MAX_ENV_FILE_BYTES + 1)  # sparse: stat() says its size, but nothing stops a read but the bound
        with pytest.raises(ConfigError) as info:
            Registry.from_env(environ={"DATABASE_URL": "sqlite://"}, env_file=env)
        assert (
            only_problem(info.value)
            == f"{env}  env file {env} holds more than 1,048,576 bytes, the limit for this file"
        )


class TestSecretFiles:
    def test_password_file_from_dev_zero(self) -> None:
        with pytest.raises(ConfigError) as info:
            Registry.from_dict(
                {"databases": {"a": {"url": f"postgresql://app:{PW}@db/app", "password_file": "/dev/zero"}}},
                environ={},
            )
        assert only_problem(info.value) == (
            "from_dict  databases.a.password_file: password file /dev/zero holds more than 65,536 bytes, the limit for this file"
        )
        assert MAX_SECRET_FILE_BYTES == 65_536

    def test_file_substitution_from_dev_zero(self) -> None:
        with pytest.raises(ConfigError) as info:
            Registry.from_dict({"databases": {"a": {"url": "${file:/dev/zero}"}}}, environ={})
        assert only_problem(info.value) == (
            "from_dict  databases.a.url: secret file /dev/zero (in ${file:...}) holds more than 65,536 bytes, "
            "the limit for this file"
        )

    def test_nul_in_password_file(self) -> None:
        with pytest.raises(ConfigError) as info:
            Registry.from_dict(
                {"databases": {"a": {"url": f"postgresql://app:{PW}@db/app", "password_file": "/run/a\x00b"}}},
                environ={},
            )
        assert only_problem(info.value) == (
            "from_dict  databases.a.password_file: password file /run/a\\x00b the path contains a NUL character"
        )

    def test_nul_in_file_substitution(self) -> None:
        with pytest.raises(ConfigError) as info:
            Registry.from_dict({"databases": {"a": {"url": "${file:/run/a\x00b}"}}}, environ={})
        assert only_problem(info.value) == (
            "from_dict  databases.a.url: secret file /run/a\\x00b (in ${file:...}) the path contains a NUL character"
        )

    def test_directory_as_password_file(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError) as info:
            Registry.from_dict(
                {"databases": {"a": {"url": f"postgresql://app:{PW}@db/app", "password_file": str(tmp_path)}}},
                environ={},
            )
        assert only_problem(info.value) == (
            f"from_dict  databases.a.password_file: password file {tmp_path} is a directory, not a file"
        )

    def test_one_file_named_through_many_aliases_is_read_once(self, tmp_path: Path) -> None:
        secret = tmp_path / "pw"
        secret.write_text(PW)
        uses = "\n".join(f"  db{i}: {{url: *u}}" for i in range(200))
        config = tmp_path / "c.yaml"
        config.write_text(f"x: &u 'sqlite:///${{file:{secret}}}.db'\ndatabases:\n{uses}\n")
        started = time.monotonic()
        with pytest.raises(ConfigError):  # `x` is not a top-level key; the reads are what is measured
            Registry.from_yaml(config, environ={})
        assert time.monotonic() - started < 10


class TestRelativePasswordFile:
    def test_relative_to_the_yaml_file_not_the_working_directory(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        folder = tmp_path / "config"
        (folder / "secrets").mkdir(parents=True)
        (folder / "secrets" / "pw").write_text(PW + "\n")
        config = folder / "databases.yaml"
        config.write_text("databases:\n  a:\n    url: postgresql://app@db/app\n    password_file: secrets/pw\n")
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        registry = Registry.from_yaml(config, environ={})
        assert registry["a"].url.password == PW

    def test_from_the_environment_relative_to_the_working_directory(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        (tmp_path / "pw").write_text(PW)
        monkeypatch.chdir(tmp_path)
        registry = Registry.from_dict(
            {"databases": {"a": {"url": "postgresql://app@db/app"}}},
            environ={"DBREGISTRY_DATABASES__A__PASSWORD_FILE": "pw"},
        )
        assert registry["a"].url.password == PW

    def test_applies_to_direct_url_too(self, tmp_path: Path) -> None:
        (tmp_path / "pw").write_text(PW)
        registry = Registry.from_dict(
            {
                "databases": {
                    "a": {
                        "url": "postgresql://app@pooler:6432/app",
                        "direct_url": "postgresql://app@db:5432/app",
                        "password_file": str(tmp_path / "pw"),
                    }
                }
            },
            environ={},
        )
        assert registry["a"].url.password == PW
        assert registry["a"].direct_url is not None
        assert registry["a"].direct_url.password == PW
