"""The rendezvous FastAPI application (architecture: "rendezvous", spec §5.3-5.4).

``POST /fdo/101/msg/{20..23,30..33}`` serves TO0 and TO1 through
:func:`transport.server.fdo_router`: each message runs in one database transaction
(:func:`fdo_server.sql.message_scope`), sessions are rows (:class:`SQLSessionStore`), so
any replica can serve any message. A finished TO0 is checked against its GUID's pin
(:mod:`rendezvous.pins`: nobody takes over a device's entry) and upserts the
registration; TO1 hands out the live one. ``/health`` and an admin JSON API sit
alongside. Empty trust lists (any manufacturer, any owner) get a warning at start.

Settings and the database are opened in :func:`create_app`, never at import time;
:func:`app_from_env` is the factory uvicorn calls in each worker. A worker that serves
only devices (``serve --admin-process``) runs :func:`create_device_app` instead: the same
device plane without a web framework (:mod:`fdo_server.device_app`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from fdo.to0.rendezvous import TO0Rendezvous
from fdo.to1.rendezvous import TO1Rendezvous
from fdo_server import planes, service
from fdo_server.clock import Clock, utc_now
from fdo_server.service import device_app, open_database, service_app
from fdo_server.sql import require_durable
from rendezvous.pins import RefusalReporter, enforce_pin
from rendezvous.store import RegistrationLookup, RendezvousPolicy, save_registration
from rendezvous.trust import manufacturer_key_spkis, owner_key_spkis
from transport.dispatch import AnyServerMachine, ProtocolHandler
from transport.server import ASGIApp

if TYPE_CHECKING:
    from fastapi import FastAPI

    from fdo_server.device_app import DeviceApp
    from rendezvous.settings import RendezvousSettings

A = TypeVar("A", "FastAPI", "DeviceApp")

log = logging.getLogger("rendezvous")


def create_app(settings: RendezvousSettings | None = None, *, clock: Clock = utc_now) -> FastAPI:
    """A rendezvous app on ``settings`` (default: from the environment).

    ``clock`` (aware UTC) decides registration and session expiry; tests pass their own.
    """
    app = _build(service_app, settings, clock)
    if planes.serves_admin():  # a device-plane worker never imports the admin API
        from rendezvous.admin_api import admin_router

        app.include_router(admin_router(clock))
    return app


def create_device_app(settings: RendezvousSettings | None = None, *, clock: Clock = utc_now) -> DeviceApp:
    """The device plane of :func:`create_app` without a web framework (TO0 and TO1,
    ``/health``, ``/ready``): what a worker that serves only devices runs."""
    return _build(device_app, settings, clock)


def _build(make: Callable[..., A], settings: RendezvousSettings | None, clock: Clock) -> A:
    """The rendezvous's FDO handlers served by ``make`` (:func:`~fdo_server.service.service_app`
    or :func:`~fdo_server.service.device_app`), refusals reported to its metrics."""
    settings = settings if settings is not None else settings_class()()
    database = open_database("rendezvous", settings.database_url)  # SchemaError unless at head
    policy = RendezvousPolicy(
        max_wait_seconds=settings.max_wait_seconds,
        owner_keys=owner_key_spkis(settings),
        manufacturer_keys=manufacturer_key_spkis(settings),
    )
    warn_if_untrusting(settings)
    lookup = RegistrationLookup(clock)

    def register(machine: AnyServerMachine) -> None:
        if not isinstance(machine, TO0Rendezvous) or machine.registration is None:
            raise TypeError("TO0 finished without a registration")
        now = clock()
        require_durable()  # the owner acts on TO0.AcceptOwner: the registration must last
        enforce_pin(machine.registration, now)  # PinRefusedError rolls the message back
        save_registration(machine.registration, now)

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
    app = make(
        "rendezvous",
        settings,
        database,
        handlers,
        clock=clock,
        rates={20: (settings.to0_rate, settings.to0_burst)},  # TO0.Hello: owners, not devices
    )
    app.state.metrics.add_listener(RefusalReporter(app.state.metrics))
    return app


def warn_if_untrusting(settings: RendezvousSettings) -> None:
    """Log one warning when a trust list is empty (the production setting lists keys)."""
    empty = [
        (setting, who)
        for setting, who, paths in (
            ("FDO_RENDEZVOUS_TRUSTED_MANUFACTURER_KEYS", "manufacturer", settings.trusted_manufacturer_keys),
            ("FDO_RENDEZVOUS_TRUSTED_OWNER_KEYS", "owner", settings.trusted_owner_keys),
        )
        if not paths
    ]
    if empty:
        log.warning(
            "%s empty: vouchers of any %s may register devices here (each GUID stays pinned to its "
            "first registration); list the keys you trust in production (docs/deploy.md)",
            " and ".join(s for s, _ in empty) + (" are" if len(empty) > 1 else " is"),
            " or ".join(w for _, w in empty),
        )


def app_from_env() -> ASGIApp:
    """The uvicorn factory: settings from ``FDO_RENDEZVOUS_*``."""
    return service.app_from_env("rendezvous", settings_class, create_app, create_device_app)


def settings_class() -> type[RendezvousSettings]:
    """The rendezvous's settings class (pydantic), imported when first needed."""
    from rendezvous.settings import RendezvousSettings

    return RendezvousSettings
