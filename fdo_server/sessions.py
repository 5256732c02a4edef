"""Protocol sessions in the service's database (:class:`transport.sessions.SessionStore`).

A row per session, keyed by its bearer token, with the serialised server machine, a
version for optimistic concurrency and an expiry. A replayed or concurrent message loses
the version race and changes nothing. Rows are read and written through the unit of work
the router opened for the request (:func:`fdo_server.sql.current`), as statements on
the driver (:class:`fdo_server.sql.Sql`): the FDO path needs no ORM and no SQLAlchemy.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, datetime

from fdo_server.sql import Sql, last_write
from transport.sessions import StaleSessionError, StoredSession


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything stored here is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# One row per message: the statements of the ``fdo_session`` table (the SQLModel class
# migrations use is fdo_server.session_model.FdoSession).
_INSERT = Sql(
    "INSERT INTO fdo_session (token, protocol, state, version, expires_at) "
    "VALUES (:token, :protocol, :state, :version, :expires_at)"
)
_LOAD = Sql(
    "SELECT protocol, state, version, expires_at FROM fdo_session WHERE token = :t",
    datetimes=("expires_at",),
)
_SAVE = Sql("UPDATE fdo_session SET state = :s, version = :nv WHERE token = :t AND version = :v")
_FINISH = Sql("DELETE FROM fdo_session WHERE token = :t AND version = :v")
_DELETE = Sql("DELETE FROM fdo_session WHERE token = :t")
_PURGE = Sql("DELETE FROM fdo_session WHERE expires_at <= :now")


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
        with last_write():
            _INSERT.rowcount(row)
        if self.on_create is not None:
            self.on_create(expires_at)
        return token

    def load(self, token: str) -> StoredSession | None:
        row = _LOAD.first({"t": token})
        if row is None:
            return None
        expires_at = _utc(row[3])
        if expires_at <= self.clock():
            return None
        return StoredSession(row[0], row[1], row[2], expires_at)

    def save(self, token: str, state: bytes, *, version: int) -> None:
        with last_write():
            saved = _SAVE.rowcount({"t": token, "v": version, "s": state, "nv": version + 1})
        if saved != 1:
            raise StaleSessionError(token)

    def finish(self, token: str, *, version: int) -> None:
        """Delete a finished session, only if no one else moved it on meanwhile."""
        with last_write():
            finished = _FINISH.rowcount({"t": token, "v": version})
        if finished != 1:
            raise StaleSessionError(token)

    def delete(self, token: str) -> None:
        with last_write():
            _DELETE.rowcount({"t": token})

    def purge_expired(self) -> int:
        """Remove expired sessions; returns how many."""
        return _PURGE.rowcount({"now": self.clock()})
