"""What the TO0 and TO1 machines need from the rendezvous service (spec §5.3, §5.4).

:class:`RendezvousPolicy` is the :class:`~fdo.to0.rendezvous.TO0Policy` (lifetime cap
and key allow-lists); :class:`RegistrationLookup` is the
:class:`~fdo.to1.rendezvous.TO1Lookup` over the open unit of work
(:func:`fdo_server.sql.current`: statements on the driver, no SQLAlchemy). A registration counts only while
``expires_at`` is in the future; expired rows stay until ``fdo rendezvous purge``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from fdo.crypto import spki_der
from fdo.errors import InvalidVoucherError
from fdo.to0.rendezvous import TO0Registration
from fdo.to1.rendezvous import TO1Record
from fdo.types import Guid
from fdo.voucher import OwnershipVoucher
from fdo_server.clock import Clock, utc_now
from fdo_server.sql import Sql

if TYPE_CHECKING:  # the admin plane's: TO0 and TO1 run statements on the driver only
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


# TO1's HelloRV reads it (ProveToRV too, on a machine restored from the stored state).
_LIVE_OF_GUID = Sql("SELECT device_key_spki, to1d FROM rv_registration WHERE guid = :g AND expires_at > :now")


class RegistrationLookup:
    """TO1Lookup: the live registration of a GUID, read in the current unit of work."""

    def __init__(self, clock: Clock = utc_now) -> None:
        self.clock = clock

    def find(self, guid: Guid) -> TO1Record | None:
        row = _LIVE_OF_GUID.first({"g": guid.value, "now": self.clock()})
        if row is None:
            return None
        return TO1Record(device_key_spki=row[0], to1d=row[1])


#: The INSERT of a registration that replaces the GUID's earlier one, in one statement
#: (so two owners registering the same GUID at once cannot collide).
_UPSERT = Sql(
    "INSERT INTO rv_registration (guid, to1d, device_key_spki, owner_key_spki, manufacturer_key_spki, "
    "wait_seconds, registered_at, expires_at) VALUES (:guid, :to1d, :device_key_spki, :owner_key_spki, "
    ":manufacturer_key_spki, :wait_seconds, :registered_at, :expires_at) "
    "ON CONFLICT (guid) DO UPDATE SET to1d = excluded.to1d, device_key_spki = excluded.device_key_spki, "
    "owner_key_spki = excluded.owner_key_spki, manufacturer_key_spki = excluded.manufacturer_key_spki, "
    "wait_seconds = excluded.wait_seconds, registered_at = excluded.registered_at, "
    "expires_at = excluded.expires_at"
)


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
    _UPSERT.rowcount(values)


# ---------------------------------------------------------------------------- admin


def list_registrations(db: Session, *, offset: int, limit: int) -> tuple[int, Sequence[Registration]]:
    """The total count and one page of registrations, soonest expiry first."""
    from sqlalchemy import func
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
    from sqlalchemy import delete
    from sqlmodel import col

    from rendezvous.tables import Registration

    result = db.execute(delete(Registration).where(col(Registration.guid) == guid.value))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def purge_expired_registrations(db: Session, now: datetime) -> int:
    """Delete registrations that expired at or before ``now``; returns how many."""
    from sqlalchemy import delete
    from sqlmodel import col

    from rendezvous.tables import Registration

    result = db.execute(delete(Registration).where(col(Registration.expires_at) <= now))
    return int(result.rowcount)  # type: ignore[attr-defined]
