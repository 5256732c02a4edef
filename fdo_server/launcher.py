"""Run the services as real server processes (uvicorn) on free local ports.

Used by ``make demo``, the end-to-end tests and the benchmark: each service runs in its
own process with its settings in the environment, exactly as ``fdo <service> serve``
would run it. :meth:`ServiceProcess.cpu_seconds` reads the CPU time of the server
process and its workers from ``/proc`` so the benchmark can report server CPU per
operation.

With several workers each service gets its own fresh, empty ``PROMETHEUS_MULTIPROC_DIR``
(made before the workers start, removed at :meth:`ServiceProcess.stop`), so ``/metrics``
adds up every worker's counters instead of showing whichever worker answered; a folder
already set in the environment (``env`` or ``os.environ``) is used as it is.
"""

from __future__ import annotations

import contextlib
import os
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

from fdo_server.http_protocol import HTTP_PROTOCOL
from fdo_server.metrics import MULTIPROC_ENV

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stat_cpu_seconds(stat: str) -> float:
    """User + system CPU seconds of a process, from the text of its ``/proc/PID/stat``."""
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


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
    #: Serve HTTPS with this PEM certificate and key (uvicorn ``--ssl-certfile/--ssl-keyfile``).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: CA bundle the health check verifies the server certificate with (default: system CAs).
    tls_ca: Path | None = None
    #: The Prometheus multiprocess folder this object made (and removes at stop), if any.
    metrics_dir: Path | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls_cert is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def start(self, *, timeout: float = 30.0) -> None:
        """Start the server and wait until ``/health`` answers."""
        self.spawn()
        self.wait_healthy(timeout=timeout)

    def spawn(self) -> None:
        """Start the server process without waiting for it."""
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            self.factory,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            "--log-level",
            "warning",
            "--no-access-log",
            "--http",
            HTTP_PROTOCOL,
            "--no-proxy-headers",  # as fdo_server.serve: trusted_proxies decides
        ]
        if self.tls_cert is not None:
            if self.tls_key is None:
                raise ValueError(f"{self.name}: tls_cert needs tls_key")
            cmd += ["--ssl-certfile", str(self.tls_cert), "--ssl-keyfile", str(self.tls_key)]
        env = {**os.environ, **self.env}
        if self.workers > 1 and not env.get(MULTIPROC_ENV):
            self._remove_metrics_dir()
            self.metrics_dir = Path(tempfile.mkdtemp(prefix=f"fdo-{self.name}-metrics-"))
            env[MULTIPROC_ENV] = str(self.metrics_dir)
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_healthy(self, *, timeout: float = 30.0) -> None:
        """Wait until ``/health`` answers (raises with the log tail if the server died)."""
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
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2, context=context) as resp:  # noqa: S310
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not become healthy in {timeout:.0f} s{self._log_tail()}")

    def _log_tail(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n" + self.log_path.read_text(errors="replace")[-3000:]

    def pids(self) -> list[int]:
        """The server process and every process below it (uvicorn workers)."""
        if self.process is None:
            return []
        parents: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                text = stat.read_text()
                ppid = int(text[text.rindex(")") + 2 :].split()[1])
                parents.setdefault(ppid, []).append(int(stat.parent.name))
        found, todo = [], [self.process.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(parents.get(pid, []))
        return found

    def cpu_seconds(self) -> float:
        """User + system CPU seconds used so far by the server and its workers."""
        total = 0.0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                total += stat_cpu_seconds(Path(f"/proc/{pid}/stat").read_text())
        return total

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
