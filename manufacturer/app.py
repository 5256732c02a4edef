"""The manufacturer FastAPI app: DI for devices, the voucher admin API for operators.

``POST /fdo/101/msg/{10..13}`` runs :class:`fdo.di.manufacturer.DIManufacturer`; each
message is one unit of work on the service database, and a finished DI stores the
zero-entry voucher with the device's serial and model (``on_done``, in the same
transaction as the last message). ``/api/v1`` is the admin API
(:mod:`manufacturer.admin_api`). ``app_from_env`` is the uvicorn factory; a worker that
serves only devices (``serve --admin-process``) runs :func:`create_device_app`, the same
DI without a web framework (:mod:`fdo_server.device_app`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

from fdo.crypto import key_kind
from fdo.di.manufacturer import DIManufacturer
from fdo_server import planes, service
from fdo_server.body_limit import RouteLimit
from fdo_server.clock import utc_now
from fdo_server.service import device_app, open_database, service_app
from fdo_server.sql import Sql, require_durable
from manufacturer.material import ManufacturerMaterial, load_material
from transport.dispatch import AnyServerMachine, ProtocolHandler
from transport.server import ASGIApp

if TYPE_CHECKING:
    from fastapi import FastAPI

    from fdo_server.device_app import DeviceApp
    from manufacturer.settings import ManufacturerSettings

A = TypeVar("A", "FastAPI", "DeviceApp")

#: The voucher row a finished DI stores (the table of manufacturer.tables.Voucher).
_INSERT_VOUCHER = Sql(
    "INSERT INTO mfg_voucher (guid, serial, model, key_kind, created_at, raw, num_entries) "
    "VALUES (:guid, :serial, :model, :key_kind, :created_at, :raw, :num_entries)"
)


def di_handler(material: ManufacturerMaterial) -> ProtocolHandler:
    """DI machines over ``material``; a finished DI stores its voucher."""

    def now() -> datetime:
        return datetime.now(UTC)

    def store_voucher(machine: AnyServerMachine) -> None:
        if not isinstance(machine, DIManufacturer) or machine.voucher is None:
            raise TypeError("DI finished without a voucher")
        require_durable()  # the device keeps the credential DI.Done confirms: so must we the voucher
        voucher, info = machine.voucher, machine.mfg_info
        serial = (info.serial if info is not None else None) or voucher.header.device_info
        _INSERT_VOUCHER.rowcount(
            {
                "guid": voucher.guid.value,
                "serial": serial,
                "model": voucher.header.device_info,
                "key_kind": key_kind(voucher.header.public_key.key),
                "created_at": utc_now(),
                "raw": voucher.encode(),
                "num_entries": 0,
            },
        )

    return ProtocolHandler(
        new=lambda: DIManufacturer(material, now=now()),
        restore=lambda state: DIManufacturer.from_state(state, material, now=now()),
        on_done=store_voucher,
    )


def create_app(settings: ManufacturerSettings | None = None) -> FastAPI:
    """The manufacturer app; reads its keys and opens its database now.

    Raises SettingsError if a setting is unusable, SchemaError if the database is not at head.
    """
    app = _build(service_app, settings)
    if planes.serves_admin():  # a device-plane worker never imports the admin API
        from manufacturer import admin_api

        app.include_router(admin_api.router, prefix="/api/v1")
    return app


def create_device_app(settings: ManufacturerSettings | None = None) -> DeviceApp:
    """The device plane of :func:`create_app` without a web framework (DI, ``/health``,
    ``/ready``): what a worker that serves only devices runs."""
    return _build(device_app, settings)


def _build(make: Callable[..., A], settings: ManufacturerSettings | None) -> A:
    """DI served by ``make`` (:func:`~fdo_server.service.service_app` or
    :func:`~fdo_server.service.device_app`), with the keys in ``state.material``."""
    settings = settings if settings is not None else settings_class()()
    material = load_material(settings)
    database = open_database("manufacturer", settings.database_url)
    app = make(
        "manufacturer",
        settings,
        database,
        {10: di_handler(material)},
        keys_loaded=lambda: bool(material.keys),
        body_limits=(RouteLimit("POST", "/api/v1/vouchers/extend", settings.max_voucher_extend_body),),
        networks={10: settings.di_networks},
    )
    app.state.material = material
    return app


def app_from_env() -> ASGIApp:
    """uvicorn factory: settings from the environment."""
    return service.app_from_env("manufacturer", settings_class, create_app, create_device_app)


def settings_class() -> type[ManufacturerSettings]:
    """The manufacturer's settings class (pydantic), imported when first needed."""
    from manufacturer.settings import ManufacturerSettings

    return ManufacturerSettings
