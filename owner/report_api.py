"""The device-facing JSON routes: ``POST /device/v1/checkin`` and ``/device/v1/report``.

Both sit on the device plane (the same address as TO2, docs/deploy.md) and are
authenticated by the per-device check-in secret the device received in TO2
(:mod:`owner.checkin`), sent as ``Authorization: Bearer``; an admin token is never
accepted (it is not a check-in secret). Every refusal is 401 and records nothing.

* **Check-in** (``fdo device check-in``, ``fdo device agent``): the device says what
  it runs; the owner stores it, rotates the secret (``next_secret``), and answers the
  desired revision with its assignment when it differs from what the device holds,
  otherwise ``"action": "none"`` with the interval.
* **Report** (``fdo device report``, after the reboot): the booted digest, the revision
  and a health result; a digest other than the assigned one, or an unhealthy report,
  marks the device failed, never done. ``POST /api/v1/report`` is kept as a deprecated
  alias for devices onboarded before the move (their report tokens still work).

Both confirm the device's current credential (:func:`owner.lifecycle.confirm_guid`).

The routes here are declared for the API documentation and serve where the endpoint is
not mounted; in the owner app, :class:`owner.checkin_endpoint.DeviceEndpoint` serves
all three in front of the app's middleware and routing, with the same answers. The
models and the database work of each (:func:`~owner.device_api.answer_checkin`,
:func:`~owner.device_api.answer_report`) are in :mod:`owner.device_api`, which both
use and which imports no web framework.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, Security
from fastapi.security import HTTPBearer

from fdo_server.api_docs import errors
from owner.device_api import (
    CheckinIn,
    CheckinOut,
    ReportIn,
    ReportOut,
    answer_checkin,
    answer_report,
)

_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}
#: The device's check-in secret as OpenAPI declares it; the routes check it themselves.
DEVICE_CREDENTIAL = HTTPBearer(
    scheme_name="DeviceCredential",
    bearerFormat="fdc1.<device id>.<secret>",
    description="The check-in secret the device received in TO2 (docs/checkin.md); never an admin token.",
    auto_error=False,
)
#: What every device route declares: its credential, and the answers to a refused one.
_DEVICE_ROUTE: dict[str, Any] = {
    "dependencies": [Security(DEVICE_CREDENTIAL)],
    "responses": errors(401, 422),
}


def _bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(401, "missing device credential", headers=_UNAUTHORIZED)
    return token.strip()


def _refused() -> HTTPException:
    return HTTPException(401, "device credential refused", headers=_UNAUTHORIZED)


def _report(body: ReportIn, request: Request) -> ReportOut:
    state = request.app.state
    answer = answer_report(state.engine, _bearer(request), body, now=state.clock())
    if answer is None:
        raise _refused()
    return answer


def device_router() -> APIRouter:
    """The routes under ``/device/v1``."""
    router = APIRouter(tags=["device"], **_DEVICE_ROUTE)

    @router.post("/checkin", response_model=CheckinOut, response_model_exclude_none=True)
    def checkin_route(body: CheckinIn, request: Request) -> CheckinOut:
        """A device says what it runs and learns what it should run.

        Served by :class:`owner.checkin_endpoint.DeviceEndpoint` in front of the app's
        routing; this route documents it (and serves it where the endpoint is not mounted).
        """
        state = request.app.state
        answer = answer_checkin(
            state.engine,
            _bearer(request),
            body,
            now=state.clock(),
            interval=int(state.settings.checkin_interval_seconds),
            wake=state.rollouts.wake if getattr(state, "rollouts", None) else None,
        )
        if answer is None:
            raise _refused()
        return answer

    @router.post("/report", response_model=ReportOut)
    def report(body: ReportIn, request: Request) -> ReportOut:
        """The device's report after its reboot.

        Served by :class:`owner.checkin_endpoint.DeviceEndpoint` in front of the app's
        routing; this route documents it (and serves it where the endpoint is not mounted).
        """
        return _report(body, request)

    return router


def report_router() -> APIRouter:
    """``POST /api/v1/report``: the deprecated alias of ``/device/v1/report``."""
    router = APIRouter(tags=["device"], **_DEVICE_ROUTE)

    @router.post("/report", response_model=ReportOut, deprecated=True)
    def report(body: ReportIn, request: Request) -> ReportOut:
        """Deprecated: use ``POST /device/v1/report``.

        Served by :class:`owner.checkin_endpoint.DeviceEndpoint`, as that route is.
        """
        return _report(body, request)

    return router


__all__: list[Any] = [
    "CheckinIn",
    "CheckinOut",
    "ReportIn",
    "ReportOut",
    "answer_checkin",
    "answer_report",
    "device_router",
    "report_router",
]
