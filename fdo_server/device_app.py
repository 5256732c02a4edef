"""A service's device plane as a bare ASGI app: what a worker that serves only devices runs.

With ``serve --admin-process`` (``FDO_<SERVICE>_ADMIN_PROCESS``) the admin plane runs in
a process of its own and the device listener's workers serve nothing but devices
(:mod:`fdo_server.planes`). Such a worker needs none of FastAPI's routing, dependency
injection, validation or documentation: the FDO messages already go to a bare endpoint
(:class:`transport.server.FdoEndpoint`) in front of the app, and the owner's check-in
too. :class:`DeviceApp` serves the rest of the device plane itself, answering each
request as the FastAPI app of :func:`fdo_server.service.service_app` does
(``tests/test_device_app.py`` sends both the same requests):

* ``POST /fdo/101/msg/<type>``: the :class:`~transport.server.FdoEndpoint`;
* the routes a service declares (:meth:`DeviceApp.add_route`) and serves by middleware
  in front: the owner's check-in and report (:class:`owner.checkin_endpoint.DeviceEndpoint`);
* ``GET /health``: ``{"status": "ok"}``; ``/ready``: the readiness
  check (:mod:`fdo_server.readiness`) and the service's keys, 200 ``{"status": "ready"}``
  or 503 ``{"status": "unavailable", "reason": ...}``;
* another method on those paths (or on an FDO message path): 405
  ``{"detail": "Method Not Allowed"}`` with ``Allow``; one of those paths with a
  trailing slash: 307 to the path without it (Starlette's ``redirect_slashes``); any
  other path: 404 ``{"detail": "Not Found"}``; all after the request body limit
  (:class:`fdo_server.body_limit.BodyLimit`), as there;
* an exception a route did not answer: 500 ``Internal Server Error`` (text), then raised
  on for the server to log, as Starlette's ``ServerErrorMiddleware`` does;
* the lifespan: the service's background work (the session sweep, the owner's TO0
  scheduler) starts with the worker and stops before the engine is disposed.

Middleware the service adds (:meth:`DeviceApp.add_middleware`: the edge guard, the
owner's device endpoints) wraps what was there, the last added outermost, as Starlette
stacks it. This module imports no web framework.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import traceback
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from contextlib import AbstractAsyncContextManager
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

from fdo_server import planes
from fdo_server.body_limit import BodyLimit, RouteLimit
from fdo_server.sql import RETRY_AFTER_SECONDS, PoolTimeout
from transport.dispatch import Response
from transport.server import MSG_PATH, ASGIApp, FdoEndpoint, FdoFastPath, Receive, Scope, Send, send_response

#: The log of :func:`database_error_answer` (as the FastAPI app's handlers had it).
log = logging.getLogger("fdo_server.service")

#: The ``Allow`` of a 405: the probes' and the FDO message path's.
_GET = "GET"
_POST = "POST"


def json_response(status: int, content: Any, fields: Mapping[str, str] | None = None) -> Response:
    """``content`` as FastAPI's ``JSONResponse`` answers it: UTF-8 JSON (NaN refused),
    ``fields``, then ``content-length`` and ``content-type``."""
    body = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    return Response.make(status, body, fields or {}, "application/json")


def _database_error(exc: Exception) -> tuple[str, BaseException] | None:
    """``("data", error)`` for a value the database refuses, ``("unavailable", error)``
    while it cannot be reached, else None; ``error`` is the driver's (SQLAlchemy's
    ``orig``). A driver's own errors (:mod:`fdo_server.sql`) are sorted as SQLAlchemy
    sorts them when it wraps them (``DataError``; ``OperationalError`` and
    ``InterfaceError``; a pool timeout). Only modules already loaded are looked at: an
    error of one that is not loaded cannot have been raised."""
    if isinstance(exc, PoolTimeout):
        return "unavailable", exc
    sqlite3 = sys.modules.get("sqlite3")  # not loaded by a worker on PostgreSQL
    if sqlite3 is not None:
        if isinstance(exc, sqlite3.DataError):
            return "data", exc
        if isinstance(exc, sqlite3.OperationalError | sqlite3.InterfaceError):
            return "unavailable", exc
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None:
        if isinstance(exc, psycopg.DataError):
            return "data", exc
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            return "unavailable", exc
    if "sqlalchemy" in sys.modules:
        from sqlalchemy.exc import DataError

        from fdo_server.db import DATABASE_UNAVAILABLE

        orig = getattr(exc, "orig", None) or exc
        if isinstance(exc, DataError):
            return "data", orig
        if isinstance(exc, DATABASE_UNAVAILABLE):
            return "unavailable", orig
    return None


def database_error_answer(method: str, path: str, exc: Exception) -> Response | None:
    """The answer to a database error a request met, logged: 422 with the database's
    one-line reason for a value it refuses (``DataError``: the unit of work rolled back),
    503 with ``Retry-After`` while it cannot be reached (:data:`fdo_server.db.DATABASE_UNAVAILABLE`,
    or the driver's errors of that kind; ``/ready`` says not ready until it is back); None
    for any other error (a 500). The FastAPI app's handlers (:mod:`fdo_server.web_errors`)
    and the owner's device routes answer with it."""
    kind = _database_error(exc)
    if kind is None:
        return None
    what, orig = kind
    if what == "data":
        reason = str(orig).strip().splitlines()[0]
        log.warning("%s %s: the database refused a value: %s", method, path, reason)
        return json_response(422, {"detail": f"a value cannot be stored: {reason}"})
    lines = str(orig).strip().splitlines()
    reason = f"{type(orig).__name__}: {lines[0]}" if lines else type(orig).__name__
    log.warning("%s %s: the database is unavailable: %s", method, path, reason)
    retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    return json_response(503, {"detail": "the database is unavailable; retry later"}, retry)


async def send_json(send: Send, status: int, content: Any, fields: Mapping[str, str] | None = None) -> None:
    """Send :func:`json_response`'s answer."""
    await send_response(send, json_response(status, content, fields))


class DeviceApp:
    """The device plane of one service (see the module docstring).

    ``endpoint`` serves the FDO messages; ``lifespan`` is entered when the worker starts
    and left when it stops; ``probe`` (None when the database answers, else a reason)
    and ``keys_loaded`` make ``/ready``; ``max_request_body`` and ``body_limits`` limit
    the bodies of the other requests. :attr:`state` holds what the service keeps for its
    routes (as ``app.state`` of a FastAPI app).
    """

    def __init__(
        self,
        *,
        endpoint: FdoEndpoint,
        lifespan: Callable[[], AbstractAsyncContextManager[None]],
        probe: Callable[[], str | None],
        keys_loaded: Callable[[], bool],
        max_request_body: int,
        body_limits: Sequence[RouteLimit] = (),
    ) -> None:
        self.state = SimpleNamespace()
        #: ``Allow`` of each route by path (the FDO message path aside).
        self.routes: dict[str, str] = {"/health": _GET, "/ready": _GET}
        self.lifespan = lifespan
        self.probe = probe
        self.keys_loaded = keys_loaded
        # As the FastAPI app stacks them: the body limit in front of the routes, the FDO
        # endpoint in front of the body limit (FDO messages keep their own limit).
        self.app: ASGIApp = FdoFastPath(
            BodyLimit(self._routes, default=max_request_body, routes=body_limits), endpoint
        )

    def add_route(self, path: str, method: str) -> None:
        """Declare a device-plane route that middleware in front serves (the owner's
        check-in): another method on it is 405, its path with a trailing slash 307, and
        the device listener passes it on (:func:`fdo_server.planes.device_paths`)."""
        self.routes[path] = method
        planes.device_paths(self).add(path)

    def add_middleware(self, middleware: Callable[..., ASGIApp], **options: Any) -> None:
        """Wrap the app in ``middleware(app, **options)`` (outermost)."""
        self.app = middleware(self.app, **options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            if not started:
                body = b"Internal Server Error"
                fields = [
                    (b"content-length", str(len(body)).encode()),
                    (b"content-type", b"text/plain; charset=utf-8"),
                ]
                await send({"type": "http.response.start", "status": 500, "headers": fields})
                await send({"type": "http.response.body", "body": body})
            raise

    async def _routes(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # no websocket route: closed, as Starlette's router does
            await send({"type": "websocket.close", "code": 1000})
            return
        path: str = scope["path"]
        method: str = scope["method"]
        allow = self._allowed(path)
        if allow is None:
            if path != "/" and path.endswith("/") and self._allowed(path[:-1]) is not None:
                await _redirect(scope, path[:-1], send)
            else:
                await send_json(send, 404, {"detail": "Not Found"})
        elif method != "GET" or allow != _GET:
            # A POST of an FDO message (or of a route added) went to the endpoint in front:
            # this is another method.
            await send_json(send, 405, {"detail": "Method Not Allowed"}, {"Allow": allow})
        elif path == "/health":
            await send_json(send, 200, {"status": "ok"})
        else:
            await self._ready(send)

    def _allowed(self, path: str) -> str | None:
        """The ``Allow`` of the route at ``path``, None where there is none."""
        allow = self.routes.get(path)
        if (
            allow is None
            and path.startswith(MSG_PATH)
            and path != MSG_PATH
            and "/" not in path[len(MSG_PATH) :]
        ):
            return _POST
        return allow

    async def _ready(self, send: Send) -> None:
        # In a thread, as FastAPI runs the route: the check may wait for a hung database.
        reason = await asyncio.get_running_loop().run_in_executor(None, self.probe)
        if reason is None and not self.keys_loaded():
            reason = "keys not loaded"
        if reason is not None:
            await send_json(send, 503, {"status": "unavailable", "reason": reason})
        else:
            await send_json(send, 200, {"status": "ready"})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """The ASGI lifespan protocol around :attr:`lifespan`, as Starlette's router runs it."""
        await receive()  # lifespan.startup
        context = self.lifespan()
        try:
            await context.__aenter__()
        except BaseException:
            await send({"type": "lifespan.startup.failed", "message": traceback.format_exc()})
            raise
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        try:
            await context.__aexit__(None, None, None)
        except BaseException:
            await send({"type": "lifespan.shutdown.failed", "message": traceback.format_exc()})
            raise
        await send({"type": "lifespan.shutdown.complete"})


async def _redirect(scope: Scope, path: str, send: Send) -> None:
    """307 to ``path`` on the URL the request came to, as Starlette's ``RedirectResponse``."""
    scheme: str = scope.get("scheme", "http")
    host = next((value.decode("latin-1") for name, value in scope["headers"] if name == b"host"), None)
    server = scope.get("server")
    if host is not None:
        url = f"{scheme}://{host}{path}"
    elif server is None:
        url = path
    else:
        name, port = server
        default = {"http": 80, "https": 443, "ws": 80, "wss": 443}.get(scheme)
        url = f"{scheme}://{name}{path}" if port == default else f"{scheme}://{name}:{port}{path}"
    query: bytes = scope.get("query_string", b"")
    if query:
        url += "?" + query.decode("latin-1")
    location = quote(url, safe=":/%#?=@[]!$&'()*+,;").encode("latin-1")
    fields = [(b"location", location), (b"content-length", b"0")]
    await send({"type": "http.response.start", "status": 307, "headers": fields})
    await send({"type": "http.response.body", "body": b""})
