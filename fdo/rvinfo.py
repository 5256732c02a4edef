"""RendezvousInfo and RVTO2Addr (spec §3.7, reference §2.6).

``RendezvousInfo = [+ [+ [RVVariable, ?RVValue: bstr .cbor any]]]``. Each instruction
keeps its value bytes as received and remembers how a valueless flag was written —
``[14]`` (go, java, C), ``[14, h'F6']`` (rs) or ``[14, null]`` (conformance tools) —
so it re-encodes to the same bytes. All three forms are read; new flags are written
the go way, ``[var]``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Self
from urllib.parse import urlsplit

from fdo import codec
from fdo.codec import CborValue
from fdo.errors import MessageBodyError
from fdo.types import Hash


class RVVariable(IntEnum):
    DEV_ONLY = 0
    OWNER_ONLY = 1
    IP_ADDRESS = 2
    DEV_PORT = 3
    OWNER_PORT = 4
    DNS = 5
    SV_CERT_HASH = 6
    CL_CERT_HASH = 7
    USER_INPUT = 8
    WIFI_SSID = 9
    WIFI_PW = 10
    MEDIUM = 11
    PROTOCOL = 12
    DELAYSEC = 13
    BYPASS = 14
    EXT_RV = 15


class RVProtocol(IntEnum):
    """RVProtocol values used inside RendezvousInfo (not TransportProtocol!)."""

    REST = 0
    HTTP = 1
    HTTPS = 2
    TCP = 3
    TLS = 4
    COAP_TCP = 5
    COAP_UDP = 6


class TransportProtocol(IntEnum):
    """TransportProtocol values used inside RVTO2Addr."""

    TCP = 1
    TLS = 2
    HTTP = 3
    COAP = 4
    HTTPS = 5
    COAPS = 6


def split_base_url(url: str) -> tuple[bool, str, int, bool]:
    """``http(s)://host[:port]`` as (https, host, port, host is an IP address).

    Raises ``ValueError`` naming what is wrong; the port defaults to 80 or 443.
    """
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. "http://[]:8043"
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// or https:// URL with a host")
    https = parts.scheme == "https"
    try:
        port = parts.port or (443 if https else 80)
    except ValueError:
        raise ValueError(f"{url!r} has a bad port") from None
    try:
        ipaddress.ip_address(parts.hostname)
        is_ip = True
    except ValueError:
        is_ip = False
    return https, parts.hostname, port, is_ip


FLAGS = frozenset({RVVariable.DEV_ONLY, RVVariable.OWNER_ONLY, RVVariable.BYPASS})

# How a valueless instruction was written.
_FORM_ONE = 0  # [var]
_FORM_NULL_BSTR = 1  # [var, h'F6']
_FORM_NULL = 2  # [var, null]


@dataclass(frozen=True, slots=True)
class RendezvousInstr:
    """One ``[RVVariable, RVValue]``; ``value`` is the CBOR inside the bstr, or None."""

    variable: int
    value: bytes | None = None
    form: int = _FORM_ONE

    @classmethod
    def of(cls, variable: RVVariable, value: CborValue = None) -> Self:
        """Build an instruction; flags take no value."""
        if value is None:
            return cls(int(variable))
        return cls(int(variable), codec.encode(value))

    def decoded(self) -> CborValue:
        """The value as a CBOR object (None for flags)."""
        if self.value is None or self.value == b"\xf6":
            return None
        return codec.decode(self.value)

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        items = codec.as_list(obj, "RendezvousInstr", min_len=1, max_len=2)
        var = codec.as_uint(items[0], "RVVariable", 8)
        if len(items) == 1:
            return cls(var)
        if items[1] is None:
            return cls(var, None, _FORM_NULL)
        value = codec.as_bytes(items[1], "RVValue", max_size=4096)
        if value == b"\xf6":
            return cls(var, None, _FORM_NULL_BSTR)
        return cls(var, value)

    def to_cbor_obj(self) -> list[CborValue]:
        if self.value is not None:
            return [self.variable, self.value]
        if self.form == _FORM_NULL_BSTR:
            return [self.variable, b"\xf6"]
        if self.form == _FORM_NULL:
            return [self.variable, None]
        return [self.variable]


@dataclass(frozen=True, slots=True)
class RendezvousDirective:
    """One directive: a list of instructions tried together, with typed accessors."""

    instructions: tuple[RendezvousInstr, ...]

    @classmethod
    def build(
        cls,
        *,
        dns: str | None = None,
        ip: str | None = None,
        port: int | None = None,
        owner_port: int | None = None,
        protocol: RVProtocol = RVProtocol.HTTP,
        delay: int | None = None,
        bypass: bool = False,
        dev_only: bool = False,
        owner_only: bool = False,
    ) -> Self:
        """A directive from named settings (what a manufacturer or owner configures)."""
        out: list[RendezvousInstr] = []
        if dev_only:
            out.append(RendezvousInstr.of(RVVariable.DEV_ONLY))
        if owner_only:
            out.append(RendezvousInstr.of(RVVariable.OWNER_ONLY))
        if ip is not None:
            out.append(RendezvousInstr.of(RVVariable.IP_ADDRESS, ipaddress.ip_address(ip).packed))
        if dns is not None:
            out.append(RendezvousInstr.of(RVVariable.DNS, dns))
        if port is not None:
            out.append(RendezvousInstr.of(RVVariable.DEV_PORT, port))
        if owner_port is not None:
            out.append(RendezvousInstr.of(RVVariable.OWNER_PORT, owner_port))
        out.append(RendezvousInstr.of(RVVariable.PROTOCOL, int(protocol)))
        if delay is not None:
            out.append(RendezvousInstr.of(RVVariable.DELAYSEC, delay))
        if bypass:
            out.append(RendezvousInstr.of(RVVariable.BYPASS))
        return cls(tuple(out))

    @classmethod
    def from_url(cls, url: str) -> Self:
        """The directive for a rendezvous base URL (``ValueError`` if it is not one)."""
        https, host, port, is_ip = split_base_url(url)
        protocol = RVProtocol.HTTPS if https else RVProtocol.HTTP
        if is_ip:
            return cls.build(ip=host, port=port, protocol=protocol)
        return cls.build(dns=host, port=port, protocol=protocol)

    def _get(self, var: RVVariable) -> RendezvousInstr | None:
        for instr in self.instructions:
            if instr.variable == var:
                return instr
        return None

    def has(self, var: RVVariable) -> bool:
        return self._get(var) is not None

    def value(self, var: RVVariable) -> CborValue:
        instr = self._get(var)
        return None if instr is None else instr.decoded()

    @property
    def dev_only(self) -> bool:
        return self.has(RVVariable.DEV_ONLY)

    @property
    def owner_only(self) -> bool:
        return self.has(RVVariable.OWNER_ONLY)

    @property
    def bypass(self) -> bool:
        return self.has(RVVariable.BYPASS)

    @property
    def ip(self) -> str | None:
        raw = self.value(RVVariable.IP_ADDRESS)
        if raw is None:
            return None
        data = codec.as_bytes(raw, "RVIPAddress")
        if len(data) not in (4, 16):
            raise MessageBodyError("RVIPAddress must be 4 or 16 bytes")
        return str(ipaddress.ip_address(data))

    @property
    def dns(self) -> str | None:
        raw = self.value(RVVariable.DNS)
        return None if raw is None else codec.as_str(raw, "RVDns", max_size=255)

    @property
    def protocol(self) -> RVProtocol | None:
        raw = self.value(RVVariable.PROTOCOL)
        if raw is None:
            return None
        try:
            return RVProtocol(codec.as_uint(raw, "RVProtocol", 8))
        except ValueError:
            raise MessageBodyError(f"unknown RVProtocol {raw}") from None

    def _port(self, var: RVVariable) -> int | None:
        raw = self.value(var)
        return None if raw is None else codec.as_uint(raw, var.name, 16)

    @property
    def dev_port(self) -> int | None:
        return self._port(RVVariable.DEV_PORT)

    @property
    def owner_port(self) -> int | None:
        return self._port(RVVariable.OWNER_PORT)

    @property
    def delay(self) -> int | None:
        raw = self.value(RVVariable.DELAYSEC)
        return None if raw is None else codec.as_uint(raw, "RVDelaysec", 32)

    @property
    def sv_cert_hash(self) -> Hash | None:
        raw = self.value(RVVariable.SV_CERT_HASH)
        return None if raw is None else Hash.from_cbor_obj(raw, "RVSvCertHash")

    @property
    def cl_cert_hash(self) -> Hash | None:
        raw = self.value(RVVariable.CL_CERT_HASH)
        return None if raw is None else Hash.from_cbor_obj(raw, "RVClCertHash")

    def urls(self, *, for_owner: bool = False) -> list[str]:
        """Base URLs this directive names (http/https only), for the device or the owner.

        The port is RVDevPort for the device. The owner uses RVOwnerPort, else RVDevPort
        (most rendezvous servers serve TO0 and TO1 on one port, and many manufacturers
        write only RVDevPort), else the protocol default.
        """
        proto = self.protocol
        if proto is None or proto in (RVProtocol.HTTP, RVProtocol.REST):
            scheme, default_port = "http", 80
        elif proto in (RVProtocol.HTTPS, RVProtocol.TLS):
            scheme, default_port = "https", 443
        else:
            return []
        port = ((self.owner_port or self.dev_port) if for_owner else self.dev_port) or default_port
        hosts = [h for h in (self.dns, self.ip) if h]
        out = []
        for host in hosts:
            shown = f"[{host}]" if ":" in host else host
            out.append(f"{scheme}://{shown}:{port}")
        return out

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        items = codec.as_list(obj, "RendezvousDirective", min_len=1, max_len=64)
        return cls(tuple(RendezvousInstr.from_cbor_obj(i) for i in items))

    def to_cbor_obj(self) -> list[CborValue]:
        return [i.to_cbor_obj() for i in self.instructions]


@dataclass(frozen=True, slots=True)
class RendezvousInfo:
    """``RendezvousInfo = [+ RendezvousDirective]``, tried in order."""

    directives: tuple[RendezvousDirective, ...]

    @classmethod
    def of(cls, directives: Sequence[RendezvousDirective]) -> Self:
        return cls(tuple(directives))

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        # go and rs accept an empty list; keep it readable, refuse it where it matters.
        items = codec.as_list(obj, "RendezvousInfo", max_len=64)
        return cls(tuple(RendezvousDirective.from_cbor_obj(d) for d in items))

    def to_cbor_obj(self) -> list[CborValue]:
        return [d.to_cbor_obj() for d in self.directives]

    def encode(self) -> bytes:
        """CBOR of the whole RendezvousInfo (each instruction in its received form)."""
        return codec.encode(self.to_cbor_obj())

    def for_device(self) -> list[RendezvousDirective]:
        """Directives a device follows (RVOwnerOnly ones skipped)."""
        return [d for d in self.directives if not d.owner_only]

    def for_owner(self) -> list[RendezvousDirective]:
        """Directives an owner uses for TO0 (RVDevOnly and bypass ones skipped)."""
        return [d for d in self.directives if not d.dev_only and not d.bypass]


@dataclass(frozen=True, slots=True)
class RVTO2AddrEntry:
    """``[RVIP: IPAddress / null, RVDNS: DNSAddress / null, RVPort, RVProtocol]``."""

    ip: bytes | None
    dns: str | None
    port: int
    protocol: TransportProtocol

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        items = codec.as_list(obj, "RVTO2AddrEntry", 4)
        ip = codec.optional(items[0], lambda v: codec.as_bytes(v, "RVIP"))
        if ip is not None and len(ip) not in (4, 16):
            raise MessageBodyError("RVIP must be 4 or 16 bytes")
        dns = codec.optional(items[1], lambda v: codec.as_str(v, "RVDNS", max_size=255))
        port = codec.as_uint(items[2], "RVPort", 16)
        try:
            proto = TransportProtocol(codec.as_uint(items[3], "RVProtocol", 8))
        except ValueError:
            raise MessageBodyError(f"unknown TransportProtocol {items[3]}") from None
        return cls(ip, dns, port, proto)

    def to_cbor_obj(self) -> list[CborValue]:
        return [self.ip, self.dns, self.port, int(self.protocol)]

    @property
    def has_host(self) -> bool:
        """True when the entry names a host (RVIP or RVDNS); one without points nowhere."""
        return self.ip is not None or bool(self.dns)

    @classmethod
    def from_url(cls, url: str) -> Self:
        """The entry for an owner's TO2 base URL (``ValueError`` if it is not one)."""
        https, host, port, is_ip = split_base_url(url)
        protocol = TransportProtocol.HTTPS if https else TransportProtocol.HTTP
        if is_ip:
            return cls(ipaddress.ip_address(host).packed, None, port, protocol)
        return cls(None, host, port, protocol)

    def urls(self) -> list[str]:
        """Base URLs for this address (http/https only)."""
        if self.protocol in (TransportProtocol.HTTP, TransportProtocol.TCP):
            scheme = "http"
        elif self.protocol in (TransportProtocol.HTTPS, TransportProtocol.TLS):
            scheme = "https"
        else:
            return []
        hosts = []
        if self.dns:
            hosts.append(self.dns)
        if self.ip is not None:
            text = str(ipaddress.ip_address(self.ip))
            hosts.append(f"[{text}]" if ":" in text else text)
        return [f"{scheme}://{h}:{self.port}" for h in hosts]


@dataclass(frozen=True, slots=True)
class RVTO2Addr:
    """``RVTO2Addr = [+ RVTO2AddrEntry]``: where the owner's TO2 server listens."""

    entries: tuple[RVTO2AddrEntry, ...]

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        items = codec.as_list(obj, "RVTO2Addr", min_len=1, max_len=64)
        return cls(tuple(RVTO2AddrEntry.from_cbor_obj(e) for e in items))

    def to_cbor_obj(self) -> list[CborValue]:
        return [e.to_cbor_obj() for e in self.entries]
