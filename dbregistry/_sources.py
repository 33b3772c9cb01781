"""Where configuration values come from, and which source wins.

Each source is a `Layer`: plain data plus a way to say where any of its values
came from. Environment variables and ``.env`` files are read by
pydantic-settings (``DBREGISTRY_`` prefix, ``__`` nesting, JSON for mappings;
see `envsettings`); the conventional ``DATABASE_URL`` / ``<NAME>_DATABASE_URL`` variables are one
small source of their own. `PRECEDENCE` states the order, once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Final

from ._envsettings import ENV_PREFIX, NESTING, read_prefixed
from ._schema import NAME_PATTERN
from ._yamlfile import PathKey, YamlDocument, line_of

__all__ = [
    "PRECEDENCE",
    "Layer",
    "Merged",
    "Origin",
    "Origins",
    "Precedence",
    "collect_layers",
    "default_database",
    "env_var_for",
    "merge",
    "url_variable",
]


class Precedence(IntEnum):
    """The tier of a source, as an `Origin` reports it; a higher one wins field by field.

    The order of every source, within tiers too, is `PRECEDENCE`.
    """

    DEFAULT = 0
    YAML = 1
    PROFILE = 2
    SECRET_FILE = 3
    DOTENV = 4
    ENVIRON = 5
    OVERRIDES = 6


# Every source, highest first: the one statement of precedence (as pydantic-settings'
# settings_customise_sources returns a tuple). In the environment and in the .env file,
# the specific DBREGISTRY_* variables beat the conventional DATABASE_URL / <NAME>_DATABASE_URL.
# Secret files (password_file) are applied after the merge (`_loader`), replacing a password
# only where the URL came from a lower source; defaults are what validation leaves unset.
PRECEDENCE: Final[tuple[tuple[Precedence, str], ...]] = (
    (Precedence.OVERRIDES, "overrides="),
    (Precedence.ENVIRON, "DBREGISTRY_*"),
    (Precedence.ENVIRON, "*DATABASE_URL"),
    (Precedence.DOTENV, "DBREGISTRY_*"),
    (Precedence.DOTENV, "*DATABASE_URL"),
    (Precedence.SECRET_FILE, "password_file"),
    (Precedence.PROFILE, "profile"),
    (Precedence.YAML, "file"),
    (Precedence.DEFAULT, "default"),
)
_RANK: Final = {source: len(PRECEDENCE) - i for i, source in enumerate(PRECEDENCE)}


@dataclass(frozen=True, slots=True)
class Origin:
    """Where one value came from: a file and line, an environment variable, or code."""

    precedence: Precedence
    source: str
    file: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        if self.file is not None:
            return f"{self.file}:{self.line}" if self.line is not None else self.file
        return self.source


DEFAULT_ORIGIN = Origin(Precedence.DEFAULT, "default")


@dataclass(slots=True)
class Layer:
    """The values one source supplies, and where each of them came from."""

    precedence: Precedence
    data: dict[str, Any]
    origin_of: Callable[[PathKey], Origin]
    name: str = ""
    # What the source found wrong in itself while reading: (path, message), reported at origin_of(path).
    problems: list[tuple[PathKey, str]] = field(default_factory=list)
    # Which source of its tier (the second item of a `PRECEDENCE` entry); the tier's first by default.
    kind: str = ""

    def __post_init__(self) -> None:
        if not self.kind:
            self.kind = next(kind for tier, kind in PRECEDENCE if tier is self.precedence)

    @property
    def rank(self) -> int:
        """Its place in `PRECEDENCE`: a layer of higher rank wins."""
        return _RANK[self.precedence, self.kind]


@dataclass(slots=True)
class Origins:
    """Where each merged value came from, kept after the merged data itself is gone.

    A layer is recorded at the top of what it put in place (a whole subtree when
    nothing lower had that mapping), so a loaded file of 10,000 databases needs a
    handful of entries here; a path's origin is its own entry's, else its
    closest recorded parent's, asked of that layer's ``origin_of``.
    """

    setters: dict[PathKey, Callable[[PathKey], Origin]] = field(default_factory=dict)

    def of(self, path: PathKey) -> Origin:
        """The origin of the value at ``path`` (or of its closest set parent)."""
        probe = path
        while probe:
            origin_of = self.setters.get(probe)
            if origin_of is not None:
                return origin_of(path)
            probe = probe[:-1]
        return DEFAULT_ORIGIN


@dataclass(slots=True)
class Merged:
    """The merged data, and the origin of every path in it.

    The data shares its values with the layers: a mapping of a layer is copied
    only when a higher layer merges into it (copy on write, see ``_own``), so
    no layer's data is ever changed and one large layer is never copied at all.
    """

    data: dict[str, Any] = field(default_factory=dict)
    origins: Origins = field(default_factory=Origins)
    # ids of the mappings in `data` that were copied here and may be changed in place.
    # Every layer's data outlives the merge, so no id here can be reused by one of theirs.
    _owned: set[int] = field(default_factory=set)

    def origin(self, path: PathKey) -> Origin:
        """The origin of the value at ``path`` (or of its closest set parent)."""
        return self.origins.of(path)

    def set(self, path: tuple[str, ...], value: Any) -> None:
        """Set the value at ``path`` (whose parents are mappings), copying any shared parent first."""
        target = self.data
        for key in path[:-1]:
            target = self._own(target, key)
        target[path[-1]] = value

    def _own(self, parent: dict[str, Any], key: str) -> dict[str, Any]:
        child: dict[str, Any] = parent[key]
        if id(child) not in self._owned:
            child = parent[key] = dict(child)
            self._owned.add(id(child))
        return child


def merge(layers: list[Layer]) -> Merged:
    """Merge layers lowest first; mappings merge key by key, anything else is replaced."""
    merged = Merged()
    merged._owned.add(id(merged.data))
    for layer in sorted(layers, key=lambda item: item.rank):
        _merge_into(merged, merged.data, layer.data, layer.origin_of, ())
    return merged


_FIELD_DEPTH = 3  # databases.<name>.<field>


def _merge_into(
    merged: Merged,
    target: dict[str, Any],
    source: Mapping[str, Any],
    origin_of: Callable[[PathKey], Origin],
    path: PathKey,
) -> None:
    setters = merged.origins.setters
    for key, value in source.items():
        here = (*path, key)
        if value is None and len(here) >= _FIELD_DEPTH:
            # `pool_size: null` in an overlay unsets what a lower layer set.
            target.pop(key, None)
            setters[here] = origin_of
            continue
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            # The mapping keeps the origin it has (found through its parents); only
            # what this layer puts inside it is recorded.
            _merge_into(merged, merged._own(target, key), value, origin_of, here)
            continue
        target[key] = _plain(value)
        depth = len(here)
        for stale in [p for p in setters if len(p) > depth and p[:depth] == here]:
            del setters[stale]
        setters[here] = origin_of


def _plain(value: Any) -> Any:
    """``value`` as it is, unless it is a mapping that is not a dict (given in code): then as dicts."""
    if isinstance(value, dict) or not isinstance(value, Mapping):
        return value
    return {k: _plain(v) for k, v in value.items()}


# -- YAML -------------------------------------------------------------------------


def yaml_layers(document: YamlDocument, profile: str | None) -> list[Layer]:
    """The file's base, and the selected profile's overlay when there is one."""
    layers = [base_layer(document)]
    profiles = document.data.get("profiles")
    if profile is not None and isinstance(profiles, dict) and isinstance(profiles.get(profile), dict):
        layers.append(profile_layer(document, profile, Precedence.PROFILE))
    return layers


def base_layer(document: YamlDocument) -> Layer:
    """The file without its profiles."""
    base = {k: v for k, v in document.data.items() if k != "profiles"}
    return Layer(Precedence.YAML, base, document_origin(document, Precedence.YAML), document.file)


def profile_layer(document: YamlDocument, profile: str, precedence: Precedence) -> Layer:
    """One profile's overlay as a layer whose origins point into the profile's lines."""
    in_file = document_origin(document, precedence)

    def origin(path: PathKey) -> Origin:
        return in_file(("profiles", profile, *path))

    overlay = document.data["profiles"][profile]
    # Other keys are reported by the loader's profile check, once.
    data = {key: overlay[key] for key in ("databases", "default") if key in overlay}
    return Layer(precedence, data, origin, f"{document.file} (profile {profile})")


def document_origin(document: YamlDocument, precedence: Precedence) -> Callable[[PathKey], Origin]:
    """Where a path of the document was written: file and line, or just the source for a mapping."""

    file = document.file
    if not document.from_file:
        whole = Origin(precedence, file)
        return lambda path: whole
    lines, links = document.lines, document.links  # not the document: its data need not outlive the load

    def origin(path: PathKey) -> Origin:
        return Origin(precedence, file, file, line_of(lines, path, links))

    return origin


# -- environment variables and .env files ------------------------------------------


def env_var_for(path: PathKey) -> str:
    """``("databases", "replica", "pool_size")`` -> ``DBREGISTRY_DATABASES__REPLICA__POOL_SIZE``."""
    return ENV_PREFIX + NESTING.join(str(p) for p in path).upper()


def url_variable(name: str) -> str:
    """``read-replica`` -> ``READ_REPLICA_DATABASE_URL``."""
    return re.sub(r"[^A-Za-z0-9]", "_", name).upper() + "_DATABASE_URL"


def prefixed_env_layer(environ: Mapping[str, str], precedence: Precedence, label: str, declared: list[str]) -> Layer:
    """``DBREGISTRY_*`` variables, read by pydantic-settings.

    Variable names are case-insensitive, so a database is matched to the
    declared name of any case (``..._REPORTING__...`` sets ``Reporting``).
    """
    names = {k.upper(): k for k in environ if k.upper().startswith(ENV_PREFIX)}
    data: dict[str, Any] = {}
    if names:
        data = read_prefixed(environ)
    databases = data.get("databases")
    if isinstance(databases, dict):
        casing = {name.lower(): name for name in declared}
        data["databases"] = {casing.get(k.lower(), k): v for k, v in databases.items()}

    def origin(path: PathKey) -> Origin:
        # The variable that set the path, else one that set something below it (a database
        # declared only by DBREGISTRY_DATABASES__X__POOL_SIZE is missing its url "there").
        for end in range(len(path), 0, -1):
            exact = env_var_for(path[:end])
            variable = names.get(exact) or next((n for u, n in names.items() if u.startswith(exact + NESTING)), None)
            if variable is not None:
                return Origin(precedence, variable + label)
        return Origin(precedence, ENV_PREFIX + "*" + label)

    return Layer(precedence, data, origin, f"environment{label}")


def default_database(names: Collection[str], explicit: str | None) -> str | None:
    """The default database: the one ``default:`` / ``DBREGISTRY_DEFAULT`` names, else ``primary``, else the only one.

    The one place the default is inferred; None when several are declared and none is named.
    """
    if explicit is not None:
        return explicit
    if "primary" in names:
        return "primary"
    return next(iter(names)) if len(names) == 1 else None


def url_env_layer(
    environ: Mapping[str, str],
    precedence: Precedence,
    label: str,
    declared: list[str],
    explicit_default: str | None,
    *,
    declaration: bool,
    consumed: Collection[str] = (),
) -> Layer:
    """``DATABASE_URL`` for the default database, ``<NAME>_DATABASE_URL`` for declared ones.

    ``declaration`` says whether a file, a mapping or ``overrides=`` declares any
    database. Without one, ``DATABASE_URL`` declares the default database
    (``primary``, or the name ``DBREGISTRY_DEFAULT`` gives) beside any that
    ``DBREGISTRY_*`` variables declare. With one, it is the URL of the default
    database; when there is none, a set ``DATABASE_URL`` is a problem of this
    layer, unless the file's ``${DATABASE_URL}`` already used it (``consumed``).
    No database is invented from ``<NAME>_DATABASE_URL``.
    """
    databases: dict[str, Any] = {}
    variables: dict[str, str] = {}
    for name in declared:
        variable = url_variable(name)
        if variable in environ and variable != "DATABASE_URL":
            databases[name] = {"url": environ[variable]}
            variables[name] = variable
    problems: list[tuple[PathKey, str]] = []
    data: dict[str, Any] = {}
    if "DATABASE_URL" in environ:
        if not declaration:
            # A DBREGISTRY_DEFAULT that cannot be a name is reported by validation; it must not
            # become a database (its text would then be a field path, and may hold a password).
            named = explicit_default is not None and re.fullmatch(NAME_PATTERN, explicit_default) is not None
            target: str | None = explicit_default if named else "primary"
            if explicit_default is None:
                data["default"] = target
        else:
            target = default_database(declared, explicit_default)
            if target is None and "DATABASE_URL" not in consumed:
                problems.append(((), _no_default_for_database_url(declared)))
            # A default that names no declared database is reported by validation; DATABASE_URL
            # must not quietly declare a database under a mistyped name.
            target = target if target in declared else None
        if target is not None and target not in databases:  # REPLICA_DATABASE_URL beats DATABASE_URL
            databases[target] = {"url": environ["DATABASE_URL"]}
            variables[target] = "DATABASE_URL"
    if databases:
        data["databases"] = databases

    def origin(path: PathKey) -> Origin:
        name = str(path[1]) if len(path) > 1 else ""
        return Origin(precedence, variables.get(name, "DATABASE_URL") + label)

    return Layer(precedence, data, origin, f"environment{label}", problems, kind="*DATABASE_URL")


def _no_default_for_database_url(declared: list[str]) -> str:
    return (
        f"is the default database's URL, but none of the declared {', '.join(declared)} is the default; "
        "name the one it is for with `default: <name>` or DBREGISTRY_DEFAULT=<name>"
    )


def overrides_layer(overrides: Mapping[str, Any]) -> Layer:
    return Layer(
        Precedence.OVERRIDES, dict(overrides), lambda _path: Origin(Precedence.OVERRIDES, "overrides"), "overrides"
    )


def collect_layers(
    *,
    document: YamlDocument | None,
    profile: str | None,
    dotenv: Mapping[str, str],
    dotenv_label: str,
    environ: Mapping[str, str],
    overrides: Mapping[str, Any] | None,
    consumed: Collection[str] = (),
) -> list[Layer]:
    """Every layer, lowest first, in the order `PRECEDENCE` states.

    ``consumed``: the variables the file's ``${...}`` substituted (see `url_env_layer`).
    """
    layers: list[Layer] = []
    if document is not None:
        layers += yaml_layers(document, profile)
    if overrides:
        layers.append(overrides_layer(overrides))
    written, _ = _declared(layers)
    declaration = any(layer.data.get("databases") is not None for layer in layers)
    layers.append(prefixed_env_layer(dotenv, Precedence.DOTENV, dotenv_label, written))
    layers.append(prefixed_env_layer(environ, Precedence.ENVIRON, "", written))
    layers.sort(key=lambda layer: layer.rank)
    # The default the highest layer names decides which database DATABASE_URL is for.
    declared, explicit_default = _declared(layers)
    for env, precedence, label in ((dotenv, Precedence.DOTENV, dotenv_label), (environ, Precedence.ENVIRON, "")):
        layers.append(
            url_env_layer(
                env, precedence, label, declared, explicit_default, declaration=declaration, consumed=consumed
            )
        )
    layers.sort(key=lambda layer: layer.rank)
    return layers


def _declared(layers: list[Layer]) -> tuple[list[str], str | None]:
    """Every database name the layers declare, and the default the highest of them names (if any)."""
    names: dict[str, None] = {}
    default: str | None = None
    for layer in layers:
        databases = layer.data.get("databases")
        if isinstance(databases, Mapping):
            names.update(dict.fromkeys(str(k) for k in databases))
        value = layer.data.get("default")
        if isinstance(value, str):
            default = value
    return list(names), default
