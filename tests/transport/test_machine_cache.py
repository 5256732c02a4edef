"""The router's per-process machine cache: it only skips reading and decoding state,
never decides.

Two routers share one session store, as two processes share one database. A message
that reaches the process that handled the previous one runs on its machine object
without reading the session; one that reaches the other process, or that follows a
message handled elsewhere, restores from the stored state (the cached attempt is rolled
back); a failed message leaves nothing cached.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fdo.errors import UnexpectedMessageError
from fdo.to0.owner import TO0Owner
from fdo.to0.rendezvous import TO0Rendezvous
from fdo.to1.device import TO1Device
from fdo.to1.rendezvous import TO1Record, TO1Rendezvous
from fdo.types import Guid
from tests.fdo.flow import Rendezvous
from tests.transport.test_http import BASE, CBOR, Setup, assert_error, setup, to0_owner
from transport.client import FdoHttpClient
from transport.server import (
    AnyServerMachine,
    MachineCache,
    MemorySessionStore,
    ProtocolHandler,
    StoredSession,
    fdo_router,
)

__all__ = ["setup"]  # the module-scoped fixture, shared with test_http


class CountingStore(MemorySessionStore):
    """A memory store that counts how often a session is read."""

    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        super().__init__(clock)
        self.loads = 0

    def load(self, token: str) -> StoredSession | None:
        self.loads += 1
        return super().load(token)


@dataclass
class Process:
    """One app instance (a "process") with its own cache, counting restores."""

    http: TestClient
    cache: MachineCache
    restores: list[bytes] = field(default_factory=list)


def _process(rv: Rendezvous, store: MemorySessionStore, cache: MachineCache) -> Process:
    restores: list[bytes] = []

    def restore_to0(state: bytes) -> TO0Rendezvous:
        restores.append(state)
        return TO0Rendezvous.from_state(state, rv)

    def restore_to1(state: bytes) -> TO1Rendezvous:
        restores.append(state)
        return TO1Rendezvous.from_state(state, rv)

    def register(machine: object) -> None:
        assert isinstance(machine, TO0Rendezvous) and machine.registration is not None
        rv.registrations[machine.registration.guid] = machine.registration

    handlers = {
        20: ProtocolHandler(new=lambda: TO0Rendezvous(rv), restore=restore_to0, on_done=register),
        30: ProtocolHandler(new=lambda: TO1Rendezvous(rv), restore=restore_to1),
    }
    app = FastAPI()
    app.include_router(fdo_router(handlers, store, machine_cache=cache))
    return Process(TestClient(app, base_url=BASE), cache, restores)


@dataclass
class Pair:
    one: Process
    two: Process
    rv: Rendezvous
    store: CountingStore


@pytest.fixture
def pair() -> Pair:
    rv = Rendezvous(max_wait_seconds=3600)
    store = CountingStore()
    return Pair(_process(rv, store, MachineCache()), _process(rv, store, MachineCache()), rv, store)


def test_same_process_reuses_the_machine(pair: Pair, setup: Setup) -> None:
    one, rv = pair.one, pair.rv
    FdoHttpClient(BASE, client=one.http).run(to0_owner(setup))
    device = TO1Device(setup.credential)
    FdoHttpClient(BASE, client=one.http).run(device)
    assert device.done and setup.voucher.guid in rv.registrations
    assert one.restores == []  # TO0's and TO1's second messages used the cached machines
    assert pair.store.loads == 0  # ... without reading their sessions
    assert len(one.cache) == 0  # finished sessions are not kept


def test_other_process_restores_from_state(pair: Pair, setup: Setup) -> None:
    one, two, rv = pair.one, pair.two, pair.rv
    owner = to0_owner(setup)
    _, hello = owner.start()
    r = one.http.post("/fdo/101/msg/20", content=hello, headers=CBOR)
    assert r.status_code == 200 and len(one.cache) == 1
    nxt = owner.receive(21, r.content)
    assert nxt is not None
    auth = {**CBOR, "Authorization": r.headers["Authorization"]}
    r = two.http.post("/fdo/101/msg/22", content=nxt[1], headers=auth)
    assert r.status_code == 200
    assert len(two.restores) == 1 and one.restores == []
    assert setup.voucher.guid in rv.registrations


def _hello_rv(one: Process, setup: Setup) -> tuple[TO1Device, Any, str]:
    """TO0 registers the device, then its TO1 HelloRV at ``one`` (whose cache then holds
    the session at version 0): the device machine, the response and the token header."""
    FdoHttpClient(BASE, client=one.http).run(to0_owner(setup))
    device = TO1Device(setup.credential)
    _, hello = device.start()
    r = one.http.post("/fdo/101/msg/30", content=hello, headers=CBOR)
    assert len(one.cache) == 1
    return device, r, r.headers["Authorization"]


def test_stale_cache_entry_is_not_used(pair: Pair, setup: Setup) -> None:
    # TO1: HelloRV at process one (cached at version 0), then the session moves on
    # elsewhere (the stored version changes): one must restore, not use its stale object.
    one = pair.one
    device, r, token = _hello_rv(one, setup)
    # Another process saves the session (same state, next version).
    stored = pair.store.load(token.removeprefix("Bearer "))
    assert stored is not None
    pair.store.save(token.removeprefix("Bearer "), stored.state, version=stored.version)
    nxt = device.receive(31, r.content)
    assert nxt is not None
    r = one.http.post("/fdo/101/msg/32", content=nxt[1], headers={**CBOR, "Authorization": token})
    assert r.status_code == 200 and len(one.restores) == 1


def test_to1_reads_the_registration_again_only_on_a_restored_machine(
    pair: Pair, setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ProveToRV on the machine HelloRV left in the cache answers from the registration
    HelloRV found; on a machine restored from the stored state it reads it again (and
    refuses the device, code 6, when it is gone by then)."""
    one, two, rv = pair.one, pair.two, pair.rv
    found: list[Guid] = []
    real_find = rv.find

    def find(guid: Guid) -> TO1Record | None:
        found.append(guid)
        return real_find(guid)

    monkeypatch.setattr(rv, "find", find)

    device, r, token = _hello_rv(one, setup)
    nxt = device.receive(31, r.content)
    assert nxt is not None and len(found) == 1
    r = one.http.post("/fdo/101/msg/32", content=nxt[1], headers={**CBOR, "Authorization": token})
    assert r.status_code == 200 and one.restores == [] and len(found) == 1

    found.clear()
    device, r, token = _hello_rv(one, setup)
    nxt = device.receive(31, r.content)
    assert nxt is not None
    del rv.registrations[setup.voucher.guid]  # the owner's registration is gone meanwhile
    r = two.http.post("/fdo/101/msg/32", content=nxt[1], headers={**CBOR, "Authorization": token})
    assert_error(r, 6, 32)
    assert len(two.restores) == 1 and len(found) == 2


def test_failed_message_leaves_nothing_cached(pair: Pair, setup: Setup) -> None:
    one = pair.one
    _, _, token = _hello_rv(one, setup)
    bad = one.http.post("/fdo/101/msg/32", content=b"\x80", headers={**CBOR, "Authorization": token})
    assert_error(bad, 100, 32)
    assert len(one.cache) == 0
    again = one.http.post("/fdo/101/msg/32", content=b"\x80", headers={**CBOR, "Authorization": token})
    assert_error(again, 1, 32)  # the session is gone with its machine


def test_large_states_are_not_kept(setup: Setup) -> None:
    rv = Rendezvous(max_wait_seconds=3600)
    proc = _process(rv, MemorySessionStore(), MachineCache(max_state=8))
    owner: TO0Owner = to0_owner(setup)
    FdoHttpClient(BASE, client=proc.http).run(owner)
    assert len(proc.restores) == 1 and len(proc.cache) == 0


# --------------------------------------------------------------------------- a longer protocol


class Steps:
    """A toy server machine in TO2's message range: 60, 62, 64, ... in order, done at 66.

    Its state is the next type it accepts, so a stale copy refuses the message a fresh
    copy takes.
    """

    def __init__(self, expect: int = 60) -> None:
        self.expect = expect

    def handle(self, msg_type: int, body: bytes) -> tuple[int, bytes]:
        if msg_type != self.expect:
            raise UnexpectedMessageError(f"expected {self.expect}, got {msg_type}")
        self.expect += 2
        return msg_type + 1, body

    @property
    def done(self) -> bool:
        return self.expect > 66

    def to_state(self) -> bytes:
        return bytes([self.expect])


def _steps_process(store: MemorySessionStore, clock: Callable[[], datetime]) -> Process:
    restores: list[bytes] = []

    def restore(state: bytes) -> AnyServerMachine:
        restores.append(state)
        return cast(AnyServerMachine, Steps(state[0]))

    handler = ProtocolHandler(new=lambda: cast(AnyServerMachine, Steps()), restore=restore)
    cache = MachineCache()
    app = FastAPI()
    app.include_router(fdo_router({60: handler}, store, machine_cache=cache, clock=clock))
    return Process(TestClient(app, base_url=BASE), cache, restores)


def _send(proc: Process, msg_type: int, token: str | None = None) -> Any:
    headers = dict(CBOR) if token is None else {**CBOR, "Authorization": token}
    return proc.http.post(f"/fdo/101/msg/{msg_type}", content=b"\x80", headers=headers)


def test_stale_cached_machine_never_answers() -> None:
    # 60 and 62 at process one (its cache holds the machine expecting 64), 64 at process
    # two, then 66 back at one: its cached copy would refuse 66, so the cached attempt is
    # rolled back and the message is handled from the stored state instead.
    store = CountingStore()
    one, two = _steps_process(store, store.clock), _steps_process(store, store.clock)
    r = _send(one, 60)
    token = r.headers["Authorization"]
    assert _send(one, 62, token).status_code == 200 and store.loads == 0
    assert _send(two, 64, token).status_code == 200 and len(two.restores) == 1
    r = _send(one, 66, token)
    assert r.status_code == 200 and r.headers["Message-Type"] == "67"
    assert len(one.restores) == 1 and len(store) == 0


def test_cached_machine_of_an_expired_session_is_not_used() -> None:
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    store = CountingStore(clock=lambda: now[0])
    one = _steps_process(store, lambda: now[0])
    token = _send(one, 60).headers["Authorization"]
    assert len(one.cache) == 1
    now[0] += timedelta(hours=1)  # past the session's expiry
    assert_error(_send(one, 62, token), 1, 62)
    assert len(one.cache) == 0


def test_a_wrong_message_on_a_cached_machine_is_still_refused() -> None:
    # The cached attempt fails; handled again from the stored state, it fails the same
    # way, and the session is gone.
    store = CountingStore()
    one = _steps_process(store, store.clock)
    token = _send(one, 60).headers["Authorization"]
    assert_error(_send(one, 64, token), 100, 64)
    assert len(one.restores) == 1 and len(store) == 0 and len(one.cache) == 0
    assert_error(_send(one, 62, token), 1, 62)
