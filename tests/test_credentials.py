"""Rotating credentials (`dbregistry._credentials`): password_file and password_provider per new connection.

The rotation tests change a role's password, so they run on a server of this
module's own, never on the suite's shared ``pg``.
"""

from __future__ import annotations

import asyncio
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from servers import PostgresServer, sql_literal
from sqlalchemy import text

from dbregistry import ConfigError, CredentialsError, Registry

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def server(pg: PostgresServer) -> Iterator[PostgresServer]:
    """A server of this module's own (``pg`` only makes sure servers can start)."""
    with PostgresServer() as own:
        yield own


def set_password(server: PostgresServer, password: str) -> None:
    server.psql(f"ALTER ROLE app PASSWORD {sql_literal(password)}")


def can_log_in(server: PostgresServer, password: str) -> bool:
    try:
        psycopg.connect(
            host=server.host, port=server.port, user="app", dbname="app", password=password, connect_timeout=5
        ).close()
    except psycopg.OperationalError:
        return False
    return True


def registry_with(tmp_path: Path, server: PostgresServer, **entry: Any) -> Registry:
    lines = "".join(f"    {key}: {value}\n" for key, value in entry.items())
    path = tmp_path / "databases.yaml"
    path.write_text(
        f"databases:\n  main:\n    url: postgresql://app@{server.host}:{server.port}/app\n    pool_class: NullPool\n"
        + lines
    )
    return Registry.from_yaml(path, environ={})


def port_sync(registry: Registry, direct: bool = False) -> int:
    with registry.get(direct=direct).connect() as conn:
        value: int = conn.scalar(text("SELECT inet_server_port()"))
    return value


def port_async(registry: Registry) -> int:
    async def run() -> int:
        engine = registry.get_async()
        async with engine.connect() as conn:
            value: int = await conn.scalar(text("SELECT inet_server_port()"))
        await engine.dispose()  # its connections belong to this loop, which ends here
        return value

    return asyncio.run(run())


class TestPasswordFile:
    def test_a_rotated_file_is_read_by_new_connections_in_both_modes(
        self, server: PostgresServer, tmp_path: Path
    ) -> None:
        secret = tmp_path / "db-password"
        set_password(server, "first-Pw-1")
        secret.write_text("first-Pw-1\n")
        registry = registry_with(tmp_path, server, password_file=str(secret))
        assert port_sync(registry) == port_async(registry) == server.port
        set_password(server, "second-Pw-2")
        secret.write_text("second-Pw-2\n")  # what a Kubernetes secret re-mount does
        assert not can_log_in(server, "first-Pw-1")
        # NullPool: every use is a new physical connection; no reload of the registry.
        assert port_sync(registry) == port_async(registry) == server.port
        registry.close()

    def test_pooled_connections_keep_working_when_the_file_goes(self, server: PostgresServer, tmp_path: Path) -> None:
        secret = tmp_path / "db-password"
        set_password(server, "third-Pw-3")
        secret.write_text("third-Pw-3")
        path = tmp_path / "databases.yaml"
        path.write_text(
            f"databases:\n  main:\n    url: postgresql://app@{server.host}:{server.port}/app\n"
            f"    password_file: {secret}\n    pool_size: 1\n"
        )
        registry = Registry.from_yaml(path, environ={})
        engine = registry.get()
        with engine.connect() as conn:
            conn.scalar(text("SELECT 1"))
        secret.unlink()
        with engine.connect() as conn:  # the pooled one
            assert conn.scalar(text("SELECT 1")) == 1
        engine.dispose()
        with pytest.raises(CredentialsError) as info:
            engine.connect()
        assert str(info.value) == (
            f"database 'main': the password file {secret} does not exist; "
            "no new connection can be made until it holds the password"
        )
        secret.write_text("")
        with pytest.raises(CredentialsError) as info:
            engine.connect()
        assert str(info.value) == (
            f"database 'main': the password file {secret} is empty; "
            "no new connection can be made until it holds the password"
        )
        assert "third-Pw-3" not in str(info.value)
        registry.close()

    def test_a_url_from_the_environment_with_a_password_keeps_it(self, server: PostgresServer, tmp_path: Path) -> None:
        secret = tmp_path / "db-password"
        set_password(server, "env-Pw-8")
        secret.write_text("env-Pw-8")
        path = tmp_path / "databases.yaml"
        path.write_text(
            f"databases:\n  main:\n    url: postgresql://app@{server.host}:{server.port}/app\n"
            f"    password_file: {secret}\n    pool_class: NullPool\n"
        )
        environ = {"DBREGISTRY_DATABASES__MAIN__URL": f"postgresql://app:wrong-pw@{server.host}:{server.port}/app"}
        registry = Registry.from_yaml(path, environ=environ)
        assert not registry["main"].password_file_applies()
        with pytest.raises(Exception, match="password authentication failed"):
            port_sync(registry)
        registry.close()

    def test_a_direct_url_with_its_own_password_keeps_it(self, server: PostgresServer, tmp_path: Path) -> None:
        secret = tmp_path / "db-password"
        set_password(server, "fourth-Pw-4")
        secret.write_text("fourth-Pw-4")
        own = f"postgresql://app:not-the-password@{server.host}:{server.port}/app"
        registry = registry_with(tmp_path, server, password_file=str(secret), direct_url=own)
        with pytest.raises(Exception, match="password authentication failed"):
            port_sync(registry, direct=True)
        registry.close()
        bare = f"postgresql://app@{server.host}:{server.port}/app"
        registry = registry_with(tmp_path, server, password_file=str(secret), direct_url=bare)
        assert port_sync(registry, direct=True) == server.port
        registry.close()


def provider_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, password: str) -> Any:
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            f"""
            import asyncio

            calls = []

            def token(*, name, url):
                calls.append((name, url))
                return {password!r}

            async def async_token(*, name, url):
                await asyncio.sleep(0)
                calls.append((name, url, asyncio.get_running_loop()))
                return {password!r}

            def broken(*, name, url):
                raise RuntimeError({password!r})

            def nothing(*, name, url):
                return None

            not_callable = 42
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib  # noqa: PLC0415

    return importlib.import_module(name)


class TestPasswordProvider:
    def test_called_once_per_new_connection_sync(
        self, server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        set_password(server, "token-Pw-5")
        module = provider_module(tmp_path, monkeypatch, "tokens_sync", "token-Pw-5")
        registry = registry_with(tmp_path, server, password_provider="tokens_sync:token")
        assert module.calls == []  # never at load
        for _ in range(3):
            assert port_sync(registry) == server.port
        assert len(module.calls) == 3
        name, url = module.calls[0]
        assert name == "main"
        assert url.password is None
        assert (url.host, url.port, url.username) == (server.host, server.port, "app")
        registry.close()

    def test_an_async_provider_is_awaited_in_the_engines_loop(
        self, server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        set_password(server, "token-Pw-6")
        module = provider_module(tmp_path, monkeypatch, "tokens_async", "token-Pw-6")
        registry = registry_with(tmp_path, server, password_provider="tokens_async:async_token")

        async def run() -> asyncio.AbstractEventLoop:
            engine = registry.get_async()
            for _ in range(3):
                async with engine.connect() as conn:
                    assert await conn.scalar(text("SELECT 1")) == 1
            await engine.dispose()
            return asyncio.get_running_loop()

        loop = asyncio.run(run())
        assert len(module.calls) == 3
        assert all(call[2] is loop for call in module.calls)
        # The sync engine of the same database runs the coroutine in an event loop of its own.
        assert port_sync(registry) == server.port
        assert len(module.calls) == 4
        registry.close()

    def test_a_sync_engine_used_inside_a_running_loop_runs_an_async_provider_in_a_thread(
        self, server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        set_password(server, "token-Pw-9")
        module = provider_module(tmp_path, monkeypatch, "tokens_thread", "token-Pw-9")
        registry = registry_with(tmp_path, server, password_provider="tokens_thread:async_token")

        async def run() -> asyncio.AbstractEventLoop:
            assert port_sync(registry) == server.port  # blocking, from a coroutine: the loop is running
            return asyncio.get_running_loop()

        loop = asyncio.run(run())
        assert len(module.calls) == 1
        assert module.calls[0][2] is not loop
        registry.close()

    def test_a_pool_calls_it_only_for_new_connections(
        self, server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        set_password(server, "token-Pw-7")
        module = provider_module(tmp_path, monkeypatch, "tokens_pool", "token-Pw-7")
        path = tmp_path / "databases.yaml"
        path.write_text(
            f"databases:\n  main:\n    url: postgresql://app@{server.host}:{server.port}/app\n"
            "    password_provider: tokens_pool:token\n    pool_size: 2\n"
        )
        registry = Registry.from_yaml(path, environ={})
        engine = registry.get()
        for _ in range(5):
            with engine.connect() as conn:
                conn.scalar(text("SELECT 1"))
        assert len(module.calls) == 1
        engine.dispose()
        with engine.connect() as conn:
            conn.scalar(text("SELECT 1"))
        assert len(module.calls) == 2
        registry.close()

    @pytest.mark.parametrize(
        ("function", "message"),
        [
            ("broken", "database 'main': the password provider {module}:broken raised RuntimeError"),
            ("nothing", "database 'main': the password provider {module}:nothing returned NoneType, not a password"),
        ],
    )
    def test_a_failing_provider_is_a_clear_error(
        self, server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, function: str, message: str
    ) -> None:
        module = f"tokens_{function}"
        provider_module(tmp_path, monkeypatch, module, "Sq1-secret")
        registry = registry_with(tmp_path, server, password_provider=f"{module}:{function}")
        with pytest.raises(CredentialsError) as info:
            port_sync(registry)
        assert str(info.value) == message.format(module=module)
        assert "Sq1-secret" not in str(info.value)
        assert info.value.__cause__ is None  # the provider's message may quote the secret
        registry.close()


class TestValidation:
    def load(self, tmp_path: Path, provider: str, extra: str = "") -> list[str]:
        path = tmp_path / "databases.yaml"
        path.write_text(
            f"databases:\n  main:\n    url: postgresql://app@db/app\n    password_provider: {provider}\n{extra}"
        )
        with pytest.raises(ConfigError) as info:
            Registry.from_yaml(path, environ={})
        return [str(p).split("  ", 1)[1] for p in info.value.problems]

    def test_not_a_dotted_path(self, tmp_path: Path) -> None:
        assert self.load(tmp_path, "tokens.token") == [
            "databases.main.password_provider: must be package.module:function "
            "(a dotted module path, ':', the function's name)"
        ]

    def test_a_module_that_does_not_import(self, tmp_path: Path) -> None:
        assert self.load(tmp_path, "no_such_module_here:token") == [
            "databases.main.password_provider: cannot import the module 'no_such_module_here' (ModuleNotFoundError)"
        ]

    def test_a_missing_or_uncallable_name(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        provider_module(tmp_path, monkeypatch, "tokens_names", "x")
        assert self.load(tmp_path, "tokens_names:absent") == [
            "databases.main.password_provider: the module 'tokens_names' has no attribute 'absent'"
        ]
        assert self.load(tmp_path, "tokens_names:not_callable") == [
            "databases.main.password_provider: tokens_names:not_callable is a int, not a function"
        ]

    def test_file_and_provider_together(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        provider_module(tmp_path, monkeypatch, "tokens_both", "x")
        secret = tmp_path / "pw"
        secret.write_text("x")
        problems = self.load(tmp_path, "tokens_both:token", f"    password_file: {secret}\n")
        assert problems == [
            "databases.main.password_provider: password_file and password_provider both supply the password; keep one"
        ]

    def test_the_line_is_named(self, tmp_path: Path) -> None:
        path = tmp_path / "databases.yaml"
        path.write_text("databases:\n  main:\n    url: postgresql://app@db/app\n    password_provider: nope\n")
        with pytest.raises(ConfigError, match=re.escape(f"{path}:4  databases.main.password_provider: must be")):
            Registry.from_yaml(path, environ={})
