"""Rendezvous tables: one live owner registration per device GUID, and its pin.

``to1d`` is kept exactly as the owner signed it (TO1.RVRedirect hands it back
unchanged); the three SPKIs are recorded from the voucher at TO0 so TO1 can check the
device's signature and operators can see who registered what. Times are UTC.

:class:`RegistrationPin` keeps, per GUID, what the first valid registration was made
with (``rendezvous/pins.py``); it is not deleted when the registration expires or is
purged, only by ``fdo rendezvous unpin``.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, DateTime, LargeBinary
from sqlmodel import Field, SQLModel

from fdo_server.session_model import FdoSession
from fdo_server.tokens import AdminToken


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


class RegistrationPin(SQLModel, table=True):
    """The manufacturer key and owner key chain a GUID's registrations must continue."""

    __tablename__ = "rv_pin"

    guid: bytes = Field(primary_key=True, min_length=16, max_length=16)
    #: SHA-256 of the voucher header's public key (SubjectPublicKeyInfo DER).
    manufacturer_key_hash: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    #: SHA-256 of each entry's owner key SPKI, concatenated, entry 0 first.
    owner_chain: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    pinned_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    updated_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


TABLES: list[type[SQLModel]] = [Registration, RegistrationPin, FdoSession, AdminToken]
"""Every table of the rendezvous database."""
