"""The rendezvous admin JSON API: list and delete registrations, clear a GUID's pin
(bearer tokens, roles).

Responses show the GUID in UUID text form, the lifetime and the expiry; never the
``to1d`` bytes or keys (the owner's address is the owner's business).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel
from sqlalchemy.engine import Engine
from sqlmodel import Session

from fdo.errors import MessageBodyError
from fdo.types import Guid
from fdo_server.api_docs import errors
from fdo_server.auth import AdminToken, Role, require
from fdo_server.clock import Clock
from fdo_server.db import lent
from fdo_server.params import Limit, Offset
from rendezvous.pins import delete_pin, log_unpin
from rendezvous.store import as_utc, delete_registration, list_registrations
from rendezvous.tables import Registration


def engine_of(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def get_session(request: Request) -> Iterator[Session]:
    """One transaction per admin request, committed when the route returns."""
    with Session(engine_of(request), expire_on_commit=False) as db:
        yield db
        db.commit()


SessionDep = Annotated[Session, Depends(get_session)]
ViewerDep = Annotated[AdminToken, Depends(require(engine_of, Role.VIEWER))]
AdminDep = Annotated[AdminToken, Depends(require(engine_of, Role.ADMIN))]


class RegistrationOut(BaseModel):
    """One registration as the admin API shows it."""

    guid: str
    wait_seconds: int
    registered_at: datetime
    expires_at: datetime
    live: bool


class RegistrationPage(BaseModel):
    items: list[RegistrationOut]
    total: int
    offset: int
    limit: int


def _out(row: Registration, now: datetime) -> RegistrationOut:
    expires = as_utc(row.expires_at)
    return RegistrationOut(
        guid=str(Guid(row.guid)),
        wait_seconds=row.wait_seconds,
        registered_at=as_utc(row.registered_at),
        expires_at=expires,
        live=expires > now,
    )


def _guid(text: str) -> Guid:
    try:
        return Guid.parse(text)
    except MessageBodyError:
        raise HTTPException(422, "not a GUID") from None


def admin_router(clock: Clock) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["admin"])

    @router.get("/registrations", responses=errors(422))
    def get_registrations(
        db: SessionDep,
        _token: ViewerDep,
        offset: Offset = 0,
        limit: Limit = 100,
    ) -> RegistrationPage:
        """Registrations (live and expired ones not yet swept), paged; never their ``to1d``."""
        total, rows = list_registrations(db, offset=offset, limit=limit)
        now = clock()
        return RegistrationPage(items=[_out(r, now) for r in rows], total=total, offset=offset, limit=limit)

    @router.delete(
        "/registrations/{guid}",
        status_code=204,
        response_class=Response,
        responses=errors(404, 422) | {204: {"description": "Deleted."}},
    )
    def remove_registration(guid: str, db: SessionDep, _token: AdminDep) -> Response:
        """Delete a GUID's registration: TO1 finds no owner for it until its owner registers again."""
        if not delete_registration(db, _guid(guid)):
            raise HTTPException(404, "no registration for this GUID")
        return Response(status_code=204)

    @router.delete(
        "/pins/{guid}",
        status_code=204,
        response_class=Response,
        responses=errors(404, 422) | {204: {"description": "The pin is cleared."}},
    )
    def remove_pin(guid: str, db: SessionDep, token: AdminDep) -> Response:
        """Clear the GUID's pin (``rendezvous/pins.py``); logged with the token's name."""
        parsed = _guid(guid)
        if not delete_pin(lent(db.connection()), parsed):
            raise HTTPException(404, "this GUID is not pinned")
        log_unpin(parsed, f"token {token.name!r}")
        return Response(status_code=204)

    return router
