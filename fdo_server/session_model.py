"""The protocol session table as an SQLModel class: what migrations, the services' table
lists and the tests use. The FDO path reads and writes the same table with statements
on the driver (:mod:`fdo_server.sessions`, no SQLAlchemy); ``tests/test_sql.py`` runs
them against the migrated schema.
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel


class FdoSession(SQLModel, table=True):
    """One protocol session (DI, TO0, TO1 or TO2) of this service."""

    __tablename__ = "fdo_session"

    token: str = Field(primary_key=True, max_length=64)
    protocol: str = Field(max_length=8)
    state: bytes
    version: int = 0
    expires_at: datetime = Field(index=True)
