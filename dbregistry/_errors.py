"""The exceptions dbregistry raises, and the `Problem` records a `ConfigError` carries.

The hierarchy::

    DBRegistryError                      base of everything raised here
    ├── ConfigError (ValueError)         the declaration is wrong; carries every Problem found
    ├── UnknownDatabaseError (KeyError)  a name that was not declared
    ├── RegistryClosedError (RuntimeError)  the registry was closed
    ├── EventLoopError (RuntimeError)    an async engine's connections belong to another event loop
    ├── CredentialsError (RuntimeError)  a new connection's password_file or password_provider failed
    ├── CloseError (ExceptionGroup)      disposing some engines failed; all were attempted
    └── (internal, each becomes a ConfigError problem before it reaches a caller)
        ├── InterpolationError (ValueError)  a ``${...}`` that cannot be substituted
        ├── DriverError (ValueError)         no driver is known for the mode asked
        └── RefusedError (ValueError)        a connection setting one driver cannot take

No message built here ever contains a password: values are described, URLs are
rendered through SQLAlchemy's ``render_as_string(hide_password=True)``, and the
causes of a `ConfigError` are never chained (pydantic and SQLAlchemy repeat the
input in theirs).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ._secrets import mask_urls as redact
from ._secrets import shown_name

__all__ = [
    "CloseError",
    "ConfigError",
    "CredentialsError",
    "DBRegistryError",
    "EventLoopError",
    "Problem",
    "RegistryClosedError",
    "UnknownDatabaseError",
    "closest",
    "redact",
    "unknown_name_message",
]


class DBRegistryError(Exception):
    """Base class of every exception dbregistry raises."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a configuration.

    ``path`` is the dotted field path (``databases.replica.pool_size``);
    ``file`` and ``line`` say where the value was written (both None for a
    value that came from the environment or from code); ``source`` is the file
    or the environment variable that supplied the value (``"overrides"`` for
    values passed in code).
    """

    path: str
    message: str
    source: str | None = None
    file: str | None = None
    line: int | None = None

    @property
    def location(self) -> str:
        """Where the value came from: ``file:line``, the variable name, or ``""``."""
        if self.file is not None:
            return f"{self.file}:{self.line}" if self.line is not None else self.file
        return self.source or ""

    def __str__(self) -> str:
        where = self.location
        head = f"{self.path}: " if self.path else ""
        return f"{where}  {head}{self.message}" if where else f"{head}{self.message}"

    def as_dict(self) -> dict[str, str | int | None]:
        """The problem as JSON-ready data (what ``dbregistry validate --json`` prints).

        >>> Problem("databases.x.pool_size", "must be >= 0", file="db.yaml", line=3).as_dict()["location"]
        'db.yaml:3'
        """
        return {
            "path": self.path,
            "message": self.message,
            "location": self.location,
            "source": self.source,
            "file": self.file,
            "line": self.line,
        }

    def sort_key(self) -> tuple[int, str, int, str]:
        """File problems first (by file, then line), then the others by path."""
        if self.file is not None:
            return (0, self.file, self.line or 0, self.path)
        return (1, self.source or "", 0, self.path)


class ConfigError(DBRegistryError, ValueError):
    """The configuration is wrong; `problems` lists everything found, ordered by line.

    The message has one line per problem::

        3 problems in config/bad.yaml
          config/bad.yaml:7   databases.replica.pool_sise: unknown field; did you mean 'pool_size'?
          ...
    """

    problems: list[Problem]

    def __init__(self, problems: Iterable[Problem], *, origin: str | None = None) -> None:
        # A URL written where a name belongs (`default:`, `replica_of:`, `pool_class:`) is
        # echoed by the message that rejects it: its password is masked here, whatever the rule.
        unique = dict.fromkeys(replace(p, path=redact(p.path), message=redact(p.message)) for p in problems)
        self.problems = sorted(unique, key=Problem.sort_key)
        if not self.problems:
            raise ValueError("ConfigError needs at least one problem")
        self.origin = origin
        super().__init__(self._render())

    def _render(self) -> str:
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        where = f" in {self.origin}" if self.origin else ""
        width = max(len(p.location) for p in self.problems)
        lines = [f"{count} {noun}{where}"]
        for p in self.problems:
            head = f"{p.path}: " if p.path else ""
            loc = f"{p.location:<{width}}  " if width else ""
            lines.append(f"  {loc}{head}{p.message}".rstrip())
        return "\n".join(lines)

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, tuple[list[Problem], str | None]]:
        return (_rebuild_config_error, (self.problems, self.origin))


def _rebuild_config_error(problems: list[Problem], origin: str | None) -> ConfigError:
    return ConfigError(problems, origin=origin)


class UnknownDatabaseError(DBRegistryError, KeyError):
    """A database name that the configuration does not declare.

    The message lists the declared names and suggests the closest one:
    ``'replcia' is not a declared database; did you mean 'replica'? declared: primary, replica``.
    A value that cannot be a name (a URL, ``user:password@host``) is described, not shown,
    and ``name`` then holds that description.
    """

    def __init__(self, name: object, declared: Sequence[str], *, message: str | None = None) -> None:
        shown = shown_name(name)
        # A URL given as a name is kept only as its description: it may hold a password.
        self.name = name if shown == repr(name) else shown
        self.declared = tuple(declared)
        super().__init__(unknown_name_message(name, self.declared) if message is None else message)

    def __str__(self) -> str:
        # KeyError's str() is the repr of its argument; show the sentence instead.
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name, self.declared), {"args": self.args})


class RegistryClosedError(DBRegistryError, RuntimeError):
    """The registry was closed; it builds no new engines."""


class EventLoopError(DBRegistryError, RuntimeError):
    """An async engine holds connections of another event loop; the message says which and what to do."""


class CredentialsError(DBRegistryError, RuntimeError):
    """A new connection's password could not be had: its ``password_file`` or ``password_provider`` failed.

    The message names the database and the file or the provider, never a password;
    the connections already open keep working.
    """


class CloseError(DBRegistryError, ExceptionGroup[Exception]):
    """Disposing one or more engines failed.

    Every engine was still disposed; ``exceptions`` holds each failure, and
    ``names`` the matching ``name (mode)`` labels.
    """

    names: list[str]

    def __new__(cls, failures: Sequence[tuple[str, Exception]]) -> CloseError:
        names = [label for label, _ in failures]
        self = super().__new__(cls, f"failed to dispose {', '.join(names)}", [exc for _, exc in failures])
        self.names = names
        return self

    def __init__(self, failures: Sequence[tuple[str, Exception]]) -> None:
        names = [label for label, _ in failures]
        super().__init__(f"failed to dispose {', '.join(names)}", [exc for _, exc in failures])


def unknown_name_message(name: object, declared: Iterable[object]) -> str:
    """The one message for a name that is not declared: the name, the closest declared one, and all of them.

    A value that cannot be a name (a URL, ``user:password@host``) may hold a
    password: it is described, not shown.

    >>> unknown_name_message("replcia", ["primary", "replica"])
    "'replcia' is not a declared database; did you mean 'replica'? declared: primary, replica"
    >>> unknown_name_message("postgresql://app:s3cret@db/app", ["primary"])
    'a URL (not shown: it may hold a password) is not a declared database; declared: primary'
    """
    names = [str(d) for d in declared]  # str(): names given in code may be of any type
    shown = shown_name(name)
    hint = closest(str(name), names) if shown == repr(name) else None
    did_you_mean = f"; did you mean {hint!r}?" if hint else ";"
    return f"{shown} is not a declared database{did_you_mean} declared: {', '.join(names) or '(none)'}"


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to ``word`` (case-insensitive), or None when none is close."""
    options = list(candidates)
    lowered = {str(c).lower(): c for c in options}
    # str(): a mapping given in code may have keys of any type (`{1: ...}`, `{None: ...}`).
    match = difflib.get_close_matches(str(word).lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[match[0]] if match else None


# Tracebacks show the public name users import (`dbregistry.ConfigError`), as httpx does.
for _error in (DBRegistryError, ConfigError, UnknownDatabaseError, RegistryClosedError, EventLoopError, CloseError):
    _error.__module__ = "dbregistry"
