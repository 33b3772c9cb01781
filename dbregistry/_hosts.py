"""Host lists: the three ways a database names several hosts, read into one list.

libpq's ``postgresql://u:p@h1:5432,h2:5433/db`` is moved into SQLAlchemy's own
form, ``?host=h1:5432&host=h2:5433``, when the URL is parsed (SQLAlchemy cannot
read the first); a ``hosts:`` field beside a URL without a host is put into the
same form when the engine is built. From there the translation per driver is
SQLAlchemy's (``_split_multihost_from_url`` in its PostgreSQL dialect): psycopg
gets libpq's ``host=h1,h2 port=p1,p2``, asyncpg its host and port lists.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy.engine import URL

__all__ = [
    "DEFAULT_PORT",
    "HostPort",
    "host_findings",
    "hosts_of",
    "libpq_host_list_to_query",
    "load_balanced",
    "parse_host",
    "session_attrs_default",
    "shuffle_hosts",
    "with_hosts",
]

DEFAULT_PORT: Final = 5432

# A host name (RFC 1123 letters, digits, '-', '.', '_') or an IPv4 address, then an optional port.
_HOST_PORT: Final = re.compile(r"^(?P<host>[A-Za-z0-9_.\-]+)(?::(?P<port>[^:]*))?$")


@dataclass(frozen=True, slots=True)
class HostPort:
    """One host of a list; ``port`` is None where none was written (PostgreSQL's 5432)."""

    host: str
    port: int | None = None

    def __str__(self) -> str:
        return f"{self.host}:{self.port if self.port is not None else DEFAULT_PORT}"


def parse_host(text: str) -> HostPort:
    """``h1:5432`` or ``h1``; `ValueError` saying what is wrong with it."""
    if not isinstance(text, str):
        raise ValueError(f"must be host:port text, got {type(text).__name__}")
    text = text.strip()
    if not text:
        raise ValueError("is empty; write host:port, such as db1.internal:5432")
    if text.startswith("["):
        raise ValueError(f"{text!r} is an IPv6 address; SQLAlchemy's multi-host form cannot carry one, use a host name")
    match = _HOST_PORT.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not host:port (such as db1.internal:5432)")
    port = match["port"]
    if port is None:
        return HostPort(match["host"])
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} has no valid port; a port is a number from 1 to 65535")
    return HostPort(match["host"], int(port))


# scheme://[userinfo@]hosts[/database][?query]; only a host part with a comma is rewritten.
_NETLOC: Final = re.compile(r"^(?P<scheme>[A-Za-z0-9+.\-]+://)(?P<userinfo>[^@/?]*(?::[^@]*)?@)?(?P<hosts>[^/?]*)")


def libpq_host_list_to_query(text: str) -> str:
    """The URL text with libpq's ``h1:p1,h2:p2`` host list moved into ``?host=h1:p1&host=h2:p2``.

    Text without such a list is returned as it is. `ValueError` for an entry
    that is not ``host[:port]``; the message quotes the entry, never the rest of the URL.

    >>> libpq_host_list_to_query("postgresql://u@h1:5432,h2:5433/db?sslmode=require")
    'postgresql://u@/db?sslmode=require&host=h1:5432&host=h2:5433'
    """
    match = _NETLOC.match(text)
    if match is None or "," not in match["hosts"]:
        return text
    entries = match["hosts"].split(",")
    hosts = []
    for position, entry in enumerate(entries, 1):
        try:
            hosts.append(parse_host(entry))
        except ValueError as e:
            raise ValueError(f"lists {len(entries)} hosts; host {position} {e}") from None
    rest = text[match.end() :]
    query = "&".join(f"host={_written(h)}" for h in hosts)
    rest = f"{rest}&{query}" if "?" in rest else f"{rest}?{query}"
    return f"{match['scheme']}{match['userinfo'] or ''}{rest}"


def _written(host: HostPort) -> str:
    return host.host if host.port is None else f"{host.host}:{host.port}"


def hosts_of(url: URL, hosts: list[str] | None = None) -> list[HostPort]:
    """Every host a URL (or its ``hosts:`` field) names, in order; [] for a URL without one.

    Entries that cannot be read are left out (the rules report them at load).
    """
    if hosts:
        return [h for h in map(_parsed_or_none, hosts) if h is not None]
    query_hosts = url.query.get("host")
    if query_hosts is None:
        return [HostPort(url.host, url.port)] if url.host else []
    names = list(query_hosts) if isinstance(query_hosts, tuple) else query_hosts.split(",")
    query_ports = url.query.get("port")
    if query_ports is not None:
        ports = list(query_ports) if isinstance(query_ports, tuple) else query_ports.split(",")
        if len(ports) == len(names):
            names = [
                f"{name}:{port}" if port and ":" not in name else name for name, port in zip(names, ports, strict=True)
            ]
    if len(names) == 1 and names[0].startswith("/"):
        return [HostPort(names[0])]  # a unix socket directory, libpq's way
    return [h for h in map(_parsed_or_none, names) if h is not None]


def _parsed_or_none(text: Any) -> HostPort | None:
    try:
        return parse_host(text)
    except ValueError:
        return None


def with_hosts(url: URL, hosts: list[HostPort]) -> URL:
    """``url`` naming ``hosts`` in SQLAlchemy's form, each with its port (asyncpg wants every port)."""
    query = {k: v for k, v in url.query.items() if k not in ("host", "port")}
    query["host"] = tuple(str(h) for h in hosts)
    return url.set(host=None, port=None, query=query)


def session_attrs_default(*, replica: bool) -> str:
    """What a database with several hosts connects with unless it says otherwise.

    A writer must land on the primary (``read-write``); a replica prefers a
    standby but still connects when only the primary is up (``prefer-standby``).
    """
    return "prefer-standby" if replica else "read-write"


def host_findings(url: URL, hosts: list[str] | None, *, url_field: str = "url") -> Iterator[tuple[str, str]]:
    """What is wrong with a database's host list, as ``(field, message)`` pairs for the rules."""
    query_hosts = url.query.get("host")
    if hosts is not None:
        if not hosts:
            yield "hosts", "lists no host; write at least one host:port, or remove it"
        if url.host or query_hosts is not None:
            yield (
                "hosts",
                "the URL names a host too; write every host in one place: hosts: beside a URL "
                "without one (postgresql://user@/db), or the hosts in the URL",
            )
        if url.get_backend_name() != "postgresql":
            yield "hosts", f"a host list is PostgreSQL's (libpq, asyncpg); this URL is {url.get_backend_name()}"
        return
    if query_hosts is None:
        return
    if url.host:
        yield (
            url_field,
            "names a host before the path and in ?host=; write every host in one place "
            "(postgresql://user@/db?host=h1:5432&host=h2:5432)",
        )
    names = list(query_hosts) if isinstance(query_hosts, tuple) else query_hosts.split(",")
    if len(names) == 1 and names[0].startswith("/"):
        return
    query_ports = url.query.get("port")
    if query_ports is not None:
        ports = list(query_ports) if isinstance(query_ports, tuple) else query_ports.split(",")
        if len(ports) != len(names):
            yield (
                url_field,
                f"lists {len(names)} hosts in ?host= and {len(ports)} ports in ?port=; give one port per host",
            )
            return
        if any(":" in name for name in names):
            yield url_field, "gives ports both in ?host=h:p and in ?port=; write them in one place"
            return
        names = [f"{name}:{port}" if port else name for name, port in zip(names, ports, strict=True)]
    for position, name in enumerate(names, 1):
        try:
            parse_host(name)
        except ValueError as e:
            yield url_field, f"lists {len(names)} hosts in ?host=; host {position} {e}"


def load_balanced(url: URL, connect_args: dict[str, Any] | None) -> bool:
    """Whether libpq's ``load_balance_hosts=random`` is declared (the URL's query or ``connect_args``)."""
    value = (connect_args or {}).get("load_balance_hosts", url.query.get("load_balance_hosts"))
    return value == "random"


def shuffle_hosts(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
    """A ``do_connect`` listener: asyncpg's host and port lists in a new random order, kept in pairs.

    libpq (psycopg) does this itself for ``load_balance_hosts=random``; asyncpg has no such setting.
    """
    hosts, ports = cparams.get("host"), cparams.get("port")
    if isinstance(hosts, list) and isinstance(ports, list) and len(hosts) == len(ports):
        pairs = list(zip(hosts, ports, strict=True))
        random.shuffle(pairs)
        cparams["host"], cparams["port"] = [h for h, _ in pairs], [p for _, p in pairs]
