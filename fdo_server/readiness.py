"""The readiness check behind ``/ready`` of the three services.

:func:`readiness_probe` opens a fresh database connection per probe and answers within
:data:`READY_TIMEOUT` seconds: a reason while the database is unreachable or hangs, None
again once it is back, without a restart. The FastAPI app's routes are in
:mod:`fdo_server.probes`; a device-plane worker's in :mod:`fdo_server.device_app`. No web
framework here.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

from fdo_server.sql import parse_url

#: Seconds ``/ready`` waits for the database check before answering 503.
READY_TIMEOUT = 3.0


class _Check:
    """One run of a readiness check in a daemon thread (so a hung one never blocks exit)."""

    def __init__(self, check: Callable[[], str | None]) -> None:
        self.result: str | None = None
        self.finished = threading.Event()
        self._check = check
        threading.Thread(target=self._run, name="fdo-ready-check", daemon=True).start()

    def _run(self) -> None:
        try:
            self.result = self._check()
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            self.result = f"readiness check failed ({type(exc).__name__})"
        finally:
            self.finished.set()


class _WithDeadline:
    """``check`` with an answer within ``timeout`` seconds: a reason after that.

    At most one check runs at a time: callers that arrive while one is running wait
    for that one, so a database that hangs costs one stuck thread, not one per probe.
    """

    def __init__(self, check: Callable[[], str | None], timeout: float) -> None:
        self._check = check
        self._timeout = timeout
        self._lock = threading.Lock()
        self._running: _Check | None = None

    def __call__(self) -> str | None:
        with self._lock:
            run = self._running
            if run is None or run.finished.is_set():
                run = self._running = _Check(self._check)
        if not run.finished.wait(self._timeout):
            return f"database did not answer within {self._timeout:g} s"
        return run.result


def readiness_probe(url: str, *, timeout: float = READY_TIMEOUT) -> Callable[[], str | None]:
    """A check that opens a fresh connection to ``url`` and runs ``SELECT 1``.

    Returns None when reachable, else a reason. A fresh connection each time (no pool),
    and for SQLite a read-write open that never creates a missing file, so a database
    that went away is noticed and one that came back is used again, without a restart.
    The answer comes within ``timeout`` seconds (PostgreSQL also gets a libpq
    ``connect_timeout``), so a database that hangs makes the service not ready rather
    than making ``/ready`` hang.
    """
    target = parse_url(url)
    if target.memory:  # in this process: always there
        return lambda: None
    if target.dialect == "sqlite":
        database = target.database if target.uri else f"file:{target.database}?mode=rw"

        def connect() -> Any:
            import sqlite3  # here: a worker on PostgreSQL never loads it

            return sqlite3.connect(database, uri=True, timeout=timeout)

        query = "SELECT 1 FROM sqlite_master LIMIT 1"
    else:

        def connect() -> Any:
            import psycopg

            # libpq: whole seconds, >= 2
            return psycopg.connect(target.database, connect_timeout=max(2, math.ceil(timeout)))

        query = "SELECT 1"

    def check() -> str | None:
        try:
            raw = connect()
            try:
                raw.execute(query).fetchall()
            finally:
                raw.close()
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            return f"database unreachable ({type(exc).__name__})"
        return None

    return _WithDeadline(check, timeout)
