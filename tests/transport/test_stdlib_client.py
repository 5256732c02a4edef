"""FdoHttpClient's own HTTP (h11 on a socket, no httpx) against a real socket server.

The server is the standard library's :mod:`http.server` speaking HTTP/1.1 with keep-alive,
scripted per test: what it answers, whether it closes the connection after answering,
and what it saw (request lines, headers, connections). The protocol runs end to end over
the real services in tests/e2e; these cover what those never provoke: an idle
connection the server closed, oversized and chunked bodies, redirects, proxies from
the environment, and replies h11 refuses (each must end as a TransportError).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import pytest

from fdo.machine import ClientMachine, Reply
from fdo.types import MsgType
from fdo_server.tls import write_test_tls
from transport.client import FdoHttpClient, TransportError


@dataclass
class Seen:
    request_line: str
    headers: dict[str, str]
    body: bytes
    connection: int  # which TCP connection (1, 2, ...) carried it


@dataclass
class Script:
    """What the server answers: ``reply(n)`` for the n-th request gives (status, headers, body)."""

    reply: Callable[[int], tuple[int, dict[str, str], bytes]]
    close_after: set[int] = field(default_factory=set)  # close the connection after these
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    closed: threading.Event = field(default_factory=threading.Event)


def _handler(script: Script) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            script.connections += 1
            self.connection_no = script.connections

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
            pass

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            script.seen.append(Seen(self.requestline, dict(self.headers), body, self.connection_no))
            n = len(script.seen)
            status, headers, payload = script.reply(n)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if "Transfer-Encoding" not in headers:
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()
            if n in script.close_after:
                self.close_connection = True  # as a keep-alive timeout would, without saying so

        do_POST = _answer  # noqa: N815 - http.server's naming
        do_CONNECT = _answer  # noqa: N815

    return Handler


class Server(ThreadingHTTPServer):
    script: Script

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)  # the FIN is sent: the client can see it
        self.script.closed.set()


@pytest.fixture
def serve() -> Iterator[Callable[[Script], str]]:
    servers: list[Server] = []

    def start(script: Script) -> str:
        server = Server(("127.0.0.1", 0), _handler(script))
        server.script = script
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


class Messages:
    """A client machine that sends ``count`` messages (type 20 with its number) and keeps
    what came back; ``between`` runs before each next message."""

    def __init__(self, count: int, between: Callable[[], object] = lambda: None) -> None:
        self.count = count
        self.between = between
        self.got: list[tuple[int, bytes]] = []

    def start(self) -> Reply:
        return MsgType.TO0_HELLO, b"\x01"

    def receive(self, msg_type: int, body: bytes) -> Reply | None:
        self.got.append((msg_type, body))
        if len(self.got) == self.count:
            return None
        self.between()
        return MsgType.TO0_HELLO, bytes([len(self.got) + 1])


def _run(client: FdoHttpClient, machine: Messages) -> None:
    client.run(cast(ClientMachine[Any], machine))


def _ok(n: int) -> tuple[int, dict[str, str], bytes]:
    return 200, {"Message-Type": "21", "Content-Type": "application/cbor", "Authorization": f"t{n}"}, b"\xa0"


def test_one_kept_alive_connection_and_the_headers(serve: Callable[[Script], str]) -> None:
    script = Script(_ok)
    with FdoHttpClient(serve(script)) as client:
        machine = Messages(3)
        _run(client, machine)
    assert machine.got == [(21, b"\xa0")] * 3
    assert [s.connection for s in script.seen] == [1, 1, 1]
    assert [s.request_line for s in script.seen] == ["POST /fdo/101/msg/20 HTTP/1.1"] * 3
    assert [s.body for s in script.seen] == [b"\x01", b"\x02", b"\x03"]
    first, second, third = (s.headers for s in script.seen)
    assert first["Content-Type"] == "application/cbor" and first["Content-Length"] == "1"
    assert "Authorization" not in first
    assert second["Authorization"] == "t1" and third["Authorization"] == "t2"


def test_a_connection_the_server_closed_while_idle_is_opened_again(serve: Callable[[Script], str]) -> None:
    script = Script(_ok, close_after={1})
    with FdoHttpClient(serve(script)) as client:
        machine = Messages(2, between=lambda: script.closed.wait(5))
        _run(client, machine)
    assert len(machine.got) == 2
    assert [s.connection for s in script.seen] == [1, 2]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_over_the_limit_is_refused(serve: Callable[[Script], str], chunked: bool) -> None:
    big = b"\x00" * 200

    def reply(n: int) -> tuple[int, dict[str, str], bytes]:
        if not chunked:
            return 200, {"Message-Type": "21"}, big
        chunks = b"".join(b"%x\r\n%s\r\n" % (50, big[:50]) for _ in range(4)) + b"0\r\n\r\n"
        return 200, {"Message-Type": "21", "Transfer-Encoding": "chunked"}, chunks

    with FdoHttpClient(serve(Script(reply)), max_body=100) as client, pytest.raises(TransportError) as caught:
        _run(client, Messages(1))
    assert "100-byte limit" in str(caught.value)


def test_chunked_bodies_are_read(serve: Callable[[Script], str]) -> None:
    chunks = b"3\r\n\xa1\x01\x02\r\n0\r\n\r\n"
    script = Script(lambda n: (200, {"Message-Type": "21", "Transfer-Encoding": "chunked"}, chunks))
    with FdoHttpClient(serve(script)) as client:
        machine = Messages(2)
        _run(client, machine)
    assert machine.got == [(21, b"\xa1\x01\x02")] * 2 and [s.connection for s in script.seen] == [1, 1]


def test_an_error_status_with_cbor_is_an_error_message(serve: Callable[[Script], str]) -> None:
    script = Script(lambda n: (500, {"Content-Type": "application/cbor"}, b"\x85"))
    with FdoHttpClient(serve(script)) as client:
        machine = Messages(1)
        _run(client, machine)
    assert machine.got == [(255, b"\x85")]


def test_retry_after_of_the_last_reply_is_kept(serve: Callable[[Script], str]) -> None:
    """A rendezvous's rate-limit refusal (500, ErrorMessage, Retry-After) and a 429: the
    client keeps the Retry-After seconds of the last reply (the TO0 scheduler paces to
    it); a reply without one, or with an HTTP-date, clears it."""
    refusal = {"Content-Type": "application/cbor", "Message-Type": "255", "Retry-After": "3"}
    replies = [(500, refusal, b"\x85"), (200, _ok(1)[1], b"\xa0"), (429, {"Retry-After": " 7 "}, b"")]
    replies.append((503, {"Retry-After": "Fri, 04 Dec 2026 20:00:00 GMT"}, b""))
    script = Script(lambda n: replies[n - 1])
    with FdoHttpClient(serve(script)) as client:
        _run(client, Messages(1))
        assert client.retry_after == 3
        _run(client, Messages(1))
        assert client.retry_after is None
        with pytest.raises(TransportError, match="HTTP status 429"):
            _run(client, Messages(1))
        assert client.retry_after == 7
        with pytest.raises(TransportError, match="HTTP status 503"):
            _run(client, Messages(1))
        assert client.retry_after is None


def test_redirects_are_not_followed(serve: Callable[[Script], str]) -> None:
    script = Script(lambda n: (307, {"Location": "http://127.0.0.1:1/elsewhere"}, b""))
    with FdoHttpClient(serve(script)) as client, pytest.raises(TransportError, match="HTTP status 307"):
        _run(client, Messages(1))
    assert len(script.seen) == 1


def test_a_refused_connection_is_a_transport_error(serve: Callable[[Script], str]) -> None:
    with FdoHttpClient("http://127.0.0.1:1") as client, pytest.raises(TransportError) as caught:
        _run(client, Messages(1))
    assert str(caught.value).startswith("POST http://127.0.0.1:1/fdo/101/msg/20: ConnectionRefusedError")


def test_an_unsupported_scheme_is_a_transport_error() -> None:
    with FdoHttpClient("ftp://rv.example") as client, pytest.raises(TransportError, match="unsupported URL"):
        _run(client, Messages(1))


# ---------------------------------------------------------------------------- proxies


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


def test_http_goes_through_the_environment_proxy(
    serve: Callable[[Script], str], no_proxy_env: pytest.MonkeyPatch
) -> None:
    script = Script(_ok)
    proxy = serve(script).replace("http://", "http://dev%40ice:s3cret@")
    no_proxy_env.setenv("HTTP_PROXY", proxy)
    with FdoHttpClient("http://rv.invalid:8041") as client:
        _run(client, Messages(2))
    absolute = "POST http://rv.invalid:8041/fdo/101/msg/20 HTTP/1.1"
    assert [s.request_line for s in script.seen] == [absolute] * 2
    assert script.seen[0].headers["Host"] == "rv.invalid:8041"
    assert script.seen[0].headers["Proxy-Authorization"] == "Basic ZGV2QGljZTpzM2NyZXQ="  # dev@ice:s3cret
    assert [s.connection for s in script.seen] == [1, 1]


def test_no_proxy_bypasses_it(serve: Callable[[Script], str], no_proxy_env: pytest.MonkeyPatch) -> None:
    script = Script(_ok)
    no_proxy_env.setenv("http_proxy", serve(script))
    no_proxy_env.setenv("no_proxy", "example.org, rv.invalid")
    with FdoHttpClient("http://rv.invalid:8041") as client, pytest.raises(TransportError):
        _run(client, Messages(1))  # straight to rv.invalid, which does not resolve
    assert script.seen == []


def test_https_is_tunnelled_with_connect(
    serve: Callable[[Script], str], no_proxy_env: pytest.MonkeyPatch
) -> None:
    script = Script(lambda n: (403, {}, b""))
    no_proxy_env.setenv("ALL_PROXY", serve(script).removeprefix("http://"))  # no scheme: http
    with FdoHttpClient("https://owner.invalid:8443") as client, pytest.raises(TransportError):
        _run(client, Messages(1))
    [seen] = script.seen
    assert seen.request_line.startswith("CONNECT owner.invalid:8443 HTTP/1.")
    assert seen.headers["Host"] == "owner.invalid:8443"


def test_https_through_the_tunnel_is_verified_and_kept_alive(
    no_proxy_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A real CONNECT proxy (it relays bytes) in front of a TLS server with a throw-away CA."""
    import ssl

    tls = write_test_tls(tmp_path)
    script = Script(_ok)
    server = Server(("127.0.0.1", 0), _handler(script))
    server.script = script
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert, tls.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    connects: list[bytes] = []
    proxy = _connect_proxy(connects)
    no_proxy_env.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.getsockname()[1]}")
    port = server.server_address[1]
    try:
        with FdoHttpClient(f"https://127.0.0.1:{port}", verify=str(tls.ca)) as client:
            machine = Messages(2)
            _run(client, machine)
    finally:
        server.shutdown()
        server.server_close()
        proxy.close()
    assert machine.got == [(21, b"\xa0")] * 2
    assert connects == [f"CONNECT 127.0.0.1:{port} HTTP/1.1".encode()]  # one tunnel for both
    assert [s.request_line for s in script.seen] == ["POST /fdo/101/msg/20 HTTP/1.1"] * 2
    assert [s.connection for s in script.seen] == [1, 1]


def _connect_proxy(connects: list[bytes]) -> socket.socket:
    """A CONNECT-only proxy on a free port: records each request line, then relays bytes."""
    listener = socket.create_server(("127.0.0.1", 0))

    def pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # closed: the test is over
                return
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                head += conn.recv(1)
            line = head.split(b"\r\n", 1)[0]
            connects.append(line)
            host, port = line.split()[1].decode().rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)))
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            threading.Thread(target=pump, args=(conn, upstream), daemon=True).start()
            threading.Thread(target=pump, args=(upstream, conn), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return listener


def test_a_socks_proxy_is_refused(no_proxy_env: pytest.MonkeyPatch) -> None:
    no_proxy_env.setenv("HTTPS_PROXY", "socks5://127.0.0.1:1080")
    with FdoHttpClient("https://owner.invalid") as client, pytest.raises(TransportError, match="not an http"):
        _run(client, Messages(1))


# ---------------------------------------------------------------------------- replies as bytes


@pytest.fixture
def raw() -> Iterator[Callable[[list[bytes]], tuple[str, list[bytes]]]]:
    """A server that answers the n-th request with the n-th byte string as it is (then
    closes the connection), on one connection; returns its URL and the requests it read."""
    listeners: list[socket.socket] = []

    def start(replies: list[bytes]) -> tuple[str, list[bytes]]:
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)
        requests: list[bytes] = []

        def serve() -> None:
            conn, _ = listener.accept()
            with conn, conn.makefile("rb") as reader:
                for reply in replies:
                    head = b""
                    while not head.endswith(b"\r\n\r\n"):
                        line = reader.readline()
                        if not line:
                            return
                        head += line
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    requests.append(head + reader.read(length))
                    conn.sendall(reply)

        threading.Thread(target=serve, daemon=True).start()
        return f"http://127.0.0.1:{listener.getsockname()[1]}", requests

    yield start
    for listener in listeners:
        listener.close()


_HEAD = b"HTTP/1.1 200 OK\r\nMessage-Type: 21\r\nContent-Type: application/cbor\r\n"


@pytest.mark.parametrize(
    ("reply", "body"),
    [
        (
            b"HTTP/1.1 100 Continue\r\n\r\n" + _HEAD + b"Content-Length: 1\r\n\r\n\xa0",
            b"\xa0",
        ),  # interim reply
        (
            _HEAD + b"Transfer-Encoding: chunked\r\n\r\n1;ext=1\r\n\xa1\r\n1\r\n\x01\r\n0\r\nX-T: 1\r\n\r\n",
            b"\xa1\x01",
        ),
        (_HEAD + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n\xa1\x02", b"\xa1\x02"),  # repeated, same
        (_HEAD + b"X-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n", b""),
    ],
    ids=["interim-100", "chunked-with-extension-and-trailer", "repeated-length", "folded-header"],
)
def test_replies_read_and_the_connection_kept(
    raw: Callable[[list[bytes]], tuple[str, list[bytes]]], reply: bytes, body: bytes
) -> None:
    url, requests = raw([reply, reply])
    with FdoHttpClient(url) as client:
        machine = Messages(2)
        _run(client, machine)
    assert machine.got == [(21, body)] * 2 and len(requests) == 2  # both on the one connection
    head = requests[0].split(b"\r\n\r\n")[0].decode().split("\r\n")
    assert head[0] == "POST /fdo/101/msg/20 HTTP/1.1" and f"Host: {url.removeprefix('http://')}" in head


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.0 200 OK\r\nMessage-Type: 21\r\nContent-Length: 1\r\n\r\n\xa0",
        _HEAD + b"Connection: close\r\nContent-Length: 1\r\n\r\n\xa0",
        _HEAD + b"\r\n\xa0",  # no length: the body ends with the connection
    ],
    ids=["http-1.0", "connection-close", "until-close"],
)
def test_replies_that_end_the_connection(
    raw: Callable[[list[bytes]], tuple[str, list[bytes]]], reply: bytes
) -> None:
    url, requests = raw([reply])
    with FdoHttpClient(url) as client:
        machine = Messages(1)
        _run(client, machine)
        assert machine.got == [(21, b"\xa0")]
        assert client._carrier._sock is None  # type: ignore[attr-defined]  # closed, not kept


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"", "closed the connection without a reply"),
        (b"HTTP/2 200\r\n\r\n", "malformed reply: illegal status line"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "illegal status line"),
        (_HEAD + b"No colon here\r\n\r\n", "illegal header line"),
        (_HEAD + b"Content-Length: 5\r\n\r\n\xa0", "without sending complete message body"),
        (_HEAD + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n\xa0", "conflicting Content-Length"),
        (_HEAD + b"Transfer-Encoding: gzip\r\n\r\n", "Only Transfer-Encoding: chunked"),
        (_HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", "illegal chunk header"),
        (_HEAD + b"Transfer-Encoding: chunked\r\n\r\n1\r\n\xa0XX", "malformed chunk footer"),
        (_HEAD + b"X: " + b"a" * 70000 + b"\r\n\r\n", "too long"),
        (_HEAD + b"X: 1\r\n" * 101 + b"\r\n", "more than 100 header lines"),
    ],
)
def test_malformed_replies_are_transport_errors(
    raw: Callable[[list[bytes]], tuple[str, list[bytes]]], reply: bytes, error: str
) -> None:
    url, _ = raw([reply])
    with FdoHttpClient(url) as client, pytest.raises(TransportError, match=error):
        _run(client, Messages(1))


def test_a_token_that_would_split_the_header_is_refused(
    raw: Callable[[list[bytes]], tuple[str, list[bytes]]],
) -> None:
    reply = _HEAD + b"Authorization: t\x0bx\r\nContent-Length: 1\r\n\r\n\xa0"
    url, requests = raw([reply, reply])
    with FdoHttpClient(url) as client, pytest.raises(TransportError, match="illegal header line"):
        _run(client, Messages(2))
    assert len(requests) == 1  # the second message was never sent


def test_a_path_with_a_space_is_refused_before_connecting() -> None:
    with FdoHttpClient("http://127.0.0.1:1/a b") as client, pytest.raises(TransportError) as caught:
        _run(client, Messages(1))
    assert "invalid request: Illegal target characters" in str(caught.value)  # not a refused connection
