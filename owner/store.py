"""TO2's lookups (:class:`fdo.to2.owner.TO2OwnerStore`) over the owner database.

Every call runs inside the unit of work the FDO router opened for the message, on its
connection (:func:`fdo_server.sql.current`). Only usable vouchers (``active``,
``unconfirmed``, ``replacing``: :mod:`owner.lifecycle`) take part in TO2; a replaced one
belongs to a GUID the device no longer has.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from contextvars import ContextVar

from fdo.codec import CborValue
from fdo.crypto import PrivateKeyT, PublicKey, spki_der
from fdo.errors import ResourceNotFoundError
from fdo.serviceinfo import CommandOwner, Devmod, DownloadOwner, OwnerModule
from fdo.to2.owner import Replacement
from fdo.types import Guid
from fdo.voucher import OwnershipVoucher
from fdo_server.clock import Clock, utc_now
from fdo_server.sql import Conn, current
from owner import lifecycle
from owner.assign import modules_for, restore_modules
from owner.config import OwnerConfig
from owner.lifecycle import VoucherRow, usable_row

#: The usable voucher row :meth:`OwnerStore.voucher` read last in this context, so
#: :meth:`OwnerStore.replacement` in the same unit of work needs no query.
_LAST_READ: ContextVar[tuple[Conn, bytes, VoucherRow] | None] = ContextVar("owner_voucher_read", default=None)


def _row_of(guid: Guid) -> VoucherRow | None:
    """``guid``'s usable voucher row, as this unit of work sees it."""
    conn = current()
    last = _LAST_READ.get()
    if last is not None and last[0] is conn and last[1] == guid.value:
        return last[2]
    row = usable_row(guid.value, conn)
    if row is not None:
        _LAST_READ.set((conn, guid.value, row))
    return row


class DecodedVouchers:
    """A bounded cache of decoded vouchers keyed by their exact bytes.

    A TO2 reads the voucher in several messages; decoding it (CBOR, certificates, keys)
    is the same work each time. Keyed by the stored bytes, a hit is the very voucher
    those bytes decode to (vouchers are immutable), so a changed row is a miss.

    Only sessions in flight hit it (a finished TO2 replaces the voucher), so ``size``
    need only cover the TO2 sessions a worker serves at once. Each entry holds some
    7.5 KB (the bytes and the decoded voucher): at 1,024 entries the cache alone grew a
    worker by about 8 MB over its first 1,024 onboardings (``docs/benchmarks.md``).
    """

    def __init__(self, size: int = 128) -> None:
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

    def __init__(self, config: OwnerConfig, *, clock: Clock = utc_now) -> None:
        self.config = config
        self.clock = clock
        self._by_spki = {spki_der(k.public_key()): k for k in config.keys.values()}
        self._decoded = DecodedVouchers()

    def voucher(self, guid: Guid) -> OwnershipVoucher | None:
        conn = current()
        row = usable_row(guid.value, conn)
        if row is None:
            return None
        _LAST_READ.set((conn, guid.value, row))
        return self._decoded.decode(row.raw)

    def private_key(self, public_key: PublicKey) -> PrivateKeyT | None:
        return self._by_spki.get(spki_der(public_key.key))

    def replacement(self, voucher: OwnershipVoucher) -> Replacement:
        # The device just proved it holds this voucher's credential: if that is a
        # replacement, the voucher it replaced is now replaced for good (owner.lifecycle).
        row = _row_of(voucher.guid)
        if row is None:  # read in this same message by TO2.ProveDevice
            raise ResourceNotFoundError(f"no voucher for device {voucher.guid}")
        lifecycle.confirm(row, now=self.clock())
        # Either way Owner2Key is the current owner key: the owner keeps one key per kind.
        guid = voucher.guid if self.config.settings.credential_reuse else Guid.new()
        return Replacement(guid, voucher.header.rv_info, voucher.owner_public_key, basis=row.basis)

    def owner_modules(self, guid: Guid, devmod: Devmod) -> Sequence[OwnerModule]:
        """The configured actions for every device, then the device's group assignment."""
        modules: list[OwnerModule] = [DownloadOwner(d.path, d.data) for d in self.config.downloads]
        modules += [CommandOwner(c.command, c.args, may_fail=c.may_fail) for c in self.config.commands]
        urls = self.config.settings.to2_urls
        modules += modules_for(guid, devmod, status_base_url=urls[0] if urls else None)
        return modules

    def restore_module(self, name: str, state: CborValue) -> OwnerModule:
        return restore_modules(name, state)
