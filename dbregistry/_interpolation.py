"""``${VAR}`` substitution in configuration values: plain text replacement, nothing else.

Forms, as in POSIX shells and docker compose:

=====================  ==========================================================
``${VAR}``             the variable; an error when it is not set
``${VAR:-default}``    the default when the variable is unset or empty
``${VAR-default}``     the default when the variable is unset
``${VAR:?message}``    an error carrying ``message`` when unset or empty
``${VAR?message}``     an error carrying ``message`` when unset
``${file:/path}``      the file's content, one trailing newline stripped
``$${``                a literal ``${``
=====================  ==========================================================

There is no shell, no evaluation and no recursion: a substituted value that
itself contains ``${`` is kept as it is. What substitution produces is bounded
in total, across a whole document (`MAX_OUTPUT` characters): a value used
through many YAML aliases is counted at every use.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from ._errors import DBRegistryError
from ._files import FileReadError, read_secret_file
from ._secrets import NotUtf8Error

__all__ = [
    "MAX_OUTPUT",
    "Budget",
    "InterpolationError",
    "interpolate",
    "interpolate_tree",
    "referenced_variables",
    "substitutions",
]

# As much as a configuration file may hold (yamlfile.Limits.max_bytes): no honest document comes near.
MAX_OUTPUT: Final = 4 * 1024 * 1024

_PATTERN = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_EXPRESSION = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?)(?P<arg>.*))?\Z", re.S)


class InterpolationError(DBRegistryError, ValueError):
    """A ``${...}`` that cannot be substituted; the message names the variable."""


class Budget:
    """What is left of `MAX_OUTPUT` for one load, and the ``${file:...}`` files already read; share it across calls."""

    __slots__ = ("exhausted", "files", "left")

    def __init__(self, limit: int = MAX_OUTPUT) -> None:
        self.left = limit
        self.exhausted = False
        self.files: dict[str, str] = {}

    def spend(self, size: int) -> None:
        self.left -= size
        if self.left < 0:
            self.exhausted = True
            raise InterpolationError(
                f"substitution produces more than {MAX_OUTPUT:,} characters in this document "
                "(a substituted value used through many aliases?)"
            )


def interpolate(value: str, environ: Mapping[str, str], *, budget: Budget | None = None) -> str:
    """Substitute every ``${...}`` in ``value`` from ``environ``.

    >>> interpolate("postgresql://app@${HOST:-localhost}/app", {})
    'postgresql://app@localhost/app'
    """
    if "$" not in value:
        return value
    budget = Budget() if budget is None else budget
    budget.spend(len(value))

    def replace(match: re.Match[str]) -> str:
        text = match.group(0)
        if text == "$${":
            return "${"
        expression = match.group(1)
        if expression is None:
            raise InterpolationError("unterminated '${': close it with '}' or write '$${' for a literal '${'")
        result = _evaluate(expression, environ, budget.files)
        budget.spend(len(result))
        return result

    return _PATTERN.sub(replace, value)


def _shown(expression: str) -> str:
    """The expression as an error may quote it: cut before anything that may be a credential.

    A broken ``${...}`` is often a URL default with a typo; an ``@`` means the
    text may hold ``user:password@``, in a form ``redact`` cannot always see.
    """
    if "@" not in expression:
        return expression
    name = re.match(r"[A-Za-z0-9_]*", expression)
    return f"{name[0] if name else ''}...(not shown: it holds an '@')"


def _evaluate(expression: str, environ: Mapping[str, str], files: dict[str, str]) -> str:
    if expression.startswith("file:"):
        path = expression.removeprefix("file:")
        if path not in files:  # a file named through many aliases is read once
            files[path] = _read_file(path)
        return files[path]
    match = _EXPRESSION.match(expression)
    if match is None:
        raise InterpolationError(
            f"'${{{_shown(expression)}}}' is not a valid substitution; "
            "use ${VAR}, ${VAR:-default}, ${VAR:?message} or ${file:/path}"
        )
    name, op, arg = match.group("name", "op", "arg")
    value = environ.get(name)
    unset = value is None
    empty = unset or value == ""
    if (op == ":-" and empty) or (op == "-" and unset):
        return str(arg)
    if op in (":?", "?") and (empty if op == ":?" else unset):
        state = "is not set or empty" if op == ":?" else "is not set"
        raise InterpolationError(f"environment variable {name} {state}: {arg}")
    if value is None:
        raise InterpolationError(f"environment variable {name} is not set and has no default")
    return value


def _read_file(path: str) -> str:
    try:
        return read_secret_file(path)
    except FileReadError as e:
        shown = path.replace("\x00", "\\x00")
        if e.kind == "missing":
            raise InterpolationError(f"secret file {shown} (in ${{file:...}}) does not exist") from None
        raise InterpolationError(f"secret file {shown} (in ${{file:...}}) {e}") from None
    except NotUtf8Error as e:
        raise InterpolationError(f"secret file {path} (in ${{file:...}}) {e}") from None


def interpolate_tree(
    data: Any,
    environ: Mapping[str, str],
    on_error: Callable[[tuple[str | int, ...], str], None],
    path: tuple[str | int, ...] = (),
    budget: Budget | None = None,
) -> Any:
    """``data`` with every string value substituted.

    Each failure is passed to ``on_error(path, message)`` and the value is left
    as None, so that every problem in a document is found in one pass. Nothing
    is changed in place: a mapping or list with a substituted value somewhere
    inside is a new one, and any other is returned as it was (no copy).
    Once the output passes `MAX_OUTPUT`, that is reported once and the rest is
    returned as it is, unvisited (the load fails with that problem).
    """
    budget = Budget() if budget is None else budget
    if budget.exhausted:
        return data
    if isinstance(data, str):
        if "$" not in data:
            return data
        try:
            return interpolate(data, environ, budget=budget)
        except InterpolationError as e:
            on_error(path, str(e))
            return None
    if isinstance(data, dict):
        changed: dict[Any, Any] | None = None
        for k, v in data.items():
            if type(v) is str and "$" not in v:  # the common case, without a call
                continue
            new = interpolate_tree(v, environ, on_error, (*path, k), budget)
            if new is not v:
                if changed is None:
                    changed = dict(data)
                changed[k] = new
        return data if changed is None else changed
    if isinstance(data, list):
        items = [interpolate_tree(v, environ, on_error, (*path, i), budget) for i, v in enumerate(data)]
        return data if all(new is old for new, old in zip(items, data, strict=True)) else items
    return data


def substitutions(value: str) -> list[tuple[str, str]]:
    """Each variable a ``${...}`` of ``value`` names, with its operator (``""``, ``:-``, ``-``, ``:?``, ``?``)."""
    found: list[tuple[str, str]] = []
    for match in _PATTERN.finditer(value):
        if match.group(0) == "${":
            # Unterminated: no '}' follows, so no later '${' closes either. Going on would rescan
            # the rest of the text from every '${' (quadratic: 100 kB of '${' took 25 s).
            break
        expression = match.group(1)
        parsed = _EXPRESSION.match(expression) if expression is not None else None
        if parsed is not None:
            found.append((parsed.group("name"), parsed.group("op") or ""))
    return found


def referenced_variables(data: Any, found: set[str] | None = None) -> set[str]:
    """The variables named by a ``${...}`` anywhere in ``data``'s strings (added to ``found``)."""
    found = set() if found is None else found
    if isinstance(data, str):
        if "$" in data:
            found.update(name for name, _ in substitutions(data))
        return found
    for value in data.values() if isinstance(data, dict) else data if isinstance(data, list) else ():
        if isinstance(value, str) and "$" not in value:
            continue  # most values: no call
        referenced_variables(value, found)
    return found
