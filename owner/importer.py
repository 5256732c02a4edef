"""Voucher import (reference §4.4): PEM text with one or more vouchers.

Each block is judged on its own, so one bad voucher does not block the rest. A voucher
is refused when it cannot be read, when its chain does not verify or has no entries,
when its final owner key is not one of the owner's keys (``owner key mismatch``), or
when a voucher with its GUID is already held (``duplicate``). An accepted voucher gets
a :class:`~owner.tables.To0Work` row due now, and the TO0 schedulers of this process are
woken once the import has committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import select

from fdo.crypto import PrivateKeyT, PublicKeyT
from fdo.errors import FdoError, InvalidVoucherError, MessageBodyError
from fdo.voucher import OwnershipVoucher, split_pem
from fdo_server.db import after_commit, current_session
from owner.lifecycle import voucher_values
from owner.tables import OwnerVoucher, To0Work
from owner.to0 import wake_schedulers

IMPORTED = "imported"
REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class ImportResult:
    """The fate of one voucher block (``index`` counts from 0 in the input)."""

    index: int
    status: str
    guid: str | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {"index": self.index, "status": self.status, "guid": self.guid, "reason": self.reason}


def add_voucher(voucher: OwnershipVoucher, *, now: datetime, replaces_id: int | None = None) -> OwnerVoucher:
    """Insert a voucher row (flushed, so its id is set)."""
    db = current_session()
    row = OwnerVoucher(**voucher_values(voucher, now=now, replaces_id=replaces_id))
    db.add(row)
    db.flush()
    return row


def import_pem(data: str | bytes, keys: Sequence[PrivateKeyT], *, now: datetime) -> list[ImportResult]:
    """Import every voucher in ``data`` into the current unit of work."""
    try:
        blocks = split_pem(data)
    except FdoError as exc:
        return [ImportResult(0, REFUSED, reason=f"unreadable: {exc.message}")]
    ours = [k.public_key() for k in keys]
    results = [_import_one(i, block, ours, now) for i, block in enumerate(blocks)]
    if any(r.status == IMPORTED for r in results):
        after_commit(wake_schedulers)
    return results


def _import_one(index: int, block: bytes, ours: Sequence[PublicKeyT], now: datetime) -> ImportResult:
    try:
        voucher = OwnershipVoucher.decode(block)
    except FdoError as exc:
        return ImportResult(index, REFUSED, reason=f"unreadable: {exc.message}")
    guid = str(voucher.guid)
    try:
        voucher.verify(min_entries=1)
    except InvalidVoucherError as exc:
        return ImportResult(index, REFUSED, guid, f"invalid voucher ({exc.check}): {exc.message}")
    except (MessageBodyError, FdoError) as exc:
        return ImportResult(index, REFUSED, guid, f"invalid voucher: {exc.message}")
    owner_key = voucher.owner_public_key
    if not any(owner_key.same_key(k) for k in ours):
        return ImportResult(
            index, REFUSED, guid, f"owner key mismatch: the voucher ends in {owner_key}, not an owner key"
        )
    db = current_session()
    if db.exec(select(OwnerVoucher.id).where(OwnerVoucher.guid == voucher.guid.value)).first() is not None:
        return ImportResult(index, REFUSED, guid, f"duplicate: a voucher for GUID {guid} is already held")
    row = add_voucher(voucher, now=now)
    assert row.id is not None  # noqa: S101 - set by the flush
    db.add(To0Work(voucher_id=row.id, next_attempt_at=now))
    return ImportResult(index, IMPORTED, guid)
