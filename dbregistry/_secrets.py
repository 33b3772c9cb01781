"""Secrets: the one place that decides what of a URL, a mapping, a name or a message may be shown.

Masking goes by structure wherever the structure is known: a `URL` is rendered
by SQLAlchemy's ``render_as_string(hide_password=True)`` (after `normalize_url`
has moved a ``?password=`` into the URL's password slot, so SQLAlchemy's own
``repr`` of URLs and engines masks it too), a mapping masks the values of its
secret keys, and a string given where a database name belongs is shown only
when it could be one. Replacing a known secret's text is kept for free-form
driver messages only, and even there the parts of the URL that are shown
anyway (user, host, database) are left as written, so that masking never tells
which of them equals the password.

Every regular expression here runs in linear time on any input.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, quote_plus

from sqlalchemy.exc import DBAPIError

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

    from ._schema import DatabaseConfig

__all__ = [
    "MASK",
    "NotUtf8Error",
    "Secrets",
    "check_url_text",
    "describe_error",
    "is_secret_key",
    "looks_like_credentials",
    "mask_mapping",
    "mask_text",
    "mask_url",
    "mask_urls",
    "normalize_url",
    "secrets_of",
    "shown_name",
    "utf8_text",
]

MASK: Final = "***"

# Substrings of a key (a connect_args or URL query key) whose value is a secret.
_SECRET_WORDS: Final = ("password", "passwd", "pwd", "secret", "token", "key")

# "//" and what follows up to a character that cannot be part of a URL in running
# text. One match per token, resumed after it: linear. The userinfo is what lies
# before the token's last "@", so an unencoded "/" in a password is still covered.
_URL_TOKEN: Final = re.compile(r"//[^\s'\"<>`]*")
# password=..., DB_PASSWORD=..., pwd = '...', 'sslpassword': '...': the value, quoted or
# not (an unterminated quote runs to the end, never back-tracks).
_KEYWORD: Final = re.compile(
    r"""(?i)(?P<key>passw(?:or)?d|\bpwd)(?P<sep>\s*=\s*|['"]\s*:\s*)"""
    r"""(?P<value>'[^']*'?|"[^"]*"?|[^\s&,;)}\]]+)"""
)
# The hints' own placeholder, and a password that was masked already.
_PLACEHOLDERS: Final = frozenset({"password", MASK})
# Characters that credentials need (user:password@host, password=...) and no name has.
_CREDENTIAL_MARKS: Final = frozenset("@:=/?&%")
_LONGEST_SHOWN: Final = 100


def is_secret_key(key: object) -> bool:
    """Whether a ``connect_args`` or URL query key holds a secret (``password``, ``sslpassword``, ``token``...)."""
    lowered = str(key).lower()
    return any(word in lowered for word in _SECRET_WORDS)


def mask_mapping(args: Mapping[str, Any]) -> dict[str, Any]:
    """``args`` with the value of every secret key shown as ``***``, at every depth.

    >>> mask_mapping({"sslpassword": "s3cret", "connect_timeout": 5})
    {'sslpassword': '***', 'connect_timeout': 5}
    >>> mask_mapping({"asyncpg": {"password": "s3cret"}})
    {'asyncpg': {'password': '***'}}
    """
    return {k: MASK if is_secret_key(k) else mask_mapping(v) if isinstance(v, Mapping) else v for k, v in args.items()}


# -- URLs ---------------------------------------------------------------------------


def normalize_url(url: URL) -> URL:
    """``url`` with a ``password`` query parameter moved into its password slot.

    libpq accepts ``?password=``; SQLAlchemy passes the query to the driver after
    the URL's own parts (so the query's value wins, for psycopg and asyncpg
    alike), but masks only the slot. Moved, the same password reaches the
    driver and every ``repr`` of the URL and its engines masks it.
    """
    value = url.query.get("password")
    if value is None:
        return url
    password = value[-1] if isinstance(value, tuple) else value
    return url.difference_update_query(["password"]).set(password=password)


def mask_url(url: URL) -> str:
    """The URL as text for people: the password as ``***``, and every secret query value too.

    >>> from sqlalchemy.engine import make_url
    >>> mask_url(make_url("postgresql://app:s3cret@db/app?sslpassword=k3y&sslmode=require"))
    'postgresql://app:***@db/app?sslmode=require&sslpassword=***'
    >>> mask_url(make_url("sqlite:///:memory:"))
    'sqlite:///:memory:'
    """
    secret = [key for key in url.query if is_secret_key(key)]
    rendered = url.update_query_dict(dict.fromkeys(secret, MASK)).render_as_string(hide_password=True)
    if secret:
        rendered = rendered.replace(f"={quote(MASK, safe='')}", f"={MASK}")  # the query is rendered %-encoded
    if url.get_backend_name() == "sqlite" and url.database == ":memory:":
        # SQLAlchemy %-encodes the ':' of a database name; SQLite's own spelling is what users wrote.
        rendered = rendered.replace("/%3Amemory%3A", "/:memory:", 1)
    return rendered


def check_url_text(text: str, url: URL) -> None:
    """`ValueError` when ``text`` was parsed into ``url`` around an unencoded ``@`` in its password.

    SQLAlchemy ends the password at the first ``@``; the rest of the password
    then becomes the host, the port or the database, where every message would
    show it. The message says what to do and quotes nothing.
    """
    if url.username is not None and text.count("@") > 1:
        raise ValueError(
            "holds more than one '@': a password with '@', '/', ':' or '%' must be percent-encoded "
            "(for example '@' as %40, with urllib.parse.quote(password, safe='')), "
            "or given through password_file"
        )


# -- free-form text -----------------------------------------------------------------


def mask_urls(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` (or ``//user:password@``) as ``***``.

    >>> mask_urls("cannot reach postgresql://app:s3cret@db/app")
    'cannot reach postgresql://app:***@db/app'
    """
    if "//" not in text:
        return text
    return _URL_TOKEN.sub(_mask_token, text)


def _mask_token(match: re.Match[str]) -> str:
    token = match[0]
    userinfo, at, rest = token[2:].rpartition("@")
    user, colon, password = userinfo.partition(":")
    if not at or not colon or password in _PLACEHOLDERS:
        return token
    return f"//{user}:{MASK}@{rest}"


def mask_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Free-form text (a driver's message) with secrets masked.

    URL passwords and ``password=`` values are masked by their position; then
    each known secret (as written, %-encoded and +-encoded) is replaced where
    it still appears, except inside the text of a user, host or database name
    that `Secrets.shown` lists.
    """
    text = _KEYWORD.sub(lambda m: f"{m['key']}{m['sep']}{MASK}", mask_urls(text))
    shown = secrets.shown if isinstance(secrets, Secrets) else ()
    forms = {form for secret in secrets if secret for form in (secret, quote(secret, safe=""), quote_plus(secret))}
    forms.discard(MASK)
    if not forms:
        return text
    # Longest first: an alternation takes the first alternative that matches.
    pattern = re.compile("|".join(re.escape(form) for form in sorted(forms, key=len, reverse=True)))
    reach = _shown_reach(text, shown)
    return pattern.sub(lambda m: m[0] if reach and reach[m.start()] >= m.end() else MASK, text)


def _shown_reach(text: str, shown: Iterable[str]) -> list[int]:
    """For each position, the furthest end of a shown part that starts at or before it ([] when none)."""
    starts: dict[int, int] = {}
    for part in shown:
        if not part:
            continue
        at = text.find(part)
        while at != -1:
            starts[at] = max(starts.get(at, 0), at + len(part))
            at = text.find(part, at + 1)
    if not starts:
        return []
    reach, furthest = [0] * (len(text) + 1), 0
    for i in range(len(text) + 1):
        furthest = max(furthest, starts.get(i, 0))
        reach[i] = furthest
    return reach


@dataclass(frozen=True, slots=True)
class Secrets:
    """The secrets of one database, and the parts of its URLs that are shown anyway.

    Iterating gives the secrets; ``shown`` (user, host, database names) is
    text that replacing a secret must leave alone.
    """

    values: tuple[str, ...]
    shown: tuple[str, ...] = ()

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)


def secrets_of(db: DatabaseConfig) -> Secrets:
    """The passwords a database's declaration holds: URL passwords, secret ``connect_args`` and ``driver_args``."""
    values: list[str] = []
    shown: list[str] = []
    for url in (db.url, db.direct_url):
        if url is None:
            continue
        if url.password:
            values.append(str(url.password))
        shown.extend(part for part in (url.username, url.host, url.database) if part)
    sections = [db.connect_args or {}, *(db.driver_args or {}).values()]
    for key, value in (item for section in sections for item in section.items()):
        if isinstance(value, str) and value and is_secret_key(key):
            values.append(value)
    return Secrets(tuple(values), tuple(shown))


def describe_error(error: BaseException, secrets: Iterable[str] = (), *, first_line: bool = False) -> str:
    """``Type: message`` on one line, with URLs masked and every given secret replaced by ``***``.

    For a SQLAlchemy DBAPI error only the driver's own message is kept
    (SQLAlchemy's text adds the statement, its parameters and a link);
    ``first_line`` keeps only the first line of it.

    >>> describe_error(ValueError("cannot reach postgresql://app:hunter2@db/app"))
    'ValueError: cannot reach postgresql://app:***@db/app'
    """
    cause: BaseException = error
    original = getattr(error, "orig", None)
    if isinstance(error, DBAPIError) or isinstance(original, BaseException):
        cause = original if isinstance(original, BaseException) else error
    message = str(cause).strip()
    if first_line:
        message = message.split("\n", 1)[0]
    text = mask_text(" ".join(message.split()), secrets)
    kind = type(cause).__name__
    return f"{kind}: {text}" if text else kind


def looks_like_credentials(text: str) -> bool:
    """Whether ``text`` may carry a password: a URL, ``user:password@host``, ``password=...``.

    >>> looks_like_credentials("app:s3cret@db"), looks_like_credentials("1:30")
    (True, False)
    """
    return "@" in text or "://" in text or _KEYWORD.search(text) is not None


# -- names --------------------------------------------------------------------------


def shown_name(name: object) -> str:
    """How a value given where a name belongs may be quoted: its ``repr``, or what it is.

    A string that cannot be a name and may hold a password (a URL,
    ``user:password@host``, ``password=...``, anything very long) is
    described, never shown.

    >>> shown_name("replcia")
    "'replcia'"
    >>> shown_name("postgresql://app:s3cret@db/app")
    'a URL (not shown: it may hold a password)'
    >>> shown_name("app:s3cret@db")
    'a value that may hold a password (not shown)'
    """
    if not isinstance(name, str):
        return repr(name)
    if "://" in name:
        return "a URL (not shown: it may hold a password)"
    if len(name) > _LONGEST_SHOWN or not _CREDENTIAL_MARKS.isdisjoint(name) or looks_like_credentials(name):
        return "a value that may hold a password (not shown)"
    return repr(name)


# -- decoding -----------------------------------------------------------------------


class NotUtf8Error(ValueError):
    """Bytes that are not UTF-8; the message gives the offset and nothing of the bytes."""

    def __init__(self, offset: int, line: int) -> None:
        self.offset = offset
        self.line = line
        super().__init__(f"is not UTF-8 text (invalid byte at offset {offset})")


def utf8_text(raw: bytes) -> str:
    """``raw`` decoded; `NotUtf8Error` naming the offset of the first bad byte otherwise.

    Python's `UnicodeDecodeError` holds the whole input: it is never raised or
    chained from here (``from None`` would still keep it as ``__context__``).
    """
    offset = -1
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        offset = e.start
    raise NotUtf8Error(offset, raw.count(b"\n", 0, offset) + 1)
