"""Passwords that change: a ``password_file`` read, or a ``password_provider`` called, per new connection.

Both are applied by a ``do_connect`` listener (SQLAlchemy's own hook for
per-connection credentials), so every new physical connection gets the
current password while the connections already in the pool keep working.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

from sqlalchemy import event
from sqlalchemy.engine import URL, Engine

from ._errors import CredentialsError
from ._files import read_secret_file
from ._schema import DatabaseConfig
from ._secrets import NotUtf8Error

__all__ = ["install", "load_provider", "provider_findings", "read_password_file"]

# How long a sync engine waits for an async provider run in a thread of its own.
PROVIDER_TIMEOUT: Final = 30.0


def read_password_file(path: str | os.PathLike[str]) -> str:
    """The password in a secret file (one trailing newline dropped); `ValueError` saying why not.

    The same bounded read as at load (`dbregistry._files`): a FIFO or an oversized file cannot hang
    or exhaust a connecting thread.
    """
    try:
        password = read_secret_file(path)
    except NotUtf8Error as e:
        raise ValueError(str(e)) from None
    if not password:
        raise ValueError("is empty")
    return password


def load_provider(dotted: str) -> Callable[..., Any]:
    """The callable that ``package.module:function`` names; `ValueError` saying why not."""
    module_name, _, attribute = dotted.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise ValueError(f"cannot import the module {module_name!r} ({type(e).__name__})") from None
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"the module {module_name!r} has no attribute {attribute!r}") from None
    if not callable(target):
        raise ValueError(f"{dotted} is a {type(target).__name__}, not a function")
    return target  # type: ignore[no-any-return]


def provider_findings(db: DatabaseConfig) -> Iterator[tuple[str, str]]:
    """The load-time checks of ``password_provider`` (the module imports, the name is callable)."""
    if db.password_provider is None:
        return
    if db.password_file is not None:
        yield "password_provider", "password_file and password_provider both supply the password; keep one"
    try:
        load_provider(db.password_provider)
    except ValueError as e:
        yield "password_provider", str(e)


def install(engine: Engine, name: str, db: DatabaseConfig, url: URL, *, direct: bool) -> None:
    """Supply the password of each new connection of ``engine`` (the sync engine of either mode).

    A URL's own password wins over both: the declared ``url`` keeps the loader's
    rule (the file beats a password written beside it in the same file, a URL
    from a higher source keeps its own); a ``direct_url`` with a password keeps it.
    """
    url_field = "direct_url" if direct and db.direct_url is not None else "url"
    own_password = url.password is not None and not db.password_file_applies(url_field)
    if own_password:
        return
    if db.password_file is not None:
        supply = _from_file(name, db.password_file)
    elif db.password_provider is not None:
        supply = _from_provider(name, db.password_provider, url.set(password=None), is_async=engine.dialect.is_async)
    else:
        return

    def set_password(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        cparams["password"] = supply()

    event.listen(engine, "do_connect", set_password)


def _from_file(name: str, path: Path) -> Callable[[], str]:
    def read() -> str:
        try:
            return read_password_file(path)
        except FileNotFoundError:
            reason = "does not exist"
        except (OSError, ValueError) as e:
            reason = str(e) if isinstance(e, ValueError) else f"cannot be read ({type(e).__name__})"
        raise CredentialsError(
            f"database {name!r}: the password file {os.fspath(path)} {reason}; "
            "no new connection can be made until it holds the password"
        )

    return read


def _from_provider(name: str, dotted: str, url: URL, *, is_async: bool) -> Callable[[], str]:
    provider = load_provider(dotted)

    def call() -> str:
        try:
            result = provider(name=name, url=url)
            if inspect.isawaitable(result):
                result = _await(result, in_loop=is_async)
        except CredentialsError:
            raise
        except Exception as e:
            # Not chained: the provider's own message may quote the secret it failed to fetch.
            raise CredentialsError(
                f"database {name!r}: the password provider {dotted} raised {type(e).__name__}"
            ) from None
        if not isinstance(result, str) or not result:
            kind = "an empty string" if result == "" else type(result).__name__
            raise CredentialsError(f"database {name!r}: the password provider {dotted} returned {kind}, not a password")
        return result

    return call


def _await(awaitable: Any, *, in_loop: bool) -> Any:
    if in_loop:
        # do_connect of an async engine runs in SQLAlchemy's greenlet inside the engine's loop.
        from sqlalchemy.util import await_only  # noqa: PLC0415 - async engines only

        return await_only(awaitable)
    return _run_in_new_loop(awaitable)


def _run_in_new_loop(awaitable: Any) -> Any:
    """A sync engine's answer to an async provider: a loop of its own, in a thread when this one runs one."""

    async def wrapped() -> Any:
        return await awaitable

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(wrapped())
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = asyncio.run(wrapped())
        except BaseException as e:  # handed to the calling thread
            outcome["error"] = e

    thread = threading.Thread(target=run, name="dbregistry-password-provider", daemon=True)
    thread.start()
    thread.join(PROVIDER_TIMEOUT)
    if thread.is_alive():
        raise TimeoutError(f"the provider did not answer within {PROVIDER_TIMEOUT:.0f} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
