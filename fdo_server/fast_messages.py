"""The FDO messages a service's HTTP protocol answers itself: :class:`FastMessages`.

Every FDO message on the device plane passes the same few steps in the app: the plane
split (an FDO message on the admin listener is answered 404), the edge guard (a first
message from an address over its rate, or outside its networks, is refused), the FDO fast
path and the :class:`~transport.server.FdoEndpoint`, whose handler runs the message on
the event loop (SQLite always, a networked database while messages are quick). The
protocol (:mod:`fdo_server.http_protocol`) can answer such a message from its parser's
callbacks instead of building an ASGI request for it; :class:`FastMessages` is what it
asks: whether it takes a message now (not one for the admin listener, not while the
endpoint hands messages to threads) and the answer, made by the same rules
(:class:`~fdo_server.ratelimit.EdgeRules`, shared with the app's guard so one address has
one bucket) and the same handler. The app factory hands it over
(:func:`fdo_server.http_protocol.configure_fast`, in :func:`fdo_server.service.app_from_env`).
"""

from __future__ import annotations

from collections.abc import Sequence

from fdo_server.ratelimit import EdgeRules
from transport.server import MSG_PATH, FdoEndpoint


class FastMessages:
    """The :class:`fdo_server.http_protocol.FastRoute` of one service app."""

    def __init__(self, endpoint: FdoEndpoint, rules: EdgeRules, admin_port: int | None = None) -> None:
        self.endpoint = endpoint
        self.rules = rules
        self.admin_port = admin_port

    @property
    def max_body(self) -> int:
        return self.endpoint.max_body

    def takes(self, msg_type: bytes, local_port: int | None) -> bool:
        if self.admin_port is not None and local_port == self.admin_port:
            return False  # the admin listener answers an FDO message 404 (PlaneSplit)
        return self.endpoint.inline_now()

    def answer(
        self,
        msg_type: str,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
        client: tuple[str, int] | None,
    ) -> tuple[int, Sequence[tuple[bytes, bytes]], bytes]:
        path = MSG_PATH + msg_type
        refused = self.rules.check({"method": "POST", "path": path, "client": client, "headers": headers})
        if refused is not None:
            return refused
        fields: dict[str, str] = {}
        for name, value in headers:
            fields.setdefault(name.decode("latin-1"), value.decode("latin-1"))
        response = self.endpoint.handle_inline(msg_type, fields, body)
        return response.status_code, response.raw_headers, response.body
