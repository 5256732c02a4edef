"""Pieces both TO2 roles share."""

from __future__ import annotations

from fdo import codec


def unwrap_plaintext(plaintext: bytes) -> bytes:
    """The message CBOR inside a decrypted TO2 body.

    The reference (§6.3) and astarte's device encrypt the message CBOR itself, and
    astarte's device decodes the decrypted bytes as the message directly
    (``client.rs`` ``parse_enc_msg``); its end-to-end test runs against go-fdo-server,
    so go's owner reads and writes that bare form. go-fdo's ``cose.Encrypt0.Encrypt``
    marshals ``cbor.NewByteWrap(payload)``, which reads as if it could put that CBOR
    inside a byte string; no TO2 message is a byte string, so a plaintext that is one
    is unwrapped: both forms are read, the bare one is written.
    """
    if plaintext and plaintext[0] >> 5 == 2:
        inner = codec.decode(plaintext)
        if isinstance(inner, bytes):
            return inner
    return plaintext
