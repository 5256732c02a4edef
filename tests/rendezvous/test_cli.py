"""``fdo rendezvous`` local commands on the service database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from fdo_cli.main import app
from fdo_server.auth import Role, lookup_token
from fdo_server.db import make_engine
from fdo_server.sessions import FdoSession
from rendezvous.tables import Registration


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


def test_bad_settings_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FDO_RENDEZVOUS_TRUSTED_OWNER_KEYS", '["/nonexistent/owner.pem"]')
    result = CliRunner().invoke(app, ["rendezvous", "purge", "--database-url", "sqlite://"])
    assert result.exit_code == 2
    assert "TRUSTED_OWNER_KEYS" in result.output
