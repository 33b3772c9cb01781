"""Connection settings declared once reach every driver (`dbregistry._connect`).

The server tests run each setting in both modes against the real PostgreSQL the
suite starts: psycopg (libpq) for ``get()``, asyncpg for ``get_async()``.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import PostgresServer, silent_server
from sqlalchemy import text

from dbregistry import ConfigError, Registry
from dbregistry._cli import EXIT_OK, main
from dbregistry._connect import accepted, asyncpg_keywords, libpq_keywords, parse_options
from dbregistry._engines import engine_spec
from dbregistry._schema import DatabaseConfig
from dbregistry._secrets import secrets_of

PG = "postgresql://app:pw@db.example/app"


def registry_of(url: str, environ: dict[str, str] | None = None, **entry: Any) -> Registry:
    return Registry.from_dict({"databases": {"primary": {"url": url, **entry}}}, environ=environ or {})


def args_of(is_async: bool, url: str = PG, **entry: Any) -> dict[str, Any]:
    db = DatabaseConfig.model_validate({"url": url, **entry})
    args: dict[str, Any] = engine_spec(db, is_async=is_async).kwargs.get("connect_args", {})
    return args


def problems_of(url: str = PG, environ: dict[str, str] | None = None, **entry: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        registry_of(url, environ, **entry)
    return [str(p) for p in info.value.problems]


def both_modes(registry: Registry, sql: str) -> tuple[Any, Any]:
    """One query's scalar through the sync engine and through the async engine."""
    with registry.get("primary").connect() as conn:
        sync_value = conn.execute(text(sql)).scalar()

    async def run() -> Any:
        try:
            async with registry.get_async("primary").connect() as conn:
                return (await conn.execute(text(sql))).scalar()
        finally:
            await registry.aclose()

    return sync_value, asyncio.run(run())


def in_both_modes(registry: Registry, use: Callable[[Any], Any]) -> list[BaseException]:
    """What using each mode's engine raised (``use`` gets a connection, sync or awaited)."""
    errors: list[BaseException] = []
    try:
        with registry.get("primary").connect() as conn:
            use(conn)
    except Exception as e:
        errors.append(e)

    async def run() -> None:
        try:
            async with registry.get_async("primary").connect() as conn:
                await use(conn)
        except Exception as e:
            errors.append(e)
        finally:
            await registry.aclose()

    asyncio.run(run())
    return errors


# -- against the real server, both modes ----------------------------------------------


@pytest.mark.postgres
class TestOnTheServer:
    def test_the_guides_example_works_in_both_modes_unchanged(self, pg: PostgresServer, tmp_path: Path) -> None:
        config = tmp_path / "databases.yaml"
        config.write_text(
            "databases:\n"
            "  primary:\n"
            f"    url: {pg.url_string()}\n"
            '    connect_args: {connect_timeout: 10, options: "-c statement_timeout=30000"}\n',
            encoding="utf-8",
        )
        registry = Registry.from_yaml(config, environ={})
        assert both_modes(registry, "show statement_timeout") == ("30s", "30s")
        registry.close()

    def test_statement_timeout_cancels_pg_sleep(self, pg: PostgresServer) -> None:
        registry = registry_of(pg.url_string(), connect_args={"options": "-c statement_timeout=200"})

        def sleep(conn: Any) -> Any:
            return conn.execute(text("select pg_sleep(30)"))

        errors = in_both_modes(registry, sleep)
        assert len(errors) == 2
        for error in errors:
            assert "canceling statement due to statement timeout" in str(error)
        registry.close()

    def test_application_name_shows_in_pg_stat_activity(self, pg: PostgresServer) -> None:
        registry = registry_of(pg.url_string(), connect_args={"application_name": "connargs-test"})
        sql = "select application_name from pg_stat_activity where pid = pg_backend_pid()"
        assert both_modes(registry, sql) == ("connargs-test", "connargs-test")
        registry.close()

    def test_search_path_from_options(self, pg: PostgresServer) -> None:
        registry = registry_of(pg.url_string(), connect_args={"options": "-c search_path=connargs,public"})
        assert both_modes(registry, "show search_path") == ("connargs,public", "connargs,public")
        registry.close()

    def test_settings_in_the_url_query(self, pg: PostgresServer) -> None:
        url = pg.url_string() + "?application_name=from-url&options=-c%20search_path%3Durlschema"
        registry = registry_of(url)
        sql = "select current_setting('application_name') || ' ' || current_setting('search_path')"
        assert both_modes(registry, sql) == ("from-url urlschema", "from-url urlschema")
        registry.close()

    def test_asyncpg_words_reach_psycopg(self, pg: PostgresServer) -> None:
        registry = registry_of(
            pg.url_string(),
            connect_args={"timeout": 5, "server_settings": {"application_name": "srv", "statement_timeout": "1234"}},
        )
        sql = "select current_setting('application_name') || ' ' || current_setting('statement_timeout')"
        assert both_modes(registry, sql) == ("srv 1234ms", "srv 1234ms")
        registry.close()

    def test_connect_timeout_bounds_a_server_that_never_answers(self) -> None:
        with silent_server() as port:
            registry = registry_of(f"postgresql://app:pw@127.0.0.1:{port}/app", connect_args={"connect_timeout": 2})
            started = time.monotonic()
            errors = in_both_modes(registry, lambda conn: conn.execute(text("select 1")))
            elapsed = time.monotonic() - started
            registry.close()
        assert len(errors) == 2
        assert "timeout expired" in str(errors[0])
        assert isinstance(errors[1], TimeoutError)
        # Each mode waited its 2 seconds, not asyncpg's default 60 nor forever.
        assert elapsed < 40

    def test_a_driver_section_from_variables_applies_to_its_driver_alone(self, pg: PostgresServer) -> None:
        environ = {
            "DBREGISTRY_DATABASES__PRIMARY__URL": pg.url_string(),
            "DBREGISTRY_DATABASES__PRIMARY__DRIVER_ARGS__ASYNCPG__COMMAND_TIMEOUT": "0.3",
            "DBREGISTRY_DATABASES__PRIMARY__CONNECT_ARGS__APPLICATION_NAME": "from-env",
        }
        registry = Registry.from_env(environ=environ)
        assert registry.get("primary").dialect.driver == "psycopg"
        with registry.get("primary").connect() as conn:
            conn.execute(text("select pg_sleep(0.6)"))  # no command timeout in the sync mode
            assert conn.execute(text("select current_setting('application_name')")).scalar() == "from-env"

        async def run() -> None:
            try:
                async with registry.get_async("primary").connect() as conn:
                    await conn.execute(text("select pg_sleep(10)"))
            finally:
                await registry.aclose()

        with pytest.raises(TimeoutError):
            asyncio.run(run())
        registry.close()


@pytest.mark.postgres
def test_psycopg_in_both_modes_keeps_channel_binding(pg: PostgresServer) -> None:
    """The advice given for channel_binding=require works: psycopg serves the async mode and requires it too.

    The test server has no TLS, so both modes refuse to connect: neither drops the requirement.
    """
    registry = registry_of(pg.url_string("postgresql+psycopg") + "?channel_binding=require")

    errors = in_both_modes(registry, lambda conn: conn.execute(text("select 1")))
    assert len(errors) == 2
    for error in errors:
        assert "channel binding required, but SSL not in use" in str(error)
    registry.close()


# -- what each driver receives ------------------------------------------------------------


class TestTranslation:
    def test_libpq_words_for_asyncpg(self) -> None:
        connect_args = {
            "connect_timeout": 10,
            "options": "-c statement_timeout=30000 -c search_path=a,b",
            "application_name": "api",
            "target_session_attrs": "read-write",
            "sslmode": "require",
            "dbname": "other",
        }
        assert args_of(False, connect_args=connect_args) == connect_args
        assert args_of(True, connect_args=connect_args) == {
            "timeout": 10.0,
            "target_session_attrs": "read-write",
            "database": "other",
            "ssl": "require",
            "server_settings": {"statement_timeout": "30000", "search_path": "a,b", "application_name": "api"},
        }

    def test_url_query_moves_out_of_the_url_for_asyncpg_only(self) -> None:
        db = DatabaseConfig.model_validate({"url": PG + "?sslmode=require&connect_timeout=5&application_name=api"})
        sync, asynchronous = engine_spec(db, is_async=False), engine_spec(db, is_async=True)
        assert dict(sync.url.query) == {"sslmode": "require", "connect_timeout": "5", "application_name": "api"}
        assert "connect_args" not in sync.kwargs
        assert dict(asynchronous.url.query) == {}
        assert asynchronous.kwargs["connect_args"] == {
            "ssl": "require",
            "timeout": 5.0,
            "server_settings": {"application_name": "api"},
        }

    def test_connect_args_beat_the_url_query(self) -> None:
        db = DatabaseConfig.model_validate(
            {"url": PG + "?application_name=url", "connect_args": {"application_name": "args"}}
        )
        assert engine_spec(db, is_async=True).kwargs["connect_args"] == {
            "server_settings": {"application_name": "args"}
        }
        sync = engine_spec(db, is_async=False)
        assert dict(sync.url.query) == {}
        assert sync.kwargs["connect_args"] == {"application_name": "args"}

    def test_asyncpg_words_for_psycopg(self) -> None:
        connect_args = {
            "timeout": 2.5,
            "server_settings": {"application_name": "api", "search_path": "a b"},
            "ssl": "verify-full",
            "database": "other",
        }
        assert args_of(False, connect_args=connect_args) == {
            "connect_timeout": "3",
            "application_name": "api",
            "options": "-c search_path=a\\ b",
            "sslmode": "verify-full",
            "dbname": "other",
        }
        assert args_of(True, connect_args=connect_args) == {
            "timeout": 2.5,
            "ssl": "verify-full",
            "database": "other",
            "server_settings": {"application_name": "api", "search_path": "a b"},
        }

    def test_harmless_libpq_values_are_dropped_for_asyncpg(self) -> None:
        connect_args = {"channel_binding": "prefer", "gssencmode": "disable", "client_encoding": "UTF8"}
        assert args_of(True, connect_args=connect_args) == {}
        assert args_of(False, connect_args=connect_args) == connect_args

    def test_sqlalchemys_own_asyncpg_keywords(self) -> None:
        connect_args = {"prepared_statement_cache_size": "0"}
        assert problems_of(connect_args=connect_args) == [
            "from_dict  databases.primary.connect_args.prepared_statement_cache_size: psycopg (the sync mode) has "
            "no counterpart of asyncpg's prepared_statement_cache_size; move it into driver_args.asyncpg to set it "
            "for that driver alone"
        ]
        driver_args = {"asyncpg": connect_args}
        assert args_of(True, driver_args=driver_args) == {"prepared_statement_cache_size": 0}

    def test_driver_args_reach_their_driver_alone(self) -> None:
        driver_args = {"asyncpg": {"command_timeout": "5", "statement_cache_size": "0"}, "psycopg": {"keepalives": 1}}
        assert args_of(True, driver_args=driver_args) == {"command_timeout": 5.0, "statement_cache_size": 0}
        assert args_of(False, driver_args=driver_args) == {"keepalives": 1}

    def test_psycopg_serves_both_modes_with_libpq_words(self) -> None:
        url = "postgresql+psycopg://app:pw@db.example/app"
        connect_args = {"channel_binding": "require", "keepalives_idle": 30, "timeout": 4}
        expected = {"channel_binding": "require", "keepalives_idle": 30, "connect_timeout": "4"}
        assert args_of(False, url, connect_args=connect_args) == expected
        assert args_of(True, url, connect_args=connect_args) == expected

    @pytest.mark.parametrize(
        ("options", "settings"),
        [
            ("-c statement_timeout=5000", {"statement_timeout": "5000"}),
            ("-cstatement_timeout=5000 --search-path=x", {"statement_timeout": "5000", "search_path": "x"}),
            ("-c search_path=a\\ b", {"search_path": "a b"}),
        ],
    )
    def test_options(self, options: str, settings: dict[str, str]) -> None:
        assert parse_options(options) == settings

    def test_common_settings_load_without_importing_a_driver(self) -> None:
        """A provider URL's usual words are translated without the ~350 ms of importing psycopg and asyncpg."""
        code = (
            "import sys\n"
            "from dbregistry import Registry\n"
            "Registry.from_dict({'databases': {'a': {'url': 'postgresql://u@h/d?sslmode=require&connect_timeout=5',"
            " 'connect_args': {'options': '-c statement_timeout=1000', 'application_name': 'api'}}}}, environ={})\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('psycopg', 'asyncpg')))\n"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
        assert done.stdout == "[]\n"

    def test_keyword_lists_come_from_the_drivers(self) -> None:
        libpq, asyncpg = libpq_keywords(), asyncpg_keywords()
        assert libpq is not None
        assert asyncpg is not None
        assert {"connect_timeout", "options", "sslmode", "gssencmode", "channel_binding"} <= libpq
        assert {"timeout", "server_settings", "ssl", "command_timeout", "statement_cache_size"} <= asyncpg
        assert "connect_timeout" not in asyncpg
        psycopg = accepted("psycopg")
        assert psycopg is not None
        assert "prepare_threshold" in psycopg


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed CA and a client certificate and key, made with the openssl command."""
    directory = tmp_path_factory.mktemp("certs")
    for name in ("ca", "client"):
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
             "-keyout", str(directory / f"{name}.key"), "-out", str(directory / f"{name}.crt")],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
    return directory


class TestTls:
    def test_verify_full_is_as_strong_for_asyncpg(self, certificates: Path) -> None:
        connect_args = {
            "sslmode": "verify-full",
            "sslrootcert": str(certificates / "ca.crt"),
            "sslcert": str(certificates / "client.crt"),
            "sslkey": str(certificates / "client.key"),
            "ssl_min_protocol_version": "TLSv1.2",
        }
        assert args_of(False, connect_args=connect_args) == connect_args
        context = args_of(True, connect_args=connect_args)["ssl"]
        assert isinstance(context, ssl.SSLContext)
        assert context.check_hostname is True
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        assert [str(c["subject"]) for c in context.get_ca_certs()] == ["((('commonName', 'ca'),),)"]

    def test_verify_ca_checks_the_chain_not_the_host(self, certificates: Path) -> None:
        connect_args = {"sslmode": "verify-ca", "sslrootcert": str(certificates / "ca.crt")}
        context = args_of(True, connect_args=connect_args)["ssl"]
        assert context.check_hostname is False
        assert context.verify_mode == ssl.CERT_REQUIRED

    def test_require_carries_protocol_bounds(self) -> None:
        connect_args = {"sslmode": "require", "ssl_max_protocol_version": "TLSv1.3"}
        context = args_of(True, connect_args=connect_args)["ssl"]
        assert context.verify_mode == ssl.CERT_NONE
        assert context.maximum_version == ssl.TLSVersion.TLSv1_3

    def test_a_missing_certificate_file(self, tmp_path: Path) -> None:
        missing = tmp_path / "root.crt"
        url = f"{PG}?sslmode=verify-full&sslrootcert={missing}"
        assert problems_of(url) == [f"from_dict  databases.primary.url: the sslrootcert file {missing} does not exist"]
        assert problems_of(connect_args={"sslcert": str(missing), "sslmode": "require"}) == [
            f"from_dict  databases.primary.connect_args.sslcert: the sslcert file {missing} does not exist"
        ]

    def test_verify_without_a_root_certificate(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.postgresql/root.crt there
        assert problems_of(connect_args={"sslmode": "verify-full"}) == [
            "from_dict  databases.primary.connect_args.sslmode: sslmode=verify-full checks the server against a "
            "root certificate: set sslrootcert (libpq's default, ~/.postgresql/root.crt, does not exist)"
        ]
        root = tmp_path / ".postgresql" / "root.crt"
        root.parent.mkdir()
        root.write_text("", encoding="utf-8")
        assert args_of(True, connect_args={"sslmode": "verify-full"}) == {"ssl": "verify-full"}

    def test_the_direct_url_query_is_checked_too(self, tmp_path: Path) -> None:
        missing = tmp_path / "ca.crt"
        assert problems_of(direct_url=f"{PG}?sslmode=verify-ca&sslrootcert={missing}") == [
            f"from_dict  databases.primary.direct_url: the sslrootcert file {missing} does not exist"
        ]

    def test_another_profiles_files_are_not_this_machines(self, tmp_path: Path) -> None:
        config = tmp_path / "databases.yaml"
        config.write_text(
            "databases:\n"
            "  primary:\n"
            f"    url: {PG}\n"
            "profiles:\n"
            "  production:\n"
            "    databases:\n"
            "      primary:\n"
            "        connect_args: {sslmode: verify-full, sslrootcert: /run/secrets/no-such-ca.pem}\n",
            encoding="utf-8",
        )
        Registry.from_yaml(config, environ={}).close()
        with pytest.raises(ConfigError) as info:
            Registry.from_yaml(config, environ={}, profile="production")
        assert [str(p) for p in info.value.problems] == [
            f"{config}:8  databases.primary.connect_args.sslrootcert: the sslrootcert file "
            "/run/secrets/no-such-ca.pem does not exist"
        ]

    @pytest.mark.parametrize("sslmode", ["prefer", "allow", None])
    def test_bounds_without_required_tls_are_refused_for_asyncpg(self, sslmode: str | None) -> None:
        connect_args = {"ssl_min_protocol_version": "TLSv1.2"} | ({"sslmode": sslmode} if sslmode else {})
        shown = sslmode or "prefer (libpq's default)"
        assert problems_of(connect_args=connect_args) == [
            "from_dict  databases.primary.connect_args.ssl_min_protocol_version: asyncpg (the async mode) cannot "
            f"honour ssl_min_protocol_version with sslmode={shown}, which lets the connection go unencrypted; "
            "set sslmode to require, verify-ca or verify-full"
        ]


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two CAs, and a server certificate for IP 127.0.0.1 (only) signed by the first."""
    directory = tmp_path_factory.mktemp("pki")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", *ec, "-days", "2", "-subj", f"/CN=dbregistry test {ca}",
                 "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                 "-keyout", str(directory / f"{ca}.key"), "-out", str(directory / f"{ca}.crt"))  # fmt: skip
    _openssl("req", "-new", *ec, "-subj", "/CN=127.0.0.1",
             "-keyout", str(directory / "server.key"), "-out", str(directory / "server.csr"))  # fmt: skip
    (directory / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n",
        encoding="utf-8",
    )
    _openssl("x509", "-req", "-in", str(directory / "server.csr"), "-CA", str(directory / "ca.crt"),
             "-CAkey", str(directory / "ca.key"), "-CAcreateserial", "-days", "2",
             "-extfile", str(directory / "server.ext"), "-out", str(directory / "server.crt"))  # fmt: skip
    return directory


@pytest.fixture(scope="module")
def tls_pg(pki: Path) -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        server.enable_tls(
            (pki / "server.crt").read_text(encoding="utf-8"), (pki / "server.key").read_text(encoding="utf-8")
        )
        yield server


SSL_IN_USE = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


def tls_url(server: PostgresServer, query: str, host: str = "127.0.0.1") -> str:
    url = server.url().set(host=host).render_as_string(hide_password=False)
    return f"{url}?{query}"


def failed_in_both_modes(registry: Registry) -> list[str]:
    errors = in_both_modes(registry, lambda conn: conn.execute(text("SELECT 1")))
    assert len(errors) == 2, errors
    return [str(e) for e in errors]


@pytest.mark.postgres
class TestAgainstATlsServer:
    """The libpq words of one declaration give each driver the same TLS, on a server that serves it."""

    def test_verify_full(self, tls_pg: PostgresServer, pki: Path) -> None:
        registry = registry_of(tls_url(tls_pg, f"sslmode=verify-full&sslrootcert={pki / 'ca.crt'}"))
        assert both_modes(registry, SSL_IN_USE) == (True, True)

    def test_require_encrypts(self, tls_pg: PostgresServer) -> None:
        assert both_modes(registry_of(tls_url(tls_pg, "sslmode=require")), SSL_IN_USE) == (True, True)

    def test_disable_stays_plain(self, tls_pg: PostgresServer) -> None:
        assert both_modes(registry_of(tls_url(tls_pg, "sslmode=disable")), SSL_IN_USE) == (False, False)

    def test_a_certificate_of_another_ca_is_refused(self, tls_pg: PostgresServer, pki: Path) -> None:
        registry = registry_of(tls_url(tls_pg, f"sslmode=verify-ca&sslrootcert={pki / 'other-ca.crt'}"))
        for error in failed_in_both_modes(registry):
            assert "certificate verify failed" in error.lower(), error

    def test_verify_full_refuses_a_host_the_certificate_does_not_name(self, tls_pg: PostgresServer, pki: Path) -> None:
        registry = registry_of(tls_url(tls_pg, f"sslmode=verify-full&sslrootcert={pki / 'ca.crt'}", host="localhost"))
        sync_error, async_error = failed_in_both_modes(registry)
        assert 'does not match host name "localhost"' in sync_error, sync_error
        assert "Hostname mismatch, certificate is not valid for 'localhost'" in async_error, async_error

    def test_verify_ca_checks_the_chain_not_the_host(self, tls_pg: PostgresServer, pki: Path) -> None:
        registry = registry_of(tls_url(tls_pg, f"sslmode=verify-ca&sslrootcert={pki / 'ca.crt'}", host="localhost"))
        assert both_modes(registry, SSL_IN_USE) == (True, True)


# -- refusals, exact text -----------------------------------------------------------------


class TestRefusals:
    def test_asyncpg_only_word_for_psycopg(self) -> None:
        assert problems_of(connect_args={"command_timeout": 5}) == [
            "from_dict  databases.primary.connect_args.command_timeout: psycopg (the sync mode) has no counterpart "
            "of asyncpg's command_timeout; move it into driver_args.asyncpg to set it for that driver alone"
        ]

    def test_libpq_only_word_for_asyncpg(self) -> None:
        assert problems_of(connect_args={"gssencmode": "require"}) == [
            "from_dict  databases.primary.connect_args.gssencmode: asyncpg (the async mode) has no counterpart "
            "of libpq's gssencmode; move it into driver_args.psycopg to set it for that driver alone"
        ]

    def test_psycopg_only_word_for_asyncpg(self) -> None:
        assert problems_of(connect_args={"prepare_threshold": None}) == [
            "from_dict  databases.primary.connect_args.prepare_threshold: asyncpg (the async mode) has no "
            "counterpart of psycopg's prepare_threshold; move it into driver_args.psycopg to set it for that "
            "driver alone"
        ]

    def test_libpq_word_in_the_url_query(self) -> None:
        assert problems_of(PG + "?keepalives_idle=30") == [
            "from_dict  databases.primary.url: asyncpg (the async mode) has no counterpart of libpq's "
            "keepalives_idle; move it into driver_args.psycopg to set it for that driver alone"
        ]

    def test_channel_binding_require_is_never_dropped(self) -> None:
        assert problems_of(PG + "?channel_binding=require") == [
            "from_dict  databases.primary.url: asyncpg (the async mode) does not implement channel binding, so "
            "channel_binding=require cannot be honoured; name postgresql+psycopg:// in the URL so that the async "
            "mode uses psycopg, which does, or move it into driver_args.psycopg to require it of the sync mode alone"
        ]

    def test_a_misspelt_setting(self) -> None:
        assert problems_of(connect_args={"conect_timeout": 5}) == [
            "from_dict  databases.primary.connect_args.conect_timeout: not a connection setting psycopg (libpq) "
            "or asyncpg takes; did you mean 'connect_timeout'?"
        ]

    def test_bad_sslmode(self) -> None:
        assert problems_of(PG + "?sslmode=sometimes") == [
            "from_dict  databases.primary.url: sslmode 'sometimes' is not one of disable, allow, prefer, require, "
            "verify-ca, verify-full"
        ]

    def test_options_asyncpg_cannot_read(self) -> None:
        assert problems_of(connect_args={"options": "-v"}) == [
            "from_dict  databases.primary.connect_args.options: asyncpg (the async mode) takes only "
            "'-c name=value' settings from options, got '-v'"
        ]

    def test_a_file_names_file_and_line(self, tmp_path: Path) -> None:
        config = tmp_path / "databases.yaml"
        config.write_text(
            f"databases:\n  primary:\n    url: {PG}\n    connect_args:\n      command_timeout: 5\n", encoding="utf-8"
        )
        with pytest.raises(ConfigError) as info:
            Registry.from_yaml(config, environ={})
        (problem,) = info.value.problems
        assert (problem.path, problem.file, problem.line) == (
            "databases.primary.connect_args.command_timeout",
            str(config),
            5,
        )

    def test_variables_are_named(self) -> None:
        environ = {
            "DBREGISTRY_DATABASES__PRIMARY__URL": PG,
            "DBREGISTRY_DATABASES__PRIMARY__CONNECT_ARGS__SSLMODE": "require",
            "DBREGISTRY_DATABASES__PRIMARY__CONNECT_ARGS__GSSENCMODE": "require",
            "DBREGISTRY_DATABASES__PRIMARY__DRIVER_ARGS__ASYNCPG__COMMAND_TIMEOUT": "soon",
            "DBREGISTRY_DATABASES__PRIMARY__DRIVER_ARGS__ASYNCPG__COMAND_TIMEOUT": "5",
        }
        with pytest.raises(ConfigError) as info:
            Registry.from_env(environ=environ)
        assert sorted((p.source, p.path, p.message) for p in info.value.problems) == [
            (
                "DBREGISTRY_DATABASES__PRIMARY__CONNECT_ARGS__GSSENCMODE",
                "databases.primary.connect_args.gssencmode",
                "asyncpg (the async mode) has no counterpart of libpq's gssencmode; move it into "
                "driver_args.psycopg to set it for that driver alone",
            ),
            (
                "DBREGISTRY_DATABASES__PRIMARY__DRIVER_ARGS__ASYNCPG__COMAND_TIMEOUT",
                "databases.primary.driver_args.asyncpg.comand_timeout",
                "asyncpg's connect() takes no comand_timeout; did you mean 'command_timeout'?",
            ),
            (
                "DBREGISTRY_DATABASES__PRIMARY__DRIVER_ARGS__ASYNCPG__COMMAND_TIMEOUT",
                "databases.primary.driver_args.asyncpg.command_timeout",
                "must be a number",
            ),
        ]

    def test_a_section_for_a_driver_the_database_does_not_use(self) -> None:
        assert problems_of(driver_args={"psycopg2": {"connect_timeout": 3}}) == [
            "from_dict  databases.primary.driver_args.psycopg2: this database's drivers are asyncpg, psycopg; "
            "psycopg2 is not one of them"
        ]

    def test_a_refusal_is_at_load_not_at_the_first_connection(self) -> None:
        with pytest.raises(ConfigError, match=re.escape("databases.primary.connect_args.connect_timout")):
            registry_of("sqlite:///x.db", connect_args={"connect_timout": 3})


def test_a_password_in_a_driver_section_is_never_shown() -> None:
    secret = "Driver-Args-Pw-5521"
    registry = registry_of(PG, driver_args={"asyncpg": {"password": secret}})
    assert secret not in repr(registry["primary"])
    assert list(secrets_of(registry["primary"])) == ["pw", secret]
    registry.close()


# -- SQLite and MySQL -----------------------------------------------------------------------


class TestSqlite:
    def test_shared_words_reach_both_drivers(self, tmp_path: Path) -> None:
        url = f"sqlite:///{tmp_path / 'a.db'}"
        connect_args = {"timeout": "3", "check_same_thread": "false", "uri": True}
        assert args_of(False, url, connect_args=connect_args) == {
            "timeout": 3.0,
            "check_same_thread": False,
            "uri": True,
        }
        assert args_of(True, url, connect_args=connect_args) == {
            "timeout": 3.0,
            "check_same_thread": False,
            "uri": True,
        }
        registry = registry_of(url, connect_args=connect_args)
        assert both_modes(registry, "select 1") == (1, 1)
        registry.close()

    def test_the_url_query_is_sqlalchemys_to_read(self, tmp_path: Path) -> None:
        """SQLite URI parameters stay in the URL for both drivers (SQLAlchemy's pysqlite dialect reads them)."""
        database = tmp_path / "ro.db"
        database.touch()
        url = f"sqlite:///file:{database}?mode=ro&uri=true"
        for is_async in (False, True):
            spec = engine_spec(DatabaseConfig.model_validate({"url": url}), is_async=is_async)
            assert dict(spec.url.query) == {"mode": "ro", "uri": "true"}
            assert "connect_args" not in spec.kwargs
        registry = registry_of(url)
        assert both_modes(registry, "select 1") == (1, 1)
        registry.close()

    def test_aiosqlite_only_word_for_pysqlite(self) -> None:
        assert problems_of("sqlite:///x.db", connect_args={"iter_chunk_size": 10}) == [
            "from_dict  databases.primary.connect_args.iter_chunk_size: pysqlite (the sync mode) has no "
            "counterpart of aiosqlite's iter_chunk_size; move it into driver_args.aiosqlite to set it for that "
            "driver alone"
        ]
        assert args_of(True, "sqlite:///x.db", driver_args={"aiosqlite": {"iter_chunk_size": "10"}}) == {
            "iter_chunk_size": 10
        }

    def test_a_postgresql_word_on_sqlite(self) -> None:
        assert problems_of("sqlite:///x.db", connect_args={"connect_timeout": 3}) == [
            "from_dict  databases.primary.connect_args.connect_timeout: not a connection setting sqlite3 or "
            "aiosqlite takes; did you mean 'timeout'?"
        ]


class TestMysql:
    """No MySQL server here: what each driver would receive, and what is refused."""

    def test_shared_words(self) -> None:
        connect_args = {"connect_timeout": 5, "charset": "utf8mb4", "init_command": "SET time_zone='+00:00'"}
        assert args_of(False, "mysql://u:p@h/d", connect_args=connect_args) == connect_args
        assert args_of(True, "mysql://u:p@h/d", connect_args=connect_args) == connect_args

    def test_read_timeout_has_no_aiomysql_counterpart(self) -> None:
        assert problems_of("mysql://u:p@h/d", connect_args={"read_timeout": 30}) == [
            "from_dict  databases.primary.connect_args.read_timeout: aiomysql (the async mode) has no counterpart "
            "of pymysql's read_timeout; move it into driver_args.pymysql to set it for that driver alone"
        ]
        assert args_of(False, "mysql://u:p@h/d", driver_args={"pymysql": {"read_timeout": 30}}) == {"read_timeout": 30}

    def test_a_word_neither_driver_takes(self) -> None:
        assert problems_of("mysql+mysqldb://u:p@h/d", connect_args={"ssl_ca": "/ca.pem"}) == [
            "from_dict  databases.primary.connect_args.ssl_ca: not a connection setting aiomysql or mysqldb takes; "
            "did you mean 'ssl'?"
        ]


# -- dbregistry show --------------------------------------------------------------------------


class TestShow:
    SECRET = "Show-Secret-8812"

    def config(self, tmp_path: Path) -> Path:
        config = tmp_path / "databases.yaml"
        config.write_text(
            "databases:\n"
            "  primary:\n"
            f"    url: postgresql://app:{self.SECRET}@db.example/app?sslmode=require\n"
            "    connect_args:\n"
            "      connect_timeout: 10\n"
            '      options: "-c statement_timeout=30000"\n'
            f"      password: {self.SECRET}\n"
            "    driver_args:\n"
            f"      asyncpg: {{command_timeout: 5, password: {self.SECRET}}}\n",
            encoding="utf-8",
        )
        return config

    def test_text_shows_what_each_driver_receives(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["show", "--config", str(self.config(tmp_path))]) == EXIT_OK
        out = capsys.readouterr().out
        assert self.SECRET not in out
        table = next(part for part in out.split("\n\n") if part.startswith("  mode ")).splitlines()
        assert table == [
            "  mode   driver   connection arguments",
            '  sync   psycopg  {"sslmode": "require", "connect_timeout": 10, "options": "-c statement_timeout=30000", '
            '"password": "***"}',
            '  async  asyncpg  {"timeout": 10.0, "password": "***", "ssl": "require", '
            '"server_settings": {"statement_timeout": "30000"}, "command_timeout": 5}',
        ]

    def test_json(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["show", "--config", str(self.config(tmp_path)), "--json"]) == EXIT_OK
        out = capsys.readouterr().out
        assert self.SECRET not in out
        assert json.loads(out)["databases"]["primary"]["driver_args"]["value"] == {
            "asyncpg": {"command_timeout": 5, "password": "***"}
        }
        assert json.loads(out)["connections"]["primary"] == {
            "sync": {
                "driver": "psycopg",
                "url": "postgresql+psycopg://app:***@db.example/app?sslmode=require",
                "connect_args": {
                    "sslmode": "require",
                    "connect_timeout": 10,
                    "options": "-c statement_timeout=30000",
                    "password": "***",
                },
            },
            "async": {
                "driver": "asyncpg",
                "url": "postgresql+asyncpg://app:***@db.example/app",
                "connect_args": {
                    "timeout": 10.0,
                    "password": "***",
                    "ssl": "require",
                    "server_settings": {"statement_timeout": "30000"},
                    "command_timeout": 5,
                },
            },
        }

    def test_an_ssl_context_is_described(
        self, tmp_path: Path, certificates: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        config = tmp_path / "databases.yaml"
        config.write_text(
            "databases:\n"
            "  primary:\n"
            "    url: postgresql://app@db.example/app\n"
            "    connect_args:\n"
            "      sslmode: verify-full\n"
            f"      sslrootcert: {certificates / 'ca.crt'}\n"
            "      ssl_min_protocol_version: TLSv1.3\n",
            encoding="utf-8",
        )
        assert main(["show", "--config", str(config), "--json"]) == EXIT_OK
        shown = json.loads(capsys.readouterr().out)["connections"]["primary"]["async"]["connect_args"]
        assert shown == {"ssl": "SSLContext(verify-full, CA ca, TLS TLSv1_3..MAXIMUM_SUPPORTED)"}
