"""The YAML reader: plain values, the line of every key, merge keys, and hostile input refused."""

from __future__ import annotations

import datetime as dt
import gc
import math
import os
import textwrap
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from dbregistry import ConfigError
from dbregistry import _yamlfile as yamlfile  # the parser-limit fallback is tested by swapping its loaders
from dbregistry._errors import Problem
from dbregistry._yamlfile import (
    DEFAULT_LIMITS,
    Limits,
    Lines,
    PathKey,
    YamlDocument,
    line_of,
    load_yaml_file,
    load_yaml_text,
)

FILE = "c.yaml"


def load(text: str, limits: Limits = DEFAULT_LIMITS) -> YamlDocument:
    return load_yaml_text(textwrap.dedent(text), FILE, limits)


def value(text: str) -> Any:
    """The value written after ``v:``."""
    return load(f"v: {text}\n").data["v"]


def refused(text: str, limits: Limits = DEFAULT_LIMITS) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(text, limits)
    return info.value


def problems(text: str, limits: Limits = DEFAULT_LIMITS) -> list[Problem]:
    return refused(text, limits).problems


def problem(path: str, message: str, line: int | None) -> Problem:
    return Problem(path, message, source=FILE, file=FILE, line=line)


def tag_refused(tag: str) -> str:
    return f"the tag {tag} is not allowed; only plain YAML values (no tags) are accepted"


EMPTY = "the file is empty; declare at least `databases:`"
NOT_A_MERGE_SOURCE = "a merge key (<<) must refer to a mapping"
TWO_DOCUMENTS = "is not valid YAML: expected a single document in the stream; but found another document"


def duplicate(key: str, first: int) -> str:
    return f"duplicate key {key!r} (first at line {first}); YAML would silently keep only the last one"


def bomb(limit: int) -> str:
    return f"expands to more than {limit:,} values (an alias or merge-key bomb?)"


def laughs(levels: int) -> str:
    """The billion laughs: each level a list of nine aliases of the level below."""
    text = 'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    for i in range(1, levels + 1):
        text += f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n"
    return text


def count_parser_events(monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """Count the events the loader takes from PyYAML's parser (libyaml's, or the pure-Python one)."""
    taken = 0
    for loader in {getattr(yaml, "CSafeLoader", yaml.SafeLoader), yaml.SafeLoader}:
        original = loader.get_event

        def get_event(self: Any, original: Callable[[Any], Any] = original) -> Any:
            nonlocal taken
            taken += 1
            return original(self)

        monkeypatch.setattr(loader, "get_event", get_event)
    return lambda: taken


# -- scalars ------------------------------------------------------------------------------


class TestScalars:
    def test_plain_text_is_a_string(self) -> None:
        assert value("hello world") == "hello world"
        assert value("postgresql://app@db/app") == "postgresql://app@db/app"

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("0", 0),
            ("42", 42),
            ("010", 8),
            ("0x1F", 31),
            ("0b101", 5),
            ("1_000", 1000),
            ("-5", -5),
            ("+3", 3),
            ("-0", 0),
            ("190:20:30", 685230),
            ("99999999999999999999999999999", 99999999999999999999999999999),
        ],
    )
    def test_integers(self, text: str, expected: int) -> None:
        result = value(text)
        assert result == expected
        assert type(result) is int

    @pytest.mark.parametrize(
        ("text", "expected"),
        [("1.5", 1.5), ("-0.25", -0.25), ("0.", 0.0), ("6.8523015e+5", 685230.15), ("1_0.5", 10.5)],
    )
    def test_floats(self, text: str, expected: float) -> None:
        result = value(text)
        assert result == expected
        assert type(result) is float

    def test_infinities_and_nan(self) -> None:
        assert value(".inf") == math.inf
        assert value("-.inf") == -math.inf
        assert math.isnan(value(".nan"))

    def test_yaml_1_1_leaves_these_as_text(self) -> None:
        # As yaml.safe_load does: PyYAML implements YAML 1.1, not 1.2.
        assert value("1e3") == "1e3"
        assert value("0o17") == "0o17"
        assert value("y") == "y"

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("true", True),
            ("True", True),
            ("yes", True),
            ("on", True),
            ("ON", True),
            ("false", False),
            ("False", False),
            ("no", False),
            ("off", False),
            ("OFF", False),
        ],
    )
    def test_booleans(self, text: str, expected: bool) -> None:
        assert value(text) is expected

    @pytest.mark.parametrize("text", ["null", "Null", "NULL", "~", ""])
    def test_nulls(self, text: str) -> None:
        assert value(text) is None

    def test_timestamps(self) -> None:
        assert value("2001-12-14") == dt.date(2001, 12, 14)
        assert value("2001-12-14 21:59:43.10") == dt.datetime(2001, 12, 14, 21, 59, 43, 100000)
        assert value("2001-12-14t21:59:43.10-05:00") == dt.datetime(
            2001, 12, 14, 21, 59, 43, 100000, tzinfo=dt.timezone(dt.timedelta(hours=-5))
        )

    @pytest.mark.parametrize("text", ['"10"', "'10'", '"true"', "'~'", '""'])
    def test_quoted_values_stay_strings(self, text: str) -> None:
        assert value(text) == text[1:-1]

    @pytest.mark.parametrize(
        "text",
        ["0", "010", "0x1F", "1_000", "+3", "1.5", "1e3", ".nan", "yes", "OFF", "~", "2001-12-14", "190:20:30", '"7"'],
    )
    def test_same_values_as_yaml_safe_load(self, text: str) -> None:
        expected = yaml.safe_load(f"v: {text}")["v"]
        result = value(text)
        if isinstance(expected, float) and math.isnan(expected):
            assert math.isnan(result)
        else:
            assert result == expected
            assert type(result) is type(expected)


class TestExplicitTags:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("!!str 5", "5"),
            ("!!str true", "true"),
            ("!!str", ""),
            ('!!int "7"', 7),
            ("!!int 010", 8),
            ('!!int "0x1F"', 31),
            ('!!float "1"', 1.0),
            ('!!bool "yes"', True),
            ('!!null ""', None),
            ('!<tag:yaml.org,2002:int> "9"', 9),
            ("!!map {x: 1}", {"x": 1}),
            ("!!seq [1]", [1]),
        ],
    )
    def test_standard_tags_are_read(self, text: str, expected: Any) -> None:
        result = value(text)
        assert result == expected
        assert type(result) is type(expected)

    @pytest.mark.parametrize("tag", ["int", "float", "bool"])
    def test_a_value_that_does_not_fit_its_tag(self, tag: str) -> None:
        error = refused(f"""\
            databases:
              a:
                pool_size: !!{tag} abc
            """)
        assert error.problems == [problem("databases.a.pool_size", f"cannot read this value as {tag}", 3)]
        assert str(error) == f"1 problem in c.yaml\n  c.yaml:3  databases.a.pool_size: cannot read this value as {tag}"

    @pytest.mark.parametrize(
        ("text", "tag"), [('!!int ""', "int"), ('!!float ""', "float"), ("!!timestamp nope", "timestamp")]
    )
    def test_a_value_that_crashes_its_constructor_is_a_problem_too(self, text: str, tag: str) -> None:
        assert problems(f"v: {text}\n") == [problem("v", f"cannot read this value as {tag}", 1)]

    def test_a_custom_tag_is_refused(self) -> None:
        error = refused("""\
            databases:
              a:
                url: !vault secret/db
            """)
        assert error.problems == [problem("databases.a.url", tag_refused("!vault"), 3)]
        assert str(error) == (
            "1 problem in c.yaml\n"
            "  c.yaml:3  databases.a.url: the tag !vault is not allowed; only plain YAML values (no tags) are accepted"
        )

    def test_python_tags_are_refused(self) -> None:
        assert problems("""\
            a: !!python/object:os.system x
            b: !!python/object/apply:os.system ["echo hi"]
            c: !!python/name:os.system
            """) == [
            problem("a", tag_refused("!!python/object:os.system"), 1),
            problem("b", tag_refused("!!python/object/apply:os.system"), 2),
            problem("c", tag_refused("!!python/name:os.system"), 3),
        ]

    def test_other_standard_types_are_refused(self) -> None:
        assert problems("""\
            a: !!binary aGk=
            b: !!set {x}
            c: !!omap [x: 1]
            """) == [
            problem("a", tag_refused("!!binary"), 1),
            problem("b", tag_refused("!!set"), 2),
            problem("c", tag_refused("!!omap"), 3),
        ]

    def test_a_custom_tag_on_a_mapping_is_refused(self) -> None:
        assert problems("a: !foo {x: 1}\n") == [problem("a", tag_refused("!foo"), 1)]

    def test_a_custom_tag_on_the_top_level_is_refused(self) -> None:
        assert problems("!foo {a: 1}\n") == [problem("", tag_refused("!foo"), 1)]


# -- keys ---------------------------------------------------------------------------------


class TestKeys:
    def test_keys_are_the_text_written(self) -> None:
        assert load("""\
            1: a
            true: b
            ~: c
            1.0: d
            "a b": e
            """).data == {"1": "a", "true": "b", "~": "c", "1.0": "d", "a b": "e"}

    def test_a_list_as_a_key(self) -> None:
        assert problems("""\
            databases:
              ? [a, b]
              : 1
            """) == [problem("databases", "a key must be a plain name, not a list or mapping", 2)]

    def test_a_mapping_as_a_key(self) -> None:
        assert problems("? {a: 1}\n: 1\n") == [problem("", "a key must be a plain name, not a list or mapping", 1)]

    def test_an_alias_of_a_value_as_a_key(self) -> None:
        document = load("""\
            default: &name primary
            *name : 1
            """)
        assert document.data == {"default": "primary", "primary": 1}
        assert document.lines == {(): {"default": 1, "primary": 2}}

    def test_an_alias_of_a_key_as_a_key(self) -> None:
        assert load("&k name : 1\nother: *k\n").data == {"name": 1, "other": "name"}

    def test_an_alias_of_a_mapping_as_a_key(self) -> None:
        assert problems("""\
            a: &m {x: 1}
            *m : 2
            """) == [problem("", "a key must be a plain name, not a list or mapping", 2)]


class TestDuplicateKeys:
    def test_names_the_first_line(self) -> None:
        error = refused("""\
            databases:
              primary:
                pool_size: 5
                echo: true
                pool_size: 10
            """)
        assert error.problems == [problem("databases.primary.pool_size", duplicate("pool_size", 3), 5)]
        assert str(error) == (
            "1 problem in c.yaml\n"
            "  c.yaml:5  databases.primary.pool_size: duplicate key 'pool_size' (first at line 3); "
            "YAML would silently keep only the last one"
        )

    def test_every_repeat_is_reported_against_the_first(self) -> None:
        assert problems("""\
            x:
              y: 1
              y: 2
              y: 3
            """) == [problem("x.y", duplicate("y", 2), 3), problem("x.y", duplicate("y", 2), 4)]

    def test_quoting_does_not_make_a_different_key(self) -> None:
        assert problems('a: 1\n"a": 2\n') == [problem("a", duplicate("a", 1), 2)]

    def test_an_alias_repeating_a_key(self) -> None:
        assert problems("&k name : 1\n*k : 2\n") == [problem("name", duplicate("name", 1), 2)]


# -- lines --------------------------------------------------------------------------------

DOCUMENT = """\
databases:
  primary:
    url: sqlite://
    pool_size: 5
    hosts:
      - a
      - {name: b, port: 5}
  replica: {url: "sqlite://", echo: true}
"""


@pytest.fixture
def document() -> YamlDocument:
    return load_yaml_text(DOCUMENT, FILE)


class TestLines:
    def test_lines_by_mapping_path(self, document: YamlDocument) -> None:
        assert document.lines == {
            (): {"databases": 1},
            ("databases",): {"primary": 2, "replica": 8},
            ("databases", "primary"): {"url": 3, "pool_size": 4, "hosts": 5},
            ("databases", "primary", "hosts", 1): {"name": 7, "port": 7},
            ("databases", "replica"): {"url": 8, "echo": 8},
        }

    def test_an_empty_mapping_has_no_keys(self) -> None:
        assert load("a: {}\nb: []\n").lines == {(): {"a": 1, "b": 2}, ("a",): {}}

    def test_a_leading_document_marker_counts_as_a_line(self) -> None:
        assert load("---\na: 1\n").lines == {(): {"a": 2}}

    @pytest.mark.parametrize(
        ("path", "line"),
        [
            (("databases",), 1),
            (("databases", "primary"), 2),
            (("databases", "primary", "pool_size"), 4),
            (("databases", "replica", "echo"), 8),
            (("databases", "primary", "hosts", 1, "port"), 7),
        ],
    )
    def test_line_of_a_key(self, document: YamlDocument, path: PathKey, line: int) -> None:
        assert document.line_of(path) == line
        assert line_of(document.lines, path) == line

    @pytest.mark.parametrize(
        ("path", "line"),
        [
            (("databases", "primary", "hosts", 0), 5),
            (("databases", "primary", "hosts", 1), 5),
            (("databases", "primary", "url", "anything"), 3),
            (("databases", "reporting", "url"), 1),
        ],
    )
    def test_line_of_what_has_no_key_is_its_closest_written_parent(
        self, document: YamlDocument, path: PathKey, line: int
    ) -> None:
        assert document.line_of(path) == line

    @pytest.mark.parametrize("path", [(), ("nothing",), ("nothing", "here"), (0,)])
    def test_line_of_an_unknown_path_is_none(self, document: YamlDocument, path: PathKey) -> None:
        assert document.line_of(path) is None

    def test_line_of_on_lines_alone(self) -> None:
        lines: Lines = {(): {"a": 1}, ("a",): {"b": 2}}
        assert line_of(lines, ("a", "b")) == 2
        assert line_of(lines, ("a", "c")) == 1
        assert line_of({}, ("a",)) is None

    def test_an_aliased_mapping_has_the_lines_of_its_anchor(self) -> None:
        document = load("""\
            base: &base
              pool_size: 5
            databases:
              a: *base
            """)
        assert document.line_of(("databases", "a")) == 4
        assert document.line_of(("databases", "a", "pool_size")) == 2


# -- anchors and aliases ------------------------------------------------------------------


class TestAnchorsAndAliases:
    def test_an_alias_shares_the_anchored_value(self) -> None:
        data = load("""\
            base: &base {pool_size: 5}
            url: &url sqlite://
            databases:
              a: *base
              b: {url: *url}
            """).data
        assert data["databases"]["a"] is data["base"]
        assert data["databases"]["b"] == {"url": "sqlite://"}

    def test_a_duplicate_anchor(self) -> None:
        error = refused("a: &x 1\nb: &x 2\n")
        assert error.problems == [problem("", "is not valid YAML: found duplicate anchor &x (first at line 1)", 2)]
        assert (
            str(error)
            == "1 problem in c.yaml\n  c.yaml:2  is not valid YAML: found duplicate anchor &x (first at line 1)"
        )

    def test_an_undefined_alias(self) -> None:
        assert problems("a: 1\nb: *nope\n") == [problem("", "is not valid YAML: found undefined alias", 2)]

    def test_an_alias_before_its_anchor_is_undefined(self) -> None:
        assert problems("a: *x\nb: &x 1\n") == [problem("", "is not valid YAML: found undefined alias", 1)]

    @pytest.mark.parametrize(
        ("text", "line"),
        [
            ("a: &r\n  b: *r\n", 1),
            ("a: &r [1, *r]\n", 1),
            ("a: &r\n  - b: *r\n", 1),
            ("databases:\n  a: &r\n    x:\n      y: *r\n", 2),
        ],
    )
    def test_a_recursive_alias_names_the_line_of_its_anchor(self, text: str, line: int) -> None:
        assert problems(text) == [problem("", "an alias refers to itself (recursive structure)", line)]

    def test_the_billion_laughs_is_refused(self) -> None:
        assert problems(laughs(8), Limits(max_nodes=1000)) == [problem("", bomb(1000), 4)]

    def test_the_billion_laughs_is_refused_at_the_default_limit(self) -> None:
        assert problems(laughs(8)) == [problem("", bomb(2_000_000), 7)]

    def test_a_merge_key_bomb_is_refused(self) -> None:
        text = "l0: &l0 {k0: 1, k1: 1}\n"
        for i in range(1, 21):
            text += f"l{i}: &l{i}\n  <<: *l{i - 1}\n  x{i}: *l{i - 1}\n  y{i}: *l{i - 1}\n"
        assert problems(text, Limits(max_nodes=1000)) == [problem("", bomb(1000), 18)]

    def test_a_bomb_in_a_value_that_is_not_built_is_refused(self) -> None:
        text = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
        text += f"b: &b [{', '.join(['*a'] * 10)}]\n"  # 111 nodes
        text += f"b: [{', '.join(['*b'] * 5)}]\n"  # a duplicate: skipped, but still counted
        assert problems(text, Limits(max_nodes=500)) == [problem("", bomb(500), 3)]

    def test_aliases_under_the_limit_load(self) -> None:
        document = load(
            """\
            base: &base {pool_size: 5, echo: false}
            databases:
              a: *base
              b: *base
              c:
                <<: *base
                echo: true
            """,
            Limits(max_nodes=100),
        )
        assert document.data["databases"] == {
            "a": {"pool_size": 5, "echo": False},
            "b": {"pool_size": 5, "echo": False},
            "c": {"pool_size": 5, "echo": True},
        }

    def test_a_bomb_of_mappings_is_refused_without_expanding_its_lines(self) -> None:
        # l6 counts 3,643 nodes (under the limit) and 1,093 mappings; `top` aliases it 300 times.
        text = "l0: &l0 {x: 1}\n"
        for i in range(1, 7):
            text += f"l{i}: &l{i} {{a: *l{i - 1}, b: *l{i - 1}, c: *l{i - 1}}}\n"
        text += f"top: {{{', '.join(f'f{j}: *l6' for j in range(300))}}}\n"
        tracemalloc.start()
        try:
            with pytest.raises(ConfigError, match="an alias or merge-key bomb"):
                load(text, Limits(max_nodes=10_000))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # Refused after the third alias, this stays under 1 MB; copying every alias's lines takes ~40 MB.
        assert peak < 5_000_000


# -- merge keys ---------------------------------------------------------------------------

BASE = """\
base: &base
  pool_size: 5
  echo: false
  connect_args:
    timeout: 3
"""


class TestMergeKeys:
    def test_a_single_alias(self) -> None:
        data = load(BASE + "db:\n  <<: *base\n  echo: true\n").data
        assert data["db"] == {"pool_size": 5, "echo": True, "connect_args": {"timeout": 3}}
        assert data["base"] == {"pool_size": 5, "echo": False, "connect_args": {"timeout": 3}}

    def test_a_list_of_aliases_the_earlier_wins(self) -> None:
        assert load("""\
            a: &a {x: 1, y: 1}
            b: &b {y: 2, z: 2}
            c:
              <<: [*a, *b]
            """).data["c"] == {"x": 1, "y": 1, "z": 2}

    def test_an_inline_mapping(self) -> None:
        assert load("c:\n  <<: {x: 1, y: 2}\n  y: 3\n").data["c"] == {"x": 1, "y": 3}

    def test_an_inline_list_of_mappings(self) -> None:
        assert load("c:\n  <<: [{x: 1}, {x: 2, y: 2}]\n").data["c"] == {"x": 1, "y": 2}

    def test_an_alias_of_a_list_of_mappings(self) -> None:
        assert load("""\
            list: &l
              - {x: 1}
              - {x: 3, y: 2}
            c:
              <<: *l
            """).data["c"] == {"x": 1, "y": 2}

    def test_in_a_flow_mapping(self) -> None:
        assert load("c: {<<: {x: 1, y: 1}, y: 2}\n").data["c"] == {"x": 1, "y": 2}

    def test_a_merge_inside_a_merged_mapping(self) -> None:
        assert load("c:\n  <<:\n    a: 1\n    <<: {b: 2}\n").data["c"] == {"a": 1, "b": 2}

    @pytest.mark.parametrize(
        "body",
        ["  echo: true\n  <<: *base\n", "  <<: *base\n  echo: true\n"],
        ids=["explicit-before", "explicit-after"],
    )
    def test_explicit_keys_win_wherever_they_are(self, body: str) -> None:
        assert load(BASE + "db:\n" + body).data["db"]["echo"] is True

    def test_an_explicit_mapping_replaces_the_merged_one_whole(self) -> None:
        data = load(BASE + "db:\n  <<: *base\n  connect_args:\n    app: api\n").data
        assert data["db"]["connect_args"] == {"app": "api"}
        assert data["base"]["connect_args"] == {"timeout": 3}

    @pytest.mark.parametrize("merged", ["5", '"text"', "*s", "[1, 2]", "[{x: 1}, 5]", "[*s]"])
    def test_the_source_must_be_a_mapping(self, merged: str) -> None:
        assert problems(f"s: &s 5\nc:\n  <<: {merged}\n") == [problem("c", NOT_A_MERGE_SOURCE, 3)]

    def test_an_alias_of_a_list_of_scalars(self) -> None:
        assert problems("l: &l [1, 2]\nc:\n  <<: *l\n") == [problem("c", NOT_A_MERGE_SOURCE, 3)]

    def test_the_error_message(self) -> None:
        error = refused("databases:\n  a:\n    <<: 5\n")
        assert str(error) == "1 problem in c.yaml\n  c.yaml:3  databases.a: a merge key (<<) must refer to a mapping"

    @pytest.mark.parametrize("key", ['"<<"', "'<<'"])
    def test_a_quoted_merge_key_is_an_ordinary_key(self, key: str) -> None:
        document = load(f"a: &a {{x: 1}}\nc:\n  {key}: *a\n")
        assert document.data["c"] == {"<<": {"x": 1}}
        assert document.lines[("c",)] == {"<<": 3}


class TestMergeKeyLines:
    @pytest.mark.parametrize(
        ("body", "echo_line"),
        [("  echo: true\n  <<: *base\n", 7), ("  <<: *base\n  echo: true\n", 8)],
        ids=["explicit-before", "explicit-after"],
    )
    def test_explicit_keys_keep_their_lines_merged_ones_come_from_the_source(self, body: str, echo_line: int) -> None:
        document = load(BASE + "db:\n" + body)
        assert document.lines[("db",)] == {"echo": echo_line, "pool_size": 2, "connect_args": 4}

    def test_nested_merged_mappings_have_their_source_lines(self) -> None:
        document = load(BASE + "db:\n  <<: *base\n")
        assert document.line_of(("db", "connect_args")) == 4
        assert document.line_of(("db", "connect_args", "timeout")) == 5

    @pytest.mark.parametrize(
        ("body", "app_line"),
        [("  connect_args:\n    app: api\n  <<: *base\n", 8), ("  <<: *base\n  connect_args:\n    app: api\n", 9)],
        ids=["explicit-before", "explicit-after"],
    )
    def test_an_explicit_nested_mapping_keeps_its_own_lines(self, body: str, app_line: int) -> None:
        document = load(BASE + "db:\n" + body)
        assert document.lines[("db", "connect_args")] == {"app": app_line}

    def test_a_list_of_aliases_lines_come_from_the_source_that_won(self) -> None:
        document = load("""\
            a: &a
              n: {x: 1}
              y: 1
            b: &b
              n: {y: 2}
              y: 2
              m: {z: 3}
            c:
              <<: [*a, *b]
            """)
        assert document.lines[("c",)] == {"n": 2, "y": 3, "m": 7}
        assert document.line_of(("c", "n", "x")) == 2
        assert document.line_of(("c", "m", "z")) == 7

    def test_an_inline_mapping(self) -> None:
        document = load("""\
            c:
              <<:
                x: 1
                n:
                  z: 1
              y: 2
            """)
        assert document.lines[("c",)] == {"x": 3, "n": 4, "y": 6}
        assert document.lines[("c", "n")] == {"z": 5}

    def test_an_alias_of_a_list_of_mappings(self) -> None:
        document = load("""\
            list: &l
              - {x: 1}
              - {x: 3, y: 2}
            c:
              <<: *l
            """)
        assert document.lines[("c",)] == {"x": 2, "y": 3}

    def test_an_aliased_mapping_with_a_merge_in_it(self) -> None:
        document = load("""\
            x: &x
              <<: {a: {b: 1}}
            y: *x
            """)
        assert document.line_of(("y", "a")) == 2
        assert document.line_of(("y", "a", "b")) == 2


# -- the shape of the document -------------------------------------------------------------


class TestDocumentShape:
    @pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "---\n...\n", "~\n", "null\n"])
    def test_an_empty_document(self, text: str) -> None:
        error = refused(text)
        assert error.problems == [problem("", EMPTY, 1)]
        assert str(error) == "1 problem in c.yaml\n  c.yaml:1  the file is empty; declare at least `databases:`"

    def test_an_empty_mapping_is_a_document(self) -> None:
        document = load("{}\n")
        assert document.data == {}
        assert document.lines == {(): {}}

    def test_a_top_level_list(self) -> None:
        assert problems("- a\n- b\n") == [
            problem("", "the top level must be a mapping (`databases: ...`), got a list", 1)
        ]

    def test_a_top_level_scalar(self) -> None:
        assert problems("\n\npostgresql://app@db/app\n") == [
            problem("", "the top level must be a mapping (`databases: ...`), got a single value", 3)
        ]

    @pytest.mark.parametrize(
        ("text", "line"), [("a: 1\n---\nb: 2\n", 2), ("a: 1\n...\n---\nb: 2\n", 3), ("a: 1\n---\n", 2)]
    )
    def test_two_documents(self, text: str, line: int) -> None:
        error = refused(text)
        assert error.problems == [problem("", TWO_DOCUMENTS, line)]
        assert str(error) == f"1 problem in c.yaml\n  c.yaml:{line}  {TWO_DOCUMENTS}"

    def test_a_document_end_marker_is_fine(self) -> None:
        assert load("a: 1\n...\n").data == {"a": 1}


class TestSyntaxErrors:
    def test_the_message_never_quotes_the_line(self) -> None:
        error = refused("""\
            databases:
              primary:
                url: postgresql://app:s3cr3t-pw@db/app: oops
            """)
        hint = "; a URL that ends in ':' or holds ': ' must be quoted, as in url: \"sqlite:///:memory:\""
        message = "is not valid YAML: mapping values are not allowed in this context" + hint
        assert error.problems == [problem("", message, 3)]
        assert "s3cr3t-pw" not in str(error)
        assert "s3cr3t-pw" not in repr(error)
        assert error.__cause__ is None
        assert error.__context__ is None

    def test_an_unclosed_flow_sequence(self) -> None:
        assert problems("a: [1, 2\nb: 3\n") == [
            problem("", "is not valid YAML: while parsing a flow sequence; did not find expected ',' or ']'", 2)
        ]

    def test_a_tab_in_the_indentation(self) -> None:
        assert problems("a:\n\tb: 1\n") == [
            problem(
                "",
                "is not valid YAML: while scanning for the next token; found character that cannot start any token",
                2,
            )
        ]

    def test_a_nul_character(self) -> None:
        error = refused("a: 1\nb: \x00\n")
        assert error.problems == [problem("", "contains a NUL character; is it a binary file?", 2)]

    def test_a_byte_order_mark_is_accepted(self) -> None:
        document = load("\ufeffa: 1\n")
        assert document.data == {"a": 1}
        assert document.lines == {(): {"a": 1}}


# -- limits -------------------------------------------------------------------------------


class TestLimits:
    def test_block_nesting(self) -> None:
        text = "a:\n  b:\n    c:\n      d: 1\n"
        assert problems(text, Limits(max_depth=3)) == [problem("a.b.c.d", "nesting is deeper than 3 levels", 4)]
        assert load("a:\n  b:\n    c: 1\n", Limits(max_depth=3)).data == {"a": {"b": {"c": 1}}}

    def test_flow_nesting(self) -> None:
        assert problems("a: {b: {c: {d: 1}}}\n", Limits(max_depth=3)) == [
            problem("a.b.c.d", "nesting is deeper than 3 levels", 1)
        ]
        assert problems("a: [[[1]]]\n", Limits(max_depth=3)) == [
            problem("a.0.0.0", "nesting is deeper than 3 levels", 1)
        ]

    def test_block_nesting_at_the_default_limit(self) -> None:
        text = "a:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(40))
        path = "a." + ".".join(f"k{i}" for i in range(32))
        assert problems(text) == [problem(path, "nesting is deeper than 32 levels", 34)]

    def test_flow_nesting_at_the_default_limit(self) -> None:
        text = "a: " + "[" * 2000 + "]" * 2000 + "\n"
        assert problems(text) == [problem("a" + ".0" * 32, "nesting is deeper than 32 levels", 1)]

    def test_too_deep_nesting_stops_the_reading(self, monkeypatch: pytest.MonkeyPatch) -> None:
        read = count_parser_events(monkeypatch)
        text = "a: " + "[" * 5000 + "]" * 5000 + "\n"
        assert problems(text) == [problem("a" + ".0" * 32, "nesting is deeper than 32 levels", 1)]
        assert read() < 100  # of 10,007

    @pytest.mark.parametrize("levels", [33, 999, 1000, 5000])
    @pytest.mark.parametrize("parser", ["libyaml", "pure-python"])
    def test_flow_nesting_reads_the_same_with_either_parser(
        self, monkeypatch: pytest.MonkeyPatch, parser: str, levels: int
    ) -> None:
        # The libyaml in PyYAML 6.0.4's wheels refuses 1,000 flow levels itself, before the
        # builder sees the deep node; 6.0.1 to 6.0.3 do not. Users see the same problem on both.
        if parser == "libyaml" and not yaml.__with_libyaml__:
            pytest.skip("this PyYAML was built without libyaml")
        loader = yaml.CSafeLoader if parser == "libyaml" else yaml.SafeLoader
        monkeypatch.setattr(yamlfile, "_LOADER", loader)
        lists = "a: " + "[" * levels + "]" * levels
        mappings = "a: " + "{b: " * levels + "1" + "}" * levels
        for text, path in ((lists, "a" + ".0" * 32), (mappings, "a" + ".b" * 32)):
            assert problems(f"x: 1\n{text}\n") == [problem(path, "nesting is deeper than 32 levels", 2)]

    class LimitedLoader(yaml.SafeLoader):
        """The pure-Python parser with a flow nesting limit of 100, refused as libyaml refuses its 1,000."""

        def fetch_flow_collection_start(self, TokenClass: Any) -> None:  # noqa: N803  # PyYAML's name
            if self.flow_level >= 99:
                raise yaml.scanner.ScannerError(
                    "while increasing flow level", None, "exceeded maximum nesting depth", self.get_mark()
                )
            super().fetch_flow_collection_start(TokenClass)

    def test_a_parser_that_stops_at_its_own_nesting_limit_is_not_what_users_see(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The text before the parser's stop is read again: the builder's limit speaks, and the
        # slow pure-Python parser is not needed.
        class Unused(yaml.SafeLoader):
            def __init__(self, stream: str) -> None:
                raise AssertionError("the pure-Python parser read the text")

        monkeypatch.setattr(yamlfile, "_LOADER", self.LimitedLoader)
        monkeypatch.setattr(yamlfile, "_PURE_LOADER", Unused)
        text = "x: 1\na: " + "[" * 2000 + "]" * 2000 + "\n"
        error = refused(text)
        assert error.problems == [problem("a" + ".0" * 32, "nesting is deeper than 32 levels", 2)]
        assert error.__cause__ is None
        assert error.__context__ is None
        assert load("a: [[1]]\n").data == {"a": [[1]]}

    def test_a_depth_limit_beyond_the_parser_s_own_is_read_by_the_pure_python_parser(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(yamlfile, "_LOADER", self.LimitedLoader)
        text = "a: " + "[" * 120 + "1" + "]" * 120 + "\n"
        nested: Any = load(text, Limits(max_depth=150)).data["a"]
        for _ in range(119):
            (nested,) = nested
        assert nested == [1]
        assert problems(text, Limits(max_depth=110)) == [
            problem("a" + ".0" * 110, "nesting is deeper than 110 levels", 1)
        ]

    def test_too_deep_nesting_in_a_duplicate_stops_the_reading(self, monkeypatch: pytest.MonkeyPatch) -> None:
        read = count_parser_events(monkeypatch)
        with pytest.raises(ConfigError):
            load("a: 1\na: " + "[" * 5000 + "]" * 5000 + "\n")
        assert read() < 100

    def test_text_size(self) -> None:
        error = refused("a: 1\nb: 2\n", Limits(max_bytes=5))
        assert error.problems == [problem("", "the text is 10 characters, over the limit of 5", None)]
        assert str(error) == "1 problem in c.yaml\n  c.yaml  the text is 10 characters, over the limit of 5"

    def test_file_size(self, tmp_path: Path) -> None:
        path = tmp_path / "big.yaml"
        path.write_text("a: 1\nb: 2\n")
        with pytest.raises(ConfigError) as info:
            load_yaml_file(path, Limits(max_bytes=5))
        assert info.value.problems == [
            Problem("", "the file is 10 bytes, over the limit of 5", source=str(path), file=str(path))
        ]


# -- files --------------------------------------------------------------------------------


class TestFiles:
    def test_a_file(self, tmp_path: Path) -> None:
        path = tmp_path / "databases.yaml"
        path.write_text("databases:\n  a:\n    url: sqlite://\n")
        document = load_yaml_file(path)
        assert document == YamlDocument(
            data={"databases": {"a": {"url": "sqlite://"}}},
            file=str(path),
            lines={(): {"databases": 1}, ("databases",): {"a": 2}, ("databases", "a"): {"url": 3}},
        )
        assert load_yaml_file(str(path)) == document

    def test_a_byte_order_mark(self, tmp_path: Path) -> None:
        path = tmp_path / "bom.yaml"
        path.write_bytes("\ufeffa: 1\n".encode())
        assert load_yaml_file(path).data == {"a": 1}

    def test_not_utf8(self, tmp_path: Path) -> None:
        path = tmp_path / "latin1.yaml"
        path.write_bytes(b"a: 1\nb: \xff\n")
        with pytest.raises(ConfigError) as info:
            load_yaml_file(path)
        assert info.value.problems == [
            Problem("", "is not UTF-8 text (invalid byte at offset 8)", source=str(path), file=str(path), line=2)
        ]

    def test_missing(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.chdir(tmp_path)
        with pytest.raises(ConfigError) as info:
            load_yaml_file("nope.yaml")
        assert (
            str(info.value) == f"1 problem in nope.yaml\n  nope.yaml  file not found (working directory: {os.getcwd()})"
        )

    def test_a_directory(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError) as info:
            load_yaml_file(tmp_path)
        assert info.value.problems == [
            Problem("", "is a directory, not a YAML file", source=str(tmp_path), file=str(tmp_path))
        ]


# -- the garbage collector ----------------------------------------------------------------


class TestGarbageCollector:
    """The collector is paused while a document is built, and left as it was found."""

    def test_enabled_again_after_a_load(self) -> None:
        assert gc.isenabled()
        load("a: 1\n")
        assert gc.isenabled()

    def test_enabled_again_after_a_syntax_error(self) -> None:
        assert gc.isenabled()
        refused("a: [1\n")
        assert gc.isenabled()

    def test_enabled_again_after_problems(self) -> None:
        assert gc.isenabled()
        refused("a: !foo 1\n")
        assert gc.isenabled()

    def test_left_disabled_when_it_was(self) -> None:
        gc.disable()
        try:
            load("a: 1\n")
            assert not gc.isenabled()
            refused("a: [1\n")
            assert not gc.isenabled()
        finally:
            gc.enable()


class TestAliasLinks:
    """An alias costs one link to its anchor's path, not a copy of the lines below it."""

    def test_an_alias_is_one_link(self) -> None:
        document = load("base: &base\n  pool_size: 5\n  connect_args: {timeout: 3}\ndatabases:\n  a: *base\n")
        assert document.links == {("databases", "a"): ("base",)}
        assert ("databases", "a") not in document.lines
        assert document.line_of(("databases", "a", "connect_args", "timeout")) == 3

    def test_links_are_followed_through_an_alias_of_an_alias_holder(self) -> None:
        document = load("""\
            leaf: &leaf
              x: 1
            mid: &mid
              inner: *leaf
            top:
              m: *mid
            """)
        assert document.line_of(("top", "m", "inner", "x")) == 2
        assert document.line_of(("top", "m", "inner")) == 4

    def test_a_merged_alias_links_its_nested_mappings(self) -> None:
        document = load(BASE + "db:\n  <<: *base\n")
        assert document.links == {("db", "connect_args"): ("base", "connect_args")}

    def test_a_scalar_alias_needs_no_link(self) -> None:
        document = load("a: &a 5\nb: *a\n")
        assert document.links == {}
        assert document.line_of(("b",)) == 2
