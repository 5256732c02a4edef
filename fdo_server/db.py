"""Database engines and the per-request unit of work.

SQLite (a file per service, WAL mode) is the embedded default; PostgreSQL is chosen by
a ``postgresql+psycopg://`` URL. Every FDO message is handled in one transaction: the
router opens a :func:`message_scope` around it (admin requests and background work a
:func:`unit_of_work`), and code that runs inside it reaches the open transaction with
:func:`current_connection` (Core statements) or :func:`current_session` (ORM), both
context variables, so lookups deep in a store need no plumbing. Schemas are made and
changed by migrations only (:mod:`fdo_server.migrate`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, create_engine

_current: ContextVar[Session | None] = ContextVar("fdo_db_session", default=None)
_connection: ContextVar[Connection | None] = ContextVar("fdo_db_connection", default=None)


def sqlite_url(path: str | Path) -> str:
    """The SQLAlchemy URL of a SQLite file."""
    return f"sqlite:///{Path(path)}"


def is_sqlite(url: str) -> bool:
    """True for a SQLite database URL (a local file or memory: no network round trips).

    The services run FDO messages on such a database inline on the event loop rather
    than in the thread pool (see :func:`transport.server.fdo_router`, ``inline``).
    """
    return url.startswith("sqlite")


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and foreign keys."""
    if is_sqlite(url):
        memory = url in ("sqlite://", "sqlite:///:memory:")
        engine = create_engine(
            url,
            echo=echo,
            connect_args={"check_same_thread": False, "timeout": 30},
            poolclass=StaticPool if memory else None,
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            if not memory:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    # No pool_pre_ping: it costs a round trip on every checkout, i.e. every FDO message;
    # connections are recycled instead. A connection the server dropped (restart,
    # pg_terminate_backend) fails that one request: SQLAlchemy's psycopg dialect reports it
    # as a disconnect, which invalidates the whole pool, and the next request reconnects.
    # connect_timeout: an unreachable database fails requests in seconds, not minutes.
    return create_engine(
        url,
        echo=echo,
        pool_recycle=1800,
        pool_size=10,
        max_overflow=20,
        connect_args={"connect_timeout": 5},
    )


@contextlib.contextmanager
def unit_of_work(engine: Engine) -> Iterator[Session]:
    """One transaction: committed on normal exit, rolled back on an exception."""
    with Session(engine, expire_on_commit=False) as session:
        token = _current.set(session)
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            _current.reset(token)


@contextlib.contextmanager
def message_scope(engine: Engine) -> Iterator[Connection]:
    """One transaction on a bare connection: committed on normal exit, rolled back on an
    exception, like :func:`unit_of_work`.

    Made for the FDO route, where most messages only run a few Core statements: an ORM
    ``Session`` (bound to this connection and its transaction) is made only when code
    asks :func:`current_session`, and its pending changes are flushed before the commit.
    """
    with engine.connect() as conn:
        conn_token = _connection.set(conn)
        session_token = _current.set(None)
        try:
            with conn.begin():
                yield conn
                session = _current.get()
                if session is not None:
                    session.flush()
        finally:
            session = _current.get()
            if session is not None:
                session.close()
            _current.reset(session_token)
            _connection.reset(conn_token)


def current_session() -> Session:
    """The session of the unit of work this code runs in."""
    session = _current.get()
    if session is None:
        conn = _connection.get()
        if conn is None:
            raise RuntimeError("no unit of work is open")
        session = Session(bind=conn, expire_on_commit=False)
        _current.set(session)
    return session


def current_connection() -> Connection:
    """The connection (in its transaction) of the unit of work this code runs in."""
    conn = _connection.get()
    return conn if conn is not None else current_session().connection()
