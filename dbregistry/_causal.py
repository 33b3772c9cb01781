"""Read your own writes: causal tokens per context, the positions primaries reached and replicas replayed.

After a transaction that wrote commits on a primary, the current context's
token advances to that primary's WAL position (``read_your_writes: lsn``) or
write time (a duration such as ``2s``). Reads of that primary then go to a
replica that has replayed the position (from a cache refreshed off the hot
path), else to the primary.

The token lives in a `Box` held by a context variable. A box is shared by the
tasks and threads started from the context that holds it (``asyncio`` tasks and
``to_thread`` copy the context, not the box), so a request's writes made in a
thread pool are seen by the request that started them; contexts that never
wrote and were never given a token have no box, and no token.

A token is ``v1.`` and the base64url of 13 bytes per primary: the first 4 bytes
of the BLAKE2b hash of the primary's name, the kind (0: WAL position, 1: write
time) and the value (bytes of WAL, or milliseconds since the epoch), big-endian.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import contextvars
import hashlib
import logging
import math
import re
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import event
from sqlalchemy.sql.elements import TextClause

from ._connect import bounded_connect
from ._durations import seconds_of

if TYPE_CHECKING:
    from types import TracebackType

    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = [
    "CURRENT",
    "LSN",
    "TIME",
    "Box",
    "CausalBlock",
    "Mark",
    "PrimaryPositions",
    "current_token",
    "decode",
    "encode",
    "format_lsn",
    "instrument",
    "key_of",
]

logger = logging.getLogger("dbregistry.routing")

LSN: Final = 0
TIME: Final = 1
_VERSION: Final = "v1."
_ENTRY: Final = struct.Struct(">4sBQ")
_MAX_ENTRIES: Final = 16
_MAX_TOKEN: Final = len(_VERSION) + 4 * math.ceil(_ENTRY.size * _MAX_ENTRIES / 3)
# A read that found no replica caught up asks for fresh positions at most this often.
REFRESH_INTERVAL: Final = 0.05
# A sync read that found no replica caught up waits this long for the refresh it started.
INLINE_WAIT: Final = 0.1
# A refresh not finished after this long (a hung connect) no longer stops the next one.
_REFRESH_STALE_AFTER: Final = 30.0
# A refresh's new connection gives up after this long (a server that accepts and never answers).
_REFRESH_CONNECT_TIMEOUT: Final = 5.0


# The insert position covers the commit record even under synchronous_commit = off (the
# write and flush positions can still be short of it), but on an idle primary it can lie
# just past a page header (24 bytes, 40 at the start of a segment) that a replica which has
# replayed everything reports only once more WAL comes: the header is taken off, so that
# the position is one such a replica reaches. Numeric, not pg_lsn: asyncpg decodes pg_lsn
# as an integer and psycopg as text.
_POSITION_TEMPLATE: Final = (
    "select (pg_wal_lsn_diff(l, '0/0') - case when o = 40 then 40 "
    "when o % current_setting('wal_block_size')::int = 24 then 24 else 0 end)::text "
    "from (select l, (pg_walfile_name_offset(l)).file_offset as o from (select :lsn as l) as i) as p"
)


def position_sql(lsn: str = "pg_current_wal_insert_lsn()") -> str:
    """The query of a commit's position: ``lsn`` (this module's expression, or a test's literal) in bytes,
    less a page header it points just past."""
    return _POSITION_TEMPLATE.replace(":lsn", lsn)


_POSITION_SQL: Final = position_sql()
_PRIMARY_NOW_SQL: Final = "select pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::text"
# NULL on a server that is not replaying (a promoted replica): its position says nothing.
_REPLAYED_SQL: Final = (
    "select pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::text, "
    "case when pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() then 0 "
    "else extract(epoch from now() - pg_last_xact_replay_timestamp()) end"
)

_READ_ONLY_WORDS: Final = frozenset(
    {"select", "show", "explain", "values", "table", "fetch", "begin", "start", "commit", "rollback", "end", "set",
     "reset", "savepoint", "release", "prepare", "deallocate", "discard", "listen", "unlisten", "close", "declare"}
)  # fmt: skip
_FIRST_WORD: Final = re.compile(r"\s*(?:/\*.*?\*/\s*|--[^\n]*\n\s*)*([A-Za-z]+)", re.DOTALL)
_WRITE_WORD: Final = re.compile(r"\b(?:insert|update|delete|merge)\b", re.IGNORECASE)


# -- tokens ---------------------------------------------------------------------------------------


def key_of(name: str) -> bytes:
    """The 4 bytes that stand for a primary in a token: a hash, so a token does not show the names."""
    return hashlib.blake2b(name.encode(), digest_size=4).digest()


class Mark:
    """What one context needs of one primary: a WAL position or a write time (ms).

    ``arrived`` is the monotonic time a position came in from a token (0.0 for a
    position this process saw committed): until the primary is seen to have reached
    it, it may be forged or from another cluster (see `PrimaryPositions.needed`).
    """

    __slots__ = ("arrived", "kind", "value")

    def __init__(self, kind: int, value: int, arrived: float = 0.0) -> None:
        self.kind = kind
        self.value = value
        self.arrived = arrived

    def __repr__(self) -> str:
        shown = format_lsn(self.value) if self.kind == LSN else f"{self.value}ms"
        return f"Mark({'lsn' if self.kind == LSN else 'time'} {shown})"


def _later(a: Mark | None, b: Mark) -> Mark:
    if a is None or a.kind != b.kind or b.value > a.value or (b.value == a.value and not b.arrived):
        return b
    return a


class Box:
    """The token of a context: one `Mark` per primary; ``written`` holds the marks of this block's own writes."""

    __slots__ = ("lock", "marks", "written")

    def __init__(self, marks: Mapping[bytes, Mark] | None = None) -> None:
        self.lock = threading.Lock()
        self.marks: dict[bytes, Mark] = dict(marks or {})
        self.written: dict[bytes, Mark] = {}

    def advance(self, key: bytes, mark: Mark) -> None:
        with self.lock:
            self.marks[key] = _later(self.marks.get(key), mark)
            self.written[key] = _later(self.written.get(key), mark)

    def merge(self, marks: Mapping[bytes, Mark]) -> None:
        with self.lock:
            for key, mark in marks.items():
                self.marks[key] = _later(self.marks.get(key), mark)
                self.written[key] = _later(self.written.get(key), mark)


CURRENT: contextvars.ContextVar[Box | None] = contextvars.ContextVar("dbregistry_causal", default=None)


def current_box() -> Box:
    """The current context's box, made (and set) on its first write."""
    box = CURRENT.get()
    if box is None:
        box = Box()
        CURRENT.set(box)
    return box


def encode(marks: Mapping[bytes, Mark]) -> str | None:
    """The token of ``marks`` (None when there are none).

    >>> encode({key_of("app"): Mark(LSN, 0x3000000)})
    'v1.JH6mPAAAAAAAAwAAAA'
    """
    if not marks:
        return None
    entries = sorted(marks.items())[:_MAX_ENTRIES]
    raw = b"".join(_ENTRY.pack(key, mark.kind, mark.value) for key, mark in entries)
    return _VERSION + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode(token: str) -> dict[bytes, Mark] | None:
    """The marks of a token, or None (logged, never raised) when it is not one this version reads.

    A write time in the future (a clock ahead, or forged) counts as now; a position
    is held as arrived now, for `PrimaryPositions.needed` to check against the primary.
    """
    problem = _problem(token)
    if problem is not None:
        logger.info("causal token ignored: %s", problem)
        return None
    raw = base64.urlsafe_b64decode(token[len(_VERSION) :] + "=" * (-len(token) % 4))
    now_ms = int(time.time() * 1000)
    arrived = time.monotonic()
    marks: dict[bytes, Mark] = {}
    for key, kind, value in _ENTRY.iter_unpack(raw):
        mark = Mark(LSN, value, arrived) if kind == LSN else Mark(TIME, min(value, now_ms))
        marks[key] = _later(marks.get(key), mark)
    return marks


def _problem(token: object) -> str | None:
    if not isinstance(token, str):
        return f"not a string ({type(token).__name__})"
    if len(token) > _MAX_TOKEN:
        return f"{len(token)} characters, longer than any token ({_MAX_TOKEN})"
    if not token.startswith(_VERSION):
        return f"not a {_VERSION[:-1]} token ({len(token)} characters)"
    body = token[len(_VERSION) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        return f"not base64url ({len(token)} characters)"
    if not raw or len(raw) % _ENTRY.size:
        return f"{len(raw)} bytes, not a whole number of entries"
    if any(kind not in (LSN, TIME) for _, kind, _ in _ENTRY.iter_unpack(raw)):
        return "an entry of an unknown kind"
    return None


def current_token() -> str | None:
    """The current context's token (None when it wrote nothing and was given none)."""
    box = CURRENT.get()
    return None if box is None else encode(box.marks)


def format_lsn(value: int) -> str:
    """A WAL position as PostgreSQL writes it.

    >>> format_lsn(0x3000028)
    '0/3000028'
    """
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


class CausalBlock:
    """A block in which a token is current: ``with registry.causal(token):`` (or ``async with``).

    On entry the block's token is the enclosing one merged with ``token``; on exit
    the positions of the block's own writes are merged into the enclosing context.
    """

    __slots__ = ("_given", "_reset", "box")

    def __init__(self, token: str | None = None) -> None:
        self._given = token
        self._reset: contextvars.Token[Box | None] | None = None
        self.box = Box()

    def token(self) -> str | None:
        """The block's token as it stands: the one given, advanced by the block's writes."""
        return encode(self.box.marks)

    def __enter__(self) -> CausalBlock:
        enclosing = CURRENT.get()
        if enclosing is not None:
            self.box.marks.update(enclosing.marks)
        if self._given:
            marks = decode(self._given)
            if marks:
                for key, mark in marks.items():
                    self.box.marks[key] = _later(self.box.marks.get(key), mark)
        self._reset = CURRENT.set(self.box)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if self._reset is not None:
            CURRENT.reset(self._reset)
            self._reset = None
        if self.box.written:
            current_box().merge(self.box.written)

    async def __aenter__(self) -> CausalBlock:
        return self.__enter__()

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(kind, error, tb)


# -- positions of one primary and its replicas ----------------------------------------------------


class PrimaryPositions:
    """One primary's read-your-writes state: its mode, how far it got, how far each replica replayed.

    Changed by commits (``advanced``) and by refreshes; read without a lock on the
    hot path (each field is replaced whole).
    """

    __slots__ = (
        "behind",
        "checked_at",
        "floor",
        "key",
        "kind",
        "lag",
        "lock",
        "name",
        "next_refresh",
        "primary_position",
        "replayed",
        "replicas",
        "tasks",
        "threads",
        "want_primary",
        "window_ms",
    )

    def __init__(self, name: str, setting: str, replicas: tuple[str, ...] = ()) -> None:
        self.name = name
        self.replicas = replicas
        # Marks at or below this need nothing: every replica has replayed them (lsn), or their
        # window has ended (time). Only rises; lets the hot path skip the rest with one comparison.
        self.floor = -1
        self.key = key_of(name)
        self.kind = LSN if setting == "lsn" else TIME
        self.window_ms = 0 if setting == "lsn" else int(seconds_of(setting) * 1000)
        self.lock = threading.Lock()
        self.primary_position = 0  # the highest position the primary is known to have reached
        self.checked_at = 0.0  # monotonic time of the last refresh that asked the primary
        self.want_primary = False
        self.replayed: dict[str, int] = {}
        self.lag: dict[str, float | None] = {}
        self.next_refresh = 0.0
        self.behind = 0  # reads sent to the primary because no replica had caught up
        self.tasks: set[asyncio.Task[None]] = set()
        self.threads: set[threading.Thread] = set()

    def needed(self, mark: Mark) -> int | None:
        """The position a replica must have replayed for ``mark`` (None: any replica will do; -1: none will)."""
        if mark.kind != self.kind:
            return None  # a mark of another mode (the setting changed since): not this mode's to judge
        if mark.kind == TIME:
            now_ms = int(time.time() * 1000)
            self.floor = max(self.floor, now_ms - self.window_ms)
            return -1 if now_ms < mark.value + self.window_ms else None
        position = mark.value
        if mark.arrived and position > self.primary_position:
            if self.checked_at > mark.arrived:
                # The primary was asked after the token came and had not reached it: forged, or
                # from another cluster. Its reads need no more than the primary had then.
                return self.primary_position
            self.want_primary = True
        return position

    def pick(self, position: int, active: tuple[str, ...], start: int) -> str | None:
        """A replica among ``active`` known to have replayed ``position``, round robin from ``start``."""
        replayed = self.replayed
        count = len(active)
        for i in range(count):
            name = active[(start + i) % count]
            if replayed.get(name, -1) >= position:
                return name
        return None

    def advanced(self, dbapi_connection: Any) -> None:
        """Advance the current context's token after a commit that wrote, on ``dbapi_connection``."""
        if self.kind == TIME:
            current_box().advance(self.key, Mark(TIME, int(time.time() * 1000)))
            return
        try:
            position = _position(dbapi_connection)
        except Exception as e:  # the commit succeeded: its caller must not see this fail
            logger.warning(
                "read_your_writes: the WAL position of a commit on %r could not be read (%s); "
                "reads after it may go to a replica that has not replayed it",
                self.name,
                type(e).__name__,
            )
            return
        with self.lock:
            self.primary_position = max(self.primary_position, position)
        current_box().advance(self.key, Mark(LSN, position))

    # -- refreshing the cache --------------------------------------------------------------------

    def refresh_due(self) -> bool:
        """Claim the next refresh (True) when none is running and the last is old enough."""
        now = time.monotonic()
        if now < self.next_refresh:
            return False
        with self.lock:
            if now < self.next_refresh:
                return False
            self.next_refresh = now + _REFRESH_STALE_AFTER
            return True

    def _done(self) -> None:
        with self.lock:
            self.next_refresh = time.monotonic() + REFRESH_INTERVAL

    def refresh(self, replicas: tuple[str, ...], engine: Callable[[str], Engine]) -> None:
        """Ask each replica how far it replayed (and the primary how far it got, when a token needs it)."""
        asked_at = time.monotonic()
        want_primary, self.want_primary = self.want_primary, False
        try:
            if want_primary:
                with _connect(engine(self.name)) as conn:
                    self._primary_at(conn.exec_driver_sql(_PRIMARY_NOW_SQL).scalar(), asked_at)
        except Exception as e:  # health is the router's: a replica that fails is marked down there
            self._failed(self.name, e)
        try:
            for name in replicas:
                try:
                    with _connect(engine(name)) as conn:
                        self._replica_at(name, conn.exec_driver_sql(_REPLAYED_SQL).one())
                except Exception as e:
                    self._failed(name, e)
        finally:
            self._done()

    async def arefresh(self, replicas: tuple[str, ...], engine: Callable[[str], AsyncEngine]) -> None:
        """`refresh` with the async engines."""
        asked_at = time.monotonic()
        want_primary, self.want_primary = self.want_primary, False
        try:
            if want_primary:
                async with _aconnect(engine(self.name)) as conn:
                    self._primary_at((await conn.exec_driver_sql(_PRIMARY_NOW_SQL)).scalar(), asked_at)
        except Exception as e:
            self._failed(self.name, e)
        try:
            for name in replicas:
                try:
                    async with _aconnect(engine(name)) as conn:
                        self._replica_at(name, (await conn.exec_driver_sql(_REPLAYED_SQL)).one())
                except Exception as e:
                    self._failed(name, e)
        finally:
            self._done()

    def _failed(self, name: str, error: Exception) -> None:
        logger.debug("read_your_writes: the WAL position of %r could not be read: %s", name, type(error).__name__)

    def start_refresh(
        self,
        replicas: tuple[str, ...],
        engine: Callable[[str], Engine],
        async_engine: Callable[[str], AsyncEngine],
        *,
        is_async: bool,
    ) -> threading.Thread | None:
        """Refresh off the caller's path: a task on the running loop for async callers, else a thread
        (returned, for a sync caller to wait on for a bounded time)."""
        if is_async:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._done()
                return None
            task = loop.create_task(self.arefresh(replicas, async_engine), name=f"dbregistry positions of {self.name}")
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            return None
        thread = threading.Thread(
            target=self._refresh_in_thread,
            args=(replicas, engine),
            name=f"dbregistry positions of {self.name}",
            daemon=True,
        )
        self.threads.add(thread)
        try:
            thread.start()
        except RuntimeError:  # the interpreter is shutting down
            self.threads.discard(thread)
            self._done()
            return None
        return thread

    def _refresh_in_thread(self, replicas: tuple[str, ...], engine: Callable[[str], Engine]) -> None:
        try:
            self.refresh(replicas, engine)
        finally:
            self.threads.discard(threading.current_thread())

    def stop(self, timeout: float) -> None:
        """Wait (up to ``timeout`` each) for refreshes in threads; cancel tasks of running loops (closing)."""
        for thread in list(self.threads):
            if thread is not threading.current_thread():
                thread.join(timeout)
        for task in list(self.tasks):
            loop = task.get_loop()
            if not task.done() and loop.is_running() and not loop.is_closed():
                loop.call_soon_threadsafe(task.cancel)

    async def astop(self, timeout: float) -> None:
        """Await the refresh tasks of the running loop (up to ``timeout``), then `stop` the rest."""
        current = asyncio.get_running_loop()
        mine = [t for t in self.tasks if not t.done() and t.get_loop() is current]
        if mine:
            _, pending = await asyncio.wait(mine, timeout=timeout)
            for task in pending:
                task.cancel()
        if self.threads:
            await asyncio.to_thread(self.stop, timeout)

    def _primary_at(self, value: Any, asked_at: float) -> None:
        with self.lock:
            if value is not None:
                self.primary_position = max(self.primary_position, int(value))
            self.checked_at = asked_at

    def _replica_at(self, name: str, row: Any) -> None:
        replayed, lag = row
        self.replayed = {**self.replayed, name: -1 if replayed is None else int(replayed)}
        self.lag = {**self.lag, name: None if lag is None else float(lag)}
        if self.kind == LSN:
            self.floor = max(self.floor, min((self.replayed.get(r, -1) for r in self.replicas), default=-1))

    def after_fork_in_child(self) -> None:
        self.lock = threading.Lock()
        self.tasks = set()
        self.threads = set()
        self.next_refresh = 0.0


def _position(dbapi_connection: Any) -> int:
    """The primary's WAL position, asked on the connection that just committed, outside any transaction."""
    autocommit = getattr(dbapi_connection, "autocommit", None)
    if autocommit is False:
        dbapi_connection.autocommit = True  # a driver flag: no round trip, and no transaction begun
    try:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(_POSITION_SQL)
            row = cursor.fetchone()
        finally:
            cursor.close()
        if autocommit is None:
            dbapi_connection.rollback()
    finally:
        if autocommit is False:
            dbapi_connection.autocommit = False
    return int(row[0])


# -- which statements write ------------------------------------------------------------------------


def writes(context: Any, statement: str) -> bool:
    """Whether a statement may have written: Core/ORM DML and DDL do, a compiled SELECT does not;
    SQL text does unless its first word is one that reads (``select``, ``show``, ``set``, ...)."""
    if context is not None:
        if context.isinsert or context.isupdate or context.isdelete or context.isddl:
            return True
        compiled = context.compiled
        if compiled is not None and not isinstance(compiled.statement, TextClause):
            return False
    match = _FIRST_WORD.match(statement)
    if match is None:
        return False
    word = match.group(1).lower()
    if word == "with":
        return _WRITE_WORD.search(statement) is not None
    return word not in _READ_ONLY_WORDS


def instrument(engine: Engine, primary: PrimaryPositions) -> None:
    """Advance the token after each commit of a transaction that wrote on ``engine`` (and, under
    AUTOCOMMIT, after each writing statement): one query after such a commit, none otherwise."""
    dialect = engine.dialect
    wrote: set[int] = set()
    do_commit = dialect.do_commit
    do_rollback = dialect.do_rollback

    # (conn, cursor, statement, parameters, context, executemany)
    def on_execute(conn: Connection, cursor: Any, statement: str, *rest: Any) -> None:
        if not writes(rest[1], statement):
            return
        fairy: Any = conn.connection
        raw = fairy.dbapi_connection
        if getattr(raw, "autocommit", False) is True:
            primary.advanced(raw)
        else:
            wrote.add(id(raw))

    def do_commit_and_advance(dbapi_connection: Any) -> None:
        do_commit(dbapi_connection)
        raw = getattr(dbapi_connection, "dbapi_connection", None) or dbapi_connection
        if wrote and id(raw) in wrote:
            wrote.discard(id(raw))
            primary.advanced(raw)

    def do_rollback_and_forget(dbapi_connection: Any) -> None:
        if wrote:
            wrote.discard(id(getattr(dbapi_connection, "dbapi_connection", None) or dbapi_connection))
        do_rollback(dbapi_connection)

    dialect.do_commit = do_commit_and_advance  # type: ignore[method-assign]
    dialect.do_rollback = do_rollback_and_forget  # type: ignore[method-assign]
    event.listen(engine, "after_cursor_execute", on_execute)


@contextlib.contextmanager
def _connect(engine: Engine) -> Iterator[Connection]:
    with bounded_connect(engine, _REFRESH_CONNECT_TIMEOUT), engine.connect() as conn:
        yield conn


@contextlib.asynccontextmanager
async def _aconnect(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    with bounded_connect(engine.sync_engine, _REFRESH_CONNECT_TIMEOUT):
        async with engine.connect() as conn:
            yield conn
