"""The FDO path's database access on the driver itself (``sqlite3``, ``psycopg``), no SQLAlchemy.

A worker that serves only devices runs a handful of fixed statements per message, and
SQLAlchemy (13.6 MB of a worker's memory, and 15–60 µs per statement) only stood between
them and the driver. This module is that path without it:

* :class:`Database`: a pool of driver connections to one database URL (the same URLs
  and the same connection settings as :func:`fdo_server.db.make_engine`: SQLite in WAL
  mode with ``synchronous=NORMAL``, foreign keys and a 30 s busy timeout; PostgreSQL
  with bounded connect, send and keepalive timeouts, every commit durable). The admin
  plane's SQLAlchemy engine on the same database is :meth:`Database.engine`, made on
  first use; a process that has made it takes the FDO path's connections from the
  engine's pool too (one pool per process), a worker that serves only devices has its own.
* :func:`message_scope`: one transaction per FDO message: on PostgreSQL the ``BEGIN``
  waits for the first write, and a scope whose only write is its :func:`last_write` runs
  that statement on its own; :func:`require_durable` makes SQLite's commit of it durable,
  :func:`after_commit` runs callbacks once it committed.
* :class:`Sql`: one statement, written once in the SQL both databases take (``:name``
  parameters), with the conversions SQLAlchemy's types do on SQLite (datetimes stored as
  its text, booleans as integers, JSON as its text) so that rows read and written here
  and by the ORM are the same. ``tests/test_sql.py`` runs every statement against the
  migrated schemas.

Statements run on :func:`current`: the scope this module opened, or a SQLAlchemy unit
of work (:mod:`fdo_server.db` lends its connection through the same context variable),
so code shared by both paths runs the same statements on either.

Errors are the driver's own (``sqlite3.IntegrityError``, ``psycopg.OperationalError``,
...): the FDO endpoint answers any of them with an ErrorMessage.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import parse_qsl, urlencode

from transport.server import InlineWhileFast

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from fdo_server.pq import PqCursor

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Seconds a checkout waits for a free connection before :class:`PoolTimeout` (SQLAlchemy's).
POOL_TIMEOUT = 30.0
#: ``Retry-After`` (seconds) of the 503 while the database is unavailable.
RETRY_AFTER_SECONDS = 5
#: PostgreSQL connections older than this many seconds are replaced at checkout.
RECYCLE_SECONDS = 1800.0
#: Settings of every PostgreSQL connection (:func:`fdo_server.db.make_engine` uses them
#: too): libpq's timeouts, and psycopg's preparing off: a connection's statements are
#: prepared by :class:`fdo_server.pq.PqCursor`, and psycopg, once it has prepared some of
#: its own, sends ``DEALLOCATE ALL`` after every ``ROLLBACK`` it runs (SQLAlchemy's pool
#: runs one as it takes a connection back), which would drop those too.
PG_CONNECT_ARGS: dict[str, Any] = {
    "connect_timeout": 5,
    "tcp_user_timeout": 10_000,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "prepare_threshold": None,
}

_LOCKING = re.compile(r"\bFOR\s+(?:NO\s+KEY\s+)?(?:UPDATE|SHARE|KEY\s+SHARE)\b", re.IGNORECASE)


def read_only(statement: str) -> bool:
    """A plain SELECT (no row locks): it needs no transaction of its own. (The services'
    SELECTs call no functions with side effects.)"""
    head = statement.lstrip()[:6]
    return head.upper() == "SELECT" and _LOCKING.search(statement) is None


class PoolTimeout(Exception):
    """No connection became free within :data:`POOL_TIMEOUT` seconds."""


# ------------------------------------------------------------------------------ URLs


def sqlite_url(path: str | Path) -> str:
    """The SQLAlchemy URL of a SQLite file."""
    return f"sqlite:///{Path(path)}"


def is_sqlite(url: str) -> bool:
    """True for a SQLite database URL (a local file or memory: no network round trips)."""
    return url.startswith("sqlite")


def inline_messages(url: str) -> bool | InlineWhileFast:
    """Where the services run FDO messages (:func:`transport.server.fdo_router`,
    ``inline``): on SQLite always on the event loop; on a networked database on the loop
    while messages are quick (:class:`transport.server.InlineWhileFast`)."""
    return True if is_sqlite(url) else InlineWhileFast()


@dataclass(frozen=True, slots=True)
class Target:
    """Where a database URL points, as the driver takes it."""

    dialect: str  # "sqlite" or "postgresql"
    database: str  # SQLite: a path, a ``file:`` URI or ":memory:"; PostgreSQL: a libpq URI
    uri: bool = False  # SQLite: ``database`` is a ``file:`` URI

    @property
    def memory(self) -> bool:
        return self.dialect == "sqlite" and self.database == ":memory:"


def parse_url(url: str) -> Target:
    """The driver's view of a SQLAlchemy database URL (the forms the services take:
    ``sqlite://``, ``sqlite:///path``, ``sqlite:///file:path?mode=rw&uri=true``,
    ``postgresql+psycopg://user:password@host:port/database?libpq-options``)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"{url!r} is not a database URL")
    backend, _, driver = scheme.partition("+")
    if backend == "sqlite" and driver in ("", "pysqlite"):
        if rest in ("", "/", "/:memory:"):
            return Target("sqlite", ":memory:")
        if not rest.startswith("/"):
            raise ValueError(f"{url!r}: a SQLite URL is sqlite:///path")
        path, _, query = rest[1:].partition("?")
        options = dict(parse_qsl(query))
        if options.pop("uri", "").lower() in ("true", "1"):
            return Target("sqlite", path + (f"?{urlencode(options)}" if options else ""), uri=True)
        if options:
            raise ValueError(f"{url!r}: SQLite URL options {sorted(options)} are not supported")
        return Target("sqlite", path)
    if backend == "postgresql" and driver == "psycopg":
        return Target("postgresql", f"postgresql://{rest}")
    raise ValueError(f"{url!r}: only sqlite:/// and postgresql+psycopg:// databases are supported")


# ----------------------------------------------------------------------- connections


#: Non-empty once the process warned about ``synchronous_commit=off`` (warned once, then debug).
_warned_sync_off: list[bool] = []


def durable_commits(raw: Any) -> None:
    """On a new PostgreSQL connection: every commit waits for its WAL flush.

    ``synchronous_commit=off`` (set for the server, the database or the role) would
    acknowledge commits that a crash of the server can lose; it is raised to ``on`` for
    this connection, with a warning (the first time in the process). Any other value
    (``on``, ``local``, ``remote_write``, ``remote_apply``) flushes locally and is kept.
    One round trip per new connection.
    """
    autocommit = raw.autocommit
    raw.autocommit = True  # the SET must not ride in a transaction rolled back later
    try:
        with raw.cursor() as cursor:
            cursor.execute("SHOW synchronous_commit")
            row = cursor.fetchone()
            if row is not None and str(row[0]).lower() == "off":
                cursor.execute("SET synchronous_commit = on")
                (log.debug if _warned_sync_off else log.warning)(
                    "PostgreSQL has synchronous_commit=off for this database or role; "
                    "the service's connections use synchronous_commit=on (commits that "
                    "devices act on must be durable)"
                )
                _warned_sync_off.append(True)
    finally:
        raw.autocommit = autocommit


def sqlite_pragmas(raw: Any, *, memory: bool) -> None:
    """What every SQLite connection of the services runs first."""
    cursor = raw.cursor()
    if not memory:
        cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def sqlite_full_sync(raw: Any) -> None:
    """The open unit of work on SQLite connection ``raw`` commits with ``synchronous=FULL``
    (:func:`require_durable`); ``RuntimeError`` once it wrote (SQLite cannot change it
    inside a transaction)."""
    if raw.in_transaction:
        raise RuntimeError("require_durable() after the unit of work's first write")
    raw.execute("PRAGMA synchronous=FULL")


def is_disconnect(exc: BaseException) -> bool:
    """A PostgreSQL driver error after which the connection is not to be used again.
    (psycopg is imported here, not at the top: on SQLite a service never loads it, 9 MB.)"""
    import psycopg

    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


@dataclass(eq=False)
class _Pooled:
    raw: Any
    created: float
    generation: int


class Database:
    """A pool of driver connections to ``url``: up to ``pool_size`` kept open, at most
    ``pool_size + max_overflow`` at once (SQLAlchemy's numbers per backend), a checkout
    waiting :data:`POOL_TIMEOUT` seconds at most. An in-memory SQLite database is one
    connection that everything shares (it would be a new, empty database per connection).

    A PostgreSQL connection that failed with a disconnect is closed, and so are the idle
    ones opened before it (the server restarted, or the network dropped them all):
    the next checkouts connect anew.
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int | None = None,
        max_overflow: int | None = None,
        timeout: float = POOL_TIMEOUT,
    ) -> None:
        self.url = url
        self.target = parse_url(url)
        self.dialect = self.target.dialect
        sqlite = self.dialect == "sqlite"
        self.pool_size = pool_size if pool_size is not None else (5 if sqlite else 10)
        overflow = max_overflow if max_overflow is not None else (10 if sqlite else 20)
        self.timeout = timeout
        self._slots = threading.BoundedSemaphore(self.pool_size + overflow)
        self._lock = threading.Lock()
        self._idle: list[_Pooled] = []
        self._generation = 0
        self._shared: _Pooled | None = None  # the one connection of an in-memory database
        self._commit_listeners: list[Callable[[Any], None]] = []
        self._engine: Engine | None = None

    # -- connections

    def _open(self) -> Any:
        target = self.target
        if target.dialect == "sqlite":
            import sqlite3  # here: a worker on PostgreSQL never loads it (0.9 MB)

            raw = sqlite3.connect(target.database, check_same_thread=False, timeout=30, uri=target.uri)
            sqlite_pragmas(raw, memory=target.memory)
            return raw
        import psycopg

        conn = psycopg.connect(target.database, autocommit=True, **PG_CONNECT_ARGS)
        try:
            durable_commits(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _memory(self, *, locked: bool = False) -> _Pooled:
        """The one connection of an in-memory database (made on first use)."""
        with contextlib.nullcontext() if locked else self._lock:
            if self._shared is None:
                self._shared = _Pooled(self._open(), time.monotonic(), 0)
            return self._shared

    def raw_connection(self) -> Any:
        """A new driver connection, outside the pool (the caller closes it)."""
        return self._open()

    def _checkout(self) -> _Pooled:
        if self.target.memory:
            return self._memory()
        if not self._slots.acquire(timeout=self.timeout):
            raise PoolTimeout(f"no database connection free within {self.timeout:g} s")
        try:
            while True:
                with self._lock:
                    entry = self._idle.pop() if self._idle else None
                    generation = self._generation
                if entry is None:
                    return _Pooled(self._open(), time.monotonic(), generation)
                stale = self.dialect == "postgresql" and (
                    entry.generation != generation or time.monotonic() - entry.created > RECYCLE_SECONDS
                )
                if not stale:
                    return entry
                _close(entry.raw)
        except BaseException:
            self._slots.release()
            raise

    def _checkin(self, entry: _Pooled, *, reusable: bool = True, disconnected: bool = False) -> None:
        """Back to the pool: kept idle when ``reusable`` and there is room, else closed;
        after a ``disconnected`` one, the idle ones are closed too (likely gone as well)."""
        if entry is self._shared:
            return
        try:
            if disconnected:
                with self._lock:
                    self._generation += 1
                    doomed, self._idle = self._idle, []
                for other in doomed:
                    _close(other.raw)
            with self._lock:
                keep = reusable and entry.generation == self._generation and len(self._idle) < self.pool_size
                if keep:
                    self._idle.append(entry)
            if not keep:
                _close(entry.raw)
        finally:
            self._slots.release()

    @contextlib.contextmanager
    def connection(self) -> Iterator[Connection]:
        """A pooled connection for one unit of work (:func:`message_scope` commits it).

        Once this process has made the SQLAlchemy engine (:meth:`engine`: it serves the
        admin plane too), the connection comes from the engine's pool: one pool per
        process, not two. A worker that serves only devices never makes it."""
        kind = _SqliteConnection if self.dialect == "sqlite" else _PostgresConnection
        engine = self._engine
        if engine is not None and not self.target.memory:
            with self._borrowed(engine, kind) as conn:
                yield conn
            return
        entry = self._checkout()
        conn = kind(entry.raw, self._commit_listeners)
        try:
            yield conn
        finally:
            reusable = conn.release()
            self._checkin(entry, reusable=reusable, disconnected=conn.disconnected)

    @contextlib.contextmanager
    def _borrowed(self, engine: Engine, kind: type[Connection]) -> Iterator[Connection]:
        """A connection of ``engine``'s pool, in autocommit on PostgreSQL while it is ours
        (the deferred BEGIN), given back as the pool had it."""
        proxied = engine.raw_connection()
        raw: Any = proxied.dbapi_connection
        postgres = self.dialect == "postgresql"
        if postgres:
            raw.autocommit = True
        conn = kind(raw, self._commit_listeners)
        try:
            yield conn
        finally:
            reusable = conn.release()
            if reusable and postgres:
                try:
                    raw.autocommit = False
                except Exception:  # noqa: BLE001 - still in a transaction: dropped instead
                    reusable = False
            if not reusable:
                proxied.invalidate()
            proxied.close()
            if conn.disconnected:
                engine.dispose()  # its idle connections are likely gone too (as SQLAlchemy does)

    def on_commit(self, listener: Callable[[Any], None]) -> None:
        """Call ``listener`` with the driver connection just before each unit of work
        commits (on PostgreSQL: each that wrote in a transaction), as SQLAlchemy's
        ``commit`` event: for observing what a commit is (its ``synchronous`` level)."""
        self._commit_listeners.append(listener)

    # -- SQLAlchemy, for the admin plane and migrations

    def engine(self) -> Engine:
        """The SQLAlchemy engine on this database (made on first use; disposed with it).
        An in-memory database's engine uses the same one connection."""
        with self._lock:
            if self._engine is None:
                from fdo_server.db import make_engine

                if self.target.memory:
                    shared = self._memory(locked=True).raw
                    self._engine = make_engine(self.url, creator=lambda: shared)
                else:
                    self._engine = make_engine(self.url)
            return self._engine

    def dispose(self) -> None:
        """Close the idle connections (and the SQLAlchemy engine's); the pool stays usable.
        An in-memory database is closed, and so gone: the next use starts an empty one."""
        with self._lock:
            self._generation += 1
            doomed, self._idle = self._idle, []
            engine = self._engine
            shared, self._shared = self._shared, None
            if shared is not None:
                self._engine = None  # its one connection is the shared one
        for entry in doomed:
            _close(entry.raw)
        if engine is not None:
            engine.dispose()
        if shared is not None:
            _close(shared.raw)


def _close(raw: Any) -> None:
    with contextlib.suppress(Exception):
        raw.close()


# -------------------------------------------------------------------- units of work


class Conn(Protocol):
    """What a :class:`Sql` statement runs on: a unit of work's connection."""

    @property
    def dialect(self) -> str: ...

    def run(self, sql: str, params: Mapping[str, Any], read: Callable[[Any], T]) -> T:
        """Execute ``sql`` with ``params``; ``read`` takes the result from the driver's cursor."""
        ...

    def require_durable(self) -> None: ...

    def last_write(self) -> contextlib.AbstractContextManager[None]: ...


class Connection:
    """One unit of work's driver connection (:meth:`Database.connection`)."""

    dialect: str

    def __init__(self, raw: Any, listeners: list[Callable[[Any], None]]) -> None:
        self.raw = raw
        self._listeners = listeners
        #: A statement failed because the connection to the server was lost.
        self.disconnected = False

    def _committing(self) -> None:
        for listener in self._listeners:
            listener(self.raw)

    def run(self, sql: str, params: Mapping[str, Any], read: Callable[[Any], T]) -> T:
        raise NotImplementedError

    def commit(self) -> None:
        raise NotImplementedError

    def rollback(self) -> None:
        raise NotImplementedError

    def release(self) -> bool:
        """Back to the pool's state; False when the connection is not to be used again."""
        raise NotImplementedError

    def require_durable(self) -> None:
        """Make this unit of work's commit durable (:func:`require_durable`)."""

    def last_write(self) -> contextlib.AbstractContextManager[None]:
        """Around the unit of work's last write (only PostgreSQL's does anything)."""
        return contextlib.nullcontext()


class _SqliteConnection(Connection):
    """``sqlite3`` in its default transaction handling, as SQLAlchemy uses it: the driver
    begins a transaction before the first INSERT, UPDATE or DELETE; :meth:`commit` ends it."""

    dialect = "sqlite"

    def __init__(self, raw: Any, listeners: list[Callable[[Any], None]]) -> None:
        super().__init__(raw, listeners)
        self.durable = False

    def run(self, sql: str, params: Mapping[str, Any], read: Callable[[Any], T]) -> T:
        cursor = self.raw.cursor()
        try:
            cursor.execute(sql, params)
            return read(cursor)
        finally:
            cursor.close()

    def commit(self) -> None:
        self._committing()
        self.raw.commit()

    def rollback(self) -> None:
        self.raw.rollback()

    def require_durable(self) -> None:
        """This transaction's commit waits for an fsync of the WAL (``synchronous=FULL``,
        back to NORMAL when the connection returns to the pool)."""
        sqlite_full_sync(self.raw)
        self.durable = True

    def release(self) -> bool:
        try:
            if self.raw.in_transaction:
                self.raw.rollback()
            if self.durable:
                self.raw.execute("PRAGMA synchronous=NORMAL")
        except Exception:  # noqa: BLE001 - the connection is dropped instead
            log.warning("dropping a SQLite connection that could not be reset", exc_info=True)
            return False
        return True


class Deferral:
    """A unit of work on PostgreSQL whose ``BEGIN`` waits for its first write."""

    def __init__(self) -> None:
        self.began = False  # BEGIN sent: the writes commit together at the end
        self.last = False  # the statement being run is the last write (:meth:`last_write`)
        self.closed = False  # that last write ran on its own: nothing may follow

    def before(self, cursor: Any, statement: str, *, alone: bool = True) -> None:
        """Before ``statement`` runs on ``cursor``: send ``BEGIN`` if it is the first that
        is not a plain SELECT, unless it is the last write and may run ``alone`` (one
        statement, atomic on its own: no ``BEGIN`` and ``COMMIT`` round trips)."""
        if self.began or read_only(statement):
            return
        if self.closed:
            raise RuntimeError("a write after the unit of work's last write, which already committed")
        if self.last and alone:
            self.closed = True
            return
        cursor.execute("BEGIN")
        self.began = True

    @contextlib.contextmanager
    def last_write(self) -> Iterator[None]:
        """Around the unit of work's last write."""
        self.last = True
        try:
            yield
        finally:
            self.last = False


class _PostgresConnection(Connection):
    """A psycopg connection in autocommit: ``BEGIN`` is sent before the unit of work's
    first write (:func:`message_scope`), unless that write is its :meth:`last_write`.

    Every statement of the unit of work, ``BEGIN`` and ``COMMIT`` included, runs on the
    connection's :class:`fdo_server.pq.PqCursor` (libpq's prepared statements without
    psycopg's cursor machinery: about half the CPU per statement; issue 15's fifteenth
    round), the same one for all its units of work. Each statement's result is read
    (``run``'s ``read``) before the next one runs."""

    dialect = "postgresql"

    def __init__(self, raw: Any, listeners: list[Callable[[Any], None]]) -> None:
        super().__init__(raw, listeners)
        self.deferral = Deferral()
        self._cursor: PqCursor | None = None

    def _cursor_of(self) -> PqCursor:
        cursor = self._cursor
        if cursor is None:
            from fdo_server.pq import cursor_for

            cursor = self._cursor = cursor_for(self.raw)
        return cursor

    def run(self, sql: str, params: Mapping[str, Any], read: Callable[[Any], T]) -> T:
        try:
            cursor = self._cursor_of()
            self.deferral.before(cursor, sql)
            cursor.execute(sql, params)
            return read(cursor)
        except Exception as exc:
            if self.raw.closed or is_disconnect(exc):
                self.disconnected = True
            raise

    def last_write(self) -> contextlib.AbstractContextManager[None]:
        return self.deferral.last_write()

    def commit(self) -> None:
        if self.deferral.began:
            self._committing()
            self.deferral.began = False
            self._cursor_of().execute("COMMIT")

    def rollback(self) -> None:
        if self.deferral.began and not self.disconnected:
            self.deferral.began = False
            with contextlib.suppress(Exception):
                self._cursor_of().execute("ROLLBACK")

    def release(self) -> bool:
        if self.disconnected or self.raw.closed:
            return False
        from psycopg.pq import TransactionStatus

        return bool(self.raw.info.transaction_status == TransactionStatus.IDLE)


_current: ContextVar[Conn | None] = ContextVar("fdo_sql_current", default=None)
_after: ContextVar[list[Callable[[], None]] | None] = ContextVar("fdo_sql_after_commit", default=None)


def current() -> Conn:
    """The connection of the unit of work this code runs in."""
    conn = _current.get()
    if conn is None:
        raise RuntimeError("no unit of work is open")
    return conn


@contextlib.contextmanager
def lend(conn: Conn, callbacks: list[Callable[[], None]]) -> Iterator[None]:
    """Make ``conn`` :func:`current` and collect :func:`after_commit` callbacks in
    ``callbacks`` while the block runs (a SQLAlchemy unit of work, :mod:`fdo_server.db`)."""
    token = _current.set(conn)
    after_token = _after.set(callbacks)
    try:
        yield
    finally:
        _after.reset(after_token)
        _current.reset(token)


@contextlib.contextmanager
def message_scope(database: Database) -> Iterator[Connection]:
    """One transaction: committed on normal exit, rolled back on an exception; then the
    :func:`after_commit` callbacks (module docstring)."""
    callbacks: list[Callable[[], None]] = []
    with database.connection() as conn, lend(conn, callbacks):
        try:
            yield conn
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
    run_after(callbacks)  # reached only when the scope committed


def require_durable() -> None:
    """Make the commit of the open unit of work durable (:mod:`fdo_server.db`'s docstring).

    Call it before the unit of work's first write: SQLite cannot change ``synchronous``
    inside a transaction (``RuntimeError`` if one is open). On PostgreSQL every commit is
    durable already.
    """
    current().require_durable()


def last_write() -> contextlib.AbstractContextManager[None]:
    """Around the unit of work's last write: on PostgreSQL, when nothing before it wrote,
    that one statement runs on its own, in autocommit (no ``BEGIN`` and ``COMMIT``
    round trips). Code must write nothing after it in the same scope (``RuntimeError``)."""
    return current().last_write()


def after_commit(callback: Callable[[], None]) -> None:
    """Call ``callback`` once the open unit of work has committed, and not at all if it
    rolls back; with none open, at once. For telling another thread about rows it can
    only see after the commit (the owner's TO0 scheduler). A callback that raises is
    logged and does not undo anything."""
    pending = _after.get()
    if pending is None:
        run_after([callback])
    else:
        pending.append(callback)


def run_after(callbacks: list[Callable[[], None]]) -> None:
    for callback in callbacks:
        try:
            callback()
        except Exception:
            log.exception("after-commit callback failed")


# ------------------------------------------------------------------------ statements

_PARAMETER = re.compile(r"(?<![:\w]):(\w+)")

#: Every statement made (tests run each against the migrated schemas).
STATEMENTS: list[Sql] = []


def _pyformat(sql: str) -> str:
    return _PARAMETER.sub(r"%(\1)s", sql.replace("%", "%%"))


def sqlite_datetime(value: datetime) -> str:
    """``value`` as :class:`Sql` sends a datetime parameter to SQLite: SQLAlchemy's text
    form for ``DateTime`` (``timezone`` or not), ``YYYY-MM-DD HH:MM:SS.ffffff``, the fields
    as given and no offset (the services store UTC). Also for datetimes inside a JSON
    parameter, which are not converted. ``isoformat`` writes it in a third of the time
    ``strftime`` takes (a few per message)."""
    if value.tzinfo is not None:
        value = value.replace(tzinfo=None)
    return value.isoformat(" ", "microseconds")


def _sqlite_value(value: Any) -> Any:
    return sqlite_datetime(value) if isinstance(value, datetime) else value


@dataclass(frozen=True)
class _Reader:
    """How a statement's rows come back on SQLite: which columns need converting."""

    convert: tuple[tuple[int, Callable[[Any], Any]], ...]

    def row(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        if not self.convert:
            return tuple(row)
        values = list(row)
        for index, to in self.convert:
            if values[index] is not None:
                values[index] = to(values[index])
        return tuple(values)


@dataclass
class Sql:
    """One statement in SQL both databases take, with ``:name`` parameters (``postgresql``
    or ``sqlite``: that database's own text instead). ``datetimes``, ``bools`` and
    ``jsons`` name the result columns SQLAlchemy's ``DateTime``, ``Boolean`` and ``JSON``
    would convert on SQLite (a naive datetime from its text; a bool from 0 or 1; the value
    ``json.loads`` makes of the text); datetime parameters are sent as that text there.
    On PostgreSQL the driver converts datetimes and booleans both ways itself, and parses
    ``json`` columns.

    A JSON parameter is given as its text, ``json.dumps(value)`` (what SQLAlchemy's
    ``JSON`` sends to either database), or None for SQL NULL: a dict or list parameter is
    not converted here (the drivers would take a list for an array)."""

    text: str
    postgresql: str | None = None
    sqlite: str | None = None
    datetimes: Collection[str] = ()
    bools: Collection[str] = ()
    jsons: Collection[str] = ()
    _texts: dict[str, str] = field(init=False, repr=False)
    _readers: dict[tuple[str, ...], _Reader] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._texts = {
            "sqlite": self.sqlite or self.text,
            "postgresql": _pyformat(self.postgresql or self.text),
        }
        STATEMENTS.append(self)

    def for_dialect(self, dialect: str) -> str:
        """The text sent to ``dialect``'s driver."""
        return self._texts[dialect]

    def _reader(self, cursor: Any) -> _Reader:
        names = tuple(d[0] for d in cursor.description or ())
        reader = self._readers.get(names)
        if reader is None:
            convert: list[tuple[int, Callable[[Any], Any]]] = []
            for index, name in enumerate(names):
                if name in self.datetimes:
                    convert.append((index, datetime.fromisoformat))
                elif name in self.bools:
                    convert.append((index, bool))
                elif name in self.jsons:
                    convert.append((index, json.loads))
            reader = self._readers[names] = _Reader(tuple(convert))
        return reader

    def _run(
        self, conn: Conn | None, params: Mapping[str, Any], read: Callable[[Any, _Reader | None], T]
    ) -> T:
        conn = conn if conn is not None else current()
        dialect = conn.dialect
        if dialect == "sqlite":
            params = {name: _sqlite_value(value) for name, value in params.items()}
            if self.datetimes or self.bools or self.jsons:
                return conn.run(
                    self._texts[dialect], params, lambda cursor: read(cursor, self._reader(cursor))
                )
        return conn.run(self._texts[dialect], params, lambda cursor: read(cursor, None))

    def rowcount(self, params: Mapping[str, Any], conn: Conn | None = None) -> int:
        """Run a DML statement; the number of rows it touched."""
        return self._run(conn, params, lambda cursor, _reader: int(cursor.rowcount))

    def first(self, params: Mapping[str, Any], conn: Conn | None = None) -> tuple[Any, ...] | None:
        """Run a SELECT (or a statement with RETURNING); its first row, or None."""

        def read(cursor: Any, reader: _Reader | None) -> tuple[Any, ...] | None:
            row = cursor.fetchone()
            if row is None:
                return None
            return tuple(row) if reader is None else reader.row(row)

        return self._run(conn, params, read)

    def all(self, params: Mapping[str, Any], conn: Conn | None = None) -> list[tuple[Any, ...]]:
        """Run a SELECT; all its rows."""

        def read(cursor: Any, reader: _Reader | None) -> list[tuple[Any, ...]]:
            rows = cursor.fetchall()
            if reader is None:
                return [tuple(row) for row in rows]
            return [reader.row(row) for row in rows]

        return self._run(conn, params, read)

    def mapping(self, params: Mapping[str, Any], conn: Conn | None = None) -> dict[str, Any] | None:
        """Run a SELECT; its first row by column name, or None."""

        def read(cursor: Any, reader: _Reader | None) -> dict[str, Any] | None:
            row = cursor.fetchone()
            if row is None:
                return None
            names = [d[0] for d in cursor.description]
            return dict(zip(names, tuple(row) if reader is None else reader.row(row), strict=True))

        return self._run(conn, params, read)

    def mappings(self, params: Mapping[str, Any], conn: Conn | None = None) -> list[dict[str, Any]]:
        """Run a SELECT; all its rows by column name."""

        def read(cursor: Any, reader: _Reader | None) -> list[dict[str, Any]]:
            names = [d[0] for d in cursor.description]
            rows = cursor.fetchall()
            return [dict(zip(names, row if reader is None else reader.row(row), strict=True)) for row in rows]

        return self._run(conn, params, read)

    def scalar(self, params: Mapping[str, Any], conn: Conn | None = None) -> Any:
        """Run a SELECT; the first column of its first row, or None."""
        row = self.first(params, conn)
        return None if row is None else row[0]
