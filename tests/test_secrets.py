"""dbregistry._secrets: no password is shown, in any shape, through any output.

The leak harness (`Outputs`) collects everything a user can see — ``repr`` and
``str`` of every object, exception chains and groups, warnings, every log
record at DEBUG on every logger (SQLAlchemy's included), the CLI's stdout and
stderr with and without ``--json`` — and asserts that neither the password nor
any 4-character piece of it (nor its %-encoded forms) appears in any of it.
Each shape of secret gets its own test against the real PostgreSQL server.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from servers import HOST, PostgresServer, free_port, sql_literal
from sqlalchemy import make_url, text
from test_corpus import CASES, CORPUS, load, parse_case

from dbregistry import ConfigError, Problem, Registry, RegistryClosedError, UnknownDatabaseError
from dbregistry._cli import main
from dbregistry._errors import unknown_name_message
from dbregistry._secrets import (
    NotUtf8Error,
    Secrets,
    describe_error,
    mask_mapping,
    mask_text,
    mask_url,
    mask_urls,
    normalize_url,
    secrets_of,
    shown_name,
    utf8_text,
)

# A password made to be found: awkward characters, and pieces that no message holds by chance
# (the server's own test password has "cret", which every path under /work/wt/secrets holds).
AWKWARD = "Kq7@Zx/Wv:Jm%Rb#Tn"
ROLE = "leakcheck"


@pytest.fixture(scope="module")
def role(pg: PostgresServer) -> str:
    """A login role on the real server whose password is `AWKWARD`."""
    pg.psql(
        f"DROP ROLE IF EXISTS {ROLE}; CREATE ROLE {ROLE} LOGIN PASSWORD {sql_literal(AWKWARD)}; "
        f"GRANT CONNECT ON DATABASE {pg.database} TO {ROLE}"
    )
    return ROLE


def role_url(pg: PostgresServer, *, port: int | None = None, query: str = "") -> str:
    """The URL of `ROLE` on the server, the password %-encoded in its slot (or in ``query`` when given)."""
    credentials = ROLE if query else f"{ROLE}:{quote(AWKWARD, safe='')}"
    return f"postgresql://{credentials}@{HOST}:{port or pg.port}/{pg.database}{query}"


def pieces(secret: str) -> set[str]:
    """The secret, its %-encoded forms, and every 4-character piece of it."""
    found = {secret, quote(secret, safe=""), quote_plus(secret)}
    found |= {secret[i : i + 4] for i in range(len(secret) - 3)}
    return found


class Outputs:
    """Everything shown to a user during a test: checked for a secret and every piece of it."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []

    def add(self, where: str, value: object) -> None:
        self.texts.append((where, value if isinstance(value, str) else f"{value!s}\n{value!r}"))

    def error(self, where: str, error: BaseException) -> None:
        # The chain as Python prints it, without the source lines of the frames (library code,
        # where a word such as "secret" would match a piece of the password by chance).
        for each in _every_exception(error):
            self.add(where, "".join(traceback.format_exception_only(each)))
            self.add(where, each)
            self.add(where, repr(each.args))

    def call(self, where: str, func: Callable[[], object]) -> object:
        try:
            result = func()
        except Exception as e:  # every failure is an output to scan
            self.error(where, e)
            return e
        self.add(where, result)
        return result

    def assert_clean(self, secret: str) -> None:
        assert self.texts, "nothing was collected"
        for where, shown in self.texts:
            for piece in pieces(secret):
                assert piece not in shown, f"{piece!r} (of the password) shown by {where}:\n{shown[:2000]}"


def _every_exception(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo = [error]
    while todo:
        each = todo.pop()
        if id(each) in seen:
            continue
        seen.add(id(each))
        yield each
        todo.extend(e for e in (each.__cause__, each.__context__) if e is not None)
        if isinstance(each, BaseExceptionGroup):
            todo.extend(each.exceptions)


class _Collect(logging.Handler):
    def __init__(self, outputs: Outputs) -> None:
        super().__init__(logging.DEBUG)
        self.outputs = outputs

    def emit(self, record: logging.LogRecord) -> None:
        self.outputs.add(f"log {record.name}", f"{record.name} {record.levelname} {record.getMessage()}")
        if record.exc_info and record.exc_info[1] is not None:
            self.outputs.error(f"log {record.name} (exc_info)", record.exc_info[1])


@pytest.fixture
def outputs() -> Iterator[Outputs]:
    """An `Outputs` that also receives every log record (all loggers at DEBUG) and every warning."""
    collected = Outputs()
    handler = _Collect(collected)
    names = ["sqlalchemy", "sqlalchemy.engine", "sqlalchemy.pool", "dbregistry", "asyncio"]
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in [*names, *logging.root.manager.loggerDict])]
    levels = [(logger, logger.level) for logger in loggers]
    for logger, _ in levels:
        logger.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield collected
    logging.getLogger().removeHandler(handler)
    for logger, level in levels:
        logger.setLevel(level)
    for warning in caught:
        collected.add("warning", str(warning.message))


def cli(outputs: Outputs, capsys: pytest.CaptureFixture[str], *args: str) -> int:
    """Run the command in-process, with and without --json; collect stdout and stderr."""
    code = 0
    for extra in ((), ("--json",)):
        try:
            code = main([*args, *extra])
        except SystemExit as e:  # argparse's own usage errors
            code = int(e.code or 0)
        out, err = capsys.readouterr()
        outputs.add(f"dbregistry {' '.join([*args, *extra])} (stdout)", out)
        outputs.add(f"dbregistry {' '.join([*args, *extra])} (stderr)", err)
    return code


def every_cli_command(outputs: Outputs, capsys: pytest.CaptureFixture[str], config: Path) -> None:
    for command in (
        ("validate",),
        ("show",),
        ("check", "--timeout", "5"),
        ("budget", "--processes", "2"),
        ("budget", "--processes", "2", "--live", "--timeout", "5"),
    ):
        cli(outputs, capsys, command[0], "--config", str(config), *command[1:])


def every_surface(outputs: Outputs, registry: Registry, names: list[str]) -> None:
    """Everything a registry shows: reprs, config, engines, sessions, health, routing, status.

    The async half runs in one event loop that ends with ``aclose()``: an async
    pool must be closed in the loop its connections belong to.
    """
    outputs.add("repr(registry)", registry)
    outputs.add("registry.config", registry.config)
    for name in names:
        outputs.add(f"registry[{name!r}]", registry[name])
        outputs.add(f"origin({name!r})", registry.origin(name))
        engine = outputs.call(f"get({name!r})", lambda name=name: registry.get(name))  # type: ignore[misc]
        outputs.add(f"get({name!r}).url", getattr(engine, "url", ""))
        outputs.add(f"get({name!r}).pool", getattr(engine, "pool", ""))
        outputs.call(f"reader({name!r})", lambda name=name: registry.reader(name))  # type: ignore[misc]

        def query(name: str = name) -> object:
            with registry.session(name) as session:
                return session.execute(text("select 1")).scalar()

        outputs.call(f"session({name!r})", query)
    outputs.call("health()", lambda: registry.health(timeout=5))
    outputs.call("check_replicas()", registry.check_replicas)
    outputs.call("replica_status()", registry.replica_status)
    outputs.call("stats()", registry.stats)

    async def asynchronous() -> None:
        for name in names:
            engine = outputs.call(f"get_async({name!r})", lambda name=name: registry.get_async(name))  # type: ignore[misc]
            outputs.add(f"get_async({name!r}).url", getattr(engine, "url", ""))
            try:
                async with registry.async_session(name) as session:
                    outputs.add(f"async_session({name!r})", (await session.execute(text("select 1"))).scalar())
            except Exception as e:  # a failure is an output to scan
                outputs.error(f"async_session({name!r})", e)
        outputs.add("ahealth()", await registry.ahealth(timeout=5))
        outputs.add("acheck_replicas()", await registry.acheck_replicas())
        await registry.aclose()

    outputs.call("the async half", lambda: asyncio.run(asynchronous()))
    outputs.call("close()", registry.close)
    outputs.add("repr(closed registry)", registry)


def write(path: Path, body: str) -> Path:
    path.write_text(body, encoding="utf-8")
    return path


def name_calls(registry: Registry, name: str) -> list[tuple[str, Callable[[], object]]]:
    """Every call that takes a database name, given ``name``."""
    return [
        ("get", lambda: registry.get(name)),
        ("get_async", lambda: registry.get_async(name)),
        ("reader", lambda: registry.reader(name)),
        ("async_reader", lambda: registry.async_reader(name)),
        ("writer", lambda: registry.writer(name)),
        ("async_writer", lambda: registry.async_writer(name)),
        ("session", lambda: registry.session(name)),
        ("async_session", lambda: registry.async_session(name)),
        ("registry[...]", lambda: registry[name]),
        ("check_replicas", lambda: registry.check_replicas(name)),
        ("replica_status", lambda: registry.replica_status(name)),
        ("health(names=...)", lambda: registry.health(timeout=5, names=[name])),
        ("ahealth(names=...)", lambda: asyncio.run(registry.ahealth(timeout=5, names=[name]))),
    ]


# -- the shapes, against the real server ------------------------------------------------


@pytest.mark.postgres
class TestLeaks:
    def test_password_in_the_url_slot(
        self, pg: PostgresServer, role: str, tmp_path: Path, outputs: Outputs, capsys: pytest.CaptureFixture[str]
    ) -> None:
        config = write(tmp_path / "db.yaml", f"databases:\n  main:\n    url: {role_url(pg)}\n")
        registry = Registry.from_yaml(config, environ={})
        assert registry.health(timeout=5)["main"].status == "up"
        every_surface(outputs, registry, ["main"])
        every_cli_command(outputs, capsys, config)
        outputs.assert_clean(AWKWARD)

    def test_password_in_the_url_query(
        self, pg: PostgresServer, role: str, tmp_path: Path, outputs: Outputs, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """libpq's ?password=: moved into the password slot at load, so both drivers still log in."""
        url = role_url(pg, query=f"?sslmode=disable&password={quote(AWKWARD, safe='')}")
        refused_port = free_port()
        refused = role_url(pg, port=refused_port, query=f"?password={quote(AWKWARD, safe='')}")
        config = write(
            tmp_path / "db.yaml",
            f"databases:\n  main:\n    url: {url}\n  replica:\n    url: {refused}\n    replica_of: main\n",
        )
        registry = Registry.from_yaml(config, environ={})
        assert registry.health(timeout=5)["main"].status == "up"

        async def async_up() -> str:
            other = Registry.from_yaml(config, environ={})
            try:
                return (await other.ahealth(timeout=5, names=["main"]))["main"].status
            finally:
                await other.aclose()

        assert asyncio.run(async_up()) == "up"  # asyncpg takes it from the slot too
        outputs.call("a connection to the refused replica", lambda: registry.get("replica").connect())
        status = registry.replica_status()["replica"]
        assert not status.up
        assert status.url == f"postgresql://{ROLE}:***@{HOST}:{refused_port}/{pg.database}"
        every_surface(outputs, registry, ["main", "replica"])
        every_cli_command(outputs, capsys, config)
        outputs.assert_clean(AWKWARD)
        seen = {where for where, _ in outputs.texts}
        assert any(where == "log dbregistry.routing" and "is down" in shown for where, shown in outputs.texts)
        assert {"log sqlalchemy.engine.Engine", "dbregistry show --config " + str(config) + " --json (stdout)"} <= seen
        shown_urls = [shown for where, shown in outputs.texts if where.startswith("dbregistry show")]
        assert any(f"postgresql://{ROLE}:***@{HOST}:{pg.port}/{pg.database}" in shown for shown in shown_urls)

    def test_a_password_with_unencoded_reserved_characters_is_refused_at_load(
        self, pg: PostgresServer, tmp_path: Path, outputs: Outputs, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The README's app:${PW}@host with PW holding '@', '/' and ':'."""
        config = write(
            tmp_path / "db.yaml",
            f"databases:\n  main:\n    url: postgresql://{ROLE}:${{PW}}@{HOST}:{pg.port}/{pg.database}\n",
        )
        with pytest.raises(ConfigError) as info:
            Registry.from_yaml(config, environ={"PW": AWKWARD})
        [problem] = info.value.problems
        assert problem == Problem(
            "databases.main.url",
            "holds more than one '@': a password with '@', '/', ':' or '%' must be percent-encoded "
            "(for example '@' as %40, with urllib.parse.quote(password, safe='')), or given through password_file",
            source=str(config),
            file=str(config),
            line=3,
        )
        outputs.error("from_yaml", info.value)
        env = {"DATABASE_URL": f"postgresql://{ROLE}:{AWKWARD}@{HOST}:{pg.port}/{pg.database}"}
        outputs.call("from_env", lambda: Registry.from_env(environ=env, env_file=None))
        monkeypatched = pytest.MonkeyPatch()
        monkeypatched.setenv("PW", AWKWARD)
        try:
            assert cli(outputs, capsys, "validate", "--config", str(config)) == 1
            every_cli_command(outputs, capsys, config)
        finally:
            monkeypatched.undo()
        outputs.assert_clean(AWKWARD)

    def test_a_url_given_as_a_name_is_never_echoed(
        self, pg: PostgresServer, role: str, tmp_path: Path, outputs: Outputs, capsys: pytest.CaptureFixture[str]
    ) -> None:
        config = write(tmp_path / "db.yaml", f"databases:\n  main:\n    url: {role_url(pg)}\n")
        registry = Registry.from_yaml(config, environ={})
        given = [
            role_url(pg),
            f"postgresql://{ROLE}:{AWKWARD}@{HOST}/{pg.database}",
            f"{ROLE}:{AWKWARD}@{HOST}",
            f"host={HOST} password={AWKWARD}",
            role_url(pg, query=f"?password={quote(AWKWARD, safe='')}"),
        ]
        for name in given:
            for label, call in name_calls(registry, name):
                error = outputs.call(label, call)
                assert isinstance(error, UnknownDatabaseError), (label, error)
                assert str(error).endswith("is not a declared database; declared: main"), (label, str(error))
            assert cli(outputs, capsys, "check", "--config", str(config), "--allow-down", name) == 2
        registry.close()
        for name in given:
            error = outputs.call("get() when closed", functools.partial(registry.get, name))
            assert isinstance(error, RegistryClosedError)
            assert str(error).startswith("the registry is closed; cannot open a ")
        outputs.assert_clean(AWKWARD)

    def test_a_secret_file_that_is_not_utf8(
        self, tmp_path: Path, outputs: Outputs, capsys: pytest.CaptureFixture[str]
    ) -> None:
        raw = f"{AWKWARD}\xe9{AWKWARD}\n".encode("latin-1")
        secret = write(tmp_path / "pw", "")
        secret.write_bytes(raw)
        url = "postgresql://app@db.internal/app"
        cases = {
            "password_file": f"databases:\n  main:\n    url: {url}\n    password_file: {secret}\n",
            "${file:}": f"databases:\n  main:\n    url: postgresql://app:${{file:{secret}}}@db.internal/app\n",
        }
        messages = []
        for label, body in cases.items():
            config = write(tmp_path / "db.yaml", body)
            with pytest.raises(ConfigError) as info:
                Registry.from_yaml(config, environ={})
            outputs.error(label, info.value)
            messages.append(str(info.value).splitlines()[1].split("  ", 2)[-1].strip())
            cli(outputs, capsys, "validate", "--config", str(config))
        assert messages == [
            f"databases.main.password_file: password file {secret} is not UTF-8 text (invalid byte at offset 18)",
            f"databases.main.url: secret file {secret} (in ${{file:...}}) is not UTF-8 text (invalid byte at offset 18)",
        ]
        env = tmp_path / ".env"
        env.write_bytes(b"DATABASE_URL=postgresql://app:" + raw)
        with pytest.raises(ConfigError) as info:
            Registry.from_env(environ={}, env_file=env)
        assert info.value.problems[0] == Problem(
            "", f"env file {env} is not UTF-8 text (invalid byte at offset 48)", source=str(env), file=str(env), line=1
        )
        outputs.error(".env", info.value)
        yaml_file = tmp_path / "latin1.yaml"
        yaml_file.write_bytes(b"databases:\n  main:\n    url: postgresql://app:" + raw)
        with pytest.raises(ConfigError, match=re.escape("is not UTF-8 text (invalid byte at offset 63)")) as info:
            Registry.from_yaml(yaml_file, environ={})
        outputs.error("yaml", info.value)
        outputs.assert_clean(AWKWARD)


@pytest.mark.postgres
def test_a_password_equal_to_the_user_is_masked_by_position_not_text(pg: PostgresServer) -> None:
    """The server names the user in its refusal: a password that equals the user must not turn it into ***."""
    url = f"postgresql://{pg.user}:{pg.user}@{HOST}:{pg.port}/{pg.database}"
    registry = Registry.from_dict({"databases": {"main": {"url": url}}}, environ={})
    sync = registry.health(timeout=5)["main"]
    asynchronous = asyncio.run(registry.ahealth(timeout=5))["main"]
    registry.close()
    assert sync.status == asynchronous.status == "down"
    assert f'password authentication failed for user "{pg.user}"' in str(sync.error)
    assert f'password authentication failed for user "{pg.user}"' in str(asynchronous.error)
    assert "***" not in str(sync.error) + str(asynchronous.error)


# -- the masking itself -------------------------------------------------------------------


class TestMaskText:
    def test_position_not_text(self) -> None:
        secrets = Secrets(("postgres",), ("postgres", "postgres", "postgres"))
        message = 'connection to server at "postgres" failed: password authentication failed for user "postgres"'
        assert mask_text(message, secrets) == message
        assert mask_text("pw postgres leaked", Secrets(("postgres",), ("db",))) == "pw *** leaked"

    def test_a_secret_inside_a_host_name_is_left_to_the_host(self) -> None:
        secrets = Secrets(("db1",), ("db1.internal",))
        assert mask_text('could not translate host name "db1.internal"; pw db1', secrets) == (
            'could not translate host name "db1.internal"; pw ***'
        )

    @pytest.mark.parametrize(
        ("message", "shown"),
        [
            ("at postgresql://app:s3cret@db/app", "at postgresql://app:***@db/app"),
            ("at //app:s3/cr:et@db/app", "at //app:***@db/app"),
            ("password=s3cret host=db", "password=*** host=db"),
            ("DB_PASSWORD=s3cret", "DB_PASSWORD=***"),
            ("PASSWORD = 's3 cret' host=db", "PASSWORD = *** host=db"),
            ("{'sslpassword': 's3cret', 'port': 5}", "{'sslpassword': ***, 'port': 5}"),
            ("?sslmode=require&password=s3cret&x=1", "?sslmode=require&password=***&x=1"),
            ("postgresql://app:password@db/app", "postgresql://app:password@db/app"),
            ("no secret here", "no secret here"),
        ],
    )
    def test_structure(self, message: str, shown: str) -> None:
        assert mask_text(message) == shown

    def test_encoded_forms_of_a_known_secret(self) -> None:
        assert mask_text(f"a {quote(AWKWARD, safe='')} b {quote_plus(AWKWARD)} c {AWKWARD}", [AWKWARD]) == (
            "a *** b *** c ***"
        )

    def test_describe_error_keeps_the_first_line_when_asked(self) -> None:
        error = RuntimeError(f"refused for {AWKWARD}\nDETAIL: more")
        assert describe_error(error, [AWKWARD], first_line=True) == "RuntimeError: refused for ***"
        assert describe_error(error, [AWKWARD]) == "RuntimeError: refused for *** DETAIL: more"


HOSTILE = [
    "a" * 131072,
    "//" + "a" * 131072,
    "x://" * 32768,
    "//a:" + "b" * 131072,
    "a:" * 65536,
    "password=" * 14563,
    'password="' * 13107,
    "@" * 131072,
    "//" + "@:" * 65536,
]


@pytest.mark.parametrize("value", HOSTILE, ids=[f"{v[:6]!r}x{len(v)}" for v in HOSTILE])
def test_masking_is_linear_on_a_128_kb_value(value: str) -> None:
    """The old `redact` regex took about 50 s on 128 kB; every path here must take well under a second."""
    started = time.perf_counter()
    mask_text(value, ["abcd", AWKWARD])
    describe_error(ValueError(value), Secrets((AWKWARD,), ("db",)))
    with pytest.raises(ConfigError):
        Registry.from_dict({"default": value, "databases": {"main": {"url": "sqlite://"}}}, environ={})
    str(ConfigError([Problem("default", value)]))
    # Quadratic masking took about 50 s here; linear takes milliseconds. The bound is far above a
    # loaded machine's linear time and far below the quadratic one.
    assert time.perf_counter() - started < 20


class TestUrls:
    def test_the_query_password_moves_into_the_slot(self) -> None:
        url = normalize_url(make_url(f"postgresql://app@db/app?password={quote(AWKWARD)}&sslmode=require"))
        assert url.password == AWKWARD
        assert dict(url.query) == {"sslmode": "require"}
        assert repr(url) == "postgresql://app:***@db/app?sslmode=require"

    def test_the_query_password_wins_over_the_slot_as_it_would_at_the_driver(self) -> None:
        assert normalize_url(make_url("postgresql://app:old@db/app?password=new")).password == "new"

    def test_secret_query_values_are_masked(self) -> None:
        url = make_url("postgresql://app:pw@db/app?sslpassword=k3y&sslmode=require")
        assert mask_url(url) == "postgresql://app:***@db/app?sslmode=require&sslpassword=***"

    def test_a_url_given_in_code_is_normalized_too(self) -> None:
        url = make_url(f"postgresql+psycopg://app@db/app?password={quote(AWKWARD)}")
        registry = Registry.from_dict({"databases": {"main": {"url": url}}}, environ={})
        assert registry["main"].url.password == AWKWARD
        assert repr(registry.get("main")) == "Engine(postgresql+psycopg://app:***@db/app)"
        registry.close()

    def test_mask_urls_keeps_the_placeholder(self) -> None:
        assert mask_urls("postgresql://app:password@db/app") == "postgresql://app:password@db/app"
        assert mask_urls("postgresql://app:***@db/app") == "postgresql://app:***@db/app"


class TestNames:
    def test_one_message_for_an_unknown_name(self) -> None:
        assert unknown_name_message("replcia", ["primary", "replica"]) == (
            "'replcia' is not a declared database; did you mean 'replica'? declared: primary, replica"
        )
        assert unknown_name_message("x", []) == "'x' is not a declared database; declared: (none)"

    @pytest.mark.parametrize(
        ("name", "shown"),
        [
            ("postgresql://app:pw@db/app", "a URL (not shown: it may hold a password)"),
            ("app:pw@db", "a value that may hold a password (not shown)"),
            ("host=db password=pw", "a value that may hold a password (not shown)"),
            ("x" * 101, "a value that may hold a password (not shown)"),
            ("replica ", "'replica '"),
            (3, "3"),
        ],
    )
    def test_what_is_shown_of_a_name(self, name: object, shown: str) -> None:
        assert shown_name(name) == shown

    def test_the_error_keeps_only_the_description(self) -> None:
        error = UnknownDatabaseError("postgresql://app:pw@db/app", ["main"])
        assert error.name == "a URL (not shown: it may hold a password)"
        assert UnknownDatabaseError("mian", ["main"]).name == "mian"


class TestMappingsAndDecoding:
    def test_mask_mapping(self) -> None:
        assert mask_mapping({"password": "x", "sslkey": "/k", "port": 5, "auth_token": "t"}) == {
            "password": "***",
            "sslkey": "***",
            "port": 5,
            "auth_token": "***",
        }

    def test_secrets_of_lists_the_public_parts(self) -> None:
        registry = Registry.from_dict(
            {"databases": {"m": {"url": "postgresql://u:pw@h/d", "connect_args": {"sslpassword": "k"}}}}, environ={}
        )
        assert secrets_of(registry["m"]) == Secrets(("pw", "k"), ("u", "h", "d"))

    def test_utf8_text_holds_nothing_of_the_bytes(self) -> None:
        with pytest.raises(NotUtf8Error) as info:
            utf8_text(b"ok\nsecret\xff")
        assert (str(info.value), info.value.offset, info.value.line) == (
            "is not UTF-8 text (invalid byte at offset 9)",
            9,
            2,
        )
        assert info.value.__context__ is None
        assert utf8_text(b"caf\xc3\xa9") == "caf\u00e9"


SECRET_CASES = [p for p in CASES if int(p.name.partition("-")[0]) >= 100]


@pytest.mark.parametrize("file", SECRET_CASES, ids=[p.name for p in SECRET_CASES])
def test_corpus_case_shows_no_piece_of_the_password(file: Path) -> None:
    case = parse_case(file)
    error, _ = load(case)
    outputs = Outputs()
    outputs.error(file.name, error)
    outputs.add(file.name, repr(error.problems))
    # The corpus's own paths hold "corpus", a piece of the corpus password.
    shown = "\n".join(text for _, text in outputs.texts).replace(str(CORPUS), "<cases>")
    secret = next((v for v in case.environ.values() if "Corpus" in v), "Corpus-Pw-7731")
    for piece in pieces(secret) | pieces("Corpus-Pw-7731"):
        assert piece not in shown, f"{piece!r} shown for {file.name}:\n{shown}"


def test_json_output_holds_no_piece(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """show --json of a URL whose query holds the password: masked as the slot."""
    url = f"postgresql://app@db.internal/app?password={quote(AWKWARD)}"
    config = write(tmp_path / "db.yaml", f"databases:\n  main:\n    url: {url}\n")
    assert main(["show", "--config", str(config), "--json"]) == 0
    out = capsys.readouterr().out
    data: Any = json.loads(out)
    assert AWKWARD not in out
    assert "***" in json.dumps(data)
