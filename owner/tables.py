"""The owner service's tables.

* :class:`OwnerVoucher` — every voucher the owner holds, imported or produced by TO2.
  A TO2 that replaced the credential links the old row and the new both ways
  (``replaced_by_id`` / ``replaces_id``), so a device's GUID history is a chain; the
  old row stays usable (``replacing``) until the device shows it holds the new one
  (see :mod:`owner.lifecycle`).
* :class:`To0Work` — one TO0 registration to keep alive per voucher; the scheduler
  claims rows (``claimed_by`` until ``claim_expires_at``) so replicas never both run it.
* :class:`DeviceOnboarding` — one row per completed TO2: devmod and module results.
* :class:`UiSession` — a browser signed in to the status page (:mod:`owner.web_session`):
  the hash of its random id, the token and role it signed in with, its times.

Datetimes are stored as UTC (SQLite hands them back naive: see :func:`fdo_server.clock.utc`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, LargeBinary
from sqlmodel import Field, SQLModel

from fdo_server.session_model import FdoSession
from fdo_server.tokens import AdminToken
from owner.groups_tables import GROUP_TABLES
from owner.rollouts_tables import ROLLOUT_TABLES
from owner.states import ACTIVE


def _now() -> datetime:
    return datetime.now(UTC)


def _ts(*, index: bool = False, nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(DateTime(timezone=True), index=index, nullable=nullable))


class OwnerVoucher(SQLModel, table=True):
    """A voucher the owner holds."""

    __tablename__ = "owner_voucher"

    id: int | None = Field(default=None, primary_key=True)
    guid: bytes = Field(sa_column=Column(LargeBinary(16), unique=True, index=True, nullable=False))
    raw: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    device_info: str = ""
    #: SPKI DER of the voucher's final owner key.
    owner_key_spki: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    num_entries: int = 0
    state: str = Field(default=ACTIVE, max_length=16, index=True)
    imported_at: datetime = Field(
        default_factory=_now, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    replaces_id: int | None = Field(default=None, foreign_key="owner_voucher.id")
    replaced_by_id: int | None = Field(default=None, foreign_key="owner_voucher.id")


class To0Work(SQLModel, table=True):
    """The TO0 registration of one voucher: when to (re)try and who is doing it."""

    __tablename__ = "owner_to0_work"

    id: int | None = Field(default=None, primary_key=True)
    voucher_id: int = Field(foreign_key="owner_voucher.id", unique=True)
    next_attempt_at: datetime = Field(sa_column=Column(DateTime(timezone=True), index=True, nullable=False))
    registered_until: datetime | None = _ts()
    attempts: int = 0
    last_error: str | None = Field(default=None, max_length=2000)
    claimed_by: str | None = Field(default=None, max_length=128)
    claim_expires_at: datetime | None = _ts()


class DeviceOnboarding(SQLModel, table=True):
    """One completed TO2."""

    __tablename__ = "owner_device_onboarding"

    id: int | None = Field(default=None, primary_key=True)
    guid: bytes = Field(sa_column=Column(LargeBinary(16), index=True, nullable=False))
    new_guid: bytes | None = Field(default=None, sa_column=Column(LargeBinary(16), nullable=True, index=True))
    voucher_id: int | None = Field(default=None, foreign_key="owner_voucher.id")
    devmod: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    modules: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    completed_at: datetime = Field(
        default_factory=_now, sa_column=Column(DateTime(timezone=True), nullable=False)
    )


class UiSession(SQLModel, table=True):
    """A status page sign-in: only the hash of the session id (the cookie) is kept."""

    __tablename__ = "owner_ui_session"

    id: int | None = Field(default=None, primary_key=True)
    session_hash: str = Field(max_length=64, unique=True, index=True)
    token_id: int = Field(foreign_key="admin_token.id", index=True)
    #: The token's role at sign-in: the session ends if the token's role is not this.
    role: str = Field(max_length=16)
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    #: The last page read, written at most once a minute (:mod:`owner.web_session`).
    last_seen_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    #: The absolute end, however active the session is.
    expires_at: datetime = Field(sa_column=Column(DateTime(timezone=True), index=True, nullable=False))


TABLES: list[type[SQLModel]] = [
    FdoSession,
    AdminToken,
    OwnerVoucher,
    To0Work,
    DeviceOnboarding,
    *GROUP_TABLES,
    UiSession,
    *ROLLOUT_TABLES,
]
