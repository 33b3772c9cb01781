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
itself contains ``${`` is kept as it is.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ._errors import DBRegistryError
from ._secrets import NotUtf8Error, utf8_text

__all__ = ["InterpolationError", "interpolate", "interpolate_tree", "referenced_variables", "substitutions"]

_PATTERN = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_EXPRESSION = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?)(?P<arg>.*))?\Z", re.S)


class InterpolationError(DBRegistryError, ValueError):
    """A ``${...}`` that cannot be substituted; the message names the variable."""


def interpolate(value: str, environ: Mapping[str, str]) -> str:
    """Substitute every ``${...}`` in ``value`` from ``environ``."""
    if "$" not in value:
        return value

    def replace(match: re.Match[str]) -> str:
        text = match.group(0)
        if text == "$${":
            return "${"
        expression = match.group(1)
        if expression is None:
            raise InterpolationError("unterminated '${': close it with '}' or write '$${' for a literal '${'")
        return _evaluate(expression, environ)

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


def _evaluate(expression: str, environ: Mapping[str, str]) -> str:
    if expression.startswith("file:"):
        return _read_file(expression.removeprefix("file:"))
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
        content = utf8_text(Path(path).read_bytes())
    except FileNotFoundError:
        raise InterpolationError(f"secret file {path} (in ${{file:...}}) does not exist") from None
    except NotUtf8Error as e:
        raise InterpolationError(f"secret file {path} (in ${{file:...}}) {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InterpolationError(f"cannot read secret file {path}: {type(e).__name__}") from None
    return content.removesuffix("\n").removesuffix("\r")


def interpolate_tree(
    data: Any,
    environ: Mapping[str, str],
    on_error: Callable[[tuple[str | int, ...], str], None],
    path: tuple[str | int, ...] = (),
) -> Any:
    """``data`` with every string value substituted.

    Each failure is passed to ``on_error(path, message)`` and the value is left
    as None, so that every problem in a document is found in one pass. Nothing
    is changed in place: a mapping or list with a substituted value somewhere
    inside is a new one, and any other is returned as it was (no copy).
    """
    if isinstance(data, str):
        if "$" not in data:
            return data
        try:
            return interpolate(data, environ)
        except InterpolationError as e:
            on_error(path, str(e))
            return None
    if isinstance(data, dict):
        changed: dict[Any, Any] | None = None
        for k, v in data.items():
            if type(v) is str and "$" not in v:  # the common case, without a call
                continue
            new = interpolate_tree(v, environ, on_error, (*path, k))
            if new is not v:
                if changed is None:
                    changed = dict(data)
                changed[k] = new
        return data if changed is None else changed
    if isinstance(data, list):
        items = [interpolate_tree(v, environ, on_error, (*path, i)) for i, v in enumerate(data)]
        return data if all(new is old for new, old in zip(items, data, strict=True)) else items
    return data


def substitutions(value: str) -> list[tuple[str, str]]:
    """Each variable a ``${...}`` of ``value`` names, with its operator (``""``, ``:-``, ``-``, ``:?``, ``?``)."""
    found: list[tuple[str, str]] = []
    for match in _PATTERN.finditer(value):
        expression = match.group(1)
        parsed = _EXPRESSION.match(expression) if expression is not None else None
        if parsed is not None:
            found.append((parsed.group("name"), parsed.group("op") or ""))
    return found


def referenced_variables(data: Any) -> set[str]:
    """The variables named by a ``${...}`` anywhere in ``data``'s strings."""
    if isinstance(data, str):
        return {name for name, _ in substitutions(data)} if "$" in data else set()
    values = data.values() if isinstance(data, dict) else data if isinstance(data, list) else ()
    return set().union(*(referenced_variables(v) for v in values))
