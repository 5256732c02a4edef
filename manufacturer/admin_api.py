"""The manufacturer's admin API (``/api/v1``): find vouchers, export them, hand them off.

Bearer tokens with roles (:mod:`fdo_server.auth`): viewers list, read and export;
operators extend. Extending signs one entry with the manufacturer key that is the
voucher's current owner key (OVPubKey), to the owner's public key, which must be of
OVPubKey's kind (other implementations pick keys by the device's type). A voucher goes
to one owner: extending it again to the same key returns the stored result, to another
key is 409. A batch is all or nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel
from sqlalchemy import func, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from fdo.crypto import PublicKeyT, spki_der
from fdo.types import Guid
from fdo.voucher import OwnershipVoucher, to_pem
from fdo_server.api_docs import errors, pem_answer
from fdo_server.auth import AdminToken, Role, require
from fdo_server.clock import utc_now
from fdo_server.db import unit_of_work
from fdo_server.params import Limit, Offset
from fdo_server.vouchers import (
    BatchExtended,
    BatchExtendRequest,
    Extended,
    ExtendRequest,
    check_kind,
    extend_to,
    fingerprint,
    next_owner_key,
    parse_guid,
    unique_guids,
)
from manufacturer.settings import ManufacturerMaterial
from manufacturer.tables import HandOff, Voucher

PEM_TYPE = "application/x-pem-file"


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def _material(request: Request) -> ManufacturerMaterial:
    material: ManufacturerMaterial = request.app.state.material
    return material


Viewer = Annotated[AdminToken, Depends(require(_engine, Role.VIEWER))]
Operator = Annotated[AdminToken, Depends(require(_engine, Role.OPERATOR))]
EngineDep = Annotated[Engine, Depends(_engine)]
MaterialDep = Annotated[ManufacturerMaterial, Depends(_material)]

router = APIRouter(tags=["vouchers"])


# ---------------------------------------------------------------------------- schemas


class HandOffOut(BaseModel):
    owner_key_fingerprint: str
    at: datetime
    by: str


class VoucherOut(BaseModel):
    guid: str
    serial: str
    model: str
    key_kind: str
    created_at: datetime
    num_entries: int
    owner_key_fingerprint: str | None
    handed_off_at: datetime | None


class VoucherDetail(VoucherOut):
    hand_offs: list[HandOffOut]


class VoucherPage(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[VoucherOut]


# ---------------------------------------------------------------------------- helpers


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _out(row: Voucher) -> dict[str, Any]:
    return {
        "guid": str(Guid(row.guid)),
        "serial": row.serial,
        "model": row.model,
        "key_kind": row.key_kind,
        "created_at": _utc(row.created_at),
        "num_entries": row.num_entries,
        "owner_key_fingerprint": fingerprint(row.owner_key_spki) if row.owner_key_spki else None,
        "handed_off_at": _utc(row.handed_off_at),
    }


def _get(db: Session, guid: str) -> Voucher:
    row = db.exec(select(Voucher).where(Voucher.guid == parse_guid(guid))).first()
    if row is None:
        raise HTTPException(404, f"no voucher {guid}")
    return row


def _pattern(value: str) -> tuple[bool, str]:
    """``*`` is a wildcard; returns (is_like, value)."""
    if "*" not in value:
        return False, value
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return True, escaped.replace("*", "%")


def extend_row(db: Session, material: ManufacturerMaterial, row: Voucher, owner: PublicKeyT, by: str) -> str:
    """Extend ``row`` to ``owner`` and record the hand-off; returns the voucher PEM.

    HTTPException 400 (key kind), 409 (handed off to another owner, or OVPubKey is not
    one of this manufacturer's keys).
    """
    guid = str(Guid(row.guid))
    owner_spki = spki_der(owner)
    if row.owner_key_spki is not None:
        if row.owner_key_spki == owner_spki:
            return to_pem(row.raw)  # already handed off to this owner: idempotent
        raise HTTPException(409, f"voucher {guid} was already handed off to another owner")
    voucher = OwnershipVoucher.decode(row.raw)
    check_kind(voucher, owner)
    signer = material.key_for(voucher.owner_public_key)
    if signer is None:
        raise HTTPException(409, f"voucher {guid}: its owner key is not one of this manufacturer's keys")
    extended = extend_to(voucher, signer, owner)
    raw = extended.encode()
    now = utc_now()
    # Conditional on "not handed off yet": a concurrent hand-off makes this one lose.
    result = db.execute(
        update(Voucher)
        .where(col(Voucher.id) == row.id, col(Voucher.owner_key_spki).is_(None))
        .values(raw=raw, num_entries=len(extended.entries), owner_key_spki=owner_spki, handed_off_at=now)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise HTTPException(409, f"voucher {guid} was handed off concurrently")
    if row.id is None:  # pragma: no cover - rows read from the database have an id
        raise HTTPException(500, "voucher row without id")
    db.add(
        HandOff(
            voucher_id=row.id,
            owner_key_spki=owner_spki,
            owner_key_fingerprint=fingerprint(owner_spki),
            extended_raw=raw,
            at=now,
            by=by,
        )
    )
    return extended.to_pem()


# ---------------------------------------------------------------------------- routes


@router.get("/vouchers", response_model=VoucherPage, responses=errors(400, 422))
def list_vouchers(
    engine: EngineDep,
    _token: Viewer,
    serial: str | None = None,
    guid: str | None = None,
    model: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> dict[str, Any]:
    """Vouchers, newest first, filtered (``*`` wildcards in serial and model) and paged."""
    conditions: list[Any] = []
    for column, value in ((col(Voucher.serial), serial), (col(Voucher.model), model)):
        if value:
            like, pattern = _pattern(value)
            conditions.append(column.like(pattern, escape="\\") if like else column == pattern)
    if guid:
        conditions.append(col(Voucher.guid) == parse_guid(guid))
    if since is not None:
        conditions.append(col(Voucher.created_at) >= _utc(since))
    if until is not None:
        conditions.append(col(Voucher.created_at) < _utc(until))
    with unit_of_work(engine) as db:
        total = db.exec(select(func.count()).select_from(Voucher).where(*conditions)).one()
        rows = db.exec(
            select(Voucher)
            .where(*conditions)
            .order_by(col(Voucher.created_at).desc(), col(Voucher.id).desc())
            .offset(offset)
            .limit(limit)
        ).all()
        items = [_out(r) for r in rows]
    return {"total": total, "limit": limit, "offset": offset, "items": items}


@router.get("/vouchers/{guid}", response_model=VoucherDetail, responses=errors(400, 404))
def get_voucher(guid: str, engine: EngineDep, _token: Viewer) -> dict[str, Any]:
    """One voucher and its hand-offs."""
    with unit_of_work(engine) as db:
        row = _get(db, guid)
        hand_offs = db.exec(
            select(HandOff).where(HandOff.voucher_id == row.id).order_by(col(HandOff.id))
        ).all()
        return {
            **_out(row),
            "hand_offs": [
                {"owner_key_fingerprint": h.owner_key_fingerprint, "at": _utc(h.at), "by": h.by}
                for h in hand_offs
            ],
        }


@router.get(
    "/vouchers/{guid}/pem", response_class=Response, responses=pem_answer(PEM_TYPE) | errors(400, 404)
)
def export_voucher(guid: str, engine: EngineDep, _token: Viewer) -> Response:
    """The voucher as it stands (extended once handed off), as PEM."""
    with unit_of_work(engine) as db:
        row = _get(db, guid)
        pem = to_pem(row.raw)
        name = str(Guid(row.guid))
    return Response(
        content=pem,
        media_type=PEM_TYPE,
        headers={"Content-Disposition": f'attachment; filename="{name}.pem"'},
    )


@router.post("/vouchers/extend", response_model=BatchExtended, responses=errors(400, 404, 409, 413, 422))
def extend_batch(
    body: BatchExtendRequest, engine: EngineDep, material: MaterialDep, token: Operator
) -> dict[str, Any]:
    """Extend several vouchers to one owner key (all or nothing)."""
    owner = next_owner_key(body.owner_key_pem)
    fp = fingerprint(spki_der(owner))
    out: list[dict[str, str]] = []
    with unit_of_work(engine) as db:
        for guid in unique_guids(body.guids):
            row = _get(db, guid)
            out.append({"guid": str(Guid(row.guid)), "owner_key_fingerprint": fp, "pem": ""})
            out[-1]["pem"] = extend_row(db, material, row, owner, token.name)
    return {"vouchers": out, "pem": "".join(v["pem"] for v in out)}


@router.post("/vouchers/{guid}/extend", response_model=Extended, responses=errors(400, 404, 409, 422))
def extend_one(
    guid: str, body: ExtendRequest, engine: EngineDep, material: MaterialDep, token: Operator
) -> dict[str, str]:
    """Extend one voucher to an owner key and record the hand-off."""
    owner = next_owner_key(body.owner_key_pem)
    with unit_of_work(engine) as db:
        row = _get(db, guid)
        pem = extend_row(db, material, row, owner, token.name)
        name = str(Guid(row.guid))
    return {"guid": name, "owner_key_fingerprint": fingerprint(spki_der(owner)), "pem": pem}
