"""The floor under a service's CPU per message on this machine: servers that do nothing.

This process is the client; the server answers every request at once with a fixed
FDO-sized response. Prints the server's CPU (user + system of its processes, from
``/proc``) per round trip on one kept-alive connection, and with a new connection per
request (as a device's TO1 makes one). ``--server``:

* ``raw`` (default): a uvloop server whose protocol writes the response on every read:
  no HTTP parsing, no app. What is left is the kernel's loopback TCP and the event loop.
* ``uvicorn``: a trivial ASGI app (reads the body, sends the response) under uvicorn as
  the services run it (uvloop, their HTTP protocol :mod:`fdo_server.http_protocol` with
  their default edge limits, no access log): the HTTP layer's own cost is this minus
  ``raw``.
* ``granian``: the same app under granian (one worker, uvloop), when it is installed
  (it is not a dependency: ``pip install granian``).

Whatever a service spends per message above the ``uvicorn`` figure is its own work (the
FDO endpoint, the machines, the database).

    .venv/bin/python bench/http_floor.py [--server raw] [--requests 20000] [--connections 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any, cast

from fdo_server.launcher import tree_cpu_seconds

BODY = b"x" * 100
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ncontent-type: application/cbor\r\n\r\n" + BODY
REQUEST = (
    b"POST /fdo/101/msg/30 HTTP/1.1\r\nhost: bench\r\ncontent-type: application/cbor\r\n"
    b"content-length: 100\r\n\r\n" + b"y" * 100
)
SERVERS = ("raw", "uvicorn", "granian")


class Answer(asyncio.Protocol):
    """Answers each read with :data:`RESPONSE` (one request per read on this client)."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio subclass

    def data_received(self, data: bytes) -> None:
        self.transport.write(RESPONSE)


async def app(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
    send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
) -> None:
    """The trivial ASGI app: read the body, send the response."""
    if scope["type"] != "http":
        return
    message = await receive()
    while message.get("more_body"):
        message = await receive()
    headers = [(b"content-type", b"application/cbor"), (b"content-length", b"100")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


def serve_raw(port: int) -> None:
    import uvloop

    async def main() -> None:
        await asyncio.get_running_loop().create_server(Answer, "127.0.0.1", port)
        await asyncio.Event().wait()

    uvloop.run(main())


def serve_uvicorn(port: int) -> None:
    import uvicorn

    from fdo_server.config import ServiceSettings
    from fdo_server.http_protocol import HTTP_PROTOCOL, EdgeLimits, configure

    defaults = ServiceSettings.model_fields  # the services' default edge limits
    configure(
        EdgeLimits(
            max_connections=int(defaults["max_connections"].default),
            head_timeout=float(defaults["header_timeout_seconds"].default),
            body_timeout=float(defaults["body_timeout_seconds"].default),
        )
    )

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http=HTTP_PROTOCOL,
        lifespan="off",
        access_log=False,
        log_level="warning",
    )
    uvicorn.Server(config).run()


def start(server: str, port: int) -> subprocess.Popen[bytes] | multiprocessing.process.BaseProcess:
    """The server, started (not yet answering)."""
    if server == "granian":
        granian = shutil.which("granian") or str(Path(sys.executable).parent / "granian")
        if not Path(granian).exists():
            raise SystemExit("error: --server granian needs granian (pip install granian)")
        command = [granian, "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port)]
        command += [
            "--loop",
            "uvloop",
            "--workers",
            "1",
            "--no-ws",
            "--log-level",
            "warning",
            "http_floor:app",
        ]
        return subprocess.Popen(command, cwd=Path(__file__).parent)  # noqa: S603 - a fixed command line
    target = serve_raw if server == "raw" else serve_uvicorn
    process = multiprocessing.get_context("spawn").Process(target=target, args=(port,), daemon=True)
    process.start()
    return process


def wait_answering(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                round_trip(conn)
                return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("error: the server did not start") from None
            time.sleep(0.05)


def round_trip(conn: socket.socket) -> None:
    """One request and its whole response (the response ends with :data:`BODY`)."""
    conn.sendall(REQUEST)
    got = b""
    while not got.endswith(BODY):
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        got += chunk


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=SERVERS, default="raw")
    parser.add_argument("--requests", type=int, default=20000, help="round trips on one connection")
    parser.add_argument("--connections", type=int, default=3000, help="round trips, a connection each")
    args = parser.parse_args(argv)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = start(args.server, port)
    try:
        wait_answering(port)
        assert server.pid is not None  # noqa: S101 - started
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(min(500, args.requests)):  # warm-up
                round_trip(conn)
            cpu, wall = tree_cpu_seconds(server.pid), time.perf_counter()
            for _ in range(args.requests):
                round_trip(conn)
            wall, cpu = time.perf_counter() - wall, tree_cpu_seconds(server.pid) - cpu
        print(
            f"{args.server}, kept-alive connection: {cpu / args.requests * 1e6:.1f} us server CPU per round"
            f" trip ({wall / args.requests * 1e6:.1f} us wall), {args.requests} round trips"
        )
        cpu, wall = tree_cpu_seconds(server.pid), time.perf_counter()
        for _ in range(args.connections):
            with socket.create_connection(("127.0.0.1", port)) as conn:
                round_trip(conn)
        wall, cpu = time.perf_counter() - wall, tree_cpu_seconds(server.pid) - cpu
        print(
            f"{args.server}, a connection per request: {cpu / args.connections * 1e6:.1f} us server CPU per"
            f" round trip ({wall / args.connections * 1e6:.1f} us wall), {args.connections} round trips"
        )
    finally:
        server.terminate()
        if isinstance(server, subprocess.Popen):
            server.wait(10)
        else:
            server.join(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
