"""Expired protocol sessions are deleted: :func:`fdo_server.sweep.sweep_expired` in
batches, and ``fdo <service> sessions sweep`` (on SQLite and, when configured, PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, func, insert, select
from typer.testing import CliRunner

from fdo_cli.main import app as fdo
from fdo_server.db import make_engine
from fdo_server.sessions import FdoSession
from fdo_server.sweep import sweep_expired
from tests.conftest import migrated

TABLE = FdoSession.__table__  # type: ignore[attr-defined]


def add_sessions(engine: Engine, *, expired: int, live: int) -> None:
    now = datetime.now(UTC)
    rows = [
        {
            "token": f"{'x' if i < expired else 'l'}{i:04d}",
            "protocol": "DI",
            "state": b"s",
            "version": 0,
            "expires_at": now + (timedelta(hours=-1) if i < expired else timedelta(hours=1)),
        }
        for i in range(expired + live)
    ]
    with engine.begin() as conn:
        conn.execute(insert(TABLE), rows)


def tokens(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.scalars(select(TABLE.c.token)))


def test_sweep_deletes_only_expired_rows_in_batches(database_url: str) -> None:
    engine = make_engine(migrated(database_url, "rendezvous"))
    try:
        add_sessions(engine, expired=7, live=2)
        assert sweep_expired(engine, datetime.now(UTC), batch=3) == 7
        assert tokens(engine) == {"l0007", "l0008"}
        assert sweep_expired(engine, datetime.now(UTC), batch=3) == 0
        # Told to stop, it stops after the batch in progress.
        add_sessions(engine, expired=7, live=0)
        assert sweep_expired(engine, datetime.now(UTC), batch=3, keep_going=lambda: False) == 3
        with engine.connect() as conn:
            assert conn.scalar(select(func.count()).select_from(TABLE)) == 2 + 4
    finally:
        engine.dispose()


@pytest.mark.parametrize("service", ["manufacturer", "rendezvous", "owner"])
def test_sessions_sweep_command(service: str, database_url: str) -> None:
    url = migrated(database_url, service)
    engine = make_engine(url)
    try:
        add_sessions(engine, expired=3, live=1)
        result = CliRunner().invoke(fdo, [service, "sessions", "sweep", "--database-url", url])
        assert result.exit_code == 0, result.output
        assert result.output == "deleted 3 expired session(s)\n"
        assert tokens(engine) == {"l0003"}
    finally:
        engine.dispose()


def test_sessions_sweep_on_a_database_not_at_head_is_one_line(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/empty.db"
    result = CliRunner().invoke(fdo, ["owner", "sessions", "sweep", "--database-url", url])
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1
