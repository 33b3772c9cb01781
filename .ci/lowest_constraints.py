"""Print a pip constraints file pinning every runtime requirement to its lower bound.

Reads ``pyproject.toml``'s ``dependencies`` and every optional-dependency group except
``dev`` (test tools stay newest); ``name[extra]>=X`` becomes ``name==X``, and psycopg's
``binary`` extra also pins ``psycopg-binary`` (constraints cannot carry extras).
"""

import re
import sys
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
requirements = list(project["dependencies"])
for group, items in project.get("optional-dependencies", {}).items():
    if group != "dev":
        requirements += items

pins: dict[str, str] = {}
for requirement in requirements:
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[([^\]]*)\])?\s*>=\s*([0-9][^,;\s]*).*", requirement)
    if match is None:
        continue  # a self-reference such as dbregistry[postgres], or no lower bound
    name, extras, version = match.groups()
    pins[name.lower()] = version
    if name.lower() == "psycopg" and extras and "binary" in extras:
        pins["psycopg-binary"] = version
sys.stdout.write("".join(f"{name}=={version}\n" for name, version in sorted(pins.items())))
