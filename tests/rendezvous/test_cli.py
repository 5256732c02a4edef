"""``fdo rendezvous`` local commands on the service database."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient
from sqlmodel import Session, select
from typer.testing import CliRunner

from fdo.types import Guid
from fdo_cli.main import app
from fdo_server.auth import Role, lookup_token
from fdo_server.db import make_engine
from fdo_server.session_model import FdoSession
from rendezvous.app import create_app
from rendezvous.settings import RendezvousSettings
from rendezvous.tables import Registration
from tests.cli_tables import parse_table


def test_token_create_and_purge(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FDO_RENDEZVOUS_DATABASE_URL", database_url)
    runner = CliRunner()
    result = runner.invoke(app, ["rendezvous", "db", "upgrade"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["rendezvous", "token", "create", "--name", "ops", "--role", "viewer"])
    assert result.exit_code == 0, result.output
    token = result.output.strip()
    assert token.startswith("fdo_")

    engine = make_engine(database_url)
    now = datetime.now(UTC)
    with Session(engine) as db:
        row = lookup_token(db, token)
        assert row is not None and row.role == Role.VIEWER
        for i, delta in enumerate((-10, 1000)):
            db.add(
                Registration(
                    guid=bytes([i]) * 16,
                    to1d=b"x",
                    device_key_spki=b"d",
                    owner_key_spki=b"o",
                    manufacturer_key_spki=b"m",
                    wait_seconds=1,
                    registered_at=now,
                    expires_at=now + timedelta(seconds=delta),
                )
            )
        db.add(FdoSession(token="t", protocol="TO0", state=b"", expires_at=now - timedelta(seconds=1)))
        db.commit()

    result = runner.invoke(app, ["rendezvous", "purge"])
    assert result.exit_code == 0, result.output
    assert "deleted 1 expired registration(s) and 1 session(s)" in result.output
    with Session(engine) as db:
        assert [r.guid for r in db.exec(select(Registration)).all()] == [bytes([1]) * 16]
        assert db.exec(select(FdoSession)).all() == []
    engine.dispose()


def test_registrations_list_over_http(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``fdo rendezvous registrations list``: a table with N of M, pages, -o json|yaml."""
    monkeypatch.setenv("FDO_RENDEZVOUS_DATABASE_URL", database_url)
    runner = CliRunner()
    assert runner.invoke(app, ["rendezvous", "db", "upgrade"]).exit_code == 0
    token = runner.invoke(app, ["rendezvous", "token", "create", "--name", "ops", "--role", "viewer"])
    now = datetime.now(UTC)
    engine = make_engine(database_url)
    with Session(engine) as db:
        for i in range(3):
            db.add(
                Registration(
                    guid=bytes([i + 1]) * 16, to1d=b"x", device_key_spki=b"d", owner_key_spki=b"o",
                    manufacturer_key_spki=b"m", wait_seconds=60 * (i + 1), registered_at=now,
                    expires_at=now + timedelta(seconds=-10 if i == 2 else 3600),
                )
            )  # fmt: skip
        db.commit()
    engine.dispose()
    http = TestClient(create_app(RendezvousSettings(database_url=database_url)), base_url="http://rv.test")
    pages: list[dict[str, Any]] = []

    def fake_request(method: str, url: str, **kwargs: Any) -> httpx.Response:
        kwargs.pop("timeout", None)
        pages.append(dict(kwargs.get("params") or {}))
        response: httpx.Response = http.request(method, url, **kwargs)
        return response

    monkeypatch.setattr(httpx, "request", fake_request)
    monkeypatch.setenv("FDO_RENDEZVOUS_URL", "http://rv.test")
    monkeypatch.setenv("FDO_RENDEZVOUS_TOKEN", token.output.strip())

    def run(*args: str) -> str:
        result = runner.invoke(app, ["rendezvous", "registrations", "list", *args])
        assert result.exit_code == 0, result.output
        return result.output

    with http:
        rows, footer = parse_table(run("--limit", "2"))
        assert footer == "2 of 3 registrations (offset 0; --all or --offset 2 for more)"
        assert list(rows[0]) == ["GUID", "WAIT S", "REGISTERED", "EXPIRES", "LIVE"]
        pages.clear()
        rows, footer = parse_table(run("--all", "--limit", "2"))
        assert footer == "3 of 3 registrations" and len(pages) == 2
        assert {(r["GUID"], r["WAIT S"], r["LIVE"]) for r in rows} == {
            (str(Guid(bytes([i + 1]) * 16)), str(60 * (i + 1)), "no" if i == 2 else "yes") for i in range(3)
        }
        body = json.loads(run("-o", "json", "--all", "--limit", "1"))
        assert body["total"] == 3 and len(body["items"]) == 3
        assert yaml.safe_load(run("-o", "yaml", "--all")) == body


def test_bad_settings_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FDO_RENDEZVOUS_TRUSTED_OWNER_KEYS", '["/nonexistent/owner.pem"]')
    result = CliRunner().invoke(app, ["rendezvous", "purge", "--database-url", "sqlite://"])
    assert result.exit_code == 2
    assert "TRUSTED_OWNER_KEYS" in result.output
