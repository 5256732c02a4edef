"""The admin plane's unit of work (:func:`fdo_server.db.unit_of_work`: an ORM session), on
SQLite and, with ``FDO_TEST_POSTGRES_URL`` set, PostgreSQL.

One transaction: ORM changes and :class:`fdo_server.sql.Sql` statements (on the driver's
cursor of the session's connection, which the unit of work lends them) commit together on
normal exit, and nothing is left on an exception. The FDO path's own unit of work, on the
driver alone, is :func:`fdo_server.sql.message_scope` (``tests/test_sql.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from fdo_server import db as fdb
from fdo_server.db import current_session, lent, make_engine, unit_of_work
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


def test_orm_and_sql_commit_together(engine: Engine) -> None:
    store = SQLSessionStore()
    with unit_of_work(engine) as db:
        db.add(FdoSession(token="orm", protocol="TO1", state=b"orm", expires_at=LATER))
        assert current_session() is db
        made = store.create("TO1", b"sql", LATER)  # Sql, on the session's connection
    assert _tokens(engine) == {made, "orm"}


def test_exception_leaves_nothing(engine: Engine) -> None:
    store = SQLSessionStore()
    with pytest.raises(RuntimeError, match="boom"), unit_of_work(engine) as db:
        db.add(FdoSession(token="orm", protocol="TO1", state=b"orm", expires_at=LATER))
        db.flush()
        store.create("TO1", b"sql", LATER)
        raise RuntimeError("boom")
    assert _tokens(engine) == set()


def test_outside_any_scope() -> None:
    with pytest.raises(RuntimeError, match="no unit of work"):
        current_session()


def _postgres(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only")


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
    with unit_of_work(engine):
        token = store.create("TO2", b"\x00state", LATER)
    with unit_of_work(engine) as db:
        loaded = store.load(token)
        orm = db.get(FdoSession, token)
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
        with unit_of_work(engine):
            SQLSessionStore().load("no-such-token")
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert seen == []  # the driver's cursor directly, on SQLite and PostgreSQL alike


def test_postgres_sql_statement_on_a_dead_connection_invalidates_it(engine: Engine) -> None:
    _postgres(engine)
    with pytest.raises(psycopg.OperationalError), unit_of_work(engine) as db:
        conn = db.connection()
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        with engine.connect() as other:
            other.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")  # type: ignore[arg-type]
        try:
            SQLSessionStore().load("any")
        finally:
            assert conn.invalidated
    with unit_of_work(engine):  # the pool hands out a working connection again
        assert SQLSessionStore().load("any") is None


def test_after_commit_runs_once_committed_and_never_on_rollback(engine: Engine) -> None:
    seen: list[set[str]] = []
    store = SQLSessionStore()
    with unit_of_work(engine):
        token = store.create("TO1", b"x", LATER)
        fdb.after_commit(lambda: seen.append(_tokens(engine)))  # another connection's view
        assert seen == []
    assert seen == [{token}]  # called after the commit: the row was visible to it
    with pytest.raises(RuntimeError, match="boom"), unit_of_work(engine):
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
    with pytest.raises(error), unit_of_work(engine):
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
