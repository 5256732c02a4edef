"""Issue 13 item 5 over real HTTP: the admin plane on a listener of its own.

The three services run as ``serve --admin-port`` runs them (``split_admin``), with one
worker each and with two. Every route of each service's app (enumerated from the app
itself) is either device plane (FDO messages, the owner's check-in routes) or admin
plane (admin API, ``/ui``, ``/docs``, ``/redoc``, ``/openapi.json``, ``/metrics``):
an admin route is 404 on the device listener, even with a valid admin token, and
answered on the admin listener; a device route answers on the device listener and is
404 on the admin one; ``/health`` and ``/ready`` answer on both. A device onboards
through the device listeners while the operator steps use the admin listeners. With
TLS both listeners serve HTTPS only. Without an admin port the service warns at start
that both planes share the device port.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.routing import BaseRoute, Route
from typer.testing import CliRunner

from fdo_cli.main import app as cli
from fdo_server.config import ConfigError, load_settings
from fdo_server.db import sqlite_url
from fdo_server.launcher import ServiceProcess, free_ports
from fdo_server.serve import ServeError, serve
from fdo_server.stack import SERVICES, Stack
from fdo_server.tls import write_test_tls
from rendezvous.settings import RendezvousSettings
from tests.conftest import migrated

#: The routes devices use besides the FDO messages (method, path), by service.
DEVICE_ROUTES: dict[str, set[tuple[str, str]]] = {
    "manufacturer": set(),
    "rendezvous": set(),
    "owner": {("POST", "/device/v1/checkin"), ("POST", "/device/v1/report"), ("POST", "/api/v1/report")},
}
#: The first message type of each protocol a service serves.
FIRST_MESSAGES = {"manufacturer": (10,), "rendezvous": (20, 30), "owner": (60,)}
PROBES = {"/health", "/ready"}
NOT_FOUND = {"detail": "Not Found"}
SETTINGS_CLASSES = {
    "manufacturer": ("manufacturer.settings", "ManufacturerSettings"),
    "rendezvous": ("rendezvous.settings", "RendezvousSettings"),
    "owner": ("owner.settings", "OwnerSettings"),
}


@pytest.fixture(
    scope="module",
    params=[(1, False), (2, False), (2, True)],
    ids=["1worker", "2workers", "2workers-admin-process"],
)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Each listener answers the same whether every worker serves both planes or the
    admin plane has a process of its own (``FDO_<SERVICE>_ADMIN_PROCESS``)."""
    workers, admin_process = request.param
    workdir = tmp_path_factory.mktemp(f"split-{workers}")
    env = {name: {f"FDO_{name.upper()}_ADMIN_PROCESS": str(admin_process).lower()} for name in SERVICES}
    with Stack(workdir, split_admin=True, workers=dict.fromkeys(SERVICES, workers), env=env) as running:
        yield running


@pytest.fixture(scope="module")
def routes(stack: Stack) -> dict[str, list[tuple[str, str]]]:
    """(method, path) of every route of each service's app, built on the stack's settings."""
    found: dict[str, list[tuple[str, str]]] = {}
    for service in SERVICES:
        module, name = SETTINGS_CLASSES[service]
        with pytest.MonkeyPatch.context() as patch:
            for key, value in stack.services[service].env.items():
                patch.setenv(key, value)
            settings = load_settings(getattr(importlib.import_module(module), name))
            built = importlib.import_module(f"{service}.app").create_app(settings)
        try:
            found[service] = sorted(
                (method, path)
                for path, methods in _walk(built.routes)
                for method in methods
                if method != "HEAD"
            )
        finally:
            built.state.database.dispose()
    return found


def _walk(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, set[str]]]:
    """(path, methods) of every route, descending into included routers (FastAPI keeps
    them as one route each)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _walk(inner.routes, prefix + route.include_context.prefix)  # type: ignore[attr-defined]
        elif isinstance(route, Route):
            yield prefix + route.path, set(route.methods or {"GET"})


def _is_device(service: str, method: str, path: str) -> bool:
    return path.startswith("/fdo/") or (method, path) in DEVICE_ROUTES[service]


def _concrete(path: str) -> str:
    """``path`` with each ``{parameter}`` filled (a GUID-shaped value)."""
    return re.sub(r"\{[^}]*\}", "0" * 32, path)


def _request(client: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response:
    body: dict[str, int] | None = {} if method in {"POST", "PUT", "PATCH"} else None
    return client.request(method, url, json=body, **kwargs)


@pytest.mark.parametrize("service", SERVICES)
def test_admin_routes_are_only_on_the_admin_listener(
    stack: Stack, routes: dict[str, list[tuple[str, str]]], service: str
) -> None:
    admin = [(m, p) for m, p in routes[service] if not _is_device(service, m, p) and p not in PROBES]
    paths = {p for _, p in admin}
    assert {"/metrics", "/docs", "/redoc", "/openapi.json"} <= paths
    assert any(p.startswith("/api/v1/") for p in paths)
    if service == "owner":
        assert "/ui" in paths
    token = {"Authorization": f"Bearer {stack.tokens[service]}"}
    answers: dict[int, int] = {}
    with httpx.Client(timeout=30) as client:
        for method, path in admin:
            where = f"{method} {path}"
            on_device = _request(client, method, stack.url(service) + _concrete(path), headers=token)
            assert (on_device.status_code, on_device.json()) == (404, NOT_FOUND), where
            on_admin = _request(client, method, stack.admin_url(service) + _concrete(path))
            assert on_admin.status_code != 404, where
            if path.startswith("/api/"):
                assert on_admin.status_code == 401, where  # the admin API, without a token
            answers[on_admin.status_code] = answers.get(on_admin.status_code, 0) + 1
    # 403: a status page form posted without its CSRF token (owner.web_session).
    assert set(answers) <= {200, 303, 401, 403}, answers


@pytest.mark.parametrize("service", SERVICES)
def test_device_routes_are_only_on_the_device_listener(
    stack: Stack, routes: dict[str, list[tuple[str, str]]], service: str
) -> None:
    device = [(m, p) for m, p in routes[service] if _is_device(service, m, p)]
    assert {(m, p) for m, p in device if not p.startswith("/fdo/")} == DEVICE_ROUTES[service]
    with httpx.Client(timeout=30) as client:
        for msg_type in FIRST_MESSAGES[service]:
            path = f"/fdo/101/msg/{msg_type}"
            headers = {"Content-Type": "application/cbor"}
            answer = client.post(stack.url(service) + path, content=b"\xa0", headers=headers)
            assert answer.status_code == 500 and answer.headers["Message-Type"] == "255", path
            refused = client.post(stack.admin_url(service) + path, content=b"\xa0", headers=headers)
            assert (refused.status_code, refused.json()) == (404, NOT_FOUND), path
        bad = {"Authorization": "Bearer fdo_not-a-device-secret"}
        for method, path in sorted(DEVICE_ROUTES[service]):
            body = {"seq": 1} if path.endswith("/checkin") else {}
            answer = client.request(method, stack.url(service) + path, json=body, headers=bad)
            assert answer.status_code == 401, path  # answered: the device secret is wrong
            refused = client.request(method, stack.admin_url(service) + path, json=body, headers=bad)
            assert (refused.status_code, refused.json()) == (404, NOT_FOUND), path
        for path in sorted(PROBES):
            assert client.get(stack.url(service) + path).status_code == 200, path
            assert client.get(stack.admin_url(service) + path).status_code == 200, path


def test_a_device_onboards_through_the_device_listeners(stack: Stack) -> None:
    """DI, TO1 and TO2 reach only device listeners; the hand-off and TO0's progress are
    read on the admin listeners (:meth:`Stack.admin`)."""
    credential = stack.manufacture(serial=f"SPLIT-{len(stack.workdir.name)}", model="kiosk")
    guid = str(credential.guid)
    stack.hand_off(guid, "ec256")
    stack.wait_for_to0(guid)
    result = stack.onboard(credential, root=stack.workdir / f"root-{guid}", run=lambda argv: (0, b"", b""))
    assert (result.rv_url, result.owner_url) == (stack.url("rendezvous"), stack.url("owner"))
    with stack.admin("owner") as owner:
        done = owner.get("/api/v1/onboardings", params={"guid": guid}).json()["items"]
    assert [d["new_guid"] for d in done] == [str(result.credential.guid)]
    metrics = httpx.get(stack.admin_url("owner") + "/metrics").text
    assert "fdo_messages_total{" in metrics and 'protocol="TO2"' in metrics


def test_each_service_logs_no_shared_port_warning_when_split(stack: Stack) -> None:
    for service in SERVICES:
        assert "shares the device listener" not in (stack.workdir / f"{service}.log").read_text()


def test_without_an_admin_port_both_planes_share_the_port_and_it_warns(tmp_path: Path) -> None:
    url = migrated(sqlite_url(tmp_path / "rv.db"), "rendezvous")
    proc = ServiceProcess(
        name="rendezvous",
        factory="rendezvous.app:app_from_env",
        env={"FDO_RENDEZVOUS_DATABASE_URL": url},
        log_path=tmp_path / "rv.log",
    )
    with proc:
        assert proc.admin_url == proc.url
        assert httpx.get(proc.url + "/metrics").status_code == 200
        assert httpx.get(proc.url + "/api/v1/registrations").status_code == 401
        assert httpx.post(proc.url + "/fdo/101/msg/30", content=b"\xa0").status_code == 500
    log = (tmp_path / "rv.log").read_text()
    assert "the admin plane (admin API, /ui, /docs, /metrics) shares the device listener" in log
    assert "FDO_RENDEZVOUS_ADMIN_PORT" in log


def test_both_listeners_serve_https_with_the_services_certificate(tmp_path: Path) -> None:
    tls = write_test_tls(tmp_path / "tls")
    device, admin = free_ports(2)
    proc = ServiceProcess(
        name="rendezvous",
        factory="rendezvous.app:app_from_env",
        env={"FDO_RENDEZVOUS_DATABASE_URL": migrated(sqlite_url(tmp_path / "rv.db"), "rendezvous")},
        port=device,
        admin_port=admin,
        log_path=tmp_path / "rv.log",
        tls_cert=tls.cert,
        tls_key=tls.key,
        tls_ca=tls.ca,
    )
    with proc, httpx.Client(verify=ssl.create_default_context(cafile=str(tls.ca)), timeout=30) as client:
        assert (proc.url, proc.admin_url) == (f"https://127.0.0.1:{device}", f"https://127.0.0.1:{admin}")
        assert client.get(proc.admin_url + "/api/v1/registrations").status_code == 401
        assert client.get(proc.url + "/api/v1/registrations").status_code == 404
        answer = client.post(proc.url + "/fdo/101/msg/30", content=b"\xa0")
        assert answer.status_code == 500 and answer.headers["Message-Type"] == "255"
        for port in (device, admin):  # no plain HTTP on either
            with pytest.raises(httpx.HTTPError):
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)


# ------------------------------------------------------------------ settings and serve


def test_the_admin_port_must_differ_from_the_device_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FDO_RENDEZVOUS_DATABASE_URL", "sqlite://")
    monkeypatch.setenv("FDO_RENDEZVOUS_ADMIN_PORT", "8041")
    with pytest.raises(ConfigError) as refused:
        load_settings(RendezvousSettings)
    assert str(refused.value) == (
        "FDO_RENDEZVOUS_ADMIN_PORT: 8041 is the device port too; the admin listener needs a port of its own"
    )
    monkeypatch.setenv("FDO_RENDEZVOUS_ADMIN_PORT", "9041")
    monkeypatch.setenv("FDO_RENDEZVOUS_ADMIN_HOST", "0.0.0.0")  # noqa: S104 - a setting, not a bind
    settings = load_settings(RendezvousSettings)
    assert (settings.admin_host, settings.admin_port) == ("0.0.0.0", 9041)  # noqa: S104


def test_an_admin_process_needs_an_admin_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """The setting alone is accepted (``--admin-port`` may give the port); ``serve``
    refuses an admin process without an admin listener."""
    monkeypatch.setenv("FDO_RENDEZVOUS_DATABASE_URL", "sqlite://")
    monkeypatch.setenv("FDO_RENDEZVOUS_ADMIN_PROCESS", "true")
    assert load_settings(RendezvousSettings).admin_process is True
    with pytest.raises(ServeError, match="give it an admin port"):
        serve("rendezvous.app:app_from_env", host="127.0.0.1", port=9040, admin_process=True)


def test_serve_refuses_a_shared_or_busy_admin_port(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """One line and exit status 2, before any worker starts."""
    monkeypatch.setenv("FDO_RENDEZVOUS_DATABASE_URL", migrated(sqlite_url(tmp_path / "rv.db"), "rendezvous"))
    device, busy = free_ports(2)
    same = CliRunner().invoke(
        cli, ["rendezvous", "serve", "--port", str(device), "--admin-port", str(device)]
    )
    assert same.exit_code == 2
    assert same.output.strip().endswith(
        f"the admin port {device} is the device port too; give it a port of its own"
    )
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", busy))
        holder.listen()
        taken = CliRunner().invoke(
            cli,
            ["rendezvous", "serve", "--host", "127.0.0.1", "--port", str(device), "--admin-port", str(busy)],
        )
    assert taken.exit_code == 2
    assert taken.output.strip().endswith(f"cannot listen on 127.0.0.1:{busy}: Address already in use")
    assert os.environ.get("FDO_RENDEZVOUS_ADMIN_PORT") is None


def test_fdo_serve_opens_the_admin_listener_its_settings_name(tmp_path: Path) -> None:
    """`fdo rendezvous serve` with FDO_RENDEZVOUS_ADMIN_PORT in its environment (not on
    its command line) serves the planes apart and says where, in its JSON log."""

    device, admin = free_ports(2)
    env = {
        **os.environ,
        "FDO_RENDEZVOUS_DATABASE_URL": migrated(sqlite_url(tmp_path / "rv.db"), "rendezvous"),
        "FDO_RENDEZVOUS_ADMIN_PORT": str(admin),
        "FDO_LOG_FORMAT": "json",
    }
    fdo = str(Path(sys.executable).parent / "fdo")
    argv = [fdo, "rendezvous", "serve", "--host", "127.0.0.1", "--port", str(device)]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # noqa: S603
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{admin}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "the service did not start"
            time.sleep(0.1)
        assert httpx.get(f"http://127.0.0.1:{device}/api/v1/registrations").status_code == 404
        assert httpx.get(f"http://127.0.0.1:{admin}/api/v1/registrations").status_code == 401
        assert httpx.get(f"http://127.0.0.1:{device}/health").status_code == 200
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    messages = [json.loads(line)["message"] for line in out.decode().splitlines() if line.strip()]
    assert f"serving the device plane on http://127.0.0.1:{device}" in messages
    assert f"serving the admin plane on http://127.0.0.1:{admin}" in messages
    assert not [m for m in messages if "shares the device listener" in m]


#: Shared libraries of what a device-plane worker of every service does without: pydantic
#: (its settings come from serve, fdo_server.handed; the owner's check-in bodies are read
#: by owner.device_body) and SQLAlchemy (fdo_server.sql).
LEAN_WORKERS = {"manufacturer", "rendezvous", "owner"}
NOT_MAPPED = ("pydantic_core", "/sqlalchemy/")


@pytest.mark.parametrize("service", sorted(LEAN_WORKERS))
def test_device_workers_run_without_pydantic_or_sqlalchemy(stack: Stack, service: str) -> None:
    """In the running server: each process that serves only devices (under ``serve
    --admin-process``) has neither library mapped, and still answers (the module's other
    tests onboard a device through it)."""
    device_workers = []
    for pid in stack.services[service].pids():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        if b"FDO_SERVE_PLANE=device" in environ:
            device_workers.append(pid)
            assert not [name for name in NOT_MAPPED if name in maps], (service, pid)
    admin_process = stack.services[service].env.get(f"FDO_{service.upper()}_ADMIN_PROCESS") == "true"
    assert len(device_workers) == (2 if admin_process else 0)
