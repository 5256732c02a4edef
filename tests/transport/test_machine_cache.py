"""The router's per-process machine cache: it only skips decoding state, never decides.

Two routers share one session store, as two processes share one database. A message
that reaches the process that handled the previous one reuses its machine object; one
that reaches the other process, or that follows a message handled elsewhere, restores
from the stored state; a failed message leaves nothing cached.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fdo.to0.owner import TO0Owner
from fdo.to0.rendezvous import TO0Rendezvous
from fdo.to1.device import TO1Device
from fdo.to1.rendezvous import TO1Rendezvous
from tests.fdo.flow import Rendezvous
from tests.transport.test_http import BASE, CBOR, Setup, assert_error, setup, to0_owner
from transport.client import FdoHttpClient
from transport.server import MachineCache, MemorySessionStore, ProtocolHandler, fdo_router

__all__ = ["setup"]  # the module-scoped fixture, shared with test_http


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
    store: MemorySessionStore


@pytest.fixture
def pair() -> Pair:
    rv = Rendezvous(max_wait_seconds=3600)
    store = MemorySessionStore()
    return Pair(_process(rv, store, MachineCache()), _process(rv, store, MachineCache()), rv, store)


def test_same_process_reuses_the_machine(pair: Pair, setup: Setup) -> None:
    one, rv = pair.one, pair.rv
    FdoHttpClient(BASE, client=one.http).run(to0_owner(setup))
    device = TO1Device(setup.credential)
    FdoHttpClient(BASE, client=one.http).run(device)
    assert device.done and setup.voucher.guid in rv.registrations
    assert one.restores == []  # TO0's and TO1's second messages used the cached machines
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


def test_stale_cache_entry_is_not_used(pair: Pair, setup: Setup) -> None:
    # TO1: HelloRV at process one (cached at version 0), then the session moves on
    # elsewhere (the stored version changes): one must restore, not use its stale object.
    one = pair.one
    FdoHttpClient(BASE, client=one.http).run(to0_owner(setup))
    device = TO1Device(setup.credential)
    _, hello = device.start()
    r = one.http.post("/fdo/101/msg/30", content=hello, headers=CBOR)
    token = r.headers["Authorization"]
    assert len(one.cache) == 1
    # Another process saves the session (same state, next version).
    stored = pair.store.load(token.removeprefix("Bearer "))
    assert stored is not None
    pair.store.save(token.removeprefix("Bearer "), stored.state, version=stored.version)
    nxt = device.receive(31, r.content)
    assert nxt is not None
    r = one.http.post("/fdo/101/msg/32", content=nxt[1], headers={**CBOR, "Authorization": token})
    assert r.status_code == 200 and len(one.restores) == 1


def test_failed_message_leaves_nothing_cached(pair: Pair, setup: Setup) -> None:
    one = pair.one
    FdoHttpClient(BASE, client=one.http).run(to0_owner(setup))
    device = TO1Device(setup.credential)
    _, hello = device.start()
    r = one.http.post("/fdo/101/msg/30", content=hello, headers=CBOR)
    token = r.headers["Authorization"]
    assert len(one.cache) == 1
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
