"""Errors of the FDO protocol core.

Every failure a peer can cause is an :class:`FdoError` carrying the FDO 1.1 error code
(spec §3.7 "ErrorMessage", reference ``fdo-protocol.md`` §1.4) that the serving side
puts in its ErrorMessage (type 255). Caller misuse (a programming error on our side)
raises :class:`FdoUsageError` instead, as h11 splits ``RemoteProtocolError`` from
``LocalProtocolError``: it is never reported to a peer as the peer's fault.

Error text never contains key material, HMAC secrets or tokens.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """EMErrorCode values of spec §3.7."""

    INVALID_JWT_TOKEN = 1
    INVALID_OWNERSHIP_VOUCHER = 2
    INVALID_OWNER_SIGN_BODY = 3
    INVALID_IP_ADDRESS = 4
    INVALID_GUID = 5
    RESOURCE_NOT_FOUND = 6
    MESSAGE_BODY_ERROR = 100
    INVALID_MESSAGE_ERROR = 101
    CRED_REUSE_ERROR = 102
    INTERNAL_SERVER_ERROR = 500


class FdoError(Exception):
    """A protocol failure that maps to an FDO ErrorMessage code."""

    code: ErrorCode = ErrorCode.INVALID_MESSAGE_ERROR

    def __init__(self, message: str, *, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class MessageBodyError(FdoError):
    """The bytes do not decode, or decode to the wrong shape (code 100)."""

    code = ErrorCode.MESSAGE_BODY_ERROR


class InvalidMessageError(FdoError):
    """The message decodes but a nonce, hash, signature or index check fails (code 101)."""

    code = ErrorCode.INVALID_MESSAGE_ERROR


class SignatureError(InvalidMessageError):
    """A signature does not verify."""


class HashMismatchError(InvalidMessageError):
    """A hash or HMAC does not match the data it covers."""


class NonceMismatchError(InvalidMessageError):
    """A nonce does not echo the one that was sent."""


class UnsupportedError(FdoError):
    """An algorithm, key type, suite or version this implementation does not support."""

    code = ErrorCode.MESSAGE_BODY_ERROR


class InvalidVoucherError(FdoError):
    """An ownership voucher fails verification (code 2).

    ``check`` names the failing check (e.g. ``"entry[2].signature"``) so tools can
    report it.
    """

    code = ErrorCode.INVALID_OWNERSHIP_VOUCHER

    def __init__(self, message: str, *, check: str, code: ErrorCode | None = None) -> None:
        super().__init__(message, code=code)
        self.check = check


class InvalidOwnerSignBodyError(FdoError):
    """TO0.OwnerSign's to1d does not verify (code 3)."""

    code = ErrorCode.INVALID_OWNER_SIGN_BODY


class InvalidIpAddressError(FdoError):
    """TO0.OwnerSign's to1d names an owner address that cannot be reached (code 4)."""

    code = ErrorCode.INVALID_IP_ADDRESS


class InvalidGuidError(FdoError):
    """A GUID does not match (code 5)."""

    code = ErrorCode.INVALID_GUID


class ResourceNotFoundError(FdoError):
    """No record for this GUID (code 6)."""

    code = ErrorCode.RESOURCE_NOT_FOUND


class InvalidTokenError(FdoError):
    """Missing, unknown or expired session token (code 1)."""

    code = ErrorCode.INVALID_JWT_TOKEN


class UnexpectedMessageError(FdoError):
    """A message arrived that the state machine does not accept in its current state."""

    code = ErrorCode.MESSAGE_BODY_ERROR


class CredReuseError(FdoError):
    """The device refuses credential reuse (code 102)."""

    code = ErrorCode.CRED_REUSE_ERROR


class InternalError(FdoError):
    """A failure on this side that is not the peer's fault (code 500)."""

    code = ErrorCode.INTERNAL_SERVER_ERROR


class PeerError(FdoError):
    """The peer sent an ErrorMessage (type 255); ``code`` is the peer's code.

    Unknown codes are kept as plain ints, as python-fido2 keeps unknown CTAP codes.
    """

    def __init__(self, message: str, *, peer_code: int, prev_msg_type: int) -> None:
        try:
            code: ErrorCode | None = ErrorCode(peer_code)
        except ValueError:
            code = None
        super().__init__(message, code=code or ErrorCode.INTERNAL_SERVER_ERROR)
        self.peer_code = peer_code
        self.prev_msg_type = prev_msg_type


class FdoUsageError(Exception):
    """Caller misuse of the core (a bug on our side, never reported as the peer's fault)."""
