"""The FDO route's unit of work (:func:`fdo_server.db.message_scope`), on SQLite and,
with ``FDO_TEST_POSTGRES_URL`` set, PostgreSQL.

One transaction on a bare connection: :class:`fdo_server.sql.Sql` statements (on the
driver's cursor), Core statements and a Session made on demand share it, everything
commits together on normal exit and nothing is left on an exception; no Session is made
unless code asks for one. On PostgreSQL the ``BEGIN`` waits for the first write, and a
lone last write (the session row) runs on its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import event, insert, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from fdo_server import db as fdb
from fdo_server.db import current_connection, current_session, lent, make_engine, message_scope, unit_of_work
from fdo_server.session_model import FdoSession
from fdo_server.sessions import SQLSessionStore
from fdo_server.sql import Sql
from tests.conftest import migrated
from tests.test_sql import adhoc

LATER = datetime.now(UTC) + timedelta(hours=1)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(migrated(database_url, "rendezvous"))
    yield engine
    engine.dispose()


def _tokens(engine: Engine) -> set[str]:
    with unit_of_work(engine) as db:
        return {row.token for row in db.exec(select(FdoSession)).all()}


def test_core_and_orm_commit_together(engine: Engine) -> None:
    store = SQLSessionStore()
    with message_scope(engine) as conn:
        db = current_session()  # made now, bound to the scope's connection
        assert db.connection() is conn
        db.add(FdoSession(token="orm", protocol="TO1", state=b"orm", expires_at=LATER))
        assert current_session() is db
        core = store.create("TO1", b"core", LATER)  # Core, on the same connection
        assert current_connection() is conn
    assert _tokens(engine) == {core, "orm"}  # the ORM change was flushed before the commit


def test_exception_leaves_nothing(engine: Engine) -> None:
    store = SQLSessionStore()
    with pytest.raises(RuntimeError, match="boom"), message_scope(engine):
        current_session().add(FdoSession(token="orm", protocol="TO1", state=b"orm", expires_at=LATER))
        store.create("TO1", b"core", LATER)
        raise RuntimeError("boom")
    assert _tokens(engine) == set()


def test_core_writes_roll_back_together(engine: Engine) -> None:
    """Core writes before the last one open the transaction; an exception undoes them all."""
    store = SQLSessionStore()
    with pytest.raises(RuntimeError, match="boom"), message_scope(engine):
        current_connection().execute(
            insert(FdoSession.__table__),  # type: ignore[attr-defined]
            {"token": "first", "protocol": "TO1", "state": b"x", "version": 0, "expires_at": LATER},
        )
        store.create("TO1", b"last", LATER)
        raise RuntimeError("boom")
    assert _tokens(engine) == set()


def test_no_session_unless_asked(engine: Engine) -> None:
    with message_scope(engine):
        SQLSessionStore().create("TO1", b"core", LATER)
        assert fdb._current.get() is None
    assert fdb._current.get() is None and fdb._connection.get() is None


def test_outside_any_scope() -> None:
    with pytest.raises(RuntimeError, match="no unit of work"):
        current_session()
    with pytest.raises(RuntimeError, match="no unit of work"):
        current_connection()


# ----------------------------------------------------------- PostgreSQL: BEGIN on the first write


def _postgres(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only (SQLite has no round trips to save)")


def _in_transaction(conn: Connection) -> bool:
    raw: Any = conn.connection.dbapi_connection
    return bool(raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE)


def test_postgres_reads_and_a_lone_last_write_need_no_transaction(engine: Engine) -> None:
    """Plain SELECTs run without BEGIN, and a scope whose only write is its last one
    runs it on its own: committed (seen by another connection) before the scope ends."""
    _postgres(engine)
    store = SQLSessionStore()
    with message_scope(engine) as conn:
        assert store.load("nothing") is None
        assert not _in_transaction(conn)
        token = store.create("TO1", b"alone", LATER)
        assert not _in_transaction(conn)
        assert token in _tokens(engine)  # already committed
    assert token in _tokens(engine)
    with engine.connect() as conn:  # the pool's connections are back to transactions
        assert conn.connection.dbapi_connection.autocommit is False  # type: ignore[union-attr]


def test_postgres_writes_before_the_last_make_one_transaction(engine: Engine) -> None:
    _postgres(engine)
    store = SQLSessionStore()
    with message_scope(engine) as conn:
        token = store.create("TO1", b"first", LATER)
        with pytest.raises(RuntimeError, match="after the unit of work's last write"):
            store.save(token, b"second", version=0)  # the scope already ended its writes
    assert _tokens(engine) == {token}
    with message_scope(engine) as conn:
        current_connection().execute(update(FdoSession.__table__).values(version=7))  # type: ignore[attr-defined]
        assert _in_transaction(conn)
        assert _version(engine, token) == 0  # not committed yet
        store.save(token, b"second", version=7)
    assert _version(engine, token) == 8


def test_postgres_locking_select_opens_the_transaction(engine: Engine) -> None:
    _postgres(engine)
    with message_scope(engine) as conn:
        conn.execute(select(FdoSession).with_for_update())
        assert _in_transaction(conn)
    with message_scope(engine) as conn:
        conn.execute(select(FdoSession))
        assert not _in_transaction(conn)


def _version(engine: Engine, token: str) -> int:
    with unit_of_work(engine) as db:
        row = db.get(FdoSession, token)
        assert row is not None
        return row.version


# ------------------------------------------------- Sql statements on the unit of work's connection


@pytest.fixture
def add_session() -> Sql:
    """An INSERT of a session row (a test's own statement, :func:`tests.test_sql.adhoc`)."""
    return adhoc(
        "INSERT INTO fdo_session (token, protocol, state, version, expires_at) "
        "VALUES (:token, :protocol, :state, :version, :expires_at)"
    )


def test_sql_statements_read_what_sqlalchemy_reads(engine: Engine) -> None:
    """The session store's statements (:class:`fdo_server.sql.Sql`, on the connection the
    scope lends them) give the values SQLAlchemy gives, type processing included (an
    aware expiry from a UTCDateTime column)."""
    store = SQLSessionStore()
    with message_scope(engine):
        token = store.create("TO2", b"\x00state", LATER)
    with message_scope(engine):
        loaded = store.load(token)
        orm = current_session().get(FdoSession, token)
    assert loaded is not None and orm is not None
    assert (loaded.protocol, loaded.state, loaded.version) == ("TO2", b"\x00state", 0)
    assert (orm.protocol, orm.state, orm.version) == ("TO2", b"\x00state", 0)
    assert loaded.expires_at == orm.expires_at == LATER and loaded.expires_at.tzinfo is not None


def test_sql_statements_skip_sqlalchemy(engine: Engine) -> None:
    seen: list[str] = []

    def count(_c: Any, _cur: Any, statement: str, *_rest: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        with message_scope(engine):
            SQLSessionStore().load("no-such-token")
        with unit_of_work(engine):
            SQLSessionStore().load("no-such-token")
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert seen == []  # the driver's cursor directly, on SQLite and PostgreSQL alike


def test_postgres_sql_statement_on_a_dead_connection_invalidates_it(engine: Engine) -> None:
    _postgres(engine)
    with pytest.raises(psycopg.OperationalError), message_scope(engine) as conn:
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        with engine.connect() as other:
            other.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")  # type: ignore[arg-type]
        try:
            SQLSessionStore().load("any")
        finally:
            assert conn.invalidated
    with message_scope(engine):  # the pool hands out a working connection again
        assert SQLSessionStore().load("any") is None


@pytest.mark.parametrize("scope", ["message_scope", "unit_of_work"])
def test_after_commit_runs_once_committed_and_never_on_rollback(engine: Engine, scope: str) -> None:
    open_scope = message_scope if scope == "message_scope" else unit_of_work
    seen: list[set[str]] = []
    store = SQLSessionStore()
    with open_scope(engine):
        token = store.create("TO1", b"x", LATER)
        fdb.after_commit(lambda: seen.append(_tokens(engine)))  # another connection's view
        assert seen == []
    assert seen == [{token}]  # called after the commit: the row was visible to it
    with pytest.raises(RuntimeError, match="boom"), open_scope(engine):
        store.create("TO1", b"y", LATER)
        fdb.after_commit(lambda: seen.append(set()))
        raise RuntimeError("boom")
    assert seen == [{token}]
    fdb.after_commit(lambda: seen.append(set()))  # outside any unit of work: at once
    assert seen == [{token}, set()]


def test_sql_statement_errors_on_sqlite_are_sqlalchemy_errors(engine: Engine, add_session: Sql) -> None:
    """A constraint violation on SQLite's cursor is raised as SQLAlchemy raises it
    (callers catch ``sqlalchemy.exc.IntegrityError``; on PostgreSQL psycopg's own), and
    the scope rolls back."""
    row = {"token": "twice", "protocol": "TO2", "state": b"s", "version": 0, "expires_at": LATER}
    if engine.dialect.name == "postgresql":
        error: type[Exception] = psycopg.IntegrityError
    else:
        error = IntegrityError
    with pytest.raises(error), message_scope(engine):
        add_session.rowcount({**row, "token": "first"})
        add_session.rowcount(row)
        add_session.rowcount(row)
    assert _tokens(engine) == set()


def test_a_lent_connection_outside_a_transaction_begins_one(engine: Engine, add_session: Sql) -> None:
    """On a bare connection (:func:`fdo_server.db.lent`, no transaction begun) a statement
    begins SQLAlchemy's transaction as its autobegin would: closing the connection rolls
    it back, committing it commits the row; still on the driver's cursor directly."""
    seen: list[str] = []

    def count(_c: Any, _cur: Any, statement: str, *_rest: Any) -> None:
        seen.append(statement)

    row = {"token": "bare", "protocol": "TO2", "state": b"s", "version": 0, "expires_at": LATER}
    event.listen(engine, "before_cursor_execute", count)
    try:
        with engine.connect() as conn:
            assert not conn.in_transaction()
            assert add_session.rowcount(row, lent(conn)) == 1
            assert conn.in_transaction()  # rolled back at close
        with engine.connect() as conn:
            assert add_session.rowcount({**row, "token": "kept"}, lent(conn)) == 1
            conn.commit()
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert seen == []
    assert _tokens(engine) == {"kept"}
