"""fdo.upload, both sides (FIDO FSIM repository ``fdo.upload.md``, reference §7.5).

Owner → device: ``need-sha`` bool, ``name`` tstr. Device → owner: ``length`` uint
(before any data), ``data`` bstr blocks of at most 1014 bytes (at least one, empty for
an empty file), then ``sha-384`` bstr[48] if it was asked for. ``need-sha`` stays in
force for later files (FSIM text; go resets it after each file, and this owner sends it
before every name anyway). A file the device cannot read fails TO2, as in go-fdo
(``fsim/upload_device.go``); a length or hash mismatch fails TO2 on the owner, as in
go's ``fsim/upload_owner.go``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Self

from fdo import codec
from fdo.codec import CborValue
from fdo.errors import HashMismatchError, InternalError, InvalidMessageError
from fdo.serviceinfo.device import DeviceModule
from fdo.serviceinfo.owner import OwnerModule
from fdo.types import digest

UPLOAD = "fdo.upload"
#: Largest data block the FSIM text allows.
BLOCK_SIZE = 1014
#: Default cap on a file the owner accepts.
MAX_FILE_SIZE = 64 * 1024 * 1024

Reader = Callable[[str], bytes | None]
"""Returns the contents of the named file, or None if it cannot be read."""


class UploadOwner(OwnerModule):
    """Owner side: fetch ``filename`` from the device; :attr:`result` holds its contents."""

    name = UPLOAD

    def __init__(self, filename: str, *, need_sha: bool = True, max_size: int = MAX_FILE_SIZE) -> None:
        self.filename = filename
        self.need_sha = need_sha
        self.max_size = max_size
        self.result: bytes | None = None
        self.done = False
        self._sent = False
        self._length: int | None = None
        self._sha384: bytes | None = None
        self._buf = bytearray()

    def produce(self) -> list[tuple[str, CborValue]]:
        if self._sent:
            return []
        self._sent = True
        return [("need-sha", self.need_sha), ("name", self.filename)]

    def handle(self, message: str, value: CborValue) -> None:
        if self.done:
            return
        what = f"{UPLOAD}:{message}"
        if message == "length":
            self._length = codec.as_uint(value, what)
            if self._length > self.max_size:
                raise InvalidMessageError(f"{UPLOAD}: file of {self._length} bytes is too large")
        elif message == "data":
            block = codec.as_bytes(value, what)
            limit = self.max_size if self._length is None else self._length
            if len(self._buf) + len(block) > limit:
                raise InvalidMessageError(f"{UPLOAD}: more data than announced")
            self._buf += block
        elif message == "sha-384":
            self._sha384 = codec.as_bytes(value, what, 48)
        else:
            return  # ignored, for forward compatibility
        self._check()

    def _check(self) -> None:
        if self._length is None or len(self._buf) < self._length:
            return
        if self.need_sha and self._sha384 is None:
            return
        if self._sha384 is not None and digest("sha384", self._buf) != self._sha384:
            raise HashMismatchError(f"{UPLOAD}: SHA-384 of {self.filename[:128]!r} does not match")
        self.result = bytes(self._buf)
        self.done = True

    def to_state(self) -> CborValue:
        return [
            self.filename,
            self.need_sha,
            self.max_size,
            self._sent,
            self._length,
            self._sha384,
            bytes(self._buf),
            self.done,
        ]

    @classmethod
    def from_state(cls, state: CborValue) -> Self:
        items = codec.as_list(state, "UploadOwner", 8)
        self = cls(
            codec.as_str(items[0], "filename"),
            need_sha=codec.as_bool(items[1], "need_sha"),
            max_size=codec.as_uint(items[2], "max_size"),
        )
        self._sent = codec.as_bool(items[3], "sent")
        self._length = codec.optional(items[4], lambda v: codec.as_uint(v, "length"))
        self._sha384 = codec.optional(items[5], lambda v: codec.as_bytes(v, "sha-384", 48))
        self._buf = bytearray(codec.as_bytes(items[6], "data"))
        if codec.as_bool(items[7], "done"):
            self._check()
            if not self.done:
                raise InvalidMessageError("UploadOwner state: done but incomplete")
        return self


class UploadDevice(DeviceModule):
    """Device side: answer ``name`` with the file read through the injected ``read``."""

    name = UPLOAD

    def __init__(self, read: Reader, *, block_size: int = BLOCK_SIZE) -> None:
        self._read = read
        self._block_size = block_size
        self._need_sha = False

    def activate(self, active: bool) -> None:
        self._need_sha = False

    def handle(self, message: str, value: CborValue) -> list[tuple[str, CborValue]]:
        what = f"{UPLOAD}:{message}"
        if message == "need-sha":
            self._need_sha = codec.as_bool(value, what)
        elif message == "name":
            return self._upload(codec.as_str(value, what))
        return []

    def _upload(self, filename: str) -> list[tuple[str, CborValue]]:
        try:
            data = self._read(filename)
        except OSError:
            data = None
        if data is None:
            raise InternalError(f"{UPLOAD}: cannot read the requested file")
        size = self._block_size
        replies: list[tuple[str, CborValue]] = [("length", len(data))]
        replies += [("data", data[i : i + size]) for i in range(0, max(len(data), 1), size)]
        if self._need_sha:
            replies.append(("sha-384", digest("sha384", data)))
        return replies
