"""The owner service as a FastAPI app: TO2 server, TO0 scheduler thread, admin API.

``create_app(settings)`` checks the settings (:func:`owner.settings.load_config`), opens
the database and checks its schema is current; the lifespan starts the TO0 scheduler thread
(unless ``to0_enabled`` is off) and the rollout runner (:mod:`owner.rollout_runner`) and
stops them at shutdown. ``POST /fdo/101/msg/{60..71}``
serves TO2 with sessions in the database; when a TO2 completes, :func:`record_done`
stores the replacement voucher (:mod:`owner.lifecycle`) and an onboarding record in the
same transaction.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from fdo.errors import InternalError
from fdo.serviceinfo import CommandOwner, DownloadOwner, UploadOwner
from fdo.serviceinfo.bootc import BootcOwner
from fdo.to2.owner import TO2Owner, TO2OwnerStore
from fdo.voucher import OwnershipVoucher
from fdo_server import metrics as observability
from fdo_server import planes, service
from fdo_server.body_limit import RouteLimit
from fdo_server.clock import Clock, utc_now
from fdo_server.planes import include_device_router
from fdo_server.ratelimit import GuardedRoute, http_refusal
from fdo_server.service import device_app, open_database, service_app
from fdo_server.sql import Sql, inline_messages, require_durable
from owner import groups, lifecycle
from owner.checkin_endpoint import DeviceEndpoint
from owner.config import OwnerConfig, load_config
from owner.delivery import delivery_of
from owner.rollout_runner import RolloutRunner
from owner.store import OwnerStore
from owner.to0 import To0Thread
from transport.dispatch import AnyServerMachine, ProtocolHandler
from transport.server import ASGIApp

if TYPE_CHECKING:
    from fastapi import FastAPI
    from sqlalchemy.engine import Engine

    from fdo_server.device_app import DeviceApp
    from owner.settings import OwnerSettings

A = TypeVar("A", "FastAPI", "DeviceApp")
#: The owner's device routes besides the FDO messages (method POST), served by
#: :class:`owner.checkin_endpoint.DeviceEndpoint`.
DEVICE_ROUTES = ("/device/v1/checkin", "/device/v1/report", "/api/v1/report")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def module_results(machine: TO2Owner) -> list[dict[str, Any]]:
    """What each ServiceInfo module reported, JSON-ready (file contents left out)."""
    if machine.service_info is None:
        return []
    out: list[dict[str, Any]] = []
    for module, status in machine.service_info.modules:
        item: dict[str, Any] = {"module": module.name, "status": status.name.lower()}
        if isinstance(module, DownloadOwner):
            item.update(name=module.filename, length=len(module.data), result=module.result, ok=module.ok)
        elif isinstance(module, CommandOwner):
            item["command"] = [module.command, *module.args]
            if module.result is not None:
                item.update(
                    exitcode=module.result.exitcode,
                    stdout=module.result.stdout[:4096].decode("utf-8", "replace"),
                    stderr=module.result.stderr[:4096].decode("utf-8", "replace"),
                )
        elif isinstance(module, UploadOwner):
            item["name"] = module.filename
        elif isinstance(module, BootcOwner):
            image = module.assignment.image
            item.update(
                image=None if image is None else image.ref,
                accepted=module.accepted,
                current=None if module.status is None else module.status.digest,
                results=[{"item": r.label, "ok": r.ok, "error": r.error} for r in module.results.values()],
            )
        out.append(item)
    return out


# ``devmod`` and ``modules`` as their JSON text (json.dumps).
_INSERT_ONBOARDING = Sql(
    "INSERT INTO owner_device_onboarding (guid, new_guid, voucher_id, devmod, modules, completed_at) "
    "VALUES (:guid, :new_guid, :voucher_id, :devmod, :modules, :completed_at)"
)


def held_by_owner(voucher: OwnershipVoucher, store: TO2OwnerStore) -> OwnershipVoucher:
    """The replacement voucher extended to the owner's own key (the one it already names).

    TO2 leaves the owner a voucher with no entries whose OVPubKey is Owner2Key (reference
    §8); a voucher must be extended before it can be registered or used in TO2 again
    (§4.3), so the owner signs one entry from Owner2Key to itself. Devices verify it as
    any chain: the entry is signed by OVPubKey and names the key that signs TO2.
    """
    key = store.private_key(voucher.owner_public_key)
    if key is None:  # TO2 signed TO2.SetupDevice with this very key
        raise InternalError("the owner does not hold the key of the replacement voucher")
    return voucher.extend(key, voucher.owner_public_key)


def record_done(machine: AnyServerMachine, clock: Clock, *, register_to0: bool = True) -> None:
    """``on_done`` of TO2: store the replacement voucher (:func:`owner.lifecycle.record_replacement`,
    which refuses a Done another session of the device beat) and the onboarding record."""
    assert isinstance(machine, TO2Owner) and machine.guid is not None  # noqa: S101 - router contract
    require_durable()  # the device takes the new credential on TO2.Done2: the voucher must last
    now = clock()
    new = None if machine.new_voucher is None else held_by_owner(machine.new_voucher, machine.store)
    lifecycle.record_replacement(machine.replacement_basis, new, now=now, register_to0=register_to0)
    old_id = lifecycle.basis_voucher_id(machine.replacement_basis)
    new_guid = None if new is None else new.guid.value
    devmod = groups.devmod_dict(machine.devmod)
    if machine.devmod is not None:
        device = groups.device_row(machine.guid)
        assigned = None if device is None else device["assigned_revision_id"]
        assignment = None if assigned is None else groups.revision_assignment(assigned)
        modules = [] if machine.service_info is None else machine.service_info.modules
        delivery = delivery_of(assignment, machine.devmod, modules)
        revision = None if assignment is None else assignment.revision
        groups.record_onboarding(
            machine.guid, new_guid, machine.devmod, revision, now=now, device=device, delivery=delivery
        )
    _INSERT_ONBOARDING.rowcount(
        {
            "guid": machine.guid.value,
            "new_guid": new_guid,
            "voucher_id": old_id,
            "devmod": json.dumps(devmod),
            "modules": json.dumps(module_results(machine)),
            "completed_at": now,
        }
    )


def body_limits(settings: OwnerSettings) -> tuple[RouteLimit, ...]:
    """The routes whose bodies may be larger than ``max_request_body``."""
    return (
        RouteLimit("POST", "/api/v1/vouchers", settings.max_voucher_import_body),
        RouteLimit("POST", "/api/v1/vouchers/extend", settings.max_voucher_extend_body),
        RouteLimit("POST", "/api/v1/groups/{name}/revisions", settings.max_revision_body),
        RouteLimit("POST", "/ui/vouchers", settings.max_voucher_import_body),
        RouteLimit("POST", "/ui/groups/{name}/revisions", settings.max_revision_body),
    )


def create_app(settings: OwnerSettings | None = None, *, clock: Clock | None = None) -> FastAPI:
    """The owner app; raises :class:`owner.settings.SettingsError` on a bad setting."""
    from owner.report_api import device_router, report_router

    app = _build(service_app, settings, clock)
    include_device_router(app, report_router(), prefix="/api/v1")
    include_device_router(app, device_router(), prefix="/device/v1")
    if planes.serves_admin():  # a device-plane worker never imports the admin stack
        app.state.engine = app.state.database.engine()  # the admin plane's ORM sessions
        add_admin_plane(app, app.state.config, app.state.engine, app.state.clock)
    _serve_device_routes(app)
    return app


def create_device_app(settings: OwnerSettings | None = None, *, clock: Clock | None = None) -> DeviceApp:
    """The device plane of :func:`create_app` without a web framework (TO2, check-in and
    report, ``/health``, ``/ready``): what a worker that serves only devices runs."""
    app = _build(device_app, settings, clock)
    for path in DEVICE_ROUTES:
        app.add_route(path, "POST")
    _serve_device_routes(app)
    return app


def _serve_device_routes(app: FastAPI | DeviceApp) -> None:
    """Check-in and report, outermost: they skip the app's middleware and routing (the
    FastAPI routes document them); the report keeps the body limit BodyLimit gives it."""
    state = app.state
    settings: OwnerSettings = state.settings
    app.add_middleware(
        DeviceEndpoint,
        database=state.database,
        clock=state.clock,
        interval=int(settings.checkin_interval_seconds),
        inline=inline_messages(settings.database_url),
        max_request_body=settings.max_request_body,
        wake=state.rollouts.wake,
    )


def _build(make: Callable[..., A], settings: OwnerSettings | None, clock: Clock | None) -> A:
    """TO2 served by ``make`` (:func:`~fdo_server.service.service_app` or
    :func:`~fdo_server.service.device_app`), with the TO0 scheduler and the rollout
    runner as its background work; ``state`` holds the config, the clock and the runner."""
    settings = settings or settings_class()()
    config: OwnerConfig = load_config(settings)
    now: Clock = clock or utc_now
    database = open_database("owner", settings.database_url)  # SchemaError unless at head
    store = OwnerStore(config, clock=now)

    rollouts = RolloutRunner(database, tick=settings.rollout_tick_seconds, clock=now)

    @contextmanager
    def background() -> Iterator[None]:
        thread = None
        if settings.to0_enabled:
            thread = To0Thread(database, config, worker_id=worker_name(), clock=now)
            thread.start()
        rollouts.start()
        try:
            yield
        finally:
            rollouts.stop()
            if thread is not None:
                thread.stop()

    handlers = {
        60: ProtocolHandler(
            new=lambda: TO2Owner(store),
            restore=lambda state: TO2Owner.from_state(state, store),
            on_done=lambda machine: record_done(machine, now, register_to0=settings.to0_replacements),
        )
    }
    app = make(
        "owner",
        settings,
        database,
        handlers,
        clock=now,
        keys_loaded=lambda: bool(config.keys),
        background=background,
        body_limits=body_limits(settings),
        guarded=[
            GuardedRoute(
                "ui/login",
                "POST",
                "/ui/login",
                http_refusal,
                rate=settings.login_rate,
                burst=settings.login_burst,
            )
        ],
    )
    app.state.config = config
    app.state.clock = now
    app.state.rollouts = rollouts
    return app


def add_admin_plane(app: FastAPI, config: OwnerConfig, engine: Engine, now: Clock) -> None:
    """The admin API, the status page (templates) and the TO0 gauges of ``/metrics``."""
    from owner.admin_api import admin_router
    from owner.admin_checkin import checkin_admin_router
    from owner.admin_groups import groups_router
    from owner.rollouts_api import rollouts_router
    from owner.web import core_router
    from owner.web_admin import admin_pages_router
    from owner.web_devices import devices_router
    from owner.web_groups import groups_router as web_groups_router
    from owner.web_rollouts import web_rollouts_router
    from owner.web_session import derive_secret

    app.state.ui_secret = derive_secret(config.keys)
    app.state.metrics.add_collector(observability.To0Gauges(engine, now))
    app.include_router(admin_router(), prefix="/api/v1")
    app.include_router(groups_router(), prefix="/api/v1")
    app.include_router(checkin_admin_router(), prefix="/api/v1")
    app.include_router(rollouts_router(), prefix="/api/v1")
    app.include_router(core_router())
    app.include_router(devices_router())
    app.include_router(web_groups_router())
    app.include_router(web_rollouts_router())
    app.include_router(admin_pages_router())


def app_from_env() -> ASGIApp:
    """Factory for ``uvicorn --factory`` (settings from ``FDO_OWNER_...``)."""
    return service.app_from_env("owner", settings_class, create_app, create_device_app)


def settings_class() -> type[OwnerSettings]:
    """The owner's settings class (pydantic), imported when first needed."""
    from owner.settings import OwnerSettings

    return OwnerSettings
