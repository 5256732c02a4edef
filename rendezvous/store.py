"""What the TO0 and TO1 machines need from the rendezvous service (spec §5.3, §5.4).

:class:`RendezvousPolicy` is the :class:`~fdo.to0.rendezvous.TO0Policy` (lifetime cap
and key allow-lists); :class:`RegistrationLookup` is the
:class:`~fdo.to1.rendezvous.TO1Lookup` over the open unit of work
(:func:`fdo_server.db.current_session`). A registration counts only while
``expires_at`` is in the future; expired rows stay until ``fdo rendezvous purge``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, bindparam, delete, func
from sqlalchemy import select as core_select

from fdo.crypto import spki_der
from fdo.errors import InvalidVoucherError
from fdo.to0.rendezvous import TO0Registration
from fdo.to1.rendezvous import TO1Record
from fdo.types import Guid
from fdo.voucher import OwnershipVoucher
from fdo_server.clock import Clock, utc_now
from fdo_server.db import DirectStatement, bound, current_connection, current_session
from rendezvous.device_tables import REGISTRATIONS

if TYPE_CHECKING:  # the admin plane's: TO0 and TO1 run Core statements only
    from sqlmodel import Session

    from rendezvous.tables import Registration


def as_utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime (SQLite hands back naive ones)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class RendezvousPolicy:
    """TO0Policy: cap the lifetime; allow only listed owner / manufacturer keys.

    Each non-empty allow-list must match on its own: with both set, a voucher needs a
    trusted manufacturer key *and* a trusted owner key.
    """

    max_wait_seconds: int
    owner_keys: frozenset[bytes] = frozenset()
    manufacturer_keys: frozenset[bytes] = frozenset()

    def check_owner(self, voucher: OwnershipVoucher) -> None:
        if self.owner_keys and spki_der(voucher.owner_public_key.key) not in self.owner_keys:
            raise InvalidVoucherError("the voucher's owner key is not trusted here", check="owner_key")
        if self.manufacturer_keys and spki_der(voucher.header.public_key.key) not in self.manufacturer_keys:
            raise InvalidVoucherError(
                "the voucher's manufacturer key is not trusted here", check="manufacturer_key"
            )


_REGISTRATIONS: Table = REGISTRATIONS
# Built once (Core, bound parameters): TO1 reads it twice per device.
_LIVE_OF_GUID = DirectStatement(
    core_select(_REGISTRATIONS.c.device_key_spki, _REGISTRATIONS.c.to1d).where(
        _REGISTRATIONS.c.guid == bindparam("g"), _REGISTRATIONS.c.expires_at > bindparam("now")
    )
)


class RegistrationLookup:
    """TO1Lookup: the live registration of a GUID, read in the current unit of work."""

    def __init__(self, clock: Clock = utc_now) -> None:
        self.clock = clock

    def find(self, guid: Guid) -> TO1Record | None:
        row = _LIVE_OF_GUID.first(current_connection(), {"g": guid.value, "now": self.clock()})
        if row is None:
            return None
        return TO1Record(device_key_spki=row[0], to1d=row[1])


_REGISTRATION_COLUMNS = (
    "guid",
    "to1d",
    "device_key_spki",
    "owner_key_spki",
    "manufacturer_key_spki",
    "wait_seconds",
    "registered_at",
    "expires_at",
)


def _upsert(dialect: str) -> DirectStatement | None:
    """The INSERT of a registration that replaces the GUID's earlier one, in one statement
    (so two owners registering the same GUID at once cannot collide), for ``dialect``
    (None for a database without ``ON CONFLICT``): built once, on first use (so a
    service on SQLite never imports the PostgreSQL dialect)."""
    if dialect in _UPSERT:
        return _UPSERT[dialect]
    dialect_insert: Any = None
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    built = None
    if dialect_insert is not None:
        stmt = dialect_insert(_REGISTRATIONS).values(bound(*_REGISTRATION_COLUMNS))
        built = DirectStatement(
            stmt.on_conflict_do_update(
                index_elements=["guid"],
                set_={name: stmt.excluded[name] for name in _REGISTRATION_COLUMNS if name != "guid"},
            )
        )
    _UPSERT[dialect] = built
    return built


_UPSERT: dict[str, DirectStatement | None] = {}


def save_registration(reg: TO0Registration, now: datetime) -> None:
    """Store ``reg`` in the current unit of work, replacing any earlier one for the GUID."""
    values: dict[str, Any] = {
        "guid": reg.guid.value,
        "to1d": reg.to1d,
        "device_key_spki": reg.device_key_spki,
        "owner_key_spki": reg.owner_key_spki,
        "manufacturer_key_spki": reg.manufacturer_key_spki,
        "wait_seconds": reg.wait_seconds,
        "registered_at": now,
        "expires_at": now + timedelta(seconds=reg.wait_seconds),
    }
    conn = current_connection()
    upsert = _upsert(conn.dialect.name)
    if upsert is not None:
        upsert.rowcount(conn, values)
        return
    from rendezvous.tables import Registration

    db = current_session()
    row = db.get(Registration, reg.guid.value)
    if row is None:
        db.add(Registration(**values))
    else:
        for key, value in values.items():
            setattr(row, key, value)


# ---------------------------------------------------------------------------- admin


def list_registrations(db: Session, *, offset: int, limit: int) -> tuple[int, Sequence[Registration]]:
    """The total count and one page of registrations, soonest expiry first."""
    from sqlmodel import col, select

    from rendezvous.tables import Registration

    total = db.exec(select(func.count()).select_from(Registration)).one()
    rows = db.exec(
        select(Registration)
        .order_by(col(Registration.expires_at), col(Registration.guid))
        .offset(offset)
        .limit(limit)
    ).all()
    return int(total), rows


def delete_registration(db: Session, guid: Guid) -> bool:
    """Delete the registration of ``guid``; False when there was none."""
    from sqlmodel import col

    from rendezvous.tables import Registration

    result = db.execute(delete(Registration).where(col(Registration.guid) == guid.value))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def purge_expired_registrations(db: Session, now: datetime) -> int:
    """Delete registrations that expired at or before ``now``; returns how many."""
    from sqlmodel import col

    from rendezvous.tables import Registration

    result = db.execute(delete(Registration).where(col(Registration.expires_at) <= now))
    return int(result.rowcount)  # type: ignore[attr-defined]
