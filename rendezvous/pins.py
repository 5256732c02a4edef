"""Per-GUID pins: nobody takes over a device's rendezvous entry (spec §5.3, TO0).

TO0 proves that the registering owner holds the final owner key of *a* voucher that
verifies; with empty trust lists any voucher verifies that its author signed, so a
voucher forged with a victim's GUID (the attacker's own manufacturer key, the header
copied) would replace the real owner's registration and send the device to the
attacker. So the first valid registration of a GUID pins it (:class:`Pin`, table
``rv_pin``, which outlives registration expiry and ``fdo rendezvous purge``): the
manufacturer key (SHA-256 of the voucher header's public key SPKI) and the owner key
chain (SHA-256 of each entry's owner key SPKI, entry 0 first).

A later registration of that GUID is accepted only when its manufacturer key is the
pinned one and its chain continues the pinned chain (:func:`judge`): the same voucher
registering again, or the voucher extended to the next owner (resale: the buyer's
voucher has the seller's chain plus an entry). A longer chain becomes the pin, so after
a resale the previous owner can no longer register the device. Anything else is refused
with FDO error 101 (go-fdo's rendezvous answers a voucher its ``AcceptVoucher`` rejects
with InvalidMessageErrCode), logged as one line with the GUID and reason, and counted as
``fdo_to0_refused_total{reason}`` (:class:`RefusalReporter`). ``fdo rendezvous unpin``
clears a pin for a legitimate recovery (a device re-sold outside FDO, a voucher
re-issued by its manufacturer).

The owner's credential replacement (TO2 gives the device a new GUID) registers a new
GUID, so it is a first registration with its own pin.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from fdo.errors import ErrorCode, InvalidMessageError
from fdo.to0.rendezvous import TO0Registration
from fdo.types import Guid
from fdo_server.logs import FIELDS
from fdo_server.metrics import ServiceMetrics
from fdo_server.sql import Conn, Sql
from transport.dispatch import MessageEvent

log = logging.getLogger("rendezvous.pins")
audit = logging.getLogger("rendezvous.audit")

DIGEST = 32  # SHA-256


class Verdict(StrEnum):
    """What :func:`judge` decides for a registration of a GUID."""

    PIN = "pin"  # no pin yet: this registration becomes it
    SAME = "same"  # the pinned voucher's chain again
    EXTEND = "extend"  # the pinned chain plus entries (resale): it becomes the pin
    WRONG_MANUFACTURER = "manufacturer_key"  # refused
    BROKEN_CHAIN = "owner_chain"  # refused

    @property
    def accepted(self) -> bool:
        return self in (Verdict.PIN, Verdict.SAME, Verdict.EXTEND)


REASONS = {
    Verdict.WRONG_MANUFACTURER: (
        "the voucher's manufacturer key is not the one this GUID was first registered with"
    ),
    Verdict.BROKEN_CHAIN: (
        "the voucher's owner key chain does not continue the one this GUID is registered with"
    ),
}


@dataclass(frozen=True, slots=True)
class Pin:
    """What is kept of a GUID's registrations: manufacturer key hash and owner chain."""

    manufacturer_key_hash: bytes
    owner_chain: tuple[bytes, ...]

    @classmethod
    def of(cls, reg: TO0Registration) -> Pin:
        return cls(reg.manufacturer_key_hash, reg.owner_chain)

    def chain_bytes(self) -> bytes:
        return b"".join(self.owner_chain)

    @classmethod
    def from_columns(cls, manufacturer_key_hash: bytes, chain: bytes) -> Pin:
        if len(chain) % DIGEST:
            raise ValueError("rv_pin.owner_chain is not a whole number of SHA-256 digests")
        digests = tuple(chain[i : i + DIGEST] for i in range(0, len(chain), DIGEST))
        return cls(bytes(manufacturer_key_hash), digests)


def judge(pinned: Pin | None, offered: Pin) -> Verdict:
    """The pin rule: accept a first registration, the pinned chain, or a continuation."""
    if pinned is None:
        return Verdict.PIN
    if offered.manufacturer_key_hash != pinned.manufacturer_key_hash:
        return Verdict.WRONG_MANUFACTURER
    n = len(pinned.owner_chain)
    if offered.owner_chain[:n] != pinned.owner_chain:
        return Verdict.BROKEN_CHAIN
    return Verdict.SAME if len(offered.owner_chain) == n else Verdict.EXTEND


class PinRefusedError(InvalidMessageError):
    """TO0.OwnerSign for a GUID pinned to another manufacturer key or owner chain (101)."""

    code = ErrorCode.INVALID_MESSAGE_ERROR

    def __init__(self, guid: Guid, verdict: Verdict) -> None:
        super().__init__(f"registration refused: {REASONS[verdict]}")
        self.guid = guid
        self.verdict = verdict


# ------------------------------------------------------------------------ database

_LOAD = Sql("SELECT manufacturer_key_hash, owner_chain FROM rv_pin WHERE guid = :g")
_LOAD_LOCKED = Sql(
    "SELECT manufacturer_key_hash, owner_chain FROM rv_pin WHERE guid = :g FOR UPDATE",
    sqlite="SELECT manufacturer_key_hash, owner_chain FROM rv_pin WHERE guid = :g",  # no row locks there
)


def load_pin(guid: bytes, *, lock: bool = False, conn: Conn | None = None) -> Pin | None:
    """The pin of ``guid`` (``lock``: row-locked until the transaction ends, PostgreSQL),
    read in the current unit of work (or ``conn``)."""
    row = (_LOAD_LOCKED if lock else _LOAD).first({"g": guid}, conn)
    return None if row is None else Pin.from_columns(row[0], row[1])


#: Inserts the pin unless the GUID has one, in one statement (so of two first
#: registrations racing, one pins and the other is judged against that pin); RETURNING
#: tells whether it inserted.
_INSERT_IF_ABSENT = Sql(
    "INSERT INTO rv_pin (guid, manufacturer_key_hash, owner_chain, pinned_at, updated_at) "
    "VALUES (:guid, :manufacturer_key_hash, :owner_chain, :pinned_at, :updated_at) "
    "ON CONFLICT (guid) DO NOTHING RETURNING guid"
)
_EXTEND = Sql("UPDATE rv_pin SET owner_chain = :chain, updated_at = :now WHERE guid = :g")
_DELETE = Sql("DELETE FROM rv_pin WHERE guid = :g")


def enforce_pin(reg: TO0Registration, now: datetime) -> Verdict:
    """Check ``reg`` against its GUID's pin in the current unit of work and update the pin.

    Raises :class:`PinRefusedError` (after noting it for :class:`RefusalReporter`) when
    the registration does not continue the pin; the caller's transaction then rolls back.
    """
    offered = Pin.of(reg)
    guid = reg.guid.value
    values = {
        "guid": guid,
        "manufacturer_key_hash": offered.manufacturer_key_hash,
        "owner_chain": offered.chain_bytes(),
        "pinned_at": now,
        "updated_at": now,
    }
    if _INSERT_IF_ABSENT.first(values) is not None:
        return Verdict.PIN
    verdict = judge(load_pin(guid, lock=True), offered)
    if verdict == Verdict.EXTEND:
        _EXTEND.rowcount({"g": guid, "chain": offered.chain_bytes(), "now": now})
    elif not verdict.accepted:
        _pending.set(_Refusal(reg.guid, verdict))
        raise PinRefusedError(reg.guid, verdict)
    return verdict


def delete_pin(conn: Conn, guid: Guid) -> bool:
    """Clear the pin of ``guid`` (its next valid registration pins it anew); False if none."""
    return bool(_DELETE.rowcount({"g": guid.value}, conn))


def log_unpin(guid: Guid, who: str) -> None:
    """The audit line of a cleared pin (``who``: a token name, or the local user)."""
    audit.warning(
        "pin of GUID %s cleared by %s",
        guid,
        who,
        extra={FIELDS: {"event": "rv_unpin", "guid": str(guid), "who": who}},
    )


# ------------------------------------------------------------------------ reporting


@dataclass(frozen=True, slots=True)
class _Refusal:
    guid: Guid
    verdict: Verdict


#: The refusal of the message being handled. The router may run a message twice (on its
#: cached machine, then again from the stored session), so the refusal is reported once,
#: by the message observer, after the answer is decided, rather than where it is raised.
_pending: ContextVar[_Refusal | None] = ContextVar("rv_pin_refusal", default=None)


class RefusalReporter:
    """A message listener (:meth:`ServiceMetrics.add_listener`): logs and counts refusals."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.service = metrics.service
        self.refused = metrics.counter(
            "fdo_to0_refused",
            "TO0 registrations refused because the GUID is pinned to another manufacturer key or owner chain",
            ["service", "reason"],
        )

    def __call__(self, event: MessageEvent) -> None:
        refusal = _pending.get()
        if refusal is None:
            return
        _pending.set(None)
        if event.error_code != int(PinRefusedError.code):
            return  # the message ended with another answer after all
        reason = refusal.verdict.value
        self.refused.labels(self.service, reason).inc()
        log.warning(
            "TO0 registration of GUID %s refused (%s): %s",
            refusal.guid,
            reason,
            REASONS[refusal.verdict],
            extra={FIELDS: {"event": "to0_refused", "guid": str(refusal.guid), "reason": reason}},
        )
