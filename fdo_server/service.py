"""What the three services' apps have in common (manufacturer, rendezvous, owner).

* :func:`open_engine`: the service's database, refused unless its schema is at head;
* :func:`service_app`: the FastAPI app around the FDO router: one unit of work per
  message, sessions in the database, metrics, ``/health``, ``/ready`` and ``/metrics``,
  a 422 for a value the database refuses, a 503 with ``Retry-After`` while the
  database is unreachable, request bodies limited (:mod:`fdo_server.body_limit`),
  and the engine disposed at shutdown (after
  the service's own background work stops);
* :func:`app_from_env`: the uvicorn factory body: JSON logs, settings from the
  environment and ``--config``, the connection limits and timeouts of this worker
  (:func:`fdo_server.http_protocol.configure`), the app split into its device and admin
  planes when an admin listener is set (:mod:`fdo_server.planes`), the start-up heap
  frozen.

Every app also sweeps its expired protocol sessions (:mod:`fdo_server.sweep`) and
bounds per client address what strangers may ask of it (:mod:`fdo_server.ratelimit`):
the first message of each of its protocols, plus what the caller adds in
``guarded``.

The settings every service has are :class:`fdo_server.config.ServiceSettings`. Each
service's ``app.py`` keeps only what is its own: its protocol handlers, what a
finished protocol stores, its admin routers and background work.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext
from datetime import timedelta
from typing import Any, TypeVar

from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError
from starlette.types import ASGIApp

from fdo_server import metrics as observability
from fdo_server import planes, probes
from fdo_server.body_limit import BodyLimit, RouteLimit
from fdo_server.clock import Clock, utc_now
from fdo_server.config import IPNetwork, ServiceSettings, load_settings
from fdo_server.db import inline_messages, make_engine, message_scope
from fdo_server.heap import freeze_startup_heap
from fdo_server.http_protocol import EdgeLimits, configure
from fdo_server.logs import configure_json_logging
from fdo_server.migrate import require_current
from fdo_server.ratelimit import EdgeGuard, GuardedRoute, first_message_routes
from fdo_server.sessions import SQLSessionStore
from fdo_server.sweep import SessionSweeper
from transport.dispatch import ProtocolHandler
from transport.server import NO_TELEMETRY, fdo_router, mount_fdo

log = logging.getLogger(__name__)
S = TypeVar("S", bound=ServiceSettings)


def open_engine(service: str, database_url: str) -> Engine:
    """The service's engine; :class:`~fdo_server.migrate.SchemaError` unless at head."""
    engine = make_engine(database_url)
    try:
        require_current(engine, service)
    except BaseException:
        engine.dispose()
        raise
    return engine


def service_app(
    service: str,
    settings: ServiceSettings,
    engine: Engine,
    handlers: Mapping[int, ProtocolHandler],
    *,
    clock: Clock = utc_now,
    keys_loaded: Callable[[], bool] = lambda: True,
    background: Callable[[], AbstractContextManager[object]] = nullcontext,
    body_limits: Iterable[RouteLimit] = (),
    networks: Mapping[int, Sequence[IPNetwork]] | None = None,
    rates: Mapping[int, tuple[float, int]] | None = None,
    guarded: Sequence[GuardedRoute] = (),
) -> FastAPI:
    """The FastAPI app of ``service`` serving ``handlers`` (keyed by first message type).

    ``clock`` (aware UTC) decides session expiry. ``background`` is entered when the app
    starts and left when it stops, before the engine is disposed (the owner's TO0
    scheduler); the session sweep runs beside it. ``keys_loaded`` is part of ``/ready``.
    Every request but an FDO message has its body limited to ``settings.max_request_body``,
    or to its route's limit in ``body_limits`` (:mod:`fdo_server.body_limit`). Each first
    message is rate limited per client address (``first_message_rate`` and ``_burst``,
    or the ``(rate, burst)`` of its type in ``rates``: the rendezvous's TO0.Hello)
    and, when ``networks`` lists some for its type, refused to addresses outside them;
    ``guarded`` adds other routes (a sign-in form). ``app.state`` holds ``settings``,
    ``engine`` and ``metrics``; the caller adds its admin routers where
    :func:`fdo_server.planes.serves_admin`, as the API documentation and ``/metrics`` are.
    """

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            async with sweeper:
                with background():
                    yield
        finally:
            engine.dispose()

    app = FastAPI(
        title=f"FDO {service}",
        description=f"The FDO {service} service's admin API (``/api/v1``); docs/deploy.md.",
        lifespan=lifespan,
        telemetry=NO_TELEMETRY,
        docs_url=None,
        redoc_url=None,
    )
    admin = planes.serves_admin()
    if admin:  # a device-plane worker never loads the API documentation
        from fdo_server import api_docs

        api_docs.install_docs(app)
        app.openapi = api_docs.document(app)  # type: ignore[method-assign]
    app.state.settings = settings
    app.state.engine = engine
    app.state.metrics = metrics = observability.ServiceMetrics(service)
    sweeper = SessionSweeper(engine, metrics, settings.session_sweep_seconds, clock)
    # Added before mount_fdo, so FdoFastPath stays outermost: FDO messages keep their own
    # limit (max_body, answered with an ErrorMessage) and never pass through BodyLimit.
    app.add_middleware(BodyLimit, default=settings.max_request_body, routes=tuple(body_limits))
    planes.device_paths(app)  # none yet: the FDO routes are the device plane by their prefix
    mount_fdo(
        app,
        fdo_router(
            handlers,
            SQLSessionStore(clock, on_create=sweeper.notice),
            max_body=settings.max_body,
            session_ttl=timedelta(seconds=settings.session_ttl_seconds),
            clock=clock,
            scope=lambda: message_scope(engine),
            observer=metrics.observe,
            inline=inline_messages(settings.database_url),
        ),
    )
    probes.install(
        app, metrics, database_url=settings.database_url, keys_loaded=keys_loaded, exposition=admin
    )
    # Added after mount_fdo, so it wraps FdoFastPath: it sees every request first.
    app.add_middleware(
        EdgeGuard,
        service=service,
        routes=[
            *first_message_routes(
                handlers,
                rate=settings.first_message_rate,
                burst=settings.first_message_burst,
                networks=dict(networks or {}),
                rates=rates,
            ),
            *guarded,
        ],
        trusted_proxies=settings.trusted_proxies,
        metrics=metrics,
        max_addresses=settings.rate_limit_addresses,
    )
    app.add_exception_handler(DataError, _unstorable)
    for unavailable in DATABASE_UNAVAILABLE:
        app.add_exception_handler(unavailable, _database_unavailable)
    app.add_exception_handler(RequestValidationError, _invalid)
    return app


class _AsciiJSON(JSONResponse):
    """JSON with every non-ASCII character escaped: a lone surrogate that came in a
    request (``"\\ud800"`` is valid JSON) goes back out as the same escape instead of
    failing to encode as UTF-8."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


async def _invalid(request: Request, exc: Exception) -> Response:
    """FastAPI's 422 for a request that does not validate (same body), safe for any input."""
    assert isinstance(exc, RequestValidationError)  # noqa: S101 - registered for it
    return _AsciiJSON({"detail": jsonable_encoder(exc.errors())}, status_code=422)


async def _unstorable(request: Request, exc: Exception) -> Response:
    """An admin request whose values the database refuses (out of range, too long, a NUL in
    PostgreSQL text): 422 with the database's one-line reason; the unit of work rolled back."""
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    log.warning("%s %s: the database refused a value: %s", request.method, request.url.path, reason)
    return JSONResponse({"detail": f"a value cannot be stored: {reason}"}, status_code=422)


#: What SQLAlchemy raises when the database cannot be reached or lost the connection (a
#: refused or timed-out connect, a connection the server or network dropped, an
#: exhausted pool, SQLite's "database is locked"): answered 503, to retry.
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,
)
#: ``Retry-After`` (seconds) of the 503 while the database is unavailable.
RETRY_AFTER_SECONDS = 5


async def _database_unavailable(request: Request, exc: Exception) -> Response:
    """A request that met an unreachable database: 503 with a JSON body and ``Retry-After``
    (the unit of work rolled back; ``/ready`` says not ready until the database is back)."""
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    reason = f"{type(orig).__name__}: {lines[0]}" if lines else type(orig).__name__
    log.warning("%s %s: the database is unavailable: %s", request.method, request.url.path, reason)
    return JSONResponse(
        {"detail": "the database is unavailable; retry later"},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def app_from_env(service: str, settings_class: type[S], create: Callable[[S], FastAPI]) -> ASGIApp:
    """What each service's uvicorn factory does: JSON logs, ``create`` on the settings from
    ``FDO_<SERVICE>_...`` and ``--config``, this worker's connection limits, then freeze
    the start-up heap.

    With ``admin_port`` set the app is served through :class:`~fdo_server.planes.PlaneSplit`
    (``serve`` listens on that port too); without it, as it is, with a warning that the
    admin plane shares the device listener.
    """
    configure_json_logging(service)
    settings = load_settings(settings_class)
    app = create(settings)
    configure(
        EdgeLimits(
            max_connections=settings.max_connections,
            head_timeout=settings.header_timeout_seconds,
            body_timeout=settings.body_timeout_seconds,
        )
    )
    served: ASGIApp = app
    if settings.admin_port is not None:
        served = planes.PlaneSplit(app, settings.admin_port)
    else:
        variable = f"FDO_{service.upper()}_ADMIN_PORT"
        log.warning(
            "the admin plane (admin API, /ui, /docs, /metrics) shares the device listener: "
            "anyone who reaches the device port reaches it too; set %s (or serve --admin-port) "
            "to serve it on a listener of its own",
            variable,
        )
    freeze_startup_heap()
    return served
