"""The ``dbregistry`` command (also ``python -m dbregistry``).

=========================================  ===================================================================
command                                    what it does
=========================================  ===================================================================
``dbregistry validate``                    load and validate; every problem, or one line per database
``dbregistry show``                        every field of every database, its value and where it came from,
                                           and per mode the arguments each driver will receive
``dbregistry check [--timeout S]``         connect to every database at once and ping it
``dbregistry budget --processes N``        the most connections the fleet can open, per server, against its limit
``dbregistry schema``                      the JSON Schema of the configuration file
=========================================  ===================================================================

Every command takes ``--config FILE`` and ``--profile P`` (else
``DBREGISTRY_CONFIG`` and the environment, as `Registry.load` reads them) and
``--json``. Colour is used only when standard output is a terminal (and
``NO_COLOR`` is unset). Passwords are always masked.

Exit codes: 0 all is well; 1 a problem was found (the configuration is
invalid, a database is down, the fleet is over budget); 2 the command line
was wrong.

>>> main(["validate", "--config", "config/databases.yaml"])   # doctest: +SKIP
0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, TextIO

from sqlalchemy.engine import URL

from . import __version__
from ._budget import Budget, plan, read_limits
from ._effective import driver_arguments, effective_fields
from ._errors import CloseError, ConfigError, unknown_name_message
from ._health import HealthReport
from ._hosts import hosts_of
from ._migrate import migration_url, write_alembic_project
from ._registry import Registry
from ._rules import effective_pool_class
from ._schema import DatabaseConfig, config_schema
from ._urls import is_sqlite, is_sqlite_memory, mask
from ._waits import seconds_problem

__all__ = ["EXIT_OK", "EXIT_PROBLEMS", "EXIT_USAGE", "build_parser", "config_schema", "main"]

EXIT_OK: Final = 0
EXIT_PROBLEMS: Final = 1
EXIT_USAGE: Final = 2


# -- output -----------------------------------------------------------------------------


class Style:
    """ANSI colour, or nothing."""

    _CODES: Final = {"green": "32", "red": "31", "yellow": "33", "bold": "1", "dim": "2"}

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    @classmethod
    def for_stream(cls, stream: TextIO) -> Style:
        isatty = getattr(stream, "isatty", None)
        tty = bool(isatty and isatty())
        return cls(tty and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb")

    def __call__(self, text: str, colour: str | None) -> str:
        if not self.enabled or colour is None or not text:
            return text
        return f"\033[{self._CODES[colour]}m{text}\033[0m"


Cell = str | tuple[str, str | None]


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Cell]], style: Style, indent: str = "") -> str:
    """Columns padded to their widest cell; colour is applied after padding so it never skews them."""
    plain = [[cell if isinstance(cell, str) else cell[0] for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in plain:
        for i, text in enumerate(row):
            widths[i] = max(widths[i], len(text))
    lines = [indent + "  ".join(style(h.ljust(w), "bold") for h, w in zip(headers, widths, strict=True)).rstrip()]
    for cells_of_row in rows:
        cells = []
        for cell, width in zip(cells_of_row, widths, strict=True):
            text, colour = (cell, None) if isinstance(cell, str) else cell
            cells.append(style(text.ljust(width), colour))
        lines.append(indent + "  ".join(cells).rstrip())
    return "\n".join(lines)


def _emit_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


# -- loading ----------------------------------------------------------------------------


def _source(args: argparse.Namespace) -> str:
    config = getattr(args, "config", None)
    return str(config or os.environ.get("DBREGISTRY_CONFIG") or "the environment")


def _load(args: argparse.Namespace) -> Registry:
    return Registry.load(getattr(args, "config", None), profile=getattr(args, "profile", None))


def _emit_problems(args: argparse.Namespace, error: ConfigError) -> None:
    _emit_json({"ok": False, "source": _source(args), "problems": [p.as_dict() for p in error.problems]})


def _close(registry: Registry) -> None:
    try:
        registry.close()
    except CloseError as e:
        print(f"warning: {e}", file=sys.stderr)


# -- values and where they came from ----------------------------------------------------


def _shown(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _options_summary(db: DatabaseConfig) -> str:
    shown = []
    for field in ("pool_size", "max_overflow", "pool_timeout", "pool_recycle", "pool_pre_ping", "isolation_level"):
        if field in db.model_fields_set:
            shown.append(f"{field}={_shown(getattr(db, field))}")
    return " ".join(shown)


# -- commands ---------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace, style: Style) -> int:
    try:
        registry = _load(args)
    except ConfigError as e:
        if args.json:
            _emit_problems(args, e)
        else:
            print(style("invalid", "red") + f": {e}")
        return EXIT_PROBLEMS
    try:
        databases = {}
        rows: list[list[Cell]] = []
        for name in registry.names:
            db = registry[name]
            pool_class, declared = effective_pool_class(db)
            notes = []
            if name == registry.default:
                notes.append("default")
            if db.replica_of:
                notes.append(f"replica of {db.replica_of}")
            databases[name] = {
                "url": mask(db.url),
                "pool_class": pool_class,
                "pool_class_declared": declared,
                "replica_of": db.replica_of,
                "default": name == registry.default,
                "origin": str(registry.origin(name)),
            }
            rows.append([name, mask(db.url), pool_class, _options_summary(db), ", ".join(notes)])
        if args.json:
            _emit_json(
                {
                    "ok": True,
                    "source": _source(args),
                    "profile": registry.profile,
                    "default": registry.default,
                    "databases": databases,
                }
            )
        else:
            count = len(registry)
            profile = f", profile {registry.profile}" if registry.profile else ""
            print(f"{style('ok', 'green')}: {count} database{'s' if count != 1 else ''} from {_source(args)}{profile}")
            print(render_table(["name", "url", "pool", "options", "notes"], rows, style, indent="  "))
        return EXIT_OK
    finally:
        _close(registry)


def cmd_show(args: argparse.Namespace, style: Style) -> int:
    registry = _load(args)
    try:
        everything = {name: effective_fields(registry, name) for name in registry.names}
        drivers = {name: driver_arguments(registry, name) for name in registry.names}
        if args.json:
            _emit_json(
                {
                    "source": _source(args),
                    "profile": registry.profile,
                    "default": registry.default,
                    "log_pool_events": registry.config.log_pool_events,
                    "databases": {
                        name: {f["field"]: {k: v for k, v in f.items() if k != "field"} for f in fields}
                        for name, fields in everything.items()
                    },
                    "connections": drivers,
                    "migrations": {name: _migrations_json(registry[name]) for name in registry.names},
                }
            )
            return EXIT_OK
        profile = registry.profile or "-"
        print(f"source {_source(args)}  profile {profile}  default {registry.default or '-'}")
        for name, fields in everything.items():
            marker = " (default)" if name == registry.default else ""
            print()
            print(style(name + marker, "bold"))
            rows: list[list[Cell]] = [
                [f["field"], _shown(f["value"]), (f["origin"], "dim" if f["precedence"] == "default" else None)]
                for f in fields
            ]
            print(render_table(["field", "value", "from"], rows, style, indent="  "))
            print()
            modes: list[list[Cell]] = [
                [mode, shown["driver"] or "-", shown.get("error") or _shown(shown["connect_args"] or None)]
                for mode, shown in drivers[name].items()
            ]
            print(render_table(["mode", "driver", "connection arguments"], modes, style, indent="  "))
            print(f"\n  migrations{_migrations_text(registry[name])}")
        return EXIT_OK
    finally:
        _close(registry)


def _migrations_json(db: DatabaseConfig) -> dict[str, str | None]:
    found = migration_url(db)
    return {"url": mask(found.url) if found.url is not None else None, "why": found.reason}


def _migrations_text(db: DatabaseConfig) -> str:
    found = migration_url(db)
    return f" run on {mask(found.url)}  ({found.reason})" if found.url is not None else f": {found.reason}"


def cmd_alembic(args: argparse.Namespace, style: Style) -> int:
    try:
        written = write_alembic_project(Path(args.directory), Path(args.ini))
    except FileExistsError as e:
        print(f"dbregistry alembic init: {e}", file=sys.stderr)
        return EXIT_PROBLEMS
    for path in written:
        print(f"wrote {path}")
    print(f"next: alembic -c {args.ini} revision -m 'first'  (databases from $DBREGISTRY_CONFIG and the environment)")
    return EXIT_OK


_STATUS_COLOURS: Final = {"up": "green", "down": "red", "timeout": "yellow"}


def cmd_check(args: argparse.Namespace, style: Style) -> int:
    registry = _load(args)
    try:
        allowed = set(args.allow_down)
        unknown = sorted(allowed - set(registry.names))
        if unknown:
            for name in unknown:
                print(f"dbregistry check: --allow-down: {unknown_name_message(name, registry.names)}", file=sys.stderr)
            return EXIT_USAGE
        unborn = {name: path for name in registry.names if (path := _sqlite_file_to_create(registry[name].url))}
        reports = registry.health(timeout=args.timeout, names=[n for n in registry.names if n not in unborn])
        # Connecting would create the file: a check must leave no trace. SQLite creates it on first use.
        reports = {name: reports.get(name) or _NOT_CREATED_YET for name in registry.names}
        failing = [name for name, r in reports.items() if not r.ok and name not in allowed]
        if args.json:
            _emit_json(
                {
                    "ok": not failing,
                    "timeout": args.timeout,
                    "databases": {
                        name: _check_json(registry, name, report, name in allowed)
                        | ({"note": _unborn_note(unborn[name])} if name in unborn else {})
                        for name, report in reports.items()
                    },
                }
            )
            return EXIT_PROBLEMS if failing else EXIT_OK
        replicas = any(registry[name].replica_of for name in reports)
        headers = ["name", "url", "driver", "pool", "status", "latency", "version"]
        if replicas:
            headers += ["recovery", "lag"]
        rows = [_check_row(registry, name, report, name in allowed, replicas) for name, report in reports.items()]
        if any(len(hosts_of(registry[name].url, registry[name].hosts)) > 1 for name in reports):
            # Several hosts: which one answered, and whether it is the primary.
            headers.append("answered")
            for row, report in zip(rows, reports.values(), strict=True):
                row.append(f"{report.host} ({report.role or '?'})" if report.host else "-")
        print(render_table(headers, rows, style))
        errors = [(name, r.error) for name, r in reports.items() if r.error]
        if unborn:
            print()
            for name, path in unborn.items():
                print(f"{style(name, 'bold')}: {_unborn_note(path)}")
        if errors:
            print()
            for name, error in errors:
                print(f"{style(name, 'bold')}: {error}")
        if failing:
            print(style(f"\n{len(failing)} of {len(reports)} down: {', '.join(failing)}", "red"))
        return EXIT_PROBLEMS if failing else EXIT_OK
    finally:
        _close(registry)


_NOT_CREATED_YET: Final = HealthReport("up", None, None, None, None, None, None)


def _sqlite_file_to_create(url: URL) -> str | None:
    """The file of a SQLite URL that does not exist yet (connecting would create it); None otherwise."""
    if not is_sqlite(url) or is_sqlite_memory(url) or "mode=memory" in (url.database or ""):
        return None
    path = url.database or ""
    if url.query.get("uri") in ("true", "1") or path.startswith("file:"):
        path = path.removeprefix("file:").partition("?")[0]
        if not path or path.startswith(":memory:"):
            return None
    return None if Path(path).exists() else path


def _unborn_note(path: str) -> str:
    return f"{path} does not exist yet; SQLite creates it on first use (not opened: `check` creates no file)"


def _engine_facts(registry: Registry, name: str) -> tuple[str | None, str | None]:
    try:
        engine = registry.get(name)
    except Exception:
        return None, None
    return engine.url.drivername, type(engine.pool).__name__


def _check_json(registry: Registry, name: str, report: HealthReport, allowed: bool) -> dict[str, Any]:
    driver, pool_class = _engine_facts(registry, name)
    db = registry[name]
    return {
        "url": mask(db.url),
        "driver": driver,
        "pool_class": pool_class,
        "replica_of": db.replica_of,
        "allowed_down": allowed,
        **report.as_dict(),
    }


def _check_row(registry: Registry, name: str, report: HealthReport, allowed: bool, replicas: bool) -> list[Cell]:
    driver, pool_class = _engine_facts(registry, name)
    db = registry[name]
    status: Cell = (report.status, _STATUS_COLOURS[report.status])
    if not report.ok and allowed:
        status = (f"{report.status} (allowed)", "dim")
    latency = f"{report.latency_ms:.1f} ms" if report.latency_ms is not None else "-"
    row: list[Cell] = [
        name,
        mask(db.url),
        driver or "-",
        pool_class or "-",
        status,
        latency,
        report.server_version or "-",
    ]
    if replicas:
        recovery: Cell = "-"
        lag: Cell = "-"
        if db.replica_of and report.in_recovery is not None:
            recovery = ("yes", "green") if report.in_recovery else ("NO (not a replica)", "red")
        if db.replica_of and report.replay_lag_s is not None:
            limit = db.replica_max_lag_seconds
            lag = (
                f"{report.replay_lag_s:.2f} s",
                "yellow" if limit is not None and report.replay_lag_s > limit else None,
            )
        row += [recovery, lag]
    return row


def cmd_budget(args: argparse.Namespace, style: Style) -> int:
    registry = _load(args)
    try:
        live = read_limits(registry, timeout=args.timeout) if args.live else None
        budget = plan(registry.config, processes=args.processes, threads=args.threads, live=live)
    finally:
        _close(registry)
    if args.json:
        _emit_json(budget.as_dict())
    else:
        _print_budget(budget, style)
    return EXIT_OK if budget.ok else EXIT_PROBLEMS


def _print_budget(budget: Budget, style: Style) -> None:
    threads = f" x {budget.threads} thread{'s' if budget.threads != 1 else ''}"
    print(f"connection budget for {budget.processes} process{'es' if budget.processes != 1 else ''}{threads}")
    print()
    rows: list[list[Cell]] = []
    for server in budget.servers:
        for i, db in enumerate(server.databases):
            most = str(db.total) if db.total is not None else ("unbounded", "red")
            pool = db.pool_class + (f" via {db.pooler}" if db.pooler else "")
            rows.append([server.server if i == 0 else "", db.name, pool, db.formula, most])
    for db in budget.serverless:
        rows.append(["(no server)", db.name, db.pool_class, db.formula, ("0", "dim")])
    print(render_table(["server", "database", "pool", "formula", "connections"], rows, style))
    print()
    for server in budget.servers:
        total = server.total
        head = style(server.server, "bold")
        if total is None:
            print(f"{head}  {style('UNBOUNDED', 'red')}: a pool sets no upper bound (pool_size 0 or max_overflow -1)")
            continue
        if server.limit is None:
            why = f" ({server.limit_error})" if server.limit_error else ""
            print(
                f"{head}  {total} connections; limit unknown{why}: declare max_connections on a database "
                "of this server, or use --live"
            )
            continue
        limit = server.limit
        allows = (
            f"{total} of {limit.available} allowed (max_connections {limit.max_connections} - {limit.reserved} reserved, "
            f"{limit.source})"
        )
        if server.over:
            print(f"{head}  {allows}: {style(f'OVER by {server.over}', 'red')}")
        else:
            print(f"{head}  {allows}: {style('ok', 'green')}, {limit.available - total} to spare")


def cmd_schema(args: argparse.Namespace, style: Style) -> int:
    _emit_json(config_schema())
    return EXIT_OK


# -- the parser -------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    problem = seconds_problem(value)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return value


def _common(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    default: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=default,
        help="the YAML file (default: $DBREGISTRY_CONFIG, else the environment)",
    )
    parser.add_argument(
        "--profile",
        metavar="P",
        default=default,
        help="the profile to apply (default: $DBREGISTRY_PROFILE, else $APP_ENV)",
    )
    parser.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS if suppress else False, help="machine-readable output"
    )


Command = Callable[[argparse.Namespace, Style], int]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``dbregistry`` command."""
    parser = argparse.ArgumentParser(
        prog="dbregistry",
        description="Validate, inspect and check the databases a service declares.",
        epilog="exit codes: 0 ok; 1 problems (invalid configuration, a database down, over budget); 2 usage",
    )
    _common(parser, suppress=False)
    parser.add_argument("--version", action="version", version=f"dbregistry {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="command")

    def command(name: str, handler: Command, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        _common(sub, suppress=True)
        sub.set_defaults(handler=handler)
        return sub

    command("validate", cmd_validate, "load and validate the configuration; every problem, or one line per database")
    command("show", cmd_show, "the effective configuration: every field, its value and where it came from")
    check = command("check", cmd_check, "connect to every database concurrently and ping it")
    check.add_argument("--timeout", type=_seconds, default=5.0, metavar="S", help="seconds per database (default 5)")
    check.add_argument(
        "--allow-down", action="append", default=[], metavar="NAME", help="a database that may be down (repeatable)"
    )
    budget = command("budget", cmd_budget, "the most connections the fleet can open, per server, against its limit")
    budget.add_argument("--processes", type=_positive_int, required=True, metavar="N", help="processes of this service")
    budget.add_argument("--threads", type=_positive_int, default=1, metavar="T", help="threads per process (default 1)")
    budget.add_argument("--live", action="store_true", help="read max_connections from each PostgreSQL server")
    budget.add_argument(
        "--timeout",
        type=_seconds,
        default=5.0,
        metavar="S",
        help="how long --live waits for each server (connect and query)",
    )
    command("schema", cmd_schema, "print the JSON Schema of the configuration file")
    alembic = command("alembic", cmd_alembic, "Alembic for the declared databases: `alembic init DIR` writes env.py")
    alembic.add_argument("action", choices=["init"], help="init: write env.py, script.py.mako and alembic.ini")
    alembic.add_argument("directory", metavar="DIR", help="the migration directory to create (missing or empty)")
    alembic.add_argument("--ini", default="alembic.ini", metavar="FILE", help="the alembic.ini to write when missing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit code (`EXIT_OK`, `EXIT_PROBLEMS` or `EXIT_USAGE`)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    handler: Command | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_usage(sys.stderr)
        print("dbregistry: error: name a command: validate, show, check, budget, schema or alembic", file=sys.stderr)
        return EXIT_USAGE
    try:
        return handler(args, Style.for_stream(sys.stdout) if not args.json else Style(False))
    except ConfigError as e:
        if args.json:
            _emit_problems(args, e)
        else:
            print(f"dbregistry {args.command}: invalid configuration: {e}", file=sys.stderr)
        return EXIT_PROBLEMS
    except BrokenPipeError:
        # Output piped into `head` and friends: stop quietly, and keep Python from complaining at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PROBLEMS
