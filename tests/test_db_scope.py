"""The FDO route's unit of work (:func:`fdo_server.db.message_scope`), on SQLite and,
with ``FDO_TEST_POSTGRES_URL`` set, PostgreSQL.

One transaction on a bare connection: Core statements and a Session made on demand
share it, everything commits together on normal exit and nothing is left on an
exception; no Session is made unless code asks for one.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import select

from fdo_server import db as fdb
from fdo_server.db import current_connection, current_session, make_engine, message_scope, unit_of_work
from fdo_server.sessions import FdoSession, SQLSessionStore
from tests.conftest import migrated

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
        core = store.create("TO1", b"core", LATER)  # Core, on the scope's connection
        assert current_connection() is conn
        db = current_session()  # made now, bound to the same connection
        assert db.connection() is conn
        db.add(FdoSession(token="orm", protocol="TO1", state=b"orm", expires_at=LATER))
        assert current_session() is db
    assert _tokens(engine) == {core, "orm"}  # the ORM change was flushed before the commit


def test_exception_leaves_nothing(engine: Engine) -> None:
    store = SQLSessionStore()
    with pytest.raises(RuntimeError, match="boom"), message_scope(engine):
        store.create("TO1", b"core", LATER)
        current_session().add(FdoSession(token="orm", protocol="TO1", state=b"orm", expires_at=LATER))
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
