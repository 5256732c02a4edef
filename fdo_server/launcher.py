"""Run the services as real server processes (uvicorn) on free local ports.

Used by ``make demo``, the end-to-end tests and the benchmark: each service runs in its
own process with its settings in the environment, exactly as ``fdo <service> serve``
runs it (``python -m fdo_server.serve``: :mod:`fdo_server.uvserver`'s server and worker
supervisor, JSON log lines). :meth:`ServiceProcess.cpu_seconds` reads the CPU time of the server
process and its workers from ``/proc`` so the benchmark can report server CPU per
operation.

With several workers each service gets its own fresh, empty ``PROMETHEUS_MULTIPROC_DIR``
(made before the workers start, removed at :meth:`ServiceProcess.stop`), so ``/metrics``
adds up every worker's counters instead of showing whichever worker answered; a folder
already set in the environment (``env`` or ``os.environ``) is used as it is.

With :attr:`ServiceProcess.admin_port` the service runs as ``serve --admin-port`` runs it:
the admin plane on a listener of its own
(:attr:`ServiceProcess.admin_url`), the device plane alone on :attr:`ServiceProcess.url`.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fdo_server.metrics import MULTIPROC_ENV

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


#: ``LOW-HIGH``: take free ports only from this range (set per process by test runners
#: that start servers from several processes at once, so two never pick the same port
#: between its check and its use). Unset: any port the kernel hands out.
PORT_RANGE_ENV = "FDO_FREE_PORT_RANGE"


def _port_range() -> tuple[int, int] | None:
    value = os.environ.get(PORT_RANGE_ENV, "").strip()
    if not value:
        return None
    low, _, high = value.partition("-")
    return int(low), int(high)


def _bind_free(sock: socket.socket, taken: set[int]) -> int:
    span = _port_range()
    if span is None:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
    low, high = span
    for _ in range(1000):
        port = random.randint(low, high)  # noqa: S311 - not a secret
        if port in taken:
            continue
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no free port in {PORT_RANGE_ENV}={low}-{high}")


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return _bind_free(sock, set())


def free_ports(count: int) -> list[int]:
    """``count`` different TCP ports that are free on 127.0.0.1 right now."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            ports.append(_bind_free(sock, set(ports)))
        return ports


def stat_cpu_seconds(stat: str) -> float:
    """User + system CPU seconds of a process, from the text of its ``/proc/PID/stat``."""
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_tree(root: int) -> list[int]:
    """``root`` and every process below it."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            ppid = int(text[text.rindex(")") + 2 :].split()[1])
            parents.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds used so far by ``root`` and the processes below it."""
    total = 0.0
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            total += stat_cpu_seconds(Path(f"/proc/{pid}/stat").read_text())
    return total


@dataclass
class ServiceProcess:
    """One service under uvicorn: ``factory`` is ``module:function`` returning the app."""

    name: str
    factory: str
    env: Mapping[str, str]
    workers: int = 1
    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    #: Serve HTTPS with this PEM certificate and key (``serve --tls-cert/--tls-key``).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: CA bundle the health check verifies the server certificate with (default: system CAs).
    tls_ca: Path | None = None
    #: The Prometheus multiprocess folder this object made (and removes at stop), if any.
    metrics_dir: Path | None = None
    #: Serve the admin plane on this port of its own (:mod:`fdo_server.planes`); None: it
    #: shares :attr:`port` with the device plane.
    admin_port: int | None = None

    @property
    def url(self) -> str:
        """The device listener (both planes without :attr:`admin_port`)."""
        return self._url(self.port)

    @property
    def admin_url(self) -> str:
        """The admin listener: :attr:`url` unless the admin plane has a port of its own."""
        return self._url(self.port if self.admin_port is None else self.admin_port)

    def _url(self, port: int) -> str:
        scheme = "https" if self.tls_cert is not None else "http"
        return f"{scheme}://127.0.0.1:{port}"

    def start(self, *, timeout: float = 30.0) -> None:
        """Start the server and wait until ``/health`` answers on every listener."""
        self.spawn()
        self.wait_healthy(timeout=timeout)

    def spawn(self) -> None:
        """Start the server process without waiting for it."""
        if self.tls_cert is not None and self.tls_key is None:
            raise ValueError(f"{self.name}: tls_cert needs tls_key")
        cmd = self._command()
        env = {**os.environ, **self.env}
        if self.workers > 1 and not env.get(MULTIPROC_ENV):
            self._remove_metrics_dir()
            self.metrics_dir = Path(tempfile.mkdtemp(prefix=f"fdo-{self.name}-metrics-"))
            env[MULTIPROC_ENV] = str(self.metrics_dir)
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def _command(self) -> list[str]:
        """``python -m fdo_server.serve``, as ``fdo <service> serve`` runs the service."""
        cmd = [
            *(sys.executable, "-m", "fdo_server.serve", self.factory),
            *("--host", "127.0.0.1", "--port", str(self.port)),
            *("--workers", str(self.workers), "--log-level", "warning", "--no-access-log"),
        ]
        if self.admin_port is not None:
            cmd += ["--admin-host", "127.0.0.1", "--admin-port", str(self.admin_port)]
        if self.tls_cert is not None:
            cmd += ["--tls-cert", str(self.tls_cert), "--tls-key", str(self.tls_key)]
        return cmd

    def wait_healthy(self, *, timeout: float = 30.0) -> None:
        """Wait until ``/health`` answers on every listener (raises with the log tail if the
        server died)."""
        if self.process is None:
            raise RuntimeError(f"{self.name}: spawn() first")
        deadline = time.monotonic() + timeout
        context = None
        if self.tls_cert is not None:
            context = ssl.create_default_context(cafile=str(self.tls_ca) if self.tls_ca else None)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with code {self.process.returncode}{self._log_tail()}"
                )
            if all(self._healthy(url, context) for url in {self.url, self.admin_url}):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not become healthy in {timeout:.0f} s{self._log_tail()}")

    @staticmethod
    def _healthy(url: str, context: ssl.SSLContext | None) -> bool:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2, context=context) as resp:  # noqa: S310
                return bool(resp.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def _log_tail(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n" + self.log_path.read_text(errors="replace")[-3000:]

    def pids(self) -> list[int]:
        """The server process and every process below it (uvicorn workers)."""
        return [] if self.process is None else process_tree(self.process.pid)

    def cpu_seconds(self) -> float:
        """User + system CPU seconds used so far by the server and its workers."""
        return 0.0 if self.process is None else tree_cpu_seconds(self.process.pid)

    def stop(self, *, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM to its process group, then SIGKILL) and clean up."""
        try:
            self._stop_process(timeout)
        finally:
            self._remove_metrics_dir()

    def _stop_process(self, timeout: float) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout)

    def _remove_metrics_dir(self) -> None:
        if self.metrics_dir is not None:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
            self.metrics_dir = None

    def __enter__(self) -> ServiceProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
