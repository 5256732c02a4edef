"""Vouchers as text: ``OWNERSHIP VOUCHER`` PEM blocks (reference §4.5)."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fdo.errors import MessageBodyError
from fdo.voucher.parts import PEM_LABEL

if TYPE_CHECKING:
    from fdo.voucher.ownership import OwnershipVoucher

_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END ([A-Z0-9 ]+)-----", re.DOTALL)


def split_pem(data: str | bytes) -> list[bytes]:
    """The raw CBOR of each ``OWNERSHIP VOUCHER`` PEM block in ``data`` (reference §4.5).

    Bytes that start with a CBOR array head (0x80-0x9F, never the first byte of text)
    are one raw CBOR voucher, as fido-device-onboard-rs reads data that does not start
    with ``--``; anything else is read as PEM text, where text around the blocks and
    other PEM blocks are ignored. No voucher block at all raises
    :class:`~fdo.errors.MessageBodyError`.
    """
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        if not raw:
            raise MessageBodyError("voucher: empty input")
        if raw[0] >> 5 == 4:
            return [raw]
        text = raw.decode("latin-1")
    else:
        text = data
    blocks: list[bytes] = []
    for match in _PEM_BLOCK.finditer(text):
        label, body, end_label = match.group(1), match.group(2), match.group(3)
        if label != end_label:
            raise MessageBodyError(f"PEM: BEGIN {label} ends with END {end_label}")
        if label != PEM_LABEL:
            continue
        try:
            decoded = base64.b64decode("".join(body.split()), validate=True)
        except (binascii.Error, ValueError):
            raise MessageBodyError("PEM: invalid base64 in OWNERSHIP VOUCHER block") from None
        if not decoded:
            raise MessageBodyError("PEM: empty OWNERSHIP VOUCHER block")
        blocks.append(decoded)
    if text.count(f"-----BEGIN {PEM_LABEL}-----") != len(blocks):
        raise MessageBodyError("PEM: unterminated OWNERSHIP VOUCHER block")
    if not blocks:
        raise MessageBodyError("not a voucher: neither CBOR nor PEM with an OWNERSHIP VOUCHER block")
    return blocks


def to_pem(data: bytes) -> str:
    """One PEM block of raw voucher CBOR (64-character base64 lines)."""
    text = base64.b64encode(data).decode("ascii")
    body = "\n".join(text[i : i + 64] for i in range(0, len(text), 64))
    return f"-----BEGIN {PEM_LABEL}-----\n{body}\n-----END {PEM_LABEL}-----\n"


def vouchers_to_pem(vouchers: Sequence[OwnershipVoucher]) -> str:
    """Several vouchers as consecutive PEM blocks."""
    return "".join(v.to_pem() for v in vouchers)
