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

from fastapi import FastAPI

from fdo.to0.rendezvous import TO0Rendezvous
from fdo.to1.rendezvous import TO1Rendezvous
from fdo_server import service
from fdo_server.clock import Clock, utc_now
from fdo_server.service import open_engine, service_app
from rendezvous.admin_api import admin_router
from rendezvous.settings import RendezvousSettings
from rendezvous.store import RegistrationLookup, RendezvousPolicy, save_registration
from transport.dispatch import AnyServerMachine, ProtocolHandler


def create_app(settings: RendezvousSettings | None = None, *, clock: Clock = utc_now) -> FastAPI:
    """A rendezvous app on ``settings`` (default: from the environment).

    ``clock`` (aware UTC) decides registration and session expiry; tests pass their own.
    """
    settings = settings if settings is not None else RendezvousSettings()
    engine = open_engine("rendezvous", settings.database_url)  # SchemaError unless at head
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
    app = service_app("rendezvous", settings, engine, handlers, clock=clock)
    app.include_router(admin_router(clock))
    return app


def app_from_env() -> FastAPI:
    """The uvicorn factory: settings from ``FDO_RENDEZVOUS_*``."""
    return service.app_from_env("rendezvous", RendezvousSettings, create_app)
