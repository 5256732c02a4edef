"""Server CPU, SQL statements and commits per DI, TO0 and TO1, in one process.

A :class:`fdo_server.stack.Stack` (real servers) manufactures the devices and hands
their vouchers off to the owner. Then the manufacturer and rendezvous apps are built in
this process as their uvicorn factories build them (``app_from_env``: JSON log lines,
metrics in ``PROMETHEUS_MULTIPROC_DIR`` files as with two workers, middleware), on fresh
databases, and each operation's messages go through the whole ASGI app (the edge guard,
the FDO fast path, the dispatcher) from an httpx transport that runs it on an event loop
of its own in the calling thread. So the thread CPU measured is the service's work per
message without uvicorn's HTTP parsing and socket writes (``make bench`` measures those
too), and SQLAlchemy's events count the statements and commits each operation runs.

    .venv/bin/python bench/profile_messages.py [--devices 200] [--phase to1] [--profile]
        [--backend postgresql] [--instructions --phase to1]

``--instructions`` counts the instructions of one phase's messages instead of their CPU
time, with callgrind (``bench/callgrind.py``): the same from run to run.

On PostgreSQL, statements that go to the driver directly (``fdo_server.sql.Sql``) are not
seen by SQLAlchemy's events: the statement counts are SQLite's.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import callgrind
import httpx
from sqlalchemy import event
from sqlalchemy.engine import Engine

from device.onboard import run_di
from fdo.credential import DeviceCredential
from fdo.rvinfo import RVTO2Addr
from fdo.to0.owner import TO0Owner
from fdo.to1.device import TO1Device
from fdo.voucher import OwnershipVoucher
from fdo_server.db import sqlite_url
from fdo_server.migrate import upgrade
from fdo_server.stack import SERVICES, Stack, without_address_limits
from owner.settings import to2_addr_entry
from transport.client import FdoHttpClient

ASGIApp = Callable[..., Any]


class ASGITransport(httpx.BaseTransport):
    """Runs each request through an ASGI app on a private event loop, in this thread."""

    def __init__(self, apps: dict[str, ASGIApp]) -> None:
        self.apps = apps
        self.loop = asyncio.new_event_loop()
        self.cpu = 0.0
        #: When set, enabled around each request's run of the app only (the server side).
        self.profiler: cProfile.Profile | None = None
        self.run = self.loop.run_until_complete
        #: ``--http``: uvicorn's config and server state per port (:class:`HTTPConnection`).
        self.configs: dict[int, Any] = {}
        self.states: dict[int, Any] = {}
        if callgrind.active():
            self.run = callgrind.counted(self.run)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        app = self.apps[f"{request.url.host}:{request.url.port}"]
        body = request.read()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": "http",
            "path": request.url.path,
            "raw_path": request.url.raw_path,
            "query_string": b"",
            "root_path": "",
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "client": ("127.0.0.1", 40000),
            "server": (request.url.host, request.url.port),
        }
        sent = False
        status = 500
        headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        start = time.thread_time()
        if self.profiler is not None:
            self.profiler.enable()
        self.run(app(scope, receive, send))
        if self.profiler is not None:
            self.profiler.disable()
        self.cpu += time.thread_time() - start
        return httpx.Response(status, headers=headers, content=b"".join(chunks))


class _MemorySocket(asyncio.Transport):
    """The server's side of one in-memory connection: gathers what the protocol writes
    and resolves :attr:`waiter` once a whole response (head and ``content-length`` body)
    is there."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port
        self.out = bytearray()
        self.waiter: asyncio.Future[bytes] | None = None
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", self.port), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def write(self, data: Any) -> None:
        self.out += data
        head_end = self.out.find(b"\r\n\r\n")
        if head_end < 0 or self.waiter is None or self.waiter.done():
            return
        head = bytes(self.out[:head_end]).decode("latin-1").lower()
        length = next(
            (int(line.split(":", 1)[1]) for line in head.split("\r\n") if line.startswith("content-length:")),
            0,
        )
        if len(self.out) >= head_end + 4 + length:
            self.waiter.set_result(bytes(self.out[: head_end + 4 + length]))
            del self.out[: head_end + 4 + length]

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


class HTTPConnection(httpx.BaseTransport):
    """One client connection to a service through uvicorn's HTTP protocol as the services
    serve it (``fdo_server.http_protocol``, uvicorn's config and server state) over
    :class:`_MemorySocket`: the server side counted is the protocol's parsing and answer
    as well as the app (no kernel, no sockets). The event loop is asyncio's, as without
    ``--http`` (uvloop, which the services run on, makes a socket pair on every
    ``run_until_complete`` in the main thread, which a server does not do)."""

    def __init__(self, shared: ASGITransport) -> None:
        self.shared = shared
        self.protocol: Any = None
        self.socket: _MemorySocket | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        from uvicorn import Config

        from fdo_server.http_protocol import HTTP_PROTOCOL
        from fdo_server.uvserver import _DatedState

        shared = self.shared
        host, port = request.url.host, request.url.port or 80
        if self.protocol is None:
            config = shared.configs.get(port)
            if config is None:
                config = shared.configs[port] = Config(
                    shared.apps[f"{host}:{port}"],
                    http=HTTP_PROTOCOL,
                    proxy_headers=False,
                    access_log=False,
                    log_level="warning",
                    lifespan="off",
                    log_config=None,
                )
                config.load()
                shared.states[port] = _DatedState(config, lambda: None, None)
            self.socket = _MemorySocket(port)
            protocol_class: Any = config.http_protocol_class
            self.protocol = protocol_class(
                config=config, server_state=shared.states[port], app_state={}, _loop=shared.loop
            )
            fresh = True
        else:
            fresh = False
        assert self.socket is not None  # noqa: S101 - made above
        body = request.read()
        lines = [f"{request.method} {request.url.raw_path.decode()} HTTP/1.1".encode()]
        lines += [k + b": " + v for k, v in request.headers.raw]
        data = b"\r\n".join(lines) + b"\r\n\r\n" + body
        socket, protocol = self.socket, self.protocol
        socket.waiter = shared.loop.create_future()

        async def exchange() -> bytes:
            if fresh:  # the connection's setup is the server's work too
                protocol.connection_made(socket)
            protocol.data_received(data)
            assert socket.waiter is not None  # noqa: S101 - set above
            return await socket.waiter

        start = time.thread_time()
        if shared.profiler is not None:
            shared.profiler.enable()
        raw = shared.run(exchange())
        if shared.profiler is not None:
            shared.profiler.disable()
        shared.cpu += time.thread_time() - start
        head, _, content = raw.partition(b"\r\n\r\n")
        status_line, *fields = head.decode("latin-1").split("\r\n")
        headers = [(name, value) for name, _, value in (f.partition(": ") for f in fields)]
        return httpx.Response(int(status_line.split()[1]), headers=headers, content=content)

    def close(self) -> None:
        if self.protocol is not None:
            protocol, self.protocol = self.protocol, None

            async def lost() -> None:
                protocol.connection_lost(None)

            self.shared.run(lost())


class Counts:
    """Statements and commits an engine runs: on SQLite every statement the driver runs
    (its trace callback: ``fdo_server.sql.Sql`` ones and the driver's own ``BEGIN`` and
    ``COMMIT`` included), elsewhere what SQLAlchemy's events see."""

    def __init__(self, engine: Engine) -> None:
        self.statements = 0
        self.commits = 0
        self.by_kind: dict[str, int] = {}
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", self._trace)
            engine.dispose()  # connections made from now on are traced
        else:
            event.listen(engine, "before_cursor_execute", self._sqlalchemy_statement)
            event.listen(engine, "commit", lambda _conn: self._statement("COMMIT"))

    def _trace(self, dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.set_trace_callback(self._statement)

    def _sqlalchemy_statement(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self._statement(statement)

    def _statement(self, statement: str) -> None:
        kind = statement.lstrip().split(None, 1)[0].upper()
        if kind == "COMMIT":
            self.commits += 1
        elif kind != "PRAGMA":
            self.statements += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1

    def reset(self) -> None:
        self.statements = self.commits = 0
        self.by_kind.clear()


def build(stack: Stack, name: str, url: str) -> tuple[ASGIApp, Engine]:
    """The service's app as its uvicorn factory makes it, on the database at ``url``."""
    os.environ.update(stack.services[name].env)
    os.environ[f"FDO_{name.upper()}_DATABASE_URL"] = url
    os.environ[f"FDO_{name.upper()}_FIRST_MESSAGE_RATE"] = "0"
    upgrade(url, name)
    module: Any = __import__(f"{name}.app", fromlist=["app_from_env"])
    app = module.app_from_env()
    inner = getattr(app, "app", app)
    engine: Engine = inner.state.engine
    return app, engine


@contextmanager
def _databases(backend: str, workdir: Path) -> Iterator[dict[str, str]]:
    if backend == "sqlite":
        yield {name: sqlite_url(workdir / f"{name}-inproc.db") for name in ("manufacturer", "rendezvous")}
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from run import postgres_schemas

    with postgres_schemas() as urls:
        yield urls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--phase", choices=["di", "to0", "to1", "all"], default="all")
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--profile", action="store_true", help="cProfile (thread CPU) of the measured phase")
    parser.add_argument("--batches", type=int, default=10, help="report the best and median batch too")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--sort", default="tottime")
    parser.add_argument("--dump", metavar="FILE", help="with --profile: also write the stats to FILE")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="instead of CPU time, the instructions per operation of --phase (callgrind, valgrind)",
    )
    parser.add_argument(
        "--http",
        action="store_true",
        help="each client's requests through uvicorn's HTTP protocol as the services run it, on one "
        "in-memory connection per client (HTTP parsing and the answer's writing counted too)",
    )
    args = parser.parse_args(argv)
    if args.instructions and args.phase == "all":
        parser.error("--instructions counts one phase: give --phase di, to0 or to1")
    if args.instructions and not callgrind.active():
        return callgrind.rerun(__file__, sys.argv[1:] if argv is None else argv, args.devices, args.phase)
    workdir = Path(tempfile.mkdtemp(prefix="fdo-msgprof-"))
    metrics_dir = workdir / "metrics"
    metrics_dir.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    log = (workdir / "service.log").open("w")
    try:
        with _databases(args.backend, workdir) as urls:
            return _run(args, workdir, urls, log)
    finally:
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _run(args: argparse.Namespace, workdir: Path, urls: dict[str, str], log: Any) -> int:
    n = args.devices + 5
    stack = Stack(
        workdir / "stack",
        owner_env={"FDO_OWNER_TO0_ENABLED": "false"},
        env={name: without_address_limits(name) for name in SERVICES},
    ).start()
    try:
        creds: list[DeviceCredential] = []
        vouchers: list[OwnershipVoucher] = []
        for i in range(n):
            cred = stack.manufacture(serial=f"MSG-{i:05d}", model="profile")
            vouchers.append(OwnershipVoucher.from_pem(stack.hand_off(str(cred.guid), "ec256"))[0])
            creds.append(cred)
        owner_key = stack.owner_keys["ec256"]
        owner_url = stack.url("owner")
        services = {name: stack.services[name] for name in ("manufacturer", "rendezvous")}
    finally:
        stack.stop()

    stderr = sys.stderr
    sys.stderr = log  # the JSON log lines go to a file, as under uvicorn
    try:
        built = {name: build(stack, name, urls[name]) for name in services}
    finally:
        sys.stderr = stderr
    apps = {f"127.0.0.1:{services[name].port}": app for name, (app, _) in built.items()}
    # Not under callgrind: SQLite's trace callback (and the driver's expanding of each
    # statement for it) would be counted as the server's work.
    counts = {} if callgrind.active() else {name: Counts(engine) for name, (_, engine) in built.items()}
    transport = ASGITransport(apps)
    mfr_url, rv_url = (f"http://127.0.0.1:{services[s].port}" for s in ("manufacturer", "rendezvous"))
    to2_addr = RVTO2Addr((to2_addr_entry(owner_url),))

    def client(url: str) -> FdoHttpClient:
        through: httpx.BaseTransport = HTTPConnection(transport) if args.http else transport
        return FdoHttpClient(url, client=httpx.Client(transport=through))

    def di(i: int) -> None:
        run_di(mfr_url, key_type="ec256", serial=f"DI-{i:05d}", model="profile", http_client_factory=client)

    def to0(i: int) -> None:
        machine = TO0Owner(voucher=vouchers[i], owner_key=owner_key, rv_to2_addr=to2_addr, wait_seconds=3600)
        with client(rv_url) as c:
            c.run(machine)
        if machine.accepted_wait_seconds is None:
            raise RuntimeError("TO0 not accepted")

    def to1(i: int) -> None:
        machine = TO1Device(creds[i])
        with client(rv_url) as c:
            c.run(machine)
        if machine.to1d is None:
            raise RuntimeError("TO1 without to1d")

    phases: list[tuple[str, str, Callable[[int], None]]] = [
        ("di", "manufacturer", di),
        ("to0", "rendezvous", to0),
        ("to1", "rendezvous", to1),
    ]
    results: dict[str, Any] = {}
    sys.stderr = log
    try:
        for name, service, op in phases:
            for i in range(5):  # warm-up: imports, first connections
                op(i)
            if args.phase not in ("all", name) and not (args.phase == "to1" and name == "to0"):
                continue
            ids = range(5, n)
            if callgrind.active():  # count the phase asked for; run TO0 before TO1 uncounted
                if name == args.phase:
                    callgrind.start()
                for i in ids:
                    op(i)
                if name == args.phase:
                    return 0
                continue
            counts[service].reset()
            transport.cpu = 0.0
            profiler = cProfile.Profile(time.thread_time) if args.profile and args.phase == name else None
            transport.profiler = profiler
            per_batch: list[float] = []
            size = max(1, len(ids) // args.batches)
            for b in range(0, len(ids), size):
                batch = ids[b : b + size]
                before = transport.cpu
                for i in batch:
                    op(i)
                per_batch.append((transport.cpu - before) / len(batch) * 1000)
            transport.profiler = None
            c = counts[service]
            results[name] = {
                "server_cpu_ms": round(transport.cpu / len(ids) * 1000, 3),
                # The quietest batch: on a shared machine the least disturbed figure.
                "server_cpu_ms_best_batch": round(min(per_batch), 3),
                "server_cpu_ms_median_batch": round(statistics.median(per_batch), 3),
                "statements": round(c.statements / len(ids), 2),
                "commits": round(c.commits / len(ids), 2),
                "by_kind": {k: round(v / len(ids), 2) for k, v in sorted(c.by_kind.items())},
            }
            if profiler is not None:
                stats = pstats.Stats(profiler)
                results[name]["python_calls"] = round(stats.total_calls / len(ids))  # type: ignore[attr-defined]
                sys.stderr = stderr
                pstats.Stats(profiler).sort_stats(args.sort).print_stats(args.top)
                if args.dump:
                    profiler.dump_stats(args.dump)
                sys.stderr = log
    finally:
        sys.stderr = stderr
    print(json.dumps({"backend": args.backend, "devices": args.devices, **results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
