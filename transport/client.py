"""The HTTP client side: drive a core client machine against ``{base}/fdo/101/msg/{type}``.

Reference §1.1/§1.2: POST with ``Content-Type: application/cbor`` and a ``Content-Length``;
no ``Authorization`` on the first message, then echo the latest ``Authorization`` value
the server returned. A reply is accepted when the status is 200 and ``Message-Type`` is
present; ``Message-Type: 255`` (any status) or a non-2xx CBOR body is an ErrorMessage and
is handed to the machine, which raises :class:`~fdo.errors.PeerError`. When the machine
itself fails, an ErrorMessage is POSTed to ``/fdo/101/msg/255`` (best effort).

The HTTP/1.1 is :mod:`h11`'s (python-hyper's sans-I/O HTTP/1.1: it writes the request,
reads the reply and says whether the connection is kept) over a :mod:`socket` of this
module's (see :class:`_H11Carrier`), one kept-alive connection per client, as a device
runs one exchange at a time: the device's process loads neither httpx nor
:mod:`http.client`. What httpx did for this client before is kept: TLS verification
with the default CAs (``SSL_CERT_FILE`` / ``SSL_CERT_DIR``, else certifi's bundle when
installed, else the system's), a CA bundle file, or none; one timeout for connecting and for each read and
write; redirects are not followed (a 3xx is an unexpected status); and the proxies of
the environment (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``, upper or
lower case, as httpx read them: an ``http://`` proxy forwards http requests and tunnels
https ones with CONNECT). A connection the server closed while idle is noticed before
the next request and opened again. An ``httpx.Client`` may be given instead (the tests
pass FastAPI's TestClient); httpx is then what carries the messages.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self

import h11

from fdo.errors import FdoError, PeerError
from fdo.machine import ClientMachine, Reply
from fdo.messages import ErrorMessage
from fdo.types import MsgType

if TYPE_CHECKING:
    import socket
    import ssl

    import httpx

CBOR = "application/cbor"
DEFAULT_MAX_BODY = 65535
#: Sent on every request of the standard library's client (httpx sent its own name).
USER_AGENT = "fdo-bootc"


class TransportError(Exception):
    """The HTTP exchange failed: connection error, bad status, missing header or oversized body."""


# ---------------------------------------------------------------------------- TLS

_CONTEXTS: dict[tuple[object, ...], ssl.SSLContext] = {}
_CONTEXTS_LOCK = threading.Lock()


def tls_verify(verify: bool | str) -> bool | ssl.SSLContext:
    """The TLS context for ``verify``: True (the default CAs: ``SSL_CERT_FILE`` or
    ``SSL_CERT_DIR`` when set, else certifi's bundle when installed, as httpx chose them,
    else the system's), a CA bundle path, or False (no verification: returned as is).

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
            context = _CONTEXTS[key] = _make_context(verify)
    return context


def _make_context(verify: bool | str) -> ssl.SSLContext:
    import ssl

    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    try:
        import certifi
    except ImportError:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


def _no_verify_context() -> ssl.SSLContext:
    """The context of ``verify=False``: TLS without checking the server (one per process)."""
    with _CONTEXTS_LOCK:
        context = _CONTEXTS.get(("none",))
        if context is None:
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            _CONTEXTS[("none",)] = context
    return context


def _tls_verify_failed(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a failed server certificate check."""
    import sys

    ssl = sys.modules.get("ssl")  # never loaded when no TLS was used
    seen: BaseException | None = exc
    while seen is not None:
        if ssl is not None and isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)


def _failure(url: str, exc: BaseException) -> TransportError:
    if _tls_verify_failed(exc):
        return TransportError(f"POST {url}: TLS certificate verification failed: {exc}")
    if isinstance(exc, _BadResponse):
        return TransportError(f"POST {url}: {exc}")
    if isinstance(exc, h11.RemoteProtocolError):
        return TransportError(f"POST {url}: malformed reply: {exc}")
    if isinstance(exc, h11.LocalProtocolError):  # e.g. a token with a line break
        return TransportError(f"POST {url}: invalid request: {exc}")
    return TransportError(f"POST {url}: {type(exc).__name__}: {exc}")


# ---------------------------------------------------------------------------- one exchange


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    message_type: str | None
    authorization: str | None
    content_type: str | None
    body: bytes
    retry_after: str | None = None

    @classmethod
    def of(cls, status: int, headers: _Headers, body: bytes) -> _Response:
        get = headers.get
        return cls(
            status, get("Message-Type"), get("Authorization"), get("Content-Type"), body, get("Retry-After")
        )


class _Headers(Protocol):
    """Case-insensitive header look-up: http.client's and httpx's headers both are."""

    def get(self, name: str, /) -> str | None: ...


def _read_limited(length: str | None, chunks: Iterable[bytes], max_body: int) -> bytes:
    if length is not None and length.isdigit() and int(length) > max_body:
        raise TransportError(f"response body of {length} bytes exceeds the {max_body}-byte limit")
    out: list[bytes] = []
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > max_body:
            raise TransportError(f"response body exceeds the {max_body}-byte limit")
        out.append(chunk)
    return b"".join(out)


class _Carrier(Protocol):
    """Posts one message and reads the reply (at most ``max_body`` bytes)."""

    def post(self, url: str, body: bytes, headers: dict[str, str], max_body: int) -> _Response: ...

    def close(self) -> None: ...


class _HttpxCarrier:
    """Over a caller's ``httpx.Client`` (not closed here: the caller owns it)."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def post(self, url: str, body: bytes, headers: dict[str, str], max_body: int) -> _Response:
        import httpx

        try:
            with self.client.stream("POST", url, content=body, headers=headers) as response:
                data = _read_limited(response.headers.get("Content-Length"), response.iter_bytes(), max_body)
        except httpx.HTTPError as exc:
            raise _failure(url, exc) from exc
        return _Response.of(response.status_code, response.headers, data)

    def close(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class _Proxy:
    host: str
    port: int
    authorization: str | None  # Proxy-Authorization value, from the proxy URL's user info


#: The most of a reply's head h11 buffers (http.client's limit for one line), its most
#: header fields (http.client's), and how much is read from the socket at a time.
_MAX_HEAD = 65536
_MAX_HEADERS = 100
_READ_SIZE = 65536


class _BadResponse(Exception):
    """The peer's reply is not HTTP/1.1 as h11 reads it (or it never came)."""


class _H11Carrier:
    """One kept-alive HTTP/1.1 connection to the server (or its proxy), on a socket.

    :mod:`h11` does the HTTP: it writes the request (checking header names and values
    and the target) and reads the reply (status line, header fields with their limits,
    a body framed by Content-Length, chunked or ending with the connection, interim 1xx
    replies) and says whether the connection may carry the next request. This class
    does the rest: the socket, TLS (:mod:`ssl`, loaded for https only), the proxy and
    its CONNECT tunnel, the timeout, and the body limit, read no further than
    ``max_body``. :mod:`http.client` would load the :mod:`email` parser and, even for
    http, :mod:`ssl` (2 MB on a device).
    """

    def __init__(self, *, timeout: float, verify: bool | str) -> None:
        self.timeout = timeout
        self.verify = verify
        self._proxies = _environment_proxies()
        self._sock: socket.socket | None = None
        self._conn: h11.Connection | None = None
        self._origin: tuple[str, str, int] | None = None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._conn = None

    def post(self, url: str, body: bytes, headers: dict[str, str], max_body: int) -> _Response:
        try:
            scheme, host, port, target, proxy = _route(url, self._proxies)
            fields = [("Host", _host_header(host, port, scheme)), *headers.items()]
            fields += [("User-Agent", USER_AGENT), ("Accept", "*/*"), ("Content-Length", str(len(body)))]
            if proxy is not None and scheme == "http":
                target = url  # a forward proxy takes the absolute URL
                if proxy.authorization:
                    fields.append(("Proxy-Authorization", proxy.authorization))
            request = h11.Request(method="POST", target=target, headers=fields)  # checked here
            origin = (scheme, host, port)
            if self._sock is not None and (origin != self._origin or _closed_by_peer(self._sock)):
                self.close()
            if self._sock is None:
                self._connect(scheme, host, port, proxy)
                self._origin = origin
            sock, conn = self._sock, self._conn
            assert sock is not None and conn is not None  # noqa: S101 - just connected
            sock.sendall(_send(conn, request, h11.Data(data=body), h11.EndOfMessage()))
            response = _final_response(conn, sock)
            fields_in = {name.decode(): value.decode("latin-1") for name, value in reversed(response.headers)}
            data = _read_body(conn, sock, fields_in.get("content-length"), max_body)
        except (TransportError, KeyboardInterrupt, SystemExit):
            self.close()
            raise
        except (OSError, ValueError, h11.ProtocolError, _BadResponse) as exc:
            self.close()
            raise _failure(url, exc) from exc
        # Kept alive when the reply and HTTP/1.1 allow it, the server has not closed its
        # side (a body that ended with the connection) and sent nothing past the reply.
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE and conn.trailing_data == (b"", False):
            conn.start_next_cycle()
        else:
            self.close()
        get = fields_in.get  # names in lower case; the first of repeated ones
        return _Response(
            response.status_code,
            get("message-type"),
            get("authorization"),
            get("content-type"),
            data,
            get("retry-after"),
        )

    def _connect(self, scheme: str, host: str, port: int, proxy: _Proxy | None) -> None:
        import socket

        address = (host, port) if proxy is None else (proxy.host, proxy.port)
        # An ASCII name as bytes: a str one goes through the idna codec (unicodedata, 0.5 MB).
        name: str | bytes = address[0].encode("ascii") if address[0].isascii() else address[0]
        sock = socket.create_connection((name, address[1]), self.timeout)  # type: ignore[arg-type]
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                if proxy is not None:
                    _tunnel(sock, host, port, proxy)
                context = tls_verify(self.verify)
                if isinstance(context, bool):  # verify=False
                    context = _no_verify_context()
                sock = context.wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEAD)


def _send(conn: h11.Connection, *events: h11.Event) -> bytes:
    return b"".join(conn.send(event) or b"" for event in events)  # None only for ConnectionClosed


def _next_event(conn: h11.Connection, sock: socket.socket) -> object:
    """h11's next event, reading from ``sock`` while h11 needs more."""
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        data = sock.recv(_READ_SIZE)
        if not data and conn.their_state is h11.SEND_RESPONSE and not conn.trailing_data[0]:
            raise _BadResponse("the server closed the connection without a reply")
        conn.receive_data(data)


def _final_response(conn: h11.Connection, sock: socket.socket) -> h11.Response:
    """The final reply's head (interim 1xx ones skipped)."""
    while True:
        event = _next_event(conn, sock)
        if isinstance(event, h11.Response):
            # h11 bounds a head still incomplete; a whole one read at once is bounded here.
            if len(event.headers) > _MAX_HEADERS:
                raise _BadResponse(f"more than {_MAX_HEADERS} header lines")
            if sum(len(name) + len(value) for name, value in event.headers) > _MAX_HEAD:
                raise _BadResponse(f"the reply's header fields are too long (over {_MAX_HEAD} bytes)")
            return event
        if not isinstance(event, h11.InformationalResponse):
            raise _BadResponse(f"unexpected {type(event).__name__} before the reply")


def _read_body(conn: h11.Connection, sock: socket.socket, length: str | None, max_body: int) -> bytes:
    """The reply's body, refused as soon as it is known to exceed ``max_body``."""
    if length is not None and int(length) > max_body:  # h11 checked it is digits
        raise TransportError(f"response body of {length} bytes exceeds the {max_body}-byte limit")
    out: list[bytes] = []
    size = 0
    while True:
        event = _next_event(conn, sock)
        if isinstance(event, h11.EndOfMessage):
            return b"".join(out)
        if not isinstance(event, h11.Data):
            raise _BadResponse(f"unexpected {type(event).__name__} in the body")
        size += len(event.data)
        if size > max_body:
            raise TransportError(f"response body exceeds the {max_body}-byte limit")
        out.append(event.data)


def _route(url: str, proxies: list[_Mount]) -> tuple[str, str, int, str, _Proxy | None]:
    """Scheme, host, port, request target and proxy of ``url``."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise TransportError(f"POST {url}: unsupported URL scheme {parts.scheme!r}")
    host = parts.hostname
    if not host:
        raise TransportError(f"POST {url}: no host in the URL")
    port = parts.port or (443 if scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return scheme, host, port, target, _proxy_for(proxies, scheme, host, port, url)


def _host_header(host: str, port: int, scheme: str) -> str:
    name = f"[{host}]" if ":" in host else host
    return name if port == (443 if scheme == "https" else 80) else f"{name}:{port}"


def _tunnel(sock: socket.socket, host: str, port: int, proxy: _Proxy) -> None:
    """CONNECT through the proxy to ``host:port`` (https behind an http:// proxy)."""
    authority = _host_header(host, port, "")  # always with the port
    fields = [("Host", authority)]
    if proxy.authorization is not None:
        fields.append(("Proxy-Authorization", proxy.authorization))
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEAD)
    sock.sendall(_send(conn, h11.Request(method="CONNECT", target=authority, headers=fields)))
    status = _final_response(conn, sock).status_code
    if not 200 <= status < 300:
        raise _BadResponse(f"the proxy refused the tunnel to {authority}: HTTP status {status}")
    if conn.trailing_data[0]:
        raise _BadResponse(f"the proxy sent data before the tunnel to {authority} was used")


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether the idle kept-alive connection was closed by the server (or has data it
    should not have): it then reads as ready. No request was sent on it, so opening a new
    one changes nothing for the server."""
    import select

    try:
        ready, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(ready)


# ---------------------------------------------------------------------------- proxies

#: (scheme or "" for all, host pattern or "" for any, port or None, proxy or None for direct)
_Mount = tuple[str, str, int | None, _Proxy | None]


def _environment_proxies() -> list[_Mount]:
    """The environment's proxies as httpx (``trust_env``) read them, most specific first."""
    if not any(name.lower().endswith("_proxy") for name in os.environ):
        return []
    from urllib.request import getproxies

    info = getproxies()
    mounts: list[_Mount] = []
    for scheme in ("http", "https", "all"):
        if info.get(scheme):
            url = info[scheme] if "://" in info[scheme] else f"http://{info[scheme]}"
            mounts.append(("" if scheme == "all" else scheme, "", None, _parse_proxy(url)))
    for entry in (host.strip() for host in info.get("no", "").split(",")):
        if entry == "*":
            return []
        if not entry:
            continue
        if "://" in entry:
            from urllib.parse import urlsplit

            parts = urlsplit(entry)
            scheme = "" if parts.scheme == "all" else parts.scheme
            mounts.append((scheme, parts.hostname or "", parts.port, None))
        elif _is_ip(entry) or entry.lower() == "localhost":
            mounts.append(("", entry.split("/")[0].strip("[]"), None, None))
        else:
            mounts.append(("", "*" + entry, None, None))
    # httpx's URLPattern priority: with a port first, then longer hosts, then longer schemes.
    mounts.sort(key=lambda m: (0 if m[2] is not None else 1, -len(m[1]), -len(m[0])))
    return mounts


def _is_ip(entry: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(entry.split("/")[0].strip("[]"))
    except ValueError:
        return False
    return True


def _host_matches(pattern: str, host: str) -> bool:
    if not pattern or pattern == "*":
        return True
    host = host.lower()
    pattern = pattern.lower()
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    if pattern.startswith("*"):
        domain = pattern[1:]
        return host == domain or host.endswith("." + domain)
    return host == pattern


def _proxy_for(mounts: list[_Mount], scheme: str, host: str, port: int, url: str) -> _Proxy | None:
    for m_scheme, m_host, m_port, proxy in mounts:
        if m_scheme and m_scheme != scheme:
            continue
        if m_host and not _host_matches(m_host, host):
            continue
        if m_port is not None and m_port != port:
            continue
        if proxy is not None and proxy.host == "":
            raise TransportError(f"POST {url}: the environment's proxy for {scheme} is not an http:// proxy")
        return proxy
    return None


def _parse_proxy(url: str) -> _Proxy:
    """An ``http://[user:password@]host[:port]`` proxy; any other kind is kept as unusable
    (host ``""``) and refused when a request would go through it."""
    import base64
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url)
    if parts.scheme.lower() != "http" or not parts.hostname:
        return _Proxy("", 0, None)
    auth = None
    if parts.username is not None:
        raw = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        auth = "Basic " + base64.b64encode(raw).decode()
    return _Proxy(parts.hostname, parts.port or 80, auth)


# ---------------------------------------------------------------------------- the client


class FdoHttpClient:
    """An FDO HTTP client for one server base URL (e.g. ``http://rv.example:8041``).

    ``verify`` is True (the default CAs), False or a CA bundle path (PEM); ``timeout``
    bounds connecting and each read and write. With ``client`` (an ``httpx.Client``,
    e.g. FastAPI's TestClient) the messages go through it instead, and ``timeout`` and
    ``verify`` are the client's own.
    """

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
        self._carrier: _Carrier = (
            _HttpxCarrier(client) if client is not None else _H11Carrier(timeout=timeout, verify=verify)
        )
        self.token: str | None = None
        #: ``Retry-After`` (delta-seconds) of the last reply, None without one: the
        #: server's "try later" (a rate limit's refusal, a 503).
        self.retry_after: int | None = None

    def close(self) -> None:
        self._carrier.close()

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
        url = self.url(msg_type)
        self.retry_after = None
        response = self._carrier.post(url, body, self._headers(), self.max_body)
        self.retry_after = retry_after_seconds(response.retry_after)
        if response.authorization:
            self.token = response.authorization
        header_type = response.message_type
        content_type = (response.content_type or "").split(";")[0].strip().lower()
        is_success = 200 <= response.status < 300
        if header_type == str(int(MsgType.ERROR)) or (not is_success and content_type == CBOR):
            return int(MsgType.ERROR), response.body
        if response.status != 200:
            raise TransportError(f"POST {url}: unexpected HTTP status {response.status}")
        if header_type is None:
            raise TransportError(f"POST {url}: response has no Message-Type header")
        try:
            reply_type = int(header_type)
        except ValueError:
            raise TransportError(f"POST {url}: bad Message-Type {header_type!r}") from None
        return reply_type, response.body

    def _send_error(self, error: FdoError, prev_msg_type: int) -> None:
        """Tell the server we abort (reference §1.2); failures are ignored."""
        body = ErrorMessage.from_error(error, prev_msg_type, now=int(time.time())).encode()
        try:
            self._carrier.post(self.url(MsgType.ERROR), body, self._headers(), self.max_body)
        except TransportError:
            pass


def retry_after_seconds(value: str | None) -> int | None:
    """A ``Retry-After`` in delta-seconds; None when absent or an HTTP-date (not parsed here)."""
    value = (value or "").strip()
    return int(value) if value.isdigit() and len(value) <= 9 else None
