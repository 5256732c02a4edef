"""Key exchange, KDF and session envelopes (fdo-protocol.md §6, spec §3.6)."""

from __future__ import annotations

import hmac
import random
from collections.abc import Callable
from functools import cache

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fdo.codec import Tag, bstr_head, decode, encode
from fdo.errors import (
    FdoError,
    FdoUsageError,
    InternalError,
    InvalidMessageError,
    MessageBodyError,
    UnsupportedError,
)
from fdo.kex import (
    CipherSuite,
    KexSuite,
    OwnerKex,
    SessionCrypto,
    device_kex,
    kdf,
    parse_cipher_suite,
    parse_kex_suite,
    suite_allowed,
)

P14 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F"
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510"
    "15728E5A8AACAA68FFFFFFFFFFFFFFFF",
    16,
)

ETM = [c for c in CipherSuite if c < 0]
GCM = [c for c in CipherSuite if c > 0]
PEER_FAULTS = (InvalidMessageError, MessageBodyError)


def seeded(seed: int) -> Callable[[int], bytes]:
    """A reproducible random source for the ``rand`` parameters."""
    return random.Random(seed).randbytes


def fixed(*chunks: bytes) -> Callable[[int], bytes]:
    """A random source that returns ``chunks`` in order (each must match the size asked)."""
    queue = list(chunks)

    def rand(size: int) -> bytes:
        chunk = queue.pop(0)
        assert len(chunk) == size
        return chunk

    return rand


@cache
def rsa_key(bits: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def owner_rsa(suite: KexSuite) -> rsa.RSAPrivateKey | None:
    return {KexSuite.ASYMKEX2048: rsa_key(2048), KexSuite.ASYMKEX3072: rsa_key(3072)}.get(suite)


def session_keys(crypto: SessionCrypto) -> tuple[bytes, bytes]:
    _, _, sek, svk = decode(crypto.to_state())
    return sek, svk


def exchange(
    suite: KexSuite, cipher: CipherSuite, seed: int = 1
) -> tuple[OwnerKex, bytes, SessionCrypto, SessionCrypto]:
    """Run both halves; return (owner kex, xB, owner crypto, device crypto)."""
    owner_key = owner_rsa(suite)
    owner = OwnerKex.new(suite, rand=seeded(seed))
    xb, device = device_kex(
        suite,
        owner.xa,
        cipher,
        owner_public_key=owner_key.public_key() if owner_key else None,
        rand=seeded(seed + 1000),
    )
    return owner, xb, owner.derive(xb, cipher, owner_private_key=owner_key), device


# ----------------------------------------------------------------------------- KDF


def reference_kdf(sh_se: bytes, context_rand: bytes, length: int, hash_name: str) -> bytes:
    """SP 800-108 counter mode written out from fdo-protocol.md §6.2, independently of fdo."""
    suffix = (
        b"FIDO-KDF" + b"\x00" + b"AutomaticOnboardTunnel" + context_rand + (8 * length).to_bytes(2, "big")
    )
    out = b""
    i = 1
    while len(out) < length:
        out += hmac.new(sh_se, bytes([i]) + suffix, hash_name).digest()
        i += 1
    return out[:length]


@pytest.mark.parametrize(
    ("length", "hash_name"),
    [(16, "sha256"), (24, "sha256"), (32, "sha256"), (64, "sha256"), (64, "sha384"), (100, "sha384")],
)
@pytest.mark.parametrize("context_rand", [b"", bytes(range(32))])
def test_kdf_matches_reference(length: int, hash_name: str, context_rand: bytes) -> None:
    sh_se = bytes(range(200, 248))
    assert kdf(sh_se, context_rand, length, hash_name) == reference_kdf(
        sh_se, context_rand, length, hash_name
    )


def test_kdf_a128gcm_single_block_by_hand() -> None:
    # One HMAC-SHA256 block, counter 01, L = 128 bits (00 80), truncated to 16 bytes.
    sh_se = b"\x11" * 32
    data = bytes.fromhex("01") + b"FIDO-KDF\x00AutomaticOnboardTunnel" + bytes.fromhex("0080")
    assert kdf(sh_se, b"", 16) == hmac.new(sh_se, data, "sha256").digest()[:16]


def test_kdf_rejects_bad_arguments() -> None:
    with pytest.raises(FdoUsageError):
        kdf(b"k", b"", 0)
    with pytest.raises(FdoUsageError):
        kdf(b"k", b"", 16, "md5")


@pytest.mark.parametrize(
    ("cipher", "sek_len", "svk_len", "prf"),
    [
        (CipherSuite.A128GCM, 16, 0, "sha256"),
        (CipherSuite.A192GCM, 24, 0, "sha256"),
        (CipherSuite.A256GCM, 32, 0, "sha256"),
        (CipherSuite.COSEAES128CBC, 16, 16, "sha256"),
        (CipherSuite.COSEAES128CTR, 16, 16, "sha256"),
        (CipherSuite.COSEAES256CBC, 32, 32, "sha384"),
        (CipherSuite.COSEAES256CTR, 32, 32, "sha384"),
    ],
)
def test_session_keys_per_cipher_suite(cipher: CipherSuite, sek_len: int, svk_len: int, prf: str) -> None:
    sh_se, context_rand = b"\x42" * 48, b"\x07" * 32
    expected = reference_kdf(sh_se, context_rand, sek_len + svk_len, prf)
    # SEK first, then SVK (go, java).
    assert session_keys(SessionCrypto.derive(cipher, sh_se, context_rand)) == (
        expected[:sek_len],
        expected[sek_len:],
    )


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("cipher", list(CipherSuite))
@pytest.mark.parametrize("suite", list(KexSuite))
def test_round_trip_every_suite(suite: KexSuite, cipher: CipherSuite) -> None:
    owner_key = owner_rsa(suite)
    owner = OwnerKex.new(suite, rand=seeded(7))
    # The owner service persists the exchange between 61 and 64.
    resumed = OwnerKex.from_state(owner.to_state())
    assert resumed.suite is suite
    assert resumed.xa == owner.xa
    xb, device = device_kex(
        suite, owner.xa, cipher, owner_public_key=owner_key.public_key() if owner_key else None
    )
    owner_crypto = resumed.derive(xb, cipher, owner_private_key=owner_key)
    assert owner_crypto.to_state() == device.to_state()
    owner_crypto = SessionCrypto.from_state(owner_crypto.to_state())
    device = SessionCrypto.from_state(device.to_state())
    assert owner_crypto.cipher is device.cipher is cipher
    for plaintext in (b"", b"\x80", encode([1, b"x" * 100, "devmod"]), bytes(range(256)) * 5):
        assert device.decrypt(owner_crypto.encrypt(plaintext)) == plaintext
        assert owner_crypto.decrypt(device.encrypt(plaintext)) == plaintext


def test_exchange_is_deterministic_under_rand() -> None:
    first = exchange(KexSuite.ECDH256, CipherSuite.A128GCM, seed=3)
    second = exchange(KexSuite.ECDH256, CipherSuite.A128GCM, seed=3)
    assert first[0].xa == second[0].xa and first[1] == second[1]
    assert first[2].to_state() == second[2].to_state()


@pytest.mark.parametrize(
    ("suite", "size", "rand_len"), [(KexSuite.ECDH256, 32, 16), (KexSuite.ECDH384, 48, 48)]
)
def test_ecdh_layout_and_shared_secret(suite: KexSuite, size: int, rand_len: int) -> None:
    owner, xb, owner_crypto, _ = exchange(suite, CipherSuite.A256GCM)
    for blob in (owner.xa, xb):
        assert len(blob) == 2 + size + 2 + size + 2 + rand_len
        assert blob[:2] == blob[2 + size : 4 + size] == size.to_bytes(2, "big")
        assert blob[4 + 2 * size : 6 + 2 * size] == rand_len.to_bytes(2, "big")
    # ShSe = Shx ‖ DeviceRandom ‖ OwnerRandom, ContextRand empty; recompute independently.
    curve = ec.SECP256R1() if suite is KexSuite.ECDH256 else ec.SECP384R1()
    _, _, _, scalar = decode(owner.to_state())
    owner_private = ec.derive_private_key(int.from_bytes(scalar, "big"), curve)
    device_point = b"\x04" + xb[2 : 2 + size] + xb[4 + size : 4 + 2 * size]
    shx = owner_private.exchange(ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(curve, device_point))
    sh_se = shx + xb[-rand_len:] + owner.xa[-rand_len:]
    assert owner_crypto.to_state() == SessionCrypto.derive(CipherSuite.A256GCM, sh_se).to_state()


def _ec_point(suite: KexSuite, xa: bytes) -> tuple[bytes, bytes, bytes]:
    size = 32 if suite is KexSuite.ECDH256 else 48
    return xa[2 : 2 + size], xa[4 + size : 4 + 2 * size], xa[6 + 2 * size :]


def _short_form(x: bytes, y: bytes, rnd: bytes) -> bytes:
    """Encode like rs/conf: minimal big-endian coordinates."""
    x, y = x.lstrip(b"\x00"), y.lstrip(b"\x00")
    return b"".join(len(f).to_bytes(2, "big") + f for f in (x, y, rnd))


@pytest.mark.parametrize("coordinate", [0, 1])
def test_ecdh_short_coordinates_derive_the_same_keys(coordinate: int) -> None:
    suite = KexSuite.ECDH256
    # Search for an owner key whose X (or Y) starts with a zero byte (about 1 in 256).
    for seed in range(20_000):
        owner = OwnerKex.new(suite, rand=seeded(seed))
        if _ec_point(suite, owner.xa)[coordinate][0] == 0:
            break
    else:
        pytest.fail("no key with a leading zero coordinate found")
    short_xa = _short_form(*_ec_point(suite, owner.xa))
    assert len(short_xa) < len(owner.xa)
    xb_full, device_full = device_kex(suite, owner.xa, CipherSuite.A128GCM, rand=seeded(5))
    xb_short, device_short = device_kex(suite, short_xa, CipherSuite.A128GCM, rand=seeded(5))
    assert xb_full == xb_short
    assert device_full.to_state() == device_short.to_state()

    # And the owner accepts a device point written the short way.
    for seed in range(20_000):
        xb, device = device_kex(suite, owner.xa, CipherSuite.A128GCM, rand=seeded(seed))
        if _ec_point(suite, xb)[coordinate][0] == 0:
            break
    else:
        pytest.fail("no device key with a leading zero coordinate found")
    short_xb = _short_form(*_ec_point(suite, xb))
    assert owner.derive(short_xb, CipherSuite.A128GCM).to_state() == device.to_state()


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"\x00\x20" + b"\x01" * 31,  # truncated X
        b"\x00\x01\x01\x00\x01\x01",  # no random length
        b"\x00\x01\x01\x00\x01\x01\x00\x00\xff",  # trailing byte
    ],
)
def test_ecdh_malformed_param(bad: bytes) -> None:
    with pytest.raises(MessageBodyError):
        device_kex(KexSuite.ECDH256, bad, CipherSuite.A128GCM)


def test_ecdh_point_not_on_curve() -> None:
    owner = OwnerKex.new(KexSuite.ECDH256, rand=seeded(1))
    x, y, rnd = _ec_point(KexSuite.ECDH256, owner.xa)
    bad_y = (int.from_bytes(y, "big") ^ 1).to_bytes(32, "big")
    with pytest.raises(InvalidMessageError):
        device_kex(KexSuite.ECDH256, _short_form(x, bad_y, rnd), CipherSuite.A128GCM)
    too_long = b"\x00\x21\x01" + x + b"\x00\x20" + y + b"\x00\x10" + rnd
    with pytest.raises(InvalidMessageError):
        device_kex(KexSuite.ECDH256, too_long, CipherSuite.A128GCM)
    # A P-384 point is not a P-256 one.
    p384 = OwnerKex.new(KexSuite.ECDH384, rand=seeded(1))
    with pytest.raises(InvalidMessageError):
        device_kex(KexSuite.ECDH256, p384.xa, CipherSuite.A128GCM)


def test_dh_minimal_public_values_and_padded_secret() -> None:
    # Exponents 3 (owner) and 5 (device): xA = 2^3, xB = 2^5, shared = 2^15, padded to 256 bytes.
    owner = OwnerKex.new(KexSuite.DHKEXid14, rand=fixed((3).to_bytes(32, "big")))
    assert owner.xa == b"\x08"
    xb, device = device_kex(
        KexSuite.DHKEXid14, owner.xa, CipherSuite.A128GCM, rand=fixed((5).to_bytes(32, "big"))
    )
    assert xb == b"\x20"
    expected = SessionCrypto.derive(CipherSuite.A128GCM, (2**15).to_bytes(256, "big"))
    assert device.to_state() == expected.to_state()
    assert owner.derive(xb, CipherSuite.A128GCM).to_state() == expected.to_state()
    # Leading zero bytes on the wire do not change the value.
    assert owner.derive(b"\x00\x00" + xb, CipherSuite.A128GCM).to_state() == expected.to_state()


@pytest.mark.parametrize("value", [0, 1, P14 - 1, P14, P14 + 1])
def test_dh_peer_value_out_of_range(value: int) -> None:
    blob = value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")
    with pytest.raises(InvalidMessageError):
        device_kex(KexSuite.DHKEXid14, blob, CipherSuite.A128GCM)
    owner = OwnerKex.new(KexSuite.DHKEXid14)
    with pytest.raises(InvalidMessageError):
        owner.derive(blob, CipherSuite.A128GCM)


def test_dh_bounds_accepted() -> None:
    for value in (2, P14 - 2):
        device_kex(KexSuite.DHKEXid14, value.to_bytes(256, "big"), CipherSuite.A128GCM)


def test_asymkex_values() -> None:
    key = rsa_key(2048)
    owner_random, device_random = b"\x0a" * 32, b"\x0b" * 32
    owner = OwnerKex.new(KexSuite.ASYMKEX2048, rand=fixed(owner_random))
    assert owner.xa == owner_random
    xb, device = device_kex(
        KexSuite.ASYMKEX2048,
        owner.xa,
        CipherSuite.COSEAES128CTR,
        owner_public_key=key.public_key(),
        rand=fixed(device_random),
    )
    assert len(xb) == 256
    # ShSe = DeviceRandom, ContextRand = OwnerRandom.
    expected = SessionCrypto.derive(CipherSuite.COSEAES128CTR, device_random, owner_random)
    assert device.to_state() == expected.to_state()
    assert (
        owner.derive(xb, CipherSuite.COSEAES128CTR, owner_private_key=key).to_state() == expected.to_state()
    )


def test_asymkex_failures() -> None:
    owner = OwnerKex.new(KexSuite.ASYMKEX2048)
    xb, _ = device_kex(
        KexSuite.ASYMKEX2048, owner.xa, CipherSuite.A128GCM, owner_public_key=rsa_key(2048).public_key()
    )
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(InvalidMessageError):
        owner.derive(xb, CipherSuite.A128GCM, owner_private_key=other)
    with pytest.raises(InvalidMessageError):
        owner.derive(xb[:-1], CipherSuite.A128GCM, owner_private_key=rsa_key(2048))
    with pytest.raises(FdoUsageError):
        owner.derive(xb, CipherSuite.A128GCM)
    with pytest.raises(MessageBodyError):
        device_kex(
            KexSuite.ASYMKEX2048,
            owner.xa[:-1],
            CipherSuite.A128GCM,
            owner_public_key=rsa_key(2048).public_key(),
        )
    with pytest.raises(UnsupportedError):  # the owner key is not RSA
        device_kex(KexSuite.ASYMKEX2048, owner.xa, CipherSuite.A128GCM)


# ----------------------------------------------------------------------------- envelopes


def test_a128gcm_bytes() -> None:
    _, _, owner, device = exchange(KexSuite.ECDH256, CipherSuite.A128GCM)
    nonce = bytes(range(12))
    plaintext = encode([b"hello", 1])
    body = owner.encrypt(plaintext, rand=fixed(nonce))
    prefix = bytes.fromhex("D0 83 43 A1 01 01 A1 05 4C")
    assert body.startswith(prefix + nonce)
    head = bstr_head(len(plaintext) + 16)
    assert body[len(prefix) + 12 :].startswith(head)
    ciphertext = body[len(prefix) + 12 + len(head) :]
    assert len(ciphertext) == len(plaintext) + 16
    aad = bytes.fromhex("83 68 45 6E 63 72 79 70 74 30 43 A1 01 01 40")
    sek, _ = session_keys(device)
    assert AESGCM(sek).decrypt(nonce, ciphertext, aad) == plaintext
    assert device.decrypt(body) == plaintext


def test_a256gcm_protected_header() -> None:
    _, _, owner, device = exchange(KexSuite.ECDH384, CipherSuite.A256GCM)
    body = owner.encrypt(b"\xa0", rand=fixed(b"\x01" * 12))
    assert body.startswith(bytes.fromhex("D0 83 43 A1 01 03 A1 05 4C") + b"\x01" * 12)
    aad = bytes.fromhex("83 68 45 6E 63 72 79 70 74 30 43 A1 01 03 40")
    assert AESGCM(session_keys(device)[0]).decrypt(b"\x01" * 12, body[-17:], aad) == b"\xa0"


@pytest.mark.parametrize(
    ("cipher", "mac_alg", "inner_alg", "mac_hash"),
    [
        (CipherSuite.COSEAES128CTR, "05", "39 FF FD", "sha256"),  # A128CTR -65534
        (CipherSuite.COSEAES128CBC, "05", "39 FF FA", "sha256"),  # A128CBC -65531
        (CipherSuite.COSEAES256CTR, "06", "39 FF FB", "sha384"),  # A256CTR -65532
        (CipherSuite.COSEAES256CBC, "06", "39 FF F8", "sha384"),  # A256CBC -65529
    ],
)
def test_etm_bytes(cipher: CipherSuite, mac_alg: str, inner_alg: str, mac_hash: str) -> None:
    _, _, owner, device = exchange(KexSuite.ECDH256, cipher)
    sek, svk = session_keys(device)
    iv = bytes(range(16, 32))
    plaintext = bytes(range(40))
    body = owner.encrypt(plaintext, rand=fixed(iv))
    if cipher in (CipherSuite.COSEAES128CTR, CipherSuite.COSEAES256CTR):
        encryptor = Cipher(algorithms.AES(sek), modes.CTR(iv)).encryptor()
        ciphertext = encryptor.update(plaintext) + encryptor.finalize()
    else:
        encryptor = Cipher(algorithms.AES(sek), modes.CBC(iv)).encryptor()
        ciphertext = encryptor.update(plaintext + bytes([8]) * 8) + encryptor.finalize()
    inner = bytes.fromhex(f"83 40 A2 01 {inner_alg} 05 50") + iv + bytes([0x58, len(ciphertext)]) + ciphertext
    protected = bytes.fromhex(f"A1 01 {mac_alg}")
    mac_structure = (
        bytes.fromhex("84 64") + b"MAC0" + b"\x43" + protected + b"\x40" + b"\x58" + bytes([len(inner)])
    )
    tag = hmac.new(svk, mac_structure + inner, mac_hash).digest()
    expected = (
        bytes.fromhex("D1 84 43")
        + protected
        + bytes.fromhex("A0 58")
        + bytes([len(inner)])
        + inner
        + bytes([0x58, len(tag)])
        + tag
    )
    assert body == expected
    assert body.startswith(bytes.fromhex(f"D1 84 43 A1 01 {mac_alg} A0 58"))
    assert device.decrypt(body) == plaintext


@pytest.mark.parametrize("cipher", list(CipherSuite))
def test_tampering_any_byte_is_rejected(cipher: CipherSuite) -> None:
    _, _, owner, device = exchange(KexSuite.ECDH256, cipher)
    body = owner.encrypt(encode(["ServiceInfo", b"\x00" * 20]))
    for i in range(len(body)):
        for mask in (0x01, 0x80):
            tampered = body[:i] + bytes([body[i] ^ mask]) + body[i + 1 :]
            with pytest.raises(PEER_FAULTS):
                device.decrypt(tampered)
    for cut in range(len(body)):
        with pytest.raises(PEER_FAULTS):
            device.decrypt(body[:cut])
    with pytest.raises(PEER_FAULTS):
        device.decrypt(body + b"\x00")


@pytest.mark.parametrize("sender", list(CipherSuite))
def test_other_suite_is_refused(sender: CipherSuite) -> None:
    sh_se = b"\x33" * 48
    body = SessionCrypto.derive(sender, sh_se).encrypt(b"\xa0")
    for receiver in CipherSuite:
        if receiver is not sender:
            with pytest.raises(InvalidMessageError):
                SessionCrypto.derive(receiver, sh_se).decrypt(body)


def _gcm_body(crypto: SessionCrypto, protected: bytes, plaintext: bytes, tag: int = 16) -> bytes:
    nonce = b"\x05" * 12
    ciphertext = AESGCM(session_keys(crypto)[0]).encrypt(
        nonce, plaintext, encode(["Encrypt0", protected, b""])
    )
    item = [protected, {5: nonce}, ciphertext]
    return encode(Tag(tag, item) if tag else item)


def test_gcm_alg_must_match_even_when_tag_verifies() -> None:
    crypto = SessionCrypto.derive(CipherSuite.A128GCM, b"\x01" * 32)
    assert crypto.decrypt(_gcm_body(crypto, encode({1: 1}), b"\xa0")) == b"\xa0"
    for protected in (encode({1: 3}), encode({}), b"", encode({1: "A128GCM"})):
        with pytest.raises(InvalidMessageError):
            crypto.decrypt(_gcm_body(crypto, protected, b"\xa0"))
    with pytest.raises(InvalidMessageError):  # untagged
        crypto.decrypt(_gcm_body(crypto, encode({1: 1}), b"\xa0", tag=0))
    with pytest.raises(PEER_FAULTS):  # wrong tag number
        crypto.decrypt(_gcm_body(crypto, encode({1: 1}), b"\xa0", tag=18))


def _etm_body(crypto: SessionCrypto, inner: bytes, mac_alg: int = 5) -> bytes:
    _, svk = session_keys(crypto)
    protected = encode({1: mac_alg})
    tag = hmac.new(svk, encode(["MAC0", protected, b"", inner]), "sha256").digest()
    return encode(Tag(17, [protected, {}, inner, tag]))


def test_etm_inner_header_checks_after_a_valid_mac() -> None:
    crypto = SessionCrypto.derive(CipherSuite.COSEAES128CTR, b"\x01" * 32)
    sek, _ = session_keys(crypto)
    iv = b"\x09" * 16
    encryptor = Cipher(algorithms.AES(sek), modes.CTR(iv)).encryptor()
    ciphertext = encryptor.update(b"\xa0") + encryptor.finalize()
    good = encode([b"", {1: -65534, 5: iv}, ciphertext])
    assert crypto.decrypt(_etm_body(crypto, good)) == b"\xa0"
    bad_inners = [
        encode([encode({}), {1: -65534, 5: iv}, ciphertext]),  # protected h'A0' (go rejects it)
        encode(Tag(16, [b"", {1: -65534, 5: iv}, ciphertext])),  # tagged inner
        encode([b"", {1: int(CipherSuite.COSEAES128CTR), 5: iv}, ciphertext]),  # FDO id as alg
        encode([b"", {1: -65531, 5: iv}, ciphertext]),  # CBC alg under a CTR suite
        encode([b"", {5: iv}, ciphertext]),  # no alg
    ]
    for inner in bad_inners:
        with pytest.raises(PEER_FAULTS):
            crypto.decrypt(_etm_body(crypto, inner))
    with pytest.raises(InvalidMessageError):  # MAC alg 6 under a SHA-256 suite
        crypto.decrypt(_etm_body(crypto, good, mac_alg=6))
    with pytest.raises(MessageBodyError):  # 12-byte IV
        crypto.decrypt(_etm_body(crypto, encode([b"", {1: -65534, 5: iv[:12]}, ciphertext])))


def test_etm_cbc_bad_padding() -> None:
    crypto = SessionCrypto.derive(CipherSuite.COSEAES128CBC, b"\x01" * 32)
    sek, _ = session_keys(crypto)
    iv = b"\x09" * 16
    encryptor = Cipher(algorithms.AES(sek), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(b"\x00" * 15 + b"\x11") + encryptor.finalize()
    with pytest.raises(InvalidMessageError):
        crypto.decrypt(_etm_body(crypto, encode([b"", {1: -65531, 5: iv}, ciphertext])))
    with pytest.raises(InvalidMessageError):
        crypto.decrypt(_etm_body(crypto, encode([b"", {1: -65531, 5: iv}, ciphertext[:15]])))


# ----------------------------------------------------------------------------- state and misc


def test_corrupt_state_is_an_internal_error() -> None:
    for data in (b"", b"\x80", encode([1, "ECDH256", b"x"]), encode([2, "ECDH256", b"", b""])):
        with pytest.raises(InternalError):
            OwnerKex.from_state(data)
    with pytest.raises(InternalError):
        OwnerKex.from_state(encode([1, "ECDH256", b"", b"\x00" * 32]))  # zero scalar
    for data in (b"", encode([1, 1, b"short", b""]), encode([1, 99, b"\x00" * 16, b""])):
        with pytest.raises(InternalError):
            SessionCrypto.from_state(data)


def test_repr_hides_secrets() -> None:
    owner, _, crypto, _ = exchange(KexSuite.ECDH256, CipherSuite.A128GCM)
    sek, _ = session_keys(crypto)
    assert sek.hex() not in repr(crypto) and "ECDH256" in repr(owner)


def test_suite_names() -> None:
    assert parse_kex_suite("ECDH384") is KexSuite.ECDH384
    assert parse_cipher_suite(-17760704) is CipherSuite.COSEAES128CTR
    with pytest.raises(UnsupportedError):
        parse_kex_suite("ECDH521")
    with pytest.raises(UnsupportedError):
        parse_cipher_suite(32)  # AES-CCM-64-128-128: not in go either
    with pytest.raises(MessageBodyError):
        parse_kex_suite(b"ECDH256")


ALL = set(KexSuite)
AT_LEAST_112 = ALL - {KexSuite.ASYMKEX3072}
AT_LEAST_128 = {KexSuite.DHKEXid15, KexSuite.ECDH256, KexSuite.ECDH384}


@pytest.mark.parametrize(
    ("owner_type", "bits", "allowed"),
    [
        # Every suite at least as strong as the owner key; ASYMKEX only with an RSA owner
        # key of its own size.
        (10, None, AT_LEAST_128),
        (11, None, {KexSuite.ECDH384}),
        (1, None, AT_LEAST_112),
        (5, 2048, AT_LEAST_112),
        (6, 2048, AT_LEAST_112),
        (5, 3072, AT_LEAST_128 | {KexSuite.ASYMKEX3072}),
        (6, 3072, AT_LEAST_128 | {KexSuite.ASYMKEX3072}),
        (5, 4096, set()),
        (99, None, set()),
    ],
)
def test_suite_allowed(owner_type: int, bits: int | None, allowed: set[KexSuite]) -> None:
    assert {s for s in KexSuite if suite_allowed(s, owner_type, bits)} == allowed


def test_stronger_suites_are_accepted() -> None:
    # go-fdo's owner completes TO2 for an RSA-2048 device with DHKEXid15 or ECDH256.
    for suite in (KexSuite.DHKEXid15, KexSuite.ECDH256, KexSuite.ECDH384):
        assert suite_allowed(suite, 1)
    assert suite_allowed(KexSuite.ECDH384, 10)  # a P-256 owner key, a P-384 exchange
    # ... but nothing weaker than the owner key, and no ASYMKEX of another size.
    assert not suite_allowed(KexSuite.DHKEXid14, 5, 3072)
    assert not suite_allowed(KexSuite.ECDH256, 11)
    assert not suite_allowed(KexSuite.ASYMKEX2048, 5, 3072)
    assert not suite_allowed(KexSuite.ASYMKEX3072, 1)
    assert not suite_allowed(KexSuite.ASYMKEX2048, 10)


def test_suite_allowed_needs_rsa_size() -> None:
    with pytest.raises(FdoUsageError):
        suite_allowed(KexSuite.DHKEXid14, 5)


# ----------------------------------------------------------------------------- Hypothesis


@given(cipher=st.sampled_from(list(CipherSuite)), body=st.binary(max_size=300))
def test_decrypt_arbitrary_bytes_raises_only_fdo_errors(cipher: CipherSuite, body: bytes) -> None:
    crypto = SessionCrypto.derive(cipher, b"\x01" * 32)
    try:
        crypto.decrypt(body)
    except FdoError:
        pass


@given(
    cipher=st.sampled_from(list(CipherSuite)),
    position=st.integers(min_value=0),
    replacement=st.binary(min_size=0, max_size=4),
)
def test_decrypt_mutated_bodies_raise_only_fdo_errors(
    cipher: CipherSuite, position: int, replacement: bytes
) -> None:
    crypto = SessionCrypto.derive(cipher, b"\x01" * 32)
    body = crypto.encrypt(encode([1, "x"]), rand=seeded(0))
    position %= len(body)
    mutated = body[:position] + replacement + body[position + len(replacement) :]
    try:
        plaintext = crypto.decrypt(mutated)
    except FdoError:
        return
    assert plaintext == encode([1, "x"])  # whatever still opens is the authentic message


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(suite=st.sampled_from(list(KexSuite)), xa=st.binary(max_size=400))
def test_device_kex_arbitrary_xa_raises_only_fdo_errors(suite: KexSuite, xa: bytes) -> None:
    owner_key = owner_rsa(suite)
    try:
        device_kex(
            suite, xa, CipherSuite.A128GCM, owner_public_key=owner_key.public_key() if owner_key else None
        )
    except FdoError:
        pass


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(suite=st.sampled_from(list(KexSuite)), xb=st.binary(max_size=400))
def test_owner_derive_arbitrary_xb_raises_only_fdo_errors(suite: KexSuite, xb: bytes) -> None:
    owner = OwnerKex.new(suite, rand=seeded(11))
    try:
        owner.derive(xb, CipherSuite.COSEAES256CBC, owner_private_key=owner_rsa(suite))
    except FdoError:
        pass


@given(cipher=st.sampled_from(list(CipherSuite)), plaintext=st.binary(max_size=2000))
def test_encrypt_decrypt_round_trip(cipher: CipherSuite, plaintext: bytes) -> None:
    crypto = SessionCrypto.derive(cipher, b"\x02" * 32)
    assert SessionCrypto.from_state(crypto.to_state()).decrypt(crypto.encrypt(plaintext)) == plaintext
