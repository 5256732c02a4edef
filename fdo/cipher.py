"""Session encryption for TO2 messages 64-71: the KDF and the COSE envelopes (spec §3.6.4-§3.6.5).

Reference: ``fdo-protocol.md`` §6.2-§6.4. The key exchange (:mod:`fdo.kex`) ends in a
shared secret ShSe; :func:`kdf` turns it into session keys and :class:`SessionCrypto`
wraps each message body in one of two envelopes, chosen by the cipher suite that the
device named in TO2.HelloDevice:

* **AEAD** (A128GCM, A192GCM, A256GCM)::

      #6.16([ bstr .cbor {1: suite id}, {5: nonce (12 B)}, ciphertext ‖ tag ])
      AAD = CBOR(["Encrypt0", protected bstr, h''])

  The suites every public implementation shares (go, rs, java, conformance tool).

* **Encrypt-then-MAC** (COSEAES128CBC/CTR, COSEAES256CBC/CTR), in **go-fdo's variant**::

      #6.17([ bstr .cbor {1: 5 | 6}, {}, bstr .cbor Inner, HMAC tag ])
      Inner = [ h'', {1: RFC 9459 alg, 5: IV (16 B)}, ciphertext ]        ; untagged
      tag   = HMAC(SVK, CBOR(["MAC0", protected bstr, h'', Inner bstr]))

  go, java and the conformance tool disagree on the key split, the SVK length, where
  the inner algorithm goes and what the MAC covers; rs has no ETM at all. go's variant
  (``kex/crypter.go``, ``cose/encrypt*.go``, ``cose/mac*.go``) is the only one with a
  maintained peer we can onboard against, so it is the one implemented: KDF output is
  SEK ‖ SVK (SEK first); SVK is 16 B for HMAC-SHA256 and 32 B for HMAC-SHA384 (go's
  ``MacAlgorithm.KeySize``); the inner algorithm is A128CTR -65534, A256CTR -65532,
  A128CBC -65531 or A256CBC -65529 in the *unprotected* inner header; a fresh random
  16-byte IV per message; CTR counts over the whole 128-bit block (``modes.CTR``); CBC
  pads with PKCS#7.

Design: one immutable :class:`SessionCrypto` per session, built from SEK/SVK and
serialisable (:meth:`SessionCrypto.to_state`) so an owner worker can resume a session
another worker started. Randomness (nonces, IVs) comes from a ``rand`` parameter.
Everything a peer can get wrong raises :class:`~fdo.errors.MessageBodyError` (shape) or
:class:`~fdo.errors.InvalidMessageError` (algorithm, tag or MAC); ``cryptography``
exceptions never escape. MACs are checked over the bytes received, not a re-encoding
(for go's deterministic encoding the two are the same bytes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fdo.codec import Tag, as_bytes, as_int, as_list, as_map, decode, encode, encode_state
from fdo.errors import FdoError, FdoUsageError, InternalError, InvalidMessageError, UnsupportedError
from fdo.types import Rand, hmac_digest, hmac_matches

COSE_ENCRYPT0_TAG: Final = 16
COSE_MAC0_TAG: Final = 17
_ALG: Final = 1  # COSE header label "alg"
_IV: Final = 5  # COSE header label "IV"
_GCM_NONCE_LEN: Final = 12
_GCM_TAG_LEN: Final = 16
_ETM_IV_LEN: Final = 16
_STATE_VERSION: Final = 1


class CipherSuite(IntEnum):
    """TO2.HelloDevice cipherSuiteName values this implementation supports (spec §3.6.5)."""

    A128GCM = 1
    A192GCM = 2
    A256GCM = 3
    COSEAES128CBC = -17760703
    COSEAES128CTR = -17760704
    COSEAES256CBC = -17760705
    COSEAES256CTR = -17760706


def parse_cipher_suite(value: object) -> CipherSuite:
    """Map a received cipher suite id to :class:`CipherSuite` (UnsupportedError if unknown)."""
    suite_id = as_int(value, "cipherSuite")
    try:
        return CipherSuite(suite_id)
    except ValueError:
        raise UnsupportedError(f"unsupported cipher suite {suite_id}") from None


@dataclass(frozen=True, slots=True)
class _Params:
    sek_len: int
    svk_len: int  # 0 for the AEAD suites
    prf: str  # KDF PRF hash (HMAC-<prf>); also the ETM MAC hash
    mac_alg: int = 0  # COSE HMAC alg of the outer Mac0 (ETM only)
    inner_alg: int = 0  # RFC 9459 alg of the inner Encrypt0 (ETM only)
    cbc: bool = False


_PARAMS: Final[dict[CipherSuite, _Params]] = {
    CipherSuite.A128GCM: _Params(16, 0, "sha256"),
    CipherSuite.A192GCM: _Params(24, 0, "sha256"),
    # SHA-256 for A256GCM too: go, rs, java and conf all do so (fdo-protocol.md §6.2).
    CipherSuite.A256GCM: _Params(32, 0, "sha256"),
    CipherSuite.COSEAES128CTR: _Params(16, 16, "sha256", mac_alg=5, inner_alg=-65534),
    CipherSuite.COSEAES128CBC: _Params(16, 16, "sha256", mac_alg=5, inner_alg=-65531, cbc=True),
    CipherSuite.COSEAES256CTR: _Params(32, 32, "sha384", mac_alg=6, inner_alg=-65532),
    CipherSuite.COSEAES256CBC: _Params(32, 32, "sha384", mac_alg=6, inner_alg=-65529, cbc=True),
}

_KDF_LABEL_CONTEXT: Final = b"FIDO-KDF\x00AutomaticOnboardTunnel"
_HASH_LEN: Final = {"sha256": 32, "sha384": 48, "sha512": 64}


def kdf(sh_se: bytes, context_rand: bytes, length: int, hash_name: str = "sha256") -> bytes:
    """NIST SP 800-108 counter-mode KDF with FDO's parameters (spec §3.6.4).

    ``K(i) = HMAC-<hash_name>(ShSe, [i]_1 ‖ "FIDO-KDF" ‖ 0x00 ‖ "AutomaticOnboardTunnel"
    ‖ ContextRand ‖ [L]_2)`` with a one-byte counter from 1 and L the output length in
    *bits* (2 bytes, big-endian); the result is the first ``length`` bytes of
    K(1) ‖ K(2) ‖ …. ``length`` is in bytes.
    """
    hash_len = _HASH_LEN.get(hash_name)
    if hash_len is None:
        raise FdoUsageError(f"unsupported KDF hash {hash_name!r}")
    bits = length * 8
    rounds = -(-length // hash_len)
    if length <= 0 or bits > 0xFFFF or rounds > 0xFF:
        raise FdoUsageError(f"KDF output length {length} out of range")
    suffix = _KDF_LABEL_CONTEXT + context_rand + bits.to_bytes(2, "big")
    out = b"".join(hmac_digest(sh_se, bytes((i,)) + suffix, hash_name) for i in range(1, rounds + 1))
    return out[:length]


# Protected headers and (for AEAD) the Enc_structure AAD are fixed per suite.
_PROTECTED: Final[dict[CipherSuite, bytes]] = {
    suite: encode({_ALG: params.mac_alg if params.svk_len else int(suite)})
    for suite, params in _PARAMS.items()
}
_AAD: Final[dict[CipherSuite, bytes]] = {
    suite: encode(["Encrypt0", _PROTECTED[suite], b""])
    for suite, params in _PARAMS.items()
    if not params.svk_len
}


def _mac0_structure(protected: bytes, payload: bytes) -> bytes:
    """What COSE_Mac0's tag covers (RFC 9052 §6.3; no external AAD)."""
    return encode(["MAC0", protected, b"", payload])


class SessionCrypto:
    """The TO2 session keys and the envelope of one cipher suite (spec §3.6.5).

    ``encrypt`` returns a whole message body (a tagged COSE structure); ``decrypt``
    takes one and returns the plaintext bytes, normally the CBOR of the inner message.
    """

    __slots__ = ("cipher", "_params", "_sek", "_svk", "_aead", "_protected", "_aad")

    cipher: CipherSuite

    def __init__(self, cipher: CipherSuite, sek: bytes, svk: bytes = b"") -> None:
        cipher = parse_cipher_suite(cipher)
        params = _PARAMS[cipher]
        if len(sek) != params.sek_len or len(svk) != params.svk_len:
            raise FdoUsageError(f"wrong key lengths for cipher suite {cipher.name}")
        self.cipher = cipher
        self._params = params
        self._sek = bytes(sek)
        self._svk = bytes(svk)
        self._aead = None if params.svk_len else AESGCM(self._sek)
        self._protected = _PROTECTED[cipher]
        self._aad = _AAD.get(cipher, b"")

    @classmethod
    def derive(cls, cipher: CipherSuite, sh_se: bytes, context_rand: bytes = b"") -> SessionCrypto:
        """Run the KDF over ShSe/ContextRand and split the output SEK ‖ SVK (SEVK for AEAD)."""
        params = _PARAMS[parse_cipher_suite(cipher)]
        keys = kdf(sh_se, context_rand, params.sek_len + params.svk_len, params.prf)
        return cls(cipher, keys[: params.sek_len], keys[params.sek_len :])

    def __repr__(self) -> str:  # never print keys
        return f"SessionCrypto({self.cipher.name})"

    # ------------------------------------------------------------------ encrypt

    def encrypt(self, plaintext: bytes, *, rand: Rand = os.urandom) -> bytes:
        """Encrypt ``plaintext`` and return the encoded #6.16 (AEAD) or #6.17 (ETM) body."""
        if self._aead is not None:
            nonce = _draw(rand, _GCM_NONCE_LEN)
            ciphertext = self._aead.encrypt(nonce, plaintext, self._aad)
            return encode(Tag(COSE_ENCRYPT0_TAG, [self._protected, {_IV: nonce}, ciphertext]))
        params = self._params
        iv = _draw(rand, _ETM_IV_LEN)
        if params.cbc:
            pad = 16 - len(plaintext) % 16
            encryptor = Cipher(algorithms.AES(self._sek), modes.CBC(iv)).encryptor()
            ciphertext = encryptor.update(plaintext + bytes((pad,)) * pad) + encryptor.finalize()
        else:
            encryptor = Cipher(algorithms.AES(self._sek), modes.CTR(iv)).encryptor()
            ciphertext = encryptor.update(plaintext) + encryptor.finalize()
        inner = encode([b"", {_ALG: params.inner_alg, _IV: iv}, ciphertext])
        tag = self._mac(self._protected, inner)
        return encode(Tag(COSE_MAC0_TAG, [self._protected, {}, inner, tag]))

    def _mac(self, protected: bytes, payload: bytes) -> bytes:
        return hmac_digest(self._svk, _mac0_structure(protected, payload), self._params.prf)

    # ------------------------------------------------------------------ decrypt

    def decrypt(self, body: bytes) -> bytes:
        """Check and decrypt a body made by :meth:`encrypt` (or a peer) under this suite.

        Raises MessageBodyError for malformed structures and InvalidMessageError for a
        wrong algorithm, envelope kind, tag or MAC.
        """
        expected = COSE_MAC0_TAG if self._aead is None else COSE_ENCRYPT0_TAG
        obj = decode(body)
        if not isinstance(obj, Tag) or obj.tag not in (COSE_ENCRYPT0_TAG, COSE_MAC0_TAG):
            raise InvalidMessageError("encrypted body: expected a tagged COSE_Encrypt0 or COSE_Mac0")
        if obj.tag != expected:
            raise InvalidMessageError(
                f"encrypted body: COSE tag {obj.tag} does not match cipher suite {self.cipher.name}"
            )
        if self._aead is not None:
            return self._open_aead(self._aead, obj.value)
        return self._open_etm(obj.value)

    def _open_aead(self, aead: AESGCM, value: object) -> bytes:
        protected, unprotected, ciphertext = as_list(value, "COSE_Encrypt0", 3)
        protected = as_bytes(protected, "COSE_Encrypt0.protected")
        _check_alg(protected, int(self.cipher), "COSE_Encrypt0")
        nonce = as_bytes(
            as_map(unprotected, "COSE_Encrypt0.unprotected").get(_IV),
            "COSE_Encrypt0 IV",
            _GCM_NONCE_LEN,
        )
        ciphertext = as_bytes(ciphertext, "COSE_Encrypt0.ciphertext")
        if len(ciphertext) < _GCM_TAG_LEN:
            raise InvalidMessageError("COSE_Encrypt0: ciphertext shorter than the GCM tag")
        # The AAD covers the protected bytes as received.
        aad = self._aad if protected == self._protected else encode(["Encrypt0", protected, b""])
        try:
            return aead.decrypt(nonce, ciphertext, aad)
        except (InvalidTag, ValueError):
            raise InvalidMessageError("COSE_Encrypt0: authentication tag does not verify") from None

    def _open_etm(self, value: object) -> bytes:
        params = self._params
        protected, unprotected, payload, tag = as_list(value, "COSE_Mac0", 4)
        protected = as_bytes(protected, "COSE_Mac0.protected")
        as_map(unprotected, "COSE_Mac0.unprotected")
        payload = as_bytes(payload, "COSE_Mac0.payload")
        tag = as_bytes(tag, "COSE_Mac0.tag")
        _check_alg(protected, params.mac_alg, "COSE_Mac0")
        if not hmac_matches(self._svk, _mac0_structure(protected, payload), self._params.prf, tag):
            raise InvalidMessageError("COSE_Mac0: MAC does not verify")
        # Authenticated from here on: the rest is checked for shape, not forgery.
        inner_protected, inner_unprotected, ciphertext = as_list(decode(payload), "inner COSE_Encrypt0", 3)
        if as_bytes(inner_protected, "inner COSE_Encrypt0.protected") != b"":
            raise InvalidMessageError("inner COSE_Encrypt0: protected header must be empty")
        header = as_map(inner_unprotected, "inner COSE_Encrypt0.unprotected")
        if header.get(_ALG) != params.inner_alg or isinstance(header.get(_ALG), bool):
            raise InvalidMessageError(f"inner COSE_Encrypt0: algorithm does not match {self.cipher.name}")
        iv = as_bytes(header.get(_IV), "inner COSE_Encrypt0 IV", _ETM_IV_LEN)
        ciphertext = as_bytes(ciphertext, "inner COSE_Encrypt0.ciphertext")
        if not params.cbc:
            decryptor = Cipher(algorithms.AES(self._sek), modes.CTR(iv)).decryptor()
            return decryptor.update(ciphertext) + decryptor.finalize()
        if not ciphertext or len(ciphertext) % 16:
            raise InvalidMessageError("inner COSE_Encrypt0: CBC ciphertext is not whole blocks")
        decryptor = Cipher(algorithms.AES(self._sek), modes.CBC(iv)).decryptor()
        padded = decryptor.update(ciphertext) + decryptor.finalize()
        pad = padded[-1]
        if not 1 <= pad <= 16 or padded[-pad:] != bytes((pad,)) * pad:
            raise InvalidMessageError("inner COSE_Encrypt0: bad CBC padding")
        return padded[:-pad]

    # ------------------------------------------------------------------ state

    def to_state(self) -> bytes:
        """Serialise the session keys (secret material: store it as such)."""
        return encode_state([_STATE_VERSION, int(self.cipher), self._sek, self._svk])

    @classmethod
    def from_state(cls, data: bytes) -> SessionCrypto:
        """Rebuild a session from :meth:`to_state` output (InternalError if corrupt)."""
        try:
            version, cipher, sek, svk = as_list(decode(data), "session state", 4)
            if version != _STATE_VERSION:
                raise InternalError("session state: unknown version")
            return cls(
                parse_cipher_suite(cipher),
                as_bytes(sek, "session state SEK"),
                as_bytes(svk, "session state SVK"),
            )
        except (FdoError, FdoUsageError):
            raise InternalError("stored session state is corrupt") from None


def _check_alg(protected: bytes, expected: int, what: str) -> None:
    header = as_map(decode(protected), f"{what}.protected") if protected else {}
    alg = header.get(_ALG)
    if alg is None:
        raise InvalidMessageError(f"{what}: protected header lacks the algorithm")
    if isinstance(alg, bool) or alg != expected:
        raise InvalidMessageError(f"{what}: algorithm {alg!r} is not the negotiated one ({expected})")


def _draw(rand: Rand, size: int) -> bytes:
    data = rand(size)
    if len(data) != size:
        raise FdoUsageError(f"random source returned {len(data)} bytes, wanted {size}")
    return bytes(data)
