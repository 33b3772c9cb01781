"""Several hosts for one database (`dbregistry._hosts`): three ways to write them, both drivers, the defaults."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from servers import PostgresServer, free_port
from sqlalchemy import create_engine, event, text
from sqlalchemy.ext.asyncio import create_async_engine

from dbregistry import ConfigError, Registry
from dbregistry._cli import main
from dbregistry._engines import engine_spec
from dbregistry._hosts import HostPort, hosts_of, libpq_host_list_to_query, parse_host, shuffle_hosts
from dbregistry._schema import DatabaseConfig


def spec_of(is_async: bool, **entry: Any) -> tuple[str, dict[str, Any]]:
    spec = engine_spec(DatabaseConfig.model_validate(entry), is_async=is_async)
    return spec.url.render_as_string(hide_password=True), spec.kwargs.get("connect_args", {})


def load_yaml(tmp_path: Path, text_: str) -> Registry:
    path = tmp_path / "databases.yaml"
    path.write_text(text_)
    return Registry.from_yaml(path, environ={})


def problems_of(tmp_path: Path, text_: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_yaml(tmp_path, text_)
    return [str(p) for p in info.value.problems]


class TestParsing:
    def test_host_and_port(self) -> None:
        assert parse_host("db1.internal:5433") == HostPort("db1.internal", 5433)
        assert parse_host(" db1 ") == HostPort("db1")
        assert str(parse_host("db1")) == "db1:5432"

    @pytest.mark.parametrize(
        ("text_", "message"),
        [
            ("", "is empty; write host:port, such as db1.internal:5432"),
            ("db1:x", "'db1:x' has no valid port; a port is a number from 1 to 65535"),
            ("db1:70000", "'db1:70000' has no valid port; a port is a number from 1 to 65535"),
            ("db 1", "'db 1' is not host:port (such as db1.internal:5432)"),
            (
                "[::1]:5432",
                "'[::1]:5432' is an IPv6 address; SQLAlchemy's multi-host form cannot carry one, use a host name",
            ),
        ],
    )
    def test_what_is_not_a_host(self, text_: str, message: str) -> None:
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_host(text_)

    def test_libpq_list_becomes_sqlalchemys_form(self) -> None:
        assert (
            libpq_host_list_to_query("postgresql://u:p@h1:5432,h2:5433/db?target_session_attrs=read-write")
            == "postgresql://u:p@/db?target_session_attrs=read-write&host=h1:5432&host=h2:5433"
        )
        assert libpq_host_list_to_query("postgresql://h1,h2") == "postgresql://?host=h1&host=h2"
        assert libpq_host_list_to_query("postgresql://u:p@h1:5432/db") == "postgresql://u:p@h1:5432/db"

    def test_the_three_forms_name_the_same_hosts(self) -> None:
        expected = [HostPort("h1", 5432), HostPort("h2", 5433)]
        libpq = DatabaseConfig.model_validate({"url": "postgresql://u:pw@h1:5432,h2:5433/db"})
        query = DatabaseConfig.model_validate({"url": "postgresql://u:pw@/db?host=h1:5432&host=h2:5433"})
        comma = DatabaseConfig.model_validate({"url": "postgresql://u:pw@/db?host=h1,h2&port=5432,5433"})
        field = DatabaseConfig.model_validate({"url": "postgresql://u:pw@/db", "hosts": ["h1:5432", "h2:5433"]})
        assert hosts_of(libpq.url) == hosts_of(query.url) == hosts_of(comma.url) == expected
        assert hosts_of(field.url, field.hosts) == expected
        assert hosts_of(DatabaseConfig.model_validate({"url": "postgresql://u:pw@h1/db"}).url) == [HostPort("h1")]


class TestDrivers:
    @pytest.mark.parametrize(
        "entry",
        [
            {"url": "postgresql://u:pw@h1:5432,h2:5433/db"},
            {"url": "postgresql://u:pw@/db?host=h1:5432&host=h2:5433"},
            {"url": "postgresql://u:pw@/db", "hosts": ["h1:5432", "h2:5433"]},
        ],
    )
    def test_every_form_reaches_both_drivers(self, entry: dict[str, Any]) -> None:
        for is_async in (False, True):
            url, args = spec_of(is_async, **entry)
            assert url.endswith("/db?host=h1%3A5432&host=h2%3A5433")
            assert args == {"target_session_attrs": "read-write"}
        # SQLAlchemy's own dialects turn the ?host= form into each driver's multi-host arguments.
        spec = engine_spec(DatabaseConfig.model_validate(entry), is_async=False)
        cparams = create_engine(spec.url).dialect.create_connect_args(spec.url)[1]
        assert (cparams["host"], cparams["port"]) == ("h1,h2", "5432,5433")
        aspec = engine_spec(DatabaseConfig.model_validate(entry), is_async=True)
        engine = create_async_engine(aspec.url)
        acparams = engine.dialect.create_connect_args(aspec.url)[1]
        assert (acparams["host"], acparams["port"]) == (["h1", "h2"], [5432, 5433])

    def test_ports_left_out_get_postgresqls_default(self) -> None:
        # asyncpg wants a port for every host of a list.
        url, _ = spec_of(True, url="postgresql://u:pw@/db?host=h1&host=h2:5433")
        assert url.endswith("?host=h1%3A5432&host=h2%3A5433")

    def test_a_replica_prefers_a_standby(self) -> None:
        entry = {"url": "postgresql://u:pw@h1,h2/db", "replica_of": "main"}
        assert spec_of(False, **entry)[1] == {"target_session_attrs": "prefer-standby"}
        assert spec_of(True, **entry)[1] == {"target_session_attrs": "prefer-standby"}

    def test_the_default_gives_way_to_a_declared_value(self) -> None:
        url, args = spec_of(False, url="postgresql://u:pw@h1,h2/db?target_session_attrs=any")
        assert "target_session_attrs=any" in url
        assert args == {}
        assert spec_of(True, url="postgresql://u:pw@h1,h2/db?target_session_attrs=any")[1] == {
            "target_session_attrs": "any"
        }
        entry = {"url": "postgresql://u:pw@h1,h2/db", "connect_args": {"target_session_attrs": "primary"}}
        assert spec_of(False, **entry)[1] == {"target_session_attrs": "primary"}
        assert spec_of(True, **entry)[1] == {"target_session_attrs": "primary"}

    def test_one_host_gets_no_default(self) -> None:
        assert spec_of(False, url="postgresql://u:pw@h1/db")[1] == {}
        url, args = spec_of(True, url="postgresql://u:pw@/db", hosts=["h1:5433"])
        assert url == "postgresql+asyncpg://u:***@h1:5433/db"
        assert args == {}


class TestLoadBalancing:
    def test_asyncpg_gets_the_host_list_shuffled_per_connection(self) -> None:
        registry = Registry.from_dict(
            {"databases": {"main": {"url": "postgresql://u:pw@h1,h2,h3/db?load_balance_hosts=random"}}}, environ={}
        )
        assert event.contains(registry.get_async().sync_engine, "do_connect", shuffle_hosts)
        assert not event.contains(registry.get(), "do_connect", shuffle_hosts)  # libpq does it itself
        url, _args = spec_of(False, url="postgresql://u:pw@h1,h2,h3/db?load_balance_hosts=random")
        assert "load_balance_hosts=random" in url
        registry.close()

    def test_hosts_and_ports_move_in_pairs(self) -> None:
        orders = set()
        for _ in range(200):
            cparams: dict[str, Any] = {"host": ["h1", "h2", "h3"], "port": [1, 2, 3]}
            shuffle_hosts(None, None, [], cparams)
            assert [int(h[1]) for h in cparams["host"]] == cparams["port"]
            orders.add(tuple(cparams["host"]))
        assert len(orders) > 1

    def test_an_unknown_value(self, tmp_path: Path) -> None:
        problems = problems_of(
            tmp_path, "databases:\n  main:\n    url: postgresql://u:pw@h1,h2/db?load_balance_hosts=yes\n"
        )
        assert problems == [
            f"{tmp_path / 'databases.yaml'}:3  databases.main.url: must be disable or random, got 'yes'"
        ]


class TestProblems:
    def test_a_host_in_both_places(self, tmp_path: Path) -> None:
        problems = problems_of(
            tmp_path,
            "databases:\n  main:\n    url: postgresql://u:pw@h0/db\n    hosts: [h1:5432, h2:5432]\n",
        )
        assert problems == [
            f"{tmp_path / 'databases.yaml'}:4  databases.main.hosts: the URL names a host too; write every host "
            "in one place: hosts: beside a URL without one (postgresql://user@/db), or the hosts in the URL"
        ]

    def test_a_malformed_entry_names_its_line(self, tmp_path: Path) -> None:
        problems = problems_of(
            tmp_path,
            "databases:\n  main:\n    url: postgresql://u:pw@/db\n    hosts:\n      - h1:5432\n      - h2:port\n",
        )
        # The line of `hosts:` (the loader keeps where each key was written); the path names the entry.
        assert problems == [
            f"{tmp_path / 'databases.yaml'}:4  databases.main.hosts.1: "
            "'h2:port' has no valid port; a port is a number from 1 to 65535"
        ]

    def test_a_malformed_libpq_list(self, tmp_path: Path) -> None:
        problems = problems_of(tmp_path, "databases:\n  main:\n    url: postgresql://u:pw@h1:5432,:5433/db\n")
        assert problems == [
            f"{tmp_path / 'databases.yaml'}:3  databases.main.url: lists 2 hosts; host 2 "
            "':5433' is not host:port (such as db1.internal:5432)"
        ]

    def test_a_netloc_host_beside_query_hosts(self, tmp_path: Path) -> None:
        problems = problems_of(tmp_path, "databases:\n  main:\n    url: postgresql://u:pw@h0/db?host=h1&host=h2\n")
        assert problems == [
            f"{tmp_path / 'databases.yaml'}:3  databases.main.url: names a host before the path and in ?host=; "
            "write every host in one place (postgresql://user@/db?host=h1:5432&host=h2:5432)"
        ]

    def test_ports_that_do_not_match_the_hosts(self, tmp_path: Path) -> None:
        problems = problems_of(tmp_path, "databases:\n  main:\n    url: postgresql://u:pw@/db?host=h1,h2&port=5432\n")
        assert problems == [
            f"{tmp_path / 'databases.yaml'}:3  databases.main.url: lists 2 hosts in ?host= and 1 ports in ?port=; "
            "give one port per host"
        ]

    def test_a_host_list_for_sqlite(self, tmp_path: Path) -> None:
        problems = problems_of(tmp_path, "databases:\n  main:\n    url: sqlite:///x.db\n    hosts: [h1]\n")
        assert problems == [
            f"{tmp_path / 'databases.yaml'}:4  databases.main.hosts: a host list is PostgreSQL's (libpq, asyncpg); "
            "this URL is sqlite"
        ]

    def test_no_password_in_any_message(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError) as info:
            load_yaml(tmp_path, "databases:\n  main:\n    url: postgresql://u:Sq1-pw@h1:5432,h2:x/db\n")
        assert "Sq1-pw" not in str(info.value)


# -- against the real server ----------------------------------------------------------------


def _yaml_over_hosts(tmp_path: Path, hosts: list[str], server: PostgresServer) -> Path:
    path = tmp_path / "databases.yaml"
    password = quote(server.password, safe="")
    path.write_text(
        "databases:\n  main:\n"
        f"    url: postgresql://{server.user}:{password}@/{server.database}\n"
        f"    hosts: [{', '.join(hosts)}]\n"
        "    connect_args: {connect_timeout: 3}\n"
    )
    return path


@pytest.mark.postgres
def test_the_first_host_down_the_second_answers_in_both_modes(pg: PostgresServer, tmp_path: Path) -> None:
    # SQLAlchemy #9882: a multi-host URL must not fail because its first host is down.
    down = f"127.0.0.1:{free_port()}"
    registry = Registry.from_yaml(_yaml_over_hosts(tmp_path, [down, f"127.0.0.1:{pg.port}"], pg), environ={})
    with registry.get().connect() as conn:
        assert conn.scalar(text("SELECT inet_server_port()")) == pg.port

    async def port() -> int:
        async with registry.get_async().connect() as conn:
            value: int = await conn.scalar(text("SELECT inet_server_port()"))
        await registry.aclose()
        return value

    assert asyncio.run(port()) == pg.port
    registry.close()


@pytest.mark.postgres
def test_check_says_which_host_answered_and_its_role(
    pg: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    down = f"127.0.0.1:{free_port()}"
    path = _yaml_over_hosts(tmp_path, [down, f"127.0.0.1:{pg.port}"], pg)
    assert main(["check", "--config", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)["databases"]["main"]
    assert (data["host"], data["role"]) == (f"127.0.0.1:{pg.port}", "primary")
    assert main(["check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"127.0.0.1:{pg.port} (primary)" in out
    assert pg.password not in out


def test_show_lists_every_host(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "databases.yaml"
    path.write_text("databases:\n  main:\n    url: postgresql://u:Sq1-pw@h1:5432,h2:5433/db\n")
    assert main(["show", "--config", str(path), "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["databases"]["main"]["hosts"]["value"] == ["h1:5432", "h2:5433"]
    assert "Sq1-pw" not in out
