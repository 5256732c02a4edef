"""Slow clients are bounded (``fdo_server.http_protocol.EdgeLimits``) on a real server: a
half-sent request head, a stalled body and connections over the limit, against the
rendezvous service run as ``fdo rendezvous serve`` runs it (small limits via settings)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from fdo_server.launcher import ServiceProcess
from tests.conftest import migrated

HEAD_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
MAX_CONNECTIONS = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    folder = tmp_path_factory.mktemp("limits")
    url = migrated(f"sqlite:///{folder / 'rendezvous.db'}", "rendezvous")
    env = {
        "FDO_RENDEZVOUS_DATABASE_URL": url,
        "FDO_RENDEZVOUS_HEADER_TIMEOUT_SECONDS": str(HEAD_TIMEOUT),
        "FDO_RENDEZVOUS_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
        "FDO_RENDEZVOUS_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    }
    with ServiceProcess("rendezvous", "rendezvous.app:app_from_env", env, log_path=folder / "rv.log") as proc:
        yield proc


def connect(server: ServiceProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock


def closed_after(sock: socket.socket) -> tuple[float, bytes]:
    """Seconds until the server closes ``sock``, and what it sent before that."""
    start = time.monotonic()
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    return time.monotonic() - start, received


def logged(server: ServiceProcess, text: str) -> bool:
    assert server.log_path is not None
    return text in server.log_path.read_text()


def request(server: ServiceProcess, raw: bytes) -> bytes:
    with connect(server) as sock:
        sock.sendall(raw)
        return sock.recv(4096)


HEALTH = b"GET /health HTTP/1.1\r\nHost: rv\r\nConnection: close\r\n\r\n"


def test_half_a_request_head_is_cut_off(server: ServiceProcess) -> None:
    with connect(server) as sock:
        sock.sendall(b"POST /fdo/101/msg/30 HTTP/1.1\r\nHost: rv\r\nContent-")
        seconds, received = closed_after(sock)
    assert received == b""
    assert HEAD_TIMEOUT * 0.5 <= seconds < HEAD_TIMEOUT + 3
    # A connection that sends nothing at all is cut off the same way.
    with connect(server) as sock:
        seconds, received = closed_after(sock)
    assert received == b"" and HEAD_TIMEOUT * 0.5 <= seconds < HEAD_TIMEOUT + 3
    assert logged(server, "no complete request head within 1 s")


def test_a_kept_alive_connection_gets_the_head_timeout_per_request(server: ServiceProcess) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: rv\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        time.sleep(HEAD_TIMEOUT * 0.6)  # idle: uvicorn's keep-alive timeout (5 s) applies
        sock.sendall(b"GET /hea")  # the next request starts, and stalls
        seconds, received = closed_after(sock)
    assert received == b"" and HEAD_TIMEOUT * 0.5 <= seconds < HEAD_TIMEOUT + 3


def test_a_stalled_body_is_cut_off(server: ServiceProcess) -> None:
    with connect(server) as sock:
        head = b"POST /fdo/101/msg/30 HTTP/1.1\r\nHost: rv\r\nContent-Length: 100\r\n\r\n"
        sock.sendall(head + b"\x82" * 10)
        seconds, received = closed_after(sock)
    assert received == b""
    assert BODY_TIMEOUT * 0.5 <= seconds < BODY_TIMEOUT + 3
    assert logged(server, "no complete request body within 1 s")
    # A complete request is answered as before.
    assert request(server, HEALTH).startswith(b"HTTP/1.1 200")


def test_connections_beyond_the_limit_are_refused(server: ServiceProcess) -> None:
    held = [connect(server) for _ in range(MAX_CONNECTIONS)]
    try:
        for sock in held:  # each one is served
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: rv\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        with connect(server) as extra:
            seconds, received = closed_after(extra)
        assert received.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert b"\r\nretry-after: 1\r\n" in received
        assert seconds < HEAD_TIMEOUT  # refused at once, not left to time out
        assert logged(server, "over 3 connections: refusing one with 503")
    finally:
        for sock in held:
            sock.close()
    # Once they are gone, new connections are served again.
    deadline = time.monotonic() + 5
    while not (answer := request(server, HEALTH)).startswith(b"HTTP/1.1 200") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert answer.startswith(b"HTTP/1.1 200")
