"""Every malformed or hostile configuration in tests/corpus gets a ConfigError that says what, where, and nothing secret.

Each case is a data file whose header comments state what it expects:

``NN-name.yaml``
    loaded with ``Registry.from_yaml(path, environ=...)``.
``NN-name.env``
    ``KEY=VALUE`` lines (taken verbatim, no quoting), used as ``environ=`` for
    ``Registry.from_env(environ=..., env_file=None)``; with a ``# base:`` line, for
    ``Registry.from_yaml(base, environ=...)`` instead.

Header lines::

    # expect-path: databases.replica.pool_size   opens an expected problem ("" for the file as a whole)
    # expect-line: 7                             its line (``none``: not from a line of a file)
    # expect-source: DBREGISTRY_DATABASES__...   its source (the variable's name; a base file's name)
    # expect-message: must be >= 0, got -5       a fragment of its message (repeatable)
    # expect-count: 3                            the number of problems (else: the number of expect-path)
    # environ: NAME=value                        a variable for a YAML case (repeatable; default: none)
    # base: bases/two-databases.yaml             the YAML an .env case is layered over

Every case carries the password below in a URL, so that a leak anywhere shows.
"""

from __future__ import annotations

import re
import sys
import time
import traceback
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dbregistry import ConfigError, Limits, Problem, Registry

PASSWORD = "Corpus-Pw-7731"
CORPUS = Path(__file__).resolve().parent / "corpus"
CASES = sorted(p for p in CORPUS.iterdir() if p.is_file() and re.fullmatch(r"\d{2,3}-[a-z0-9-]+\.(yaml|env)", p.name))
_HEADER = re.compile(r"#\s*(expect-path|expect-line|expect-source|expect-message|expect-count|environ|base):\s?(.*)")


@dataclass
class Expected:
    path: str
    line: int | str | None = "any"
    source: str | None = None
    messages: list[str] = field(default_factory=list)


@dataclass
class Case:
    file: Path
    problems: list[Expected] = field(default_factory=list)
    count: int | None = None
    environ: dict[str, str] = field(default_factory=dict)
    base: Path | None = None

    @property
    def expected_count(self) -> int:
        return self.count if self.count is not None else len(self.problems)


def parse_case(file: Path) -> Case:
    case = Case(file)
    for raw in file.read_bytes().decode("utf-8", errors="replace").splitlines():
        match = _HEADER.match(raw)
        if match is None:
            continue
        key, value = match[1], match[2].rstrip()
        if key == "expect-path":
            case.problems.append(Expected("" if value == '""' else value))
        elif key == "expect-count":
            case.count = int(value)
        elif key == "environ":
            name, _, text = value.partition("=")
            case.environ[name] = text
        elif key == "base":
            case.base = CORPUS / value
        else:
            assert case.problems, f"{file.name}: {key} before any expect-path"
            current = case.problems[-1]
            if key == "expect-line":
                current.line = None if value == "none" else int(value)
            elif key == "expect-source":
                current.source = value
            else:
                current.messages.append(value)
    assert case.problems, f"{file.name} states no expectation"
    return case


def read_environ(file: Path) -> dict[str, str]:
    environ: dict[str, str] = {}
    for line in file.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"{file.name}: not a KEY=VALUE line: {line!r}"
            environ[name.strip()] = value
    return environ


def load(case: Case) -> tuple[ConfigError, str | None]:
    """Load the case; return its ConfigError and the file name its problems should carry."""
    if case.file.suffix == ".env":
        environ = read_environ(case.file)
        if case.base is not None:
            with pytest.raises(ConfigError) as info:
                Registry.from_yaml(case.base, environ=environ)
            return info.value, str(case.base)
        with pytest.raises(ConfigError) as info:
            Registry.from_env(environ=environ, env_file=None)
        return info.value, None
    with pytest.raises(ConfigError) as info:
        Registry.from_yaml(case.file, environ=case.environ)
    return info.value, str(case.file)


def describe(error: ConfigError) -> str:
    return "\n".join(repr(p) for p in error.problems)


def check_problem_fields(problem: Problem, file: str | None) -> None:
    assert isinstance(problem.path, str)
    assert isinstance(problem.message, str)
    assert problem.message.strip(), problem
    assert problem.message == problem.message.strip(), problem
    assert isinstance(problem.source, str)
    assert problem.source, problem
    if problem.file is not None:
        assert problem.file == file, problem
        assert problem.source == problem.file, problem
        assert problem.line is None or (isinstance(problem.line, int) and problem.line >= 1), problem
    else:
        assert problem.line is None, problem


def check_no_leak(error: ConfigError) -> None:
    assert PASSWORD not in str(error)
    assert PASSWORD not in repr(error)
    shown = "".join(traceback.format_exception(error))
    assert PASSWORD not in shown
    cause: BaseException | None = error
    while cause is not None:  # the chain as Python would print it, and the hidden context too
        assert PASSWORD not in str(cause)
        assert PASSWORD not in repr(cause)
        cause = cause.__cause__ or cause.__context__
    for problem in error.problems:
        for value in (problem.path, problem.message, problem.source, problem.file):
            assert value is None or PASSWORD not in value, problem


def check_rendering(error: ConfigError) -> None:
    lines = str(error).splitlines()
    count = len(error.problems)
    assert re.fullmatch(rf"{count} problems? in .+", lines[0]), lines[0]
    assert len(lines) == count + 1
    for problem, line in zip(error.problems, lines[1:], strict=True):
        assert line.startswith("  ")
        assert line.endswith(problem.message)
        assert problem.location in line
        if problem.path:
            assert f"{problem.path}: " in line
    assert error.problems == sorted(error.problems, key=Problem.sort_key)


@pytest.mark.parametrize("file", CASES, ids=[p.name for p in CASES])
def test_corpus_case(file: Path) -> None:
    case = parse_case(file)
    assert PASSWORD.encode() in file.read_bytes() or (case.base is not None and PASSWORD in case.base.read_text())

    error, file_name = load(case)

    assert type(error) is ConfigError
    assert len(error.problems) == case.expected_count, describe(error)
    for expected in case.problems:
        candidates = [p for p in error.problems if p.path == expected.path]
        assert candidates, f"no problem at {expected.path!r}:\n{describe(error)}"
        if expected.line != "any":
            candidates = [p for p in candidates if p.line == expected.line]
            assert candidates, f"no problem at {expected.path!r} line {expected.line}:\n{describe(error)}"
        if expected.source is not None:
            source = str(CORPUS / expected.source) if expected.source.startswith("bases/") else expected.source
            candidates = [p for p in candidates if p.source == source]
            assert candidates, f"no problem at {expected.path!r} from {source}:\n{describe(error)}"
        for fragment in expected.messages:
            assert any(fragment in p.message for p in candidates), f"{fragment!r} not in:\n{describe(error)}"
    for problem in error.problems:
        check_problem_fields(problem, file_name)
    check_no_leak(error)
    check_rendering(error)


ENV_CASES = [p for p in CASES if p.suffix == ".env"]


@pytest.mark.parametrize("file", ENV_CASES, ids=[p.name for p in ENV_CASES])
def test_env_case_read_from_a_dotenv_file(file: Path, tmp_path: Path) -> None:
    """The same variables in a .env file: the same problems, each naming its variable and the file."""
    case = parse_case(file)
    dotenv = tmp_path / ".env"
    dotenv.write_bytes(file.read_bytes())
    base = case.base
    if base is not None:
        with pytest.raises(ConfigError) as info:
            Registry.from_yaml(base, environ={}, env_file=dotenv)
    else:
        with pytest.raises(ConfigError) as info:
            Registry.from_env(environ={}, env_file=dotenv)
    error = info.value
    assert len(error.problems) == case.expected_count, describe(error)
    for expected in case.problems:
        (problem,) = [p for p in error.problems if p.path == expected.path]
        if expected.source is not None and expected.source.isupper():  # a variable's name
            assert problem.source == f"{expected.source} (from {dotenv})"
            assert (problem.file, problem.line) == (None, None)
        assert all(fragment in problem.message for fragment in expected.messages), problem
    check_no_leak(error)


def test_the_corpus_is_large_and_distinct() -> None:
    assert len(CASES) >= 45
    assert len({p.read_bytes() for p in CASES}) == len(CASES)
    assert len({p.name.partition("-")[0] for p in CASES}) == len(CASES), "case numbers repeat"


def test_the_whole_corpus_loads_in_bounded_time() -> None:
    started = time.perf_counter()
    for file in CASES:
        case = parse_case(file)
        load(case)
    elapsed = time.perf_counter() - started
    print(f"\n{len(CASES)} corpus cases in {elapsed:.3f} s", file=sys.stderr)
    # Guards against a case that blows up (alias expansion, deep nesting): those take minutes or
    # never end. Well under a second normally; the speed of loading is measured in bench/.
    assert elapsed < 60


# -- cases that cannot be kept as data files -------------------------------------------------


def test_oversized_file(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    padding = "# padding\n" * 200
    path.write_text(f"databases:\n  primary:\n    url: postgresql://app:{PASSWORD}@db/app\n{padding}")
    with pytest.raises(ConfigError) as info:
        Registry.from_yaml(path, environ={}, limits=Limits(max_bytes=1024))
    (problem,) = info.value.problems
    assert problem.path == ""
    assert problem.file == str(path)
    assert re.fullmatch(r"the file is 2,\d\d\d bytes, over the limit of 1,024", problem.message)
    check_no_leak(info.value)


def test_oversized_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("wb") as f:  # sparse: 1 GiB on paper, nothing on disk
        f.truncate(1 << 30)
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match=r"the file is 1,073,741,824 bytes, over the limit of 4,194,304"):
            Registry.from_yaml(path, environ={})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20  # reading the file would allocate its 1 GiB; the refusal reads none of it


def test_missing_file_names_the_path_and_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        Registry.from_yaml("config/nowhere.yaml", environ={})
    (problem,) = info.value.problems
    assert problem.file == "config/nowhere.yaml"
    assert problem.message == f"file not found (working directory: {tmp_path})"
    assert str(info.value) == f"1 problem in config/nowhere.yaml\n  config/nowhere.yaml  {problem.message}"


def test_a_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory, not a YAML file"):
        Registry.from_yaml(tmp_path, environ={})


def test_nothing_is_constructed_from_python_tags(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(
        "databases:\n  primary:\n"
        f"    url: postgresql://app:{PASSWORD}@db/app\n"
        f"    pool_size: !!python/object/apply:os.system ['touch {marker}']\n"
        f"    pool_timeout: !!python/object/new:pathlib.Path ['{marker}']\n"
    )
    with pytest.raises(ConfigError) as info:
        Registry.from_yaml(path, environ={})
    assert [p.path for p in info.value.problems] == ["databases.primary.pool_size", "databases.primary.pool_timeout"]
    assert not marker.exists()


# -- driver rules: they fire when an engine is built, not at load ----------------------------


def test_async_engine_for_a_dialect_with_no_known_async_driver() -> None:
    registry = Registry.from_dict(
        {"databases": {"legacy": {"url": f"firebird://app:{PASSWORD}@db.internal/app.fdb"}}}, environ={}
    )
    with pytest.raises(ConfigError) as info:
        registry.get_async("legacy")
    (problem,) = info.value.problems
    assert problem.path == "databases.legacy.url"
    assert problem.source == "from_dict"
    assert problem.message == (
        "no async driver is known for the dialect 'firebird'; name one in the URL (firebird+<async driver>://...)"
    )
    check_no_leak(info.value)
    registry.close()


def test_driver_with_no_async_counterpart_names_the_drivers_to_declare(tmp_path: Path) -> None:
    path = tmp_path / "databases.yaml"
    path.write_text(f"databases:\n  shop:\n    url: mysql+mariadbconnector://app:{PASSWORD}@db.internal/shop\n")
    registry = Registry.from_yaml(path, environ={})
    with pytest.raises(ConfigError) as info:
        registry.get_async("shop")
    (problem,) = info.value.problems
    assert (problem.path, problem.file, problem.line) == ("databases.shop.url", str(path), 3)
    assert problem.message == (
        "the driver 'mariadbconnector' is not one the registry knows for async use with mysql; "
        "declare one of aiomysql, asyncmy (e.g. mysql+aiomysql://...)"
    )
    check_no_leak(info.value)
    registry.close()


def test_driver_not_installed_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # import asyncpg now raises ModuleNotFoundError
    registry = Registry.from_env(
        environ={"DATABASE_URL": f"postgresql://app:{PASSWORD}@db.internal/app"}, env_file=None
    )
    with pytest.raises(ConfigError) as info:
        registry.get_async()
    (problem,) = info.value.problems
    assert problem.path == "databases.primary.url"
    assert problem.source == "DATABASE_URL"
    assert (problem.file, problem.line) == (None, None)
    assert "the driver module 'asyncpg' is not installed; run `pip install 'dbregistry[postgres]'`" in problem.message
    check_no_leak(info.value)
    registry.close()


def test_sync_driver_not_installed_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    registry = Registry.from_dict(
        {"databases": {"primary": {"url": f"postgresql+psycopg://app:{PASSWORD}@db.internal/app"}}}, environ={}
    )
    with pytest.raises(ConfigError, match=re.escape("pip install 'dbregistry[postgres]'")) as info:
        registry.get()
    check_no_leak(info.value)
    registry.close()
