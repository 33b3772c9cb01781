"""Real PostgreSQL, streaming-replica and PgBouncer servers for the test suite.

Everything runs on 127.0.0.1 on ports the kernel hands out, with data, sockets and
logs in private temporary directories.  PostgreSQL refuses to run as root, so when
the tests run as root every server program runs as the ``postgres`` system account:
short-lived tools (initdb, pg_ctl, psql, pg_basebackup) through ``runuser``, and the
long-running daemons (postgres, pgbouncer) as direct children of this process
started with ``subprocess.Popen(user=...)``.  Keeping the daemons as our own children
means we reap them ourselves: this machine's PID 1 does not reap orphans, so a
daemonised server would linger as a zombie after it stopped.

No Python database driver is used here, so the helpers keep working while the code
under test has broken a driver.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from sqlalchemy.engine import URL

PG_BINDIR = Path(os.environ.get("PG_BINDIR", "/usr/lib/postgresql/15/bin"))
PGBOUNCER_BIN = Path(os.environ.get("PGBOUNCER", "/usr/sbin/pgbouncer"))
SYSTEM_USER = "postgres"

HOST = "127.0.0.1"
SUPERUSER = "postgres"
USER = "app"
DATABASE = "app"
PASSWORD = "pg-S3cret@/:%pw"
REPLICATION_USER = "replicator"
# PgBouncer logs in to the server as its own role, so that its pooled server
# connections never count as the application's (`connections(usename="app")`).
BOUNCER_USER = "bouncer"
BOUNCER_PASSWORD = "bouncer-server-pw"  # plain: PgBouncer's connection strings do not quote the awkward one

START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
PORT_ATTEMPTS = 5

POSTGRES_SETTINGS = {
    "listen_addresses": f"'{HOST}'",
    "max_connections": "200",
    "wal_level": "replica",
    "max_wal_senders": "10",
    "hot_standby": "on",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "password_encryption": "'scram-sha-256'",
    "logging_collector": "off",
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] %u@%d '",
    "log_timezone": "'UTC'",
    "timezone": "'UTC'",
}

PG_HBA = """\
local all all trust
host all all 127.0.0.1/32 scram-sha-256
host replication all 127.0.0.1/32 scram-sha-256
"""


T = TypeVar("T")


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    """The server process ``pid`` stopped (SIGSTOP): its socket stays open and nothing answers."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def within(seconds: float, func: Callable[[], T]) -> T:
    """``func()`` in a daemon thread; fails (instead of hanging the suite) when it has not returned in time."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(("ok", func()))
        except BaseException as e:
            outcome.append(("error", e))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still waiting after {seconds} s"
    kind, value = outcome[0]
    if kind == "error":
        raise value
    return value  # type: ignore[no-any-return]


class ServerError(RuntimeError):
    """A server could not be set up, started, stopped or queried."""


def postgres_binaries_available() -> str | None:
    """None when PostgreSQL servers can be started here, else why not."""
    missing = [
        name for name in ("initdb", "pg_ctl", "postgres", "pg_basebackup") if not os.access(PG_BINDIR / name, os.X_OK)
    ]
    if missing:
        return f"PostgreSQL 15 programs missing from {PG_BINDIR}: {', '.join(missing)}"
    if _psql_path() is None:
        return "psql not found"
    return _system_user_problem()


def pgbouncer_available() -> str | None:
    """None when a PgBouncer can be started here, else why not."""
    if not os.access(PGBOUNCER_BIN, os.X_OK):
        return f"pgbouncer not found at {PGBOUNCER_BIN}"
    return _system_user_problem()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that accepts connections (the kernel completes the handshake) and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((HOST, 0))
        sock.listen(64)
        yield sock.getsockname()[1]
    finally:
        sock.close()


def _start_on_a_port(start_on: Callable[[int], None], port: int | None) -> int:
    """Start on ``port`` (a restart), else on a free port, trying another when one is taken meanwhile."""
    if port is not None:
        start_on(port)
        return port
    for attempt in range(PORT_ATTEMPTS):
        port = free_port()
        try:
            start_on(port)
        except _PortTakenError:
            if attempt == PORT_ATTEMPTS - 1:
                raise
            continue
        return port
    raise AssertionError("unreachable")


def sql_literal(value: str) -> str:
    """``value`` as an SQL string literal (standard_conforming_strings is on)."""
    return "'" + value.replace("'", "''") + "'"


def _system_user_problem() -> str | None:
    if not _as_root():
        return None
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        return f"running as root but there is no {SYSTEM_USER!r} system user to run servers as"
    if shutil.which("runuser") is None:
        return "running as root but runuser is not installed"
    return None


def _as_root() -> bool:
    return os.geteuid() == 0


def _psql_path() -> str | None:
    bundled = PG_BINDIR / "psql"
    if os.access(bundled, os.X_OK):
        return str(bundled)
    return shutil.which("psql")


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGCLIENTENCODING"] = "UTF8"
    env["LC_ALL"] = "C"
    env.pop("LANG", None)
    return env


def _run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    input_text: str | None = None,
    timeout: float = 60.0,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a short-lived program as the server account and capture its output."""
    extra = [f"{key}={value}" for key, value in (env or {}).items()]
    command = list(argv)
    if extra:
        command = ["env", *extra, *command]
    if _as_root():
        command = ["runuser", "-u", SYSTEM_USER, "--", *command]
    result = subprocess.run(
        command,
        env=_clean_env(),
        cwd="/",
        input=input_text,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise ServerError(
            f"{' '.join(argv)} exited with {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


def _spawn(argv: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start a daemon as the server account, as a direct child, logging to ``log_path``."""
    kwargs: dict[str, Any] = {}
    if _as_root():
        account = pwd.getpwnam(SYSTEM_USER)
        kwargs = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    env = _clean_env()
    env["HOME"] = str(log_path.parent)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=log_path.parent,
            **kwargs,
        )


def _reap(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait for ``proc`` to exit, killing it if it takes longer than ``timeout``."""
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _make_tempdir(prefix: str) -> Path:
    """A fresh directory owned by the server account, reachable by it."""
    base = Path(tempfile.gettempdir()).resolve()
    if not all(p.stat().st_mode & stat.S_IXOTH for p in (base, *base.parents)):
        base = Path("/tmp")
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    _give_to_server_user(path)
    path.chmod(0o700)
    return path


def _give_to_server_user(path: Path) -> None:
    if _as_root():
        account = pwd.getpwnam(SYSTEM_USER)
        os.chown(path, account.pw_uid, account.pw_gid)


def _write(path: Path, text: str, mode: int = 0o600) -> None:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    _give_to_server_user(path)


def _tail(path: Path, start: int = 0, lines: int = 40) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(start)
            data = fh.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(data.splitlines()[-lines:])


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


_OPEN: list[_Closable] = []


class _Closable:
    _closed = False

    def close(self) -> None:
        raise NotImplementedError

    def _track(self) -> None:
        _OPEN.append(self)

    def _untrack(self) -> None:
        with contextlib.suppress(ValueError):
            _OPEN.remove(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@atexit.register
def _close_everything() -> None:
    for server in reversed(list(_OPEN)):
        with contextlib.suppress(Exception):
            server.close()


class _PostgresBase(_Closable):
    """What a primary and a replica share: one data directory, one postmaster."""

    host = HOST
    user = USER
    password = PASSWORD
    database = DATABASE

    def __init__(self, prefix: str) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self.dir = _make_tempdir(prefix)
        self.data_dir = self.dir / "data"
        self.log_path = self.dir / "postgres.log"
        self._track()

    @property
    def port(self) -> int:
        if self._port is None:
            raise ServerError("the server has never been started")
        return self._port

    @property
    def socket_dir(self) -> Path:
        return self.dir

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc else None

    def url(self, drivername: str = "postgresql", *, database: str | None = None) -> URL:
        return URL.create(
            drivername,
            username=self.user,
            password=self.password,
            host=self.host,
            port=self.port,
            database=database or self.database,
        )

    def url_string(self, drivername: str = "postgresql", *, database: str | None = None) -> str:
        return self.url(drivername, database=database).render_as_string(hide_password=False)

    def psql(self, sql: str, *, database: str | None = None) -> list[tuple[str, ...]]:
        """Run ``sql`` as the superuser over the unix socket; rows as tuples of text.

        It runs in ``database`` (default: the ``app`` database that ``url()`` names),
        statement by statement, each in its own transaction, and stops at the first
        error with ``ServerError``.  NULL comes back as ``""``.
        """
        psql = _psql_path()
        if psql is None:
            raise ServerError("psql not found")
        result = _run(
            [
                psql,
                "-X",
                "-q",
                "-A",
                "-t",
                "-F",
                "\t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "-d",
                database or self.database,
                "-f",
                "-",
            ],
            input_text=sql,
        )
        lines = result.stdout.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return [tuple(line.split("\t")) for line in lines]

    def connections(self, usename: str = USER) -> int:
        """How many client backends ``usename`` has open, not counting the querying one.

        WAL senders and other non-client processes are left out.
        """
        rows = self.psql(
            "SELECT count(*) FROM pg_stat_activity "
            f"WHERE usename = {sql_literal(usename)} AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'"
        )
        return int(rows[0][0])

    def wait_for_connections(self, expected: int, usename: str = USER, timeout: float = 10.0) -> int:
        """Poll ``connections`` until it equals ``expected``; the last count seen."""
        deadline = time.monotonic() + timeout
        while True:
            count = self.connections(usename)
            if count == expected or time.monotonic() >= deadline:
                return count
            time.sleep(0.05)

    def start(self) -> None:
        """Start the postmaster (again) and wait until it accepts connections."""
        if self._closed:
            raise ServerError("the server is closed")
        if self.running:
            return
        self._port = _start_on_a_port(self._start_on, self._port)

    def _start_on(self, port: int) -> None:
        log_start = _file_size(self.log_path)
        proc = _spawn(
            [
                str(PG_BINDIR / "postgres"),
                "-D",
                str(self.data_dir),
                "-p",
                str(port),
                "-k",
                str(self.socket_dir),
            ],
            self.log_path,
        )
        self._proc = proc
        deadline = time.monotonic() + START_TIMEOUT
        while not self._ready(proc.pid):
            if proc.poll() is not None:
                self._proc = None
                log = _tail(self.log_path, log_start)
                if "could not bind" in log or "Address already in use" in log:
                    raise _PortTakenError(log)
                raise ServerError(f"postgres exited with {proc.returncode} while starting on port {port}; log:\n{log}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(
                    f"postgres did not accept connections on port {port} within "
                    f"{START_TIMEOUT:.0f}s; log:\n{_tail(self.log_path, log_start)}"
                )
            time.sleep(0.02)

    def _ready(self, pid: int) -> bool:
        """pg_ctl's own test: postmaster.pid names this process and says "ready"."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except (OSError, UnicodeDecodeError):
            return False
        return len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"

    def stop(self) -> None:
        """Shut down (``pg_ctl stop -m fast``, then ``-m immediate``, then SIGKILL)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            stopped = False
            for mode in ("fast", "immediate"):
                result = _run(
                    [
                        str(PG_BINDIR / "pg_ctl"),
                        "stop",
                        "-D",
                        str(self.data_dir),
                        "-m",
                        mode,
                        "-w",
                        "-t",
                        str(int(STOP_TIMEOUT)),
                        "-s",
                    ],
                    timeout=STOP_TIMEOUT + 10,
                    check=False,
                )
                if result.returncode == 0:
                    stopped = True
                    break
            if not stopped and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGQUIT)
        _reap(proc, 10)
        self._proc = None

    def close(self) -> None:
        """Stop the server and delete its directory; safe to call twice."""
        if self._closed:
            return
        try:
            self.stop()
        finally:
            self._closed = True
            shutil.rmtree(self.dir, ignore_errors=True)
            self._untrack()

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines=lines)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.host}:{self._port} {state} {self.dir}>"


class _PortTakenError(ServerError):
    pass


class PostgresServer(_PostgresBase):
    """A throw-away PostgreSQL 15 primary with login role and database ``app``.

    ``app`` logs in with ``PASSWORD`` by SCRAM over TCP; the superuser ``postgres``
    only over the unix socket (trust), which is what ``psql`` uses.  A separate role
    ``replicator`` (same password) is what ``pg_basebackup`` and the replica's WAL
    receiver use, so replication never shows up among ``app``'s connections.
    """

    def __init__(self) -> None:
        super().__init__("dbregistry-pg-")
        try:
            _run(
                [
                    str(PG_BINDIR / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    SUPERUSER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ]
            )
            settings = "".join(f"{key} = {value}\n" for key, value in POSTGRES_SETTINGS.items())
            with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
                conf.write("\n" + settings)
            _write(self.data_dir / "pg_hba.conf", PG_HBA)
            self.start()
            self.psql(
                f"CREATE ROLE {USER} LOGIN PASSWORD {sql_literal(PASSWORD)};\n"
                f"CREATE ROLE {REPLICATION_USER} LOGIN REPLICATION "
                f"PASSWORD {sql_literal(PASSWORD)};\n"
                f"CREATE ROLE {BOUNCER_USER} LOGIN PASSWORD {sql_literal(BOUNCER_PASSWORD)};\n"
                f"CREATE DATABASE {DATABASE} OWNER {USER};\n",
                database="postgres",
            )
        except BaseException:
            self.close()
            raise

    def enable_tls(self, cert_pem: str, key_pem: str) -> None:
        """Serve TLS with this certificate and key from now on (``ssl`` is reloadable); plain TCP still works."""
        _write(self.dir / "server.crt", cert_pem)
        _write(self.dir / "server.key", key_pem)
        self.psql(
            f"ALTER SYSTEM SET ssl_cert_file = {sql_literal(str(self.dir / 'server.crt'))};\n"
            f"ALTER SYSTEM SET ssl_key_file = {sql_literal(str(self.dir / 'server.key'))};\n"
            "ALTER SYSTEM SET ssl = on;\n"
            "SELECT pg_reload_conf();\n",
            database="postgres",
        )
        deadline = time.monotonic() + START_TIMEOUT
        while self.psql("SHOW ssl", database="postgres") != [("on",)]:
            if time.monotonic() > deadline:
                raise ServerError(f"ssl is not on after the reload; log:\n{self.log_tail()}")
            time.sleep(0.02)

    def scram_secret(self, role: str = USER) -> str:
        rows = self.psql(f"SELECT rolpassword FROM pg_authid WHERE rolname = {sql_literal(role)}")
        if not rows or not rows[0][0].startswith("SCRAM-SHA-256$"):
            raise ServerError(f"role {role!r} has no SCRAM secret")
        return rows[0][0]

    def start_replica(self) -> ReplicaServer:
        return ReplicaServer(self)


class ReplicaServer(_PostgresBase):
    """A hot-standby streaming replica of ``primary`` made with ``pg_basebackup -R``."""

    def __init__(self, primary: PostgresServer) -> None:
        super().__init__("dbregistry-pg-replica-")
        self.primary = primary
        try:
            _run(
                [
                    str(PG_BINDIR / "pg_basebackup"),
                    "-D",
                    str(self.data_dir),
                    "-h",
                    primary.host,
                    "-p",
                    str(primary.port),
                    "-U",
                    REPLICATION_USER,
                    "-R",
                    "-X",
                    "stream",
                    "-c",
                    "fast",
                    "--no-sync",
                    "-w",
                ],
                env={"PGPASSWORD": primary.password},
                timeout=120,
            )
            self.start()
        except BaseException:
            self.close()
            raise

    def wait_for_replay(self, timeout: float = 10.0) -> None:
        """Wait until the replica has replayed everything the primary has logged so far.

        The primary runs with ``synchronous_commit = off``, so a just-committed
        transaction may not yet be written out; its target is therefore the WAL
        insert position (``pg_current_wal_insert_lsn``), which always covers it.
        """
        target = self.primary.psql("SELECT pg_current_wal_insert_lsn()")[0][0]
        start = time.monotonic()
        nudged = start
        while True:
            rows = self.psql(
                f"SELECT pg_last_wal_replay_lsn() >= {sql_literal(target)}::pg_lsn, pg_last_wal_replay_lsn()"
            )
            if rows[0][0] == "t":
                return
            now = time.monotonic()
            if now - start >= timeout:
                raise TimeoutError(
                    f"replica replayed up to {rows[0][1] or 'nothing'}, primary is at {target} "
                    f"after {timeout}s; replica log:\n{self.log_tail()}"
                )
            if now - nudged >= 0.5:
                # On an idle primary the insert position can lie past a page header that no
                # record has crossed yet: replay reaches it only once something more is logged.
                self.primary.psql("SELECT txid_current()")
                nudged = now
            time.sleep(0.02)


class PgBouncer(_Closable):
    """PgBouncer 1.18 in transaction pooling mode in front of ``primary``.

    Clients log in as ``app`` with ``PASSWORD`` by SCRAM; PgBouncer holds the role's
    SCRAM secret and reuses the client's proof to log in to the server.  Every
    database name is forwarded to the primary under the same name.
    """

    host = HOST

    def __init__(
        self,
        primary: PostgresServer,
        default_pool_size: int = 3,
        *,
        pool_mode: str = "transaction",
        max_client_conn: int = 1000,
    ) -> None:
        self.primary = primary
        self.user = primary.user
        self.password = primary.password
        self.database = primary.database
        self.default_pool_size = default_pool_size
        self.pool_mode = pool_mode
        self.max_client_conn = max_client_conn
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self.dir = _make_tempdir("dbregistry-pgbouncer-")
        self.config_path = self.dir / "pgbouncer.ini"
        self.auth_file = self.dir / "userlist.txt"
        self.log_path = self.dir / "pgbouncer.log"
        self.pid_path = self.dir / "pgbouncer.pid"
        self._track()
        try:
            secret = primary.scram_secret(self.user)
            _write(self.auth_file, f'"{self.user}" "{secret}"\n"{BOUNCER_USER}" "{BOUNCER_PASSWORD}"\n')
            self.start()
        except BaseException:
            self.close()
            raise

    @property
    def port(self) -> int:
        if self._port is None:
            raise ServerError("pgbouncer has never been started")
        return self._port

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def url(self, drivername: str = "postgresql", *, database: str | None = None) -> URL:
        return URL.create(
            drivername,
            username=self.user,
            password=self.password,
            host=self.host,
            port=self.port,
            database=database or self.database,
        )

    def url_string(self, drivername: str = "postgresql", *, database: str | None = None) -> str:
        return self.url(drivername, database=database).render_as_string(hide_password=False)

    def _config(self, port: int) -> str:
        primary = f"host={self.primary.host} port={self.primary.port} user={BOUNCER_USER}"
        return (
            "[databases]\n"
            f"* = {primary}\n"
            "\n"
            "[pgbouncer]\n"
            f"listen_addr = {HOST}\n"
            f"listen_port = {port}\n"
            f"unix_socket_dir = {self.dir}\n"
            f"pool_mode = {self.pool_mode}\n"
            f"default_pool_size = {self.default_pool_size}\n"
            f"max_client_conn = {self.max_client_conn}\n"
            "auth_type = scram-sha-256\n"
            f"auth_file = {self.auth_file}\n"
            f"admin_users = {self.user}\n"
            f"stats_users = {self.user}\n"
            "ignore_startup_parameters = extra_float_digits,options\n"
            f"logfile = {self.log_path}\n"
            f"pidfile = {self.pid_path}\n"
        )

    def start(self) -> None:
        """Start PgBouncer (again) and wait until it accepts TCP connections."""
        if self._closed:
            raise ServerError("pgbouncer is closed")
        if self.running:
            return
        self._port = _start_on_a_port(self._start_on, self._port)

    def _start_on(self, port: int) -> None:
        _write(self.config_path, self._config(port))
        self.pid_path.unlink(missing_ok=True)
        stderr_path = self.dir / "pgbouncer.stderr"
        log_start = _file_size(self.log_path)
        err_start = _file_size(stderr_path)
        proc = _spawn([str(PGBOUNCER_BIN), str(self.config_path)], stderr_path)
        self._proc = proc
        deadline = time.monotonic() + START_TIMEOUT
        listening = f"listening on {HOST}:{port}"
        while True:
            if proc.poll() is not None:
                self._proc = None
                log = _tail(self.log_path, log_start) + "\n" + _tail(stderr_path, err_start)
                if "Address already in use" in log:
                    raise _PortTakenError(log)
                raise ServerError(f"pgbouncer exited with {proc.returncode} while starting on port {port}; log:\n{log}")
            log = _tail(self.log_path, log_start)
            if f"cannot listen on {HOST}:{port}" in log:
                self.stop()
                raise _PortTakenError(log)
            if listening in log and _accepts(HOST, port):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(
                    f"pgbouncer did not listen on port {port} within {START_TIMEOUT:.0f}s; "
                    f"log:\n{_tail(self.log_path, log_start)}"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        """Shut PgBouncer down at once (SIGTERM), SIGKILL if it lingers."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        _reap(proc, 10)
        self._proc = None

    def close(self) -> None:
        """Stop PgBouncer and delete its directory; safe to call twice."""
        if self._closed:
            return
        try:
            self.stop()
        finally:
            self._closed = True
            shutil.rmtree(self.dir, ignore_errors=True)
            self._untrack()

    def show(self, command: str) -> list[dict[str, str]]:
        """Run ``SHOW <command>`` on the admin console; one dict per row."""
        psql = _psql_path()
        if psql is None:
            raise ServerError("psql not found")
        result = _run(
            [
                psql,
                "-X",
                "-q",
                "-A",
                "-F",
                "\t",
                "-P",
                "footer=off",
                "-h",
                HOST,
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-d",
                "pgbouncer",
                "-c",
                f"SHOW {command}",
            ],
            env={"PGPASSWORD": self.password},
        )
        lines = [line for line in result.stdout.split("\n") if line]
        if not lines:
            return []
        header = lines[0].split("\t")
        return [dict(zip(header, line.split("\t"), strict=False)) for line in lines[1:]]

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines=lines)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<PgBouncer {self.host}:{self._port} {state} {self.dir}>"


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False
