"""Request bodies are limited while they are read, on every route (issue 13, item 1).

The three services run as real uvicorn servers (one :class:`Stack`, started once for the
module). Every route of each app, with every method it takes, gets a 300 MiB body over
a raw socket: chunked, generated as it is sent (one 64 KiB frame sent again and again),
the client stopping as soon as an answer arrives; and once more announced by a
``Content-Length`` of 300 MiB with no body at all. The FDO message route answers with an
FDO ErrorMessage (HTTP 500, its own ``max_body``), every other route with a JSON 413,
and the server process's resident memory (``VmRSS`` in ``/proc/<pid>/status``) grows by
less than 16 MB over all of it.
"""

from __future__ import annotations

import importlib
import re
import select
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import FastAPI
from starlette.routing import BaseRoute, Route

from fdo_server.stack import SERVICES, Stack

MiB = 1024 * 1024
TOTAL = 300 * MiB
CHUNK = 64 * 1024
#: The body is never built: this one chunk frame is sent TOTAL / CHUNK times.
FRAME = f"{CHUNK:x}\r\n".encode() + b"x" * CHUNK + b"\r\n"
TIMEOUT = 10.0
#: Allowed growth of the server's resident memory over all cases of a service.
RSS_GROWTH = 16 * 1000 * 1000
#: The client must have been stopped well before the end of the body (the largest
#: route limit is 16 MiB; the rest is what the socket buffers take in).
STOPPED_BY = 64 * MiB
#: The FDO message route of each service, with a first message type it serves.
FDO_TYPE = {"manufacturer": "10", "rendezvous": "20", "owner": "60"}


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    sent: int


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(workdir=tmp_path_factory.mktemp("limits")) as running:
        yield running


def routes(stack: Stack, service: str) -> list[tuple[str, str]]:
    """``(method, path)`` of every route of ``service``'s app, built here from the same
    settings as the running server, path parameters filled in."""
    module = importlib.import_module(f"{service}.app")
    with pytest.MonkeyPatch.context() as env:
        for name, value in stack.services[service].env.items():
            env.setenv(name, value)
        app: FastAPI = module.create_app()
    try:
        found = []
        for template, methods in flat_routes(app.routes):
            path = template.replace("{msg_type}", FDO_TYPE[service])
            path = re.sub(r"\{[^}]+\}", "0123456789abcdef0123456789abcdef", path)
            found += [(method, path) for method in sorted(methods) if method != "HEAD"]
        return found
    finally:
        app.state.database.dispose()


def flat_routes(routes: Iterable[BaseRoute]) -> Iterator[tuple[str, set[str]]]:
    """``(path template, methods)`` of every route, those of included routers too."""
    for route in routes:
        if isinstance(route, Route):
            yield route.path, set(route.methods or ())
            continue
        contexts = getattr(route, "effective_route_contexts", None)  # FastAPI's include_router
        assert contexts is not None, f"a route of an unknown kind: {route!r}"
        for context in contexts():
            yield str(context.path), set(context.methods or ())


def rss(pid: int) -> int:
    """Resident memory of process ``pid`` in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def read_answer(sock: socket.socket, sent: int) -> Answer:
    """The HTTP response on ``sock`` (read until its Content-Length or the close)."""
    data = b""
    while True:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            lines = data[:end].decode("latin-1").split("\r\n")
            headers = {
                k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
            }
            if len(data) >= end + 4 + int(headers.get("content-length", "0")):
                return Answer(int(lines[0].split()[1]), headers, data[end + 4 :], sent)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        except TimeoutError:
            raise AssertionError(f"no answer within {TIMEOUT:g} s after {sent} bytes sent") from None
        if not chunk:
            raise AssertionError(
                f"connection closed after {sent} bytes sent without a whole answer: {data!r}"
            )
        data += chunk


def post_300_mib(port: int, method: str, path: str, *, announce: bool) -> Answer:
    """``method path`` with a 300 MiB body: announced by Content-Length (nothing sent), or
    chunked, sent until the server answers or closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        framing = f"Content-Length: {TOTAL}" if announce else "Transfer-Encoding: chunked"
        head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json", framing]
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        sent = 0
        if not announce:
            try:
                while sent < TOTAL:
                    readable, _, _ = select.select([sock], [], [], 0)
                    if readable:  # the answer (or the close) came: stop sending
                        break
                    sock.sendall(FRAME)
                    sent += CHUNK
                else:
                    sock.sendall(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server closed while we sent: its answer is still there to read
        return read_answer(sock, sent)


def check(service: str, method: str, path: str, answer: Answer) -> str | None:
    """What is wrong with ``answer``, or None."""
    where = f"{method} {path}: "
    if answer.sent >= STOPPED_BY:
        return where + f"the server took {answer.sent} bytes before answering"
    if path.startswith("/fdo/101/msg/") and method == "POST":
        if answer.status != 500 or answer.headers.get("message-type") != "255":
            return where + f"expected an FDO ErrorMessage, got {answer.status} {answer.headers}"
        return None
    if answer.status != 413 or answer.headers.get("content-type") != "application/json":
        return where + f"expected a JSON 413, got {answer.status} {answer.body[:200]!r}"
    if b"request body larger than" not in answer.body:
        return where + f"unexpected 413 body {answer.body!r}"
    return None


@pytest.mark.parametrize("service", SERVICES)
def test_every_route_refuses_a_300_mib_body_while_reading(stack: Stack, service: str) -> None:
    cases = routes(stack, service)
    paths = {path for _, path in cases}
    for must in {
        "owner": [
            "/ui/login",
            "/api/v1/report",
            "/device/v1/report",
            "/device/v1/checkin",
            "/api/v1/vouchers",
        ],
        "manufacturer": ["/api/v1/vouchers/extend"],
        "rendezvous": ["/api/v1/registrations"],
    }[service]:
        assert must in paths, f"{must} is not a route of the {service}"
    proc = stack.services[service]
    assert proc.process is not None
    pid = proc.process.pid
    problems: list[str] = []
    # Announced by Content-Length: refused without a byte of the body (none is sent).
    for method, path in cases:
        problems.append(
            check(service, method, path, post_300_mib(proc.port, method, path, announce=True)) or ""
        )
    before = rss(pid)
    peak = before
    for method, path in cases:
        answer = post_300_mib(proc.port, method, path, announce=False)
        problems.append(check(service, method, path, answer) or "")
        peak = max(peak, rss(pid))
    problems = [p for p in problems if p]
    assert not problems, "\n".join(problems)
    assert peak - before < RSS_GROWTH, f"{service} RSS grew from {before} to {peak} bytes"
    assert len(cases) >= 3


def test_a_body_within_a_larger_route_limit_reaches_the_route(stack: Stack) -> None:
    """Voucher import (16 MiB) takes a 3 MiB chunked body, past the 1 MiB default: the
    route reads it (no voucher in it: 422), while the default route refuses it."""
    begin, end = b"-----BEGIN OWNERSHIP VOUCHER-----\n", b"\n-----END OWNERSHIP VOUCHER-----\n"
    pem = begin + b"QUFB" * (3 * MiB // 4) + end

    def lazily() -> Iterator[bytes]:
        for start in range(0, len(pem), CHUNK):
            yield pem[start : start + CHUNK]

    with stack.admin("owner") as client:
        imported = client.post("/api/v1/vouchers", content=lazily())
        assert imported.status_code == 422, imported.text
        assert imported.json()["results"]
        refused = client.post("/api/v1/groups", content=lazily())
        assert refused.status_code == 413
        assert refused.json() == {"detail": f"request body larger than {MiB} bytes"}
