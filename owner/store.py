"""TO2's lookups (:class:`fdo.to2.owner.TO2OwnerStore`) over the owner database.

Every call runs inside the unit of work the FDO router opened for the message
(:func:`fdo_server.db.current_session`). Only ``active`` vouchers take part in TO2: a
replaced one belongs to a GUID the device no longer has.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from contextvars import ContextVar

from sqlalchemy import Table, bindparam
from sqlalchemy import select as core_select
from sqlalchemy.engine import Connection

from fdo.codec import CborValue
from fdo.crypto import PrivateKeyT, PublicKey, spki_der
from fdo.serviceinfo import CommandOwner, Devmod, DownloadOwner, OwnerModule
from fdo.to2.owner import Replacement
from fdo.types import Guid
from fdo.voucher import OwnershipVoucher
from fdo_server.db import DirectStatement, current_connection, current_session
from owner.assign import modules_for, restore_modules
from owner.settings import OwnerConfig
from owner.tables import ACTIVE, OwnerVoucher

_VOUCHERS: Table = OwnerVoucher.__table__  # type: ignore[attr-defined]
_ACTIVE = DirectStatement(
    core_select(_VOUCHERS.c.id, _VOUCHERS.c.raw)
    .where(_VOUCHERS.c.guid == bindparam("g"), _VOUCHERS.c.state == ACTIVE)
    .limit(1)
)
_ID_OF_ACTIVE = DirectStatement(
    core_select(_VOUCHERS.c.id)
    .where(_VOUCHERS.c.guid == bindparam("g"), _VOUCHERS.c.state == ACTIVE)
    .limit(1)
)
#: The active voucher row (connection, GUID, id) :meth:`OwnerStore.voucher` read last in
#: this context, so :func:`active_voucher_id` in the same unit of work needs no query.
_LAST_READ: ContextVar[tuple[Connection, bytes, int] | None] = ContextVar("owner_voucher_read", default=None)


def active_voucher_id(guid: Guid) -> int | None:
    """The id of ``guid``'s active voucher, as this unit of work sees it."""
    conn = current_connection()
    last = _LAST_READ.get()
    if last is not None and last[0] is conn and last[1] == guid.value:
        return last[2]
    found = _ID_OF_ACTIVE.first(conn, {"g": guid.value})
    return None if found is None else int(found[0])


class DecodedVouchers:
    """A bounded cache of decoded vouchers keyed by their exact bytes.

    A TO2 reads the voucher in several messages; decoding it (CBOR, certificates, keys)
    is the same work each time. Keyed by the stored bytes, a hit is the very voucher
    those bytes decode to (vouchers are immutable), so a changed row is a miss.
    """

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._items: OrderedDict[bytes, OwnershipVoucher] = OrderedDict()
        self._lock = threading.Lock()

    def decode(self, raw: bytes) -> OwnershipVoucher:
        with self._lock:
            found = self._items.get(raw)
            if found is not None:
                self._items.move_to_end(raw)
                return found
        voucher = OwnershipVoucher.decode(raw)
        with self._lock:
            self._items[raw] = voucher
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return voucher


class OwnerStore:
    """:class:`~fdo.to2.owner.TO2OwnerStore` over the database and the configured keys."""

    def __init__(self, config: OwnerConfig) -> None:
        self.config = config
        self._by_spki = {spki_der(k.public_key()): k for k in config.keys.values()}
        self._decoded = DecodedVouchers()

    def voucher(self, guid: Guid) -> OwnershipVoucher | None:
        conn = current_connection()
        row = _ACTIVE.first(conn, {"g": guid.value})
        if row is None:
            return None
        _LAST_READ.set((conn, guid.value, int(row[0])))
        return self._decoded.decode(bytes(row[1]))

    def private_key(self, public_key: PublicKey) -> PrivateKeyT | None:
        return self._by_spki.get(spki_der(public_key.key))

    def replacement(self, voucher: OwnershipVoucher) -> Replacement:
        # Either way Owner2Key is the current owner key: the owner keeps one key per kind.
        guid = voucher.guid if self.config.settings.credential_reuse else Guid.new()
        return Replacement(guid, voucher.header.rv_info, voucher.owner_public_key)

    def owner_modules(self, guid: Guid, devmod: Devmod) -> Sequence[OwnerModule]:
        """The configured actions for every device, then the device's group assignment."""
        modules: list[OwnerModule] = [DownloadOwner(d.path, d.data) for d in self.config.downloads]
        modules += [CommandOwner(c.command, c.args, may_fail=c.may_fail) for c in self.config.commands]
        urls = self.config.settings.to2_urls
        modules += modules_for(current_session(), guid, devmod, status_base_url=urls[0] if urls else None)
        return modules

    def restore_module(self, name: str, state: CborValue) -> OwnerModule:
        return restore_modules(name, state)
