"""A seeded owner for the console's browser tests and screenshots (docs/console.md).

:func:`seeded_owner` migrates a database, makes an admin, an operator and a viewer token,
starts the owner under uvicorn (:class:`fdo_server.launcher.ServiceProcess`, TO0 off),
creates groups and publishes a revision through the admin API (so the audit log has
them), then writes devices as onboarding and check-ins leave them: a group ``kiosk`` of
onboarded devices running revision 1, one failed, one overdue, with devmod facts,
labels and a timeline.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlmodel import select

from fdo.crypto import PrivateKeyT, private_key_to_pem
from fdo.types import Guid
from fdo_server.auth import Role, create_token
from fdo_server.db import make_engine, unit_of_work
from fdo_server.launcher import ServiceProcess, free_port
from fdo_server.migrate import upgrade
from owner.groups_tables import DeviceEvent, Group, Revision
from owner.inventory import ensure_device

DIGEST1 = "sha256:" + hashlib.sha256(b"kiosk os 1").hexdigest()
DIGEST2 = "sha256:" + hashlib.sha256(b"kiosk os 2").hexdigest()
IMAGE1 = f"registry.example.com/fleet/kiosk-os@{DIGEST1}"
IMAGE2 = f"registry.example.com/fleet/kiosk-os@{DIGEST2}"
KIOSKS = 12


@dataclass
class SeededOwner:
    url: str
    database_url: str
    tokens: dict[Role, str]
    #: Serial -> GUID of the seeded devices.
    devices: dict[str, str]


def _device_rows(database_url: str, now: datetime) -> dict[str, str]:
    engine = make_engine(database_url)
    out = {}
    try:
        with unit_of_work(engine) as db:
            group = db.exec(select(Group).where(Group.name == "kiosk")).one()
            rev = db.exec(select(Revision).where(Revision.group_id == group.id, Revision.number == 1)).one()
            for i in range(1, KIOSKS + 1):
                guid = uuid.UUID(int=(0x5EED << 112) + i).bytes
                device = ensure_device(db, guid, now=now - timedelta(days=3))
                serial = f"KIOSK-{i:04}"
                device.serial, device.model = serial, "kiosk-x1"
                device.group_id, device.revision_id, device.assigned_revision_id = group.id, rev.id, rev.id
                device.desired_revision_id, device.status = rev.id, "onboarded"
                device.labels = {"site": "berlin" if i % 2 else "hamburg", "floor": str(1 + i % 3)}
                device.devmod = {
                    "os": "Linux", "arch": "x86_64", "version": "Fedora 41", "device": "kiosk-x1",
                    "sn": serial, "bin": "x86_64",
                }  # fmt: skip
                device.checkin_hash = hashlib.sha256(serial.encode()).hexdigest()
                device.last_checkin_at = now - timedelta(minutes=i)
                device.applied_revision, device.apply_state, device.health = 1, "applied", "healthy"
                device.booted_image, device.booted_digest = IMAGE1, DIGEST1
                device.held_revision, device.held_generation = 1, device.desired_generation
                if i == KIOSKS:  # failed to apply
                    device.apply_state, device.health = "failed", "unhealthy"
                    device.last_error_step, device.last_error = "000-bootc-switch", "manifest unknown"
                if i == KIOSKS - 1:  # silent for two days
                    device.last_checkin_at = now - timedelta(days=2)
                db.add(device)
                db.flush()
                assert device.id is not None
                for minutes, kind, detail in (
                    (3 * 24 * 60, "onboarded", {"revision": 1, "delivery": "full"}),
                    (60, "applied", {"revision": 1, "digest": DIGEST1}),
                ):
                    db.add(
                        DeviceEvent(
                            device_id=device.id, at=now - timedelta(minutes=minutes), kind=kind, detail=detail
                        )
                    )
                out[serial] = str(Guid(guid))
    finally:
        engine.dispose()
    return out


@contextmanager
def seeded_owner(workdir: Path, database_url: str, keys: dict[str, PrivateKeyT]) -> Iterator[SeededOwner]:
    """An owner on ``database_url`` (empty) with ``keys``, seeded, served until the end."""
    engine = make_engine(database_url)
    try:
        upgrade(engine, "owner")
        with unit_of_work(engine) as db:
            tokens = {role: create_token(db, f"console-{role}", role) for role in Role}
    finally:
        engine.dispose()
    key_files = {}
    for kind, key in keys.items():
        path = workdir / f"owner-{kind}.pem"
        path.write_bytes(private_key_to_pem(key))
        key_files[kind] = str(path)
    port = free_port()
    process = ServiceProcess(
        name="owner",
        factory="owner.app:app_from_env",
        env={
            "FDO_OWNER_DATABASE_URL": database_url,
            "FDO_OWNER_KEYS": json.dumps(key_files),
            "FDO_OWNER_TO2_URLS": json.dumps([f"http://127.0.0.1:{port}"]),
            "FDO_OWNER_TO0_ENABLED": "false",
            "FDO_OWNER_LOGIN_RATE": "0",
        },
        port=port,
        log_path=workdir / f"owner-{port}.log",
    )
    with process:
        admin = {"Authorization": f"Bearer {tokens[Role.ADMIN]}"}
        with httpx.Client(base_url=process.url, headers=admin, timeout=30) as api:
            for body in (
                {"name": "kiosk", "model": "kiosk-x1", "priority": 10, "description": "Shop-floor kiosks"},
                {"name": "lab", "labels": {"site": "lab"}, "priority": 20},
            ):
                assert api.post("/api/v1/groups", json=body).status_code == 201
            published = api.post("/api/v1/groups/kiosk/revisions", json={"image": IMAGE1, "config": {}})
            assert published.status_code == 201, published.text
        devices = _device_rows(database_url, datetime.now(UTC))
        yield SeededOwner(process.url, database_url, tokens, devices)
