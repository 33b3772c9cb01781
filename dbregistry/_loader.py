"""From sources to a validated `RegistryConfig`, with every problem found in one pass.

The steps: pick the profile, substitute ``${...}`` in the file's values, merge
the layers (in the order `_sources.PRECEDENCE` states), apply secret
files, validate every database with pydantic, run the cross-field `rules` and
the checks across databases (`_pairs`), and validate the profiles that were not
selected. Problems name the field path and the file and line, or the variable,
their value came from.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails
from sqlalchemy.engine import URL

from ._envsettings import ENV_PREFIX, NESTING, NotJson, read_env_file
from ._errors import ConfigError, Problem, closest, redact, unknown_name_message
from ._files import FileReadError, read_secret_file
from ._interpolation import Budget, interpolate_tree, referenced_variables, substitutions
from ._pairs import Where, check_pairs
from ._rules import check
from ._schema import NAME_PATTERN, TOP_LEVEL_KEYS, DatabaseConfig, RegistryConfig, SessionConfig, field_names
from ._secrets import NotUtf8Error, looks_like_credentials, shown_name
from ._sources import (
    Merged,
    Origin,
    Origins,
    Precedence,
    base_layer,
    collect_layers,
    default_database,
    document_origin,
    env_var_for,
    merge,
    profile_layer,
    url_variable,
)
from ._urls import parse_url
from ._yamlfile import PathKey, YamlDocument

__all__ = ["LoadedConfig", "load_config", "select_profile"]

_ALIASES: Final = {name: info.alias for name, info in DatabaseConfig.model_fields.items() if info.alias}

_NAME = re.compile(NAME_PATTERN)
_BOOL = TypeAdapter(bool)
_PROFILE_KEYS = ("databases", "default")
# Values never echoed in a message: they are, or may hold, credentials.
_SECRET_FIELDS = frozenset({"url", "direct_url", "password_file", "connect_args", "driver_args"})


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A validated configuration and where each of its values came from."""

    config: RegistryConfig
    origins: Origins
    source: str
    profile: str | None = None

    def origin(self, path: PathKey) -> Origin:
        """Where ``path`` was written; a field written under its alias (``poolclass:``) is found there."""
        origin = self.origins.of(path)
        if len(path) == 3 and path[0] == "databases":
            alias = _ALIASES.get(str(path[2]))
            if alias is not None and origin == self.origins.of(path[:2]):
                # Not found under its field name: the lookup fell back to the database's own line.
                origin = self.origins.of((*path[:2], alias))
        return origin


@dataclass(slots=True)
class _Collector:
    problems: list[Problem] = field(default_factory=list)
    # Where a problem with no origin of its own (``databases`` missing altogether) is reported.
    fallback: Origin | None = None
    # Paths whose ``${...}`` failed: their value is None, so validation would repeat the problem.
    unresolved: set[str] = field(default_factory=set)

    def add(self, path: PathKey, message: str, origin: Origin, *, unresolved: bool = False) -> None:
        # A key is user input too: one that may hold a password is described in the path.
        dotted = ".".join("<not shown>" if looks_like_credentials(str(p)) else _printable(p) for p in path)
        if dotted in self.unresolved:
            return
        if unresolved:
            self.unresolved.add(dotted)
        if origin.precedence == Precedence.DEFAULT and self.fallback is not None:
            origin = self.fallback
        self.problems.append(Problem(dotted, message, source=origin.source, file=origin.file, line=origin.line))


def _printable(key: object) -> str:
    """A key as a path shows it: one with a newline or another control character escaped, as Python would."""
    text = str(key)
    return text if text.isprintable() else repr(text)[1:-1]


def load_config(
    *,
    document: YamlDocument | None,
    environ: Mapping[str, str] | None = None,
    env_file: str | os.PathLike[str] | None = None,
    env_file_required: bool = True,
    profile: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> LoadedConfig:
    """Load, merge and validate; `ConfigError` with every problem otherwise."""
    environ = os.environ if environ is None else environ
    source = document.file if document is not None else "environment"
    if document is None:
        fallback = Origin(Precedence.ENVIRON, source)
    else:
        fallback = Origin(Precedence.YAML, source, source if document.from_file else None)
    found = _Collector(fallback=fallback)
    dotenv: dict[str, str] = {}
    dotenv_label = ""
    if env_file is not None:
        dotenv_label = f" (from {os.fspath(env_file)})"
        if Path(env_file).is_file():
            try:
                dotenv = read_env_file(env_file)
            except NotUtf8Error as e:
                file = os.fspath(env_file)
                found.add((), f"env file {file} {e}", Origin(Precedence.DOTENV, file, file, e.line))
            except FileReadError as e:
                found.add((), f"env file {os.fspath(env_file)} {e}", Origin(Precedence.DOTENV, os.fspath(env_file)))
        elif env_file_required:
            found.add(
                (),
                f"env file {os.fspath(env_file)} not found (working directory: {os.getcwd()})",
                Origin(Precedence.DOTENV, os.fspath(env_file)),
            )
    _check_prefixed_variables(dotenv, Precedence.DOTENV, dotenv_label, found)
    _check_prefixed_variables(environ, Precedence.ENVIRON, "", found)
    variables = {**dotenv, **environ}
    selected = None
    budget = Budget()  # one bound for every substitution of this load, other profiles included
    consumed: set[str] = set()
    written: dict[str, Any] = {}
    if document is not None:
        _check_profiles_section(document, found)
        selected = select_profile(document, profile, variables, found)
        written = _applied(document, selected)
        consumed = referenced_variables(written)
        document = _interpolated(document, selected, variables, found, budget)
    layers = collect_layers(
        document=document,
        profile=selected,
        dotenv=dotenv,
        dotenv_label=dotenv_label,
        environ=environ,
        overrides=overrides,
        consumed=consumed,
    )
    for layer in layers:
        for path, message in layer.problems:
            found.add(path, message, layer.origin_of(path))
    merged = merge(layers)
    own_passwords = _apply_password_files(merged, found)
    config = _validate(merged, found, document is not None, _fallbacks(written, selected, variables, merged))
    if config is not None:
        for name, url_field in own_passwords:
            # Connections read password_file again (dbregistry._credentials): not for a URL whose own password won.
            config.databases[name]._skip_password_file(url_field)
    if document is not None:
        _validate_other_profiles(document, selected, variables, found, budget)
    if found.problems or config is None:
        raise ConfigError(_unique(found.problems), origin=source)
    return LoadedConfig(config=config, origins=merged.origins, source=source, profile=selected)


# DBREGISTRY_<HEAD>...: what the settings read (the configuration's top level), and what
# chooses the file and the profile.
_VARIABLE_HEADS = ("DATABASES", "DEFAULT", "LOG_POOL_EVENTS", "SESSION", "CONFIG", "PROFILE")


def _check_prefixed_variables(env: Mapping[str, str], precedence: Precedence, label: str, found: _Collector) -> None:
    """A ``DBREGISTRY_`` variable that nothing reads is a typo, not someone else's variable."""
    for name in env:
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX):
            continue
        head, _, rest = upper.removeprefix(ENV_PREFIX).partition(NESTING)
        if head in _VARIABLE_HEADS:
            continue
        hint = closest(head, _VARIABLE_HEADS)
        if hint is not None:
            message = f"unknown variable; did you mean {ENV_PREFIX}{hint}{NESTING + rest if rest else ''}?"
        else:
            message = (
                f"unknown variable; dbregistry reads {ENV_PREFIX}DATABASES__<NAME>__<FIELD>, {ENV_PREFIX}DEFAULT, "
                f"{ENV_PREFIX}LOG_POOL_EVENTS, {ENV_PREFIX}SESSION__<OPTION>, {ENV_PREFIX}CONFIG and {ENV_PREFIX}PROFILE"
            )
        found.add((), message, Origin(precedence, name + label))


def _unique(problems: list[Problem]) -> list[Problem]:
    return list(dict.fromkeys(problems))


# -- profiles ---------------------------------------------------------------------


def _profiles(document: YamlDocument) -> dict[str, Any]:
    profiles = document.data.get("profiles")
    return profiles if isinstance(profiles, dict) else {}


def select_profile(
    document: YamlDocument, explicit: str | None, variables: Mapping[str, str], found: _Collector
) -> str | None:
    """``profile=``, else ``DBREGISTRY_PROFILE``, else ``APP_ENV``.

    A profile the file does not have is an error, except one that came from
    ``APP_ENV`` when the file declares no profiles at all: that variable is
    shared with the rest of the application and often set for other reasons.
    """
    profiles = _profiles(document)
    for value, how in (
        (explicit, "profile="),
        (variables.get("DBREGISTRY_PROFILE"), "DBREGISTRY_PROFILE"),
        (variables.get("APP_ENV"), "APP_ENV"),
    ):
        if not value:
            continue
        if value in profiles:
            return value
        if how == "APP_ENV" and not profiles:
            return None
        has = ", ".join(profiles) if profiles else "none"
        hint = closest(value, profiles)
        did_you_mean = f"did you mean {hint!r}? " if hint else ""
        origin = Origin(Precedence.ENVIRON, how) if how != "profile=" else Origin(Precedence.OVERRIDES, how)
        found.add(
            ("profiles",), f"profile {value!r} (from {how}) is not in the file; {did_you_mean}profiles: {has}", origin
        )
        return None
    return None


def _check_profiles_section(document: YamlDocument, found: _Collector) -> None:
    profiles = document.data.get("profiles")
    if profiles is None:
        return
    origin = document_origin(document, Precedence.YAML)
    if not isinstance(profiles, dict):
        found.add(("profiles",), "must be a mapping of profile name to overlay", origin(("profiles",)))
        return
    for name, overlay in profiles.items():
        path: PathKey = ("profiles", name)
        if not isinstance(overlay, dict):
            found.add(path, "must be a mapping with `databases:` (and optionally `default:`)", origin(path))
            continue
        for key in overlay:
            if key not in _PROFILE_KEYS:
                hint = closest(key, _PROFILE_KEYS)
                tail = f"did you mean {hint!r}?" if hint else f"allowed: {', '.join(_PROFILE_KEYS)}"
                found.add((*path, key), f"unknown key in a profile; {tail}", origin((*path, key)))


def _interpolated(
    document: YamlDocument,
    selected: str | None,
    variables: Mapping[str, str],
    found: _Collector | None,
    budget: Budget | None = None,
) -> YamlDocument:
    """The document with ``${...}`` substituted in its base and in the selected profile."""
    origin = document_origin(document, Precedence.YAML)

    def on_error(path: PathKey, message: str) -> None:
        if found is not None:
            found.add(_shown_path(path), message, origin(path), unresolved=True)

    data = {k: v for k, v in document.data.items() if k != "profiles"}
    budget = Budget() if budget is None else budget
    data = interpolate_tree(data, variables, on_error, budget=budget)
    profiles = _profiles(document)
    if profiles:
        data["profiles"] = dict(profiles)
        if selected is not None:
            data["profiles"][selected] = interpolate_tree(
                profiles[selected], variables, on_error, ("profiles", selected), budget
            )
    return replace(document, data=data)


def _applied(document: YamlDocument, selected: str | None) -> dict[str, Any]:
    """The parts of the document that are applied: its base and the selected profile."""
    data = {k: v for k, v in document.data.items() if k != "profiles"}
    if selected is not None:
        data["profiles"] = {selected: _profiles(document).get(selected)}
    return data


def _shown_path(path: PathKey) -> PathKey:
    """A selected profile's values are reported at the path they set (``databases.x.y``)."""
    return path[2:] if len(path) > 2 and path[0] == "profiles" else path


def _validate_other_profiles(
    document: YamlDocument, selected: str | None, variables: Mapping[str, str], found: _Collector, budget: Budget
) -> None:
    """A typo in the production overlay is found on a developer's laptop too."""
    for name, overlay in _profiles(document).items():
        if name == selected or not isinstance(overlay, dict):
            continue
        unresolved: set[PathKey] = set()

        def skip(path: PathKey, _message: str, unresolved: set[PathKey] = unresolved) -> None:
            unresolved.add(path)  # an unset variable of another environment is not an error here

        if budget.exhausted:
            return  # reported where the base or the selected profile passed the bound
        resolved = interpolate_tree(overlay, variables, skip, budget=budget)
        trial = replace(document, data={**document.data, "profiles": {**_profiles(document), name: resolved}})
        merged = merge([base_layer(document), profile_layer(trial, name, Precedence.PROFILE)])
        local = _Collector()
        _validate(merged, local, True, local=False)  # this machine's files are not another environment's
        for problem in local.problems:
            path = tuple(problem.path.split("."))
            if merged.origin(path).precedence != Precedence.PROFILE or path in unresolved:
                continue
            found.problems.append(replace(problem, path=f"profiles.{name}.{problem.path}"))


# -- secret files -----------------------------------------------------------------


def _apply_password_files(merged: Merged, found: _Collector) -> set[tuple[str, str]]:
    """Put each ``password_file``'s content into its database's ``url`` and ``direct_url``.

    It beats a password written in the file's ``url``; a ``url`` that came from a
    higher source (the environment, overrides) with its own password keeps it, and
    so does a ``direct_url`` with its own password: those (name, field) pairs
    are returned. A relative path is relative to the folder of the YAML file
    that declared it (and is stored resolved); one from the environment or
    code, to the working directory. The file is read here
    to report a missing or unreadable one at load, and again for every new
    connection (`dbregistry._credentials`).
    """
    own: set[tuple[str, str]] = set()
    databases = merged.data.get("databases")
    if not isinstance(databases, dict):
        return own
    for name, entry in databases.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("password_file"), str | os.PathLike):
            continue
        path: PathKey = ("databases", name, "password_file")
        origin = merged.origin(path)
        secret_path = os.fspath(entry["password_file"])
        if origin.file is not None and "\x00" not in secret_path:
            secret_path = os.path.join(os.path.dirname(origin.file), secret_path)
        try:
            password = read_secret_file(secret_path)
        except NotUtf8Error as e:
            found.add(path, f"password file {secret_path} {e}", origin)
            continue
        except FileReadError as e:
            what = "does not exist" if e.kind == "missing" else str(e)
            shown = secret_path.replace("\x00", "\\x00")
            found.add(path, f"password file {shown} {what}", origin)
            continue
        if not password:
            # Refused at load like a missing file: an empty password reaches the server as no password.
            found.add(path, f"password file {secret_path} is empty; write the password into it", origin)
            continue
        if origin.file is not None and secret_path != entry["password_file"]:
            merged.set(
                ("databases", name, "password_file"), secret_path
            )  # connections read it again, from any working directory
        for url_field in ("url", "direct_url"):
            if _set_password(merged, name, url_field, password):
                own.add((name, url_field))
    return own


def _set_password(merged: Merged, name: str, url_field: str, password: str) -> bool:
    """Whether the URL at ``url_field`` keeps its own password (it came from a higher source)."""
    entry = merged.data["databases"][name]
    raw_url = entry.get(url_field)
    try:
        url = parse_url(raw_url) if isinstance(raw_url, str) else raw_url
    except ValueError:
        return False  # validation reports the URL itself
    if not isinstance(url, URL):
        return False
    url_origin = merged.origin(("databases", name, url_field))
    # A direct_url is a second address that may carry credentials of its own (a migration
    # role, a provider's direct endpoint): its own password always wins.
    if url.password is not None and (url_field == "direct_url" or url_origin.precedence > Precedence.SECRET_FILE):
        return True
    merged.set(("databases", name, url_field), url.set(password=password))
    return False


# -- validation -------------------------------------------------------------------


def _fallbacks(
    written: dict[str, Any], selected: str | None, variables: Mapping[str, str], merged: Merged
) -> Callable[[PathKey], list[str]]:
    """The variables whose ``${VAR:-default}`` fell back to the default, for a value still as the file wrote it."""

    def fell_back(path: PathKey) -> list[str]:
        if merged.origin(path).precedence not in (Precedence.YAML, Precedence.PROFILE):
            return []
        value = _at(written.get("profiles", {}).get(selected), path) if selected is not None else None
        value = value if value is not None else _at(written, path)
        if not isinstance(value, str):
            return []
        return [
            name
            for name, op in substitutions(value)
            if (op == ":-" and not variables.get(name)) or (op == "-" and name not in variables)
        ]

    return fell_back


def _at(data: Any, path: PathKey) -> Any:
    for key in path:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def _validate(
    merged: Merged,
    found: _Collector,
    from_file: bool,
    fell_back: Callable[[PathKey], list[str]] | None = None,
    *,
    local: bool = True,
) -> RegistryConfig | None:
    data = merged.data
    origin = merged.origin
    for key in data:
        # A profile's own unknown keys are reported once, by _check_profiles_section.
        if key not in TOP_LEVEL_KEYS and origin((key,)).precedence != Precedence.PROFILE:
            found.add((key,), _unknown_key(key, TOP_LEVEL_KEYS), origin((key,)))
    raw = data.get("databases")
    if raw is None:
        how = "add a `databases:` mapping" if from_file else "set DATABASE_URL or pass a configuration file"
        found.add(("databases",), f"no database is declared; {how}", origin(("databases",)))
        return None
    if not isinstance(raw, dict):
        expected = "a mapping of database name to settings"
        message = _json_problem(raw, expected) if isinstance(raw, NotJson) else f"must be {expected}"
        found.add(("databases",), message, origin(("databases",)))
        return None
    if not raw:
        found.add(("databases",), "declares no database", origin(("databases",)))
    databases: dict[str, DatabaseConfig] = {}
    seen: dict[str, str] = {}
    for name, entry in raw.items():
        path: PathKey = ("databases", name)
        _check_name(name, seen, found, origin(path))
        if not isinstance(entry, dict):
            found.add(path, _not_a_database(entry, path), origin(path))
            continue
        # pydantic's lax mode reads true as 1: a flag written where a number belongs is a mistake.
        flags = [key for key in _NUMBER_FIELDS if isinstance(entry.get(key), bool)]
        for key in flags:
            found.add((*path, key), f"must be {_NUMBER_FIELDS[key]}, got {entry[key]!r}", origin((*path, key)))
        # An integer past int-to-text's digit limit fails every later message and `show` with ValueError.
        huge = [key for key, value in entry.items() if type(value) is int and abs(value) >= _LARGEST_NUMBER]
        for key in huge:
            found.add((*path, key), "is a number too long for any setting (over 18 digits)", origin((*path, key)))
        flags += huge
        for key in ("pool_class", "poolclass"):
            # `pool_class: null` is YAML's null, which would silently mean the default QueuePool.
            if key in entry and entry[key] is None and origin((*path, key)).file is not None:
                found.add((*path, key), _NULL_POOL_CLASS, origin((*path, key)))
        try:
            databases[name] = DatabaseConfig.model_validate({k: v for k, v in entry.items() if k not in flags})
        except ValidationError as e:
            for loc, message in _describe_errors(entry, e.errors()).items():
                where = (*path, *loc)
                found.add(where, message, origin(where))
    _check_across_fields(databases, list(raw), Where(origin, fell_back or (lambda _path: [])), found, local=local)
    default = data.get("default")
    if default is not None and not isinstance(default, str):
        found.add(("default",), f"must be a database name, got {type(default).__name__}", origin(("default",)))
        default = None
    elif isinstance(default, str) and default not in raw:
        found.add(("default",), unknown_name_message(default, list(raw)), origin(("default",)))
    session = _validate_session(data.get("session"), origin, found)
    if found.problems or session is None:
        return None
    default = default_database(list(databases), default)
    try:
        log_pool_events = _BOOL.validate_python(data.get("log_pool_events", False))
    except ValidationError:
        found.add(("log_pool_events",), "must be true or false", origin(("log_pool_events",)))
        return None
    return RegistryConfig(default=default, databases=databases, log_pool_events=log_pool_events, session=session)


def _validate_session(value: Any, origin: Any, found: _Collector) -> SessionConfig | None:
    """The top-level ``session:`` defaults; its problems are reported like a database's."""
    if value is None:
        return SessionConfig()
    try:
        return SessionConfig.model_validate(value)
    except ValidationError as e:
        errors = e.errors()
        for error in errors:
            error["loc"] = ("session", *error["loc"])
        for loc, message in _describe_errors({"session": value}, errors).items():
            found.add(loc, message, origin(loc))
        return None


def _check_across_fields(
    databases: dict[str, DatabaseConfig], names: list[str], where: Where, found: _Collector, *, local: bool = True
) -> None:
    """The `rules` of each database, then the `_pairs` checks of those whose replica_of holds.

    ``local=False`` skips the rules that read this machine's files (a profile not selected here).
    """
    declared = {name: databases.get(name) for name in names}
    broken_links: set[str] = set()
    for name, db in databases.items():
        for field_name, message in check(name, db, declared, local=local):
            # A rule may name a setting inside a field: connect_args.sslmode.
            path: PathKey = ("databases", name, *field_name.split("."))
            set_here = field_name.partition(".")[0] in db.model_fields_set
            found.add(path, message, where.origin(path if set_here else path[:2]))
            if field_name == "replica_of":
                broken_links.add(name)
    paired = {name: db for name, db in databases.items() if name not in broken_links}
    for pair_path, message in check_pairs(paired, where):
        found.add(pair_path, message, where.origin(pair_path))


def _check_name(name: object, seen: dict[str, str], found: _Collector, where: Origin) -> None:
    """A valid name, and one that its ``<NAME>_DATABASE_URL`` variable tells apart from the others."""
    path: PathKey = ("databases", str(name))
    # fullmatch: the pattern's `$` would let a trailing newline through.
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        found.add(path, "a database name starts with a letter and has only letters, digits, '_' and '-'", where)
        return
    # One <NAME>_DATABASE_URL variable addresses each name: case and '-' vs '_' are lost in it.
    variable = url_variable(name)
    other = seen.setdefault(variable, name)
    if other == name:
        return
    if other.lower() == name.lower():
        message = (
            f"duplicate database name (as {other!r}); names are case-insensitive because environment variables are"
        )
    else:
        message = (
            f"{other!r} and {name!r} would both be set by {variable}; "
            "names that differ only in '-' and '_' cannot be told apart there: rename one"
        )
    found.add(path, message, where)


def _unknown_key(key: str, known: tuple[str, ...] | list[str]) -> str:
    hint = closest(key, known)
    if hint:
        return f"unknown field; did you mean {hint!r}?"
    return f"unknown field; allowed: {', '.join(known)}"


_EXPECTED = {
    "int_parsing": "a whole number",
    "int_type": "a whole number",
    "int_from_float": "a whole number",
    "float_parsing": "a number",
    "float_type": "a number",
    "finite_number": "a finite number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "dict_type": "a mapping",
    "list_type": "a list",
    "path_type": "a file path",
}


_NULL_POOL_CLASS = (
    "has no value (YAML reads null and ~ as nothing); write NullPool for the pool that keeps "
    "no connections, or remove the line for the default"
)
_LARGEST_NUMBER = 10**18
_NUMBER_FIELDS = {
    "pool_size": "a whole number",
    "max_overflow": "a whole number",
    "pool_recycle": "a whole number",
    "pool_timeout": "a number",
}


def _describe_errors(entry: dict[str, Any], errors: list[ErrorDetails]) -> dict[tuple[str, ...], str]:
    """One message per place in the input: the members of a union that all failed are one problem."""
    grouped: dict[tuple[str, ...], list[ErrorDetails]] = {}
    for error in errors:
        grouped.setdefault(_input_path(entry, error["loc"]), []).append(error)
    return {loc: describe(group[0]) if len(group) == 1 else _describe_union(group) for loc, group in grouped.items()}


def _input_path(entry: dict[str, Any], loc: tuple[int | str, ...]) -> tuple[str, ...]:
    """The error's location without pydantic's own steps (``bool``, ``literal['debug']``, ``[key]``)."""
    if not loc:
        return ()
    path = [str(loc[0])]
    value: Any = entry.get(str(loc[0]))
    for part in loc[1:]:
        in_dict = isinstance(value, dict) and part in value
        in_list = isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value)
        if in_dict or in_list:
            value = value[part]
            path.append(str(part))
    return tuple(path)


def _describe_union(errors: list[ErrorDetails]) -> str:
    expected: list[str] = []
    for error in errors:
        if error["type"] in _EXPECTED:
            expected.append(_EXPECTED[error["type"]])
        elif error["type"] == "literal_error":
            expected.append(str((error.get("ctx") or {}).get("expected", "")))
        else:
            return "; or ".join(dict.fromkeys(describe(e) for e in errors))
    first = describe(errors[0])
    got = first[first.rfind(", got ") :] if ", got " in first else ""
    return f"must be {' or '.join(dict.fromkeys(expected))}{got}"


def _not_a_database(entry: Any, path: PathKey) -> str:
    """What is wrong with a database's entry that is not a mapping."""
    expected = "a mapping of settings (url, pool_size, ...)"
    if isinstance(entry, NotJson):
        return _json_problem(entry, expected, f", or set {env_var_for((*path, 'url'))} for the url alone")
    return f"must be {expected}, got {'nothing' if entry is None else type(entry).__name__}"


def _json_problem(value: NotJson, expected: str, hint: str = "") -> str:
    """Why a variable's text, meant as JSON, is not JSON (the position, never the text)."""
    return f"is not JSON ({value.reason}); {expected} is written in JSON here{hint}"


def describe(error: ErrorDetails) -> str:
    """A pydantic error as a sentence; input is only shown for fields that cannot hold secrets."""
    if isinstance(not_json := error.get("input"), NotJson):
        return _json_problem(not_json, "a mapping")
    kind = error["type"]
    loc = [str(p) for p in error["loc"]]
    field_name = loc[0] if loc else ""
    secret = field_name in _SECRET_FIELDS or field_name == "password"
    got = "" if secret else f", got {_show(error.get('input'))}"
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        in_session = len(loc) > 1 and loc[-2] == "session"
        return _unknown_key(loc[-1], list(SessionConfig.model_fields) if in_session else field_names())
    if kind in ("model_type", "model_attributes_type") and loc[-1:] == ["session"]:
        return f"must be a mapping of session options ({', '.join(SessionConfig.model_fields)}){got}"
    if kind == "missing":
        return "required: every database needs a url" if field_name == "url" else "required field is missing"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        symbol = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[kind]
        bound = next(iter(ctx.values()), "")
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)  # pool_timeout's "> 0", not "> 0.0"
        return f"must be {symbol} {bound}{got}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')}{got}"
    if kind in _EXPECTED:
        return f"must be {_EXPECTED[kind]}{got}"
    if kind == "url_type" and ctx.get("kind") == "NoneType":
        return "has no value; expected a URL such as postgresql://user:password@host/db"
    if kind == "isolation_level":
        return f"must be one of {ctx.get('levels', '')}, got {_show(ctx.get('value'))}"
    if kind in ("url_parsing", "url_type", "pool_class"):
        return str(error["msg"])
    if kind.endswith("_type") and not secret:
        return f"has the wrong type{got}"
    return str(error["msg"]) if not secret else "is not valid"


def _show(value: Any) -> str:
    if isinstance(value, dict | list):
        return f"a {type(value).__name__}"
    if isinstance(value, str) and looks_like_credentials(value):
        return shown_name(value)  # a password written in the wrong field is still a password
    text = redact(repr(value))  # before cutting: a cut URL would lose the '@' that marks its password
    return text if len(text) <= 60 else text[:57] + "..."
