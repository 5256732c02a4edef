"""The rendezvous FastAPI application (architecture: "rendezvous", spec §5.3-5.4).

``POST /fdo/101/msg/{20..23,30..33}`` serves TO0 and TO1 through
:func:`transport.server.fdo_router`: each message runs in one database transaction
(:func:`fdo_server.db.message_scope`), sessions are rows (:class:`SQLSessionStore`), so
any replica can serve any message. A finished TO0 upserts the registration; TO1 hands
out the live one. ``/health`` and an admin JSON API sit alongside.

Settings and the engine are made in :func:`create_app`, never at import time;
:func:`app_from_env` is the factory uvicorn calls in each worker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI

from fdo.to0.rendezvous import TO0Rendezvous
from fdo.to1.rendezvous import TO1Rendezvous
from fdo_server import metrics as observability
from fdo_server.config import load_settings
from fdo_server.db import inline_messages, make_engine, message_scope
from fdo_server.heap import freeze_startup_heap
from fdo_server.logs import configure_json_logging
from fdo_server.migrate import require_current
from fdo_server.sessions import SQLSessionStore
from rendezvous.admin_api import admin_router
from rendezvous.settings import RendezvousSettings
from rendezvous.store import Clock, RegistrationLookup, RendezvousPolicy, save_registration, utc_now
from transport.server import NO_TELEMETRY, AnyServerMachine, ProtocolHandler, fdo_router, mount_fdo


def create_app(settings: RendezvousSettings | None = None, *, clock: Clock = utc_now) -> FastAPI:
    """A rendezvous app on ``settings`` (default: from the environment).

    ``clock`` (aware UTC) decides registration and session expiry; tests pass their own.
    """
    settings = settings if settings is not None else RendezvousSettings()
    engine = make_engine(settings.database_url)
    try:
        require_current(engine, "rendezvous")  # SchemaError unless at head
    except BaseException:
        engine.dispose()
        raise
    policy = RendezvousPolicy(
        max_wait_seconds=settings.max_wait_seconds,
        owner_keys=settings.owner_key_spkis(),
        manufacturer_keys=settings.manufacturer_key_spkis(),
    )
    lookup = RegistrationLookup(clock)

    def register(machine: AnyServerMachine) -> None:
        if not isinstance(machine, TO0Rendezvous) or machine.registration is None:
            raise TypeError("TO0 finished without a registration")
        save_registration(machine.registration, clock())

    handlers = {
        20: ProtocolHandler(
            new=lambda: TO0Rendezvous(policy),
            restore=lambda state: TO0Rendezvous.from_state(state, policy),
            on_done=register,
        ),
        30: ProtocolHandler(
            new=lambda: TO1Rendezvous(lookup),
            restore=lambda state: TO1Rendezvous.from_state(state, lookup),
        ),
    }

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        engine.dispose()

    app = FastAPI(title="FDO rendezvous", lifespan=lifespan, telemetry=NO_TELEMETRY)
    app.state.settings = settings
    app.state.engine = engine
    app.state.metrics = metrics = observability.ServiceMetrics("rendezvous")
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
    app.include_router(admin_router(clock))
    observability.install(app, metrics, database_url=settings.database_url)

    return app


def app_from_env() -> FastAPI:
    """The uvicorn factory: settings from ``FDO_RENDEZVOUS_*``."""
    configure_json_logging("rendezvous")
    app = create_app(load_settings(RendezvousSettings))
    freeze_startup_heap()
    return app
