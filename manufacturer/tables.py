"""The manufacturer's tables: vouchers made by DI and their hand-offs to owners.

``Voucher.raw`` is the voucher as it stands: the zero-entry voucher from DI, replaced
by the extended one when it is handed off (it is never extended twice: a voucher goes
to one owner). Each hand-off is also kept in ``HandOff`` with who did it and when.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, LargeBinary
from sqlmodel import Field, SQLModel

from fdo_server.clock import utc_now
from fdo_server.session_model import FdoSession
from fdo_server.tokens import AdminToken


class Voucher(SQLModel, table=True):
    """One device's ownership voucher."""

    __tablename__ = "mfg_voucher"

    id: int | None = Field(default=None, primary_key=True)
    guid: bytes = Field(sa_type=LargeBinary, unique=True, index=True)
    serial: str = Field(max_length=1024, index=True)
    model: str = Field(max_length=255, index=True)
    key_kind: str = Field(max_length=16)
    created_at: datetime = Field(default_factory=utc_now, sa_type=DateTime(timezone=True), index=True)
    raw: bytes = Field(sa_type=LargeBinary)
    num_entries: int = 0
    owner_key_spki: bytes | None = Field(default=None, sa_type=LargeBinary)
    handed_off_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class HandOff(SQLModel, table=True):
    """A voucher extended to an owner key."""

    __tablename__ = "mfg_handoff"

    id: int | None = Field(default=None, primary_key=True)
    voucher_id: int = Field(foreign_key="mfg_voucher.id", index=True)
    owner_key_spki: bytes = Field(sa_type=LargeBinary)
    owner_key_fingerprint: str = Field(max_length=64, index=True)
    extended_raw: bytes = Field(sa_type=LargeBinary)
    at: datetime = Field(default_factory=utc_now, sa_type=DateTime(timezone=True))
    by: str = Field(max_length=128)


TABLES: tuple[type[SQLModel], ...] = (FdoSession, AdminToken, Voucher, HandOff)
"""Every table of the manufacturer database."""
