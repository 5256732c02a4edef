"""The HTTP client side: drive a core client machine against ``{base}/fdo/101/msg/{type}``.

Reference §1.1/§1.2: POST with ``Content-Type: application/cbor`` and a ``Content-Length``;
no ``Authorization`` on the first message, then echo the latest ``Authorization`` value
the server returned. A reply is accepted when the status is 200 and ``Message-Type`` is
present; ``Message-Type: 255`` (any status) or a non-2xx CBOR body is an ErrorMessage and
is handed to the machine, which raises :class:`~fdo.errors.PeerError`. When the machine
itself fails, an ErrorMessage is POSTed to ``/fdo/101/msg/255`` (best effort).
"""

from __future__ import annotations

import os
import ssl
import threading
import time
from types import TracebackType
from typing import Any, Self

import httpx

from fdo.errors import FdoError, PeerError
from fdo.machine import ClientMachine, Reply
from fdo.messages import ErrorMessage
from fdo.types import MsgType

CBOR = "application/cbor"
DEFAULT_MAX_BODY = 65535


class TransportError(Exception):
    """The HTTP exchange failed: connection error, bad status, missing header or oversized body."""


_CONTEXTS: dict[tuple[object, ...], ssl.SSLContext] = {}
_CONTEXTS_LOCK = threading.Lock()


def tls_verify(verify: bool | str) -> bool | ssl.SSLContext:
    """httpx's ``verify`` for True (httpx's default CAs, or ``SSL_CERT_FILE`` /
    ``SSL_CERT_DIR``), False, or a CA bundle path.

    Contexts are made once per process and CA source and then shared: loading a CA
    bundle costs some 20 ms of CPU (more on a device), and a device opens a client for
    TO1 and another for TO2 on every attempt. A bundle file that changes (by modification
    time) gets a new context.
    """
    if verify is False:
        return False
    if isinstance(verify, str):
        key: tuple[object, ...] = ("file", verify, os.stat(verify).st_mtime_ns)
    else:
        key = ("default", os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    with _CONTEXTS_LOCK:
        context = _CONTEXTS.get(key)
        if context is None:
            if isinstance(verify, str):
                context = ssl.create_default_context(cafile=verify)
            else:
                context = httpx.create_ssl_context(verify=True, trust_env=True)
            _CONTEXTS[key] = context
    return context


class FdoHttpClient:
    """An FDO HTTP client for one server base URL (e.g. ``http://rv.example:8041``)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        verify: bool | str = True,
        max_body: int = DEFAULT_MAX_BODY,
        client: httpx.Client | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_body = max_body
        self._own_client = client is None
        self._client = (
            client if client is not None else httpx.Client(timeout=timeout, verify=tls_verify(verify))
        )
        self.token: str | None = None

    def close(self) -> None:
        if self._own_client:
            self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def url(self, msg_type: int) -> str:
        return f"{self.base_url}/fdo/101/msg/{msg_type}"

    def run(self, machine: ClientMachine[Any]) -> None:
        """Run ``machine`` to completion; raises FdoError (PeerError included) or TransportError."""
        self.token = None
        last_received = 0
        try:
            msg: Reply | None = machine.start()
            while msg is not None:
                msg_type, body = msg
                reply_type, reply = self._exchange(msg_type, body)
                last_received = reply_type
                msg = machine.receive(reply_type, reply)
        except PeerError:
            raise
        except FdoError as exc:
            self._send_error(exc, last_received)
            raise

    # ------------------------------------------------------------------ internals

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": CBOR}
        if self.token is not None:
            headers["Authorization"] = self.token
        return headers

    def _exchange(self, msg_type: int, body: bytes) -> tuple[int, bytes]:
        try:
            with self._client.stream(
                "POST", self.url(msg_type), content=body, headers=self._headers()
            ) as response:
                data = self._read_limited(response)
        except httpx.HTTPError as exc:
            if _tls_verify_failed(exc):
                raise TransportError(
                    f"POST {self.url(msg_type)}: TLS certificate verification failed: {exc}"
                ) from exc
            raise TransportError(f"POST {self.url(msg_type)}: {type(exc).__name__}: {exc}") from exc
        auth = response.headers.get("Authorization")
        if auth:
            self.token = auth
        header_type = response.headers.get("Message-Type")
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if header_type == str(int(MsgType.ERROR)) or (not response.is_success and content_type == CBOR):
            return int(MsgType.ERROR), data
        if response.status_code != 200:
            raise TransportError(f"POST {self.url(msg_type)}: unexpected HTTP status {response.status_code}")
        if header_type is None:
            raise TransportError(f"POST {self.url(msg_type)}: response has no Message-Type header")
        try:
            reply_type = int(header_type)
        except ValueError:
            raise TransportError(f"POST {self.url(msg_type)}: bad Message-Type {header_type!r}") from None
        return reply_type, data

    def _read_limited(self, response: httpx.Response) -> bytes:
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise TransportError(f"response body of {length} bytes exceeds the {self.max_body}-byte limit")
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > self.max_body:
                raise TransportError(f"response body exceeds the {self.max_body}-byte limit")
            chunks.append(chunk)
        return b"".join(chunks)

    def _send_error(self, error: FdoError, prev_msg_type: int) -> None:
        """Tell the server we abort (reference §1.2); failures are ignored."""
        body = ErrorMessage.from_error(error, prev_msg_type, now=int(time.time())).encode()
        try:
            self._client.post(self.url(MsgType.ERROR), content=body, headers=self._headers())
        except httpx.HTTPError:
            pass


def _tls_verify_failed(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a failed server certificate check."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)
