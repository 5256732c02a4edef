"""``POST /device/v1/checkin`` as a bare ASGI app, in front of the app's routing.

Check-in is the request a fleet sends most (100,000 devices every 5 minutes is 333 a
second), so it takes the path FDO messages take (:class:`transport.server.FdoEndpoint`):
no middleware stack, routing, dependency injection or response-model round trip; the
body is read with a size limit, validated by the same model as the documented route
(:class:`owner.report_api.CheckinIn`, through its compiled JSON validator) and recorded
by the same :func:`owner.report_api.answer_checkin`, on the event loop while the
database is quick (:func:`fdo_server.db.inline_messages`). Answers are those of the
route: 200 with :class:`~owner.report_api.CheckinOut`, 401 with ``WWW-Authenticate:
Bearer`` and nothing recorded, 413 for a body over :data:`MAX_BODY`, 422 with the
validation errors (as FastAPI words them, without echoing the input), 503 with
``Retry-After`` while the database cannot be reached.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from owner.report_api import CheckinIn, CheckinOut, answer_checkin
from transport.server import Disconnected, InlineWhileFast, read_body, request_headers

log = logging.getLogger(__name__)

PATH = "/device/v1/checkin"
#: A check-in is a few hundred bytes; its largest field (the error text) is 2,000
#: characters, so 64 KiB leaves room for any device that adds fields.
MAX_BODY = 64 * 1024
RETRY_AFTER_SECONDS = 5

_VALIDATE = TypeAdapter(CheckinIn).validate_json
_JSON = [(b"content-type", b"application/json")]


def _json(body: object) -> bytes:
    return json.dumps(body, ensure_ascii=True, separators=(",", ":")).encode()


def _bearer(headers: Mapping[str, str]) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class CheckinEndpoint:
    """Serves ``POST /device/v1/checkin``; hands every other request to ``app``."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        engine: Engine,
        clock: Callable[[], datetime],
        interval: int,
        inline: bool | InlineWhileFast,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.engine = engine
        self.clock = clock
        self.interval = interval
        self.inline = inline
        self.wake = wake

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = request_headers(scope)
        try:
            data = await read_body(headers, receive, MAX_BODY)
        except Disconnected:
            return
        if data is None:
            # As fdo_server.body_limit does: close, so the rest of the body is not read.
            too_large = {"detail": f"request body larger than {MAX_BODY} bytes"}
            await _send(send, 413, too_large, [(b"connection", b"close")])
            return
        token = _bearer(headers)
        if token is None:
            await _send(send, 401, {"detail": "missing device credential"}, _CHALLENGE)
            return
        try:
            body = _VALIDATE(data)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False, include_input=False)
            detail = [{**e, "loc": ["body", *e["loc"]]} for e in errors]
            await _send(send, 422, {"detail": detail})
            return
        try:
            answer = await self._answer(token, body)
        except DBAPIError as exc:
            log.warning("check-in: the database cannot be reached: %s", type(exc.orig or exc).__name__)
            retry = [(b"retry-after", str(RETRY_AFTER_SECONDS).encode())]
            await _send(send, 503, {"detail": "the owner's database is unavailable; retry later"}, retry)
            return
        if answer is None:
            await _send(send, 401, {"detail": "device credential refused"}, _CHALLENGE)
            return
        await _send_raw(send, 200, answer.model_dump_json(exclude_none=True).encode())

    async def _answer(self, token: str, body: CheckinIn) -> CheckinOut | None:
        def run() -> CheckinOut | None:
            return answer_checkin(
                self.engine, token, body, now=self.clock(), interval=self.interval, wake=self.wake
            )

        policy = self.inline
        if policy is True:
            return run()
        if policy is False:
            return await run_in_threadpool(run)
        start = time.perf_counter()
        try:
            return run() if policy.inline() else await run_in_threadpool(run)
        finally:
            policy.took(time.perf_counter() - start)


_CHALLENGE = [(b"www-authenticate", b"Bearer")]


async def _send(send: Send, status: int, body: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await _send_raw(send, status, _json(body), headers)


async def _send_raw(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    head = [*_JSON, (b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})
