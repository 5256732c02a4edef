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
all three in front of the app's middleware and routing, with the same answers. Both
call the same database work (:func:`~owner.device_api.answer_checkin`,
:func:`~owner.device_api.answer_report`, which imports no web framework, pydantic or
ORM); the routes validate with the pydantic models of :mod:`owner.device_schemas`, the
endpoint with :mod:`owner.device_body`. A database error is answered as the app's
handlers answer SQLAlchemy's (:func:`fdo_server.device_app.database_error_answer`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, HTTPException, Request, Response, Security
from fastapi.security import HTTPBearer

from fdo_server.api_docs import errors
from fdo_server.device_app import database_error_answer
from owner.checkin import Observation
from owner.device_api import answer_checkin, answer_report
from owner.device_body import ReportBody
from owner.device_schemas import CheckinIn, CheckinOut, ReportIn, ReportOut

T = TypeVar("T")
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


def _run(request: Request, work: Callable[[], T]) -> T | Response:
    """``work()``, or the app's answer to the database error it met (503, 422)."""
    try:
        return work()
    except Exception as exc:
        answer = database_error_answer(request.method, request.url.path, exc)
        if answer is None:
            raise
        response = Response(answer.body, status_code=answer.status_code)
        response.raw_headers = list(answer.raw_headers)
        return response


def _report(body: ReportIn, request: Request) -> ReportOut | Response:
    state = request.app.state
    token = _bearer(request)
    report = ReportBody(**body.model_dump())
    status = _run(request, lambda: answer_report(state.database, token, report, now=state.clock()))
    if isinstance(status, Response):
        return status
    if status is None:
        raise _refused()
    return ReportOut(status=status)


def device_router() -> APIRouter:
    """The routes under ``/device/v1``."""
    router = APIRouter(tags=["device"], **_DEVICE_ROUTE)

    @router.post("/checkin", response_model=CheckinOut, response_model_exclude_none=True)
    def checkin_route(body: CheckinIn, request: Request) -> CheckinOut | Response:
        """A device says what it runs and learns what it should run.

        Served by :class:`owner.checkin_endpoint.DeviceEndpoint` in front of the app's
        routing; this route documents it (and serves it where the endpoint is not mounted).
        """
        state = request.app.state
        token = _bearer(request)
        observation = Observation(**body.model_dump())
        answer = _run(
            request,
            lambda: answer_checkin(
                state.database,
                token,
                observation,
                now=state.clock(),
                interval=int(state.settings.checkin_interval_seconds),
                wake=state.rollouts.wake if getattr(state, "rollouts", None) else None,
            ),
        )
        if isinstance(answer, Response):
            return answer
        if answer is None:
            raise _refused()
        return CheckinOut.model_validate(answer.content())

    @router.post("/report", response_model=ReportOut)
    def report(body: ReportIn, request: Request) -> ReportOut | Response:
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
    def report(body: ReportIn, request: Request) -> ReportOut | Response:
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
