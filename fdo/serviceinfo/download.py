"""fdo.download, both sides (FIDO FSIM repository ``fdo.download.md``, reference §7.5).

Owner → device: ``name`` tstr, ``length`` uint (absent: streaming mode, ended by an
empty ``data``), ``sha-384`` bstr[48], ``data`` bstr blocks of at most 1014 bytes (a
zero-length file still gets one empty block). Device → owner: ``done`` int, the number
of bytes written, or -1 when the length or hash check or the write failed. The owner
always sends length and hash, like go-fdo (``fsim/download_owner.go``); the device
reads both modes. As in go, the owner fails TO2 if ``done`` is neither -1 nor the
length, and (with ``must_succeed``) if it is -1.

The device keeps the file in memory until it is complete and verified, then hands it
to the injected ``write(name, data)``; ``max_size`` bounds that memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Self

from fdo import codec
from fdo.codec import CborValue
from fdo.errors import FdoUsageError, InvalidMessageError
from fdo.serviceinfo.device import DeviceModule
from fdo.serviceinfo.devmod import Devmod
from fdo.serviceinfo.kv import ServiceInfoKV, max_bstr_data, service_info_size
from fdo.serviceinfo.owner import OwnerModule
from fdo.types import digest

DOWNLOAD = "fdo.download"
#: Largest data block the FSIM text allows.
CHUNK_SIZE = 1014
#: Default cap on a file held by the device.
MAX_FILE_SIZE = 64 * 1024 * 1024

Writer = Callable[[str, bytes], None]
"""Stores a verified file under the owner's ``name``; raise :class:`OSError` on failure."""


class DownloadOwner(OwnerModule):
    """Owner side: send ``data`` to the device as ``filename``; :attr:`result` is its ``done``."""

    name = DOWNLOAD

    def __init__(
        self, filename: str, data: bytes, *, chunk_size: int = CHUNK_SIZE, must_succeed: bool = True
    ) -> None:
        if chunk_size < 1:
            raise FdoUsageError("chunk_size must be positive")
        self.filename = filename
        self.data = bytes(data)
        self.chunk_size = chunk_size
        self.must_succeed = must_succeed
        self.result: int | None = None
        self.done = False
        self._started = False
        self._offset = 0
        self._mtu = 0
        self._chunk = chunk_size

    @property
    def ok(self) -> bool:
        """True once the device confirmed the whole file."""
        return self.result == len(self.data)

    def start(self, devmod: Devmod, mtu: int) -> None:
        self._mtu = mtu
        fit = max_bstr_data(f"{DOWNLOAD}:data", mtu)
        self._chunk = max(1, min(self.chunk_size, fit))

    def produce(self) -> list[tuple[str, CborValue]]:
        if not self._started:
            self._started = True
            header: list[tuple[str, CborValue]] = [
                ("name", self.filename),
                ("length", len(self.data)),
                ("sha-384", digest("sha384", self.data)),
            ]
            if not self.data:
                header.append(("data", b""))
            return header
        out: list[tuple[str, CborValue]] = []
        kvs: list[ServiceInfoKV] = []
        while self._offset < len(self.data):
            block = self.data[self._offset : self._offset + self._chunk]
            kvs.append(ServiceInfoKV.of(DOWNLOAD, "data", block))
            if len(kvs) > 1 and service_info_size(kvs) > self._mtu:
                break  # this message is full; the block goes out next time
            out.append(("data", block))
            self._offset += len(block)
        return out

    def handle(self, message: str, value: CborValue) -> None:
        if self.done or message != "done":
            return
        self.result = codec.as_int(value, f"{DOWNLOAD}:done")
        self.done = True
        if self.result not in (-1, len(self.data)):
            raise InvalidMessageError(
                f"{DOWNLOAD}: device reports {self.result} bytes, expected {len(self.data)}"
            )
        if self.result == -1 and self.must_succeed:
            raise InvalidMessageError(f"{DOWNLOAD}: device failed to store {self.filename[:128]!r}")

    def to_state(self) -> CborValue:
        return [
            self.filename,
            self.data,
            self.chunk_size,
            self.must_succeed,
            self._started,
            self._offset,
            self._mtu,
            self._chunk,
            self.result,
        ]

    @classmethod
    def from_state(cls, state: CborValue) -> Self:
        items = codec.as_list(state, "DownloadOwner", 9)
        self = cls(
            codec.as_str(items[0], "filename"),
            codec.as_bytes(items[1], "data"),
            chunk_size=codec.as_int(items[2], "chunk_size", 1),
            must_succeed=codec.as_bool(items[3], "must_succeed"),
        )
        self._started = codec.as_bool(items[4], "started")
        self._offset = codec.as_int(items[5], "offset", 0, len(self.data))
        self._mtu = codec.as_uint(items[6], "mtu")
        self._chunk = codec.as_int(items[7], "chunk", 1)
        if items[8] is not None:
            self.result = codec.as_int(items[8], "result")
            self.done = True
        return self


class DownloadDevice(DeviceModule):
    """Device side: collect, verify, then ``write(name, data)``; reply ``done``."""

    name = DOWNLOAD

    def __init__(self, write: Writer, *, max_size: int = MAX_FILE_SIZE) -> None:
        self._write = write
        self._max_size = max_size
        self._reset()

    def _reset(self) -> None:
        self._filename: str | None = None
        self._length: int | None = None
        self._sha384: bytes | None = None
        self._buf = bytearray()
        self._received = 0
        self._failed = False

    def activate(self, active: bool) -> None:
        self._reset()

    def handle(self, message: str, value: CborValue) -> list[tuple[str, CborValue]]:
        what = f"{DOWNLOAD}:{message}"
        if message == "name":
            self._filename = codec.as_str(value, what)
        elif message == "length":
            self._length = codec.as_uint(value, what)
            self._failed |= self._length > self._max_size
        elif message == "sha-384":
            self._sha384 = codec.as_bytes(value, what, 48)
        elif message == "data":
            block = codec.as_bytes(value, what)
            self._received += len(block)
            if len(self._buf) + len(block) > self._max_size:
                self._failed = True
            if self._failed:
                self._buf.clear()  # keep counting, but not storing
            else:
                self._buf += block
            if (self._length is None and not block) or (
                self._length is not None and self._received >= self._length
            ):
                return self._finish()
        # unknown messages are ignored
        return []

    def _finish(self) -> list[tuple[str, CborValue]]:
        filename, data = self._filename, bytes(self._buf)
        ok = (
            not self._failed
            and (self._length is None or self._received == self._length)
            and (self._sha384 is None or digest("sha384", data) == self._sha384)
        )
        received = self._received
        self._reset()
        if not filename:
            raise InvalidMessageError(f"{DOWNLOAD}: data complete but no name was sent")
        if ok:
            try:
                self._write(filename, data)
            except OSError:
                ok = False
        return [("done", received if ok else -1)]
