"""fdo_server.uvserver: uvicorn's server and worker supervisor without idle wake-ups.

Nothing here is timed. An idle :class:`IdleServer` has no timer at all on its event
loop (uvicorn's own server has its 0.1 s tick there, checked alongside so the check
means something); it still ends on ``should_exit``, on a signal taken by another
thread, and at its request limit, and its ``Date`` header is the current second. The
:class:`Supervisor` waits with no timeout while its workers run, starts a worker again
when one is killed, stops on SIGTERM, and stops by itself when a worker cannot start.
"""

from __future__ import annotations

import asyncio
import multiprocessing.connection
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from email.utils import formatdate, parsedate_to_datetime
from typing import Any

import httpx
import pytest
import uvicorn

from fdo_server import uvserver
from fdo_server.http_protocol import HTTP_PROTOCOL
from fdo_server.launcher import free_port
from fdo_server.serve import listen_socket


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A tiny ASGI app: answers every request with its process id."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": str(os.getpid()).encode()})


async def failing_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An app whose startup fails (uvicorn's worker then exits with its startup-failure status)."""
    assert scope["type"] == "lifespan"
    await receive()
    await send({"type": "lifespan.startup.failed", "message": "no database"})


def config(target: Any = app, **options: Any) -> uvicorn.Config:
    return uvicorn.Config(
        target,
        host="127.0.0.1",
        port=free_port(),
        loop="asyncio",
        http=HTTP_PROTOCOL,
        lifespan="on",
        log_level="warning",
        **options,
    )


async def get(port: int) -> tuple[int, dict[str, str]]:
    """One request on a connection of its own (closed after), from the event loop."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head = data.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in head[1:])
    return int(head[0].split()[1]), {k.lower(): v for k, v in headers.items()}


async def until_started(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    while not server.started:
        assert not task.done(), "the server ended before it started"
        await asyncio.sleep(0.01)
    await asyncio.sleep(0)  # the main loop begins


def timers(loop: asyncio.AbstractEventLoop) -> list[asyncio.TimerHandle]:
    """The timers scheduled on an asyncio loop (its private heap: no public view exists)."""
    return [h for h in getattr(loop, "_scheduled") if not h.cancelled()]  # noqa: B009


# ---------------------------------------------------------------------------- server


@pytest.mark.parametrize("server_class", [uvserver.IdleServer, uvicorn.Server])
def test_an_idle_server_has_no_timer_and_a_current_date(server_class: type[uvicorn.Server]) -> None:
    server = server_class(config())

    async def main() -> list[asyncio.TimerHandle]:
        task = asyncio.create_task(server.serve())
        await until_started(server, task)
        status, headers = await get(server.config.port)
        assert status == 200
        sent = parsedate_to_datetime(headers["date"])
        assert abs((datetime.now(UTC) - sent).total_seconds()) <= 2
        await asyncio.sleep(0)  # the closed connection is gone (its keep-alive timer too)
        idle = timers(asyncio.get_running_loop())
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        return idle

    idle = asyncio.run(main())
    if server_class is uvicorn.Server:
        assert idle, "uvicorn's own server ticks: the check would see it"
    else:
        assert idle == [], "an idle IdleServer sleeps without any timer"


def test_the_date_header_changes_with_the_second(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_000_000.2]
    monkeypatch.setattr(time, "time", lambda: now[0])
    cfg = config(headers=[("x-test", "1")], server_header=False)
    cfg.load()
    server = uvserver.IdleServer(cfg)
    first = server.server_state.default_headers
    assert first == [(b"date", formatdate(1_000_000.2, usegmt=True).encode()), (b"x-test", b"1")]
    now[0] = 1_000_000.9
    assert server.server_state.default_headers is first  # the same second: not computed again
    now[0] = 1_000_001.0
    assert server.server_state.default_headers[0] == (b"date", formatdate(1_000_001, usegmt=True).encode())
    cfg = config(date_header=False, server_header=False)
    cfg.load()
    assert uvserver.IdleServer(cfg).server_state.default_headers == []


def test_the_server_ends_at_its_request_limit() -> None:
    server = uvserver.IdleServer(config(limit_max_requests=2))

    async def main() -> None:
        task = asyncio.create_task(server.serve())
        await until_started(server, task)
        assert (await get(server.config.port))[0] == 200
        assert not task.done()
        assert (await get(server.config.port))[0] == 200
        await asyncio.wait_for(task, 10)  # by itself: nothing else ends it

    asyncio.run(main())
    assert server.limit_reached and not server.should_exit


@pytest.fixture
def sigterm_caught() -> Iterator[list[int]]:
    """SIGTERM recorded instead of ending pytest (uvicorn raises a caught signal again
    once it has shut down)."""
    caught: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda sig, _frame: caught.append(sig))
    try:
        yield caught
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_signal_taken_by_another_thread_ends_the_server(sigterm_caught: list[int]) -> None:
    server = uvserver.IdleServer(config())
    parked = threading.Event()
    other = threading.Thread(target=parked.wait, daemon=True)
    other.start()

    async def main() -> None:
        task = asyncio.create_task(server.serve())
        await until_started(server, task)
        assert other.ident is not None
        signal.pthread_kill(other.ident, signal.SIGTERM)  # not the thread running the loop
        await asyncio.wait_for(task, 30)  # no timer wakes the loop: the signal must

    try:
        asyncio.run(main())
    finally:
        parked.set()
    assert server.should_exit and sigterm_caught == [signal.SIGTERM]


# ---------------------------------------------------------------------------- supervisor


def test_the_supervisor_waits_for_workers_without_a_timeout() -> None:
    sup = uvserver.Supervisor(config(), [], clock=lambda: 100.0)
    assert sup._timeout() is None
    sup.restart_at = {0: 100.4, 1: 103.0}  # a worker that died at once waits for its slot
    assert sup._timeout() == pytest.approx(0.4)
    sup.restart_at = {0: 99.0}
    assert sup._timeout() == 0.0


def _worker_pid(port: int) -> int | None:
    try:
        return int(httpx.get(f"http://127.0.0.1:{port}/", timeout=2).text)
    except (httpx.HTTPError, ValueError):
        return None


def test_the_supervisor_restarts_a_killed_worker_and_stops_on_sigterm() -> None:
    cfg = config("tests.test_uvserver:app", workers=2)
    sock = listen_socket("127.0.0.1", cfg.port)
    waits: list[float | None] = []

    def wait(objects: Sequence[Any], timeout: float | None) -> list[Any]:
        waits.append(timeout)
        return multiprocessing.connection.wait(objects, timeout)

    supervisor = uvserver.Supervisor(cfg, [sock], wait=wait, clock=lambda: 1e12)
    seen: dict[str, Any] = {}

    def drive() -> None:
        try:
            deadline = time.monotonic() + 60
            while (victim := _worker_pid(cfg.port)) is None:
                assert time.monotonic() < deadline, "no worker answered"
                time.sleep(0.1)
            seen["victim"] = victim
            os.kill(victim, signal.SIGKILL)
            while True:  # both slots filled again, by live workers other than the victim
                pids = {w.process.pid for w in supervisor.workers if w is not None and w.process.is_alive()}
                if len(pids) == 2 and victim not in pids and _worker_pid(cfg.port) is not None:
                    break
                assert time.monotonic() < deadline, "the killed worker was not replaced"
                time.sleep(0.1)
            seen["pids"] = pids
        except AssertionError as exc:
            seen["error"] = str(exc)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # the supervisor's handler takes it

    driver = threading.Thread(target=drive)
    driver.start()
    try:
        supervisor.run()
    finally:
        driver.join()
        sock.close()
    assert "error" not in seen, seen["error"] if "error" in seen else ""
    assert seen["victim"] not in seen["pids"]
    assert not supervisor.failed
    assert all(w is None or w.process.exitcode is not None for w in supervisor.workers)
    assert waits and set(waits) == {None}, "the supervisor only ever waits for an exit or a signal"


def test_the_supervisor_stops_when_a_worker_cannot_start() -> None:
    cfg = config("tests.test_uvserver:failing_app", workers=2)
    with socket.create_server(("127.0.0.1", 0)) as sock:
        sock.set_inheritable(True)
        supervisor = uvserver.Supervisor(cfg, [sock])
        supervisor.run()  # returns by itself
    assert supervisor.failed
    with pytest.raises(SystemExit) as one:  # one process: uvicorn's own exit, as uvicorn.run
        uvserver.run(config(failing_app))
    assert one.value.code == uvicorn.config.STARTUP_FAILURE
