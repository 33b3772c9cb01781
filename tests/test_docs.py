"""Every Python and shell snippet in README.md and docs/*.md runs as written, and prints what the docs quote.

The conventions (also in CONTRIBUTING.md):

* ```` ```python ```` blocks of one file run in order in one namespace, in a temporary working
  directory holding a copy of the repository's ``config/`` and ``examples/``; top-level ``await``
  works: a block that uses it runs as a coroutine in the file's one event loop (as in
  ``python -m asyncio``), other blocks as plain code. A block in ``>>>`` form runs as a doctest.
* ```` ```sh ```` / ```` ```bash ```` blocks run in the same directory with ``bash -euo pipefail``,
  ``python`` and ``dbregistry`` resolving to the interpreter running the tests; they must exit 0.
* A ```` ```text ```` block right after a python or shell block is its expected standard output.
  ```` ```console ```` blocks hold ``$ command`` lines, each followed by its expected output
  (standard output and error together; the exit status is not checked). In expected output, a line
  that is only ``...`` matches any number of lines, and ``...`` within a line matches any text.
* The line before a fence may say what the block needs: ``<!-- requires: postgres -->`` runs it
  with ``DATABASE_URL`` set to the suite's PostgreSQL server (``replica``: ``REPLICA_DATABASE_URL``
  to its streaming replica); ``<!-- fragment -->`` only checks its syntax; ``<!-- skip: why -->``
  leaves it alone (installs, containers: things a test cannot do).
* Variables that would select another configuration (``DATABASE_URL``, ``*_DATABASE_URL``,
  ``*_POOLER_URL``, ``DBREGISTRY_*``, ``APP_ENV``) are removed from the environment first.
* Every fenced block says its language, so that no snippet goes unrun by having none.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import doctest
import inspect
import io
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dbregistry import Registry

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

PYTHON = {"python", "py", "pycon"}
SHELL = {"sh", "bash", "shell"}
CONSOLE = {"console"}
OUTPUT = {"text", "output"}
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)")
DIRECTIVE = re.compile(r"^<!--\s*(?P<name>requires|fragment|skip)\s*(?::\s*(?P<value>.*?))?\s*-->$")
# What each `<!-- requires: ... -->` needs: the fixture, and the variable its URL goes into.
SERVERS = {"postgres": ("pg", "DATABASE_URL"), "replica": ("pg_replica", "REPLICA_DATABASE_URL")}
TIMEOUT = 120


@dataclass
class Block:
    """One fenced block: where it starts, its language and text, and what the line before it said."""

    doc: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    directive: str | None = None  # "requires", "fragment" or "skip"
    value: str = ""
    expected: str | None = None  # the text block quoted right after it

    @property
    def where(self) -> str:
        shown = self.doc.relative_to(ROOT) if self.doc.is_relative_to(ROOT) else self.doc.name
        return f"{shown}:{self.line}"

    @property
    def requires(self) -> list[str]:
        return [name.strip() for name in self.value.split(",") if name.strip()] if self.directive == "requires" else []


def parse(doc: Path) -> list[Block]:
    """The fenced blocks of a Markdown file; an output block right after a runnable one becomes its ``expected``."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    previous_end = -2  # the index of the closing fence of the last block
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        indent, fence, lang = len(match["indent"]), match["fence"], match["lang"].lower()
        closing = re.compile(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        end = i + 1
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        # A block inside a list item is indented with it.
        text = "".join(line[indent:] + "\n" if line[:indent].isspace() else line + "\n" for line in lines[i + 1 : end])
        before = next((line.strip() for line in reversed(lines[:i]) if line.strip()), "")
        directive = DIRECTIVE.match(before)
        adjacent = all(not line.strip() for line in lines[previous_end + 1 : i])
        last = blocks[-1] if blocks else None
        if lang in OUTPUT and adjacent and last is not None and last.lang in PYTHON | SHELL and directive is None:
            last.expected = text
        else:
            blocks.append(Block(doc, i + 1, lang, text))
            if directive is not None:
                blocks[-1].directive, blocks[-1].value = directive["name"], directive["value"] or ""
        previous_end = end
        i = end + 1
    return blocks


def same_output(expected: str, actual: str) -> bool:
    """``actual`` reads as ``expected``: trailing spaces ignored; ``...`` matches lines, or text within a line."""
    pattern = []
    for line in expected.strip("\n").splitlines():
        if line.strip() == "...":
            pattern.append(r"(?:[^\n]*\n)*?")
        else:
            pattern.append("[^\n]*".join(map(re.escape, line.rstrip().split("..."))) + r"\n")
    text = "".join(line.rstrip() + "\n" for line in actual.strip("\n").splitlines())
    return re.fullmatch("".join(pattern), text) is not None


def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.endswith(("DATABASE_URL", "_POOLER_URL")) or name.startswith("DBREGISTRY_") or name == "APP_ENV":
            monkeypatch.delenv(name)
    venv_bin = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}")


def copy_workdir(target: Path) -> None:
    """What a fresh clone has for relative paths in snippets: config/ and examples/, no databases or caches."""
    ignore = shutil.ignore_patterns("*.db", "__pycache__", "*.schema.json")
    for name in ("config", "examples"):
        shutil.copytree(ROOT / name, target / name, ignore=ignore)


# -- running one block --------------------------------------------------------------------


def run_python(block: Block, namespace: dict[str, object], loop: asyncio.AbstractEventLoop) -> str:
    if block.text.lstrip().startswith(">>>"):
        return run_doctest(block, namespace)
    # Leading newlines put the code at its own line in the file, for tracebacks.
    source = "\n" * block.line + block.text
    code = compile(source, str(block.doc), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = eval(code, namespace)  # the repository's own documentation
        if inspect.iscoroutine(result):
            loop.run_until_complete(result)
    return out.getvalue()


def run_doctest(block: Block, namespace: dict[str, object]) -> str:
    test = doctest.DocTestParser().get_doctest(block.text, namespace, block.where, str(block.doc), block.line)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = io.StringIO()
    runner.run(test, out=report.write, clear_globs=False)
    namespace.update(test.globs)  # a DocTest works on a copy: later blocks see what this one defined
    assert runner.failures == 0, f"{block.where}: doctest failed\n{report.getvalue()}"
    return ""


def run_shell(block: Block, cwd: Path) -> str:
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.text],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, (
        f"{block.where}: exit status {result.returncode}\n{block.text}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result.stdout


def console_commands(text: str) -> list[tuple[str, str]]:
    """``$ command`` lines (``\\`` continues one) and the output quoted after each."""
    commands: list[tuple[str, str]] = []
    command: list[str] | None = None
    output: list[str] = []
    continued = False
    for line in text.splitlines():
        if continued and command is not None:
            command.append(line)
        elif line.startswith("$ "):
            if command is not None:
                commands.append(("\n".join(command), "\n".join(output)))
            command, output = [line[2:]], []
        else:
            output.append(line)
        continued = line.endswith("\\")
    if command is not None:
        commands.append(("\n".join(command), "\n".join(output)))
    return commands


def run_console(block: Block, cwd: Path) -> None:
    commands = console_commands(block.text)
    assert commands, f"{block.where}: a console block needs `$ command` lines"
    for command, expected in commands:
        result = subprocess.run(
            ["bash", "-c", command],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert same_output(expected, result.stdout), (
            f"{block.where}: `{command}` printed\n{result.stdout}\nthe docs say\n{expected}"
        )


def check_syntax(block: Block) -> None:
    if block.lang in PYTHON and not block.text.lstrip().startswith(">>>"):
        compile(block.text, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    elif block.lang in SHELL:
        result = subprocess.run(["bash", "-n", "-c", block.text], capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"{block.where}: {result.stderr}"


def track_registries(monkeypatch: pytest.MonkeyPatch) -> list[Registry]:
    """Every registry the snippets create, in order (held here, so that none is collected unclosed).

    Every constructor (``Registry(...)`` and the ``from_*``/``load`` class methods) ends in ``_init``.
    """
    created: list[Registry] = []
    init = Registry._init

    def tracked(self: Registry, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        created.append(self)

    monkeypatch.setattr(Registry, "_init", tracked)
    return created


# -- the tests ----------------------------------------------------------------------------


def runnable(doc: Path) -> list[Block]:
    return [block for block in parse(doc) if block.lang in PYTHON | SHELL | CONSOLE]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_snippet_runs(
    doc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    run_document(doc, workdir, monkeypatch, request)


def run_document(doc: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Run the snippets of ``doc`` by the conventions above, in ``workdir``."""
    blocks = runnable(doc)
    copy_workdir(workdir)
    monkeypatch.chdir(workdir)
    clean_environment(monkeypatch)
    namespace: dict[str, object] = {"__name__": "__main__"}
    created = track_registries(monkeypatch)
    # One event loop for the file, as in `python -m asyncio`: an async engine built in one block
    # keeps its connections in that loop, and is closed in it at the end.
    loop = asyncio.new_event_loop()
    try:
        run_blocks(blocks, namespace, loop, workdir, monkeypatch, request)
    finally:
        # What a snippet left open is closed, as the end of its process would.
        for registry in created:
            loop.run_until_complete(registry.aclose())
        loop.close()


def run_blocks(
    blocks: list[Block],
    namespace: dict[str, object],
    loop: asyncio.AbstractEventLoop,
    cwd: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    for block in blocks:
        if block.directive == "skip":
            assert block.value, f"{block.where}: say why a block is skipped: <!-- skip: reason -->"
            continue
        if block.directive == "fragment":
            check_syntax(block)
            continue
        with monkeypatch.context() as env:
            for need in block.requires:
                assert need in SERVERS, f"{block.where}: unknown requirement {need!r}; known: {', '.join(SERVERS)}"
                fixture, variable = SERVERS[need]
                env.setenv(variable, request.getfixturevalue(fixture).url_string())
            if block.lang in CONSOLE:
                run_console(block, cwd)
                continue
            out = run_python(block, namespace, loop) if block.lang in PYTHON else run_shell(block, cwd)
        if block.expected is not None:
            assert same_output(block.expected, out), f"{block.where} printed\n{out}\nthe docs say\n{block.expected}"


def test_docs_have_snippets() -> None:
    assert all(runnable(doc) for doc in DOCS)


def test_every_block_says_its_language() -> None:
    unnamed = [block.where for doc in DOCS for block in parse(doc) if not block.lang]
    assert not unnamed, f"say what these blocks are (```python, ```sh, ```console, ```text, ```yaml ...): {unnamed}"


class TestTheRunner:
    """The conventions above, on small documents."""

    def test_output_after_a_block_is_its_expected_output(self, tmp_path: Path) -> None:
        doc = tmp_path / "a.md"
        doc.write_text("```python\nprint(1)\n```\n\n```text\n1\n```\n\n<!-- fragment -->\n```sh\nx\n```\n")
        first, second = parse(doc)
        assert (first.lang, first.line, first.text, first.expected) == ("python", 1, "print(1)\n", "1\n")
        assert (second.lang, second.line, second.directive, second.expected) == ("sh", 10, "fragment", None)

    def test_a_text_block_after_prose_is_not_output(self, tmp_path: Path) -> None:
        doc = tmp_path / "a.md"
        doc.write_text("```python\nprint(1)\n```\nprose\n```text\n1\n```\n")
        assert [(b.lang, b.expected) for b in parse(doc)] == [("python", None), ("text", None)]

    def test_requirements(self, tmp_path: Path) -> None:
        doc = tmp_path / "a.md"
        doc.write_text("<!-- requires: postgres, replica -->\n```python\npass\n```\n")
        assert parse(doc)[0].requires == ["postgres", "replica"]

    def test_a_block_in_a_list_item(self, tmp_path: Path) -> None:
        doc = tmp_path / "a.md"
        doc.write_text("- item:\n\n  ```python\n  if True:\n      pass\n  ```text\n  ```\n")
        (block,) = parse(doc)
        assert (block.lang, block.text) == ("python", "if True:\n    pass\n```text\n")

    @pytest.mark.parametrize(
        ("expected", "actual", "same"),
        [
            ("a\nb\n", "a  \nb", True),
            ("a\n...\nd\n", "a\nb\nc\nd\n", True),
            ("a\n  ...\nb\n", "a\nb\n", True),
            ("took ... ms\n", "took 1.5 ms\n", True),
            ("a\nb\n", "a\nc\n", False),
            ("a\n", "a\nb\n", False),
        ],
    )
    def test_same_output(self, expected: str, actual: str, same: bool) -> None:
        assert same_output(expected, actual) is same

    def test_console_commands(self) -> None:
        text = "$ A=1 \\\n  echo $A\n1\n$ false\n"
        assert console_commands(text) == [("A=1 \\\n  echo $A", "1"), ("false", "")]


class TestRunningADocument:
    """A small document through the whole runner: what passes, and that a wrong snippet fails."""

    def run(self, text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
        doc = tmp_path / "doc.md"
        doc.write_text(text)
        workdir = tmp_path / "work"
        workdir.mkdir()
        run_document(doc, workdir, monkeypatch, request)

    def test_blocks_share_a_namespace_an_event_loop_and_a_directory(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
    ) -> None:
        monkeypatch.setenv("DATABASE_URL", "sqlite:///./elsewhere.db")
        doc = """\
```python
import asyncio, os
await asyncio.sleep(0)
loop = asyncio.get_running_loop()
print(os.environ.get("DATABASE_URL"), sorted(os.listdir()))
```

```text
None ['config', 'examples']
```

```python
await asyncio.sleep(0)
assert asyncio.get_running_loop() is loop
from dbregistry import Registry
registry = Registry.from_yaml("config/databases.yaml")
print(registry.get_async("primary").url)
```

```text
sqlite+aiosqlite:///./dev.db
```

```pycon
>>> registry.names[:2]
['primary', 'replica']
>>> answer = 42
```

```sh
echo "$(python -c 'print(6 * 7)') in $(basename "$PWD")" > out.txt
cat out.txt
```

```text
42 in work
```

```console
$ dbregistry validate --config config/bad.yaml
invalid: 3 problems in config/bad.yaml
...
$ echo done
done
```

<!-- fragment -->
```python
async with registry.async_session() as session:
    ...
```

<!-- skip: not a real command -->
```sh
no-such-command
```
"""
        self.run(doc, tmp_path, monkeypatch, request)

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("```python\nprint(1)\n```\n\n```text\n2\n```\n", "doc.md:1 printed"),
            ("```sh\nfalse\necho not reached\n```\n", "doc.md:1: exit status 1"),
            ("```console\n$ echo 1\n2\n```\n", "doc.md:1: `echo 1` printed"),
            ("```python\n>>> 1 + 1\n3\n```\n", "doc.md:1: doctest failed"),
            ("<!-- skip -->\n```sh\nx\n```\n", "doc.md:2: say why a block is skipped"),
            ("<!-- requires: mysql -->\n```sh\nx\n```\n", "doc.md:2: unknown requirement 'mysql'"),
            ("<!-- fragment -->\n```python\nif x\n```\n", "expected ':'"),
        ],
    )
    def test_a_wrong_snippet_fails(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        request: pytest.FixtureRequest,
        text: str,
        message: str,
    ) -> None:
        with pytest.raises((AssertionError, SyntaxError), match=re.escape(message)):
            self.run(text, tmp_path, monkeypatch, request)
