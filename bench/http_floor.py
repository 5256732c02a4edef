"""The floor under a service's CPU per message on this machine: a server that does nothing.

A uvloop server (as the services run) whose protocol answers every request at once with
a fixed FDO-sized response, no HTTP parsing, no app, no database; this process is the
client. Prints the server process's CPU (user + system, from ``/proc``) per round trip
on one kept-alive connection, and with a new connection per request (as a device's TO1
makes one). Whatever a service spends per message above this is its own work (uvicorn,
the app, the database); the floor itself is the kernel's loopback TCP and the event loop.

    .venv/bin/python bench/http_floor.py [--requests 20000] [--connections 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import time
from multiprocessing.synchronize import Event
from typing import cast

RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ncontent-type: application/cbor\r\n\r\n" + b"x" * 100
REQUEST = b"POST /fdo/101/msg/30 HTTP/1.1\r\nhost: bench\r\ncontent-length: 100\r\n\r\n" + b"y" * 100


class Answer(asyncio.Protocol):
    """Answers each read with :data:`RESPONSE` (one request per read on this client)."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio subclass

    def data_received(self, data: bytes) -> None:
        self.transport.write(RESPONSE)


def serve(port: int, ready: Event) -> None:
    import uvloop

    async def main() -> None:
        await asyncio.get_running_loop().create_server(Answer, "127.0.0.1", port)
        ready.set()
        await asyncio.Event().wait()

    uvloop.run(main())


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000, help="round trips on one connection")
    parser.add_argument("--connections", type=int, default=3000, help="round trips, a connection each")
    args = parser.parse_args(argv)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ready = multiprocessing.get_context("spawn").Event()
    server = multiprocessing.get_context("spawn").Process(target=serve, args=(port, ready), daemon=True)
    server.start()
    try:
        if not ready.wait(30):
            raise SystemExit("error: the server did not start")
        assert server.pid is not None  # noqa: S101 - started
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            cpu, wall = cpu_seconds(server.pid), time.perf_counter()
            for _ in range(args.requests):
                conn.sendall(REQUEST)
                conn.recv(65536)
            wall, cpu = time.perf_counter() - wall, cpu_seconds(server.pid) - cpu
        print(
            f"kept-alive connection: {cpu / args.requests * 1e6:.1f} us server CPU per round trip"
            f" ({wall / args.requests * 1e6:.1f} us wall), {args.requests} round trips"
        )
        cpu, wall = cpu_seconds(server.pid), time.perf_counter()
        for _ in range(args.connections):
            with socket.create_connection(("127.0.0.1", port)) as conn:
                conn.sendall(REQUEST)
                conn.recv(65536)
        wall, cpu = time.perf_counter() - wall, cpu_seconds(server.pid) - cpu
        print(
            f"a connection per request: {cpu / args.connections * 1e6:.1f} us server CPU per round trip"
            f" ({wall / args.connections * 1e6:.1f} us wall), {args.connections} round trips"
        )
    finally:
        server.terminate()
        server.join(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
