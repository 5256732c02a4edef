"""The owner's device routes as a bare ASGI app, in front of the app's routing.

:class:`DeviceEndpoint` serves ``POST /device/v1/checkin``, ``POST /device/v1/report``
and its deprecated alias ``POST /api/v1/report`` the way FDO messages are served
(:class:`transport.server.FdoEndpoint`): no middleware stack, routing, dependency
injection or response-model round trip, and no web framework, pydantic or SQLAlchemy
imported (issue 15): bodies are validated by :mod:`owner.device_body`, the database work
runs :class:`fdo_server.sql.Sql` statements on the service's
:class:`~fdo_server.sql.Database`. The routes of :mod:`owner.report_api` stay declared
for the API documentation and serve where the endpoint is not mounted; both call the
same database work (:func:`~owner.device_api.answer_checkin`,
:func:`~owner.device_api.answer_report`), on the event loop while the database is quick
(:func:`fdo_server.sql.inline_messages`) or in anyio's worker threads
(:func:`transport.server.run_in_thread`).

**Check-in** is the request a fleet sends most (100,000 devices every 5 minutes is 333
a second), so its body is validated as ``CheckinIn``'s JSON validator does
(:func:`owner.device_body.checkin_body`). Answers: 200 with ``CheckinOut``, 401 with
``WWW-Authenticate: Bearer`` and nothing recorded, 413 for a body over :data:`MAX_BODY`,
422 with the validation errors (as FastAPI words them, without echoing the input).

**Report** answers byte for byte as the route in the app does (``tests/owner/
test_device_endpoints.py`` compares them), in the route's order:

* 400 for a ``Content-Length`` that is not a number and 413 for a body over the
  app's ``max_request_body`` (the answers of :class:`fdo_server.body_limit.BodyLimit`,
  whose limit applies to these routes, with ``Connection: close``);
* 422 as FastAPI words it: the body parsed as JSON only with a JSON content type
  (otherwise validated as raw bytes), ``json_invalid`` for malformed JSON, ``missing``
  for an empty body, else ``ReportIn``'s errors with their input
  (:func:`owner.device_body.report_body`); 400 for a JSON body that is not text
  (``There was an error parsing the body``);
* 401 with ``WWW-Authenticate: Bearer``: no bearer credential, or a refused one;
* 200 with ``ReportOut`` (``{"status": ...}``).

Both answer a database error (the driver's) as the app's handlers answer SQLAlchemy's
(:func:`fdo_server.device_app.database_error_answer`): 503 with ``Retry-After`` while it
cannot be reached, 422 for a value it refuses; any other exception goes up to the app's
error middleware (the plain 500 the route's would get).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from fdo_server.body_limit import limit_refusal, too_large_detail
from fdo_server.device_app import database_error_answer, json_response
from owner.device_api import CheckinAnswer, answer_checkin, answer_report
from owner.device_body import ReportBody, checkin_body, report_body
from transport.dispatch import Response
from transport.server import (
    ASGIApp,
    Disconnected,
    InlineWhileFast,
    Receive,
    Scope,
    Send,
    read_body,
    request_headers,
    run_in_thread,
    send_response,
)

if TYPE_CHECKING:
    from fdo_server.sql import Database

log = logging.getLogger(__name__)
T = TypeVar("T")

PATH = "/device/v1/checkin"
#: ``POST /device/v1/report`` and its deprecated alias.
REPORT_PATHS = frozenset({"/device/v1/report", "/api/v1/report"})
#: A check-in is a few hundred bytes; its largest field (the error text) is 2,000
#: characters, so 64 KiB leaves room for any device that adds fields.
MAX_BODY = 64 * 1024

_JSON = "application/json"
_CHALLENGE = {"WWW-Authenticate": "Bearer"}
_MISSING = object()


def _invalid(errors: list[dict[str, Any]]) -> Response:
    """The app's 422 for a request that does not validate (``fdo_server.web_errors._invalid``:
    FastAPI's body, every non-ASCII character escaped)."""
    detail = _jsonable(errors)
    data = json.dumps({"detail": detail}, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return Response.make(422, data.encode(), {}, _JSON)


def _jsonable(value: Any) -> Any:
    """``fastapi.encoders.jsonable_encoder`` for what validation errors hold here (JSON
    values, and the raw body as bytes): keys starting ``_sa`` dropped, bytes decoded."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items() if not (isinstance(k, str) and k.startswith("_sa"))}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode()
    return value


def _bearer(headers: Mapping[str, str]) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


_MISSING_CREDENTIAL = json_response(401, {"detail": "missing device credential"}, _CHALLENGE)
_REFUSED = json_response(401, {"detail": "device credential refused"}, _CHALLENGE)


def _is_json(content_type: str | None) -> bool:
    """Whether FastAPI parses a body of ``content_type`` as JSON (``application/json`` or
    ``application/*+json``; no content type is not JSON)."""
    if not content_type:
        return False
    if content_type == _JSON:
        return True
    import email.message  # loaded for other content types only

    message = email.message.Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


def _report_body(headers: Mapping[str, str], data: bytes) -> ReportBody | Response:
    """The report, or the answer to a body FastAPI would refuse (as it reads a body
    parameter: ``fastapi.routing.get_request_handler``)."""
    value: Any = _MISSING
    if data:
        if _is_json(headers.get("content-type")):
            try:
                value = json.loads(data)
            except json.JSONDecodeError as exc:
                error = {
                    "type": "json_invalid",
                    "loc": ["body", exc.pos],
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": exc.msg},
                }
                return _invalid([error])
            except Exception:  # not text (UnicodeDecodeError), too deeply nested
                return json_response(400, {"detail": "There was an error parsing the body"})
        else:
            value = data
    if value is _MISSING:
        return _invalid([{"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}])
    body = report_body(value)
    if isinstance(body, list):
        return _invalid([{**e, "loc": ["body", *e["loc"]]} for e in body])
    return body


class DeviceEndpoint:
    """Serves the owner's device routes (check-in, report and its alias); hands every
    other request to ``app``. ``max_request_body`` is the app's limit of the report
    routes (``settings.max_request_body``); check-in has its own, :data:`MAX_BODY`."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        database: Database,
        clock: Callable[[], datetime],
        interval: int,
        inline: bool | InlineWhileFast,
        max_request_body: int,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.database = database
        self.clock = clock
        self.interval = interval
        self.inline = inline
        self.max_request_body = max_request_body
        self.wake = wake

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if path == PATH:
                await self._checkin(scope, receive, send)
                return
            if path in REPORT_PATHS:
                await self._report(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _checkin(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = request_headers(scope)
        try:
            data = await read_body(headers, receive, MAX_BODY)
        except Disconnected:
            return
        if data is None:
            # As fdo_server.body_limit does: close, so the rest of the body is not read.
            too_large = {"detail": f"request body larger than {MAX_BODY} bytes"}
            await send_response(send, json_response(413, too_large, {"Connection": "close"}))
            return
        token = _bearer(headers)
        if token is None:
            await send_response(send, _MISSING_CREDENTIAL)
            return
        body = checkin_body(data)
        if isinstance(body, list):
            await send_response(send, _invalid([{**e, "loc": ["body", *e["loc"]]} for e in body]))
            return

        def run() -> CheckinAnswer | None:
            now = self.clock()
            return answer_checkin(self.database, token, body, now=now, interval=self.interval, wake=self.wake)

        answer = await self._database(run, PATH)
        if isinstance(answer, Response):
            await send_response(send, answer)
        elif answer is None:
            await send_response(send, _REFUSED)
        else:
            await send_response(send, json_response(200, answer.content()))

    async def _report(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = request_headers(scope)
        if "transfer-encoding" in headers:  # it frames the body, even beside a Content-Length
            headers = {name: value for name, value in headers.items() if name != "content-length"}
        elif not headers.get("content-length", "0").isdigit():
            await send_response(send, limit_refusal(400, "Content-Length is not a number"))
            return
        limit = self.max_request_body
        try:
            data = await read_body(headers, receive, limit)
        except Disconnected:
            return
        if data is None:
            await send_response(send, limit_refusal(413, too_large_detail(limit)))
            return
        body = _report_body(headers, data)
        if isinstance(body, Response):
            await send_response(send, body)
            return
        token = _bearer(headers)
        if token is None:
            await send_response(send, _MISSING_CREDENTIAL)
            return

        def run() -> str | None:
            return answer_report(self.database, token, body, now=self.clock())

        answer = await self._database(run, scope["path"])
        if isinstance(answer, Response):
            await send_response(send, answer)
        elif answer is None:
            await send_response(send, _REFUSED)
        else:
            await send_response(send, json_response(200, {"status": answer}))

    async def _database(self, run: Callable[[], T], path: str) -> T | Response:
        """``run()`` inline or in a thread (:attr:`inline`), or the answer to its
        database error."""
        policy = self.inline
        try:
            if policy is True:
                return run()
            if policy is False:
                return await run_in_thread(run)
            start = time.perf_counter()
            try:
                return run() if policy.inline() else await run_in_thread(run)
            finally:
                policy.took(time.perf_counter() - start)
        except Exception as exc:
            answer = database_error_answer("POST", path, exc)
            if answer is None:
                raise
            return answer
