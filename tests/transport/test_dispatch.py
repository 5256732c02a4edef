"""The dispatcher's steps one by one, without HTTP: load (new, restored, refused), the
cached machine (used, stale, expired), saving on a lost version race, and what the
observer sees.

The machine is :class:`~tests.transport.test_machine_cache.Steps` (60, 62, 64, 66 in
order); the store is the real :class:`~transport.sessions.MemorySessionStore` (counting
its reads); ``scope`` records each unit of work as a database transaction would end it
(commit, or rollback with the exception).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest

from fdo.errors import InvalidTokenError
from fdo.messages import ErrorMessage
from tests.transport.test_machine_cache import CountingStore, Steps
from transport.dispatch import (
    AnyServerMachine,
    MessageDispatcher,
    MessageEvent,
    MessageFailed,
    Outcome,
    ProtocolHandler,
)
from transport.sessions import LiveMachine, MachineCache

BODY = b"\x80"
START = datetime(2026, 1, 1, tzinfo=UTC)


class Units:
    """The units of work the dispatcher opened, as ``commit`` or ``rollback <Error>``."""

    def __init__(self) -> None:
        self.log: list[str] = []

    @contextmanager
    def __call__(self) -> Iterator[None]:
        try:
            yield
        except BaseException as exc:
            self.log.append(f"rollback {type(exc).__name__}")
            raise
        self.log.append("commit")


class World:
    """A dispatcher serving :class:`Steps` as TO2, with a settable clock."""

    def __init__(self, *, cache: MachineCache | None = None) -> None:
        self.now = START
        self.store = CountingStore(clock=lambda: self.now)
        self.units = Units()
        self.events: list[MessageEvent] = []
        self.restores = 0
        #: A session another process saves while this one restores it (a lost race).
        self.race: str | None = None

        def restore(state: bytes) -> AnyServerMachine:
            self.restores += 1
            if self.race is not None:
                stored = self.store.load(self.race)
                assert stored is not None
                self.store.save(self.race, stored.state, version=stored.version)
            return cast(AnyServerMachine, Steps(state[0]))

        self.handler = ProtocolHandler(new=lambda: cast(AnyServerMachine, Steps()), restore=restore)
        self.dispatcher = MessageDispatcher(
            {60: self.handler},
            self.store,
            clock=lambda: self.now,
            scope=self.units,
            observer=self.events.append,
            machine_cache=MachineCache() if cache is None else cache,
        )

    def send(self, msg_type: int, token: str | None = None) -> tuple[int, int, str | None]:
        """``(status, Message-Type, session token)`` of one message."""
        headers = {"content-type": "application/cbor"}
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        r = self.dispatcher.handle(str(msg_type), headers, BODY)
        auth = r.headers.get("authorization")
        return r.status_code, int(r.headers["message-type"]), None if auth is None else auth.split()[1]

    def opened(self) -> str:
        """A session after message 60 (its machine cached at version 0): the token."""
        status, _, token = self.send(60)
        assert status == 200 and token is not None and self.units.log == ["commit"]
        self.units.log.clear()
        return token


def _error_code(world: World, msg_type: int, token: str) -> int:
    headers = {"content-type": "application/cbor", "authorization": f"Bearer {token}"}
    r = world.dispatcher.handle(str(msg_type), headers, BODY)
    assert r.status_code == 500 and r.headers["message-type"] == "255"
    return ErrorMessage.decode(bytes(r.body)).code


# ---------------------------------------------------------------------------- load


def test_load_a_first_message_builds_a_new_machine() -> None:
    world = World()
    outcome = Outcome()
    live = world.dispatcher.load(world.handler, "TO2", 60, 60, None, outcome)
    assert live.version == -1 and live.protocol == "TO2" and live.expires_at is None
    assert outcome.started and world.store.loads == 0


def test_load_restores_from_the_store_with_version_expiry_and_start() -> None:
    world = World()
    token = world.opened()
    cached = world.dispatcher.cache.pop(token)
    assert cached is not None
    live = world.dispatcher.load(world.handler, "TO2", 60, 62, token, Outcome())
    assert world.restores == 1 and world.store.loads == 1
    assert (live.version, live.protocol) == (0, "TO2")
    assert live.expires_at == START + timedelta(minutes=10) == cached.expires_at
    assert live.started_at == cached.started_at  # the start time travels in the stored state
    assert cast(Steps, live.machine).expect == 62


@pytest.mark.parametrize("case", ["unknown", "none", "other protocol", "expired"])
def test_load_refuses_a_token_without_a_live_session_of_the_protocol(case: str) -> None:
    world = World()
    token: str | None = world.opened()
    if case == "unknown":
        token = "no-such-token"
    elif case == "none":
        token = None
    elif case == "other protocol":
        token = world.store.create("TO0", b"\x60", START + timedelta(hours=1))
    else:
        world.now += timedelta(minutes=11)
    with pytest.raises(MessageFailed) as failed:
        world.dispatcher.load(world.handler, "TO2", 60, 62, token, Outcome())
    assert isinstance(failed.value.error, InvalidTokenError) and world.restores == 0


# ---------------------------------------------------------------------------- the cached machine


def test_cached_machine_runs_without_reading_the_store() -> None:
    world = World()
    token = world.opened()
    live = world.dispatcher.cache.pop(token)
    assert live is not None and live.version == 0
    outcome = Outcome()
    reply = world.dispatcher.run_cached(world.handler, "TO2", 62, BODY, token, live, outcome)
    assert reply == (63, BODY, token)
    assert world.store.loads == 0 and world.units.log == ["commit"]
    assert outcome.keep is not None and outcome.keep[1].version == 1
    stored = world.store.load(token)
    assert stored is not None and stored.version == 1


def test_stale_cached_machine_is_rolled_back_and_the_store_untouched() -> None:
    world = World()
    token = world.opened()
    live = world.dispatcher.cache.pop(token)
    assert live is not None
    before = world.store.load(token)
    assert before is not None
    world.store.save(token, before.state, version=0)  # another process moved it to version 1
    outcome = Outcome()
    assert world.dispatcher.run_cached(world.handler, "TO2", 62, BODY, token, live, outcome) is None
    assert world.units.log == ["rollback MessageFailed"]  # the save found version 1
    assert outcome == Outcome()  # nothing of the failed attempt is reported or cached
    after = world.store.load(token)
    assert after is not None and (after.version, after.state) == (1, before.state)


@pytest.mark.parametrize("case", ["expired", "other protocol"])
def test_unusable_cached_machine_is_retried_from_the_store(case: str) -> None:
    world = World()
    token = world.opened()
    live = world.dispatcher.cache.pop(token)
    assert live is not None
    if case == "expired":
        world.now = START + timedelta(minutes=10)
    else:
        live = LiveMachine(live.version, live.machine, "TO0", live.expires_at, live.started_at)
    assert world.dispatcher.run_cached(world.handler, "TO2", 62, BODY, token, live, Outcome()) is None
    assert world.units.log == ["rollback RetryFromStore"]
    assert cast(Steps, live.machine).expect == 62  # never ran


def test_message_after_a_stale_cache_is_handled_from_the_store() -> None:
    # Roll back the cached attempt, then one unit of work from the stored state.
    world = World()
    token = world.opened()
    stored = world.store.load(token)
    assert stored is not None
    world.store.save(token, stored.state, version=0)
    assert world.send(62, token) == (200, 63, token)
    assert world.units.log == ["rollback MessageFailed", "commit"]
    assert world.restores == 1
    cached = world.dispatcher.cache.pop(token)
    assert cached is not None and cached.version == 2  # saved over version 1


# ---------------------------------------------------------------------------- save


def test_lost_race_on_the_stored_state_is_an_invalid_token() -> None:
    # Without a cache: restore, and another process saves before this one does.
    world = World(cache=MachineCache(0))
    token = world.opened()
    world.race = token
    assert _error_code(world, 62, token) == InvalidTokenError.code
    # The message rolled back; the session was deleted in a unit of work of its own.
    assert world.units.log == ["rollback MessageFailed", "commit"]
    assert len(world.store) == 0


def test_save_finishes_a_done_session_on_its_version() -> None:
    world = World()
    token = world.opened()
    for msg_type in (62, 64):
        assert world.send(msg_type, token)[:2] == (200, msg_type + 1)
    assert world.send(66, token) == (200, 67, token)
    assert len(world.store) == 0 and len(world.dispatcher.cache) == 0
    assert world.store.loads == 0  # every later message ran on the cached machine


# ---------------------------------------------------------------------------- observe


def test_observer_sees_the_session_open_and_finish() -> None:
    world = World()
    token = world.opened()
    world.now += timedelta(seconds=1)
    for msg_type in (62, 64, 66):
        world.send(msg_type, token)
    assert [(e.msg_type, e.started, e.completed, e.error_code) for e in world.events] == [
        (60, True, False, None),
        (62, False, False, None),
        (64, False, False, None),
        (66, False, True, None),
    ]
    assert len({e.session for e in world.events}) == 1 and world.events[0].session != token
    assert world.events[-1].session_seconds is not None and world.events[0].session_seconds is None


def test_observer_sees_a_failed_message_and_may_raise() -> None:
    world = World()
    token = world.opened()

    def broken(event: MessageEvent) -> None:
        world.events.append(event)
        raise RuntimeError("observer bug")

    world.dispatcher.observer = broken
    assert _error_code(world, 66, token) == 100  # out of order: the machine refuses it
    assert world.events[-1].error_code == 100 and not world.events[-1].completed
    assert world.send(62, token)[0] == 500  # the failure ended the session
    assert world.events[-1].error_code == InvalidTokenError.code
