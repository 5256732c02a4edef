"""Start a service under uvicorn (``fdo <service> serve``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from fdo_server.http_protocol import HTTP_PROTOCOL
from fdo_server.logs import uvicorn_log_config
from fdo_server.metrics import MULTIPROC_ENV


def check_tls_files(cert: Path | None, key: Path | None) -> str | None:
    """An error message if the TLS certificate/key pair is incomplete or unreadable, else None."""
    if (cert is None) != (key is None):
        return "--tls-cert and --tls-key must be given together"
    for what, path in (("--tls-cert", cert), ("--tls-key", key)):
        if path is not None and not path.is_file():
            return f"{what}: {path}: no such file"
    return None


def serve(
    factory: str,
    *,
    host: str,
    port: int,
    workers: int = 1,
    log_level: str = "info",
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> None:
    """Run ``factory`` (``module:function`` returning a FastAPI app) with uvicorn.

    With several workers uvicorn imports the factory in each worker process; settings
    come from the environment (``FDO_<SERVICE>_...``), which the workers inherit. With
    ``tls_cert`` and ``tls_key`` (PEM files) the service serves HTTPS only.

    With ``workers`` > 1 and no ``PROMETHEUS_MULTIPROC_DIR`` in the environment, a fresh
    private folder is made for it before the workers start (so ``/metrics`` adds up every
    worker) and removed when uvicorn returns; a folder the operator set is used as it is.

    uvicorn's own log lines, access lines included, are JSON like the services' own, with
    query strings cut off (:func:`fdo_server.logs.uvicorn_log_config`).

    uvicorn's proxy-header handling is off (it believes ``X-Forwarded-For`` from
    127.0.0.1 by default): the services' ``trusted_proxies`` setting decides whom to
    believe (:mod:`fdo_server.ratelimit`).
    """
    log_config = uvicorn_log_config(factory.partition(".")[0])
    made: str | None = None
    if workers > 1 and not os.environ.get(MULTIPROC_ENV):
        made = tempfile.mkdtemp(prefix="fdo-metrics-")  # mode 0700
        os.environ[MULTIPROC_ENV] = made
    try:
        uvicorn.run(
            factory,
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
            ssl_certfile=str(tls_cert) if tls_cert else None,
            ssl_keyfile=str(tls_key) if tls_key else None,
            http=HTTP_PROTOCOL,
            proxy_headers=False,
            log_config=LOGGING_CONFIG if log_config is None else log_config,
        )
    finally:
        if made is not None:
            if os.environ.get(MULTIPROC_ENV) == made:
                del os.environ[MULTIPROC_ENV]
            shutil.rmtree(made, ignore_errors=True)
