"""uvicorn without its idle wake-ups: a server whose main loop waits, and a worker
supervisor that waits.

uvicorn's :class:`uvicorn.Server` wakes every 0.1 s while idle (``main_loop`` sleeps
0.1 s and then ticks: refreshes the ``Date`` header, checks ``should_exit`` and the
request limit), and its multi-worker supervisor wakes every 0.5 s to ping every worker
over a pipe (which wakes a thread in each worker too). Idle, that is most of a
service's CPU (``docs/benchmarks.md``, "Issue 15: idle CPU"). Here:

* :class:`IdleServer` is uvicorn's server whose main loop waits on an event set by
  whatever ends it: ``should_exit`` becoming true (a signal handler, or code), or the
  request count reaching ``limit_max_requests``. The ``Date`` header is computed when a
  response is built, at most once per second (:class:`_DatedState`), so it is right
  without a timer. Startup, graceful shutdown (``timeout_graceful_shutdown``, a second
  Ctrl+C forcing it) and the signals handled (SIGINT, SIGTERM) are uvicorn's.
* :class:`Supervisor` runs ``config.workers`` :class:`IdleServer` processes on shared
  sockets (uvicorn's spawn start) and sleeps until a worker exits or a signal arrives:
  a worker that dies is started again (not sooner than :data:`RESTART_SPACING` after
  its predecessor started, so a worker that crashes at once does not spin); one that
  exits with uvicorn's startup-failure status stops the service, as uvicorn does;
  SIGINT/SIGTERM stop every worker and wait for them; SIGHUP replaces the workers one
  by one; SIGTTIN/SIGTTOU add or remove one. What it does not do is uvicorn's periodic
  health ping: a worker that hangs without exiting is not replaced (that needs polling;
  an orchestrator's ``/health`` probe sees it).

:func:`run` is what :mod:`fdo_server.serve` calls. Every wait is given to an injectable
``wait`` (tests record the timeouts: none while idle).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from email.utils import formatdate
from multiprocessing.connection import wait as wait_ready
from multiprocessing.context import SpawnProcess
from typing import Any

from uvicorn import Config, Server
from uvicorn._subprocess import get_subprocess
from uvicorn.config import STARTUP_FAILURE
from uvicorn.server import ServerState

log = logging.getLogger("uvicorn.error")

#: Seconds between two starts of one worker slot (a worker that dies at once waits).
RESTART_SPACING = 1.0

#: ``wait(objects, timeout)``: which of ``objects`` (file descriptors, process sentinels)
#: are ready, blocking at most ``timeout`` seconds (None: until one is).
Waiter = Callable[[Sequence[Any], float | None], list[Any]]


class _DatedState(ServerState):
    """uvicorn's shared server state whose ``default_headers`` carry a ``Date`` that is
    computed when read (once per second at most), and whose request count ends the
    server at its limit."""

    def __init__(self, config: Config, on_limit: Callable[[], None], limit: int | None) -> None:
        self._config = config
        self._second = -1
        self._headers: list[tuple[bytes, bytes]] = []
        self._count = 0
        self._limit = limit
        self._on_limit = on_limit
        super().__init__()

    @property
    def default_headers(self) -> list[tuple[bytes, bytes]]:
        extra: list[tuple[bytes, bytes]] = getattr(self._config, "encoded_headers", [])  # set by load()
        if not self._config.date_header:
            return extra
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._headers = [(b"date", formatdate(now, usegmt=True).encode()), *extra]
        return self._headers

    @default_headers.setter
    def default_headers(self, value: list[tuple[bytes, bytes]]) -> None:
        """Set by uvicorn's ``ServerState.__init__`` only (to an empty list)."""

    @property
    def total_requests(self) -> int:
        return self._count

    @total_requests.setter
    def total_requests(self, value: int) -> None:
        self._count = value
        if self._limit is not None and value >= self._limit:
            self._on_limit()


class IdleServer(Server):
    """uvicorn's :class:`~uvicorn.Server` whose main loop sleeps until it must end."""

    def __init__(self, config: Config) -> None:
        self._exit_event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exiting = False
        self.limit_reached = False
        super().__init__(config)
        self.server_state = _DatedState(config, self._limit_reached, self.limit_max_requests)

    @property
    def should_exit(self) -> bool:
        return self._exiting

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._exiting = value
        if value:
            self._wake()

    def _limit_reached(self) -> None:
        if not self.limit_reached:
            self.limit_reached = True
            log.info("Maximum request limit of %d exceeded. Terminating process.", self.limit_max_requests)
            self._wake()

    def _wake(self) -> None:
        loop, event = self._loop, self._exit_event
        if loop is not None and event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(event.set)

    async def main_loop(self) -> None:
        if self.config.callback_notify is not None:  # gunicorn's worker: it needs the ticks
            await super().main_loop()
            return
        self._loop = asyncio.get_running_loop()
        self._exit_event = asyncio.Event()
        with _signals_wake(self._loop):
            while not (self.should_exit or self.limit_reached):
                await self._exit_event.wait()
                self._exit_event.clear()

    async def on_tick(self, counter: int) -> bool:
        """uvicorn's tick (used only under ``callback_notify``) without the header refresh."""
        if counter % 10 == 0 and self.config.callback_notify is not None:
            now = time.time()
            if now - self.last_notified > self.config.timeout_notify:  # pragma: no cover - gunicorn
                self.last_notified = now
                await self.config.callback_notify()
        return self.should_exit or self.limit_reached


@contextlib.contextmanager
def _signals_wake(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """Make a signal wake ``loop`` even when another thread of the process takes it: a
    wake-up file descriptor the loop reads, unless the loop set one already (uvloop)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    if previous != -1:  # the loop's own (uvloop): it wakes already
        signal.set_wakeup_fd(previous)
        reader.close()
        writer.close()
        yield
        return
    loop.add_reader(reader.fileno(), _drain, reader)
    try:
        yield
    finally:
        signal.set_wakeup_fd(-1)
        loop.remove_reader(reader.fileno())
        reader.close()
        writer.close()


def _drain(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while sock.recv(512):
            pass


# ---------------------------------------------------------------------------- workers


def serve_worker(config: Config, sockets: list[socket.socket] | None = None) -> None:
    """A worker process's body: :class:`IdleServer` on the inherited ``sockets``."""
    IdleServer(config).run(sockets=sockets)


#: Signals the supervisor handles (uvicorn's multi-worker supervisor handles these too).
SUPERVISOR_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU)


class _Worker:
    def __init__(self, config: Config, sockets: list[socket.socket]) -> None:
        self.process: SpawnProcess = get_subprocess(config, functools.partial(serve_worker, config), sockets)
        self.process.start()
        self.started = time.monotonic()

    @property
    def sentinel(self) -> int:
        return int(self.process.sentinel)

    def terminate(self) -> None:
        if self.process.exitcode is None and self.process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)

    def join(self) -> None:
        self.process.join()


class Supervisor:
    """``config.workers`` worker processes on ``sockets``; sleeps until one exits or a
    signal comes (see the module's docstring)."""

    def __init__(
        self,
        config: Config,
        sockets: list[socket.socket],
        *,
        wait: Waiter = wait_ready,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.sockets = sockets
        self.count = config.workers
        self.workers: list[_Worker | None] = []
        #: Monotonic time each empty slot may start a worker again.
        self.restart_at: dict[int, float] = {}
        self.failed = False
        self._wait = wait
        self._clock = clock
        self._signals: list[int] = []
        self._exiting = False

    def run(self) -> None:
        """Run until SIGINT/SIGTERM (or a worker's startup failure: :attr:`failed`)."""
        log.info("Started parent process [%d]", os.getpid())
        reader, writer = os.pipe()
        os.set_blocking(reader, False)
        os.set_blocking(writer, False)
        previous_fd = signal.set_wakeup_fd(writer, warn_on_full_buffer=False)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in SUPERVISOR_SIGNALS}
        try:
            self.workers = [self._start() for _ in range(self.count)]
            while not self._exiting:
                self._wait([reader, *self._sentinels()], self._timeout())
                with contextlib.suppress(OSError):
                    while os.read(reader, 512):
                        pass
                self._handle_signals()
                self._reap()
        finally:
            for worker in self.workers:
                if worker is not None:
                    worker.terminate()
            for worker in self.workers:
                if worker is not None:
                    worker.join()
            signal.set_wakeup_fd(previous_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(reader)
            os.close(writer)
            log.info("Stopping parent process [%d]", os.getpid())

    def _start(self) -> _Worker:
        return _Worker(self.config, self.sockets)

    def _sentinels(self) -> list[int]:
        return [w.sentinel for w in self.workers if w is not None]

    def _timeout(self) -> float | None:
        """None (wait for an exit or a signal) unless a slot waits to start a worker."""
        if not self.restart_at:
            return None
        return max(0.0, min(self.restart_at.values()) - self._clock())

    def _on_signal(self, sig: int, _frame: object) -> None:
        self._signals.append(sig)

    def _handle_signals(self) -> None:
        while self._signals:
            sig = self._signals.pop(0)
            if sig in (signal.SIGINT, signal.SIGTERM):
                log.info("Received %s, exiting.", signal.Signals(sig).name)
                self._exiting = True
            elif sig == signal.SIGHUP:
                log.info("Received SIGHUP, restarting processes.")
                self._replace_all()
            elif sig == signal.SIGTTIN:
                log.info("Received SIGTTIN, increasing the number of processes.")
                self.count += 1
                self.workers.append(self._start())
            elif sig == signal.SIGTTOU:
                self._remove_one()

    def _replace_all(self) -> None:
        for index, old in enumerate(self.workers):
            if old is None or self._exiting:
                continue
            self.workers[index] = self._start()
            old.terminate()
            old.join()

    def _remove_one(self) -> None:
        if self.count <= 1:
            log.info("Already reached one process, cannot decrease the number of processes anymore.")
            return
        log.info("Received SIGTTOU, decreasing number of processes.")
        self.count -= 1
        worker = self.workers.pop()
        self.restart_at.pop(len(self.workers), None)
        if worker is not None:
            worker.terminate()
            worker.join()

    def _reap(self) -> None:
        """Collect workers that exited; start the ones whose slot is due again."""
        if self._exiting:
            return
        now = self._clock()
        for index, worker in enumerate(self.workers):
            if worker is not None and worker.process.exitcode is not None:
                worker.join()
                if worker.process.exitcode == STARTUP_FAILURE:
                    pid = worker.process.pid
                    log.error("Child process [%s] failed to start, stopping the parent process.", pid)
                    self.failed = self._exiting = True
                    return
                log.info("Child process [%s] died", worker.process.pid)
                self.workers[index] = None
                self.restart_at[index] = worker.started + RESTART_SPACING
        for index, due in list(self.restart_at.items()):
            if due <= now:
                del self.restart_at[index]
                self.workers[index] = self._start()


def run(config: Config, sockets: list[socket.socket] | None = None) -> bool:
    """Serve ``config`` as ``uvicorn.run`` would (one process, or ``config.workers``
    under :class:`Supervisor`), on ``sockets`` when given (else it binds
    ``config.host``:``config.port``). False when the server did not start."""
    if config.workers > 1:
        if not sockets:
            sockets = [config.bind_socket()]
        supervisor = Supervisor(config, sockets)
        with contextlib.suppress(KeyboardInterrupt):
            supervisor.run()
        return not supervisor.failed
    server = IdleServer(config)
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=sockets)
    return server.started
