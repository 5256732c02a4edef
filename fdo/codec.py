"""CBOR for FDO: the one place where bytes become objects and objects become bytes.

Encoding is RFC 8949 "core deterministic": shortest integer and length heads, definite
lengths, map keys sorted bytewise on their encoded form. That is what go-fdo's encoder
produces (``cbor/cbor.go``, ``bytewiseLexicalSort``) and what it re-encodes before it
verifies a signature or MAC, so producing anything else would break interop
(``fdo-protocol.md`` §0). cbor2's ``canonical=True`` sorts length-first (RFC 7049), which
differs for maps that mix small negative and three-byte keys, so encoding is done here.

Decoding uses cbor2 (its C decoder) and is lenient, as a network reader must be.
Anything that does not decode raises :class:`~fdo.errors.MessageBodyError`, never a
bare cbor2 or ``ValueError``. Where bytes are later hashed or signed and are not
wrapped in a bstr (voucher entries), :func:`split_array` returns each element's raw
bytes so they can be re-used verbatim.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias, TypeVar

import cbor2

from fdo.errors import MessageBodyError

CborValue: TypeAlias = Any
"""A decoded CBOR item: int, bytes, str, bool, None, list/tuple, Mapping or :class:`Tag`."""

T = TypeVar("T")

#: Containers nested deeper than this are refused (FDO structures nest < 12 deep).
MAX_DEPTH = 64


@dataclass(frozen=True, slots=True)
class Tag:
    """A tagged CBOR item (major type 6)."""

    tag: int
    value: CborValue


@dataclass(frozen=True, slots=True)
class Raw:
    """Bytes that are already one encoded CBOR item; :func:`encode` copies them verbatim.

    This is how received structures (voucher entries, headers) are re-emitted without
    re-encoding them.
    """

    data: bytes


# --------------------------------------------------------------------------- encoding


_pack_short = struct.Struct(">BH").pack
_pack_word = struct.Struct(">BI").pack
_pack_long = struct.Struct(">BQ").pack
#: The one-byte heads of each major type (values 0 to 23) and its two-byte ones (24 to
#: 255), made once: most heads of an FDO structure are one of these.
_HEADS = tuple(tuple(bytes([(major << 5) | value]) for value in range(24)) for major in range(8))
_HEADS_1 = tuple(tuple(bytes([(major << 5) | 24, value]) for value in range(256)) for major in range(8))
_UINT_HEADS = _HEADS[0]
_BSTR_HEADS = _HEADS[2]
_ARRAY_HEADS = _HEADS[4]


def _head(major: int, value: int) -> bytes:
    if value < 24:
        return _HEADS[major][value]
    if value < 0x100:
        return _HEADS_1[major][value]
    if value < 0x10000:
        return _pack_short((major << 5) | 25, value)
    if value < 0x100000000:
        return _pack_word((major << 5) | 26, value)
    if value < 0x10000000000000000:
        return _pack_long((major << 5) | 27, value)
    raise ValueError("integer does not fit in 64 bits")


def _encode_into(obj: CborValue, out: list[bytes]) -> None:
    # Fast paths on the exact type (the common cases: byte strings, small integers and
    # arrays of them, which an array's loop writes without a call per item); everything
    # else below. Encoding is a good part of a server's CPU per message (issue 15).
    kind = type(obj)
    if kind is bytes:
        n = len(obj)
        out.append(_BSTR_HEADS[n] if n < 24 else _head(2, n))
        out.append(obj)
        return
    if kind is int:
        out.append(_head(0, obj) if obj >= 0 else _head(1, -1 - obj))
        return
    if kind is list or kind is tuple:
        n = len(obj)
        out.append(_ARRAY_HEADS[n] if n < 24 else _head(4, n))
        for item in obj:
            item_kind = type(item)
            if item_kind is bytes:
                n = len(item)
                out.append(_BSTR_HEADS[n] if n < 24 else _head(2, n))
                out.append(item)
            elif item_kind is int and 0 <= item < 24:
                out.append(_UINT_HEADS[item])
            else:
                _encode_into(item, out)
        return
    if kind is str:
        data = obj.encode("utf-8")
        out.append(_head(3, len(data)))
        out.append(data)
        return
    # bool before int: bool is an int subclass.
    if obj is None:
        out.append(b"\xf6")
    elif obj is True:
        out.append(b"\xf5")
    elif obj is False:
        out.append(b"\xf4")
    elif kind is Raw:
        out.append(obj.data)
    elif kind is dict:
        _encode_map(obj, out)
    elif kind is Tag:
        out.append(_head(6, obj.tag))
        _encode_into(obj.value, out)
    elif isinstance(obj, int):
        if obj >= 0:
            out.append(_head(0, int(obj)))
        else:
            out.append(_head(1, -1 - int(obj)))
    elif isinstance(obj, bytes | bytearray | memoryview):
        data = bytes(obj)
        out.append(_head(2, len(data)))
        out.append(data)
    elif isinstance(obj, str):
        data = obj.encode("utf-8")
        out.append(_head(3, len(data)))
        out.append(data)
    elif isinstance(obj, list | tuple):
        out.append(_head(4, len(obj)))
        for item in obj:
            _encode_into(item, out)
    elif isinstance(obj, Mapping):
        _encode_map(obj, out)
    elif isinstance(obj, Raw):
        out.append(obj.data)
    elif isinstance(obj, Tag):
        out.append(_head(6, obj.tag))
        _encode_into(obj.value, out)
    elif isinstance(obj, cbor2.CBORTag):
        out.append(_head(6, obj.tag))
        _encode_into(obj.value, out)
    else:
        raise TypeError(f"cannot encode {type(obj).__name__} as FDO CBOR")


def _encode_map(obj: Mapping[CborValue, CborValue], out: list[bytes]) -> None:
    """A map, its keys sorted bytewise on their encoded form."""
    pairs = sorted((encode(k), v) for k, v in obj.items())
    out.append(_head(5, len(pairs)))
    for key, value in pairs:
        out.append(key)
        _encode_into(value, out)


def encode(obj: CborValue) -> bytes:
    """Encode ``obj`` deterministically (RFC 8949 §4.2.1, go-fdo's form)."""
    out: list[bytes] = []
    _encode_into(obj, out)
    return b"".join(out)


def encode_state(obj: CborValue) -> bytes:
    """Encode ``obj`` (plain CBOR types only) for a machine's saved state.

    Never for the wire: the output is not in deterministic form (map keys keep their
    insertion order), which :func:`decode` reads all the same; in exchange it is
    cbor2's C encoder, several times faster than :func:`encode` on a machine's state.
    """
    return cbor2.dumps(obj)


def bstr_head(length: int) -> bytes:
    """The CBOR head of a byte string of ``length`` bytes."""
    return _head(2, length)


def head_length(value: int) -> int:
    """Length in bytes of the CBOR head carrying ``value`` (the same for every major
    type): ``len(bstr_head(value))`` without making the head."""
    if value < 24:
        return 1
    if value < 0x100:
        return 2
    if value < 0x10000:
        return 3
    if value < 0x100000000:
        return 5
    if value < 0x10000000000000000:
        return 9
    raise ValueError("integer does not fit in 64 bits")


# --------------------------------------------------------------------------- decoding


def _tag_hook(*args: Any) -> Tag:
    # cbor2 has passed (decoder, tag) and (tag, immutable) across versions.
    for arg in args:
        if isinstance(arg, cbor2.CBORTag):
            return Tag(arg.tag, arg.value)
    raise MessageBodyError("malformed CBOR tag")


def _item_end(data: bytes, pos: int, depth: int) -> int:
    """Return the offset just past the CBOR item starting at ``pos``."""
    if depth > MAX_DEPTH:
        raise MessageBodyError("CBOR nesting too deep")
    if pos >= len(data):
        raise MessageBodyError("truncated CBOR")
    initial = data[pos]
    major, info = initial >> 5, initial & 0x1F
    pos += 1
    if info < 24:
        arg = info
    elif info <= 27:
        size = 1 << (info - 24)
        if pos + size > len(data):
            raise MessageBodyError("truncated CBOR")
        arg = int.from_bytes(data[pos : pos + size], "big")
        pos += size
    elif info == 31 and major in (2, 3, 4, 5):
        # Indefinite length: items until a break (0xff).
        while True:
            if pos >= len(data):
                raise MessageBodyError("truncated CBOR")
            if data[pos] == 0xFF:
                return pos + 1
            pos = _item_end(data, pos, depth + 1)
            if major == 5:
                pos = _item_end(data, pos, depth + 1)
    else:
        raise MessageBodyError("malformed CBOR head")
    if major in (0, 1, 7):
        return pos
    if major in (2, 3):
        if pos + arg > len(data):
            raise MessageBodyError("truncated CBOR")
        return pos + arg
    if major == 6:
        return _item_end(data, pos, depth + 1)
    count = arg * (2 if major == 5 else 1)
    if count > len(data) - pos:
        raise MessageBodyError("CBOR container longer than its data")
    for _ in range(count):
        pos = _item_end(data, pos, depth + 1)
    return pos


def item_length(data: bytes, offset: int = 0) -> int:
    """Length in bytes of the CBOR item at ``offset`` (raises MessageBodyError)."""
    return _item_end(data, offset, 0) - offset


def decode(data: bytes | bytearray | memoryview) -> CborValue:
    """Decode exactly one CBOR item; trailing bytes or bad CBOR raise MessageBodyError."""
    # cbor2 itself refuses what a peer can abuse (a length past the data is a premature
    # end before anything is allocated for it, nesting past MAX_DEPTH, reserved heads);
    # the position it stopped at tells trailing bytes apart. (A scan of the item in
    # Python first, as :func:`item_length` does, cost five times the decoding.)
    raw = bytes(data)
    stream = io.BytesIO(raw)
    try:
        value: CborValue = cbor2.CBORDecoder(stream, tag_hook=_tag_hook, max_depth=MAX_DEPTH).decode()
    except MessageBodyError:
        raise
    except Exception as exc:  # cbor2 raises many types; all are the peer's fault here
        raise MessageBodyError(f"invalid CBOR: {type(exc).__name__}") from None
    if stream.tell() != len(raw):
        raise MessageBodyError("trailing bytes after CBOR item")
    return value


def split_array(data: bytes, what: str = "array") -> list[bytes]:
    """Return the raw encoded bytes of each element of the definite array ``data``."""
    if not data:
        raise MessageBodyError(f"{what}: empty input")
    initial = data[0]
    if initial >> 5 != 4 or (initial & 0x1F) > 27:
        raise MessageBodyError(f"{what}: expected a definite-length array")
    info = initial & 0x1F
    pos = 1
    if info < 24:
        count = info
    else:
        size = 1 << (info - 24)
        count = int.from_bytes(data[1 : 1 + size], "big")
        pos += size
    if count > len(data):
        raise MessageBodyError(f"{what}: array longer than its data")
    items = []
    for _ in range(count):
        end = _item_end(data, pos, 1)
        items.append(data[pos:end])
        pos = end
    if pos != len(data):
        raise MessageBodyError(f"{what}: trailing bytes after array")
    return items


# --------------------------------------------------------------------------- shape checks


def as_list(
    obj: CborValue,
    what: str,
    length: int | None = None,
    *,
    min_len: int | None = None,
    max_len: int | None = None,
) -> Sequence[CborValue]:
    """Check that ``obj`` is an array (of ``length`` items or within bounds)."""
    if not isinstance(obj, list | tuple):
        raise MessageBodyError(f"{what}: expected an array, got {_kind(obj)}")
    if length is not None and len(obj) != length:
        raise MessageBodyError(f"{what}: expected {length} elements, got {len(obj)}")
    if min_len is not None and len(obj) < min_len:
        raise MessageBodyError(f"{what}: expected at least {min_len} elements, got {len(obj)}")
    if max_len is not None and len(obj) > max_len:
        raise MessageBodyError(f"{what}: expected at most {max_len} elements, got {len(obj)}")
    return obj


def as_list_or_null(obj: CborValue, what: str, *, max_len: int | None = None) -> Sequence[CborValue]:
    """An array that may be empty, where ``null`` reads as ``[]``.

    Go implementations built on fxamacker/cbor (its default ``NilContainerAsNull``)
    write a nil slice as ``null`` (0xf6); go-fdo's own encoder writes ``[]``. Use this
    only for fields whose CDDL allows an empty list (``[* x]``); ``[+ x]`` fields stay
    with :func:`as_list`. What we send is always ``[]``.
    """
    if obj is None:
        return ()
    return as_list(obj, what, max_len=max_len)


def as_map(obj: CborValue, what: str) -> Mapping[CborValue, CborValue]:
    """Check that ``obj`` is a map."""
    if not isinstance(obj, Mapping):
        raise MessageBodyError(f"{what}: expected a map, got {_kind(obj)}")
    return obj


def as_bytes(obj: CborValue, what: str, size: int | None = None, *, max_size: int | None = None) -> bytes:
    """Check that ``obj`` is a byte string (of exactly ``size`` bytes if given)."""
    if not isinstance(obj, bytes):
        raise MessageBodyError(f"{what}: expected a byte string, got {_kind(obj)}")
    if size is not None and len(obj) != size:
        raise MessageBodyError(f"{what}: expected {size} bytes, got {len(obj)}")
    if max_size is not None and len(obj) > max_size:
        raise MessageBodyError(f"{what}: longer than {max_size} bytes")
    return obj


def as_str(obj: CborValue, what: str, *, max_size: int | None = None) -> str:
    """Check that ``obj`` is a text string."""
    if not isinstance(obj, str):
        raise MessageBodyError(f"{what}: expected a text string, got {_kind(obj)}")
    if max_size is not None and len(obj) > max_size:
        raise MessageBodyError(f"{what}: longer than {max_size} characters")
    return obj


def as_int(obj: CborValue, what: str, lo: int | None = None, hi: int | None = None) -> int:
    """Check that ``obj`` is an integer (not a bool) within ``[lo, hi]``."""
    if not isinstance(obj, int) or isinstance(obj, bool):
        raise MessageBodyError(f"{what}: expected an integer, got {_kind(obj)}")
    if (lo is not None and obj < lo) or (hi is not None and obj > hi):
        raise MessageBodyError(f"{what}: {obj} out of range")
    return obj


def as_uint(obj: CborValue, what: str, bits: int = 64) -> int:
    """Check that ``obj`` is an unsigned integer of at most ``bits`` bits."""
    return as_int(obj, what, 0, (1 << bits) - 1)


def as_bool(obj: CborValue, what: str) -> bool:
    """Check that ``obj`` is a boolean."""
    if not isinstance(obj, bool):
        raise MessageBodyError(f"{what}: expected a boolean, got {_kind(obj)}")
    return obj


def as_tag(obj: CborValue, what: str, tag: int, *, optional: bool = False) -> CborValue:
    """Unwrap tag ``tag``; with ``optional``, an untagged item is accepted as is."""
    if isinstance(obj, Tag):
        if obj.tag != tag:
            raise MessageBodyError(f"{what}: expected tag {tag}, got tag {obj.tag}")
        return obj.value
    if optional:
        return obj
    raise MessageBodyError(f"{what}: expected tag {tag}, got {_kind(obj)}")


def optional(obj: CborValue, parse: Callable[[CborValue], T]) -> T | None:
    """``None`` stays ``None``; anything else goes through ``parse``."""
    return None if obj is None else parse(obj)


def as_timestamp(obj: CborValue, what: str) -> int | None:
    """Read an ErrorMessage timestamp leniently: int, null, tag 0 or tag 1 (§1.4)."""
    if obj is None:
        return None
    if isinstance(obj, datetime):
        return int(obj.timestamp())
    value = obj.value if isinstance(obj, Tag) and obj.tag == 1 else obj
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return int(value)
        except (ValueError, OverflowError):  # NaN or infinity
            raise MessageBodyError(f"{what}: not a finite timestamp") from None
    raise MessageBodyError(f"{what}: expected a timestamp, got {_kind(obj)}")


def _kind(obj: CborValue) -> str:
    if isinstance(obj, Tag):
        return f"tag {obj.tag}"
    return type(obj).__name__
