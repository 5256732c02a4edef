"""Device side of the bootc module: report the status, reassemble and validate items."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from fdo import codec
from fdo.codec import CborValue
from fdo.errors import InvalidMessageError, MessageBodyError
from fdo.serviceinfo.bootc.model import (
    BOOTC,
    MAX_ITEM_SIZE,
    Assignment,
    BootcStatus,
    InvalidAssignmentError,
    Item,
    ItemBuilder,
    ItemKind,
    ItemResult,
    parse_item_kind,
)
from fdo.serviceinfo.device import DeviceModule
from fdo.types import digest as sha_digest

# ---------------------------------------------------------------------------- device


StatusProvider = Callable[[], BootcStatus]
"""Reports this host's bootc status (``device.apply.read_bootc_status`` runs bootc)."""


class BootcDevice(DeviceModule):
    """Device side: report the status, reassemble and validate items, build the assignment.

    :attr:`assignment` is set once the owner's ``end`` arrives; it holds the accepted
    items (a rejected one is answered with an error result and left out).
    """

    name = BOOTC

    def __init__(self, status: StatusProvider, *, max_size: int = MAX_ITEM_SIZE) -> None:
        self._status = status
        self._max_size = max_size
        self.assignment: Assignment | None = None
        self.results: list[ItemResult] = []
        self._reset()

    def _reset(self) -> None:
        self._builder = ItemBuilder()
        self._current: tuple[int, ItemKind | None, Mapping[CborValue, CborValue], int, bytes] | None = None
        self._buf = bytearray()
        self._received = 0
        self._error: str | None = None

    def activate(self, active: bool) -> None:
        self._reset()
        self.results = []
        if active:
            self.assignment = None

    def handle(self, message: str, value: CborValue) -> list[tuple[str, CborValue]]:
        if message == "get-status":
            return [("status", self._status().to_cbor_obj())]
        if message == "item":
            return self._on_item(value)
        if message == "data":
            return self._on_data(codec.as_bytes(value, f"{BOOTC}:data"))
        if message == "end":
            return self._on_end(codec.as_uint(value, f"{BOOTC}:end"))
        return []  # unknown messages are ignored

    def _on_item(self, value: CborValue) -> list[tuple[str, CborValue]]:
        seq, kind, meta, length, sha = codec.as_list(value, f"{BOOTC}:item", 5)
        n = codec.as_uint(seq, "item seq")
        digest = codec.as_bytes(sha, "item sha-384", 48)
        size = codec.as_uint(length, "item length")
        self._buf = bytearray()
        self._received = 0
        self._error = None
        item_kind: ItemKind | None = None
        try:
            item_kind = parse_item_kind(kind)
        except InvalidAssignmentError as exc:
            self._error = exc.message
        if size > self._max_size:
            self._error = f"item of {size} bytes exceeds the {self._max_size}-byte limit"
        self._current = (n, item_kind, codec.as_map(meta, "item meta"), size, digest)
        return self._finish() if size == 0 else []

    def _on_data(self, block: bytes) -> list[tuple[str, CborValue]]:
        if self._current is None:
            raise InvalidMessageError(f"{BOOTC}: data without an item")
        self._received += len(block)
        if self._error is None:
            self._buf += block
        if self._received >= self._current[3]:
            return self._finish()
        return []

    def _finish(self) -> list[tuple[str, CborValue]]:
        assert self._current is not None  # noqa: S101 - callers check
        seq, kind, meta, size, digest = self._current
        content = bytes(self._buf)
        error = self._error
        if error is None and (self._received != size or sha_digest("sha384", content) != digest):
            error = "length or sha-384 mismatch"
        label = kind.value if kind is not None else "unknown"
        if error is None and kind is not None:
            label = Item(kind, {str(k): v for k, v in meta.items()}, b"").label
            try:
                self._builder.add(kind, meta, content)
            except (InvalidAssignmentError, MessageBodyError) as exc:
                error = exc.message
        self._current = None
        self._buf = bytearray()
        self.results.append(ItemResult(seq, label, error is None, error))
        return [("result", [seq, error is None, error])]

    def _on_end(self, count: int) -> list[tuple[str, CborValue]]:
        error: str | None = None
        if self._current is not None:
            error = "the last item was incomplete"
        elif count != len(self.results):
            error = f"owner sent {count} items, device received {len(self.results)}"
        elif any(not r.ok for r in self.results):
            error = "some items were rejected"
        try:
            self.assignment = self._builder.build()
        except InvalidAssignmentError as exc:  # pragma: no cover - items are checked one by one
            error = exc.message
        return [("end", [error is None, error])]
