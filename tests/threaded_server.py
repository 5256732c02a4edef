"""A real uvicorn server in a thread of the test process, for tests of the HTTP layer."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn


@contextmanager
def serving(config: uvicorn.Config, *, timeout: float = 10.0) -> Iterator[uvicorn.Server]:
    """``config`` served in a thread, started (within ``timeout`` seconds) before it is
    yielded, stopped after."""
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        yield server
    finally:
        server.should_exit = True
        thread.join(10)
