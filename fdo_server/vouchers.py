"""Extending vouchers to a next owner, as the manufacturer and the owner admin APIs share it.

Both services answer ``POST /api/v1/vouchers/extend`` with the same request and
response shapes: an owner public key as PEM and GUIDs in, each extended voucher and all
of them concatenated as one PEM text (the form importers read) out. The extension
itself is :meth:`fdo.voucher.OwnershipVoucher.extend`; what is here turns its inputs
and refusals into HTTP answers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from fastapi import HTTPException
from pydantic import BaseModel, Field

from fdo.crypto import PrivateKeyT, PublicKeyT, key_kind, load_public_key
from fdo.errors import FdoError, FdoUsageError
from fdo.types import Guid
from fdo.voucher import OwnershipVoucher

#: At most this many GUIDs in one extend request.
MAX_BATCH = 1000


class ExtendRequest(BaseModel):
    """The next owner's public key (PEM: SubjectPublicKeyInfo)."""

    owner_key_pem: str = Field(min_length=1, max_length=16384)


class BatchExtendRequest(ExtendRequest):
    """Several vouchers to extend to one key (all or nothing)."""

    guids: list[str] = Field(min_length=1, max_length=MAX_BATCH)


class Extended(BaseModel):
    """One extended voucher."""

    guid: str
    owner_key_fingerprint: str
    pem: str


class BatchExtended(BaseModel):
    """The extended vouchers, and all of them as one PEM text."""

    vouchers: list[Extended]
    pem: str


def fingerprint(spki: bytes) -> str:
    """SHA-256 of a SubjectPublicKeyInfo, hex."""
    return hashlib.sha256(spki).hexdigest()


def parse_guid(text: str) -> bytes:
    """The 16 bytes of a GUID in text form; HTTPException 400 when it is not one."""
    try:
        return Guid.parse(text).value
    except (FdoError, ValueError):
        raise HTTPException(400, f"not a GUID: {text!r}") from None


def unique_guids(guids: Sequence[str]) -> list[str]:
    """``guids`` without repeats (first spelling kept); HTTPException 400 on a bad one."""
    seen: set[bytes] = set()
    out = []
    for guid in guids:
        value = parse_guid(guid)
        if value not in seen:
            seen.add(value)
            out.append(guid)
    return out


def next_owner_key(pem: str) -> PublicKeyT:
    """The next owner's key from ``owner_key_pem``; HTTPException 400 when unreadable."""
    try:
        return load_public_key(pem.encode())
    except FdoError as exc:
        raise HTTPException(400, f"owner_key_pem: {exc.message}") from None


def check_kind(voucher: OwnershipVoucher, next_owner: PublicKeyT, *, status: int = 400) -> None:
    """Every owner key in a voucher must be of OVPubKey's kind (type and size), as the
    spec and go-fdo require; a key of another kind is refused with HTTPException ``status``."""
    needed = key_kind(voucher.header.public_key.key)
    if key_kind(next_owner) != needed:
        raise HTTPException(
            status,
            f"owner key is {key_kind(next_owner)} but voucher {voucher.guid} needs {needed} "
            "(every owner key in a voucher must be of the manufacturer key's kind)",
        )


def extend_to(
    voucher: OwnershipVoucher, signer: PrivateKeyT, next_owner: PublicKeyT, *, status: int = 400
) -> OwnershipVoucher:
    """``voucher`` extended by ``signer`` (its current owner key) to ``next_owner``
    (:func:`check_kind` first); a refused extension is HTTPException ``status``."""
    check_kind(voucher, next_owner, status=status)
    try:
        return voucher.extend(signer, next_owner)
    except (FdoUsageError, FdoError) as exc:
        raise HTTPException(status, f"voucher {voucher.guid}: {exc}") from None
