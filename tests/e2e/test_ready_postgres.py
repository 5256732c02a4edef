"""``/ready`` follows a PostgreSQL database that goes away and comes back (issue 5).

The shared test server cannot be stopped, so the test takes access away instead: the
rendezvous runs as a real uvicorn server (two workers) on a database of its own; then
``ALTER DATABASE ... ALLOW_CONNECTIONS false`` and ``pg_terminate_backend`` cut it off
(every open connection dies and no new one is allowed, superusers included). ``/ready``
must answer 503 promptly while ``/health`` stays 200, and 200 again once access is
restored, from the same server processes; FDO traffic (TO0 and TO1) must work again
too. The database is dropped afterwards, whatever happened.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import sqlalchemy
from sqlalchemy.engine import Engine

from fdo.credential import DeviceCredential
from fdo.errors import FdoError
from fdo.rvinfo import RVTO2Addr, RVTO2AddrEntry, TransportProtocol
from fdo.to0.owner import TO0Owner
from fdo.to1.device import TO1Device
from fdo_server.launcher import ServiceProcess
from fdo_server.migrate import upgrade
from tests.conftest import POSTGRES_URL, KeyPool
from tests.owner.helpers import World, make_world
from transport.client import FdoHttpClient, TransportError

pytestmark = pytest.mark.skipif(POSTGRES_URL is None, reason="FDO_TEST_POSTGRES_URL is not set")

T = TypeVar("T")

WORKERS = 2
#: /ready answers within this (the probe's own deadline is 3 s).
PROMPT = 5.0


@pytest.fixture
def admin() -> Iterator[Engine]:
    assert POSTGRES_URL is not None
    engine = sqlalchemy.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


@pytest.fixture
def database(admin: Engine) -> Iterator[tuple[str, str]]:
    """A new database ``(name, url)``, dropped (connections and all) after the test."""
    assert POSTGRES_URL is not None
    name = f"fdo_ready_{secrets.token_hex(6)}"
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    url = sqlalchemy.make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield name, url
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true'))
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def cut_off(admin: Engine, name: str) -> None:
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false'))
        conn.execute(
            sqlalchemy.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = :name AND pid <> pg_backend_pid()"
            ),
            {"name": name},
        )


def restore(admin: Engine, name: str) -> None:
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true'))


def wait_for_workers(admin: Engine, name: str, workers: int, timeout: float = 60.0) -> None:
    """Wait until every worker has built its app: each checked the schema at start and
    keeps that connection in its pool, and nothing else connects to this database.

    ``/health`` answering means one worker is up; a worker still starting when access is
    cut off would fail its start and be replaced, which is not what this test is about.
    """
    deadline = time.monotonic() + timeout
    query = sqlalchemy.text("SELECT count(*) FROM pg_stat_activity WHERE datname = :name")
    while time.monotonic() < deadline:
        with admin.connect() as conn:
            if conn.execute(query, {"name": name}).scalar_one() >= workers:
                return
        time.sleep(0.1)
    raise AssertionError(f"{workers} workers did not start within {timeout:.0f} s")


def ready(url: str) -> tuple[int, str]:
    """``/ready`` on a new connection (so either worker may answer), timed."""
    t0 = time.monotonic()
    response = httpx.get(url + "/ready", timeout=PROMPT + 5)
    elapsed = time.monotonic() - t0
    assert elapsed < PROMPT, f"/ready took {elapsed:.1f} s"
    return response.status_code, str(response.json().get("reason", ""))


def to0(world: World, url: str) -> DeviceCredential:
    """Register a fresh device with TO0 at ``url``; its credential."""
    credential, voucher = world.device()
    addr = RVTO2Addr((RVTO2AddrEntry(None, "owner.example", 8043, TransportProtocol.HTTP),))
    owner = TO0Owner(
        voucher=voucher, owner_key=world.owner_keys["ec256"], rv_to2_addr=addr, wait_seconds=3600
    )
    with FdoHttpClient(url, timeout=PROMPT) as client:
        client.run(owner)
    assert owner.done
    return credential


def to1(credential: DeviceCredential, url: str) -> None:
    """TO1 for ``credential`` at ``url``: the registration is found."""
    machine = TO1Device(credential)
    with FdoHttpClient(url, timeout=PROMPT) as client:
        client.run(machine)
    assert machine.done


def test_ready_follows_postgres_access(
    admin: Engine, database: tuple[str, str], key_pool: KeyPool, tmp_path: Path
) -> None:
    name, db_url = database
    world = make_world(key_pool, tmp_path)
    upgrade(db_url, "rendezvous")  # as `fdo rendezvous db upgrade` before serving
    proc = ServiceProcess(
        name="rendezvous",
        factory="rendezvous.app:app_from_env",
        env={"FDO_RENDEZVOUS_DATABASE_URL": db_url},
        workers=WORKERS,
        log_path=tmp_path / "rendezvous.log",
    )
    with proc:
        url = proc.url
        wait_for_workers(admin, name, WORKERS)
        pids = set(proc.pids())
        assert len(pids) >= 1 + WORKERS  # uvicorn, its workers (and a resource tracker)
        assert ready(url) == (200, "")
        before = to0(world, url)  # registered while the database is there

        cut_off(admin, name)
        for _ in range(2 * WORKERS):
            status, reason = ready(url)
            assert status == 503 and "database" in reason
            assert httpx.get(url + "/health").status_code == 200
        # FDO messages fail (an FDO error, promptly) instead of hanging.
        t0 = time.monotonic()
        with pytest.raises((FdoError, TransportError)):
            to1(before, url)
        assert time.monotonic() - t0 < PROMPT

        restore(admin, name)
        for _ in range(2 * WORKERS):
            assert ready(url) == (200, "")
        assert set(proc.pids()) == pids  # the same server and workers, no restart

        # FDO traffic again: the registration made before the outage is found, and new
        # TO0s register and are found. Without pool_pre_ping each worker may fail the one
        # request that first meets the connections the outage killed (that failure makes
        # SQLAlchemy drop the worker's whole pool): at most one failure per worker in all.
        failures = 0

        def retried(op: Callable[[], T]) -> T:
            nonlocal failures
            while True:
                try:
                    return op()
                except (FdoError, TransportError):
                    failures += 1
                    assert failures <= WORKERS, "FDO traffic did not recover"

        for _ in range(3 * WORKERS):
            retried(partial(to1, before, url))
            retried(partial(to1, retried(partial(to0, world, url)), url))
        assert failures <= WORKERS
        assert set(proc.pids()) == pids
