"""Handing devices on (resale): extend an owned voucher to the next owner's key.

``POST /api/v1/vouchers/extend`` (operator) takes the next owner's public key (PEM) and
GUIDs, and answers each extended voucher and all of them as one PEM text, in the shape
of the manufacturer's route of the same name (:mod:`fdo_server.vouchers`). A batch is
all or nothing. ``POST /api/v1/vouchers/{guid}/extend`` does one.

Per voucher, in one transaction:

* only an ``active`` voucher can be handed on: another state (``replaced``,
  ``handed_on``) is 409 naming it, and so is losing a race with TO2 or another hand-on
  (the state change is conditional on ``active``);
* the new entry is signed with the owner key the voucher is extended to now (the owner
  holds one key per kind), to a key of the manufacturer key's kind (422 otherwise: the
  spec and go-fdo want every entry's key of OVPubKey's type and size) that is not one of
  this owner's own keys (422);
* the row becomes ``handed_on`` and keeps the extended voucher (its final owner key is
  now the next owner's), so TO2 no longer finds it and ``GET .../pem`` gives it again;
  its TO0 work row is deleted, so the scheduler registers it no more (the rendezvous
  keeps the last registration until the next owner's TO0 replaces it, or it expires);
* the audit log gets ``voucher.hand_on`` with the next owner key's fingerprint, and the
  device's timeline a ``handed_on`` event.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from sqlalchemy import delete, update
from sqlmodel import Session, col, select

from fdo.crypto import PrivateKeyT, PublicKeyT, spki_der
from fdo.types import Guid
from fdo.voucher import OwnershipVoucher, to_pem
from fdo_server.api_docs import errors, pem_answer
from fdo_server.db import lent, unit_of_work
from fdo_server.vouchers import (
    BatchExtended,
    BatchExtendRequest,
    Extended,
    ExtendRequest,
    extend_to,
    fingerprint,
    next_owner_key,
    parse_guid,
    unique_guids,
)
from owner.audit import audit
from owner.config import OwnerConfig
from owner.deps import Operator, Viewer, engine_of, now_of
from owner.inventory import add_event, find_device
from owner.lifecycle import retire_replaced
from owner.states import ACTIVE, HANDED_ON
from owner.tables import OwnerVoucher, To0Work

PEM_TYPE = "application/x-pem-file"
#: The audit action of a hand-on.
ACTION = "voucher.hand_on"


def _config(request: Request) -> OwnerConfig:
    config: OwnerConfig = request.app.state.config
    return config


ConfigDep = Annotated[OwnerConfig, Depends(_config)]


def _get(db: Session, guid: str) -> OwnerVoucher:
    row = db.exec(select(OwnerVoucher).where(OwnerVoucher.guid == parse_guid(guid))).first()
    if row is None:
        raise HTTPException(404, f"no voucher for GUID {guid}")
    return row


def _signer(config: OwnerConfig, voucher: OwnershipVoucher) -> PrivateKeyT | None:
    wanted = spki_der(voucher.owner_public_key.key)
    for key in config.keys.values():
        if spki_der(key.public_key()) == wanted:
            return key
    return None


def hand_on(
    db: Session, config: OwnerConfig, row: OwnerVoucher, next_owner: PublicKeyT, *, by: str, now: datetime
) -> Extended:
    """Extend ``row``'s voucher to ``next_owner`` and mark it handed on (see the module doc).

    Raises HTTPException 409 (not active, raced, or its owner key is no longer held)
    or 422 (next owner key of the wrong kind, or one of ours).
    """
    guid = str(Guid(row.guid))
    if row.state != ACTIVE:
        if row.state == HANDED_ON:
            raise HTTPException(409, f"voucher {guid} was already handed on (state {HANDED_ON})")
        raise HTTPException(409, f"voucher {guid} is {row.state}: only an active voucher can be handed on")
    next_spki = spki_der(next_owner)
    if any(spki_der(k.public_key()) == next_spki for k in config.keys.values()):
        raise HTTPException(422, "the next owner key is one of this owner's own keys")
    voucher = OwnershipVoucher.decode(row.raw)
    signer = _signer(config, voucher)
    if signer is None:
        raise HTTPException(409, f"voucher {guid}: this owner no longer holds its owner key")
    extended = extend_to(voucher, signer, next_owner, status=422)
    raw = extended.encode()
    # The voucher it replaced, if the device has not confirmed the replacement yet, is
    # done with too: no TO2 may hand out a new credential from it after the sale. (First,
    # as TO2.Done locks the two rows in that order: owner.lifecycle.)
    assert row.id is not None  # noqa: S101 - a stored row
    retire_replaced(row.id, row.replaces_id, now=now, conn=lent(db.connection()))
    result = db.execute(
        update(OwnerVoucher)
        .where(col(OwnerVoucher.id) == row.id, col(OwnerVoucher.state) == ACTIVE)
        .values(state=HANDED_ON, raw=raw, num_entries=len(extended.entries), owner_key_spki=next_spki)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise HTTPException(409, f"voucher {guid} changed state meanwhile (TO2 or another hand-on)")
    db.execute(delete(To0Work).where(col(To0Work.voucher_id) == row.id))
    fp = fingerprint(next_spki)
    detail = {"owner_key_fingerprint": fp, "entries": len(extended.entries)}
    audit(db, by, ACTION, guid, detail, now=now)
    device = find_device(db, row.guid)
    if device is not None:
        add_event(db, device, HANDED_ON, {"guid": guid, **detail}, now=now)
    return Extended(guid=guid, owner_key_fingerprint=fp, pem=to_pem(raw))


def handon_router() -> APIRouter:
    """The hand-on routes (mounted under ``/api/v1`` with the other admin routes)."""
    router = APIRouter(tags=["vouchers"])

    @router.post("/vouchers/extend", response_model=BatchExtended, responses=errors(400, 404, 409, 413, 422))
    def extend_batch(
        body: BatchExtendRequest, request: Request, config: ConfigDep, token: Operator
    ) -> BatchExtended:
        """Hand several vouchers on to one owner key (all or nothing)."""
        next_owner = next_owner_key(body.owner_key_pem)
        now = now_of(request)
        out: list[Extended] = []
        with unit_of_work(engine_of(request)) as db:
            for guid in unique_guids(body.guids):
                out.append(hand_on(db, config, _get(db, guid), next_owner, by=token.name, now=now))
        return BatchExtended(vouchers=out, pem="".join(v.pem for v in out))

    @router.post("/vouchers/{guid}/extend", response_model=Extended, responses=errors(400, 404, 409, 422))
    def extend_one(
        guid: str, body: ExtendRequest, request: Request, config: ConfigDep, token: Operator
    ) -> Extended:
        """Hand one voucher on to an owner key."""
        next_owner = next_owner_key(body.owner_key_pem)
        with unit_of_work(engine_of(request)) as db:
            return hand_on(db, config, _get(db, guid), next_owner, by=token.name, now=now_of(request))

    @router.get(
        "/vouchers/{guid}/pem", response_class=Response, responses=pem_answer(PEM_TYPE) | errors(400, 404)
    )
    def export_voucher(guid: str, request: Request, _: Viewer) -> Response:
        """The voucher as held (for a handed-on one, as extended to the next owner), as PEM."""
        with unit_of_work(engine_of(request)) as db:
            row = _get(db, guid)
            pem, name = to_pem(row.raw), str(Guid(row.guid))
        return Response(
            content=pem,
            media_type=PEM_TYPE,
            headers={"Content-Disposition": f'attachment; filename="{name}.pem"'},
        )

    return router
