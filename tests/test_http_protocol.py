"""``fdo_server.http_protocol``: a response leaves in one socket write, and HTTP is
otherwise unchanged (keep-alive, pipelining, ``Connection: close``, large bodies) on a
real uvicorn server."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import Response
from uvicorn.server import ServerState

from fdo_server.http_protocol import EdgeLimits, GatheredWrites, OneWriteHTTPProtocol, configure
from fdo_server.launcher import free_port
from tests.threaded_server import serving


class Recorder:
    """A transport that records each write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def _gathered() -> tuple[GatheredWrites, Recorder]:
    recorder = Recorder()
    return GatheredWrites(recorder, asyncio.get_running_loop()), recorder  # type: ignore[arg-type]


def test_writes_of_one_callback_leave_together() -> None:
    async def scenario() -> None:
        gathered, recorder = _gathered()
        gathered.write(b"HTTP/1.1 200 OK\r\n\r\n")
        gathered.write(memoryview(b"body"))
        gathered.write(b"")
        assert recorder.writes == [] and gathered.get_write_buffer_size() == 23
        await asyncio.sleep(0)
        assert recorder.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
        gathered.write(b"next")
        await asyncio.sleep(0)
        assert recorder.writes[1:] == [b"next"]
        assert gathered.get_extra_info("peername") == "info:peername"  # the rest passes through

    asyncio.run(scenario())


def test_close_sends_first_and_abort_drops() -> None:
    async def scenario() -> None:
        gathered, recorder = _gathered()
        gathered.write(b"last words")
        gathered.close()
        assert recorder.writes == [b"last words"] and recorder.closing
        await asyncio.sleep(0)
        assert recorder.writes == [b"last words"]

        gathered, recorder = _gathered()
        gathered.write(b"never")
        gathered.abort()
        await asyncio.sleep(0)
        assert recorder.writes == [] and recorder.aborted

        gathered, recorder = _gathered()
        gathered.write(b"too late")
        recorder.closing = True  # the peer went away meanwhile
        await asyncio.sleep(0)
        assert recorder.writes == []

    asyncio.run(scenario())


# --------------------------------------------------------------------------- a real server

BIG = bytes(range(256)) * 4096  # 1 MiB


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/echo/{text}")
    async def echo(text: str) -> Response:
        return Response(content=text.encode(), media_type="text/plain")

    @app.get("/big")
    async def big() -> Response:
        return Response(content=BIG, media_type="application/octet-stream")

    return app


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    free = free_port()
    config = uvicorn.Config(
        _app(), host="127.0.0.1", port=free, http=OneWriteHTTPProtocol, log_level="warning"
    )
    with serving(config):
        yield free


def _read_response(conn: socket.socket, buffer: bytearray) -> tuple[bytes, bytes]:
    """One response from ``conn`` (Content-Length framed): (head, body)."""
    while b"\r\n\r\n" not in buffer:
        chunk = conn.recv(65536)
        assert chunk, "connection closed early"
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    body = bytearray(rest)
    while len(body) < length:
        chunk = conn.recv(65536)
        assert chunk, "connection closed early"
        body += chunk
    buffer[:] = body[length:]
    return head, bytes(body[:length])


def test_keep_alive_pipelining_and_close(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        buffer = bytearray()
        conn.sendall(b"GET /echo/one HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body = _read_response(conn, buffer)
        assert head.startswith(b"HTTP/1.1 200") and body == b"one"
        # Two requests in one packet: two responses, in order, on the same connection.
        conn.sendall(b"GET /echo/two HTTP/1.1\r\nHost: x\r\n\r\nGET /echo/three HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(conn, buffer)[1] == b"two"
        assert _read_response(conn, buffer)[1] == b"three"
        conn.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(conn, buffer)[1] == BIG
        conn.sendall(b"GET /echo/bye HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert _read_response(conn, buffer)[1] == b"bye"
        assert conn.recv(1) == b""  # and the server closed it


# --------------------------------------------------------------------------- the timers


class Socket(Recorder):
    """A connection's transport for a protocol driven by hand."""

    def get_extra_info(self, name: str) -> Any:
        return {"sockname": ("127.0.0.1", 8041), "peername": ("127.0.0.1", 40000)}.get(name)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def test_a_request_that_arrives_whole_starts_no_timer() -> None:
    """The head and body timers run only while a read ended inside a head or a body:
    a request read whole starts neither (the connection's first head timer aside)."""

    async def scenario() -> None:
        configure(EdgeLimits(head_timeout=5.0, body_timeout=5.0))
        try:
            config = uvicorn.Config(_app(), http=OneWriteHTTPProtocol, log_config=None, lifespan="off")
            config.load()
            protocol = OneWriteHTTPProtocol(config, ServerState(), {}, asyncio.get_running_loop())
            socket_ = Socket()
            protocol.connection_made(socket_)  # type: ignore[arg-type]
            assert protocol._head_timer is not None  # until the first head is in
            protocol.data_received(b"GET /echo/a HTTP/1.1\r\nHost: x\r\n\r\n")
            assert protocol._head_timer is None and protocol._body_timer is None
            await asyncio.sleep(0.05)
            assert b"\r\n\r\na" in b"".join(socket_.writes)
            protocol.data_received(b"GET /echo/b HTTP/1.1\r\nHo")  # the next head, cut
            assert protocol._head_timer is not None and protocol._body_timer is None
            protocol.data_received(b"st: x\r\n\r\n")
            assert protocol._head_timer is None
            protocol.data_received(b"POST /echo/c HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab")
            assert protocol._head_timer is None and protocol._body_timer is not None  # body cut
            protocol.data_received(b"cd")
            assert protocol._body_timer is None
            protocol.connection_lost(None)
        finally:
            configure(EdgeLimits())

    asyncio.run(scenario())
