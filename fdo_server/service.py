"""What the three services' apps have in common (manufacturer, rendezvous, owner).

* :func:`open_engine`: the service's database, refused unless its schema is at head;
* :func:`service_app`: the FastAPI app around the FDO router: one unit of work per
  message, sessions in the database, metrics, ``/health``, ``/ready`` and ``/metrics``,
  a 422 for a value the database refuses, and the engine disposed at shutdown (after
  the service's own background work stops);
* :func:`app_from_env`: the uvicorn factory body: JSON logs, settings from the
  environment and ``--config``, the start-up heap frozen.

The settings every service has are :class:`fdo_server.config.ServiceSettings`. Each
service's ``app.py`` keeps only what is its own: its protocol handlers, what a
finished protocol stores, its admin routers and background work.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext
from datetime import timedelta
from typing import Any, TypeVar

from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError

from fdo_server import metrics as observability
from fdo_server.clock import Clock, utc_now
from fdo_server.config import ServiceSettings, load_settings
from fdo_server.db import inline_messages, make_engine, message_scope
from fdo_server.heap import freeze_startup_heap
from fdo_server.logs import configure_json_logging
from fdo_server.migrate import require_current
from fdo_server.sessions import SQLSessionStore
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
) -> FastAPI:
    """The FastAPI app of ``service`` serving ``handlers`` (keyed by first message type).

    ``clock`` (aware UTC) decides session expiry. ``background`` is entered when the app
    starts and left when it stops, before the engine is disposed (the owner's TO0
    scheduler). ``keys_loaded`` is part of ``/ready``. ``app.state`` holds ``settings``,
    ``engine`` and ``metrics``; the caller adds its admin routers.
    """

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            with background():
                yield
        finally:
            engine.dispose()

    app = FastAPI(title=f"FDO {service}", lifespan=lifespan, telemetry=NO_TELEMETRY)
    app.state.settings = settings
    app.state.engine = engine
    app.state.metrics = metrics = observability.ServiceMetrics(service)
    mount_fdo(
        app,
        fdo_router(
            handlers,
            SQLSessionStore(clock),
            max_body=settings.max_body,
            session_ttl=timedelta(seconds=settings.session_ttl_seconds),
            clock=clock,
            scope=lambda: message_scope(engine),
            observer=metrics.observe,
            inline=inline_messages(settings.database_url),
        ),
    )
    observability.install(app, metrics, database_url=settings.database_url, keys_loaded=keys_loaded)
    app.add_exception_handler(DataError, _unstorable)
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


def app_from_env(service: str, settings_class: type[S], create: Callable[[S], FastAPI]) -> FastAPI:
    """What each service's uvicorn factory does: JSON logs, ``create`` on the settings from
    ``FDO_<SERVICE>_...`` and ``--config``, then freeze the start-up heap."""
    configure_json_logging(service)
    app = create(load_settings(settings_class))
    freeze_startup_heap()
    return app
