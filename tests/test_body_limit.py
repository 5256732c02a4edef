""":class:`fdo_server.body_limit.BodyLimit` over the ASGI interface: what reaches the app.

The real-HTTP refusals (every route of the three services, 300 MiB bodies, memory) are
in ``tests/e2e/test_body_limits.py``; these check that bodies within their limits reach
the app whole and unchanged (from memory and from the temporary file), that the route
limits apply to their routes only, and that nothing is read of an announced oversize body.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator

import pytest
from starlette.types import Message, Receive, Scope, Send

from fdo_server.body_limit import BodyLimit, RouteLimit

KiB = 1024


class Echo:
    """An ASGI app answering 200 with the SHA-256 and length of the body it read."""

    def __init__(self) -> None:
        self.called = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.called = True
        digest, size = hashlib.sha256(), 0
        while True:
            message = await receive()
            assert message["type"] == "http.request"
            digest.update(message["body"])
            size += len(message["body"])
            if not message.get("more_body", False):
                break
        body = json.dumps({"sha256": digest.hexdigest(), "size": size}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


def run(
    middleware: BodyLimit,
    path: str,
    chunks: list[bytes],
    *,
    length: int | None = None,
    chunked: bool = False,
    method: str = "POST",
) -> tuple[int, dict[bytes, bytes], bytes, int]:
    """``(status, headers, body, chunks read)`` of one request through ``middleware``."""
    headers = [(b"content-length", str(length).encode())] if length is not None else []
    if length is None or chunked:
        headers.append((b"transfer-encoding", b"chunked"))
    scope: Scope = {"type": "http", "method": method, "path": path, "headers": headers}
    feed: Iterator[bytes] = iter(chunks)
    read = 0
    sent: list[Message] = []

    async def receive() -> Message:
        nonlocal read
        chunk = next(feed, None)
        if chunk is None:
            return {"type": "http.disconnect"}
        read += 1
        return {"type": "http.request", "body": chunk, "more_body": read < len(chunks)}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(middleware(scope, receive, send))
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], dict(start["headers"]), body, read


def chunks_of(size: int, chunk: int = 16 * KiB) -> list[bytes]:
    data = bytes(i % 251 for i in range(size))
    return [data[i : i + chunk] for i in range(0, size, chunk)]


@pytest.fixture
def middleware() -> BodyLimit:
    return BodyLimit(
        Echo(),
        default=64 * KiB,
        routes=[RouteLimit("POST", "/big/{name}/upload", 1024 * KiB)],
    )


@pytest.mark.parametrize("size", [0, 1, 64 * KiB, 1024 * KiB])
def test_a_chunked_body_within_its_limit_reaches_the_app_unchanged(middleware: BodyLimit, size: int) -> None:
    path = "/small" if size <= 64 * KiB else "/big/x/upload"  # the last one goes through a file
    chunks = chunks_of(size) or [b""]
    status, _, body, _ = run(middleware, path, chunks)
    assert status == 200
    assert json.loads(body) == {"sha256": hashlib.sha256(b"".join(chunks)).hexdigest(), "size": size}


def test_a_chunked_body_over_its_limit_is_refused_as_soon_as_it_passes(middleware: BodyLimit) -> None:
    status, headers, body, read = run(middleware, "/small", chunks_of(1024 * KiB))
    assert (status, headers[b"connection"]) == (413, b"close")
    assert json.loads(body) == {"detail": "request body larger than 65536 bytes"}
    assert read == 5  # 4 x 16 KiB fit, the fifth passes the limit: nothing more was read
    app = middleware.app
    assert isinstance(app, Echo) and not app.called
    status, _, _, read = run(middleware, "/big/x/upload", chunks_of(1024 * KiB + 1))
    assert status == 413 and read == 65


@pytest.mark.parametrize(("method", "path"), [("GET", "/big/x/upload"), ("POST", "/big/x/upload/more")])
def test_a_route_limit_holds_for_its_method_and_path_only(
    middleware: BodyLimit, method: str, path: str
) -> None:
    status, _, _, _ = run(middleware, path, chunks_of(128 * KiB), method=method)
    assert status == 413


def test_an_announced_oversize_body_is_refused_without_reading(middleware: BodyLimit) -> None:
    status, _, body, read = run(middleware, "/small", chunks_of(128 * KiB), length=128 * KiB)
    assert (status, read) == (413, 0)
    assert json.loads(body)["detail"] == "request body larger than 65536 bytes"
    status, _, _, read = run(middleware, "/small", [b"x" * 10], length=10)
    assert (status, read) == (200, 1)
    status, _, _, read = run(middleware, "/small", [b"x"], length=None)
    assert status == 200


def test_a_transfer_encoding_beside_a_content_length_is_counted_as_read(middleware: BodyLimit) -> None:
    status, _, _, read = run(middleware, "/small", chunks_of(1024 * KiB), length=10, chunked=True)
    assert (status, read) == (413, 5)


def test_a_content_length_that_is_not_a_number_is_refused(middleware: BodyLimit) -> None:
    scope: Scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"content-length", b"-1")]}
    sent: list[Message] = []

    async def receive() -> Message:
        raise AssertionError("nothing is read")

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(middleware(scope, receive, send))
    assert sent[0]["status"] == 400


def test_a_client_gone_while_sending_reaches_no_app() -> None:
    app = Echo()
    middleware = BodyLimit(app, default=64 * KiB)
    chunks = chunks_of(32 * KiB)

    async def main() -> list[Message]:
        sent: list[Message] = []
        messages: list[Message] = [
            {"type": "http.request", "body": chunks[0], "more_body": True},
            {"type": "http.disconnect"},
        ]
        feed = iter(messages)

        async def receive() -> Message:
            return next(feed)

        async def send(message: Message) -> None:
            sent.append(message)

        scope: Scope = {
            "type": "http",
            "method": "POST",
            "path": "/",
            "headers": [(b"transfer-encoding", b"chunked")],
        }
        await middleware(scope, receive, send)
        return sent

    assert asyncio.run(main()) == []
    assert not app.called
