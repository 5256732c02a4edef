"""Where :class:`transport.server.FdoEndpoint` runs the message handler: the thread pool,
the event loop, or the loop while messages are quick (:class:`InlineWhileFast`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.routing import Route

from fdo_server.db import inline_messages
from transport.dispatch import Response
from transport.server import FdoEndpoint, InlineWhileFast

CBOR = {"Content-Type": "application/cbor"}


class Handler:
    """Answers every message, noting whether it ran on the event loop; sleeps if asked."""

    def __init__(self) -> None:
        self.on_loop: list[bool] = []
        self.sleep = 0.0

    def __call__(self, msg_type: str, headers: Mapping[str, str], data: bytes | None) -> Response:
        try:
            asyncio.get_running_loop()
            self.on_loop.append(True)
        except RuntimeError:  # a worker thread has no running loop
            self.on_loop.append(False)
        time.sleep(self.sleep)
        return Response.make(200, b"\xa0", {}, "application/cbor")


def client(handler: Handler, inline: bool | InlineWhileFast) -> TestClient:
    endpoint = FdoEndpoint(handler, 4096, inline=inline)
    app = FastAPI(routes=[Route("/fdo/101/msg/{msg_type}", endpoint, methods=["POST"])])
    return TestClient(app)


def post(http: TestClient) -> None:
    assert http.post("/fdo/101/msg/30", content=b"\x80", headers=CBOR).status_code == 200


def test_fixed_places() -> None:
    for inline, expected in ((False, False), (True, True)):
        handler = Handler()
        with client(handler, inline) as http:
            post(http)
            post(http)
        assert handler.on_loop == [expected, expected]


def test_inline_while_fast_moves_to_threads_after_a_slow_message_and_back_after_cooldown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [1000.0]
    policy = InlineWhileFast(budget=0.05, cooldown=30.0, clock=lambda: now[0])
    handler = Handler()
    with client(handler, policy) as http:
        post(http)  # quick: stays on the loop
        handler.sleep = 0.1
        post(http)  # slow, on the loop: the next ones go to the thread pool
        handler.sleep = 0.0
        post(http)
        now[0] += 29.0
        post(http)  # still cooling down
        handler.sleep = 0.1
        post(http)  # slow in a thread: the cooldown starts again
        handler.sleep = 0.0
        now[0] += 29.0
        post(http)
        now[0] += 1.5
        post(http)  # 30 s after the last slow message: back on the loop
        post(http)
    assert handler.on_loop == [True, True, False, False, False, False, True, True]
    # One warning when messages left the loop, none while they were in threads already.
    warnings = [r for r in caplog.records if "thread pool" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"


def test_services_pick_by_database() -> None:
    assert inline_messages("sqlite:////tmp/x.db") is True
    assert isinstance(inline_messages("postgresql+psycopg://u@h/db"), InlineWhileFast)
