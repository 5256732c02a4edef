"""Expired protocol sessions are deleted by the service itself.

A session a device abandoned (or a stranger opened and never continued) stays in
``fdo_session`` past its ``expires_at``; nothing reads it again
(:meth:`fdo_server.sessions.SQLSessionStore.load` treats it as gone). Two ways remove it:

* :func:`sweep_expired`, in batches of :data:`BATCH` rows, each its own short
  transaction, so a large backlog never holds the table locked for long
  (``fdo <service> sessions sweep`` runs it once);
* :class:`SessionSweeper`, started by each app (:func:`fdo_server.service.service_app`):
  every ``session_sweep_seconds`` (give or take a tenth, so workers drift apart) it runs
  :func:`sweep_expired` in a thread and counts the rows in ``fdo_sessions_swept_total``.

Several workers or replicas sweeping at once is harmless: each batch deletes rows that
are expired whoever deletes them, and on PostgreSQL a batch skips rows another one has
locked (``FOR UPDATE SKIP LOCKED``) instead of waiting for it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.engine import Engine

from fdo_server.metrics import ServiceMetrics
from fdo_server.sessions import FdoSession

log = logging.getLogger(__name__)

#: Rows deleted per transaction.
BATCH = 1000

_TABLE = FdoSession.__table__  # type: ignore[attr-defined]
_C = _TABLE.c


def sweep_expired(
    engine: Engine, now: datetime, *, batch: int = BATCH, keep_going: Callable[[], bool] = lambda: True
) -> int:
    """Delete the sessions that expired before ``now``, ``batch`` rows per transaction,
    until none is left (or ``keep_going`` says stop); returns how many were deleted."""
    doomed = select(_C.token).where(_C.expires_at < now).limit(batch)
    doomed = doomed.with_for_update(skip_locked=True)  # PostgreSQL; SQLite has no row locks
    statement = delete(_TABLE).where(_C.token.in_(doomed.scalar_subquery()))
    total = 0
    while True:
        with engine.begin() as conn:
            deleted = int(conn.execute(statement).rowcount)
        total += deleted
        if deleted < batch or not keep_going():
            return total


class SessionSweeper:
    """:func:`sweep_expired` every ``interval`` seconds while the app runs (an asyncio task).

    ``async with`` starts it and, on leaving, stops it after the batch in progress.
    """

    def __init__(
        self,
        engine: Engine,
        metrics: ServiceMetrics,
        interval: float,
        clock: Callable[[], datetime],
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.interval = interval
        self.clock = clock
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SessionSweeper:
        if self.interval > 0:
            self._task = asyncio.create_task(self._run(), name="fdo-session-sweep")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while True:
            delay = self.interval * random.uniform(0.9, 1.1)  # noqa: S311 - spreading, not secrecy
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
                return
            except TimeoutError:
                pass
            await self.sweep_once()

    async def sweep_once(self) -> int:
        """One sweep (in a thread); a database that fails is logged and tried next time."""
        try:
            deleted = await asyncio.to_thread(
                sweep_expired, self.engine, self.clock(), keep_going=lambda: not self._stop.is_set()
            )
        except Exception as exc:  # noqa: BLE001 - the next sweep tries again
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0] if str(exc) else ""
            log.warning("session sweep failed (%s: %s); trying again later", type(exc).__name__, reason)
            return 0
        if deleted:
            self.metrics.swept.labels(self.metrics.service).inc(deleted)
            log.info("deleted %d expired protocol session(s)", deleted)
        return deleted
