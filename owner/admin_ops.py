"""The admin actions both the admin API (``/api/v1``) and the console (``/ui``) perform.

Each function does the change and writes its audit entry in one transaction, so an
action taken in the console is the same action, with the same audit entry, as through
the API. Failures raise :class:`fastapi.HTTPException` with the status and detail the API
answers (the console shows the detail).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from fastapi import HTTPException
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from fdo.crypto import PrivateKeyT
from fdo.types import Guid
from fdo_server.auth import AdminToken, Role, create_token, hash_token
from fdo_server.db import unit_of_work
from owner import rollout_engine as engine_ops
from owner.audit import audit
from owner.desired import DesiredError
from owner.groups_schemas import RevisionIn
from owner.groups_tables import Group, Revision, RevisionSecret
from owner.importer import IMPORTED, import_pem
from owner.inventory import ensure_device, find_device, set_desired
from owner.rollout_engine import RolloutError, on_publish
from owner.rollouts_schemas import StartIn
from owner.tables import OwnerVoucher


def live_group(db: Any, name: str) -> Group:
    row = db.exec(select(Group).where(Group.name == name, col(Group.deleted_at).is_(None))).first()
    if row is None:
        raise HTTPException(404, f"no group {name!r}")
    found: Group = row
    return found


def set_labels(engine: Engine, guid: Guid, labels: dict[str, str], *, who: str, now: datetime) -> None:
    """Replace a device's labels; a device known only by its voucher gets a record."""
    with unit_of_work(engine) as db:
        row = find_device(db, guid)
        if row is None:
            voucher = db.exec(select(OwnerVoucher).where(OwnerVoucher.guid == guid.value)).first()
            if voucher is None:
                raise HTTPException(404, "no such device")
            row = ensure_device(db, guid, now=now)
        old = dict(row.labels)
        row.labels = dict(labels)
        row.updated_at = now
        db.add(row)
        audit(db, who, "device.labels", str(Guid(row.guid)), {"old": old, "new": labels}, now=now)


def publish_revision(
    engine: Engine, name: str, body: RevisionIn, *, who: str, now: datetime, view: Any
) -> dict[str, Any]:
    """Publish group ``name``'s next revision; ``view(row, group)`` is its JSON form. The
    answer adds what publishing did (:func:`owner.rollout_engine.on_publish`)."""
    try:
        with unit_of_work(engine) as db:
            group = live_group(db, name)
            latest = db.exec(
                select(Revision).where(Revision.group_id == group.id).order_by(col(Revision.number).desc())
            ).first()
            assert group.id is not None  # noqa: S101 - a stored row
            row = Revision(
                group_id=group.id,
                number=1 if latest is None else latest.number + 1,
                image=body.image,
                transport=body.transport,
                apply_mode=body.apply_mode,
                config=body.config.model_dump(exclude_none=True),
                has_registry_auth=body.registry_auth is not None,
                secret_paths=[f.path for f in body.secret_files],
                published_at=now,
                published_by=who,
            )
            db.add(row)
            db.flush()
            assert row.id is not None  # noqa: S101 - flushed
            if body.registry_auth is not None or body.secret_files:
                auth = None if body.registry_auth is None else json.dumps(body.registry_auth).encode()
                files = [f.model_dump() for f in body.secret_files]
                db.add(RevisionSecret(revision_id=row.id, registry_auth=auth, files=files))
            out: dict[str, Any] = view(row, group)
            detail = {k: out[k] for k in ("number", "image", "apply_mode", "has_registry_auth")}
            audit(db, who, "revision.publish", name, detail, now=now)
            return out | on_publish(db, group, row, who=who, now=now)
    except IntegrityError:
        raise HTTPException(409, "another revision was published at the same time; retry") from None


def start_rollout(engine: Engine, name: str, body: StartIn, *, who: str, now: datetime) -> int:
    """Start a rollout of revision ``body.revision`` of group ``name``; its id."""
    try:
        with unit_of_work(engine) as db:
            group = live_group(db, name)
            revision = db.exec(
                select(Revision).where(Revision.group_id == group.id, Revision.number == body.revision)
            ).first()
            if revision is None:
                raise HTTPException(404, f"group {name!r} has no revision {body.revision}")
            rollout = engine_ops.start(db, group, revision, body.policy(), who=who, now=now)
            assert rollout.id is not None  # noqa: S101 - flushed
            detail = {"group": name, "revision": body.revision, **body.policy().to_json()}
            audit(db, who, "rollout.start", f"rollout:{rollout.id}", detail, now=now)
            return rollout.id
    except RolloutError as exc:
        raise HTTPException(exc.status, str(exc)) from None


def redeliver(engine: Engine, guid: Guid, number: int | None, *, who: str, now: datetime) -> None:
    """Send the device its desired revision (or revision ``number``) again at its next
    check-in; 404 for an unknown device, 409 when there is nothing to send."""
    with unit_of_work(engine) as db:
        row = find_device(db, guid)
        if row is None:
            raise HTTPException(404, "no such device")
        try:
            revision = set_desired(db, row, number, now=now, who=who)
        except DesiredError as exc:
            raise HTTPException(409, str(exc)) from None
        detail = {"revision": revision.number, "generation": row.desired_generation}
        audit(db, who, "device.redeliver", str(Guid(row.guid)), detail, now=now)


def import_vouchers(
    engine: Engine, body: bytes, keys: list[PrivateKeyT], *, who: str, now: datetime
) -> list[dict[str, object]]:
    """Import the PEM vouchers in ``body``; a result per voucher."""
    with unit_of_work(engine) as db:
        results = import_pem(body, keys, now=now)
        for result in results:
            if result.status == IMPORTED:
                audit(db, who, "voucher.import", result.guid or "", now=now)
    return [r.as_dict() for r in results]


def new_token(engine: Engine, name: str, role: Role, *, who: str, now: datetime) -> tuple[AdminToken, str]:
    """Create a token: its row and its plaintext (shown once, stored hashed)."""
    with unit_of_work(engine) as db:
        token = create_token(db, name, role)
        db.flush()
        row = db.exec(select(AdminToken).where(AdminToken.token_hash == hash_token(token))).one()
        audit(db, who, "token.create", f"token:{row.id}", {"name": name, "role": str(role)}, now=now)
        db.flush()
        db.expunge(row)
        return row, token


def revoke_token(engine: Engine, token_id: int, *, who: str, now: datetime) -> AdminToken:
    with unit_of_work(engine) as db:
        row = db.get(AdminToken, token_id)
        if row is None:
            raise HTTPException(404, "no such token")
        if row.revoked_at is None:
            row.revoked_at = now
            db.add(row)
            audit(db, who, "token.revoke", f"token:{token_id}", {"name": row.name}, now=now)
        db.flush()
        db.expunge(row)
        return row
