"""Database engines and the per-request unit of work.

SQLite (a file per service, WAL mode) is the embedded default; PostgreSQL is chosen by
a ``postgresql+psycopg://`` URL. Every FDO message is handled in one transaction on the
database driver (:func:`fdo_server.sql.message_scope`, no SQLAlchemy); the admin plane's
requests open a :func:`unit_of_work` here, an ORM session, and code that runs inside it
reaches the open transaction through context variables, so lookups deep in a store need
no plumbing: ORM code on :func:`current_session`, :class:`fdo_server.sql.Sql` statements
on the session's connection (:func:`fdo_server.sql.current`, lent by :class:`_Lent`).
Schemas are made and changed by migrations only (:mod:`fdo_server.migrate`).

**Durable commits.** A commit that precedes a reply the device acts on (DI done, TO0
accepted, TO2.Done answered by Done2) must survive a power cut, or the device would hold
a credential or a registration its server forgot. The code that makes such a commit calls
:func:`require_durable` first. On SQLite (WAL, ``synchronous=NORMAL``, which syncs only
at checkpoints) that transaction runs with ``synchronous=FULL``: its commit waits for an
fsync of the WAL, which also makes every earlier commit durable. Other SQLite commits
(session rows, admin changes) stay at NORMAL: a power cut may lose the last of them, a
process crash none. On PostgreSQL every commit is durable: :func:`make_engine` makes
each connection run with ``synchronous_commit`` on, raising it (with a warning) when the
server, database or role set it ``off``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import StaticPool

if TYPE_CHECKING:  # the ORM is loaded where a session is made: the FDO path runs Sql statements
    from sqlmodel import Session

from fdo_server import sql

T = TypeVar("T")
log = logging.getLogger(__name__)

#: What SQLAlchemy raises when the database cannot be reached or lost the connection (a
#: refused or timed-out connect, a connection the server or network dropped, an
#: exhausted pool, SQLite's "database is locked"): answered 503, to retry
#: (the FastAPI app's handlers, :mod:`fdo_server.web_errors`; the owner's device endpoint).
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,
)
#: ``Retry-After`` (seconds) of the 503 while the database is unavailable.
RETRY_AFTER_SECONDS = sql.RETRY_AFTER_SECONDS

_current: ContextVar[Session | None] = ContextVar("fdo_db_session", default=None)


# Where a database lives and how its messages run: fdo_server.sql's, named here too.
sqlite_url = sql.sqlite_url
is_sqlite = sql.is_sqlite
inline_messages = sql.inline_messages


def make_engine(url: str, *, echo: bool = False, creator: Callable[[], Any] | None = None) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and foreign keys (the
    settings of :class:`fdo_server.sql.Database`, whose :meth:`~fdo_server.sql.Database.engine`
    passes ``creator`` for an in-memory database: its one shared connection)."""
    if is_sqlite(url):
        memory = url in ("sqlite://", "sqlite:///:memory:")
        options: dict[str, Any] = {"creator": creator} if creator is not None else {}
        engine = create_engine(
            url,
            echo=echo,
            connect_args={"check_same_thread": False, "timeout": 30},
            poolclass=StaticPool if memory else None,
            **options,
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            sql.sqlite_pragmas(dbapi_conn, memory=memory)

        @event.listens_for(engine, "checkin")
        def _back_to_normal(dbapi_conn: Any, record: Any) -> None:
            # After a transaction require_durable() raised to FULL (rolled back or
            # committed by now): the connection's next transactions are ordinary again.
            if record.info.pop(_DURABLE, False) and dbapi_conn is not None:
                dbapi_conn.execute("PRAGMA synchronous=NORMAL")

        return engine
    # No pool_pre_ping: it costs a round trip on every checkout, i.e. every FDO message;
    # connections are recycled instead. A connection the server dropped (restart,
    # pg_terminate_backend) fails that one request: SQLAlchemy's psycopg dialect reports it
    # as a disconnect, which invalidates the whole pool, and the next request reconnects.
    # Bounded waits, since FDO messages may run on the event loop (inline_messages): an
    # unreachable database fails a connect in 5 s (connect_timeout), a connection whose
    # peer stopped answering fails once sent data stays unacknowledged for 10 s
    # (tcp_user_timeout) or, idle, after 30 + 3 x 10 s of silence (keepalives).
    engine = create_engine(
        url,
        echo=echo,
        pool_recycle=1800,
        pool_size=10,
        max_overflow=20,
        connect_args=dict(sql.PG_CONNECT_ARGS),
    )
    event.listen(engine, "connect", lambda dbapi_conn, _record: sql.durable_commits(dbapi_conn))
    return engine


#: Connection-record key: the connection's open transaction runs with synchronous=FULL.
_DURABLE = "fdo_durable"

# The unit of work's durability, its last write and its after-commit callbacks work the
# same on a SQLAlchemy connection (this module) and on a driver one (fdo_server.sql).
require_durable = sql.require_durable
after_commit = sql.after_commit
last_write = sql.last_write


class _Lent:
    """A SQLAlchemy unit of work's connection as :func:`fdo_server.sql.current` hands it
    out, so :class:`fdo_server.sql.Sql` statements run in it (on the driver's cursor, in
    its transaction) and :func:`require_durable` and :func:`last_write` work in it."""

    def __init__(self, connection: Callable[[], Connection]) -> None:
        self._connection = connection  # a Session's is made when first asked for

    @property
    def dialect(self) -> str:
        return self._connection().dialect.name

    def run(self, statement: str, params: Mapping[str, Any], read: Callable[[Any], T]) -> T:
        conn = self._connection()
        if not conn.in_transaction():
            conn.begin()  # as SQLAlchemy's autobegin would, for what it then commits
        raw: Any = conn.connection.dbapi_connection
        if conn.dialect.name == "sqlite":
            cursor = raw.cursor()
            try:
                cursor.execute(statement, params)
                return read(cursor)
            except Exception as exc:
                dbapi: Any = conn.dialect.loaded_dbapi
                if not isinstance(exc, dbapi.Error):
                    raise
                # As SQLAlchemy raises it (IntegrityError, OperationalError, ...).
                raise DBAPIError.instance(statement, params, exc, dbapi.Error, dialect=conn.dialect) from exc
            finally:
                cursor.close()
        try:
            with raw.cursor() as cursor:
                cursor.execute(statement, params)
                return read(cursor)
        except Exception as exc:
            if raw.closed or sql.is_disconnect(exc):
                conn.invalidate(exc)
            raise

    def require_durable(self) -> None:
        conn = self._connection()
        if conn.dialect.name != "sqlite":
            return
        proxied = conn.connection
        raw: Any = proxied.dbapi_connection
        if raw is None:
            return
        sql.sqlite_full_sync(raw)
        proxied.info[_DURABLE] = True

    @contextlib.contextmanager
    def last_write(self) -> Iterator[None]:
        """Nothing to do: an ORM unit of work is one transaction from its first statement
        (only :func:`fdo_server.sql.message_scope` defers its BEGIN)."""
        yield


def lent(conn: Connection) -> sql.Conn:
    """``conn`` (a SQLAlchemy connection) as :class:`fdo_server.sql.Sql` statements run on it
    (their ``conn`` argument): in its transaction, begun as SQLAlchemy would."""
    return _Lent(lambda: conn)


@contextlib.contextmanager
def unit_of_work(engine: Engine) -> Iterator[Session]:
    """One transaction: committed on normal exit, rolled back on an exception."""
    from sqlmodel import Session

    with Session(engine, expire_on_commit=False) as session:
        token = _current.set(session)
        callbacks: list[Callable[[], None]] = []
        try:
            with sql.lend(_Lent(session.connection), callbacks):
                yield session
                session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            _current.reset(token)
        sql.run_after(callbacks)


def current_session() -> Session:
    """The session of the unit of work this code runs in."""
    session = _current.get()
    if session is None:
        raise RuntimeError("no unit of work is open")
    return session
