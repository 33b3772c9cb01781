"""Safe YAML reading that keeps the line of every key and refuses hostile input.

PyYAML's loaders lose line numbers, keep the last of two duplicate keys without a
word, and expand aliases without bound. Here the document is composed by
libyaml (the C parser, ~9x faster than the pure-Python one, when PyYAML has it)
and built by a small walker that:

* records the line of every key, by path (``("databases", "replica", "pool_size") -> 7``);
* refuses duplicate keys, naming both lines;
* accepts only the standard YAML tags (no ``!!python/...``, no custom tags) and
  never constructs anything but plain dicts, lists and scalars;
* refuses alias and merge-key bombs before expanding them, recursive aliases,
  oversized files and absurd nesting.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import ConfigError, Problem

__all__ = ["DEFAULT_LIMITS", "Limits", "YamlDocument", "load_yaml_file", "load_yaml_text"]

PathKey = tuple[str | int, ...]

_LOADER: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {f"{_TAG}{t}" for t in ("str", "int", "float", "bool", "null", "timestamp")}
_MERGE_TAG = f"{_TAG}merge"
_MAP_TAG = f"{_TAG}map"
_SEQ_TAG = f"{_TAG}seq"
# More brackets than this and the flow nesting is measured before libyaml composes
# the document: its composer recurses in C and crashes on very deep flow input.
_BRACKETS_WITHOUT_SCAN = 1000


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds that no honest configuration reaches."""

    max_bytes: int = 4 * 1024 * 1024
    max_depth: int = 32
    max_nodes: int = 2_000_000


DEFAULT_LIMITS = Limits()


@dataclass(slots=True)
class YamlDocument:
    """A parsed YAML mapping with the line of every key, by path."""

    data: dict[str, Any]
    file: str
    lines: dict[PathKey, int] = field(default_factory=dict)
    from_file: bool = True

    def line_of(self, path: PathKey) -> int | None:
        """The line of ``path``, or of its closest written parent."""
        while path:
            line = self.lines.get(path)
            if line is not None:
                return line
            path = path[:-1]
        return None


def load_yaml_file(path: str | os.PathLike[str], limits: Limits = DEFAULT_LIMITS) -> YamlDocument:
    """Read and parse a YAML file whose top level is a mapping; `ConfigError` otherwise."""
    name = os.fspath(path)
    p = Path(name)
    try:
        size = p.stat().st_size
        if size > limits.max_bytes:
            raise _error(name, f"the file is {size:,} bytes, over the limit of {limits.max_bytes:,}")
        raw = p.read_bytes()
    except FileNotFoundError:
        raise _error(name, f"file not found (working directory: {os.getcwd()})") from None
    except IsADirectoryError:
        raise _error(name, "is a directory, not a YAML file") from None
    except PermissionError:
        raise _error(name, "permission denied reading the file") from None
    # Errors are raised after the except blocks: `from None` only hides the context, and the
    # decode and parser errors carry the file's text (and so its passwords) in their arguments.
    bad_byte: int | None = None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        bad_byte = e.start
    if bad_byte is not None:
        line = raw.count(b"\n", 0, bad_byte) + 1
        raise _error(name, f"is not UTF-8 text (byte 0x{raw[bad_byte]:02x} at offset {bad_byte})", line)
    return load_yaml_text(text, name, limits)


def load_yaml_text(text: str, file: str = "<string>", limits: Limits = DEFAULT_LIMITS) -> YamlDocument:
    """Parse YAML text whose top level is a mapping; `ConfigError` otherwise."""
    if len(text) > limits.max_bytes:
        raise _error(file, f"the text is {len(text):,} characters, over the limit of {limits.max_bytes:,}")
    text = text.removeprefix("\ufeff")
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise _error(file, "contains a NUL character; is it a binary file?", line)
    if text.count("[") + text.count("{") > _BRACKETS_WITHOUT_SCAN:
        _check_flow_depth(text, file, limits)
    syntax_error: ConfigError | None = None
    try:
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as e:
        # e.problem/e.context only: str(e) quotes the offending line, which may hold a password.
        mark = e.problem_mark or e.context_mark
        what = "; ".join(str(part) for part in (e.context, e.problem) if part)
        syntax_error = _error(file, f"is not valid YAML: {what}", mark.line + 1 if mark is not None else None)
    except yaml.YAMLError as e:
        syntax_error = _error(file, f"is not valid YAML: {type(e).__name__}")
    if syntax_error is not None:
        raise syntax_error  # outside the except block: no __context__ holding the parser's error
    if root is None or (isinstance(root, ScalarNode) and root.tag == f"{_TAG}null"):
        raise _error(file, "the file is empty; declare at least `databases:`", 1)
    if not isinstance(root, MappingNode):
        kind = "a list" if isinstance(root, SequenceNode) else "a single value"
        raise _error(file, f"the top level must be a mapping (`databases: ...`), got {kind}", root.start_mark.line + 1)
    builder = _Builder(file, limits)
    builder.check_size(root)
    data = builder.build(root, (), 0)
    if builder.problems:
        raise ConfigError(builder.problems, origin=file)
    return YamlDocument(data=data, file=file, lines=builder.lines)


def _error(file: str, message: str, line: int | None = None) -> ConfigError:
    return ConfigError([Problem("", message, source=file, file=file, line=line)], origin=file)


def _check_flow_depth(text: str, file: str, limits: Limits) -> None:
    depth = 0
    try:
        for event in yaml.parse(text, Loader=_LOADER):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > limits.max_depth:
                    line = event.start_mark.line + 1 if event.start_mark is not None else None
                    raise _error(file, f"nesting is deeper than {limits.max_depth} levels", line)
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError:
        return  # compose() reports the syntax error with its line


class _Builder:
    """Turns a composed node graph into plain Python data, checking as it goes."""

    def __init__(self, file: str, limits: Limits) -> None:
        self.file = file
        self.limits = limits
        self.lines: dict[PathKey, int] = {}
        self.problems: list[Problem] = []
        self._constructor = SafeConstructor()

    def problem(self, path: PathKey, message: str, node: Node) -> None:
        self.problems.append(
            Problem(
                ".".join(map(str, path)),
                message,
                source=self.file,
                file=self.file,
                line=node.start_mark.line + 1,
            )
        )

    def check_size(self, root: Node) -> None:
        """Refuse alias bombs and recursive aliases before expanding anything."""
        sizes: dict[int, int] = {}
        active: set[int] = set()

        def size(node: Node) -> int:
            key = id(node)
            if key in sizes:
                return sizes[key]
            if key in active:
                raise _error(self.file, "an alias refers to itself (recursive structure)", node.start_mark.line + 1)
            active.add(key)
            total = 1
            if isinstance(node, MappingNode):
                total += sum(size(k) + size(v) for k, v in node.value)
            elif isinstance(node, SequenceNode):
                total += sum(size(v) for v in node.value)
            active.discard(key)
            sizes[key] = total
            if total > self.limits.max_nodes:
                raise _error(
                    self.file,
                    f"expands to more than {self.limits.max_nodes:,} values (an alias or merge-key bomb?)",
                    node.start_mark.line + 1,
                )
            return total

        size(root)

    def build(self, node: Node, path: PathKey, depth: int) -> Any:
        if depth > self.limits.max_depth:
            self.problem(path, f"nesting is deeper than {self.limits.max_depth} levels", node)
            return None
        if isinstance(node, MappingNode):
            if node.tag != _MAP_TAG:
                self.problem(path, _tag_message(node.tag), node)
                return None
            return self.build_mapping(node, path, depth)
        if isinstance(node, SequenceNode):
            if node.tag != _SEQ_TAG:
                self.problem(path, _tag_message(node.tag), node)
                return None
            return [self.build(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        assert isinstance(node, ScalarNode)
        if node.tag not in _SCALAR_TAGS:
            self.problem(path, _tag_message(node.tag), node)
            return None
        if node.tag == f"{_TAG}str":
            return node.value
        try:
            return self._constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, OverflowError):
            self.problem(path, f"cannot read this value as {node.tag.removeprefix(_TAG)}", node)
            return None

    def build_mapping(self, node: MappingNode, path: PathKey, depth: int) -> dict[str, Any]:
        merges = [value for key, value in node.value if key.tag == _MERGE_TAG]
        merged: dict[str, Any] = {}
        for source in merges:
            # Merged keys are built first so that the lines of explicit keys win.
            for key, value in self.merge_sources(source, path, depth):
                merged.setdefault(key, value)
        result: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            if not isinstance(key_node, ScalarNode):
                self.problem(path, "a key must be a plain name, not a list or mapping", key_node)
                continue
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in first_line:
                self.problem(
                    (*path, key),
                    f"duplicate key {key!r} (first at line {first_line[key]}); "
                    "YAML would silently keep only the last one",
                    key_node,
                )
                continue
            first_line[key] = line
            self.lines[(*path, key)] = line
            result[key] = self.build(value_node, (*path, key), depth + 1)
        for key, value in merged.items():
            result.setdefault(key, value)
        return result

    def merge_sources(self, node: Node, path: PathKey, depth: int) -> Iterator[tuple[str, Any]]:
        sources = node.value if isinstance(node, SequenceNode) else [node]
        for source in sources:
            if not isinstance(source, MappingNode):
                self.problem(path, "a merge key (<<) must refer to a mapping", source)
                continue
            yield from self.build_mapping(source, path, depth).items()


def _tag_message(tag: str) -> str:
    shown = tag.replace(_TAG, "!!")
    return f"the tag {shown} is not allowed; only plain YAML values (no tags) are accepted"
