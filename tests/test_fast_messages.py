"""FDO messages the HTTP protocol answers itself (``fdo_server.http_protocol``'s fast path,
``fdo_server.fast_messages``) are answered as the app answers them.

One rendezvous device app, on one database, is served by two real uvicorn servers in this
process: one with the services' protocol, whose FDO messages take the fast path, and one
with the fast path switched off, whose every request goes through the ASGI app. The same
raw requests go to both: the status, the header fields (but ``Date``) and the body (of an
ErrorMessage its code and previous message type) must match, and the first server must
have answered the FDO messages it may take itself, and only those. Then a real TO0 and
TO1 on the fast path, one rate limit for both paths, the order of pipelined requests,
the access log, and what a route that raises gets.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from typing import Any, Literal

import pytest
import uvicorn

from fdo.messages import ErrorMessage
from fdo.to1.device import TO1Device
from fdo_server.device_app import DeviceApp
from fdo_server.http_protocol import OneWriteHTTPProtocol, _FastRequest, configure_fast
from fdo_server.launcher import free_port
from rendezvous.app import create_device_app as rendezvous_device_app
from rendezvous.settings import RendezvousSettings
from tests.conftest import KeyPool, database_backends, migrated, open_database
from tests.rendezvous.test_service import Setup, make_setup, to0_owner
from tests.threaded_server import serving
from transport.client import FdoHttpClient


class Watched(OneWriteHTTPProtocol):
    """The services' protocol, noting each FDO message it answered itself."""

    answered: list[str] = []  # noqa: RUF012 - shared by the server's connections, read by the tests

    def _answer_fast(self, fast: _FastRequest) -> None:
        Watched.answered.append(fast.msg_type)
        super()._answer_fast(fast)


class ThroughTheApp(OneWriteHTTPProtocol):
    """The services' protocol with the fast path off: every request goes through the app."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._fast = None


class Servers:
    """Two uvicorn servers of one app, with and without the fast path, in threads."""

    def __init__(self, app: Any, lifespan: Literal["on", "off"] = "on") -> None:
        self.app = app
        self.running = ExitStack()
        self.fast = self._start(Watched, lifespan)
        self.slow = self._start(ThroughTheApp, "off")  # one lifespan for the one app

    def _start(self, protocol: type[OneWriteHTTPProtocol], lifespan: Literal["on", "off"]) -> int:
        port = free_port()
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=port,
            http=protocol,
            lifespan=lifespan,
            log_config=None,  # the test process's logging as it is
            proxy_headers=False,
        )
        self.running.enter_context(serving(config))
        return port

    def stop(self) -> None:
        self.running.close()  # the slow server first, as started last


def serve(database_url: str, **settings: Any) -> Iterator[Servers]:
    app: DeviceApp = rendezvous_device_app(
        RendezvousSettings(database_url=migrated(database_url, "rendezvous"), max_body=4096, **settings)
    )
    configure_fast(app, app.state.fdo_fast)  # as the services' uvicorn factory does
    servers = Servers(app)
    try:
        yield servers
    finally:
        servers.stop()
        configure_fast(app, None)


@pytest.fixture(scope="module", params=database_backends())
def servers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """One pair of servers per module and database (the tests that share it leave nothing
    the others look at)."""
    with open_database(request.param, tmp_path_factory.mktemp("fast"), "rv") as url:
        yield from serve(url)


def read_response(conn: socket.socket, buffer: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One ``Content-Length`` framed response from ``conn`` (after any ``100 Continue``):
    status, fields, body."""
    while b"\r\n\r\n" not in buffer:
        chunk = conn.recv(65536)
        assert chunk, "connection closed early"
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    if head.startswith(b"HTTP/1.1 100 "):
        buffer[:] = rest
        return read_response(conn, buffer)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    fields: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    length = int(fields["content-length"])
    body = bytearray(rest)
    while len(body) < length:
        chunk = conn.recv(65536)
        assert chunk, "connection closed early"
        body += chunk
    buffer[:] = body[length:]
    return int(status_line.split()[1]), fields, bytes(body[:length])


def exchange(port: int, raw: bytes, *, closing: bool = False) -> tuple[int, dict[str, str], Any, bool]:
    """Send ``raw`` on a new connection: the answer as compared (no ``Date``; an
    ErrorMessage as its code and previous type), and with ``closing`` whether the server
    then closed the connection (within 0.3 s)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(raw)
        buffer = bytearray()
        status, fields, body = read_response(conn, buffer)
        closed = False
        if closing:
            conn.settimeout(0.3)
            try:
                closed = conn.recv(1) == b""
            except TimeoutError:
                pass
    fields.pop("date", None)
    content: Any = body
    if fields.get("message-type") == "255":
        err = ErrorMessage.decode(body)
        content = (int(err.code), err.prev_msg_type)
    return status, fields, content, closed


def post(msg_type: str, body: bytes, *extra: bytes, version: bytes = b"1.1") -> bytes:
    head = [
        b"POST /fdo/101/msg/" + msg_type.encode() + b" HTTP/" + version,
        b"Host: rv.test",
        b"Content-Type: application/cbor",
        b"Content-Length: " + str(len(body)).encode(),
        *extra,
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


CHUNKED = (
    b"POST /fdo/101/msg/30 HTTP/1.1\r\nHost: rv.test\r\nContent-Type: application/cbor\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n1\r\n\x80\r\n0\r\n\r\n"
)

#: (request, whether the fast path answers it).
REQUESTS: list[tuple[bytes, bool]] = [
    (post("30", b"\x80"), True),  # HelloRV, malformed
    (post("30", b"\x81\x01"), True),
    (post("32", b"\x80"), True),  # no session
    (post("32", b"\x80", b"Authorization: Bearer nope"), True),
    (post("20", b"\xff\xff"), True),
    (post("99", b"\x80"), True),  # not a message of this service
    (post("10", b"\x80"), True),
    (post("255", b"\x80"), True),
    (post("0", b""), True),
    (post("30", b""), True),  # an empty body
    (post("30", b"\x80", b"Connection: close"), True),
    (post("30", b"\x80", version=b"1.0"), True),  # HTTP/1.0: closed after the answer
    (post("30", b"\x80", b"Content-Type: text/plain"), True),
    (post("30", b"\x80" * 5000), False),  # over max_body: the endpoint's ErrorMessage
    (post("1234", b"\x80"), False),  # not a message type
    (post("30?x=1", b"\x80"), False),
    (post("3%30", b"\x80"), False),
    (post("30", b"\x80", b"Expect: 100-continue"), False),
    (CHUNKED, False),
    (b"GET /fdo/101/msg/30 HTTP/1.1\r\nHost: rv.test\r\n\r\n", False),
    (b"GET /health HTTP/1.1\r\nHost: rv.test\r\n\r\n", False),
]


def test_fdo_messages_are_answered_as_the_app_answers_them(servers: Servers) -> None:
    for raw, fast in REQUESTS:
        before = len(Watched.answered)
        through_app = exchange(servers.slow, raw)
        answered = exchange(servers.fast, raw)
        assert answered == through_app, raw
        assert len(Watched.answered) - before == (1 if fast else 0), raw
    closing = [post("30", b"\x80", b"Connection: close"), post("30", b"\x80", version=b"1.0")]
    assert all(exchange(servers.fast, raw, closing=True)[3] for raw in closing)
    assert not exchange(servers.fast, post("30", b"\x80"), closing=True)[3]  # kept alive otherwise


@pytest.fixture(scope="module")
def setup(key_pool: KeyPool) -> Setup:
    return make_setup(key_pool)


def test_to0_and_to1_on_the_fast_path(servers: Servers, setup: Setup) -> None:
    """A real TO0 and TO1, every message answered by the protocol itself (one kept-alive
    connection each)."""
    before = len(Watched.answered)
    with FdoHttpClient(f"http://127.0.0.1:{servers.fast}") as client:
        owner = to0_owner(setup)
        client.run(owner)
    assert owner.accepted_wait_seconds == 7200
    with FdoHttpClient(f"http://127.0.0.1:{servers.fast}") as client:
        to1 = TO1Device(setup.credential)
        client.run(to1)
    assert to1.done and to1.to1d is not None
    assert Watched.answered[before:] == ["20", "22", "30", "32"]
    # The other server (the same app and database) finds the registration too.
    with FdoHttpClient(f"http://127.0.0.1:{servers.slow}") as client:
        again = TO1Device(setup.credential)
        client.run(again)
    assert again.to1d == to1.to1d


def test_one_rate_limit_for_both_paths(database_url: str) -> None:
    """Both paths take from the same bucket of an address: the third HelloRV is refused
    whichever path the first two took."""
    for servers in serve(database_url, first_message_rate=0.001, first_message_burst=2):
        hello = post("30", b"\x80")
        assert exchange(servers.fast, hello)[2] == (100, 30)  # malformed, not refused
        assert exchange(servers.slow, hello)[2] == (100, 30)
        for port in (servers.fast, servers.slow):
            status, fields, content, _ = exchange(port, hello)
            assert (status, content) == (500, (500, 30))
            assert int(fields["retry-after"]) >= 1


def test_pipelined_requests_are_answered_in_order(servers: Servers) -> None:
    """An FDO message after a request still being answered waits its turn (uvicorn's
    path); one after an answered request takes the fast path."""
    before = len(Watched.answered)
    with socket.create_connection(("127.0.0.1", servers.fast), timeout=10) as conn:
        conn.sendall(
            post("30", b"\x80")
            + b"GET /ready HTTP/1.1\r\nHost: rv.test\r\n\r\n"
            + post("99", b"\x80")
            + post("32", b"\x80", b"Connection: close")
        )
        buffer = bytearray()
        answers = [read_response(conn, buffer) for _ in range(4)]
        assert conn.recv(1) == b""
    assert [status for status, _, _ in answers] == [500, 200, 500, 500]
    assert ErrorMessage.decode(answers[0][2]).prev_msg_type == 30
    assert answers[1][2] == b'{"status":"ready"}'
    assert ErrorMessage.decode(answers[2][2]).prev_msg_type == 99
    assert ErrorMessage.decode(answers[3][2]).prev_msg_type == 32
    assert answers[3][1]["connection"] == "close"
    assert Watched.answered[before] == "30"  # the first, at least, on the fast path


class Collected(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_the_access_log_has_a_line_for_each_path(servers: Servers) -> None:
    access = logging.getLogger("uvicorn.access")
    handler = Collected()
    level = access.level
    access.addHandler(handler)  # connections made from now on log (uvicorn looks once)
    access.setLevel(logging.INFO)
    try:
        exchange(servers.slow, post("30", b"\x80"))
        exchange(servers.fast, post("30", b"\x80"))
    finally:
        access.removeHandler(handler)
        access.setLevel(level)
    lines = [line.split(" - ", 1)[1] for line in handler.lines]
    assert lines == ['"POST /fdo/101/msg/30 HTTP/1.1" 500'] * 2
    assert all(line.startswith("127.0.0.1:") for line in handler.lines)


class Raising:
    """A route whose handler fails (the services' cannot: their dispatcher answers every
    error with an ErrorMessage), to see what the protocol does then."""

    max_body = 1024

    def takes(self, msg_type: bytes, local_port: int | None) -> bool:
        return True

    def answer(
        self, msg_type: str, headers: Sequence[tuple[bytes, bytes]], body: bytes, client: Any
    ) -> tuple[int, Sequence[tuple[bytes, bytes]], bytes]:
        raise RuntimeError("the handler failed")


async def never_called(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("the app was asked")


def test_a_failing_route_answers_500_and_closes(caplog: pytest.LogCaptureFixture) -> None:
    configure_fast(never_called, Raising())
    servers = Servers(never_called, lifespan="off")
    try:
        with caplog.at_level(logging.ERROR, "uvicorn.error"):
            status, fields, body, closed = exchange(servers.fast, post("30", b"\x80"), closing=True)
    finally:
        servers.stop()
        configure_fast(never_called, None)
    assert (status, body, closed) == (500, b"Internal Server Error", True)
    assert fields["connection"] == "close"
    assert "the handler failed" in caplog.text
