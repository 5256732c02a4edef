"""``/health``, ``/ready`` and ``/metrics`` of the three services.

``/health`` answers 200 while the process serves. ``/ready`` runs the readiness check
(:mod:`fdo_server.readiness`): 503 while the database is unreachable or hangs (or the
service's keys are not loaded), 200 again once it is back, without a restart.
``/metrics`` is the Prometheus exposition of :class:`fdo_server.metrics.ServiceMetrics`
(every worker's, with several workers), on the admin plane only (:mod:`fdo_server.planes`).
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse

from fdo_server.metrics import ServiceMetrics
from fdo_server.readiness import READY_TIMEOUT, readiness_probe

__all__ = ["READY_TIMEOUT", "install", "readiness_probe"]


def install(
    app: FastAPI,
    metrics: ServiceMetrics,
    *,
    database_url: str,
    keys_loaded: Callable[[], bool] = lambda: True,
    exposition: bool = True,
) -> None:
    """Add ``/health``, ``/ready`` and (``exposition``) ``/metrics`` to ``app``."""
    probe = readiness_probe(database_url)

    @app.get("/health", include_in_schema=False)
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", include_in_schema=False)
    def ready() -> Response:
        reason = probe()
        if reason is None and not keys_loaded():
            reason = "keys not loaded"
        if reason is not None:
            return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
        return JSONResponse({"status": "ready"})

    if not exposition:
        return
    from prometheus_client.exposition import CONTENT_TYPE_LATEST

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
