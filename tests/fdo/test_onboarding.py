"""DI, voucher extension, TO0, TO1 and TO2 with ServiceInfo, wired together in memory.

Every valid combination of device key type, key exchange and cipher suite onboards,
and credential reuse keeps the device's credential. No HTTP: the machines are paired
directly (tests/fdo/flow.py), each server rebuilt from its serialised state per message.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pytest

from fdo.codec import CborValue
from fdo.credential import DeviceCredential
from fdo.crypto import PrivateKeyT, PublicKey, generate_key
from fdo.errors import UnsupportedError
from fdo.kex import CipherSuite, KexSuite
from fdo.serviceinfo import (
    CommandDevice,
    CommandOwner,
    DeviceServiceInfoDriver,
    Devmod,
    DownloadDevice,
    DownloadOwner,
    OwnerModule,
    restore_standard,
)
from fdo.types import Guid
from fdo.voucher import OwnershipVoucher
from tests.fdo.flow import (
    Owner,
    Rendezvous,
    make_manufacturer,
    run_di,
    run_to0,
    run_to1,
    run_to2,
    sample_devmod,
)

KINDS = ("ec256", "ec384", "rsa2048", "rsa3072")
KEX_FOR_KIND = {
    "ec256": (KexSuite.ECDH256,),
    "ec384": (KexSuite.ECDH384,),
    "rsa2048": (KexSuite.DHKEXid14, KexSuite.ASYMKEX2048),
    "rsa3072": (KexSuite.DHKEXid15, KexSuite.ASYMKEX3072),
}
CIPHERS = (
    CipherSuite.A128GCM,
    CipherSuite.A256GCM,
    CipherSuite.COSEAES128CTR,
    CipherSuite.COSEAES128CBC,
    CipherSuite.COSEAES256CTR,
    CipherSuite.COSEAES256CBC,
)
MATRIX = [(kind, kex, cipher) for kind in KINDS for kex in KEX_FOR_KIND[kind] for cipher in CIPHERS]


@pytest.fixture(scope="session")
def mfr_keys() -> dict[str, PrivateKeyT]:
    return {kind: generate_key(kind) for kind in KINDS}


@pytest.fixture(scope="session")
def owner_keys() -> dict[str, PrivateKeyT]:
    return {kind: generate_key(kind) for kind in KINDS}


@pytest.fixture(scope="session")
def device_keys() -> dict[str, PrivateKeyT]:
    return {kind: generate_key(kind) for kind in KINDS}


class Recorder:
    """The device's side effects, recorded in memory."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.commands: list[list[str]] = []

    def write(self, name: str, data: bytes) -> None:
        self.files[name] = data

    def run(self, argv: Sequence[str]) -> tuple[int, bytes, bytes]:
        self.commands.append(list(argv))
        return 0, b"switched\n", b""


PAYLOAD = bytes(range(256)) * 40  # 10 kB: several download chunks at MTU 1300


def owner_modules(guid: Guid, devmod: Devmod) -> Sequence[OwnerModule]:
    return [
        DownloadOwner("/etc/fdo/config.toml", PAYLOAD),
        CommandOwner("bootc", ["switch", "registry.example/kiosk@sha256:" + "ab" * 32]),
    ]


def restore(name: str, state: CborValue) -> OwnerModule:
    return restore_standard(name, state)


def device_driver(recorder: Recorder, model: str = "kiosk-v2") -> DeviceServiceInfoDriver:
    return DeviceServiceInfoDriver(
        sample_devmod(model),
        [DownloadDevice(recorder.write), CommandDevice(recorder.run)],
    )


def manufacture(
    kind: str,
    mfr_keys: dict[str, PrivateKeyT],
    owner_keys: dict[str, PrivateKeyT],
    device_keys: dict[str, PrivateKeyT],
) -> tuple[DeviceCredential, OwnershipVoucher]:
    """DI, then the hand-off: extend the voucher to the owner's key of the same kind."""
    mfr = make_manufacturer(mfr_keys)
    credential, voucher = run_di(mfr, device_keys[kind])
    assert voucher.guid == credential.guid and not voucher.entries
    voucher.verify(hmac_secret=credential.hmac_secret)
    extended = voucher.extend(mfr_keys[kind], PublicKey.from_key(owner_keys[kind].public_key()))
    extended.verify(owner_key=owner_keys[kind].public_key())
    return credential, extended


@pytest.mark.parametrize(("kind", "kex", "cipher"), MATRIX, ids=[f"{k}-{x}-{c.name}" for k, x, c in MATRIX])
def test_onboarding_matrix(
    kind: str,
    kex: KexSuite,
    cipher: CipherSuite,
    mfr_keys: dict[str, PrivateKeyT],
    owner_keys: dict[str, PrivateKeyT],
    device_keys: dict[str, PrivateKeyT],
) -> None:
    credential, voucher = manufacture(kind, mfr_keys, owner_keys, device_keys)

    rv = Rendezvous(max_wait_seconds=3600)
    assert run_to0(rv, voucher, owner_keys[kind]) == 3600  # capped by the rendezvous
    to1d = run_to1(rv, credential)

    owner = Owner(keys=owner_keys, vouchers={voucher.guid: voucher}, modules=owner_modules, restore=restore)
    recorder = Recorder()
    device, server = run_to2(
        owner, credential, to1d, kex=kex, cipher=cipher, device_si=device_driver(recorder)
    )

    # ServiceInfo reached the device, in order, byte for byte.
    assert recorder.files == {"/etc/fdo/config.toml": PAYLOAD}
    assert recorder.commands == [["bootc", "switch", "registry.example/kiosk@sha256:" + "ab" * 32]]
    assert owner.seen_devmod[0].device == "kiosk-v2"
    assert server.devmod is not None and "fdo.download" in server.devmod.modules

    # New credential and replacement voucher agree; the device keeps its secret and key.
    new = device.new_credential
    assert new is not None and server.new_voucher is not None and not device.reused
    assert new.guid != credential.guid and new.guid == server.new_voucher.guid
    assert new.hmac_secret == credential.hmac_secret
    server.new_voucher.verify(hmac_secret=new.hmac_secret)
    assert server.new_voucher.header.public_key.same_key(owner_keys[kind].public_key())
    assert hashlib.new(
        new.pubkey_hash.alg.hashlib_name, server.new_voucher.header.public_key_bytes
    ).digest() == (new.pubkey_hash.value)


@pytest.mark.parametrize("kind", KINDS)
def test_resale_after_onboarding(
    kind: str,
    mfr_keys: dict[str, PrivateKeyT],
    owner_keys: dict[str, PrivateKeyT],
    device_keys: dict[str, PrivateKeyT],
) -> None:
    """The replacement voucher extends to a new owner, who onboards the device again (bypass: no TO1)."""
    credential, voucher = manufacture(kind, mfr_keys, owner_keys, device_keys)
    owner = Owner(keys=owner_keys, vouchers={voucher.guid: voucher})
    device, server = run_to2(owner, credential, None)
    assert device.new_credential is not None and server.new_voucher is not None

    buyer_key = generate_key(kind) if kind.startswith("ec") else mfr_keys[kind]
    resold = server.new_voucher.extend(owner_keys[kind], PublicKey.from_key(buyer_key.public_key()))
    buyer = Owner(keys={kind: buyer_key}, vouchers={resold.guid: resold})
    device2, server2 = run_to2(buyer, device.new_credential, None)
    assert device2.new_credential is not None and server2.new_voucher is not None
    assert server2.new_voucher.header.public_key.same_key(buyer_key.public_key())


@pytest.mark.parametrize("kind", KINDS)
def test_credential_reuse(
    kind: str,
    mfr_keys: dict[str, PrivateKeyT],
    owner_keys: dict[str, PrivateKeyT],
    device_keys: dict[str, PrivateKeyT],
) -> None:
    credential, voucher = manufacture(kind, mfr_keys, owner_keys, device_keys)
    owner = Owner(keys=owner_keys, vouchers={voucher.guid: voucher}, reuse=True)
    for _ in range(2):  # reuse means the device can onboard again with the same credential
        device, server = run_to2(owner, credential, None)
        assert device.reused and device.new_credential == credential
        assert server.new_voucher is None
        assert owner.vouchers[credential.guid] is voucher


STRONGER = [
    ("rsa2048", KexSuite.DHKEXid15),
    ("rsa2048", KexSuite.ECDH256),
    ("rsa2048", KexSuite.ECDH384),
    ("rsa3072", KexSuite.ECDH256),
    ("ec256", KexSuite.ECDH384),
    ("ec256", KexSuite.DHKEXid15),
]


@pytest.mark.parametrize(("kind", "kex"), STRONGER, ids=[f"{k}-{x}" for k, x in STRONGER])
def test_device_with_a_stronger_suite(
    kind: str,
    kex: KexSuite,
    mfr_keys: dict[str, PrivateKeyT],
    owner_keys: dict[str, PrivateKeyT],
    device_keys: dict[str, PrivateKeyT],
) -> None:
    """A device may use any suite at least as strong as the owner key (go's owner does
    for RSA devices)."""
    credential, voucher = manufacture(kind, mfr_keys, owner_keys, device_keys)
    owner = Owner(keys=owner_keys, vouchers={voucher.guid: voucher}, modules=owner_modules, restore=restore)
    recorder = Recorder()
    device, server = run_to2(owner, credential, None, kex=kex, device_si=device_driver(recorder))
    assert recorder.files == {"/etc/fdo/config.toml": PAYLOAD}
    assert device.new_credential is not None and server.new_voucher is not None
    server.new_voucher.verify(hmac_secret=device.new_credential.hmac_secret)


WEAKER = [
    ("rsa3072", KexSuite.DHKEXid14),  # 112 bits for a 128-bit owner key
    ("rsa3072", KexSuite.ASYMKEX2048),  # encrypts to a key of another size
    ("ec384", KexSuite.ECDH256),  # 128 bits for a 192-bit owner key
    ("ec384", KexSuite.DHKEXid15),
    ("ec256", KexSuite.ASYMKEX3072),  # encrypts to an RSA owner key
]


@pytest.mark.parametrize(("kind", "kex"), WEAKER, ids=[f"{k}-{x}" for k, x in WEAKER])
def test_owner_refuses_a_suite_that_does_not_suit_its_key(
    kind: str,
    kex: KexSuite,
    mfr_keys: dict[str, PrivateKeyT],
    owner_keys: dict[str, PrivateKeyT],
    device_keys: dict[str, PrivateKeyT],
) -> None:
    credential, voucher = manufacture(kind, mfr_keys, owner_keys, device_keys)
    owner = Owner(keys=owner_keys, vouchers={voucher.guid: voucher})
    with pytest.raises(UnsupportedError, match="does not suit"):
        run_to2(owner, credential, None, kex=kex)
