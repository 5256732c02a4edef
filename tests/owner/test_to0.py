"""The TO0 scheduler against an in-memory rendezvous: register, renew, back off, claim
once; and the thread sleeps exactly until the next due time, or until an import wakes it."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import select

from fdo.voucher import vouchers_to_pem
from fdo_server.clock import utc
from fdo_server.db import make_engine, unit_of_work
from fdo_server.metrics import ServiceMetrics
from fdo_server.ratelimit import EdgeGuard, first_message_routes
from fdo_server.sql import Database
from owner.importer import import_pem
from owner.settings import OwnerConfig, load_config
from owner.tables import To0Work
from owner.to0 import To0Thread, _claim_batch, _finish_batch, _Result, run_due
from tests.conftest import KeyPool
from tests.fdo.flow import NOW
from tests.owner.helpers import RendezvousStub, World, make_world
from transport.client import FdoHttpClient


@pytest.fixture
def world(key_pool: KeyPool, tmp_path: Path) -> World:
    return make_world(key_pool, tmp_path)


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """The scheduler's database: driver connections of its own, as in a device-plane
    worker (the tests set rows up through the ORM on an engine of their own)."""
    database = Database(database_url)
    yield database
    database.dispose()


def setup(world: World, database_url: str, count: int = 1) -> tuple[Engine, OwnerConfig, list[str]]:
    config = load_config(
        world.settings(
            database_url, to0_retry_seconds=60, to0_max_backoff_seconds=300, to0_renew_fraction=0.25
        )
    )
    engine = make_engine(database_url)  # migrated by world.settings
    vouchers = [world.device()[1] for _ in range(count)]
    if vouchers:
        with unit_of_work(engine):
            results = import_pem(vouchers_to_pem(vouchers), list(config.keys.values()), now=NOW)
        assert all(r.status == "imported" for r in results)
    return engine, config, [str(v.guid) for v in vouchers]


def work_rows(engine: Engine) -> list[To0Work]:
    with unit_of_work(engine) as db:
        return list(db.exec(select(To0Work).order_by(To0Work.id)).all())  # type: ignore[arg-type]


def test_registers_and_renews(world: World, database_url: str, database: Database) -> None:
    engine, config, guids = setup(world, database_url)
    stub = RendezvousStub()
    urls: list[str] = []

    def factory(url: str) -> FdoHttpClient:
        urls.append(url)
        return FdoHttpClient(url, client=stub.client())

    assert run_due(database, config, now=NOW, worker_id="w1", http_factory=factory) == 1
    assert urls == ["http://rv.example:8041"]  # no RVOwnerPort: RVDevPort serves TO0 too
    assert stub.count == {guids[0]: 1}
    (work,) = work_rows(engine)
    assert work.registered_until is not None and utc(work.registered_until) == NOW + timedelta(seconds=3600)
    assert utc(work.next_attempt_at) == NOW + timedelta(seconds=2700)
    assert work.claimed_by is None and work.attempts == 0 and work.last_error is None

    # Not due yet: nothing happens; once due, it renews.
    assert (
        run_due(database, config, now=NOW + timedelta(seconds=2000), worker_id="w1", http_factory=factory)
        == 0
    )
    later = NOW + timedelta(seconds=2700)
    assert run_due(database, config, now=later, worker_id="w1", http_factory=factory) == 1
    assert stub.count == {guids[0]: 2}
    (work,) = work_rows(engine)
    assert work.registered_until is not None and utc(work.registered_until) == later + timedelta(seconds=3600)


def test_failure_backs_off(world: World, database_url: str, database: Database) -> None:
    engine, config, _ = setup(world, database_url)
    broken = TestClient(FastAPI())  # every POST is a 404

    def factory(url: str) -> FdoHttpClient:
        return FdoHttpClient(url, client=broken)

    now = NOW
    delays = []
    for _ in range(4):
        assert run_due(database, config, now=now, worker_id="w1", http_factory=factory) == 1
        (work,) = work_rows(engine)
        assert work.last_error is not None and "404" in work.last_error
        assert work.claimed_by is None and work.registered_until is None
        delay = utc(work.next_attempt_at) - now
        delays.append(delay.total_seconds())
        assert run_due(database, config, now=now + delay / 2, worker_id="w1", http_factory=factory) == 0
        now += delay
    assert delays == [60, 120, 240, 300]
    assert work.attempts == 4

    stub = RendezvousStub()
    assert (
        run_due(
            database,
            config,
            now=now,
            worker_id="w1",
            http_factory=lambda u: FdoHttpClient(u, client=stub.client()),
        )
        == 1
    )
    (work,) = work_rows(engine)
    assert work.attempts == 0 and work.last_error is None and work.registered_until is not None


def test_two_workers_never_both_register(world: World, database_url: str) -> None:
    engine, config, guids = setup(world, database_url, count=6)
    stub = RendezvousStub()

    def factory(url: str) -> FdoHttpClient:
        time.sleep(0.02)  # widen the window between claim and registration
        return FdoHttpClient(url, client=stub.client())

    counts: dict[str, int] = {}
    barrier = threading.Barrier(2)

    def worker(name: str) -> None:
        own = Database(database_url)  # a replica of its own
        barrier.wait()
        try:
            counts[name] = run_due(own, config, now=NOW, worker_id=name, http_factory=factory)
        finally:
            own.dispose()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(counts.values()) == 6
    assert stub.count == {g: 1 for g in guids}
    assert all(w.registered_until is not None and w.claimed_by is None for w in work_rows(engine))


def test_expired_claim_is_taken_over(world: World, database_url: str, database: Database) -> None:
    engine, config, guids = setup(world, database_url)
    with unit_of_work(engine) as db:
        (work,) = db.exec(select(To0Work)).all()
        work.claimed_by, work.claim_expires_at = "dead", NOW + timedelta(seconds=60)
        db.add(work)
    stub = RendezvousStub()

    def factory(url: str) -> FdoHttpClient:
        return FdoHttpClient(url, client=stub.client())

    assert run_due(database, config, now=NOW, worker_id="w1", http_factory=factory) == 0
    assert (
        run_due(database, config, now=NOW + timedelta(seconds=61), worker_id="w1", http_factory=factory) == 1
    )
    assert stub.count == {guids[0]: 1}


def test_a_batch_writes_only_the_rows_this_worker_still_holds(
    world: World, database_url: str, database: Database
) -> None:
    """A row whose claim another worker took over is left to it; a row twice in one batch
    (claimed again after its claim expired) gets its first outcome, or its deletion."""
    engine, config, _ = setup(world, database_url, count=3)
    kept, taken, dropped = _claim_batch(database, "w1", NOW, timedelta(seconds=300), 3)
    with unit_of_work(engine) as db:
        row = db.get(To0Work, taken.work_id)
        assert row is not None
        row.claimed_by = "w2"
        db.add(row)
    _finish_batch(
        database,
        [
            _Result(kept, NOW, 3600, []),
            _Result(kept, NOW, None, ["refused"]),
            _Result(taken, NOW, 3600, []),
            _Result(dropped, NOW, 3600, []),
            _Result(dropped, NOW, None, [], drop=True),
        ],
        "w1",
        config,
    )
    rows = {w.id: w for w in work_rows(engine)}
    assert set(rows) == {kept.work_id, taken.work_id}
    first = rows[kept.work_id]
    assert first.claimed_by is None and first.attempts == 0 and first.last_error is None
    assert first.registered_until is not None and utc(first.registered_until) == NOW + timedelta(seconds=3600)
    assert utc(first.next_attempt_at) == NOW + timedelta(seconds=2700)
    other = rows[taken.work_id]
    assert other.claimed_by == "w2" and other.registered_until is None and utc(other.next_attempt_at) == NOW


# ------------------------------------------------------------ sleeping until due (no polling)


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def stub_factory(stub: RendezvousStub) -> Callable[[str], FdoHttpClient]:
    return lambda url: FdoHttpClient(url, client=stub.client())


def uncapped(world: World, database_url: str, **extra: object) -> OwnerConfig:
    return load_config(
        world.settings(
            database_url,
            migrate=False,
            to0_retry_seconds=60,
            to0_max_backoff_seconds=300,
            to0_renew_fraction=0.25,
            **{"to0_interval_seconds": 0, **extra},
        )
    )


def test_each_pass_sleeps_exactly_until_the_next_due_time(
    world: World, database_url: str, database: Database
) -> None:
    engine, _, _ = setup(world, database_url, count=2)
    config = uncapped(world, database_url)
    clock = FakeClock(NOW)
    stub = RendezvousStub()
    thread = To0Thread(database, config, worker_id="w1", clock=clock, http_factory=stub_factory(stub))
    # Both registered; the next due time is their renewal (3600 s granted, renew at 25 % left).
    assert thread.run_pass() == 2700
    assert len(stub.count) == 2
    clock.now = NOW + timedelta(seconds=1000)
    assert thread.run_pass() == 1700  # woken early (an import elsewhere): still the same due time
    # The cap bounds the sleep, and only the cap is waited for when nothing is due at all.
    assert (
        To0Thread(
            database, uncapped(world, database_url, to0_interval_seconds=600), worker_id="w1", clock=clock
        ).run_pass()
        == 600
    )
    with unit_of_work(engine) as db:
        for work in db.exec(select(To0Work)).all():
            db.delete(work)
    assert thread.run_pass() is None
    assert (
        To0Thread(
            database, uncapped(world, database_url, to0_interval_seconds=600), worker_id="w1", clock=clock
        ).run_pass()
        == 600
    )


def test_back_off_and_expiring_claims_are_due_times(
    world: World, database_url: str, database: Database
) -> None:
    engine, _, guids = setup(world, database_url, count=2)
    config = uncapped(world, database_url)
    clock = FakeClock(NOW)
    broken = TestClient(FastAPI())  # every POST is a 404
    failing = To0Thread(
        database, config, worker_id="w1", clock=clock, http_factory=lambda u: FdoHttpClient(u, client=broken)
    )
    first, second = work_rows(engine)
    with unit_of_work(engine) as db:  # another worker holds the second row, until NOW + 90 s
        row = db.get(To0Work, second.id)
        assert row is not None
        row.claimed_by, row.claim_expires_at = "dead", NOW + timedelta(seconds=90)
        db.add(row)
    assert failing.run_pass() == 60  # the first row's retry, before the dead claim expires
    clock.now = NOW + timedelta(seconds=60)
    assert failing.run_pass() == 30  # retried and failed again (due at +180); the claim expires at +90
    stub = RendezvousStub()
    working = To0Thread(database, config, worker_id="w1", clock=clock, http_factory=stub_factory(stub))
    clock.now = NOW + timedelta(seconds=90)
    assert working.run_pass() == 90  # took over the expired claim; the back-off of the first is next
    assert stub.count == {guids[1]: 1}
    clock.now = NOW + timedelta(seconds=180)
    assert working.run_pass() == 2610  # both registered: the second's renewal (at 90 + 2700) is next
    assert stub.count == {guids[0]: 1, guids[1]: 1}


def test_the_thread_sleeps_until_an_import_wakes_it(
    world: World, database_url: str, database: Database
) -> None:
    engine, _, _ = setup(world, database_url, count=0)
    config = uncapped(world, database_url)
    stub = RendezvousStub()
    timeouts: queue.Queue[float | None] = queue.Queue()

    def waiter(event: threading.Event, timeout: float | None) -> None:
        timeouts.put(timeout)
        event.wait()  # only a wake (or stop) ends the sleep: nothing here depends on time

    thread = To0Thread(
        database, config, worker_id="w1", clock=FakeClock(NOW), http_factory=stub_factory(stub), wait=waiter
    )
    thread.start()
    try:
        assert timeouts.get(timeout=30) is None  # nothing to do: no timer at all
        _, voucher = world.device()
        with unit_of_work(engine):
            import_pem(vouchers_to_pem([voucher]), list(config.keys.values()), now=NOW)
        assert timeouts.get(timeout=30) == 2700  # woken by the commit; registered; sleeps until renewal
        assert stub.count == {str(voucher.guid): 1}
    finally:
        thread.stop()
    assert timeouts.empty()  # stop ended the sleep without another pass


def test_many_vouchers_in_one_pass(world: World, database_url: str, database: Database) -> None:
    """More vouchers than one claim batch (2 x to0_concurrency): one pass registers all."""
    engine, _, guids = setup(world, database_url, count=7)
    config = uncapped(world, database_url, to0_concurrency=2)
    stub = RendezvousStub()
    assert run_due(database, config, now=NOW, worker_id="w1", http_factory=stub_factory(stub)) == 7
    assert stub.count == dict.fromkeys(guids, 1)
    rows = work_rows(engine)
    assert all(r.claimed_by is None and r.registered_until is not None for r in rows)


# ------------------------------------------------------------ pacing to a rendezvous's rate limit


class SharedTime:
    """One fake time for the owner (aware datetimes) and the rendezvous's rate limit
    (monotonic seconds); only the scheduler's sleeps move it."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.sleeps: list[float | None] = []

    def owner(self) -> datetime:
        return NOW + timedelta(seconds=self.seconds)

    def monotonic(self) -> float:
        return 1000.0 + self.seconds

    def sleep(self, event: threading.Event, timeout: float | None) -> None:
        self.sleeps.append(timeout)
        assert timeout is not None
        self.seconds += timeout


def limited_rendezvous(stub: RendezvousStub, time_: SharedTime, *, rate: float, burst: int) -> EdgeGuard:
    """The stub behind the rendezvous's own edge guard: TO0.Hello limited per address."""
    return EdgeGuard(
        stub.app,
        service="rendezvous",
        routes=first_message_routes([20], rate=rate, burst=burst),
        trusted_proxies=[],
        metrics=ServiceMetrics("rendezvous"),
        max_addresses=100,
        clock=time_.monotonic,
    )


def refused(guard: EdgeGuard) -> float | None:
    """TO0.Hello messages the rendezvous refused over its rate limit."""
    return guard.metrics.registry.get_sample_value(
        "fdo_rate_limited_total", {"service": "rendezvous", "route": "fdo/20"}
    )


def test_a_rate_limit_refusal_is_retried_at_its_retry_after(
    world: World, database_url: str, database: Database
) -> None:
    """Refused with Retry-After (HTTP 500, ErrorMessage, Retry-After: 1): the scheduler
    waits exactly that long and registers the voucher then, in the same pass, counting
    no failed attempt and no back-off."""
    engine, _, guids = setup(world, database_url, count=5)
    config = uncapped(world, database_url, to0_concurrency=1)
    time_ = SharedTime()
    stub = RendezvousStub()
    guard = limited_rendezvous(stub, time_, rate=1.0, burst=2)
    http = TestClient(guard)
    ran = run_due(
        database,
        config,
        clock=time_.owner,
        worker_id="w1",
        http_factory=lambda url: FdoHttpClient(url, client=http),
        sleep=time_.sleep,
    )
    assert ran == 5
    assert stub.count == dict.fromkeys(guids, 1)
    # Two in the burst, then one a second: each refusal waited out once, for its Retry-After.
    assert refused(guard) == 3
    assert time_.sleeps == [1.0, 1.0, 1.0]
    for work in work_rows(engine):
        assert work.attempts == 0 and work.last_error is None and work.claimed_by is None
        assert work.registered_until is not None
        # Renewed from when it was registered (3600 s granted, renew at 25 % left).
        assert utc(work.next_attempt_at) - utc(work.registered_until) == timedelta(seconds=-900)


def test_a_long_retry_after_puts_the_voucher_back_until_then(
    world: World, database_url: str, database: Database
) -> None:
    """A Retry-After beyond what a claimed voucher may wait: put back, due at that time,
    with its attempts and last error as they were; no registration is sent to that
    rendezvous before then (the thread keeps what it asked across passes)."""
    engine, _, guids = setup(world, database_url, count=4)
    config = uncapped(world, database_url, to0_concurrency=1)
    first, second, third, fourth = work_rows(engine)
    with unit_of_work(engine) as db:  # the fourth failed twice before (a back-off of 120 s, over)
        row = db.get(To0Work, fourth.id)
        assert row is not None
        row.attempts, row.last_error = 2, "rv.example: connection refused"
        db.add(row)
    clock = FakeClock(NOW)
    stub = RendezvousStub()
    time_ = SharedTime()
    guard = limited_rendezvous(stub, time_, rate=0.001, burst=2)  # then Retry-After: 1000 s
    http = TestClient(guard)
    sleeps: list[float | None] = []
    thread = To0Thread(
        database,
        config,
        worker_id="w1",
        clock=clock,
        http_factory=lambda url: FdoHttpClient(url, client=http),
        wait=lambda event, timeout: sleeps.append(timeout),
    )
    # Two registered (the burst); the third refused with Retry-After 1000, kept to the
    # 300 s most the owner waits (to0_max_backoff_seconds), longer than a claimed voucher
    # waits (60 s): the third and fourth are put back until then, and the thread sleeps
    # until then.
    assert thread.run_pass() == 300
    assert stub.count == {guids[0]: 1, guids[1]: 1}
    assert refused(guard) == 1  # the fourth was not sent: the rendezvous had asked to wait
    assert sleeps == []  # the pool threads did not sleep either
    rows = {w.id: w for w in work_rows(engine)}
    assert rows[first.id].registered_until is not None and rows[second.id].registered_until is not None
    for wid, attempts, error in ((third.id, 0, None), (fourth.id, 2, "rv.example: connection refused")):
        row = rows[wid]
        assert utc(row.next_attempt_at) == NOW + timedelta(seconds=300)
        assert row.attempts == attempts and row.last_error == error and row.claimed_by is None
    # Woken early (an import): nothing is due, nothing is sent.
    clock.now = NOW + timedelta(seconds=100)
    assert thread.run_pass() == 200
    assert refused(guard) == 1
    # At the time asked, with the rendezvous's limit refilled: both registered.
    clock.now = NOW + timedelta(seconds=300)
    time_.seconds = 2000
    assert thread.run_pass() == 2700 - 300  # the first two's renewal is next
    assert stub.count == dict.fromkeys(guids, 1)
    assert all(w.attempts == 0 and w.last_error is None for w in work_rows(engine))
