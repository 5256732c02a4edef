"""fdo_server.pq.PqCursor against psycopg's own cursor on one PostgreSQL connection: the
same statements give the same rows, column names, counts and errors (PostgreSQL only)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from fdo_server.pq import PqCursor, cursor_for, numbered
from tests.conftest import POSTGRES_URL

pytestmark = pytest.mark.skipif(not POSTGRES_URL, reason="FDO_TEST_POSTGRES_URL is unset: no PostgreSQL")

TABLE = """CREATE TEMP TABLE t (
    id bigint PRIMARY KEY, flag boolean, small smallint, num integer, big bigint,
    f4 real, f8 double precision, txt text, name varchar(40), blob bytea, doc json,
    docb jsonb, naive timestamp, aware timestamptz, money numeric(10, 2), ident uuid
)"""
COLUMNS = "flag, small, num, big, f4, f8, txt, name, blob, doc, docb, naive, aware"
INSERT = (
    f"INSERT INTO t (id, {COLUMNS}) VALUES (%(id)s, %(flag)s, %(small)s, %(num)s, %(big)s, %(f4)s,"  # noqa: S608
    " %(f8)s, %(txt)s, %(name)s, %(blob)s, %(doc)s, %(docb)s, %(naive)s, %(aware)s)"
)
ROWS: list[dict[str, Any]] = [
    {
        "flag": True,
        "small": -32768,
        "num": 2**31 - 1,
        "big": -(2**63),
        "f4": 1.5,
        "f8": -2.25e300,
        "txt": "héllo ✓ 100%",
        "name": "kiosk",
        "blob": b"\x00\x01\xff" * 700,
        "doc": '{"a": [1, 2]}',
        "docb": '{"b": {"c": null}}',
        "naive": datetime(2026, 12, 6, 8, 30, 1, 123456),  # noqa: DTZ001
        "aware": datetime(2026, 12, 6, 8, 30, 1, 654321, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    },  # fmt: skip
    dict.fromkeys(
        ["flag", "small", "num", "big", "f4", "f8", "txt", "name", "blob", "doc", "docb", "naive", "aware"]
    ),
    {
        "flag": False,
        "small": 0,
        "num": 0,
        "big": 2**63 - 1,
        "f4": 0.0,
        "f8": float("inf"),
        "txt": "",
        "name": "",
        "blob": b"",
        "doc": "[]",
        "docb": "1",
        "naive": datetime(1999, 12, 31),  # noqa: DTZ001
        "aware": datetime(1970, 1, 1, tzinfo=UTC),
    },  # fmt: skip
]


@pytest.fixture
def conn() -> Iterator[Any]:
    import psycopg

    assert POSTGRES_URL is not None
    with psycopg.connect(POSTGRES_URL.replace("+psycopg", ""), autocommit=True) as connection:
        connection.execute(TABLE)
        yield connection


def both(conn: Any) -> tuple[Any, PqCursor]:
    return conn.cursor(), PqCursor(conn)


def outcome(cursor: Any, query: str, params: dict[str, Any] | None = None) -> tuple[Any, ...]:
    """What a statement gives on ``cursor``: its rows (or the error), count and names."""
    try:
        cursor.execute(query, params)
    except Exception as exc:  # noqa: BLE001 - compared below
        sqlstate = getattr(exc, "sqlstate", None)
        return ("error", type(exc), sqlstate, str(exc).splitlines()[0])
    names = None if cursor.description is None else [d[0] for d in cursor.description]
    rows = [tuple(row) for row in cursor.fetchall()] if names is not None else None
    return (rows, cursor.rowcount, names)


def test_the_same_rows_names_and_counts_as_psycopg(conn: Any) -> None:
    psycopg_cursor, pq_cursor = both(conn)
    for number, row in enumerate(ROWS):
        params = {"id": number, **row}
        assert outcome(pq_cursor, INSERT, params) == (None, 1, None)
        params["id"] = number + 100
        assert outcome(psycopg_cursor, INSERT, params) == (None, 1, None)
    queries: list[tuple[str, dict[str, Any] | None]] = [
        (f"SELECT id % 100 AS id, {COLUMNS} FROM t ORDER BY id", None),  # noqa: S608
        (f"SELECT {COLUMNS} FROM t WHERE id = %(id)s", {"id": 0}),  # noqa: S608
        (f"SELECT {COLUMNS} FROM t WHERE id = %(id)s", {"id": 100}),  # noqa: S608
        ("SELECT id FROM t WHERE txt = %(txt)s OR name = %(txt)s ORDER BY id", {"txt": "kiosk"}),
        ("SELECT id FROM t WHERE aware < %(at)s ORDER BY id", {"at": datetime(2000, 1, 1, tzinfo=UTC)}),
        ("SELECT id FROM t WHERE naive >= %(at)s ORDER BY id", {"at": datetime(2000, 1, 1)}),  # noqa: DTZ001
        ("SELECT count(*) AS n, min(aware) AS first, max(blob) AS most FROM t", None),
        ("SELECT 'a%%b' AS pct, %(v)s::int + 1 AS next, %(v)s AS again", {"v": 41}),
        (
            "SELECT id FROM t WHERE flag = %(flag)s AND blob = %(blob)s",
            {"flag": True, "blob": ROWS[0]["blob"]},
        ),
        ("SELECT money, ident FROM t WHERE id = %(id)s", {"id": 1}),  # numeric, uuid: psycopg's
        ("SELECT %(big)s::numeric AS huge", {"big": 2**70}),  # beyond bigint: psycopg's
        ("UPDATE t SET flag = NOT flag WHERE id >= %(low)s", {"low": 100}),
        ("UPDATE t SET num = num - 1 WHERE id < %(high)s RETURNING id, num", {"high": 2}),
        ("DELETE FROM t WHERE id = %(id)s", {"id": 12345}),
        ("SELECT id FROM t WHERE id = %(id)s", {"id": None}),
    ]
    for query, given in queries:
        conn.execute("BEGIN")
        expected = outcome(psycopg_cursor, query, given)
        conn.execute("ROLLBACK")
        conn.execute("BEGIN")
        got = outcome(pq_cursor, query, given)
        conn.execute("ROLLBACK")
        assert got == expected, query
        for a, b in zip(got[0] or [], expected[0] or [], strict=True):  # the same time zones
            assert [getattr(v, "tzinfo", None) for v in a] == [getattr(v, "tzinfo", None) for v in b]


def test_the_same_errors_as_psycopg(conn: Any) -> None:
    psycopg_cursor, pq_cursor = both(conn)
    conn.execute("INSERT INTO t (id) VALUES (1)")
    cases: list[tuple[str, dict[str, Any] | None]] = [
        ("INSERT INTO t (id) VALUES (%(id)s)", {"id": 1}),  # UniqueViolation
        ("SELECT 1 / %(zero)s AS x", {"zero": 0}),  # DivisionByZero
        ("SELEC 1", None),  # SyntaxError
        ("SELECT nothing FROM t", None),  # UndefinedColumn
        (
            "INSERT INTO t (id, txt) VALUES (%(id)s, %(txt)s)",
            {"id": 2, "txt": "a\x00b"},
        ),  # psycopg's DataError
        ("INSERT INTO t (id, doc) VALUES (%(id)s, %(doc)s)", {"id": 3, "doc": "{not json"}),
        ("SELECT %(missing)s AS x", {}),  # a parameter not given
    ]
    for query, params in cases:
        expected = outcome(psycopg_cursor, query, params)
        assert expected[0] == "error", query
        assert outcome(pq_cursor, query, params)[:3] == expected[:3], query


def test_a_failed_transaction_and_statements_prepared_inside_one(conn: Any) -> None:
    cursor = PqCursor(conn)
    cursor.execute("BEGIN")
    cursor.execute("INSERT INTO t (id, num) VALUES (%(id)s, %(num)s)", {"id": 7, "num": 1})
    with pytest.raises(Exception, match="duplicate key"):
        cursor.execute("INSERT INTO t (id, num) VALUES (%(id)s, %(num)s)", {"id": 7, "num": 2})
    with pytest.raises(Exception, match="current transaction is aborted"):
        cursor.execute("SELECT num FROM t WHERE id = %(id)s", {"id": 7})
    cursor.execute("ROLLBACK")
    # Both statements were prepared before the rollback (or failed to be): they run now.
    cursor.execute("INSERT INTO t (id, num) VALUES (%(id)s, %(num)s)", {"id": 7, "num": 3})
    assert cursor.execute("SELECT num FROM t WHERE id = %(id)s", {"id": 7}).fetchone() == (3,)
    assert cursor.fetchone() is None


def test_statements_dropped_on_the_server_are_prepared_again(conn: Any) -> None:
    import psycopg

    cursor = PqCursor(conn)
    read = "SELECT %(x)s::int + 1 AS y"
    assert cursor.execute(read, {"x": 1}).fetchall() == [(2,)]
    conn.pgconn.exec_(b"DEALLOCATE ALL")
    assert cursor.execute(read, {"x": 2}).fetchall() == [(3,)]  # outside a transaction: run again
    conn.pgconn.exec_(b"DEALLOCATE ALL")
    cursor.execute("BEGIN")
    with pytest.raises(psycopg.errors.InvalidSqlStatementName):  # inside one: the error stands
        cursor.execute(read, {"x": 3})
    cursor.execute("ROLLBACK")
    assert cursor.execute(read, {"x": 4}).fetchall() == [(5,)]
    # psycopg prepares nothing of its own on the services' connections, so its ROLLBACKs
    # never send DEALLOCATE ALL (fdo_server.sql.PG_CONNECT_ARGS)
    from fdo_server.sql import PG_CONNECT_ARGS

    assert PG_CONNECT_ARGS["prepare_threshold"] is None


def test_a_lost_connection_is_an_operational_error(conn: Any) -> None:
    import psycopg

    cursor = cursor_for(conn)
    assert cursor is cursor_for(conn)  # one per connection: its prepared statements
    assert cursor.execute("SELECT %(x)s::int AS x", {"x": 1}).fetchall() == [(1,)]
    with psycopg.connect(POSTGRES_URL.replace("+psycopg", ""), autocommit=True) as other:  # type: ignore[union-attr]
        other.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
    with pytest.raises(psycopg.OperationalError):
        cursor.execute("SELECT %(x)s::int AS x", {"x": 2})
    assert conn.closed


def test_parameters_are_numbered_in_order_of_first_use() -> None:
    assert numbered("SELECT %(b)s, %(a)s, %(b)s, '100%%'") == (b"SELECT $1, $2, $1, '100%'", ("b", "a"))
    assert numbered("SELECT 1") == (b"SELECT 1", ())
