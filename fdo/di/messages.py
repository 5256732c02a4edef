"""DI messages 10-13 (spec §5.2, reference ``fdo-protocol.md`` §3.2) and DeviceMfgInfo.

```
10 DI.AppStart       = [ DeviceMfgInfo: bstr .cbor any ]
11 DI.SetCredentials = [ bstr .cbor OVHeader ]
12 DI.SetHMAC        = [ HMac ]
13 DI.Done           = [ ]
```

Lenient forms read (never written): a null DeviceMfgInfo (go's client without info),
rs's bare OVHeader in DI.SetCredentials, and the DeviceMfgInfo shapes of java/C
(longer arrays) and rs (a single serial-number string).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

from fdo import codec
from fdo.codec import CborValue
from fdo.errors import FdoUsageError, MessageBodyError
from fdo.messages import MessageBase, empty_array
from fdo.types import Hash, MsgType


@dataclass(frozen=True, slots=True, kw_only=True)
class DIAppStart(MessageBase):
    """DI.AppStart (type 10): ``[DeviceMfgInfo: bstr .cbor any]``.

    ``mfg_info`` is the CBOR inside the bstr, kept as received (see :class:`MfgInfo`
    for the usual content); None when the device sent null (go without info).
    """

    MSG_TYPE: ClassVar[MsgType] = MsgType.DI_APP_START

    mfg_info: bytes | None

    def to_cbor_obj(self) -> list[CborValue]:
        return [self.mfg_info]

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        items = codec.as_list(obj, "DI.AppStart", 1)
        if items[0] is None:
            return cls(mfg_info=None)
        info = codec.as_bytes(items[0], "DI.AppStart.DeviceMfgInfo")
        # It must hold exactly one well-formed CBOR item (item_length raises otherwise).
        if codec.item_length(info) != len(info):
            raise MessageBodyError("DI.AppStart.DeviceMfgInfo: trailing bytes after CBOR item")
        return cls(mfg_info=info)


@dataclass(frozen=True, slots=True, kw_only=True)
class MfgInfo:
    """DeviceMfgInfo, the content of DI.AppStart (not standardised, reference §3.2).

    ```
    go/astarte: [ pkType, pkEnc, serialNo: tstr, deviceInfo: tstr, CSR: bstr (DER PKCS#10) ]
    java/C:     the same, then ?onDieChain, ?testSig, ?maroePrefix (ignored here)
    rs:         serialNo: tstr
    ```

    :meth:`to_bytes` writes the 5-element form go's DI server requires, or rs's single
    string when only ``serial`` is set. Fields absent from what was received are None.
    """

    pk_type: int | None = None
    pk_enc: int | None = None
    serial: str | None = None
    device_info: str | None = None
    csr: bytes | None = None

    def to_cbor_obj(self) -> CborValue:
        if self.pk_type is None and self.pk_enc is None and self.device_info is None and self.csr is None:
            if self.serial is None:
                raise FdoUsageError("MfgInfo: nothing to encode")
            return self.serial
        return [self.pk_type, self.pk_enc, self.serial, self.device_info, self.csr]

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        what = "DeviceMfgInfo"
        if isinstance(obj, str):
            return cls(serial=obj)
        items = codec.as_list(obj, what, min_len=5, max_len=16)

        def opt_str(value: CborValue, name: str) -> str | None:
            return codec.optional(value, lambda v: codec.as_str(v, f"{what}.{name}", max_size=1024))

        return cls(
            pk_type=codec.optional(items[0], lambda v: codec.as_int(v, f"{what}.pkType", 0, 0xFFFF)),
            pk_enc=codec.optional(items[1], lambda v: codec.as_int(v, f"{what}.pkEnc", 0, 0xFFFF)),
            serial=opt_str(items[2], "serialNo"),
            device_info=opt_str(items[3], "deviceInfo"),
            csr=codec.optional(items[4], lambda v: codec.as_bytes(v, f"{what}.CSR", max_size=16384)),
        )

    def to_bytes(self) -> bytes:
        """The CBOR that goes inside DI.AppStart's bstr."""
        return codec.encode(self.to_cbor_obj())

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Parse DI.AppStart's ``mfg_info`` bytes (raises MessageBodyError)."""
        return cls.from_cbor_obj(codec.decode(data))


@dataclass(frozen=True, slots=True, kw_only=True)
class DISetCredentials(MessageBase):
    """DI.SetCredentials (type 11): ``[bstr .cbor OVHeader]``.

    ``ov_header`` is the OVHeader's CBOR exactly as received: the device HMACs these
    bytes. rs sends the OVHeader array itself as the body; that is read too (as is a
    one-element array holding the bare OVHeader), but only the 1.1 form is written.
    """

    MSG_TYPE: ClassVar[MsgType] = MsgType.DI_SET_CREDENTIALS

    ov_header: bytes

    def to_cbor_obj(self) -> list[CborValue]:
        return [self.ov_header]

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        # Only the decoded objects are available here: a bare header is re-encoded.
        items = codec.as_list(obj, "DI.SetCredentials", min_len=1)
        if len(items) == 1 and isinstance(items[0], bytes):
            return cls(ov_header=items[0])
        if len(items) == 1:
            items = codec.as_list(items[0], "DI.SetCredentials OVHeader", min_len=1)
        return cls(ov_header=codec.encode(_check_bare_header(items)))

    @classmethod
    def decode(cls, data: bytes) -> Self:
        obj = codec.decode(data)
        items = codec.as_list(obj, "DI.SetCredentials", min_len=1)
        if len(items) == 1 and isinstance(items[0], bytes):
            return cls(ov_header=items[0])
        if len(items) == 1:  # [OVHeader]: keep the inner array's bytes
            _check_bare_header(codec.as_list(items[0], "DI.SetCredentials OVHeader", min_len=1))
            return cls(ov_header=codec.split_array(data, "DI.SetCredentials")[0])
        _check_bare_header(items)  # rs: the body is the OVHeader
        return cls(ov_header=data)


def _check_bare_header(items: CborValue) -> CborValue:
    # An OVHeader is [OVHProtVer, OVGuid, OVRVInfo, OVDeviceInfo, OVPubKey, OVDevCertChainHash];
    # the full check belongs to fdo.voucher, this only tells it apart from garbage.
    header = codec.as_list(items, "DI.SetCredentials OVHeader", 6)
    codec.as_uint(header[0], "OVHeader.OVHProtVer", 16)
    return header


@dataclass(frozen=True, slots=True, kw_only=True)
class DISetHMAC(MessageBase):
    """DI.SetHMAC (type 12): ``[HMac]``, HMAC(DCHmacSecret, OVHeader bytes)."""

    MSG_TYPE: ClassVar[MsgType] = MsgType.DI_SET_HMAC

    hmac: Hash

    def to_cbor_obj(self) -> list[CborValue]:
        return [self.hmac.to_cbor_obj()]

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        items = codec.as_list(obj, "DI.SetHMAC", 1)
        return cls(hmac=Hash.from_cbor_obj(items[0], "DI.SetHMAC.HMac"))


@dataclass(frozen=True, slots=True, kw_only=True)
class DIDone(MessageBase):
    """DI.Done (type 13): ``[]``."""

    MSG_TYPE: ClassVar[MsgType] = MsgType.DI_DONE

    def to_cbor_obj(self) -> list[CborValue]:
        return []

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        empty_array(obj, "DI.Done")
        return cls()


MESSAGES: tuple[type[MessageBase], ...] = (DIAppStart, DISetCredentials, DISetHMAC, DIDone)
"""The DI message classes, for :func:`fdo.messages.decode_message`."""

__all__ = ["DIAppStart", "DIDone", "DISetCredentials", "DISetHMAC", "MESSAGES", "MfgInfo"]
