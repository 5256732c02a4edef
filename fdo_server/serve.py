"""Start a service under uvicorn (``fdo <service> serve``, ``python -m fdo_server.serve``).

With an admin listener (``admin_port``) the service listens on two sockets, the device
listener and the admin listener, both bound here before any worker starts and served
by every worker (uvicorn's ``Server.serve(sockets=...)`` and the multi-worker
supervisor take a list); the app tells the two apart (:mod:`fdo_server.planes`).
Without one, the single listener is bound as ``uvicorn.run`` binds it.

The server and the worker supervisor are :mod:`fdo_server.uvserver`'s (uvicorn's,
without their idle wake-ups).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from fdo_server import uvserver
from fdo_server.http_protocol import HTTP_PROTOCOL
from fdo_server.logs import uvicorn_log_config
from fdo_server.metrics import MULTIPROC_ENV

log = logging.getLogger("uvicorn.error")

#: uvicorn's exit status when the server could not start.
STARTUP_FAILURE = 3


class ServeError(Exception):
    """The service cannot listen as asked; the message is one line."""


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
    admin_host: str = "127.0.0.1",
    admin_port: int | None = None,
    workers: int = 1,
    log_level: str = "info",
    access_log: bool = True,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> None:
    """Run ``factory`` (``module:function`` returning an ASGI app) with uvicorn
    (:func:`fdo_server.uvserver.run`; exits with uvicorn's startup-failure status when
    it could not start).

    With several workers uvicorn imports the factory in each worker process; settings
    come from the environment (``FDO_<SERVICE>_...``), which the workers inherit. With
    ``tls_cert`` and ``tls_key`` (PEM files) the service serves HTTPS only, on every
    listener.

    With ``admin_port`` the admin plane gets a listener of its own on ``admin_host``;
    ``FDO_<SERVICE>_ADMIN_PORT`` (``<service>``: the factory's package) is set to it for
    the workers' settings, so their app serves each plane on its own listener. Raises
    :class:`ServeError` when a listener cannot be bound.

    With ``workers`` > 1 and no ``PROMETHEUS_MULTIPROC_DIR`` in the environment, a fresh
    private folder is made for it before the workers start (so ``/metrics`` adds up every
    worker) and removed when uvicorn returns; a folder the operator set is used as it is.

    uvicorn's own log lines, access lines included, are JSON like the services' own, with
    query strings cut off (:func:`fdo_server.logs.uvicorn_log_config`).

    uvicorn's proxy-header handling is off (it would believe ``X-Forwarded-For`` and
    ``X-Forwarded-Proto`` from any local peer): the services' ``trusted_proxies`` setting
    decides whom to believe (:mod:`fdo_server.proxies`, :mod:`fdo_server.ratelimit`).
    """
    service = factory.partition(".")[0].partition(":")[0]
    log_config = uvicorn_log_config(service)
    options: dict[str, Any] = {
        "factory": True,
        "workers": workers,
        "log_level": log_level,
        "access_log": access_log,
        "ssl_certfile": str(tls_cert) if tls_cert else None,
        "ssl_keyfile": str(tls_key) if tls_key else None,
        "http": HTTP_PROTOCOL,
        # The client's address and scheme are the connection's own; the services
        # believe forwarded headers only from their trusted proxies (fdo_server.proxies).
        "proxy_headers": False,
        "log_config": LOGGING_CONFIG if log_config is None else log_config,
    }
    if admin_port is not None and admin_port == port:
        raise ServeError(f"the admin port {admin_port} is the device port too; give it a port of its own")
    with _metrics_folder(workers):
        if admin_port is None:
            if not uvserver.run(uvicorn.Config(factory, host=host, port=port, **options)):
                sys.exit(STARTUP_FAILURE)
            return
        with _environ(f"FDO_{service.upper()}_ADMIN_PORT", str(admin_port)):
            _serve_split(factory, (host, port), (admin_host, admin_port), options)


def _serve_split(
    factory: str, device: tuple[str, int], admin: tuple[str, int], options: dict[str, Any]
) -> None:
    """Serve ``factory`` on a device and an admin listener (sockets bound here, shared by
    every worker)."""
    config = uvicorn.Config(factory, host=device[0], port=device[1], **options)
    sockets: list[socket.socket] = []
    try:
        for address in (device, admin):
            sockets.append(listen_socket(*address))
        scheme = "https" if config.is_ssl else "http"
        for plane, sock in zip(("device", "admin"), sockets, strict=True):
            bound_host, bound_port = sock.getsockname()[:2]
            log.info("serving the %s plane on %s://%s", plane, scheme, _address(bound_host, bound_port))
        if not uvserver.run(config, sockets):
            sys.exit(STARTUP_FAILURE)
    finally:
        for sock in sockets:
            sock.close()


def listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` (IPv6 when ``host`` has a colon), inheritable
    by worker processes (:class:`ServeError` if it cannot be bound)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {_address(host, port)}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@contextmanager
def _metrics_folder(workers: int) -> Iterator[None]:
    """A fresh private ``PROMETHEUS_MULTIPROC_DIR`` while several workers run, unless set."""
    made: str | None = None
    if workers > 1 and not os.environ.get(MULTIPROC_ENV):
        made = tempfile.mkdtemp(prefix="fdo-metrics-")  # mode 0700
        os.environ[MULTIPROC_ENV] = made
    try:
        yield
    finally:
        if made is not None:
            if os.environ.get(MULTIPROC_ENV) == made:
                del os.environ[MULTIPROC_ENV]
            shutil.rmtree(made, ignore_errors=True)


@contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    """``os.environ[name]`` is ``value`` inside (workers inherit it), as it was afterwards."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def main(argv: list[str] | None = None) -> None:
    """``python -m fdo_server.serve FACTORY --port N [--admin-port M] ...``: :func:`serve`
    from the command line (the test and benchmark launcher uses it)."""
    parser = argparse.ArgumentParser(prog="python -m fdo_server.serve", description=main.__doc__)
    parser.add_argument("factory", help="module:function returning the ASGI app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--admin-host", default="127.0.0.1")
    parser.add_argument("--admin-port", type=int)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--no-access-log", action="store_true")
    parser.add_argument("--tls-cert", type=Path)
    parser.add_argument("--tls-key", type=Path)
    args = parser.parse_args(argv)
    problem = check_tls_files(args.tls_cert, args.tls_key)
    if problem:
        parser.error(problem)
    try:
        serve(
            args.factory,
            host=args.host,
            port=args.port,
            admin_host=args.admin_host,
            admin_port=args.admin_port,
            workers=args.workers,
            log_level=args.log_level,
            access_log=not args.no_access_log,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
        )
    except ServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(STARTUP_FAILURE)


if __name__ == "__main__":
    main()
