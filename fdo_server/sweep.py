"""Expired protocol sessions are deleted by the service itself.

A session a device abandoned (or a stranger opened and never continued) stays in
``fdo_session`` past its ``expires_at``; nothing reads it again
(:meth:`fdo_server.sessions.SQLSessionStore.load` treats it as gone). Two ways remove it:

* :func:`sweep_expired`, in batches of :data:`BATCH` rows, each its own short
  transaction, so a large backlog never holds the table locked for long
  (``fdo <service> sessions sweep`` runs it once);
* :class:`SessionSweeper`, started by each app (:func:`fdo_server.service.service_app`):
  it runs :func:`sweep_expired` in a thread when a session it knows of has expired, at
  most once every ``session_sweep_seconds``, and counts the rows in
  ``fdo_sessions_swept_total``. It knows the earliest expiry in the table (read when it
  starts and after each sweep) and of each session this process creates
  (:meth:`SessionSweeper.notice`, called by :class:`fdo_server.sessions.SQLSessionStore`);
  with no session at all it sleeps with no timer until one is created here. A session
  another process created and left behind is swept by that process, or by any process
  whose sweep runs or that starts after it.

Several workers or replicas sweeping at once is harmless: each batch deletes rows that
are expired whoever deletes them, and on PostgreSQL a batch skips rows another one has
locked (``FOR UPDATE SKIP LOCKED``) instead of waiting for it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from fdo_server.metrics import ServiceMetrics
from fdo_server.sql import Database, Sql, message_scope

log = logging.getLogger(__name__)

#: Rows deleted per transaction.
BATCH = 1000

_SWEEP = Sql(
    "DELETE FROM fdo_session WHERE token IN "
    "(SELECT token FROM fdo_session WHERE expires_at <= :now LIMIT :batch FOR UPDATE SKIP LOCKED)",
    sqlite="DELETE FROM fdo_session WHERE token IN "
    "(SELECT token FROM fdo_session WHERE expires_at <= :now LIMIT :batch)",  # SQLite has no row locks
)
_EARLIEST = Sql("SELECT min(expires_at) AS earliest FROM fdo_session", datetimes=("earliest",))


def sweep_expired(
    database: Database, now: datetime, *, batch: int = BATCH, keep_going: Callable[[], bool] = lambda: True
) -> int:
    """Delete the sessions expired at ``now`` (as the store counts them), ``batch`` rows per transaction,
    until none is left (or ``keep_going`` says stop); returns how many were deleted."""
    total = 0
    while True:
        with message_scope(database):
            deleted = _SWEEP.rowcount({"now": now, "batch": batch})
        total += deleted
        if deleted < batch or not keep_going():
            return total


def earliest_expiry(database: Database) -> datetime | None:
    """When the first session in the table expires (None: no session)."""
    with message_scope(database):
        found = _EARLIEST.scalar({})
    return None if found is None else _aware(found)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


#: ``wait(event, timeout)``: True once ``event`` is set, False after ``timeout`` seconds
#: (None: no timeout).
Waiter = Callable[[asyncio.Event, float | None], Awaitable[bool]]


async def _wait(event: asyncio.Event, timeout: float | None) -> bool:
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        return False
    return True


class SessionSweeper:
    """:func:`sweep_expired` when a session has expired, at most every ``interval``
    seconds, while the app runs (an asyncio task; ``interval`` 0: never).

    ``async with`` starts it and, on leaving, stops it after the batch in progress.
    """

    def __init__(
        self,
        database: Database,
        metrics: ServiceMetrics,
        interval: float,
        clock: Callable[[], datetime],
        *,
        wait: Waiter = _wait,
    ) -> None:
        self.database = database
        self.metrics = metrics
        self.interval = interval
        self.clock = clock
        self._wait = wait
        self._lock = threading.Lock()
        #: The earliest expiry known (None: no session known).
        self._due: datetime | None = None
        #: The earliest expiry noticed since the running sweep began (None: none).
        self._fresh: datetime | None = None
        self._last: datetime | None = None
        self._stopping = False
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SessionSweeper:
        if self.interval > 0:
            self._stopping = False
            self._loop = asyncio.get_running_loop()
            self._wake = asyncio.Event()
            self._task = asyncio.create_task(self._run(), name="fdo-session-sweep")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopping = True
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        self._loop = self._wake = None

    def notice(self, expires_at: datetime) -> None:
        """A session that expires at ``expires_at`` was made (from any thread): the
        sweeper wakes when that is earlier than anything it knew of."""
        with self._lock:
            if self._fresh is None or expires_at < self._fresh:
                self._fresh = expires_at
            if self._due is not None and self._due <= expires_at:
                return
            self._due = expires_at
            loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            loop.call_soon_threadsafe(wake.set)

    def delay(self, now: datetime) -> float | None:
        """Seconds until the next sweep is due (None: no session is known)."""
        with self._lock:
            due = self._due
        if due is None:
            return None
        if self._last is not None:
            due = max(due, self._last + timedelta(seconds=self.interval))
        return max(0.0, (due - now).total_seconds())

    async def _run(self) -> None:
        assert self._wake is not None  # noqa: S101 - set by __aenter__
        try:
            found = await asyncio.to_thread(earliest_expiry, self.database)
        except Exception:  # noqa: BLE001 - swept after the first session made here
            log.warning("could not read the sessions' earliest expiry; sweeping when one is made")
        else:
            self._merge(found)
        while not self._stopping:
            self._wake.clear()
            delay = self.delay(self.clock())
            if delay is None or delay > 0:
                await self._wait(self._wake, delay)
                continue
            await self.sweep_once()

    def _merge(self, found: datetime | None) -> None:
        with self._lock:
            fresh, self._fresh = self._fresh, None
            candidates = [at for at in (found, fresh) if at is not None]
            self._due = min(candidates) if candidates else None

    async def sweep_once(self) -> int:
        """One sweep (in a thread), then the earliest expiry left; a database that fails
        is logged and tried again ``interval`` seconds later."""
        now = self.clock()
        self._last = now
        with self._lock:
            self._fresh = None

        def sweep() -> tuple[int, datetime | None]:
            deleted = sweep_expired(self.database, now, keep_going=lambda: not self._stopping)
            return deleted, earliest_expiry(self.database)

        try:
            deleted, found = await asyncio.to_thread(sweep)
        except Exception as exc:  # noqa: BLE001 - the next sweep tries again
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0] if str(exc) else ""
            log.warning("session sweep failed (%s: %s); trying again later", type(exc).__name__, reason)
            return 0
        self._merge(found)
        if deleted:
            self.metrics.swept.labels(self.metrics.service).inc(deleted)
            log.info("deleted %d expired protocol session(s)", deleted)
        return deleted
