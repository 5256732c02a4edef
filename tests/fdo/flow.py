"""In-memory pairing of device and server machines (no HTTP), as h11's test helpers do.

Every server machine is serialised to bytes after each message and rebuilt from them
before the next one, so the tests also prove that no session depends on the object
that handled the previous message.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509

from fdo.codec import CborValue
from fdo.cose import CoseSign1
from fdo.credential import DeviceCredential
from fdo.crypto import (
    PrivateKeyT,
    PublicKey,
    cert_der,
    issue_device_cert,
    key_kind,
    load_csr,
    make_ca,
    spki_der,
)
from fdo.di.device import DIDevice
from fdo.di.manufacturer import DIManufacturer
from fdo.di.messages import MfgInfo
from fdo.errors import InvalidVoucherError, MessageBodyError, UnsupportedError
from fdo.kex import CipherSuite, KexSuite
from fdo.machine import ClientMachine, Reply, ServerMachine
from fdo.rvinfo import (
    RendezvousDirective,
    RendezvousInfo,
    RVProtocol,
    RVTO2Addr,
    RVTO2AddrEntry,
    TransportProtocol,
)
from fdo.serviceinfo import DeviceServiceInfoDriver, Devmod, OwnerModule
from fdo.to0.owner import TO0Owner
from fdo.to0.rendezvous import TO0Registration, TO0Rendezvous
from fdo.to1.device import TO1Device
from fdo.to1.rendezvous import TO1Record, TO1Rendezvous
from fdo.to2.device import TO2Device
from fdo.to2.owner import Replacement, TO2Owner
from fdo.types import Guid
from fdo.voucher import OwnershipVoucher

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def run_pair(
    client: ClientMachine[CborValue],
    new_server: Callable[[], ServerMachine[CborValue]],
    restore: Callable[[bytes], ServerMachine[CborValue]],
    *,
    tamper: Callable[[int, bytes], bytes] | None = None,
) -> ServerMachine[CborValue]:
    """Run ``client`` against a server that is rebuilt from bytes for every message."""
    msg: Reply | None = client.start()
    state: bytes | None = None
    server: ServerMachine[CborValue] | None = None
    while msg is not None:
        msg_type, body = msg
        if tamper is not None:
            body = tamper(msg_type, body)
        server = new_server() if state is None else restore(state)
        reply_type, reply = server.handle(msg_type, body)
        state = server.to_state()
        if tamper is not None:
            reply = tamper(reply_type, reply)
        msg = client.receive(reply_type, reply)
    assert server is not None and server.done and client.done
    return server


# ---------------------------------------------------------------------------- manufacturer


@dataclass
class Manufacturer:
    """A manufacturer with one key per kind and a device CA (implements DIManufacturerConfig)."""

    keys: dict[str, PrivateKeyT]
    ca_key: PrivateKeyT
    ca_cert: x509.Certificate
    rv: RendezvousInfo

    def ov_public_key(self, info: MfgInfo) -> PublicKey:
        # OVPubKey is the manufacturer key of the device key's kind (go's DI server).
        if info.csr is None:
            raise MessageBodyError("no CSR")
        kind = key_kind(load_csr(info.csr).public_key())  # type: ignore[arg-type]
        if kind not in self.keys:
            raise UnsupportedError(f"no manufacturer key of kind {kind}")
        return PublicKey.from_key(self.keys[kind].public_key())

    def issue_chain(self, csr: x509.CertificateSigningRequest, info: MfgInfo, now: datetime) -> list[bytes]:
        cert = issue_device_cert(self.ca_key, self.ca_cert, csr.public_key(), info.serial or "device", now)  # type: ignore[arg-type]
        return [cert_der(cert), cert_der(self.ca_cert)]

    def rv_info(self, info: MfgInfo) -> RendezvousInfo:
        return self.rv


def make_manufacturer(keys: dict[str, PrivateKeyT]) -> Manufacturer:
    ca_key = keys["ec384"]
    rv = RendezvousInfo.of([RendezvousDirective.build(dns="rv.example", port=8041, protocol=RVProtocol.HTTP)])
    return Manufacturer(keys, ca_key, make_ca(ca_key, "Test device CA", NOW), rv)


def run_di(
    mfr: Manufacturer, device_key: PrivateKeyT, serial: str = "SN-0001"
) -> tuple[DeviceCredential, OwnershipVoucher]:
    device = DIDevice(key=device_key, serial=serial, model="kiosk-v2")
    server = run_pair(
        device,
        lambda: DIManufacturer(mfr, now=NOW),
        lambda s: DIManufacturer.from_state(s, mfr, now=NOW),
    )
    assert isinstance(server, DIManufacturer) and server.voucher is not None
    assert device.credential is not None
    return device.credential, server.voucher


# ---------------------------------------------------------------------------- rendezvous


@dataclass
class Rendezvous:
    """An in-memory rendezvous store (TO0Policy and TO1Lookup)."""

    max_wait_seconds: int = 3600
    registrations: dict[Guid, TO0Registration] = field(default_factory=dict)

    def check_owner(self, voucher: OwnershipVoucher) -> None:
        if not voucher.entries:
            raise InvalidVoucherError("no entries", check="entries.count")

    def find(self, guid: Guid) -> TO1Record | None:
        reg = self.registrations.get(guid)
        return None if reg is None else TO1Record(device_key_spki=reg.device_key_spki, to1d=reg.to1d)


def run_to0(rv: Rendezvous, voucher: OwnershipVoucher, owner_key: PrivateKeyT) -> int:
    addr = RVTO2Addr((RVTO2AddrEntry(None, "owner.example", 8043, TransportProtocol.HTTP),))
    client = TO0Owner(voucher=voucher, owner_key=owner_key, rv_to2_addr=addr, wait_seconds=7200)
    server = run_pair(client, lambda: TO0Rendezvous(rv), lambda s: TO0Rendezvous.from_state(s, rv))
    assert isinstance(server, TO0Rendezvous) and server.registration is not None
    rv.registrations[server.registration.guid] = server.registration
    assert client.accepted_wait_seconds is not None
    return client.accepted_wait_seconds


def run_to1(rv: Rendezvous, credential: DeviceCredential) -> CoseSign1:
    client = TO1Device(credential)
    run_pair(client, lambda: TO1Rendezvous(rv), lambda s: TO1Rendezvous.from_state(s, rv))
    assert client.to1d is not None
    return client.to1d


# ---------------------------------------------------------------------------- owner


@dataclass
class Owner:
    """An in-memory owner store (TO2OwnerStore)."""

    keys: dict[str, PrivateKeyT]
    vouchers: dict[Guid, OwnershipVoucher] = field(default_factory=dict)
    reuse: bool = False
    modules: Callable[[Guid, Devmod], Sequence[OwnerModule]] = lambda guid, devmod: []
    restore: Callable[[str, CborValue], OwnerModule] | None = None
    seen_devmod: list[Devmod] = field(default_factory=list)

    def voucher(self, guid: Guid) -> OwnershipVoucher | None:
        return self.vouchers.get(guid)

    def private_key(self, public_key: PublicKey) -> PrivateKeyT | None:
        wanted = spki_der(public_key.key)
        for key in self.keys.values():
            if spki_der(key.public_key()) == wanted:
                return key
        return None

    def replacement(self, voucher: OwnershipVoucher) -> Replacement:
        if self.reuse:
            return Replacement(voucher.guid, voucher.header.rv_info, voucher.owner_public_key)
        return Replacement(Guid.new(), voucher.header.rv_info, voucher.owner_public_key)

    def owner_modules(self, guid: Guid, devmod: Devmod) -> Sequence[OwnerModule]:
        self.seen_devmod.append(devmod)
        return self.modules(guid, devmod)

    def restore_module(self, name: str, state: CborValue) -> OwnerModule:
        assert self.restore is not None
        return self.restore(name, state)


def run_to2(
    owner: Owner,
    credential: DeviceCredential,
    to1d: CoseSign1 | None,
    *,
    kex: KexSuite | None = None,
    cipher: CipherSuite = CipherSuite.A128GCM,
    device_si: DeviceServiceInfoDriver | None = None,
    allow_reuse: bool = True,
    tamper: Callable[[int, bytes], bytes] | None = None,
    owner_mtu: int = 1300,
) -> tuple[TO2Device, TO2Owner]:
    """TO2 between our device and our owner; ``owner_mtu`` is the owner's maxDeviceServiceInfoSz."""
    driver = device_si or DeviceServiceInfoDriver(sample_devmod())
    client = TO2Device(
        credential,
        service_info=driver,
        to1d=to1d,
        kex_suite=kex,
        cipher=cipher,
        allow_credential_reuse=allow_reuse,
    )
    server = run_pair(
        client,
        lambda: TO2Owner(owner, max_device_service_info_size=owner_mtu),
        lambda s: TO2Owner.from_state(s, owner, max_device_service_info_size=owner_mtu),
        tamper=tamper,
    )
    assert isinstance(server, TO2Owner)
    if server.new_voucher is not None:
        owner.vouchers.pop(credential.guid, None)
        owner.vouchers[server.new_voucher.guid] = server.new_voucher
    return client, server


def sample_devmod(model: str = "kiosk-v2") -> Devmod:
    """A devmod whose module list the driver fills from its modules."""
    return Devmod(
        os="Linux",
        arch="x86_64",
        version="Fedora 41",
        device=model,
        sn=b"SN-0001",
        sep=":",
        bin="x86_64",
    )
