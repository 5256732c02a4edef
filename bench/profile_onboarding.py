"""Profile the server side of full TO1+TO2 onboardings (cProfile), in one process.

A :class:`fdo_server.stack.Stack` (SQLite) does DI, the hand-off and TO0 over real HTTP.
Then the rendezvous and owner apps are built in this process on the same databases, and
the devices onboard through an httpx transport that calls the FDO route's endpoint
directly in the calling thread, so cProfile sees the server code (machines, sessions,
database) of every message. What this leaves out is the HTTP layer (uvicorn, Starlette
routing and the body reader); ``make bench`` measures the whole server.

    .venv/bin/python bench/profile_onboarding.py [--devices 30] [--top 40] [--backend postgresql]
        [--suite p384] [--timing | --sql | --instructions] [--cpu] [--server-only]

With ``--backend postgresql`` each service gets a fresh schema on the local PostgreSQL
server (as ``make bench`` does), dropped afterwards. ``--suite p384`` onboards with
P-384 keys (device and owner), ECDH384 and A256GCM instead of P-256/ECDH256/A128GCM.
``--sql`` prints, instead of a profile, the server's SQL statements and commits per
message type as SQLite runs them (SQLite only: PostgreSQL's are not traced).

``--server-only`` has cProfile see only the endpoints' calls (the device's code and httpx
left out), so ``--sort tottime`` ranks the server's own functions.

``--instructions`` counts, instead of time, the instructions the server side runs per
onboarding (the FDO endpoints' calls, after the warm-up) with valgrind's callgrind
(``bench/callgrind.py``): the same from run to run, the figure to compare two versions of
the code with. About 3 s per onboarding.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import callgrind
import httpx
from fastapi import FastAPI
from sqlalchemy import event
from sqlalchemy.pool import Pool
from starlette.routing import Route

from device.modules import standard_modules
from device.onboard import onboard
from fdo.cipher import CipherSuite
from fdo.kex import KexSuite
from fdo_server.stack import SERVICES, Stack, without_address_limits
from transport.client import FdoHttpClient
from transport.server import FdoEndpoint, MessageHandler


def _routes(routes: list[Any]) -> list[Route]:
    """Routes, looking into included routers (FastAPI keeps them nested)."""
    out: list[Route] = []
    for route in routes:
        if isinstance(route, Route):
            out.append(route)
        elif hasattr(route, "original_router"):
            out += _routes(route.original_router.routes)
    return out


class InProcessTransport(httpx.BaseTransport):
    """Calls the FDO route's synchronous handler (``MessageDispatcher.handle``) of the app at host:port."""

    def __init__(self, apps: dict[str, FastAPI]) -> None:
        self.cpu = 0.0  # thread CPU seconds spent in the endpoints
        self.wall: dict[str, float] = {}  # wall seconds in the endpoints, by message type
        self.current: str | None = None  # the message type being served
        self.endpoints: dict[str, MessageHandler] = {}
        #: When set, enabled around each endpoint call only (``--server-only``).
        self.profiler: cProfile.Profile | None = None
        for netloc, app in apps.items():
            for route in _routes(app.router.routes):
                if isinstance(route.endpoint, FdoEndpoint):
                    self.endpoints[netloc] = route.endpoint.handle

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        key = f"{request.url.host}:{request.url.port}"
        if key not in self.endpoints:
            raise KeyError(f"{key} not in {list(self.endpoints)} ({request.url})")
        endpoint = self.endpoints[key]
        msg_type = request.url.path.rsplit("/", 1)[1]
        headers = {k.lower(): v for k, v in request.headers.items()}
        body = request.read()
        start, t0 = time.thread_time(), time.perf_counter()
        self.current = msg_type
        if self.profiler is not None:
            self.profiler.enable()
        try:
            response = endpoint(msg_type, headers, body)
        finally:
            if self.profiler is not None:
                self.profiler.disable()
            self.current = None
        self.cpu += time.thread_time() - start
        self.wall[msg_type] = self.wall.get(msg_type, 0.0) + time.perf_counter() - t0
        return httpx.Response(
            response.status_code, headers=dict(response.headers), content=bytes(response.body)
        )


def build_app(stack: Stack, name: str) -> FastAPI:
    os.environ.update(stack.services[name].env)
    module: Any = __import__(f"{name}.app", fromlist=["create_app"])
    app: FastAPI = module.create_app()
    return app


#: The suites ``--suite`` picks: key type (device and owner), key exchange, cipher.
SUITES: dict[str, tuple[str, KexSuite, CipherSuite]] = {
    "p256": ("ec256", KexSuite.ECDH256, CipherSuite.A128GCM),
    "p384": ("ec384", KexSuite.ECDH384, CipherSuite.A256GCM),
}


class SqlCounter:
    """Statements and commits per message type: what SQLite itself runs (``sqlite3``'s
    trace callback, installed on every pooled connection at checkout), so statements
    sent to the driver directly (:class:`fdo_server.sql.Sql`) count too."""

    def __init__(self, transport: InProcessTransport) -> None:
        self.transport = transport
        self.messages: dict[str, int] = {}
        self.statements: dict[str, dict[str, int]] = {}
        self.commits: dict[str, int] = {}
        self.on = False
        event.listen(Pool, "checkout", self._checkout)

    def _checkout(self, dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        if isinstance(dbapi_conn, sqlite3.Connection):
            dbapi_conn.set_trace_callback(self._statement)

    def _statement(self, statement: str) -> None:
        msg_type = self.transport.current
        if not self.on or msg_type is None:
            return
        head = " ".join(statement.split())[:100]
        if head.upper() == "COMMIT":
            self.commits[msg_type] = self.commits.get(msg_type, 0) + 1
        if head.upper() in ("BEGIN", "BEGIN DEFERRED", "COMMIT", "ROLLBACK") or head.startswith("PRAGMA"):
            return
        by_type = self.statements.setdefault(msg_type, {})
        by_type[head] = by_type.get(head, 0) + 1

    def count(self, msg_type: str) -> None:
        self.messages[msg_type] = self.messages.get(msg_type, 0) + 1

    def report(self, onboardings: int) -> None:
        total = 0
        for msg_type in sorted(self.messages, key=int):
            n = self.messages[msg_type]
            statements = self.statements.get(msg_type, {})
            count = sum(statements.values())
            total += count
            print(
                f"message {msg_type}: {n / onboardings:.1f} per onboarding, "
                f"{count / n:.2f} statements and {self.commits.get(msg_type, 0) / n:.2f} commits each"
            )
            for head, k in sorted(statements.items(), key=lambda kv: -kv[1]):
                print(f"    {k / n:5.2f}  {head}")
        print(f"{total / onboardings:.1f} statements per onboarding (TO1+TO2)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--devices", type=int, default=30)
    parser.add_argument("--top", type=int, default=45)
    parser.add_argument("--sort", default="cumulative")
    parser.add_argument("--out", type=Path, help="also dump the raw profile here")
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument(
        "--timing",
        action="store_true",
        help="no profile: the server side's thread CPU and the wall time per onboarding",
    )
    parser.add_argument(
        "--cpu", action="store_true", help="profile thread CPU time instead of wall time (no DB waits)"
    )
    parser.add_argument(
        "--server-only",
        action="store_true",
        help="profile only the endpoints' calls (no device code, no httpx)",
    )
    parser.add_argument("--suite", choices=sorted(SUITES), default="p256")
    parser.add_argument("--sql", action="store_true", help="no profile: SQL statements per message type")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="no profile: the server side's instructions per onboarding, counted by callgrind (valgrind)",
    )
    args = parser.parse_args(argv)
    if args.instructions and not callgrind.active():
        return callgrind.rerun(__file__, sys.argv[1:] if argv is None else argv, args.devices, "onboarding")
    with _databases(args.backend) as urls:
        return _profile(args, urls)


@contextmanager
def _databases(backend: str) -> Iterator[dict[str, str]]:
    if backend == "sqlite":
        yield {}
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from run import postgres_schemas

    with postgres_schemas() as urls:
        yield urls


def _profile(args: argparse.Namespace, urls: dict[str, str]) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="fdo-profile-"))
    key_type, kex, cipher = SUITES[args.suite]
    stack = Stack(workdir, database_urls=urls, env={n: without_address_limits(n) for n in SERVICES}).start()
    try:
        creds = []
        for i in range(args.devices + 2):
            cred = stack.manufacture(key_type=key_type, serial=f"PROF-{i:04d}", model="profile")
            stack.hand_off(str(cred.guid), key_type)
            creds.append(cred)
        for cred in creds:
            stack.wait_for_to0(str(cred.guid))
        apps = {f"127.0.0.1:{stack.services[n].port}": build_app(stack, n) for n in ("rendezvous", "owner")}
    finally:
        stack.stop()

    transport = InProcessTransport(apps)

    def factory(url: str) -> FdoHttpClient:
        return FdoHttpClient(url, client=httpx.Client(transport=transport))

    def one(i: int) -> None:
        root = workdir / "devices" / str(i)
        root.mkdir(parents=True, exist_ok=True)
        onboard(
            creds[i],
            kex=kex,
            cipher=cipher,
            modules=lambda: standard_modules(root, run=lambda _argv: (0, b"", b"")),
            max_attempts=1,
            http_client_factory=factory,
        )

    if args.sql and args.backend != "sqlite":
        parser_error = "--sql counts what SQLite runs: use it with --backend sqlite"
        raise SystemExit(parser_error)
    sql = SqlCounter(transport) if args.sql else None
    if sql is not None:
        endpoints = transport.endpoints

        def counted(handler: MessageHandler) -> MessageHandler:
            def handle(msg_type: str, headers: Mapping[str, str], body: bytes | None) -> Any:
                sql.count(msg_type)
                return handler(msg_type, headers, body)

            return handle

        transport.endpoints = {k: counted(v) for k, v in endpoints.items()}
    if callgrind.active():
        transport.endpoints = {k: callgrind.counted(v) for k, v in transport.endpoints.items()}
    for i in range(2):  # warm-up: imports, first connections
        one(i)
    if callgrind.active():
        callgrind.start()
        for i in range(2, args.devices + 2):
            one(i)
        shutil.rmtree(workdir, ignore_errors=True)
        return 0
    if sql is not None:
        sql.messages.clear()
        sql.on = True
        for i in range(2, args.devices + 2):
            one(i)
        sql.report(args.devices)
        shutil.rmtree(workdir, ignore_errors=True)
        return 0
    if args.timing:
        transport.cpu = 0.0
        transport.wall.clear()
        start = time.perf_counter()
        each: list[float] = []
        for i in range(2, args.devices + 2):
            before = transport.cpu
            one(i)
            each.append((transport.cpu - before) * 1000)
        wall = (time.perf_counter() - start) / args.devices * 1000
        ms = transport.cpu / args.devices * 1000
        suite = f"{args.backend}, {args.suite}"
        print(f"server side, thread CPU without profiler: {ms:.2f} ms per onboarding ({suite})")
        # On a shared (virtual) machine the mean takes every disturbance in, the median
        # fewer; both still move by a fifth between runs: --instructions compares versions.
        print(f"  median onboarding {statistics.median(each):.2f} ms, quickest {min(each):.2f} ms")
        print(f"wall time, device and server, one thread: {wall:.2f} ms per onboarding ({args.backend})")
        done = transport.wall.get("70", 0.0) / args.devices * 1000
        others = (sum(transport.wall.values()) / args.devices * 1000) - done
        print(f"wall time in the endpoints: TO2.Done {done:.2f} ms, other TO1/TO2 messages {others:.2f} ms")
        shutil.rmtree(workdir, ignore_errors=True)
        return 0
    profiler = cProfile.Profile(time.thread_time) if args.cpu else cProfile.Profile()
    start = time.perf_counter()
    if args.server_only:
        transport.profiler = profiler
    else:
        profiler.enable()
    for i in range(2, args.devices + 2):
        one(i)
    if not args.server_only:
        profiler.disable()
    elapsed = time.perf_counter() - start
    stats = pstats.Stats(profiler)
    if args.out:
        stats.dump_stats(str(args.out))
    server = _server_seconds(stats)
    print(f"{args.devices} onboardings in {elapsed:.2f} s (device and server code, one thread)")
    print(f"server side (MessageDispatcher.handle): {server / args.devices * 1000:.2f} ms per onboarding")
    stats.sort_stats(args.sort).print_stats(args.top)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _server_seconds(stats: pstats.Stats) -> float:
    total = 0.0
    for (file, _line, func), value in stats.stats.items():  # type: ignore[attr-defined]
        if func == "handle" and file.endswith("dispatch.py"):
            total += value[3]
    return total


if __name__ == "__main__":
    sys.exit(main())
