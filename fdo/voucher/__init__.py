"""Ownership voucher (spec §3.4; reference ``fdo-protocol.md`` §4).

::

    OwnershipVoucher = [OVProtVer, OVHeaderTag: bstr .cbor OVHeader, OVHeaderHMac: HMac,
                        OVDevCertChain: [+ bstr] / null, OVEntryArray: [* OVEntry]]
    OVHeader         = [OVHProtVer, OVGuid, OVRVInfo, OVDeviceInfo, OVPubKey, OVDevCertChainHash / null]
    OVEntry          = #6.18 COSE_Sign1 of OVEntryPayload, signed by the previous owner
    OVEntryPayload   = [OVEHashPrevEntry, OVEHashHdrInfo, OVEExtra: null / bstr .cbor {* int => bstr},
                        OVEPubKey]

Design: everything that is hashed, MACed or signed is kept as the bytes that were
received — the header (:attr:`OVHeader.raw`), the HMac and certificate chain elements,
and each entry's full tagged encoding (:attr:`OVEntry.raw`) — and checks run over those
bytes, never over a re-encoding. :meth:`OwnershipVoucher.encode` gives back the input
exactly; :meth:`OwnershipVoucher.extend` appends a freshly signed entry to the raw
array without touching older ones.

Hashes (reference §4.2): entry 0's OVEHashPrevEntry covers ``header bytes || CBOR(HMac)``,
entry *i*'s covers entry *i-1* including its 0xD2 tag byte; OVEHashHdrInfo covers
``GUID || DeviceInfo``; OVDevCertChainHash covers the concatenated DER certificates
(old fido-device-onboard-rs vouchers hashed the CBOR array instead: accepted on request
and reported, see :class:`VoucherReport`).

Extending writes OVEExtra as ``null`` when there is no extra data, as
fido-device-onboard-rs and the conformance tools do; go-fdo writes ``h'A0'`` (an empty
map) but reads ``null`` (its own ``testdata/ov_extended.pem`` has ``null``). Both are
accepted when reading.

This module is sans-I/O: text and bytes in, objects and bytes out.
"""

from __future__ import annotations

from fdo.voucher.checks import verify_entry
from fdo.voucher.ownership import OwnershipVoucher, replacement_voucher
from fdo.voucher.parts import (
    OVEntry,
    OVEntryPayload,
    OVHeader,
    UnsupportedVoucherVersionError,
    VoucherReport,
    cert_chain_hash,
    device_hmac_alg,
    legacy_cert_chain_hash,
    replacement_header,
)
from fdo.voucher.pem import split_pem, to_pem, vouchers_to_pem

__all__ = [
    "OVEntry",
    "OVEntryPayload",
    "OVHeader",
    "OwnershipVoucher",
    "UnsupportedVoucherVersionError",
    "VoucherReport",
    "cert_chain_hash",
    "device_hmac_alg",
    "legacy_cert_chain_hash",
    "replacement_header",
    "replacement_voucher",
    "split_pem",
    "verify_entry",
    "to_pem",
    "vouchers_to_pem",
]
