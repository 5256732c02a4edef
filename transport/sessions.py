"""Where FDO server sessions live between messages: the session stores and the machine cache.

A sub-protocol (DI, TO0, TO1, TO2) runs over several HTTP requests, and each request may
reach another worker process, so a server machine's state is stored under an opaque
session token (``secrets.token_urlsafe(32)``) between messages. A :class:`SessionStore`
keeps it with a version that every write checks and bumps, so two requests racing on one
session cannot both win (the loser gets :class:`StaleSessionError`). The services store
sessions in their database (:class:`fdo_server.sessions.SQLSessionStore`);
:class:`MemorySessionStore` serves tests and single-process use.

:class:`MachineCache` keeps the live machine objects of this process as well, so that a
message reaching the process that handled its session's previous one need not read and
decode the stored state (:class:`transport.dispatch.MessageDispatcher` decides when it
may be used).
"""

import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from fdo.machine import ServerMachine


class StaleSessionError(Exception):
    """:meth:`SessionStore.save` found a newer version than the one loaded."""


@dataclass(frozen=True, slots=True)
class StoredSession:
    """What :meth:`SessionStore.load` returns: the protocol name, state and its version
    (and the session's expiry, when the store tells it)."""

    protocol: str
    state: bytes
    version: int
    expires_at: datetime | None = None


class SessionStore(Protocol):
    """Where server machine state lives between requests.

    ``load`` returns None for an unknown or expired token. ``save`` writes only if the
    stored version still equals ``version`` (the one ``load`` returned) and bumps it, and
    ``finish`` deletes a finished session on the same condition; otherwise both raise
    :class:`StaleSessionError`.
    """

    def create(self, protocol: str, state: bytes, expires_at: datetime) -> str: ...

    def load(self, token: str) -> StoredSession | None: ...

    def save(self, token: str, state: bytes, *, version: int) -> None: ...

    def finish(self, token: str, *, version: int) -> None: ...

    def delete(self, token: str) -> None: ...


@dataclass
class _MemoryEntry:
    protocol: str
    state: bytes
    version: int
    expires_at: datetime


class MemorySessionStore:
    """A thread-safe in-memory :class:`SessionStore` (tests and single-process use)."""

    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[str, _MemoryEntry] = {}

    def create(self, protocol: str, state: bytes, expires_at: datetime) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._sessions[token] = _MemoryEntry(protocol, state, 0, expires_at)
        return token

    def load(self, token: str) -> StoredSession | None:
        with self._lock:
            entry = self._sessions.get(token)
            if entry is None:
                return None
            if entry.expires_at <= self.clock():
                del self._sessions[token]
                return None
            return StoredSession(entry.protocol, entry.state, entry.version, entry.expires_at)

    def save(self, token: str, state: bytes, *, version: int) -> None:
        with self._lock:
            entry = self._sessions.get(token)
            if entry is None or entry.version != version:
                raise StaleSessionError(token)
            entry.state = state
            entry.version += 1

    def finish(self, token: str, *, version: int) -> None:
        with self._lock:
            entry = self._sessions.get(token)
            if entry is None or entry.version != version:
                raise StaleSessionError(token)
            del self._sessions[token]

    def delete(self, token: str) -> None:
        with self._lock:
            self._sessions.pop(token, None)

    def __len__(self) -> int:
        return len(self._sessions)


# ---------------------------------------------------------------------------- machine cache


@dataclass(frozen=True, slots=True)
class LiveMachine:
    """A machine with what its session row holds: the version it was loaded or saved at
    (-1 for a session not stored yet), the protocol name, the expiry (None when not
    known) and the session's start time (``time.time()`` of its first message)."""

    version: int
    machine: ServerMachine[Any]
    protocol: str
    expires_at: datetime | None
    started_at: float


class MachineCache:
    """Live server machines of this process, keyed by session token (bounded, LRU).

    After a message's transaction has committed, the dispatcher keeps the machine object
    with the version it saved. When the next message of that session reaches the same
    process (a device keeps its connection, so it usually does), the dispatcher runs it
    on the cached object without reading the session row, and saves the new state only
    if the row still has the version it saved (the save is conditional, as always). If
    it has not (another process moved the session on, or the row is gone), or anything
    fails on that path, the transaction is rolled back and the message is handled again
    from the stored state, as without a cache. So the cache only skips reading and
    decoding state, and what a machine kept in memory from the session's earlier message
    (TO1's rendezvous answers ``ProveToRV`` from the registration ``HelloRV`` read, which a
    restored machine reads again); correctness never depends on it. An entry is taken out
    while a message uses it, so two concurrent requests never share one machine.
    """

    def __init__(self, size: int = 1024, *, max_state: int = 64 * 1024) -> None:
        self.size = size
        #: Machines whose saved state is larger (e.g. holding a big download) are not kept.
        self.max_state = max_state
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, LiveMachine] = OrderedDict()

    def pop(self, token: str) -> LiveMachine | None:
        """Take the entry of ``token`` out of the cache."""
        with self._lock:
            return self._entries.pop(token, None)

    def put(self, token: str, entry: LiveMachine) -> None:
        with self._lock:
            self._entries[token] = entry
            self._entries.move_to_end(token)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
