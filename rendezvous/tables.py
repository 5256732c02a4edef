"""Rendezvous tables: one live owner registration per device GUID.

``to1d`` is kept exactly as the owner signed it (TO1.RVRedirect hands it back
unchanged); the three SPKIs are recorded from the voucher at TO0 so TO1 can check the
device's signature and operators can see who registered what. Times are UTC.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, DateTime
from sqlmodel import Field, SQLModel

from fdo_server.auth import AdminToken
from fdo_server.sessions import FdoSession


class Registration(SQLModel, table=True):
    """An owner's TO0 registration of one device (replaced by a newer TO0 for the GUID)."""

    __tablename__ = "rv_registration"

    guid: bytes = Field(primary_key=True, min_length=16, max_length=16)
    to1d: bytes
    device_key_spki: bytes
    owner_key_spki: bytes
    manufacturer_key_spki: bytes
    wait_seconds: int
    registered_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    expires_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False, index=True))


TABLES: list[type[SQLModel]] = [Registration, FdoSession, AdminToken]
"""Every table of the rendezvous database."""
