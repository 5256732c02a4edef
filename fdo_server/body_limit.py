"""Request bodies limited while they are read, before any route sees them (issue 13).

:class:`BodyLimit` is a pure ASGI middleware in front of every route of a service except
the FDO messages (``POST /fdo/101/msg/N``, which :class:`transport.server.FdoFastPath`
takes before it and limits itself to ``max_body``, answering an FDO ErrorMessage). Each
request gets the limit of its route (:class:`RouteLimit`), or the default:

* a ``Content-Length`` above the limit is answered 413 at once, nothing of the body
  read (a client that sent ``Expect: 100-continue`` is never told to go on);
* a chunked body (any ``Transfer-Encoding``, which frames the body even where a
  ``Content-Length`` is given too) is read here, counted as it arrives, and answered
  413 as soon as it passes the limit; only a body within the limit reaches the app,
  replayed from memory (up to ``memory`` bytes) or from a temporary file (a larger
  route limit), so a body being refused never holds more than ``memory`` bytes.

The temporary file is written on the event loop (small writes to the page cache); only
routes with a limit above ``memory`` use it.

Reading a chunked body before the app runs means the limit holds before authentication
and parsing, on every route, including routes that answer without reading the body.
A body with a ``Content-Length`` within the limit goes to the app as it comes: the HTTP
parser never delivers more than the length announced.

The 413 is JSON (``{"detail": ...}``) with ``Connection: close``: the server stops
reading and closes the connection rather than taking in the rest of the body.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from typing import IO, Any

from transport.dispatch import Response
from transport.server import ASGIApp, Receive, Scope, Send, send_response

Message = MutableMapping[str, Any]

#: Bytes per message when a spooled body is replayed to the app.
REPLAY_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class RouteLimit:
    """``limit`` bytes for ``method`` on the route ``path`` (a route template such as
    ``/api/v1/groups/{name}/revisions``)."""

    method: str
    path: str
    limit: int


class _Disconnected(Exception):
    """The client went away while its body was being read."""


class _Spool:
    """A body being read: in memory up to ``memory`` bytes, then in a temporary file."""

    def __init__(self, memory: int) -> None:
        self._memory = memory
        self._chunks: list[bytes] = []
        self._file: IO[bytes] | None = None
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self._file is None and self.size > self._memory:
            import tempfile  # only a route with a limit above ``memory`` needs it

            self._file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
            for held in self._chunks:
                self._file.write(held)
            self._chunks.clear()
        if self._file is not None:
            self._file.write(chunk)
        elif chunk:
            self._chunks.append(chunk)

    def replay(self, receive: Receive) -> Receive:
        """A ``receive`` that gives the body, then passes on to ``receive`` (a disconnect)."""
        if self._file is None:
            body = b"".join(self._chunks)
            self._chunks.clear()
            sent = False

            async def from_memory() -> Message:
                nonlocal sent
                if sent:
                    return await receive()
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            return from_memory

        file = self._file
        file.seek(0)
        left = self.size

        async def from_file() -> Message:
            nonlocal left
            if left <= 0:
                return await receive()
            chunk = file.read(min(REPLAY_CHUNK, left))
            left = 0 if not chunk else left - len(chunk)
            return {"type": "http.request", "body": chunk, "more_body": left > 0}

        return from_file

    def close(self) -> None:
        self._chunks.clear()
        if self._file is not None:
            self._file.close()


def _framing(scope: Scope) -> tuple[bytes | None, bool]:
    """``(Content-Length value or None, whether a Transfer-Encoding is given)``."""
    length: bytes | None = None
    chunked = False
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = value
        elif name == b"transfer-encoding":
            chunked = True
    return length, chunked


def limit_refusal(status: int, detail: str) -> Response:
    """The answer to a body refused here (400, 413): JSON ``{"detail": ...}`` and
    ``Connection: close``, so the server stops reading and closes."""
    body = json.dumps({"detail": detail}).encode()
    fields = (
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    )
    return Response(status, body, fields)


async def _answer(send: Send, status: int, detail: str) -> None:
    await send_response(send, limit_refusal(status, detail))


def too_large_detail(limit: int) -> str:
    """The ``detail`` of the 413 for ``limit``."""
    return f"request body larger than {limit} bytes"


_PARAMETER = re.compile(r"{([^{}]*)}")


def route_pattern(path: str) -> re.Pattern[str]:
    """The pattern of a route template (``/api/v1/groups/{name}/revisions``), as Starlette
    compiles it: each ``{name}`` one path segment, everything else literal. Only plain
    parameters: a converter (``{name:int}``) is refused (ValueError)."""
    parts, start = ["^"], 0
    for match in _PARAMETER.finditer(path):
        name = match.group(1)
        if not name.isidentifier():
            raise ValueError(f"route {path!r}: only plain {{name}} parameters, not {{{name}}}")
        parts += [re.escape(path[start : match.start()]), f"(?P<{name}>[^/]+)"]
        start = match.end()
    parts += [re.escape(path[start:]), "$"]
    return re.compile("".join(parts))


class BodyLimit:
    """ASGI middleware: every HTTP request's body limited to its route's limit, or
    ``default`` bytes; a chunked body is held in memory up to ``memory`` bytes (default:
    ``default``) and in a temporary file beyond."""

    def __init__(
        self, app: ASGIApp, *, default: int, routes: Iterable[RouteLimit] = (), memory: int | None = None
    ) -> None:
        self.app = app
        self.default = default
        self.memory = default if memory is None else memory
        self.routes: list[tuple[str, re.Pattern[str], int]] = [
            (route.method.upper(), route_pattern(route.path), route.limit) for route in routes
        ]

    def limit_for(self, method: str, path: str) -> int:
        """The body limit of ``method path``."""
        for wanted, pattern, limit in self.routes:
            if wanted == method and pattern.match(path):
                return limit
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        length, chunked = _framing(scope)
        if not chunked:  # a Transfer-Encoding frames the body even beside a Content-Length
            if length is None:  # HTTP/1.1 without either header: no body
                await self.app(scope, receive, send)
            elif not length.isdigit():
                await _answer(send, 400, "Content-Length is not a number")
            elif int(length) > limit:
                await _answer(send, 413, too_large_detail(limit))
            else:
                await self.app(scope, receive, send)
            return
        spool = _Spool(min(self.memory, limit))
        try:
            try:
                within = await self._read(receive, spool, limit)
            except _Disconnected:
                return
            if not within:
                spool.close()
                await _answer(send, 413, too_large_detail(limit))
                return
            await self.app(scope, spool.replay(receive), send)
        finally:
            spool.close()

    @staticmethod
    async def _read(receive: Receive, spool: _Spool, limit: int) -> bool:
        """Read the whole body into ``spool``; False as soon as it passes ``limit``."""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk: bytes = message.get("body", b"")
            if spool.size + len(chunk) > limit:
                return False
            spool.write(chunk)
            if not message.get("more_body", False):
                return True
