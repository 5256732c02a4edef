"""Expired protocol sessions are deleted: :func:`fdo_server.sweep.sweep_expired` in
batches, and ``fdo <service> sessions sweep`` (on SQLite and, when configured, PostgreSQL).

The service's own :class:`~fdo_server.sweep.SessionSweeper` sleeps until a session is
due, with its waits recorded instead of timed: no timeout at all with no session, until
the earliest expiry otherwise (from the table when it starts, from a session made in
this process), and no sooner than ``interval`` after its last sweep."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, func, insert, select
from typer.testing import CliRunner

from fdo_cli.main import app as fdo
from fdo_server.db import make_engine
from fdo_server.metrics import ServiceMetrics
from fdo_server.session_model import FdoSession
from fdo_server.sql import Database
from fdo_server.sweep import SessionSweeper, sweep_expired
from tests.conftest import migrated

TABLE = FdoSession.__table__  # type: ignore[attr-defined]


def add_sessions(engine: Engine, *, expired: int, live: int, now: datetime | None = None) -> None:
    now = now or datetime.now(UTC)
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
    url = migrated(database_url, "rendezvous")
    engine, database = make_engine(url), Database(url)  # rows written by SQLAlchemy, swept on the driver
    try:
        add_sessions(engine, expired=7, live=2)
        assert sweep_expired(database, datetime.now(UTC), batch=3) == 7
        assert tokens(engine) == {"l0007", "l0008"}
        assert sweep_expired(database, datetime.now(UTC), batch=3) == 0
        # Told to stop, it stops after the batch in progress.
        add_sessions(engine, expired=7, live=0)
        assert sweep_expired(database, datetime.now(UTC), batch=3, keep_going=lambda: False) == 3
        with engine.connect() as conn:
            assert conn.scalar(select(func.count()).select_from(TABLE)) == 2 + 4
    finally:
        engine.dispose()
        database.dispose()


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


# ---------------------------------------------------------------------------- the sweeper

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


class Clockwork:
    """A clock the test moves, and a sweeper ``wait`` that records each timeout and
    returns when the sweeper is woken or the test lets that time pass."""

    def __init__(self) -> None:
        self.now = NOW
        self.waits: list[float | None] = []
        self.waiting = asyncio.Event()
        self.passed = asyncio.Event()

    async def wait(self, event: asyncio.Event, timeout: float | None) -> bool:
        self.waits.append(timeout)
        self.waiting.set()
        woken = asyncio.ensure_future(event.wait())
        elapsed = asyncio.ensure_future(self.passed.wait())
        done, pending = await asyncio.wait({woken, elapsed}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        self.passed.clear()
        if woken not in done:
            assert timeout is not None, "time passing never ends a wait with no timeout"
            self.now += timedelta(seconds=timeout)
        return woken in done

    async def next_wait(self) -> float | None:
        await asyncio.wait_for(self.waiting.wait(), 30)
        self.waiting.clear()
        return self.waits[-1]

    async def let_time_pass(self) -> float | None:
        self.passed.set()
        return await self.next_wait()


def test_the_sweeper_sleeps_until_a_session_is_due(database_url: str) -> None:
    url = migrated(database_url, "owner")
    engine, database = make_engine(url), Database(url)
    clock = Clockwork()
    sweeper = SessionSweeper(database, ServiceMetrics("owner"), 300, lambda: clock.now, wait=clock.wait)

    async def main() -> None:
        async with sweeper:
            assert await clock.next_wait() is None  # no session: no timer
            sweeper.notice(NOW + timedelta(seconds=60))  # a session made here
            assert await clock.next_wait() == 60.0
            sweeper.notice(NOW + timedelta(seconds=90))  # a later one: no wake
            add_sessions(engine, expired=0, live=1, now=NOW - timedelta(hours=1) + timedelta(seconds=60))
            assert clock.waits == [None, 60.0]
            assert await clock.let_time_pass() is None  # swept at 60 s; none left
            assert tokens(engine) == set()
            add_sessions(
                engine, expired=0, live=1, now=clock.now - timedelta(hours=1) + timedelta(seconds=10)
            )
            sweeper.notice(clock.now + timedelta(seconds=10))
            assert await clock.next_wait() == 300.0  # due in 10 s, but at most a sweep per 300 s

    try:
        asyncio.run(main())
    finally:
        engine.dispose()
        database.dispose()


def test_the_sweeper_starts_with_the_tables_earliest_expiry(database_url: str) -> None:
    url = migrated(database_url, "rendezvous")
    engine, database = make_engine(url), Database(url)
    add_sessions(engine, expired=0, live=2, now=NOW - timedelta(hours=1) + timedelta(seconds=45))
    clock = Clockwork()
    sweeper = SessionSweeper(database, ServiceMetrics("rendezvous"), 300, lambda: clock.now, wait=clock.wait)

    async def main() -> None:
        async with sweeper:
            assert await clock.next_wait() == 45.0  # left by another process
            assert await clock.let_time_pass() is None
            assert tokens(engine) == set()

    try:
        asyncio.run(main())
    finally:
        engine.dispose()
        database.dispose()
