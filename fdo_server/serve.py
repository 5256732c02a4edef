"""Start a service under uvicorn (``fdo <service> serve``, ``python -m fdo_server.serve``).

With an admin listener (``admin_port``) the service listens on two sockets, the device
listener and the admin listener, both bound here before any worker starts and served
by every worker (uvicorn's ``Server.serve(sockets=...)`` and the multi-worker
supervisor take a list); the app tells the two apart (:mod:`fdo_server.planes`). With
``admin_process`` too, the workers serve the device listener only and one process of
its own the admin listener; each builds only its plane's app, so the admin stack never
loads in a worker that serves devices (one more process: ``docs/benchmarks.md``).
Without an admin listener, the single listener is bound as ``uvicorn.run`` binds it.

The server and the worker supervisor are :mod:`fdo_server.uvserver`'s (uvicorn's,
without their idle wake-ups).
"""

from __future__ import annotations

import argparse
import functools
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from fdo_server import uvserver
from fdo_server.handed import HANDED_ENV
from fdo_server.http_protocol import HTTP_PROTOCOL
from fdo_server.logs import uvicorn_log_config
from fdo_server.planes import PLANE_ENV

#: prometheus_client's multiprocess folder (:data:`fdo_server.metrics.MULTIPROC_ENV`),
#: named here so that the supervisor never imports the metrics and web stack.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

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
    admin_process: bool = False,
    workers: int = 1,
    log_level: str = "info",
    access_log: bool = True,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    handed: str | None = None,
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

    With ``admin_process`` (needs ``admin_port``) the admin listener is served by one
    more process of its own, the workers serve the device listener only
    (:func:`_serve_split`), with ``handed`` (the validated settings,
    :func:`fdo_server.handed.hand_over`) instead of reading their settings again.

    With several processes and no ``PROMETHEUS_MULTIPROC_DIR`` in the environment, a fresh
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
    if admin_process and admin_port is None:
        raise ServeError("an admin process serves the admin listener: give it an admin port")
    with _metrics_folder(workers + 1 if admin_process else workers):
        if admin_port is None:
            if not uvserver.run(uvicorn.Config(factory, host=host, port=port, **options)):
                sys.exit(STARTUP_FAILURE)
            return
        with _environ(f"FDO_{service.upper()}_ADMIN_PORT", str(admin_port)):
            _serve_split(factory, (host, port), (admin_host, admin_port), options, admin_process, handed)


def _serve_split(
    factory: str,
    device: tuple[str, int],
    admin: tuple[str, int],
    options: dict[str, Any],
    admin_process: bool = False,
    handed: str | None = None,
) -> None:
    """Serve ``factory`` on a device and an admin listener (sockets bound here, shared by
    every worker). With ``admin_process``: the device listener by the workers
    (:data:`~fdo_server.planes.PLANE_ENV` ``device``), the admin listener by a process
    of its own (``admin``, :class:`_AdminPlane`), the device workers with ``handed`` in
    :data:`~fdo_server.handed.HANDED_ENV`."""
    config = uvicorn.Config(factory, host=device[0], port=device[1], **options)
    sockets: list[socket.socket] = []
    try:
        for address in (device, admin):
            sockets.append(listen_socket(*address))
        scheme = "https" if config.is_ssl else "http"
        for plane, sock in zip(("device", "admin"), sockets, strict=True):
            bound_host, bound_port = sock.getsockname()[:2]
            log.info("serving the %s plane on %s://%s", plane, scheme, _address(bound_host, bound_port))
        if not admin_process:
            _run_workers(config, sockets)
            return
        admin_config = uvicorn.Config(factory, host=admin[0], port=admin[1], **{**options, "workers": 1})
        with (
            _AdminPlane(admin_config, sockets[1]),
            _environ(PLANE_ENV, "device"),
            _environ(HANDED_ENV, handed) if handed else nullcontext(),
        ):
            _run_workers(config, sockets[:1])
    finally:
        for sock in sockets:
            sock.close()


def _run_workers(config: uvicorn.Config, sockets: list[socket.socket]) -> None:
    """The server on ``sockets``: in this process, or in ``config.workers`` workers."""
    if not uvserver.run(config, sockets):
        sys.exit(STARTUP_FAILURE)


def _run_plane(plane: str, run: Callable[..., None], sockets: list[socket.socket]) -> None:
    """In a server process: build the app of ``plane`` only, then serve ``sockets``; stop
    (as on SIGTERM) when the process that started this one is gone, however it ended."""
    os.environ[PLANE_ENV] = plane
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_stop_with, args=(parent.sentinel,), name="parent-watch", daemon=True).start()
    run(sockets=sockets)


def _stop_with(sentinel: int) -> None:
    """SIGTERM this process once ``sentinel`` (the parent's) is ready: the parent exited."""
    multiprocessing.connection.wait([sentinel])
    os.kill(os.getpid(), signal.SIGTERM)


class _AdminPlane:
    """The admin listener's process while inside (a spawned process, made as uvicorn's
    supervisor makes its workers): started on entry, started again if it dies while
    serving (not when it was stopped by SIGTERM or SIGINT, nor when it failed to start),
    stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, config: uvicorn.Config, sock: socket.socket) -> None:
        self.config = config
        self.sock = sock
        self.process: Any = None
        self.stopping = threading.Event()
        self.watcher = threading.Thread(target=self._watch, name="admin-plane", daemon=True)

    def _start(self) -> None:
        from uvicorn._subprocess import get_subprocess

        target = functools.partial(_run_plane, "admin", uvserver.IdleServer(self.config).run)
        self.process = get_subprocess(self.config, target=target, sockets=[self.sock])
        self.process.start()

    def _watch(self) -> None:
        while not self.stopping.is_set():
            self.process.join()
            code = self.process.exitcode
            if self.stopping.wait(1.0) or code in (-signal.SIGTERM, -signal.SIGINT):
                return  # stopped on purpose: serve is stopping (or was told to)
            if code == STARTUP_FAILURE:  # as uvicorn's supervisor: it would fail again
                log.error("the admin plane's process failed to start; the admin listener is down")
                return
            log.error("the admin plane's process exited (code %s); starting it again", code)
            self._start()

    def __enter__(self) -> _AdminPlane:
        self._start()
        self.watcher.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.watcher.join(2)


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
    parser.add_argument(
        "--admin-process",
        action="store_true",
        default=None,
        help="serve the admin listener from a process of its own (default: FDO_<SERVICE>_ADMIN_PROCESS)",
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--no-access-log", action="store_true")
    parser.add_argument("--tls-cert", type=Path)
    parser.add_argument("--tls-key", type=Path)
    args = parser.parse_args(argv)
    problem = check_tls_files(args.tls_cert, args.tls_key)
    if problem:
        parser.error(problem)
    admin_process = _admin_process(args.factory) if args.admin_process is None else args.admin_process
    try:
        serve(
            args.factory,
            host=args.host,
            port=args.port,
            admin_host=args.admin_host,
            admin_port=args.admin_port,
            admin_process=admin_process,
            workers=args.workers,
            log_level=args.log_level,
            access_log=not args.no_access_log,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            handed=_handed(args.factory, args.admin_port) if admin_process and args.admin_port else None,
        )
    except ServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(STARTUP_FAILURE)


def _handed(factory: str, admin_port: int) -> str | None:
    """The settings of ``factory``'s service, read and validated for the workers that
    serve only devices (:mod:`fdo_server.handed`), as ``fdo <service> serve`` does, in a
    process of its own (this one stays without pydantic); exits with the one-line reason
    when they are unusable."""
    service = factory.partition(".")[0].partition(":")[0]
    result = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "fdo_server.handed", service, str(admin_port)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        print(lines[-1] if lines else f"error: the {service} settings could not be read", file=sys.stderr)
        sys.exit(STARTUP_FAILURE)
    return result.stdout.strip() or None


def _admin_process(factory: str) -> bool:
    """``FDO_<SERVICE>_ADMIN_PROCESS`` of ``factory``'s service, as its settings read it."""
    service = factory.partition(".")[0].partition(":")[0]
    value = os.environ.get(f"FDO_{service.upper()}_ADMIN_PROCESS", "").strip().lower()
    return value in {"1", "true", "yes", "on", "y", "t"}


if __name__ == "__main__":
    main()
