"""A database outage is an answer, not a crash (issue 13, item 3).

The three services run as real uvicorn servers on PostgreSQL databases of their own,
reached through a TCP proxy in this test. Stopping the proxy (its listening socket and
every connection closed) is the outage: every admin and ``/ui`` route that needs the
database answers 503 with a JSON body and ``Retry-After``, ``/ready`` answers 503 while
``/health`` stays 200, and FDO messages get an FDO ErrorMessage. Starting the proxy again
on the same port ends it: the same server processes answer 200 again, ``/ready`` too.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy
from sqlalchemy.engine import Engine

from fdo_server.stack import SERVICES, Stack
from tests.conftest import POSTGRES_URL
from tests.owner.helpers import form_csrf

pytestmark = pytest.mark.skipif(
    POSTGRES_URL is None, reason="FDO_TEST_POSTGRES_URL is not set (this test needs PostgreSQL)"
)

#: Every answer during the outage comes within this many seconds.
PROMPT = 5.0
#: How long the services may take to use the database again.
RECOVERY = 30.0

Json = dict[str, object] | None
#: ``(method, path, JSON body or None)`` per service: admin and ``/ui`` routes that need
#: the database (sent with the service's admin token).
ROUTES: dict[str, list[tuple[str, str, Json]]] = {
    "manufacturer": [("GET", "/api/v1/vouchers", None)],
    "rendezvous": [("GET", "/api/v1/registrations", None)],
    "owner": [
        ("GET", "/api/v1/vouchers", None),
        ("GET", "/api/v1/devices", None),
        ("GET", "/api/v1/summary", None),
        ("GET", "/api/v1/groups", None),
        ("GET", "/api/v1/tokens", None),
    ],
}
#: A first FDO message type per service (the body is not a valid message).
FDO_TYPE = {"manufacturer": 10, "rendezvous": 30, "owner": 60}


class Proxy:
    """A TCP proxy from a local port to ``target`` that can be stopped and started again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        """Close the listening socket and every connection (both sides)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # stopped meanwhile
                    client.close()
                    upstream.close()
                    return
                self._sockets |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


@pytest.fixture
def databases() -> Iterator[dict[str, str]]:
    """A new PostgreSQL database per service ``{service: name}``, dropped afterwards."""
    assert POSTGRES_URL is not None
    admin: Engine = sqlalchemy.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    suffix = secrets.token_hex(5)
    names = {service: f"fdo_outage_{suffix}_{service}" for service in SERVICES}
    try:
        with admin.connect() as conn:
            for name in names.values():
                conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        yield names
    finally:
        with admin.connect() as conn:
            for name in names.values():
                conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    assert POSTGRES_URL is not None
    url = sqlalchemy.make_url(POSTGRES_URL)
    running = Proxy((url.host or "127.0.0.1", url.port or 5432))
    running.start()
    yield running
    running.stop()


def call(stack: Stack, service: str, method: str, path: str, body: Json) -> httpx.Response:
    with stack.admin(service) as client:
        t0 = time.monotonic()
        response = client.request(method, path, json=body, timeout=PROMPT + 5)
        assert time.monotonic() - t0 < PROMPT, f"{service} {method} {path} took too long"
        return response


def fdo_message(stack: Stack, service: str) -> httpx.Response:
    return httpx.post(
        f"{stack.url(service)}/fdo/101/msg/{FDO_TYPE[service]}",
        content=b"\x80",
        headers={"Content-Type": "application/cbor"},
        timeout=PROMPT + 5,
    )


def test_admin_routes_answer_503_while_the_database_is_away_and_recover(
    databases: dict[str, str], proxy: Proxy, tmp_path: Path
) -> None:
    assert POSTGRES_URL is not None
    base = sqlalchemy.make_url(POSTGRES_URL).set(host="127.0.0.1", port=proxy.port)
    urls = {
        service: base.set(database=name).render_as_string(hide_password=False)
        for service, name in databases.items()
    }
    with Stack(workdir=tmp_path / "stack", database_urls=urls) as stack:
        pids = {service: set(stack.services[service].pids()) for service in SERVICES}
        for service in SERVICES:
            for method, path, body in ROUTES[service]:
                assert call(stack, service, method, path, body).status_code == 200
            assert httpx.get(stack.url(service) + "/ready").status_code == 200

        proxy.stop()
        for service in SERVICES:
            for method, path, body in [*ROUTES[service], *ROUTES[service]]:  # pooled, then new
                response = call(stack, service, method, path, body)
                assert response.status_code == 503, (service, path, response.text)
                assert response.headers["content-type"] == "application/json"
                assert response.json() == {"detail": "the database is unavailable; retry later"}
                assert int(response.headers["retry-after"]) > 0
            # An unknown token: it cannot be looked up either (no token at all is a 401).
            response = httpx.get(
                stack.url(service) + ROUTES[service][0][1],
                headers={"Authorization": "Bearer fdo_unknown"},
                timeout=PROMPT,
            )
            assert response.status_code == 503 and "retry-after" in response.headers
            ready = httpx.get(stack.url(service) + "/ready", timeout=PROMPT + 5)
            assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
            assert httpx.get(stack.url(service) + "/health").status_code == 200
            answer = fdo_message(stack, service)
            assert (answer.status_code, answer.headers["message-type"]) == (500, "255")
        group: Json = {"name": "outage", "model": "m1"}
        created = call(stack, "owner", "POST", "/api/v1/groups", group)  # a change: refused
        assert created.status_code == 503 and created.headers["retry-after"]
        with httpx.Client(base_url=stack.url("owner"), timeout=PROMPT) as browser:
            form = browser.get("/ui")  # signed out: the sign-in form, which needs no database
            login = browser.post("/ui/login", data={"token": "fdo_x", "csrf": form_csrf(form.text)})
        assert login.status_code == 503 and login.json()["detail"].startswith("the database is unavailable")

        proxy.start()  # the same port: the database is back
        for service in SERVICES:
            deadline = time.monotonic() + RECOVERY
            while True:
                statuses = [call(stack, service, m, p, b).status_code for m, p, b in ROUTES[service]]
                statuses.append(httpx.get(stack.url(service) + "/ready", timeout=PROMPT + 5).status_code)
                if all(status == 200 for status in statuses):
                    break
                assert set(statuses) <= {200, 503}, statuses
                assert time.monotonic() < deadline, f"{service} did not recover: {statuses}"
                time.sleep(0.2)
            answer = fdo_message(stack, service)  # FDO answers as before the outage
            assert (answer.status_code, answer.headers["message-type"]) == (500, "255")
            assert set(stack.services[service].pids()) == pids[service]  # no restart
        assert call(stack, "owner", "POST", "/api/v1/groups", group).status_code == 201
