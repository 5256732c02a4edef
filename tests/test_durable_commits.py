"""Durable commits (``fdo_server/db.py``): what a device acts on survives a power cut.

On SQLite the commit of a unit of work that called :func:`require_durable` runs with
``synchronous=FULL`` (an fsync of the WAL) and every other commit with NORMAL; the three
services call it for DI done, TO0 accepted and TO2.Done, and for nothing else. On
PostgreSQL every connection commits with ``synchronous_commit`` on, even when the
database or role turned it off (with a warning, once per process).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from fdo.serviceinfo import DeviceServiceInfoDriver
from fdo.to2.device import TO2Device
from fdo.voucher import vouchers_to_pem
from fdo_server.auth import Role
from fdo_server.db import make_engine, require_durable, sqlite_url, unit_of_work
from fdo_server.sql import Database
from manufacturer.app import create_app as manufacturer_app
from owner.app import create_app as owner_app
from tests.conftest import POSTGRES_URL, KeyPool, migrated
from tests.fdo.flow import sample_devmod
from tests.manufacturer.test_manufacturer import make_settings
from tests.owner.helpers import BASE, make_world, token
from tests.rendezvous.test_service import Setup, make_client, to0_owner
from tests.rendezvous.test_service import setup as setup  # noqa: PLC0414 - the module fixture
from transport.client import FdoHttpClient

FULL, NORMAL = 2, 1


class Commits:
    """The ``synchronous`` level of every commit on a SQLite engine or database, in order."""

    def __init__(self, engine: Engine | Database) -> None:
        self.levels: list[int] = []
        if isinstance(engine, Database):
            engine.on_commit(self._level)
            return

        @event.listens_for(engine, "commit")
        def _commit(conn: Connection) -> None:
            self._level(conn.connection.dbapi_connection)

    def _level(self, raw: Any) -> None:
        self.levels.append(int(raw.execute("PRAGMA synchronous").fetchone()[0]))


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(sqlite_url(tmp_path / "t.db"))
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    yield engine
    engine.dispose()


def test_require_durable_makes_that_commit_full_and_only_that_one(engine: Engine) -> None:
    """In the admin plane's ORM unit of work too (the FDO path's: tests/test_sql.py)."""
    commits = Commits(engine)
    with unit_of_work(engine) as db:
        db.connection().exec_driver_sql("INSERT INTO t VALUES (1)")
    with unit_of_work(engine) as db:
        db.connection().exec_driver_sql("SELECT count(*) FROM t")  # reads open no transaction
        require_durable()
        db.connection().exec_driver_sql("INSERT INTO t VALUES (2)")
    with unit_of_work(engine) as db:  # the pooled connection is back at NORMAL
        db.connection().exec_driver_sql("INSERT INTO t VALUES (3)")
    assert commits.levels == [NORMAL, FULL, NORMAL]


def test_require_durable_after_a_write_is_a_bug(engine: Engine) -> None:
    with pytest.raises(RuntimeError, match="first write"), unit_of_work(engine) as db:
        db.connection().exec_driver_sql("INSERT INTO t VALUES (1)")
        require_durable()
    with unit_of_work(engine) as db:  # rolled back, and the connection is fine
        assert db.connection().exec_driver_sql("SELECT count(*) FROM t").scalar() == 0


# ---------------------------------------------------------------------------- the services


def test_di_done_is_a_durable_commit(tmp_path: Path, key_pool: KeyPool) -> None:
    from fdo.di.device import DIDevice

    keys = {"ec256": key_pool.get("ec256", 10), "ca": key_pool.get("ec384", 10)}
    app = manufacturer_app(make_settings(tmp_path, sqlite_url(tmp_path / "m.db"), keys))
    commits = Commits(app.state.database)
    device = DIDevice(key=key_pool.get("ec256", 11), serial="SN-DURABLE", model="kiosk-v2")
    FdoHttpClient(BASE, client=TestClient(app, base_url=BASE)).run(device)
    assert device.credential is not None
    # DI.AppStart saves the session; DI.SetHMAC stores the voucher, durably.
    assert commits.levels == [NORMAL, FULL]


def test_to0_accepted_is_a_durable_commit(tmp_path: Path, setup: Setup) -> None:
    http = make_client(sqlite_url(tmp_path / "rv.db"))
    commits = Commits(http.app.state.database)  # type: ignore[attr-defined]
    FdoHttpClient(BASE, client=http).run(to0_owner(setup))
    assert commits.levels == [NORMAL, FULL]  # Hello's session, then the registration


def test_to2_done_is_the_only_durable_commit_of_to2(tmp_path: Path, key_pool: KeyPool) -> None:
    world = make_world(key_pool, tmp_path)
    app = owner_app(world.settings(sqlite_url(tmp_path / "o.db")))
    credential, voucher = world.device()
    with TestClient(app, base_url=BASE) as http:
        pem = vouchers_to_pem([voucher])
        assert (
            http.post("/api/v1/vouchers", content=pem, headers=token(app, Role.OPERATOR)).status_code == 200
        )
        commits = Commits(app.state.database)  # TO2 runs on the driver (fdo_server.sql)
        machine = TO2Device(credential, service_info=DeviceServiceInfoDriver(sample_devmod()), to1d=None)
        FdoHttpClient(BASE, client=http).run(machine)
    assert machine.done and machine.new_credential is not None
    assert commits.levels.count(FULL) == 1 and commits.levels[-1] == FULL, commits.levels


@pytest.mark.skipif(POSTGRES_URL is None, reason="FDO_TEST_POSTGRES_URL is not set")
def test_postgresql_commits_are_synchronous_even_when_the_server_says_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert POSTGRES_URL is not None
    sep = "&" if "?" in POSTGRES_URL else "?"
    weakened = f"{POSTGRES_URL}{sep}options=-csynchronous_commit%3Doff"
    raw = sqlalchemy.create_engine(weakened)
    try:
        with raw.connect() as conn:  # what the server gives a connection of this URL
            assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "off"
    finally:
        raw.dispose()
    engine = make_engine(weakened)
    try:
        with caplog.at_level(logging.DEBUG, logger="fdo_server.db"), engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
            conn.rollback()  # the SET was not part of a transaction a rollback undoes
            assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
        assert any("synchronous_commit=off" in r.getMessage() for r in caplog.records)
    finally:
        engine.dispose()
    engine = make_engine(migrated(POSTGRES_URL))
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
    finally:
        engine.dispose()
