"""Protocol sessions in the service's database (:class:`transport.sessions.SessionStore`).

A row per session, keyed by its bearer token, with the serialised server machine, a
version for optimistic concurrency and an expiry. A replayed or concurrent message loses
the version race and changes nothing. Rows are read and written through the unit of work
the router opened for the request (:func:`fdo_server.db.current_connection`), as Core
statements on :data:`FDO_SESSION`: the FDO path needs no ORM.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    bindparam,
    delete,
    insert,
    select,
    update,
)

from fdo_server.db import DirectStatement, current_connection, last_write
from transport.sessions import StaleSessionError, StoredSession

#: The ``fdo_session`` table as the FDO path sees it (Core, no ORM): one protocol session
#: (DI, TO0, TO1 or TO2) of this service. The SQLModel class of the same table, which
#: migrations use, is :class:`fdo_server.session_model.FdoSession`.
FDO_SESSION = Table(
    "fdo_session",
    MetaData(),
    Column("token", String(64), primary_key=True),
    Column("protocol", String(8), nullable=False),
    Column("state", LargeBinary, nullable=False),
    Column("version", Integer, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
)


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything stored here is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


_TABLE = FDO_SESSION
_C = _TABLE.c

# Built once: Core statements with bound parameters, for what is one row per message; on
# PostgreSQL they go to the driver directly (DirectStatement).
_INSERT = DirectStatement(insert(_TABLE))
_LOAD = DirectStatement(
    select(_C.protocol, _C.state, _C.version, _C.expires_at).where(_C.token == bindparam("t"))
)
_SAVE = DirectStatement(
    update(_TABLE)
    .where(_C.token == bindparam("t"), _C.version == bindparam("v"))
    .values(state=bindparam("s"), version=bindparam("nv"))
)
_FINISH = DirectStatement(delete(_TABLE).where(_C.token == bindparam("t"), _C.version == bindparam("v")))
_DELETE = DirectStatement(delete(_TABLE).where(_C.token == bindparam("t")))


class SQLSessionStore:
    """Sessions in the ``fdo_session`` table."""

    def __init__(
        self,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        *,
        on_create: Callable[[datetime], None] | None = None,
    ) -> None:
        self.clock = clock
        #: Told each new session's expiry once it is stored (the session sweeper's
        #: :meth:`~fdo_server.sweep.SessionSweeper.notice`).
        self.on_create = on_create

    def create(self, protocol: str, state: bytes, expires_at: datetime) -> str:
        token = secrets.token_urlsafe(32)
        row = {"token": token, "protocol": protocol, "state": state, "version": 0, "expires_at": expires_at}
        with last_write() as conn:
            _INSERT.rowcount(conn, row)
        if self.on_create is not None:
            self.on_create(expires_at)
        return token

    def load(self, token: str) -> StoredSession | None:
        row = _LOAD.first(current_connection(), {"t": token})
        if row is None:
            return None
        expires_at = _utc(row[3])
        if expires_at <= self.clock():
            return None
        return StoredSession(row[0], row[1], row[2], expires_at)

    def save(self, token: str, state: bytes, *, version: int) -> None:
        with last_write() as conn:
            saved = _SAVE.rowcount(conn, {"t": token, "v": version, "s": state, "nv": version + 1})
        if saved != 1:
            raise StaleSessionError(token)

    def finish(self, token: str, *, version: int) -> None:
        """Delete a finished session, only if no one else moved it on meanwhile."""
        with last_write() as conn:
            finished = _FINISH.rowcount(conn, {"t": token, "v": version})
        if finished != 1:
            raise StaleSessionError(token)

    def delete(self, token: str) -> None:
        with last_write() as conn:
            _DELETE.rowcount(conn, {"t": token})

    def purge_expired(self) -> int:
        """Remove expired sessions; returns how many."""
        result = current_connection().execute(delete(_TABLE).where(_C.expires_at <= self.clock()))
        return int(result.rowcount)
