"""The FDO path's database access on the driver (:mod:`fdo_server.sql`), on SQLite and,
with ``FDO_TEST_POSTGRES_URL`` set, PostgreSQL.

Every statement the FDO path runs is prepared against the migrated schemas; rows it
writes read back the same through SQLAlchemy's ORM and the other way round; its unit of
work commits together, rolls back together, defers ``BEGIN`` on PostgreSQL until the
first write (a lone last write runs on its own); its pool replaces a dead connection, bounds a
checkout's wait, and shares an in-memory database with the admin plane's engine.
"""

from __future__ import annotations

import importlib
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlmodel import select

from fdo_server import sql
from fdo_server.db import unit_of_work
from fdo_server.session_model import FdoSession
from fdo_server.sessions import SQLSessionStore
from fdo_server.sql import Database, PoolTimeout, Sql, Target, message_scope, parse_url
from tests.conftest import migrated

LATER = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=123456)

#: The modules whose statements the device plane runs (each makes its Sql at import).
STATEMENT_MODULES = (
    "fdo_server.sessions",
    "fdo_server.sweep",
    "rendezvous.store",
    "rendezvous.pins",
    "manufacturer.app",
    "owner.groups",
    "owner.lifecycle",
    "owner.checkin",
    "owner.assign",
    "owner.to0",
    "owner.desired",
    "owner.rollout_runner",
    "owner.app",
)


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    database = Database(migrated(database_url, "rendezvous"))
    yield database
    database.dispose()


def adhoc(text: str, **options: Any) -> Sql:
    """A statement of a test's own, kept out of :data:`fdo_server.sql.STATEMENTS` (which
    :func:`test_every_statement_runs_against_the_migrated_schemas` prepares)."""
    made = Sql(text, **options)
    sql.STATEMENTS.remove(made)
    return made


def _postgres(database: Database) -> None:
    if database.dialect != "postgresql":
        pytest.skip("PostgreSQL only (SQLite has no round trips to save)")


def _tokens(database: Database) -> set[str]:
    with unit_of_work(database.engine()) as db:
        return {row.token for row in db.exec(select(FdoSession)).all()}


# --------------------------------------------------------------------------- URLs


def test_urls_as_the_services_write_them() -> None:
    assert parse_url("sqlite://") == Target("sqlite", ":memory:")
    assert parse_url("sqlite:///:memory:").memory
    assert parse_url("sqlite:///relative.db") == Target("sqlite", "relative.db")
    assert parse_url("sqlite:////var/lib/fdo/owner.db") == Target("sqlite", "/var/lib/fdo/owner.db")
    assert parse_url("sqlite:///file:x.db?mode=ro&uri=true") == Target(
        "sqlite", "file:x.db?mode=ro", uri=True
    )
    assert parse_url("postgresql+psycopg://u:p%40ss@h:5433/db?sslmode=require") == Target(
        "postgresql", "postgresql://u:p%40ss@h:5433/db?sslmode=require"
    )
    for bad in ("notaurl", "mysql://u@h/db", "postgresql://u@h/db", "sqlite:///x.db?timeout=3"):
        with pytest.raises(ValueError):
            parse_url(bad)


def test_parameters_become_the_drivers_style() -> None:
    statement = adhoc(
        "SELECT token FROM fdo_session WHERE token = :t AND protocol LIKE 'T%' AND version = :v"
    )
    assert statement.for_dialect("sqlite") == statement.text
    assert statement.for_dialect("postgresql") == (
        "SELECT token FROM fdo_session WHERE token = %(t)s AND protocol LIKE 'T%%' AND version = %(v)s"
    )


# --------------------------------------------------------------------- the statements


def _statements() -> list[Sql]:
    for module in STATEMENT_MODULES:
        importlib.import_module(module)
    return list(sql.STATEMENTS)


def test_every_statement_runs_against_the_migrated_schemas(database_factory: Any) -> None:
    """Each statement is prepared (``EXPLAIN``) on the schema of some service: a table or
    column that does not exist there, or SQL one database does not take, fails here."""
    databases = {
        service: Database(migrated(database_factory(service), service))
        for service in ("manufacturer", "rendezvous", "owner")
    }
    try:
        statements = _statements()
        assert len(statements) >= 15
        for statement in statements:
            names = set(re.findall(r"(?<![:\w]):(\w+)", statement.sqlite or statement.text))
            if statement.postgresql:
                names |= set(re.findall(r"(?<![:\w]):(\w+)", statement.postgresql))
            params = dict.fromkeys(names)
            errors = []
            for service, database in databases.items():
                with database.connection() as conn:
                    text = statement.for_dialect(conn.dialect)
                    try:
                        conn.run("EXPLAIN " + text, params, lambda cursor: cursor.fetchall())
                    except Exception as exc:  # noqa: BLE001 - collected for the message
                        errors.append(f"{service}: {exc}")
                        conn.rollback()
                        continue
                    conn.rollback()
                    break
            else:
                pytest.fail(f"{statement.text[:80]!r} runs on no schema: {errors}")
    finally:
        for database in databases.values():
            database.dispose()


def test_rows_read_the_same_here_and_through_the_orm(database: Database) -> None:
    """Written here, read by the ORM (and the other way): the same values, the expiry an
    aware UTC datetime to the microsecond (SQLite stores SQLAlchemy's text for it)."""
    store = SQLSessionStore()
    with message_scope(database):
        token = store.create("TO2", b"\x00state", LATER)
    with unit_of_work(database.engine()) as db:
        orm = db.get(FdoSession, token)
        assert orm is not None
        assert (orm.protocol, orm.state, orm.version, orm.expires_at) == ("TO2", b"\x00state", 0, LATER)
        db.add(FdoSession(token="orm", protocol="TO1", state=b"orm", expires_at=LATER))
    with message_scope(database):
        loaded = store.load("orm")
    assert loaded is not None and (loaded.protocol, loaded.state, loaded.version) == ("TO1", b"orm", 0)
    assert loaded.expires_at == LATER and loaded.expires_at.tzinfo is not None


def test_rows_by_column_name_are_the_rows_converted() -> None:
    """``mapping`` (the first row) and ``mappings`` (all of them) by column name, with the
    same conversions as ``first`` and ``all`` (a datetime column read back as one)."""
    database = Database("sqlite://")
    rows = adhoc(
        "SELECT 1 AS n, '2026-12-05 10:00:00.000000' AS at UNION ALL SELECT 2, NULL ORDER BY n",
        datetimes=("at",),
    )
    try:
        with message_scope(database):
            by_name = rows.mappings({})
            first = rows.mapping({})
            plain = rows.all({})
    finally:
        database.dispose()
    assert by_name == [{"n": 1, "at": datetime(2026, 12, 5, 10, 0)}, {"n": 2, "at": None}]
    assert first == by_name[0] and [tuple(row.values()) for row in by_name] == plain


# ------------------------------------------------------------------- the unit of work


def test_writes_commit_together_and_roll_back_together(database: Database) -> None:
    store = SQLSessionStore()
    bump = adhoc("UPDATE fdo_session SET version = version + 1 WHERE token = :t")
    with message_scope(database):
        first = store.create("TO1", b"a", LATER)
    with message_scope(database):
        bump.rowcount({"t": first})  # a write before the last: one transaction
        store.save(first, b"b", version=1)
    assert _tokens(database) == {first}
    with pytest.raises(RuntimeError, match="boom"), message_scope(database):
        bump.rowcount({"t": first})
        store.save(first, b"c", version=3)
        raise RuntimeError("boom")
    with message_scope(database):
        kept = store.load(first)
    assert kept is not None and (kept.state, kept.version) == (b"b", 2)
    assert _tokens(database) == {first}


def test_a_constraint_violation_rolls_the_scope_back(database: Database) -> None:
    add = adhoc(
        "INSERT INTO fdo_session (token, protocol, state, version, expires_at) "
        "VALUES (:token, 'TO2', :state, 0, :expires_at)"
    )
    with pytest.raises(Exception, match="(?i)unique|duplicate") as raised, message_scope(database):
        add.rowcount({"token": "first", "state": b"s", "expires_at": LATER})
        add.rowcount({"token": "twice", "state": b"s", "expires_at": LATER})
        add.rowcount({"token": "twice", "state": b"s", "expires_at": LATER})
    assert type(raised.value).__name__ in ("IntegrityError", "UniqueViolation")  # the driver's own
    assert _tokens(database) == set()


def test_after_commit_runs_once_committed_and_never_on_rollback(database: Database) -> None:
    seen: list[set[str]] = []
    store = SQLSessionStore()
    with message_scope(database):
        token = store.create("TO1", b"x", LATER)
        sql.after_commit(lambda: seen.append(_tokens(database)))  # another connection's view
        assert seen == []
    assert seen == [{token}]
    with pytest.raises(RuntimeError, match="boom"), message_scope(database):
        store.create("TO1", b"y", LATER)
        sql.after_commit(lambda: seen.append(set()))
        raise RuntimeError("boom")
    assert seen == [{token}]


def test_outside_any_scope() -> None:
    with pytest.raises(RuntimeError, match="no unit of work"):
        sql.current()
    with pytest.raises(RuntimeError, match="no unit of work"):
        SQLSessionStore().load("any")


def test_require_durable_raises_sqlites_level_for_that_commit_only(database: Database) -> None:
    levels: list[int] = []
    database.on_commit(lambda raw: levels.append(int(raw.execute("PRAGMA synchronous").fetchone()[0])))
    store = SQLSessionStore()
    with message_scope(database):
        sql.require_durable()
        token = store.create("TO1", b"a", LATER)
    with message_scope(database):
        store.save(token, b"b", version=0)
    if database.dialect == "sqlite":
        assert levels == [2, 1]  # FULL, then NORMAL again
        with pytest.raises(RuntimeError, match="first write"), message_scope(database):
            store.save(token, b"c", version=1)
            sql.require_durable()
        assert levels == [2, 1]  # that scope rolled back
    else:
        assert levels == []  # lone last writes: no transaction to commit; every commit is durable


# ------------------------------------------------- PostgreSQL: BEGIN on the first write


def _in_transaction(conn: sql.Connection) -> bool:
    from psycopg.pq import TransactionStatus

    return bool(conn.raw.info.transaction_status != TransactionStatus.IDLE)


def test_postgres_reads_and_a_lone_last_write_need_no_transaction(database: Database) -> None:
    _postgres(database)
    store = SQLSessionStore()
    with message_scope(database) as conn:
        assert store.load("nothing") is None
        assert not _in_transaction(conn)
        token = store.create("TO1", b"alone", LATER)
        assert not _in_transaction(conn)
        assert token in _tokens(database)  # already committed
        with pytest.raises(RuntimeError, match="after the unit of work's last write"):
            store.save(token, b"second", version=0)


def test_postgres_writes_before_the_last_make_one_transaction(database: Database) -> None:
    _postgres(database)
    store = SQLSessionStore()
    with message_scope(database):
        token = store.create("TO1", b"first", LATER)
    bump = adhoc("UPDATE fdo_session SET version = 7 WHERE token = :t")
    with message_scope(database) as conn:
        bump.rowcount({"t": token})
        assert _in_transaction(conn)
        with message_scope(database):
            assert store.load(token) is not None and store.load(token).version == 0  # type: ignore[union-attr]
        store.save(token, b"second", version=7)
    with message_scope(database):
        assert store.load(token).version == 8  # type: ignore[union-attr]


def test_postgres_locking_select_opens_the_transaction(database: Database) -> None:
    _postgres(database)
    locking = adhoc("SELECT token FROM fdo_session FOR UPDATE")
    plain = adhoc("SELECT token FROM fdo_session")
    with message_scope(database) as conn:
        locking.all({})
        assert _in_transaction(conn)
    with message_scope(database) as conn:
        plain.all({})
        assert not _in_transaction(conn)


# ----------------------------------------------------------------------------- the pool


def test_postgres_a_dead_connection_is_replaced(database: Database) -> None:
    _postgres(database)
    pid_of = adhoc("SELECT pg_backend_pid()")
    with message_scope(database):
        idle_pid = pid_of.scalar({})
    with pytest.raises(Exception, match="(?i)terminat|closed|connection"), message_scope(database):
        pid = pid_of.scalar({})
        assert pid == idle_pid  # the pooled connection, used again
        with database.engine().connect() as other:
            other.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
        SQLSessionStore().load("any")
    with message_scope(database):  # the pool hands out a working connection again
        assert SQLSessionStore().load("any") is None
        assert pid_of.scalar({}) != idle_pid


def test_a_checkout_waits_at_most_the_pools_timeout(database_url: str) -> None:
    database = Database(migrated(database_url, "rendezvous"), pool_size=1, max_overflow=0, timeout=0.2)
    try:
        with database.connection():
            with pytest.raises(PoolTimeout, match="within 0.2 s"), database.connection():
                pass
            freed = threading.Event()

            def later() -> None:
                with database.connection():
                    freed.set()

        thread = threading.Thread(target=later)
        thread.start()  # the one connection is back: this checkout gets it
        thread.join(5)
        assert freed.is_set()
    finally:
        database.dispose()


def test_an_in_memory_database_is_one_connection_shared_with_the_engine() -> None:
    database = Database("sqlite://")
    try:
        with database.engine().begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        count = adhoc("SELECT count(*) FROM t")
        with message_scope(database):
            assert count.scalar({}) == 1
    finally:
        database.dispose()


def test_the_pool_keeps_at_most_pool_size_idle(tmp_path: Any) -> None:
    database = Database(f"sqlite:///{tmp_path / 'p.db'}", pool_size=2, max_overflow=3)
    try:
        with database.connection(), database.connection(), database.connection(), database.connection():
            pass
        assert len(database._idle) == 2  # noqa: SLF001 - the pool's own state
    finally:
        database.dispose()
    assert database._idle == []  # noqa: SLF001


def test_postgres_a_failed_statement_keeps_the_connection(database: Database) -> None:
    """A constraint violation rolls the scope back; the connection (not lost) goes back to
    the pool and serves the next scope."""
    _postgres(database)
    pid_of = adhoc("SELECT pg_backend_pid()")
    add = adhoc(
        "INSERT INTO fdo_session (token, protocol, state, version, expires_at) "
        "VALUES (:token, 'TO2', :state, 0, :expires_at)"
    )
    with message_scope(database):
        first = pid_of.scalar({})
    with pytest.raises(Exception, match="(?i)duplicate"), message_scope(database):
        assert pid_of.scalar({}) == first
        add.rowcount({"token": "twice", "state": b"s", "expires_at": LATER})
        add.rowcount({"token": "twice", "state": b"s", "expires_at": LATER})
    with message_scope(database):
        assert pid_of.scalar({}) == first
    assert _tokens(database) == set()


def test_with_the_engine_made_the_scopes_use_its_pool(database: Database) -> None:
    """A process that serves the admin plane too (it made the engine) keeps one pool:
    the FDO path's units of work take their connections from the engine's."""
    engine = database.engine()
    store = SQLSessionStore()
    with message_scope(database):
        assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]
        token = store.create("TO1", b"a", LATER)
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert database._idle == []  # noqa: SLF001 - its own pool stayed unused
    with message_scope(database):
        assert store.load(token) is not None
    with engine.connect() as conn:  # given back as the pool had it
        assert conn.exec_driver_sql("SELECT count(*) FROM fdo_session").scalar() == 1


def test_postgres_a_dead_borrowed_connection_is_replaced(database: Database) -> None:
    _postgres(database)
    engine = database.engine()
    pid_of = adhoc("SELECT pg_backend_pid()")
    with message_scope(database):
        dead = pid_of.scalar({})
    with pytest.raises(Exception, match="(?i)terminat|closed|connection"), message_scope(database):
        assert pid_of.scalar({}) == dead  # the engine's pooled connection, used again
        with engine.connect() as other:
            other.exec_driver_sql(f"SELECT pg_terminate_backend({int(dead)})")
        SQLSessionStore().load("any")
    with message_scope(database):
        assert SQLSessionStore().load("any") is None
        assert pid_of.scalar({}) != dead


@given(
    st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999)),
    st.sampled_from([None, UTC, timezone(timedelta(hours=-5))]),
)
def test_sqlite_datetimes_are_written_as_sqlalchemy_writes_them(value: datetime, tz: timezone | None) -> None:
    """A datetime parameter on SQLite is the text SQLAlchemy's ``DateTime`` binds, with an
    offset or without, and reads back as the same fields."""
    from sqlalchemy.dialects import sqlite as sqlite_dialect

    value = value.replace(tzinfo=tz)
    bind = sqlite_dialect.DATETIME().bind_processor(sqlite_dialect.dialect())  # type: ignore[no-untyped-call]
    assert bind is not None
    assert sql.sqlite_datetime(value) == bind(value)
    assert datetime.fromisoformat(sql.sqlite_datetime(value)) == value.replace(tzinfo=None)
