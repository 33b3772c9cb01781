"""Safe YAML reading that keeps the line of every key and refuses hostile input.

PyYAML's loaders lose line numbers, keep the last of two duplicate keys without a
word, and expand aliases without bound. Here libyaml (the C parser, ~9x faster
than the pure-Python one, when PyYAML has it) produces the parser's events, and a
small builder turns them straight into data, without composing a node graph
(which costs more than the data itself and is what makes ``yaml.load`` slow and
large on big files). It:

* records the line of every key, per mapping (``lines[("databases", "replica")]["pool_size"] -> 7``);
* refuses duplicate keys, naming both lines;
* accepts only the standard YAML tags (no ``!!python/...``, no custom tags) and
  never constructs anything but plain dicts, lists and scalars;
* refuses alias and merge-key bombs by counting, without expanding them;
  recursive aliases, oversized files and absurd nesting too.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
from dataclasses import dataclass, field
from sys import intern
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.events import (
    AliasEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import ScalarNode

from ._errors import ConfigError, Problem
from ._files import FileReadError, read_bounded
from ._secrets import NotUtf8Error, utf8_text

__all__ = ["DEFAULT_LIMITS", "Limits", "YamlDocument", "line_of", "load_yaml_file", "load_yaml_text"]

PathKey = tuple[str | int, ...]
# The line of every key, by the path of its mapping: {("databases", "replica"): {"pool_size": 7, ...}}.
# One small dict per mapping instead of a path per key: a third of the memory for a large file.
Lines = dict[PathKey, dict[str, int]]
# Where an alias (or a merged alias's key) was used -> where its anchored node was written.
# An alias costs one entry here instead of a copy of every line below its anchor.
Links = dict[PathKey, PathKey]
# The parser's events, dispatched on their exact class (``type(event) is ScalarEvent``),
# which the type stubs cannot follow.
Event = Any

_LOADER: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# The libyaml in PyYAML 6.0.4's wheels refuses 1,000 levels of flow nesting while its scanner
# looks ahead, before the first event of the deep node reaches the builder (6.0.1 to 6.0.3 do not).
# See load_yaml_text for how the builder's own limit still gives the same problem on every PyYAML.
_PURE_LOADER: type[Any] = yaml.SafeLoader
_LIBYAML_NESTING = "exceeded maximum nesting depth"
_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {f"{_TAG}{t}" for t in ("str", "int", "float", "bool", "null", "timestamp")}
_STR_TAG = f"{_TAG}str"
_INT_TAG = f"{_TAG}int"
_NULL_TAG = f"{_TAG}null"
_MAP_TAG = f"{_TAG}map"
_SEQ_TAG = f"{_TAG}seq"
# Far below Python's int-string digit limit (4300 by default), and above any honest setting.
_MAX_DIGITS = 100
_NOT_A_MERGE_SOURCE = "a merge key (<<) must refer to a mapping"


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
    lines: Lines = field(default_factory=dict)
    from_file: bool = True
    links: Links = field(default_factory=dict)

    def line_of(self, path: PathKey) -> int | None:
        """The line of ``path``, or of its closest written parent."""
        return line_of(self.lines, path, self.links)


def line_of(lines: Lines, path: PathKey, links: Links | None = None) -> int | None:
    """The line of ``path`` in ``lines``, or of its closest written parent.

    Below an alias, the path is followed into the anchored node (``links``).
    """
    while path:
        parent = path[:-1]
        keys = lines.get(parent)
        if keys is not None:
            line = keys.get(path[-1])  # type: ignore[arg-type]  # an int index is simply not found
            if line is not None:
                return line
        if links:
            for end in range(len(parent), 0, -1):
                target = links.get(parent[:end])
                if target is not None:
                    line = line_of(lines, target + path[end:], links)
                    if line is not None:
                        return line
                    break
        path = parent
    return None


def load_yaml_file(path: str | os.PathLike[str], limits: Limits = DEFAULT_LIMITS) -> YamlDocument:
    """Read and parse a YAML file whose top level is a mapping; `ConfigError` otherwise."""
    name = os.fspath(path)
    size = 0
    with contextlib.suppress(OSError, ValueError):
        size = os.stat(name).st_size  # a quick answer for a large regular file; the read below is the bound
    if size > limits.max_bytes:
        raise _error(name, f"the file is {size:,} bytes, over the limit of {limits.max_bytes:,}")
    try:
        # Bounded by the read itself, not by stat(): /dev/zero, a FIFO and /proc files report 0 bytes.
        raw = read_bounded(name, limits.max_bytes)
    except FileReadError as e:
        message = {
            "missing": f"file not found (working directory: {os.getcwd()})",
            "directory": "is a directory, not a YAML file",
            "permission": "permission denied reading the file",
        }.get(e.kind, str(e))
        raise _error(name, message) from None
    # Errors are raised after the except blocks: `from None` only hides the context, and the
    # decode and parser errors carry the file's text (and so its passwords) in their arguments.
    not_utf8: NotUtf8Error | None = None
    try:
        text = utf8_text(raw)
    except NotUtf8Error as e:
        not_utf8 = e
    if not_utf8 is not None:
        raise _error(name, str(not_utf8), not_utf8.line)
    return load_yaml_text(text, name, limits)


def load_yaml_text(text: str, file: str = "<string>", limits: Limits = DEFAULT_LIMITS) -> YamlDocument:
    """Parse YAML text whose top level is a mapping; `ConfigError` otherwise."""
    if len(text) > limits.max_bytes:
        raise _error(file, f"the text is {len(text):,} characters, over the limit of {limits.max_bytes:,}")
    text = text.removeprefix("\ufeff")
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise _error(file, "contains a NUL character; is it a binary file?", line)
    try:
        return _read(text, file, limits, _LOADER)
    except _ParserNestingLimitError as stop:
        cut = stop.index
    # libyaml stopped at the bracket that opens its 1,000th flow level. The text before that bracket
    # holds the same deep node, with every level up to there, under libyaml's limit: read again, the
    # builder's own limit stops it at the same path and line as a full read would. Only when it does
    # not (a max_depth beyond libyaml's limit) is the whole text read by the pure-Python parser,
    # which has no limit of its own but is ~10x slower. Outside the except blocks: no __context__.
    too_deep: ConfigError | None = None
    try:
        _read(text[:cut], file, limits, _LOADER)
    except ConfigError as error:
        if error.problems and error.problems[-1].message == _too_deep_message(limits):
            too_deep = error
    except _ParserNestingLimitError:
        pass
    if too_deep is not None:
        raise too_deep
    return _read(text, file, limits, _PURE_LOADER)


class _ParserNestingLimitError(Exception):
    """libyaml stopped at its own nesting limit, at ``index`` in the text, before the builder's limit."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


def _read(text: str, file: str, limits: Limits, loader_class: type[Any]) -> YamlDocument:
    loader = loader_class(text)
    builder = _Builder(loader, file, limits)
    syntax_error: ConfigError | None = None
    collecting = gc.isenabled()
    # A large document is hundreds of thousands of young objects that all survive:
    # the cyclic collector would rescan them again and again (superlinear; 10,000
    # databases took 3 s with it on, 0.5 s off). Nothing built here can form a cycle.
    gc.disable()
    try:
        data = builder.document()
    except yaml.MarkedYAMLError as e:
        if e.problem == _LIBYAML_NESTING and loader_class is not _PURE_LOADER and e.problem_mark is not None:
            raise _ParserNestingLimitError(e.problem_mark.index) from None
        # e.problem/e.context only: str(e) quotes the offending line, which may hold a password.
        mark = e.problem_mark or e.context_mark
        what = "; ".join(str(part) for part in (e.context, e.problem) if part)
        what += _unquoted_url_hint(text, e)
        syntax_error = _error(file, f"is not valid YAML: {what}", mark.line + 1 if mark is not None else None)
    except yaml.YAMLError as e:
        syntax_error = _error(file, f"is not valid YAML: {type(e).__name__}")
    finally:
        if collecting:
            gc.enable()
        loader.dispose()
    if syntax_error is not None:
        raise syntax_error  # outside the except block: no __context__ holding the parser's error
    if builder.problems:
        raise ConfigError(builder.problems, origin=file)
    return YamlDocument(data=data, file=file, lines=builder.lines, links=builder.links)


_URL_ON_LINE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def _unquoted_url_hint(text: str, error: yaml.MarkedYAMLError) -> str:
    """``url: sqlite:///:memory:`` ends in ':', which YAML reads as a key: say to quote it (not echoing the line)."""
    mark = error.problem_mark
    if mark is None or not str(error.problem).startswith("mapping values are not allowed"):
        return ""
    lines = text.splitlines()
    if mark.line >= len(lines) or not _URL_ON_LINE.search(lines[mark.line]):
        return ""
    return "; a URL that ends in ':' or holds ': ' must be quoted, as in url: \"sqlite:///:memory:\""


def _error(file: str, message: str, line: int | None = None) -> ConfigError:
    return ConfigError([Problem("", message, source=file, file=file, line=line)], origin=file)


def _line(event: Event) -> int:
    return int(event.start_mark.line) + 1


@dataclass(slots=True)
class _Anchor:
    """What an ``&anchor`` names: its value, its size in nodes, and where it was written."""

    line: int
    path: PathKey
    value: Any = None
    size: int = 1
    open: bool = True
    text: str | None = None  # an anchored scalar's text, for an alias used as a key


@dataclass(slots=True)
class _Merge:
    """One source of a ``<<`` key: the mapping, and where the lines of its keys are."""

    value: dict[str, Any]
    anchor: PathKey | None  # an alias: the anchored mapping's path, whose lines serve
    lines: Lines = field(default_factory=dict)  # written inline: its lines, at the merged paths
    links: Links = field(default_factory=dict)


class _Builder:
    """Builds plain Python data straight from the parser's events, checking as it goes.

    No node graph is composed: each event is turned into its value and dropped,
    so a large file costs little more than its data. Aliases share the anchored
    value (as ``yaml.safe_load`` does) and link to its lines; their size in nodes
    is counted as they are used, so that a bomb is refused without expanding it.
    A node nested too deep stops the reading where it is found: libyaml's time on
    deep flow nesting grows with the square of the depth.
    """

    def __init__(self, loader: Any, file: str, limits: Limits) -> None:
        self.file = file
        self.limits = limits
        self.lines: Lines = {}
        self.links: Links = {}
        self.problems: list[Problem] = []
        self.anchors: dict[str, _Anchor] = {}
        self._next = loader.get_event
        self._resolve = loader.resolve
        # First characters that some implicit type (int, bool, null, ...) can start with.
        self._typed_start = frozenset(loader.yaml_implicit_resolvers)
        self._constructor = SafeConstructor()

    def problem(self, path: PathKey, message: str, event: Event) -> None:
        self.problems.append(
            Problem(".".join(map(str, path)), message, source=self.file, file=self.file, line=_line(event))
        )

    def document(self) -> dict[str, Any]:
        self._next()  # stream start
        event = self._next()
        if type(event) is StreamEndEvent:
            raise _error(self.file, "the file is empty; declare at least `databases:`", 1)
        first = self._next()  # the document start came first; this is the root
        kind = type(first)
        if kind is ScalarEvent and self._tag(first) == _NULL_TAG:
            raise _error(self.file, "the file is empty; declare at least `databases:`", 1)
        if kind is not MappingStartEvent:
            what = "a list" if kind is SequenceStartEvent else "a single value"
            raise _error(self.file, f"the top level must be a mapping (`databases: ...`), got {what}", _line(first))
        data, _ = self.node(first, (), 0)
        self._next()  # document end
        event = self._next()
        if type(event) is not StreamEndEvent:
            raise _error(
                self.file,
                "is not valid YAML: expected a single document in the stream; but found another document",
                _line(event),
            )
        return data if isinstance(data, dict) else {}

    # -- nodes ------------------------------------------------------------------------

    def node(self, event: Event, path: PathKey, depth: int) -> tuple[Any, int]:
        """The value of the node that starts with ``event``, and its size in nodes."""
        kind = type(event)
        if kind is AliasEvent:
            anchor = self.alias(event)
            if isinstance(anchor.value, dict | list):
                self.links[path] = anchor.path
            return anchor.value, anchor.size
        if depth > self.limits.max_depth:
            raise self.too_deep(path, event)
        name = event.anchor
        if kind is ScalarEvent:
            value = self.scalar(event, path)
            if name is not None:
                self.define(name, event, path, value, event.value)
            return value, 1
        tag = event.tag
        expected = _MAP_TAG if kind is MappingStartEvent else _SEQ_TAG
        if tag is not None and tag not in ("!", expected):
            self.problem(path, _tag_message(tag), event)
            return None, self.skip(event, path, depth)
        defined = self.define(name, event, path, open=True) if name is not None else None
        if kind is MappingStartEvent:
            value, size = self.mapping(event, path, depth)
        else:
            value, size = self.sequence(event, path, depth)
        if size > self.limits.max_nodes:
            raise self.bomb(event)
        if defined is not None:
            defined.value, defined.size, defined.open = value, size, False
        return value, size

    def mapping(self, start: Event, path: PathKey, depth: int) -> tuple[dict[str, Any], int]:
        result: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        self.lines[path] = first_line
        merges: list[_Merge] = []
        size = 1
        while True:
            event = self._next()
            kind = type(event)
            if kind is MappingEndEvent:
                break
            if kind is ScalarEvent:
                size += 1
                if event.value == "<<" and event.tag is None and event.implicit[0]:
                    size += self.merge(self._next(), path, depth, merges)
                    if size > self.limits.max_nodes:
                        raise self.bomb(start)
                    continue
                key = intern(event.value)
                if event.anchor is not None:
                    self.define(event.anchor, event, path, key, key)
            elif kind is AliasEvent and (anchor := self.alias(event)).text is not None:
                size += anchor.size
                key = intern(anchor.text)
            else:
                size += self.skip(event, path, depth + 1)
                self.problem(path, "a key must be a plain name, not a list or mapping", event)
                size += self.skip(self._next(), path, depth + 1)
                continue
            line = _line(event)
            here = (*path, key)
            if key in first_line:
                self.problem(
                    here,
                    f"duplicate key {key!r} (first at line {first_line[key]}); "
                    "YAML would silently keep only the last one",
                    event,
                )
                size += self.skip(self._next(), here, depth + 1)
            else:
                first_line[key] = line
                value_event = self._next()
                result[key], value_size = self.node(value_event, here, depth + 1)
                size += value_size
                if type(value_event) is not AliasEvent:
                    continue
            if size > self.limits.max_nodes:
                raise self.bomb(start)
        if merges:
            self.apply_merges(result, first_line, merges, path)
        return result, size

    def sequence(self, start: Event, path: PathKey, depth: int) -> tuple[list[Any], int]:
        result: list[Any] = []
        size = 1
        while True:
            event = self._next()
            if type(event) is SequenceEndEvent:
                return result, size
            value, value_size = self.node(event, (*path, len(result)), depth + 1)
            result.append(value)
            size += value_size
            if type(event) is AliasEvent and size > self.limits.max_nodes:
                raise self.bomb(start)

    def scalar(self, event: Event, path: PathKey) -> Any:
        tag = self._tag(event)
        value = event.value
        if tag == _STR_TAG:
            return value
        if tag == _INT_TAG and len(value) > _MAX_DIGITS:
            # int() refuses it with a ValueError that quotes the digits; no setting needs such a number.
            self.problem(path, f"a number of {len(value):,} characters is longer than any setting takes", event)
            return None
        if tag == _INT_TAG and value.isdigit() and value.isascii() and (value[0] != "0" or len(value) == 1):
            return int(value)
        if tag == _NULL_TAG:
            return None
        if tag not in _SCALAR_TAGS:
            self.problem(path, _tag_message(tag), event)
            return None
        node = ScalarNode(tag, value, event.start_mark, event.end_mark, event.style)
        try:
            return self._constructor.construct_object(node, deep=True)
        except Exception:  # the standard scalar constructors fail in many ways on bad text (IndexError, ...)
            self.problem(path, f"cannot read this value as {tag.removeprefix(_TAG)}", event)
            return None

    def _tag(self, event: Event) -> str:
        tag: str | None = event.tag
        if tag is not None and tag != "!":
            return tag
        value: str = event.value
        if event.implicit[0] and value[:1] in self._typed_start:
            return str(self._resolve(ScalarNode, value, event.implicit))
        return _STR_TAG

    # -- merge keys (<<) ----------------------------------------------------------------

    def merge(self, event: Event, path: PathKey, depth: int, merges: list[_Merge]) -> int:
        """The value of a ``<<`` key: a mapping, an alias of one, or a list of those."""
        if type(event) is AliasEvent and isinstance((anchor := self.alias(event)).value, list):
            for i, item in enumerate(anchor.value):
                self.merge_anchored(item, (*anchor.path, i), path, event, merges)
            return anchor.size
        if type(event) is not SequenceStartEvent:
            return self.merge_source(event, path, depth, merges)
        size = 1
        while type(item := self._next()) is not SequenceEndEvent:
            size += self.merge_source(item, path, depth, merges)
        return size

    def merge_source(self, event: Event, path: PathKey, depth: int, merges: list[_Merge]) -> int:
        kind = type(event)
        if kind is AliasEvent:
            anchor = self.alias(event)
            self.merge_anchored(anchor.value, anchor.path, path, event, merges)
            return anchor.size
        if kind is not MappingStartEvent:
            self.problem(path, _NOT_A_MERGE_SOURCE, event)
            return self.skip(event, path, depth)
        # Built at the merging mapping's own path, its lines kept aside until
        # the explicit keys of that mapping are known: those win.
        outer = self.lines, self.links
        self.lines, self.links = {}, {}
        try:
            value, size = self.node(event, path, depth)
            source = _Merge(value, None, self.lines, self.links) if isinstance(value, dict) else None
        finally:
            self.lines, self.links = outer
        if source is not None:
            merges.append(source)
        return size

    def merge_anchored(self, value: Any, anchor: PathKey, path: PathKey, event: Event, merges: list[_Merge]) -> None:
        if isinstance(value, dict):
            merges.append(_Merge(value, anchor))
        else:
            self.problem(path, _NOT_A_MERGE_SOURCE, event)

    def apply_merges(
        self, result: dict[str, Any], first_line: dict[str, int], merges: list[_Merge], path: PathKey
    ) -> None:
        """Merged keys fill in what the mapping does not set itself; an earlier source beats a later one."""
        supplier: dict[str, int] = {}
        for i, source in enumerate(merges):
            for key, value in source.value.items():
                if key not in result:
                    result[key] = value
                    supplier[key] = i
        cut = len(path)
        for i, source in enumerate(merges):
            if source.anchor is not None:
                keys = self.lines.get(source.anchor, {})
                for key, value in source.value.items():
                    if supplier.get(key) == i:
                        if key in keys:
                            first_line[key] = keys[key]
                        if isinstance(value, dict | list):
                            self.links[(*path, key)] = (*source.anchor, key)
                continue
            for parent, keys in source.lines.items():
                if len(parent) == cut:  # the source's own keys
                    first_line.update((key, line) for key, line in keys.items() if supplier.get(key) == i)
                elif supplier.get(str(parent[cut])) == i:
                    self.lines[parent] = keys
            for at, target in source.links.items():
                if len(at) > cut and supplier.get(str(at[cut])) == i:
                    self.links[at] = target

    # -- anchors, aliases and skipped nodes -----------------------------------------------

    def define(
        self, name: str, event: Event, path: PathKey, value: Any = None, text: str | None = None, *, open: bool = False
    ) -> _Anchor:
        first = self.anchors.get(name)
        if first is not None:
            raise _error(
                self.file,
                f"is not valid YAML: found duplicate anchor &{name} (first at line {first.line})",
                _line(event),
            )
        anchor = self.anchors[name] = _Anchor(_line(event), path, value, 1, open, text)
        return anchor

    def alias(self, event: Event) -> _Anchor:
        anchor = self.anchors.get(event.anchor)
        if anchor is None:
            raise _error(self.file, "is not valid YAML: found undefined alias", _line(event))
        if anchor.open:
            raise _error(self.file, "an alias refers to itself (recursive structure)", anchor.line)
        return anchor

    def skip(self, event: Event, path: PathKey, depth: int) -> int:
        """Consume a node that is not built (refused or unreachable); its size in nodes."""
        kind = type(event)
        if kind is AliasEvent:
            return self.alias(event).size
        start = event
        level = 0 if kind is ScalarEvent else 1
        size = 1
        if event.anchor is not None:
            self.define(event.anchor, event, path)
        while level:
            event = self._next()
            kind = type(event)
            if kind is MappingEndEvent or kind is SequenceEndEvent:
                level -= 1
                continue
            if kind is AliasEvent:
                size += self.alias(event).size
            else:
                size += 1
                if kind is not ScalarEvent:
                    level += 1
                    if depth + level - 1 > self.limits.max_depth:
                        raise self.too_deep(path, event)
                if event.anchor is not None:
                    self.define(event.anchor, event, path)
            if size > self.limits.max_nodes:
                raise self.bomb(start)
        return size

    def too_deep(self, path: PathKey, event: Event) -> ConfigError:
        self.problem(path, _too_deep_message(self.limits), event)
        return ConfigError(self.problems, origin=self.file)

    def bomb(self, event: Event) -> ConfigError:
        return _error(
            self.file,
            f"expands to more than {self.limits.max_nodes:,} values (an alias or merge-key bomb?)",
            _line(event),
        )


def _too_deep_message(limits: Limits) -> str:
    return f"nesting is deeper than {limits.max_depth} levels"


def _tag_message(tag: str) -> str:
    shown = tag.replace(_TAG, "!!")
    return f"the tag {shown} is not allowed; only plain YAML values (no tags) are accepted"
