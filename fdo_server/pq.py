"""The FDO path's PostgreSQL statements through libpq itself (``psycopg.pq``).

A psycopg cursor costs about 60 µs of CPU per statement on the test machine (its
generators, transformer and adapters are Python); the same prepared statement run with
``PGconn.exec_prepared`` and its row read with ``PGresult.get_value`` costs about 27 µs,
most of which is the round trip's system calls (``docs/benchmarks.md``, issue 15's
fifteenth round). An onboarding runs 33 statements on the owner and the rendezvous.
:class:`PqCursor` is the part of a psycopg cursor that :class:`fdo_server.sql.Sql` uses
(``execute``, ``fetchone``, ``fetchall``, ``rowcount``, ``description``), run that way:

* each statement is prepared once per connection (named ``fdo_<n>``; psycopg's own
  preparing is off, :data:`fdo_server.sql.PG_CONNECT_ARGS`), with the parameter types
  its values have (below), and its result columns are looked at then: a statement whose
  parameters or columns are of a type not listed here is run by the connection's psycopg
  cursor instead, every time, as before; should the statements be dropped on the server
  (``DEALLOCATE ALL``), they are prepared again;
* parameters are sent as psycopg sends them: ``None`` as NULL, ``bool`` as ``boolean``,
  ``int`` as ``bigint`` (beyond its range: psycopg), ``float`` as ``double precision``,
  ``str`` as text of unknown type (the server takes the type from where it goes: text,
  ``json``, a timestamp; one holding a NUL goes to psycopg, which refuses it), ``bytes``
  as ``bytea`` (binary), an aware ``datetime`` as ``timestamptz`` and a naive one as
  ``timestamp`` (ISO text, to the microsecond); any other value goes to psycopg;
* results come back in binary and are read as psycopg's loaders read them: ``boolean``,
  ``smallint``, ``integer``, ``bigint``, ``real``, ``double precision``, ``text``,
  ``varchar``, ``name``, ``char(n)``, ``bytea``, ``json``, ``jsonb`` (parsed),
  ``timestamp`` (naive) and ``timestamptz`` (in the session's ``TimeZone``, as psycopg
  gives it);
* an error is psycopg's own exception for the result (``psycopg.errors``, by SQLSTATE);
  with the connection lost, ``psycopg.OperationalError``.

``tests/test_pq.py`` runs the same statements through both cursors and requires the same
rows, counts, names and errors.
"""

from __future__ import annotations

import json
import re
import struct
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

import psycopg
from psycopg import errors, pq

#: Type OIDs (``pg_type``) of what is sent and read here.
BOOL, BYTEA, NAME, INT8, INT2, INT4, TEXT, JSON = 16, 17, 19, 20, 21, 23, 25, 114
FLOAT4, FLOAT8, UNKNOWN, BPCHAR, VARCHAR = 700, 701, 705, 1042, 1043
TIMESTAMP, TIMESTAMPTZ, JSONB = 1114, 1184, 3802

_EPOCH = datetime(2000, 1, 1)  # noqa: DTZ001 - PostgreSQL's epoch; naive for timestamp
_EPOCH_UTC = datetime(2000, 1, 1, tzinfo=UTC)
_INT8_MAX = 2**63 - 1
_PARAMETER = re.compile(r"%\((\w+)\)s")
_FLOAT4 = struct.Struct(">f")
_FLOAT8 = struct.Struct(">d")
_OK = (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK, pq.ExecStatus.EMPTY_QUERY)
#: Run as they are (no result, nothing to prepare): a unit of work's transaction.
_TRANSACTION = {text: text.encode() for text in ("BEGIN", "COMMIT", "ROLLBACK")}
#: SQLSTATE ``invalid_sql_statement_name``: the prepared statement named is gone.
_NO_SUCH_STATEMENT = b"26000"


def _int(data: bytes) -> int:
    return int.from_bytes(data, "big", signed=True)


def _text(data: bytes) -> str:
    return data.decode()


def _jsonb(data: bytes) -> Any:
    if data[:1] != b"\x01":
        raise psycopg.DataError(f"unknown jsonb binary format version {data[:1]!r}")
    return json.loads(data[1:])


def _timestamp(data: bytes) -> datetime:
    return _EPOCH + timedelta(microseconds=_int(data))


#: How a binary column of each type is read (``timestamptz`` needs the session's zone: :class:`PqCursor`).
_LOADERS: dict[int, Callable[[bytes], Any]] = {
    BOOL: lambda data: data != b"\x00",
    BYTEA: bytes,
    INT2: _int,
    INT4: _int,
    INT8: _int,
    FLOAT4: lambda data: _FLOAT4.unpack(data)[0],
    FLOAT8: lambda data: _FLOAT8.unpack(data)[0],
    TEXT: _text,
    VARCHAR: _text,
    NAME: _text,
    BPCHAR: _text,
    UNKNOWN: _text,
    JSON: json.loads,
    JSONB: _jsonb,
    TIMESTAMP: _timestamp,
}


def _param_type(value: Any) -> int | None:
    """The type OID ``value`` is sent as, or None when psycopg must send it."""
    if value is None:
        return 0
    if isinstance(value, str):  # libpq would cut text at a NUL; psycopg refuses it (DataError)
        return None if "\x00" in value else 0
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        return INT8 if -_INT8_MAX - 1 <= value <= _INT8_MAX else None
    if isinstance(value, float):
        return FLOAT8
    if isinstance(value, bytes | bytearray | memoryview):
        return BYTEA
    if isinstance(value, datetime):
        return TIMESTAMP if value.tzinfo is None else TIMESTAMPTZ
    return None


def _param(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bool):
        return b"t" if value else b"f"
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, float):
        return repr(value).encode()
    if isinstance(value, datetime):
        return value.isoformat(timespec="microseconds").encode()
    return bytes(value)


def numbered(query: str) -> tuple[bytes, tuple[str, ...]]:
    """A psycopg query (``%(name)s`` parameters, ``%%`` for ``%``) as libpq takes it
    (``$1``, ``$2``, ... in the order the names first appear) and those names."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    parts = query.split("%%")
    return "%".join(_PARAMETER.sub(number, part) for part in parts).encode(), tuple(names)


class _Statement:
    """One statement as prepared on one connection (or left to psycopg)."""

    __slots__ = ("name", "names", "formats", "loaders")

    def __init__(
        self,
        name: bytes | None,
        names: tuple[str, ...],
        formats: Sequence[int],
        loaders: Sequence[Callable[[bytes], Any]],
    ) -> None:
        self.name = name  # None: run by psycopg's cursor
        self.names = names
        self.formats = formats
        self.loaders = loaders


class PqCursor:
    """What :class:`fdo_server.sql.Sql` uses of a psycopg cursor, on ``conn``'s libpq
    connection (module docstring). Kept with its connection, as the statements it
    prepared are the connection's."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.connection = conn
        self._pgconn = conn.pgconn
        self._fallback: psycopg.Cursor[Any] | None = None
        self._statements: dict[tuple[str, tuple[int, ...]], _Statement] = {}
        self._prepared = 0  # statements prepared on the connection (each name once)
        self._rows: list[tuple[Any, ...]] = []
        self._position = 0
        self._active: psycopg.Cursor[Any] | None = None  # the fallback cursor ran the last statement
        self.rowcount = -1
        self.description: list[tuple[str]] | None = None
        zone = self._pgconn.parameter_status(b"TimeZone")
        self._zone: tzinfo = UTC
        if zone:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                self._zone = ZoneInfo(zone.decode())
            except (ZoneInfoNotFoundError, ValueError):
                self._zone = UTC

    def _psycopg(self) -> psycopg.Cursor[Any]:
        if self._fallback is None or self._fallback.closed:
            self._fallback = self.connection.cursor()
        return self._fallback

    def execute(self, query: str, params: Mapping[str, Any] | None = None, *, again: bool = True) -> PqCursor:
        """Run ``query`` (psycopg's ``%(name)s`` form) with ``params``."""
        self._active = None
        if query in _TRANSACTION:
            self._done(self._check(self._pgconn.exec_(_TRANSACTION[query]), query), ())
            return self
        params = params or {}
        types: list[int] = []
        for value in params.values():
            oid = _param_type(value)
            if oid is None:
                return self._by_psycopg(query, params)
            types.append(oid)
        key = (query, tuple(types))
        statement = self._statements.get(key)
        if statement is None:
            statement = self._statements[key] = self._prepare(query, params, key[1])
        if statement.name is None:
            return self._by_psycopg(query, params)
        values: Any = [_param(params[name]) for name in statement.names]  # None: NULL
        result = self._pgconn.exec_prepared(statement.name, values, statement.formats, 1)
        if result.error_field(pq.DiagnosticField.SQLSTATE) == _NO_SUCH_STATEMENT:
            # Someone ran DEALLOCATE ALL (or DISCARD ALL) on the connection: prepare again.
            # Outside a transaction the statement is run again; inside one the error stands
            # (the transaction is aborted), and the next one prepares anew.
            self._statements.clear()
            if again and self._pgconn.transaction_status == pq.TransactionStatus.IDLE:
                return self.execute(query, params, again=False)
        self._done(self._check(result, query), statement.loaders)
        return self

    def _prepare(self, query: str, params: Mapping[str, Any], types: tuple[int, ...]) -> _Statement:
        text, names = numbered(query)
        missing = set(names) - set(params)  # psycopg refuses a missing one and ignores an extra one
        if missing:
            raise psycopg.ProgrammingError(f"query parameter missing: {', '.join(sorted(missing))}")
        by_name = dict(zip(params, types, strict=True))
        oids = [by_name[name] for name in names]
        formats = [1 if oid == BYTEA else 0 for oid in oids]
        self._prepared += 1
        name = f"fdo_{self._prepared}".encode()
        self._check(self._pgconn.prepare(name, text, oids), query)
        described = self._check(self._pgconn.describe_prepared(name), query)
        loaders: list[Callable[[bytes], Any]] = []
        for column in range(described.nfields):
            oid = described.ftype(column)
            loader = self._timestamptz if oid == TIMESTAMPTZ else _LOADERS.get(oid)
            if loader is None:
                return _Statement(None, names, formats, ())
            loaders.append(loader)
        return _Statement(name, names, formats, loaders)

    def _timestamptz(self, data: bytes) -> datetime:
        return (_EPOCH_UTC + timedelta(microseconds=_int(data))).astimezone(self._zone)

    def _by_psycopg(self, query: str, params: Mapping[str, Any]) -> PqCursor:
        cursor = self._psycopg()
        cursor.execute(query, params)
        self._active = cursor
        self.rowcount = cursor.rowcount
        self.description = None if cursor.description is None else [(d.name,) for d in cursor.description]
        return self

    def _check(self, result: pq.abc.PGresult, query: str) -> pq.abc.PGresult:
        if result.status in _OK:
            return result
        if self._pgconn.status == pq.ConnStatus.BAD:
            message = (result.error_message or b"").decode(errors="replace").strip()
            raise psycopg.OperationalError(f"the connection is lost: {message}")
        if result.status == pq.ExecStatus.FATAL_ERROR:
            raise errors.error_from_result(result, encoding=self.connection.info.encoding)
        status = pq.ExecStatus(result.status).name
        raise psycopg.InterfaceError(f"unexpected result {status} from {query[:60]!r}")

    def _done(self, result: pq.abc.PGresult, loaders: Sequence[Callable[[bytes], Any]]) -> None:
        self._position = 0
        if result.status != pq.ExecStatus.TUPLES_OK:
            self._rows = []
            self.description = None
            count = result.command_tuples
            self.rowcount = -1 if count is None else count
            return
        fields = result.nfields
        self.description = [((result.fname(column) or b"").decode(),) for column in range(fields)]
        rows: list[tuple[Any, ...]] = []
        get = result.get_value
        for row in range(result.ntuples):
            values: list[Any] = []
            for column in range(fields):
                data = get(row, column)
                values.append(None if data is None else loaders[column](data))
            rows.append(tuple(values))
        self._rows = rows
        count = result.command_tuples
        self.rowcount = len(rows) if count is None else count

    def fetchone(self) -> tuple[Any, ...] | None:
        if self._active is not None:
            row = self._active.fetchone()
            return None if row is None else tuple(row)
        if self.description is None:
            raise psycopg.ProgrammingError("the last operation didn't produce records")
        if self._position >= len(self._rows):
            return None
        self._position += 1
        return self._rows[self._position - 1]

    def fetchall(self) -> list[tuple[Any, ...]]:
        if self._active is not None:
            return [tuple(row) for row in self._active.fetchall()]
        if self.description is None:
            raise psycopg.ProgrammingError("the last operation didn't produce records")
        rows = self._rows[self._position :]
        self._position = len(self._rows)
        return rows


_CURSORS: weakref.WeakKeyDictionary[psycopg.Connection[Any], PqCursor] = weakref.WeakKeyDictionary()
_CURSORS_LOCK = threading.Lock()


def cursor_for(conn: psycopg.Connection[Any]) -> PqCursor:
    """``conn``'s :class:`PqCursor` (one per connection, for as long as it lives: the
    statements it prepared are the connection's, whichever pool lends it)."""
    with _CURSORS_LOCK:
        cursor = _CURSORS.get(conn)
        if cursor is None:
            cursor = _CURSORS[conn] = PqCursor(conn)
    return cursor
