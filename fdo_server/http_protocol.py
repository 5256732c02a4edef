"""uvicorn's HTTP protocol with each response leaving in one socket write.

uvicorn writes a response's status line and headers when the app sends
``http.response.start`` and the body when it sends ``http.response.body``: two
``send`` system calls for every FDO message, each of which may wake the client. On the
benchmark machine those writes were the largest single cost of the owner (47 % of its
Python samples, ``docs/benchmarks.md``). :class:`OneWriteHTTPProtocol` is uvicorn's
own protocol (httptools when installed, as uvicorn's ``auto`` picks) whose transport
gathers the writes made while one event-loop callback runs and sends them together
right after it, so a response goes out in one write. Nothing else changes: closing
sends what is gathered first, aborting drops it.

Used by ``fdo <service> serve`` and :class:`fdo_server.launcher.ServiceProcess`
(``uvicorn --http`` :data:`HTTP_PROTOCOL`).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
except ImportError:  # pragma: no cover - httptools comes with uvicorn[standard]
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Base  # type: ignore[assignment]

#: The ``--http`` value (``module:class``) that selects it.
HTTP_PROTOCOL = "fdo_server.http_protocol:OneWriteHTTPProtocol"


class GatheredWrites:
    """A transport that sends the writes of one loop callback in one ``write``."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def flush(self) -> None:
        """Send what is gathered (nothing once the transport is closing)."""
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return sum(map(len, self._pending)) + self._transport.get_write_buffer_size()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class OneWriteHTTPProtocol(_Base):
    """uvicorn's HTTP protocol over :class:`GatheredWrites`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        gathered = GatheredWrites(transport, asyncio.get_running_loop())
        super().connection_made(cast(asyncio.Transport, gathered))
