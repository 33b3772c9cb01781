"""Property tests: whatever the input, loading returns a Registry or raises ConfigError, and nothing else.

Three doors are fuzzed: a mapping through ``from_dict``, YAML text through
``from_yaml`` (random text and mutations of the shipped example), and
environment variables through ``from_env``. The strategies are biased towards
real field names and plausible values, so that the validation rules and not
only the type checks are reached. Every URL carries the same password; since
it only ever appears inside URLs, no error message may contain it.
"""

from __future__ import annotations

import contextlib
import traceback
import warnings
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# On a failure, hypothesis imports libcst to write a patch of the failing example; libcst's import
# warns (DeprecationWarning from mypy_extensions), which `filterwarnings = ["error"]` turns into an
# INTERNALERROR hiding the failure. Importing it here, quietly, keeps the failure readable.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    with contextlib.suppress(ImportError):  # libcst not installed: hypothesis writes no patch
        import hypothesis.extra._patching  # noqa: F401

from dbregistry import ConfigError, Registry
from dbregistry._schema import field_names

PASSWORD = "Fuzz-Pw-4471"
EXAMPLE = (Path(__file__).resolve().parent.parent / "config" / "databases.yaml").read_text(encoding="utf-8")

FIELDS = [*field_names(), "pool_sise", "poolsize", "URL", "password", "driver"]
NAMES = ["primary", "replica", "analytics", "dev", "Primary", "1st", "read-replica", "a b", ""]
POOL_CLASSES = [
    "QueuePool",
    "NullPool",
    "StaticPool",
    "SingletonThreadPool",
    "AsyncAdaptedQueuePool",
    "queue",
    "null",
    "QueuPool",
    "",
]
URLS = [
    f"postgresql://app:{PASSWORD}@db.internal:5432/app",
    f"postgresql+asyncpg://app:{PASSWORD}@db/app?sslmode=require",
    f"postgres://app:{PASSWORD}@db/app",
    f"mysql+pymysql://app:{PASSWORD}@db/app",
    f"firebird://app:{PASSWORD}@db/app",
    f"postgresql://app:{PASSWORD}@db:notaport/app",
    "not a url",
    "sqlite://",
    "sqlite:///:memory:",
    "sqlite:///./dev.db",
    "file::memory:?cache=shared",
    "${DATABASE_URL}",
    f"${{DATABASE_URL:-postgresql://app:{PASSWORD}@db/app}}",
    "${UNSET:?no url}",
    "${1BAD}",
    "${UNTERMINATED",
    "$${literal}",
    "",
]

urls = st.sampled_from(URLS)
numbers = st.one_of(
    st.integers(min_value=-3, max_value=50),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["10", "ten", "-1", "1.5", ""]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    numbers,
    st.text(max_size=12),
    st.sampled_from(POOL_CLASSES),
    st.sampled_from(NAMES),
    urls,
)
keys = st.one_of(st.sampled_from(FIELDS), st.sampled_from(NAMES), st.text(max_size=8))
# A mapping built in code may have keys of any type (json or yaml.safe_load give ints and None).
any_keys = st.one_of(keys, st.integers(-2, 2), st.none())
anything = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(any_keys, children, max_size=4)),
    max_leaves=12,
)

plausible_value = {
    "url": urls,
    "pool_class": st.sampled_from(POOL_CLASSES),
    "poolclass": st.sampled_from(POOL_CLASSES),
    "pool_size": numbers,
    "max_overflow": numbers,
    "pool_timeout": numbers,
    "pool_recycle": numbers,
    "replica_of": st.sampled_from(NAMES),
    "isolation_level": st.sampled_from(["READ COMMITTED", "serializable", "SNAPSHOT", "AUTOCOMMIT"]),
    "echo": st.sampled_from([True, False, "debug", "loud"]),
    "connect_args": st.one_of(st.dictionaries(st.sampled_from(["timeout", "password"]), scalars), scalars),
}


@st.composite
def database(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(anything)
    entry: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=6, unique=True)):
        strategy = plausible_value.get(name, anything)
        entry[name] = draw(st.one_of(strategy, anything) if draw(st.booleans()) else strategy)
    if draw(st.integers(0, 4)) > 0:
        entry["url"] = draw(urls)
    return entry


databases = st.dictionaries(st.sampled_from(NAMES), database(), max_size=4)
configs = st.one_of(
    st.fixed_dictionaries(
        {"databases": st.one_of(databases, anything)},
        optional={
            "default": st.one_of(st.sampled_from(NAMES), anything),
            "profiles": st.one_of(st.dictionaries(st.sampled_from(["prod", "dev"]), anything, max_size=2), anything),
            "pool_size": numbers,
        },
    ),
    st.dictionaries(keys, anything, max_size=4),
)
environs = st.dictionaries(
    st.sampled_from(
        [
            "DATABASE_URL",
            "PRIMARY_DATABASE_URL",
            "DBREGISTRY_DEFAULT",
            "DBREGISTRY_DATABASES",
            "DBREGISTRY_DATABASES__PRIMARY",
            "DBREGISTRY_DATABASES__PRIMARY__URL",
            "DBREGISTRY_DATABASES__PRIMARY__POOL_SIZE",
            "DBREGISTRY_DATABASES__PRIMARY__POOL_CLASS",
            "DBREGISTRY_DATABASES__PRIMARY__CONNECT_ARGS",
            "DBREGISTRY_DATABASES__PRIMARY__REPLICA_OF",
            "DBREGISTRY_DATABASES__REPLICA__URL",
            "DBREGISTRY_DATABASES__REPLICA__REPLICA_OF",
            "DBREGISTRY_DATABASES__1BAD__URL",
            "DBREGISTRY_DATABASES__PRIMARY__POOL_SISE",
        ]
    ),
    st.one_of(
        urls,
        st.sampled_from(["10", "ten", "-1", "NullPool", "StaticPool", "primary", "replica", "{}", "{", "[1]"]),
        st.text(max_size=10),
    ),
    max_size=5,
)


def check_config_error(error: ConfigError) -> None:
    assert error.problems
    assert PASSWORD not in "".join(traceback.format_exception(error))
    assert PASSWORD not in repr(error)
    for problem in error.problems:
        assert isinstance(problem.path, str)
        assert isinstance(problem.message, str)
        assert problem.message
        assert isinstance(problem.source, str)
        assert problem.line is None or problem.line >= 1


def assert_only_config_error(load: Any) -> None:
    """``load()`` returns a Registry or raises ConfigError; any other exception fails the test."""
    try:
        registry = load()
    except ConfigError as error:
        check_config_error(error)
        return
    assert isinstance(registry, Registry)
    assert PASSWORD not in repr(registry)
    registry.close()


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(configs)
def test_any_mapping_gives_a_registry_or_a_config_error(mapping: dict[str, Any]) -> None:
    assert_only_config_error(lambda: Registry.from_dict(mapping, environ={}))


@FUZZ
@given(anything)
def test_any_value_at_all_gives_a_registry_or_a_config_error(value: Any) -> None:
    assert_only_config_error(lambda: Registry.from_dict(value, environ={}))


@st.composite
def mutated_example(draw: st.DrawFn) -> str:
    text = EXAMPLE.replace("secret", PASSWORD)
    for _ in range(draw(st.integers(1, 4))):
        lines = text.splitlines(keepends=True)
        kind = draw(st.sampled_from(["delete", "insert", "duplicate", "swap", "replace", "indent"]))
        at = draw(st.integers(0, max(len(text) - 1, 0)))
        line = draw(st.integers(0, max(len(lines) - 1, 0)))
        if kind == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 20)) :]
        elif kind == "insert":
            snippet = draw(
                st.one_of(
                    st.text(max_size=8),
                    st.sampled_from(
                        [": ", "- ", "{", "[", "&a ", "*a", "<<: *a\n", "!!python/object:os.system ", "\t", "\n  ", "#"]
                    ),
                )
            )
            text = text[:at] + snippet + text[at:]
        elif kind == "duplicate" and lines:
            lines.insert(line, lines[line])
            text = "".join(lines)
        elif kind == "swap" and len(lines) > 1:
            other = draw(st.integers(0, len(lines) - 1))
            lines[line], lines[other] = lines[other], lines[line]
            text = "".join(lines)
        elif kind == "replace" and lines:
            key, sep, _ = lines[line].partition(":")
            if sep:
                value = draw(st.one_of(st.sampled_from([*POOL_CLASSES, *NAMES, "-5", "ten", "[]", "{}", "~"]), urls))
                lines[line] = f"{key}: {value}\n"
                text = "".join(lines)
        elif kind == "indent" and lines:
            lines[line] = draw(st.sampled_from(["", " ", "    ", "\t"])) + lines[line].lstrip()
            text = "".join(lines)
    return text


@FUZZ
@given(st.one_of(st.text(max_size=200), mutated_example()))
def test_any_yaml_text_gives_a_registry_or_a_config_error(tmp_path_factory: Any, text: str) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "config.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    assert_only_config_error(lambda: Registry.from_yaml(path, environ={}))


@FUZZ
@given(environs)
def test_any_environment_gives_a_registry_or_a_config_error(environ: dict[str, str]) -> None:
    assert_only_config_error(lambda: Registry.from_env(environ=environ, env_file=None))
