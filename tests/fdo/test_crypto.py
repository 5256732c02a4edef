"""Keys, signatures and device certificates (fdo/crypto.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fdo.crypto import (
    PkEnc,
    PkType,
    PrivateKeyT,
    PublicKey,
    SigAlg,
    cert_der,
    common_name,
    generate_key,
    hash_alg_for,
    issue_device_cert,
    load_cert_chain,
    load_csr,
    load_private_key,
    load_public_key,
    make_ca,
    make_csr,
    private_key_to_pem,
    public_key_to_pem,
    sig_alg_for,
    sign,
    spki_der,
    verify,
    verify_cert_chain,
)
from fdo.errors import InvalidMessageError, MessageBodyError, SignatureError
from fdo.types import HashType

NOW = datetime(2026, 11, 25, tzinfo=UTC)
KINDS = ("ec256", "ec384", "rsa2048", "rsa3072")


@pytest.fixture(scope="module")
def keys() -> dict[str, PrivateKeyT]:
    return {kind: generate_key(kind) for kind in KINDS}


ALG_CASES = [
    ("ec256", SigAlg.ES256, 64),
    ("ec384", SigAlg.ES384, 96),
    ("rsa2048", SigAlg.RS256, 256),
    ("rsa3072", SigAlg.RS384, 384),
    ("rsa2048", SigAlg.PS256, 256),
    ("rsa3072", SigAlg.PS384, 384),
]


@pytest.mark.parametrize(("kind", "alg", "size"), ALG_CASES, ids=[a.name for _, a, _ in ALG_CASES])
def test_sign_verify_every_algorithm(keys: dict[str, PrivateKeyT], kind: str, alg: SigAlg, size: int) -> None:
    key = keys[kind]
    sig = sign(key, alg, b"to be signed")
    assert len(sig) == size  # ECDSA is raw r||s of fixed width, never DER
    verify(key.public_key(), alg, b"to be signed", sig, "test")
    with pytest.raises(SignatureError) as err:
        verify(key.public_key(), alg, b"to be signed!", sig, "test")
    assert err.value.code == 101
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    with pytest.raises(SignatureError):
        verify(key.public_key(), alg, b"to be signed", flipped, "test")


def test_algorithm_must_match_key(keys: dict[str, PrivateKeyT]) -> None:
    sig = sign(keys["ec256"], SigAlg.ES256, b"x")
    with pytest.raises(SignatureError):
        verify(keys["ec384"].public_key(), SigAlg.ES256, b"x", sig, "test")
    with pytest.raises(SignatureError):
        verify(keys["rsa2048"].public_key(), SigAlg.ES256, b"x", sig, "test")


def test_sig_alg_and_hash_choice(keys: dict[str, PrivateKeyT]) -> None:
    assert sig_alg_for(keys["ec256"]) == SigAlg.ES256
    assert sig_alg_for(keys["rsa3072"]) == SigAlg.RS384
    assert sig_alg_for(keys["rsa2048"], PkType.RSAPSS) == SigAlg.PS256
    # SHA-384 only when both keys are 384-class (go's rule).
    assert hash_alg_for(keys["ec384"].public_key(), keys["rsa3072"].public_key()) == HashType.SHA384
    assert hash_alg_for(keys["ec384"].public_key(), keys["ec256"].public_key()) == HashType.SHA256


@pytest.mark.parametrize("kind", KINDS)
def test_public_key_encodings(keys: dict[str, PrivateKeyT], kind: str) -> None:
    pub = keys[kind].public_key()
    x509_form = PublicKey.from_key(pub)
    assert x509_form.pk_enc == PkEnc.X509
    cose_form = PublicKey.from_key(pub, enc=PkEnc.COSEKEY)
    again = PublicKey.from_cbor_obj(cose_form.to_cbor_obj())
    assert again.same_key(pub) and again == cose_form
    ca = make_ca(keys[kind], "self", NOW)
    chain_form = PublicKey.from_key(pub, enc=PkEnc.X5CHAIN, chain=[ca])
    assert PublicKey.from_cbor_obj(chain_form.to_cbor_obj()).same_key(x509_form)


def test_public_key_type_must_match(keys: dict[str, PrivateKeyT]) -> None:
    body = PublicKey.from_key(keys["ec256"].public_key()).body
    with pytest.raises(InvalidMessageError):
        PublicKey(PkType.SECP384R1, PkEnc.X509, body)
    with pytest.raises(MessageBodyError):
        PublicKey(PkType.SECP256R1, PkEnc.X509, b"\x30\x00")


def test_rs_bstr_wrapped_x5chain_is_read(keys: dict[str, PrivateKeyT]) -> None:
    from fdo import codec

    ca = make_ca(keys["ec256"], "self", NOW)
    wrapped = PublicKey(PkType.SECP256R1, PkEnc.X5CHAIN, codec.encode([cert_der(ca)]))
    assert wrapped.same_key(keys["ec256"].public_key())


def test_pem_round_trip(keys: dict[str, PrivateKeyT]) -> None:
    for key in keys.values():
        loaded = load_private_key(private_key_to_pem(key))
        assert public_key_to_pem(loaded.public_key()) == public_key_to_pem(key.public_key())
        assert public_key_to_pem(load_public_key(public_key_to_pem(key.public_key()))) == public_key_to_pem(
            key.public_key()
        )
    with pytest.raises(MessageBodyError):
        load_private_key(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")


def _der_length(n: int) -> bytes:
    return bytes([n]) if n < 0x80 else bytes([0x81, n]) if n < 0x100 else b"\x82" + n.to_bytes(2, "big")


def _pkcs1(*values: int) -> bytes:
    """A PKCS#1 RSAPrivateKey (version 0, then ``values``) in DER, whatever ``values`` are:
    cryptography refuses to serialize parts that do not belong together."""
    body = b""
    for value in (0, *values):
        raw = value.to_bytes(value.bit_length() // 8 + 1, "big")
        body += b"\x02" + _der_length(len(raw)) + raw
    return b"\x30" + _der_length(len(body)) + body


def test_an_rsa_key_whose_parts_do_not_belong_together_is_refused() -> None:
    """RSA keys skip OpenSSL's slow check of their primes (fdo.crypto.load_private_key):
    a key that signs what its public key does not verify is still refused."""
    mine = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_numbers()
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_numbers()
    n, e = mine.public_numbers.n, mine.public_numbers.e
    good = _pkcs1(n, e, mine.d, mine.p, mine.q, mine.dmp1, mine.dmq1, mine.iqmp)
    loaded = load_private_key(good)
    assert isinstance(loaded, rsa.RSAPrivateKey) and loaded.private_numbers() == mine
    broken = {
        "another key's modulus": _pkcs1(
            other.public_numbers.n, e, mine.d, mine.p, mine.q, mine.dmp1, mine.dmq1, mine.iqmp
        ),
        "a damaged exponent": _pkcs1(n, e, mine.d + 2, mine.p, mine.q, mine.dmp1 + 2, mine.dmq1, mine.iqmp),
    }
    for what, der in broken.items():
        with pytest.raises(MessageBodyError, match="do not belong together"):
            load_private_key(der)
            pytest.fail(f"loaded a key with {what}")


def test_device_certificate_chain(keys: dict[str, PrivateKeyT]) -> None:
    ca_key, device_key = keys["ec384"], generate_key("ec256")
    ca = make_ca(ca_key, "Device CA", NOW)
    csr = load_csr(make_csr(device_key, "SN-1"))
    cert = issue_device_cert(ca_key, ca, csr.public_key(), "SN-1", NOW)  # type: ignore[arg-type]
    verify_cert_chain([cert, ca], trusted=[ca], now=NOW)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    other_ca = make_ca(keys["ec256"], "Other CA", NOW)
    with pytest.raises(SignatureError):
        verify_cert_chain([cert, ca], trusted=[other_ca])
    with pytest.raises(SignatureError):
        verify_cert_chain([cert, other_ca])
    with pytest.raises(InvalidMessageError):
        verify_cert_chain([cert, ca], now=NOW + timedelta(days=365 * 30))


def test_csr_signature_is_checked(keys: dict[str, PrivateKeyT]) -> None:
    der = bytearray(make_csr(keys["ec256"], "SN-2"))
    der[-5] ^= 0x01  # inside the signature
    with pytest.raises((SignatureError, MessageBodyError, InvalidMessageError)):
        load_csr(bytes(der))
    with pytest.raises(MessageBodyError):
        load_csr(b"not a csr")


def test_csr_with_another_version_is_a_body_error(keys: dict[str, PrivateKeyT]) -> None:
    """cryptography raises its own InvalidVersion for a CSR version other than v1 (0);
    found by the property tests (a DI AppStart with one byte changed)."""
    der = bytearray(make_csr(keys["ec256"], "SN-3"))
    at = der.index(b"\x02\x01\x00")  # CertificationRequestInfo.version INTEGER 0
    der[at + 2] = 1
    with pytest.raises(MessageBodyError, match="not a DER PKCS#10"):
        load_csr(bytes(der))


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("SN-1", "SN-1"),
        ("S" * 65, "S" * 64),
        ("é" * 40, "é" * 32),  # 2 bytes each: 64 bytes
        ("a" + "é" * 40, "a" + "é" * 31),  # never half a character
        ("😀" * 20, "😀" * 16),
        ("", "fdo-device"),
    ],
)
def test_common_name_fits_a_certificate(text: str, name: str) -> None:
    assert common_name(text) == name
    key, now = generate_key("ec256"), datetime.now(UTC)
    cert = issue_device_cert(key, make_ca(key, "CA", now), key.public_key(), name, now)
    assert cert.subject.rfc4514_string() == f"CN={name}"


def test_parsed_keys_and_certificates_are_reused_by_their_bytes() -> None:
    """A key or certificate seen before (the owner's key in every message, a device's
    chain at ProveDevice and Done) is parsed once; bad bytes are refused every time."""
    key = ec.generate_private_key(ec.SECP256R1())
    der = spki_der(key.public_key())
    first = PublicKey(PkType.SECP256R1, PkEnc.X509, der)
    again = PublicKey(PkType.SECP256R1, PkEnc.X509, bytes(bytearray(der)))  # equal, not identical
    assert again.key is first.key
    assert again.same_key(key.public_key())
    cert = make_ca(key, "cache test", datetime.now(UTC))
    cert_bytes = cert_der(cert)
    (a,), (b,) = load_cert_chain([cert_bytes]), load_cert_chain([bytes(bytearray(cert_bytes))])
    assert a is b and a == cert
    for _ in range(2):
        with pytest.raises(MessageBodyError):
            PublicKey(PkType.SECP256R1, PkEnc.X509, der[:-1])
        with pytest.raises(MessageBodyError):
            load_cert_chain([cert_bytes[:-1]])
