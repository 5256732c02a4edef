"""What the three services' apps have in common (manufacturer, rendezvous, owner).

* :func:`open_database`: the service's database, refused unless its schema is at head;
* :func:`service_app`: the FastAPI app around the FDO router: one unit of work per
  message, sessions in the database, metrics, ``/health``, ``/ready`` and ``/metrics``,
  a 422 for a value the database refuses, a 503 with ``Retry-After`` while the
  database is unreachable, request bodies limited (:mod:`fdo_server.body_limit`),
  and the database's connections closed at shutdown (after
  the service's own background work stops);
* :func:`device_app`: the same service's device plane without a web framework
  (:class:`fdo_server.device_app.DeviceApp`): what a worker that serves only devices
  runs (``serve --admin-process``), answering every device-plane request as the FastAPI
  app does;
* :func:`app_from_env`: the uvicorn factory body: JSON logs, settings from the
  environment and ``--config``, the connection limits and timeouts of this worker
  (:func:`fdo_server.http_protocol.configure`), the app split into its device and admin
  planes when an admin listener is set (:mod:`fdo_server.planes`), the device-plane app
  in a process that serves only devices, the start-up heap frozen.

This module imports no web framework: FastAPI is loaded by :func:`service_app` only, so
a device-plane worker never loads it (``tests/test_import_isolation.py``).

Every app also sweeps its expired protocol sessions (:mod:`fdo_server.sweep`) and
bounds per client address what strangers may ask of it (:mod:`fdo_server.ratelimit`):
the first message of each of its protocols, plus what the caller adds in
``guarded``.

The settings every service has are :class:`fdo_server.config.ServiceSettings`. Each
service's ``app.py`` keeps only what is its own: its protocol handlers, what a
finished protocol stores, its admin routers and background work.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar, Unpack

from fdo_server import metrics as observability
from fdo_server import planes
from fdo_server.body_limit import RouteLimit
from fdo_server.clock import Clock, utc_now
from fdo_server.handed import handed
from fdo_server.heap import freeze_startup_heap
from fdo_server.http_protocol import EdgeLimits, configure, configure_fast
from fdo_server.logs import configure_json_logging
from fdo_server.ratelimit import EdgeGuard, EdgeRules, GuardedRoute, first_message_routes
from fdo_server.schema_head import at_head
from fdo_server.sessions import SQLSessionStore
from fdo_server.sql import Database, inline_messages, message_scope
from fdo_server.sweep import SessionSweeper
from transport.dispatch import ProtocolHandler
from transport.server import ASGIApp, FdoEndpoint, fdo_endpoint_for

if TYPE_CHECKING:
    from fastapi import FastAPI

    from fdo_server.config import IPNetwork, ServiceSettings
    from fdo_server.device_app import DeviceApp
    from fdo_server.fast_messages import FastMessages

log = logging.getLogger(__name__)
S = TypeVar("S", bound="ServiceSettings")


def open_database(service: str, database_url: str) -> Database:
    """The service's database (a pool of driver connections; the admin plane's SQLAlchemy
    engine is its :meth:`~fdo_server.sql.Database.engine`);
    :class:`~fdo_server.migrate.SchemaError` unless at head.

    A database at head is shown so with one SELECT, without SQLAlchemy or Alembic; only
    one that is not (or an in-memory one, migrated here) loads :mod:`fdo_server.migrate`."""
    database = Database(database_url)
    try:
        if not at_head(database, service):
            from fdo_server.migrate import require_current

            require_current(database, service)
    except BaseException:
        database.dispose()
        raise
    return database


class ServeOptions(TypedDict, total=False):
    """What :func:`service_app` and :func:`device_app` take beside the service, its
    settings, database and handlers (the defaults are :class:`_Served`'s)."""

    scope: Callable[[], AbstractContextManager[object]] | None
    clock: Clock
    keys_loaded: Callable[[], bool]
    background: Callable[[], AbstractContextManager[object]]
    body_limits: Iterable[RouteLimit]
    networks: Mapping[int, Sequence[IPNetwork]] | None
    rates: Mapping[int, tuple[float, int]] | None
    guarded: Sequence[GuardedRoute]


@dataclass(frozen=True)
class _Served:
    """One service's device plane as both apps serve it (see :func:`service_app`)."""

    service: str
    settings: ServiceSettings
    database: Database
    handlers: Mapping[int, ProtocolHandler]
    #: Each FDO message's unit of work (default: :func:`fdo_server.sql.message_scope`).
    scope: Callable[[], AbstractContextManager[object]] | None = None
    clock: Clock = utc_now
    keys_loaded: Callable[[], bool] = lambda: True
    background: Callable[[], AbstractContextManager[object]] = nullcontext
    body_limits: Iterable[RouteLimit] = ()
    networks: Mapping[int, Sequence[IPNetwork]] | None = None
    rates: Mapping[int, tuple[float, int]] | None = None
    guarded: Sequence[GuardedRoute] = ()


@dataclass
class _Core:
    """What both apps of a service serve the device plane with (:func:`_core`)."""

    metrics: observability.ServiceMetrics
    sweeper: SessionSweeper
    endpoint: FdoEndpoint
    rules: EdgeRules  # the edge guard's, shared with the FDO fast path

    def fast(self) -> FastMessages:
        """The FDO messages the HTTP protocol may answer itself (:mod:`fdo_server.fast_messages`)."""
        from fdo_server.fast_messages import FastMessages

        return FastMessages(self.endpoint, self.rules)

    def lifespan(self, served: _Served) -> Callable[[], AbstractAsyncContextManager[None]]:
        """Start the session sweep and ``background`` (the owner's TO0 scheduler) with the
        app; at stop, stop them, then dispose of the database's connections."""

        @asynccontextmanager
        async def lifespan() -> AsyncIterator[None]:
            try:
                async with self.sweeper:
                    with served.background():
                        yield
            finally:
                served.database.dispose()

        return lifespan


def _core(served: _Served) -> _Core:
    """The metrics, the session sweep, the FDO endpoint and the edge guard's rules."""
    settings, clock = served.settings, served.clock
    metrics = observability.ServiceMetrics(served.service)
    sweeper = SessionSweeper(served.database, metrics, settings.session_sweep_seconds, clock)
    database = served.database
    endpoint = fdo_endpoint_for(
        served.handlers,
        SQLSessionStore(clock, on_create=sweeper.notice),
        max_body=settings.max_body,
        session_ttl=timedelta(seconds=settings.session_ttl_seconds),
        clock=clock,
        scope=served.scope or (lambda: message_scope(database)),
        observer=metrics.observe,
        inline=inline_messages(settings.database_url),
    )
    rules = EdgeRules(
        service=served.service,
        routes=[
            *first_message_routes(
                served.handlers,
                rate=settings.first_message_rate,
                burst=settings.first_message_burst,
                networks=dict(served.networks or {}),
                rates=served.rates,
            ),
            *served.guarded,
        ],
        trusted_proxies=settings.trusted_proxies,
        metrics=metrics,
        max_addresses=settings.rate_limit_addresses,
    )
    return _Core(metrics, sweeper, endpoint, rules)


def service_app(
    service: str,
    settings: ServiceSettings,
    database: Database,
    handlers: Mapping[int, ProtocolHandler],
    **options: Unpack[ServeOptions],
) -> FastAPI:
    """The FastAPI app of ``service`` serving ``handlers`` (keyed by first message type).

    ``clock`` (aware UTC) decides session expiry. ``background`` is entered when the app
    starts and left when it stops, before the database is disposed (the owner's TO0
    scheduler); the session sweep runs beside it. ``keys_loaded`` is part of ``/ready``.
    Every request but an FDO message has its body limited to ``settings.max_request_body``,
    or to its route's limit in ``body_limits`` (:mod:`fdo_server.body_limit`). Each first
    message is rate limited per client address (``first_message_rate`` and ``_burst``,
    or the ``(rate, burst)`` of its type in ``rates``: the rendezvous's TO0.Hello)
    and, when ``networks`` lists some for its type, refused to addresses outside them;
    ``guarded`` adds other routes (a sign-in form). ``app.state`` holds ``settings``,
    ``database``, its ``engine`` and ``metrics``; the caller adds its admin routers where
    :func:`fdo_server.planes.serves_admin`, as the API documentation and ``/metrics`` are.
    """
    from fastapi import FastAPI
    from starlette.routing import Route

    from fdo_server import probes, web_errors
    from fdo_server.body_limit import BodyLimit
    from transport.server import MSG_PATH, NO_TELEMETRY, FdoFastPath

    served = _Served(service, settings, database, handlers, **options)
    core = _core(served)
    started = core.lifespan(served)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with started():
            yield

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
    app.state.database = database
    app.state.engine = database.engine()
    app.state.metrics = core.metrics
    # Added before FdoFastPath, so FdoFastPath stays outermost: FDO messages keep their own
    # limit (max_body, answered with an ErrorMessage) and never pass through BodyLimit.
    app.add_middleware(BodyLimit, default=settings.max_request_body, routes=tuple(served.body_limits))
    planes.device_paths(app)  # none yet: the FDO routes are the device plane by their prefix
    # The route documents nothing (no schema) and answers what FdoFastPath does not take
    # (a GET: 405); FdoFastPath serves every FDO message in front of the app's routing.
    app.router.routes.append(
        Route(MSG_PATH + "{msg_type}", core.endpoint, methods=["POST"], include_in_schema=False)
    )
    app.add_middleware(FdoFastPath, endpoint=core.endpoint)
    probes.install(
        app,
        core.metrics,
        database_url=settings.database_url,
        keys_loaded=served.keys_loaded,
        exposition=admin,
    )
    # Added after FdoFastPath, so it wraps it: it sees every request first.
    app.add_middleware(EdgeGuard, rules=core.rules)
    app.state.fdo_fast = core.fast()
    web_errors.install(app)
    return app


def device_app(
    service: str,
    settings: ServiceSettings,
    database: Database,
    handlers: Mapping[int, ProtocolHandler],
    **options: Unpack[ServeOptions],
) -> DeviceApp:
    """The device plane of the app :func:`service_app` makes from the same arguments, as a
    bare ASGI app (:class:`~fdo_server.device_app.DeviceApp`): the FDO messages behind the
    same edge guard, ``/health`` and ``/ready``, the same body limits, the same lifespan
    (session sweep, ``background``, the database disposed at stop); ``state`` holds
    ``settings``, ``database`` and ``metrics``. The caller adds its other device routes as
    middleware (:meth:`~fdo_server.device_app.DeviceApp.add_middleware`)."""
    from fdo_server.device_app import DeviceApp
    from fdo_server.readiness import readiness_probe

    served = _Served(service, settings, database, handlers, **options)
    core = _core(served)
    app = DeviceApp(
        endpoint=core.endpoint,
        lifespan=core.lifespan(served),
        probe=readiness_probe(settings.database_url),
        keys_loaded=served.keys_loaded,
        max_request_body=settings.max_request_body,
        body_limits=tuple(served.body_limits),
    )
    app.state.settings = settings
    app.state.database = database
    app.state.metrics = core.metrics
    app.add_middleware(EdgeGuard, rules=core.rules)
    app.state.fdo_fast = core.fast()
    return app


def app_from_env(
    service: str,
    settings_class: Callable[[], type[S]],
    create: Callable[[S], FastAPI],
    create_device: Callable[[S], DeviceApp] | None = None,
) -> ASGIApp:
    """What each service's uvicorn factory does: JSON logs, ``create`` on the settings from
    ``FDO_<SERVICE>_...`` and ``--config`` (``create_device`` instead in a process that
    serves only the device plane, :func:`fdo_server.planes.serving_plane`), this worker's
    connection limits and the FDO messages its HTTP protocol answers itself
    (:mod:`fdo_server.fast_messages`), then freeze the start-up heap.

    ``settings_class`` gives the service's settings class, imported only when it is used:
    a device-plane process that ``serve`` handed its validated settings
    (:mod:`fdo_server.handed`) never loads it, nor pydantic.

    With ``admin_port`` set the app is served through :class:`~fdo_server.planes.PlaneSplit`
    (``serve`` listens on that port too); without it, as it is, with a warning that the
    admin plane shares the device listener.
    """
    configure_json_logging(service)
    app: FastAPI | DeviceApp
    if create_device is not None and planes.serving_plane() == "device":
        given: Any = handed(service)  # the settings class's names and values
        settings: S = given if given is not None else _load(settings_class)
        app = create_device(settings)
    else:
        settings = _load(settings_class)
        app = create(settings)
    configure(
        EdgeLimits(
            max_connections=settings.max_connections,
            head_timeout=settings.header_timeout_seconds,
            body_timeout=settings.body_timeout_seconds,
        )
    )
    fast: FastMessages = app.state.fdo_fast
    fast.admin_port = settings.admin_port
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
    configure_fast(served, fast)
    freeze_startup_heap()
    return served


def _load(settings_class: Callable[[], type[S]]) -> S:
    from fdo_server.config import load_settings

    return load_settings(settings_class())
