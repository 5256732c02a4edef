"""The device plane and the admin plane of a service, on one listener or on two.

Every service answers two kinds of client:

* the **device plane**: the FDO messages (``/fdo/101/msg/<type>``) and, on the owner,
  the device check-in routes (``/device/v1/checkin``, ``/device/v1/report`` and the
  deprecated ``/api/v1/report``), which devices reach over the network;
* the **admin plane**: the admin API (``/api/v1/...``), the owner's status page
  (``/ui``), the API documentation (``/docs``, ``/redoc``, their files under
  ``/docs/assets/``, ``/openapi.json``: :mod:`fdo_server.api_docs`) and
  ``/metrics``, which only operators and their tools need.

``/health`` and ``/ready`` belong to both, so probes and load balancers can ask either.

With an admin listener (``FDO_<SERVICE>_ADMIN_PORT``), ``serve`` listens on two sockets
and uvicorn hands every connection of both to one app: :class:`PlaneSplit`, in front
of the service's FastAPI app, tells them apart by the local port the connection came
in on (``scope["server"]``) and answers 404 for a route of the other plane, exactly as
for a route that does not exist. The FDO hot path pays one more coroutine call, a port
and a prefix comparison per message (about 1 µs in a micro-benchmark, against about
0.6 ms of HTTP layer per message, ``docs/benchmarks.md``). Without an admin listener
the FastAPI app is served as it is, both planes on one port.

Which routes are the device plane is declared where they are added: the FDO routes by
their prefix, the others with :func:`include_device_router`.

With an admin listener and ``admin_process`` (``FDO_<SERVICE>_ADMIN_PROCESS``) ``serve``
also runs the two planes in different processes: the device listener's workers with
:data:`PLANE_ENV` ``device``, the admin listener in one process of its own with
``admin``. A device-plane worker builds only what devices reach (:func:`serves_admin`
is false): the services add their admin routers, the API documentation and
``/metrics`` only where it is true, and import them only there, so the admin stack
(admin routers and their schemas, templates, the API documentation) never loads in a
worker that serves devices; such a worker serves the device plane without FastAPI at all
(:class:`fdo_server.device_app.DeviceApp`, ``tests/test_import_isolation.py``). Every process still
answers through :class:`PlaneSplit`, so each listener answers exactly as when every
worker served both.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # this module is light: serve's supervisor imports it for PLANE_ENV
    from fastapi import APIRouter, FastAPI

    from fdo_server.device_app import DeviceApp
    from transport.server import ASGIApp, Receive, Scope, Send

#: Every FDO message path starts with it (``/fdo/101/msg/<type>``).
FDO_PREFIX = "/fdo/"
#: Liveness and readiness: answered on both listeners.
PROBES = frozenset({"/health", "/ready"})
#: ``app.state`` attribute holding the device-plane paths other than FDO messages.
DEVICE_PATHS = "device_paths"
#: Which plane this process serves: ``device``, ``admin``, or unset (both; set by ``serve``).
PLANE_ENV = "FDO_SERVE_PLANE"
PLANES = ("device", "admin")


def serving_plane() -> str | None:
    """The plane this process serves (``device`` or ``admin``), or None for both."""
    plane = os.environ.get(PLANE_ENV) or None
    if plane is not None and plane not in PLANES:
        raise ValueError(f"{PLANE_ENV}={plane!r}: expected one of {', '.join(PLANES)}")
    return plane


def serves_admin() -> bool:
    """Whether this process builds the admin plane (admin routers, docs, ``/metrics``)."""
    return serving_plane() != "device"


def include_device_router(app: FastAPI, router: APIRouter, *, prefix: str = "") -> None:
    """Add ``router`` to ``app`` under ``prefix`` as part of the device plane.

    Its routes must have fixed paths (no ``{parameter}``): the device listener matches
    them exactly.
    """
    paths = {prefix + getattr(route, "path", "") for route in router.routes}
    fixed = {path for path in paths if "{" not in path and path != prefix}
    if fixed != paths:
        raise ValueError(f"device routes need fixed paths: {sorted(paths - fixed)}")
    app.include_router(router, prefix=prefix)
    device_paths(app).update(paths)


def device_paths(app: FastAPI | DeviceApp) -> set[str]:
    """The device-plane paths of ``app`` besides the FDO messages (made empty on first use)."""
    paths: set[str] | None = getattr(app.state, DEVICE_PATHS, None)
    if paths is None:
        paths = set()
        setattr(app.state, DEVICE_PATHS, paths)
    return paths


class PlaneSplit:
    """ASGI app serving ``app``'s admin plane on connections to ``admin_port`` and its
    device plane on every other connection; each listener answers 404 for the other
    plane's routes, both answer :data:`PROBES`. Lifespan events go to ``app``."""

    def __init__(self, app: FastAPI | DeviceApp, admin_port: int) -> None:
        self.app: ASGIApp = app
        self.admin_port = admin_port
        self.device = frozenset(device_paths(app))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        server = scope.get("server")
        on_admin = server is not None and server[1] == self.admin_port
        device = path.startswith(FDO_PREFIX) or path in self.device
        if device is not on_admin or path in PROBES:
            await self.app(scope, receive, send)
        elif kind == "http":
            from fdo_server.device_app import send_json

            await send_json(send, 404, {"detail": "Not Found"})
        else:  # a websocket: refused before it is accepted (HTTP 403)
            await send({"type": "websocket.close", "code": 1008})
