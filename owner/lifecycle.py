"""A voucher row's life across TO2 replacements: lost replies and racing sessions.

A TO2 that gives the device a new credential ends with TO2.Done2, and that reply can be
lost (network, power cut) after the owner committed TO2.Done. The device then still
holds its previous credential, so the owner keeps it usable until the device shows that
it holds the new one (``docs/vouchers.md``):

* **TO2.Done** (:func:`record_replacement`): the new voucher is stored ``active`` and
  the one it replaces becomes ``replacing``: no longer the device's voucher, but still
  accepted in TO2.
* **The device's first proven contact under the new GUID** (:func:`confirm`: its
  TO2.ProveDevice verified, or a status report with the token of that TO2): the
  previous voucher becomes ``replaced`` for good.
* **A TO2 run again with the previous credential** (the device never saw Done2): at its
  Done the replacement it never took up becomes ``superseded`` and a fresh one
  ``active``. With credential reuse the previous voucher becomes ``active`` again.

So a device never holds a credential its owner refuses, each device has one ``active``
voucher, and once the device has shown which credential it holds, that voucher is the
only usable one of its chain.

**Racing sessions.** Done is a compare-and-set on the replaced voucher's
``replaced_by_id`` as the session saw it when the device proved itself (the
replacement's *basis*, kept in the session by :class:`fdo.to2.owner.TO2Owner`). Of two
sessions of one device that both reach Done, the first to commit wins; the other finds
``replaced_by_id`` changed, fails with an FDO error and its transaction, the new voucher
included, is rolled back. The conditional UPDATE is atomic on SQLite (one writer) and
PostgreSQL (the second UPDATE waits for the first's row lock, then re-checks its WHERE).

TO0 follows the states: a replacement voucher is registered like an imported one
(``to0_replacements``), a ``replacing`` one stays registered, and a voucher that leaves
the usable states keeps its work row so that the scheduler can retire its registration
(:mod:`owner.to0`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fdo.codec import CborValue
from fdo.crypto import spki_der
from fdo.errors import InvalidTokenError
from fdo.voucher import OwnershipVoucher
from fdo_server.sql import Conn, Sql, after_commit
from owner.states import ACTIVE, REPLACED, REPLACING, SUPERSEDED, USABLE
from owner.to0 import wake_schedulers

_USABLE_IN = ", ".join(f"'{state}'" for state in USABLE)
_USABLE_ROW = Sql(
    "SELECT id, raw, state, replaces_id, replaced_by_id FROM owner_voucher "  # noqa: S608 - our constants
    f"WHERE guid = :g AND state IN ({_USABLE_IN}) LIMIT 1"
)
# The columns of voucher_values.
_INSERT_VOUCHER = Sql(
    "INSERT INTO owner_voucher (guid, raw, device_info, owner_key_spki, num_entries, state, imported_at, "
    "replaces_id) VALUES (:guid, :raw, :device_info, :owner_key_spki, :num_entries, :state, :imported_at, "
    ":replaces_id) RETURNING id"
)
# Done: the replaced voucher moves on only if no other session moved it since this one's
# basis was read (``replaced_by_id`` as seen then, NULL included: SQLite's IS is
# PostgreSQL's IS NOT DISTINCT FROM).
_MOVE_ON = (
    "UPDATE owner_voucher SET state = :state, replaced_by_id = :new "  # noqa: S608 - our constants
    f"WHERE id = :old AND state IN ('{ACTIVE}', '{REPLACING}') AND replaced_by_id"
)
_REPLACE = Sql(f"{_MOVE_ON} IS :seen", postgresql=f"{_MOVE_ON} IS NOT DISTINCT FROM :seen")
_SUPERSEDE = Sql(
    f"UPDATE owner_voucher SET state = '{SUPERSEDED}' WHERE id = :v AND state = '{ACTIVE}'"  # noqa: S608
)
_CONFIRM = Sql(
    f"UPDATE owner_voucher SET state = '{REPLACED}' "  # noqa: S608 - our constants
    f"WHERE id = :old AND state = '{REPLACING}' AND replaced_by_id = :new"
)
_ADD_TO0_WORK = Sql(
    "INSERT INTO owner_to0_work (voucher_id, next_attempt_at, attempts) "
    "VALUES (:voucher_id, :next_attempt_at, :attempts)"
)
# A voucher that is no longer usable: its registration is due to be retired now.
_TO0_DUE_NOW = Sql("UPDATE owner_to0_work SET next_attempt_at = :now, attempts = 0 WHERE voucher_id = :v")


_AGAIN = "another TO2 of this device completed, or it was handed on; start again"


def voucher_values(
    voucher: OwnershipVoucher, *, now: datetime, replaces_id: int | None = None
) -> dict[str, Any]:
    """The columns of a new, active voucher row for ``voucher``."""
    return {
        "guid": voucher.guid.value,
        "raw": voucher.encode(),
        "device_info": voucher.header.device_info,
        "owner_key_spki": spki_der(voucher.owner_public_key.key),
        "num_entries": len(voucher.entries),
        "state": ACTIVE,
        "imported_at": now,
        "replaces_id": replaces_id,
    }


@dataclass(frozen=True, slots=True)
class VoucherRow:
    """What TO2 reads of a usable voucher row."""

    id: int
    raw: bytes
    state: str
    replaces_id: int | None
    replaced_by_id: int | None

    @property
    def basis(self) -> CborValue:
        """The replacement basis TO2 keeps in its session: ``[id, replaced_by_id]``."""
        return [self.id, self.replaced_by_id]


def usable_row(guid: bytes, conn: Conn | None = None) -> VoucherRow | None:
    """The voucher row of ``guid`` that TO2 may use (``active`` or ``replacing``; a GUID
    has one row at most). The functions here run on ``conn``, by default the unit of
    work's (:func:`fdo_server.sql.current`)."""
    row = _USABLE_ROW.first({"g": guid}, conn)
    if row is None:
        return None
    return VoucherRow(int(row[0]), bytes(row[1]), str(row[2]), row[3], row[4])


def confirm(row: VoucherRow, *, now: datetime, conn: Conn | None = None) -> bool:
    """The device proved it holds ``row``'s credential: if ``row`` replaced a voucher
    that is still ``replacing`` (the device had not shown it took the replacement up),
    that one becomes ``replaced`` and its TO0 registration is retired. Returns whether
    anything changed. (An UPDATE runs for every voucher that replaced another, i.e. on
    re-onboarding; it changes a row only on the replacement's first contact.)"""
    if row.state != ACTIVE:
        return False
    return retire_replaced(row.id, row.replaces_id, now=now, conn=conn)


def retire_replaced(
    voucher_id: int, replaces_id: int | None, *, now: datetime, conn: Conn | None = None
) -> bool:
    """The voucher ``replaces_id`` that ``voucher_id`` replaced becomes ``replaced`` if it
    was still ``replacing`` (and its TO0 registration is retired); used when the device
    confirms and when ``voucher_id`` is handed on. Returns whether anything changed."""
    if replaces_id is None or _CONFIRM.rowcount({"old": replaces_id, "new": voucher_id}, conn) != 1:
        return False
    _TO0_DUE_NOW.rowcount({"v": replaces_id, "now": now}, conn)
    return True


def confirm_guid(guid: bytes, *, now: datetime, conn: Conn | None = None) -> bool:
    """:func:`confirm` for the usable voucher of ``guid``, if it has one."""
    row = usable_row(guid, conn)
    return row is not None and confirm(row, now=now, conn=conn)


def _basis(basis: CborValue) -> tuple[int, int | None]:
    """``[id, replaced_by_id]`` from the session (our own TO2 state; checked anyway)."""
    if (
        isinstance(basis, list)
        and len(basis) == 2
        and isinstance(basis[0], int)
        and (basis[1] is None or isinstance(basis[1], int))
    ):
        return basis[0], basis[1]
    raise InvalidTokenError("the session holds no replacement basis: start TO2 again")


def basis_voucher_id(basis: CborValue) -> int:
    """The id of the voucher a TO2 session replaced (from its basis)."""
    return _basis(basis)[0]


def record_replacement(
    basis: CborValue,
    new: OwnershipVoucher | None,
    *,
    now: datetime,
    register_to0: bool,
    conn: Conn | None = None,
) -> int:
    """TO2.Done: store ``new`` (None: credential reuse) as the replacement of the
    voucher in ``basis`` (and register it by TO0 when ``register_to0``). Raises
    :class:`~fdo.errors.InvalidTokenError` (and the caller's transaction rolls back)
    when another session moved that voucher on since ``basis`` was read. Returns the id
    of the voucher the device now holds."""
    old_id, seen = _basis(basis)
    if new is None:
        if seen is None:
            return old_id  # reuse of an active voucher: nothing changes
        # Reuse by a device that never took up its unconfirmed replacement: the
        # previous voucher is the one it holds, and is confirmed by this TO2.
        new_id, state = None, ACTIVE
    else:
        values = voucher_values(new, now=now, replaces_id=old_id)
        inserted = _INSERT_VOUCHER.first(values, conn)
        assert inserted is not None  # noqa: S101 - an INSERT always has one
        new_id, state = int(inserted[0]), REPLACING
    moved = _REPLACE.rowcount({"old": old_id, "seen": seen, "new": new_id, "state": state}, conn)
    if moved != 1:
        raise InvalidTokenError(f"the voucher changed during this session: {_AGAIN}")
    if seen is not None:
        if _SUPERSEDE.rowcount({"v": seen}, conn) != 1:  # handed on meanwhile
            raise InvalidTokenError(f"the voucher's replacement changed during this session: {_AGAIN}")
        if _TO0_DUE_NOW.rowcount({"v": seen, "now": now}, conn):
            after_commit(wake_schedulers)  # retire its registration now
    if new_id is None:
        return old_id
    if register_to0:
        _ADD_TO0_WORK.rowcount({"voucher_id": new_id, "next_attempt_at": now, "attempts": 0}, conn)
        after_commit(wake_schedulers)
    return new_id
