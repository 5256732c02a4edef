"""Find where CBOR items end in a byte stream that arrives in pieces.

go-fdo splits large ServiceInfo values into fragments (reference §7.2), and a run of
same-key fragments may carry several items back to back. :class:`Framer` walks CBOR
heads only, keeps its position between calls and reports the end offset of every
top-level item, so a value spread over many fragments is scanned once in total rather
than once per fragment. It does not decode: complete items go to
:func:`fdo.codec.decode`, which does the full checks. (This framing would sit naturally
in :mod:`fdo.codec` as a resumable form of ``item_length``.)
"""

from __future__ import annotations

from fdo.codec import MAX_DEPTH
from fdo.errors import MessageBodyError

_INDEFINITE = -1


class Framer:
    """Resumable scanner of CBOR item boundaries.

    ``limit`` bounds any declared string length or container count, so a head that
    announces more than can ever be accepted fails at once.
    """

    __slots__ = ("_stack", "_skip", "_head", "_limit")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        # Items still expected in each open container (or _INDEFINITE until a break).
        self._stack: list[int] = []
        # String payload bytes still to pass over.
        self._skip = 0
        # Bytes of a head that was cut between two pieces.
        self._head = bytearray()

    @property
    def idle(self) -> bool:
        """True between items (nothing partially read)."""
        return not self._stack and not self._skip and not self._head

    def feed(self, data: bytes) -> list[int]:
        """Scan ``data``; return the offsets in it just past each top-level item that ends."""
        ends: list[int] = []
        pos, size = 0, len(data)
        while pos < size:
            if self._skip:
                step = min(self._skip, size - pos)
                self._skip -= step
                pos += step
                if not self._skip and self._close_item():
                    ends.append(pos)
                continue
            first = self._head[0] if self._head else data[pos]
            info = first & 0x1F
            need = 1 + (1 << (info - 24)) if 24 <= info <= 27 else 1
            take = min(need - len(self._head), size - pos)
            self._head += data[pos : pos + take]
            pos += take
            if len(self._head) < need:
                break
            head = bytes(self._head)
            self._head.clear()
            if self._on_head(head):
                ends.append(pos)
        return ends

    def _on_head(self, head: bytes) -> bool:
        major, info = head[0] >> 5, head[0] & 0x1F
        if 28 <= info <= 30:
            raise MessageBodyError("malformed CBOR head")
        if info == 31:
            if major == 7:
                if not self._stack or self._stack[-1] != _INDEFINITE:
                    raise MessageBodyError("unexpected CBOR break")
                self._stack.pop()
                return self._close_item()
            if major in (2, 3, 4, 5):
                self._push(_INDEFINITE)
                return False
            raise MessageBodyError("malformed CBOR head")
        arg = info if info < 24 else int.from_bytes(head[1:], "big")
        if major in (0, 1, 7):
            return self._close_item()
        if major in (2, 3):
            if arg > self._limit:
                raise MessageBodyError("CBOR string longer than allowed")
            if arg == 0:
                return self._close_item()
            self._skip = arg
            return False
        if major in (4, 5):
            count = arg * 2 if major == 5 else arg
            if count > self._limit:
                raise MessageBodyError("CBOR container larger than allowed")
            if count == 0:
                return self._close_item()
            self._push(count)
            return False
        self._push(1)  # a tag wraps exactly one item
        return False

    def _push(self, count: int) -> None:
        if len(self._stack) >= MAX_DEPTH:
            raise MessageBodyError("CBOR nesting too deep")
        self._stack.append(count)

    def _close_item(self) -> bool:
        """Count one finished item; return True if it finished a top-level item."""
        while self._stack:
            top = self._stack[-1]
            if top == _INDEFINITE:
                return False
            if top > 1:
                self._stack[-1] = top - 1
                return False
            self._stack.pop()  # that container is now a finished item of its parent
        return True
