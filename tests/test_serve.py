"""``fdo <service> serve`` and the database engine: production details without a server.

* With ``--workers`` > 1, :func:`fdo_server.serve.serve` gives the workers a fresh private
  ``PROMETHEUS_MULTIPROC_DIR`` (removed afterwards) unless the operator set one.
* PostgreSQL engines time out connecting after seconds, and a connection the server
  killed fails one request only: the next one gets a new connection.
"""

from __future__ import annotations

import os
import secrets
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
import uvicorn
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from fdo_server import uvserver
from fdo_server.db import make_engine
from fdo_server.metrics import MULTIPROC_ENV
from fdo_server.serve import serve
from tests.conftest import POSTGRES_URL

# ------------------------------------------------------------------ metrics folder


def _serve_recording(monkeypatch: pytest.MonkeyPatch, workers: int, *, fail: bool = False) -> dict[str, Any]:
    """Run serve() with a fake :func:`fdo_server.uvserver.run` that records the
    environment and the uvicorn configuration it sees."""
    seen: dict[str, Any] = {}

    def fake_run(config: uvicorn.Config, sockets: Any = None) -> bool:
        folder = os.environ.get(MULTIPROC_ENV)
        seen["workers"] = config.workers
        seen["proxy_headers"] = config.proxy_headers
        seen["dir"] = folder
        if folder is not None:
            path = Path(folder)
            seen["is_dir"] = path.is_dir()
            seen["empty"] = path.is_dir() and not any(path.iterdir())
            seen["mode"] = stat.S_IMODE(path.stat().st_mode) if path.exists() else None
            (path / "counter_123.db").write_bytes(b"x")  # what a worker would leave behind
        if fail:
            raise RuntimeError("uvicorn failed")
        return True

    monkeypatch.setattr(uvserver, "run", fake_run)
    if fail:
        with pytest.raises(RuntimeError, match="uvicorn failed"):
            serve("x:y", host="127.0.0.1", port=1, workers=workers)
    else:
        serve("x:y", host="127.0.0.1", port=1, workers=workers)
    return seen


@pytest.mark.parametrize("fail", [False, True])
def test_several_workers_get_a_private_metrics_folder(monkeypatch: pytest.MonkeyPatch, fail: bool) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    seen = _serve_recording(monkeypatch, 3, fail=fail)
    assert seen["workers"] == 3
    assert seen["dir"] and seen["is_dir"] and seen["empty"]
    assert seen["mode"] == 0o700
    # Gone afterwards, folder and variable, even when uvicorn failed.
    assert not Path(seen["dir"]).exists()
    assert MULTIPROC_ENV not in os.environ


def test_each_serve_gets_a_fresh_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    first = _serve_recording(monkeypatch, 2)
    second = _serve_recording(monkeypatch, 2)
    assert first["dir"] != second["dir"]
    assert second["empty"]


def test_one_worker_needs_no_metrics_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    seen = _serve_recording(monkeypatch, 1)
    assert seen["dir"] is None
    # uvicorn believes no forwarded headers (it would from any local peer).
    assert seen["proxy_headers"] is False
    assert MULTIPROC_ENV not in os.environ


@pytest.mark.parametrize("workers", [1, 2])
def test_the_operators_metrics_folder_is_used_and_kept(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, workers: int
) -> None:
    folder = tmp_path / "metrics"
    folder.mkdir()
    monkeypatch.setenv(MULTIPROC_ENV, str(folder))
    seen = _serve_recording(monkeypatch, workers)
    assert seen["dir"] == str(folder)
    assert folder.is_dir() and (folder / "counter_123.db").exists()
    assert os.environ[MULTIPROC_ENV] == str(folder)


# ------------------------------------------------------------------ PostgreSQL engine


class _Captured(Exception):
    """Stops a connection attempt once its parameters are seen."""


def test_postgres_engine_has_a_connect_timeout() -> None:
    """Checked at the driver call, so no server is needed."""
    engine = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    seen: dict[str, Any] = {}

    @event.listens_for(engine, "do_connect")
    def _capture(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
        seen.update(cparams)
        raise _Captured

    with pytest.raises(_Captured), engine.connect():
        pass
    assert seen["connect_timeout"] == 5
    engine.dispose()


def test_postgres_connect_gives_up_on_a_silent_server() -> None:
    """A server that accepts TCP but never answers fails the connection in ~5 s."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        engine = make_engine(f"postgresql+psycopg://nobody@127.0.0.1:{port}/none")
        with pytest.raises(OperationalError, match="timeout"), engine.connect():
            pass
        engine.dispose()


@pytest.fixture
def pg_database() -> Iterator[tuple[sqlalchemy.Engine, str, str]]:
    """``(admin engine, name, url)`` of a throwaway PostgreSQL database."""
    if POSTGRES_URL is None:
        pytest.skip("FDO_TEST_POSTGRES_URL is not set")
    admin = sqlalchemy.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"fdo_pool_{secrets.token_hex(6)}"
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    url = sqlalchemy.make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield admin, name, url
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_postgres_pool_recovers_after_its_connections_are_killed(
    pg_database: tuple[sqlalchemy.Engine, str, str],
) -> None:
    admin, name, url = pg_database
    engine = make_engine(url)
    try:
        # Three pooled connections, all of which the server then terminates.
        conns = [engine.connect() for _ in range(3)]
        for conn in conns:
            conn.execute(sqlalchemy.text("SELECT 1"))
        for conn in conns:
            conn.close()
        with admin.connect() as conn:
            killed = conn.execute(
                sqlalchemy.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            ).scalar()
        assert killed == 3
        # The first query meets a dead connection: a disconnect, which invalidates the
        # whole pool, so every later query gets a new connection.
        with pytest.raises(OperationalError) as failure, engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
        assert failure.value.connection_invalidated
        for _ in range(5):
            with engine.connect() as conn:
                assert conn.execute(sqlalchemy.text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()


# ------------------------------------------------------------------ access log


def test_access_log_is_json_without_query_strings(tmp_path: Path) -> None:
    """`fdo rendezvous serve` logs one JSON line per request, like the rest of its logs,
    and a token sent in a query string (refused or not) never reaches the log."""
    import json
    import subprocess
    import sys
    import time

    import httpx

    from fdo_server.db import sqlite_url
    from fdo_server.launcher import free_port
    from tests.conftest import migrated

    port = free_port()
    env = {
        **os.environ,
        "FDO_RENDEZVOUS_DATABASE_URL": migrated(sqlite_url(tmp_path / "rv.db"), "rendezvous"),
        "FDO_LOG_FORMAT": "json",
    }
    fdo = str(Path(sys.executable).parent / "fdo")
    argv = [fdo, "rendezvous", "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # noqa: S603
    secret = "fdo_" + secrets.token_urlsafe(24)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "the service did not start"
            time.sleep(0.1)
        refused = httpx.get(f"http://127.0.0.1:{port}/api/v1/registrations?token={secret}&x=1")
        assert refused.status_code == 401
        # An FDO message, answered by the protocol itself (its line written directly).
        message = httpx.post(
            f"http://127.0.0.1:{port}/fdo/101/msg/30",
            content=b"\x80",
            headers={"Content-Type": "application/cbor"},
        )
        assert message.status_code == 500
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    text = out.decode()
    assert secret not in text
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line is JSON
    access = [r for r in lines if r.get("event") == "http_access" and r["path"].startswith("/api/")]
    assert [(r["method"], r["path"], r["status"]) for r in access] == [("GET", "/api/v1/registrations?", 401)]
    assert access[0]["logger"] == "uvicorn.access" and access[0]["service"] == "rendezvous"
    assert '"GET /api/v1/registrations? HTTP/1.1" 401' in access[0]["message"]
    fdo_lines = [r for r in lines if r.get("event") == "http_access" and r["path"].startswith("/fdo/")]
    assert [(r["method"], r["path"], r["status"], r["http"]) for r in fdo_lines] == [
        ("POST", "/fdo/101/msg/30", 500, "1.1")
    ]
    assert fdo_lines[0]["message"].endswith(' "POST /fdo/101/msg/30 HTTP/1.1" 500')
    assert fdo_lines[0]["client"].startswith("127.0.0.1:") and fdo_lines[0]["service"] == "rendezvous"
