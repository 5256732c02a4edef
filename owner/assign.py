"""From a group's revision to what the device receives in TO2, and its status reports.

:func:`modules_for` runs inside TO2 (message 68, once devmod is complete): it resolves
the device's group (:func:`owner.groups.assignment_for`), turns the group's current
revision into a :class:`fdo.serviceinfo.bootc.Assignment` and picks how to deliver it:

* the device lists the bootc module in devmod: :class:`BootcOwner` (files, units, keys,
  policy, registry credentials, then the digest-pinned image, each acknowledged);
* otherwise (a stock FDO client such as go-fdo's): what its ``fdo.download`` and
  ``fdo.command`` can carry (:func:`fdo.serviceinfo.bootc.stock_plan`): files by
  ``fdo.download``, ``chmod``/``chown``, ``systemctl enable`` and ``bootc switch`` by
  ``fdo.command``, never a command about something not delivered.

When TO2 completes, :mod:`owner.delivery` works out what the device got (``full``,
``partial`` with what is missing and why, ``none``) for the device record.

Every assignment carries the per-device check-in secret (:mod:`owner.checkin`), the
status URL and the check-in URL; only the secret's SHA-256 is stored. After its reboot
the device posts its booted digest with that secret (``fdo device report``) or checks
in (``fdo device check-in``, ``fdo device agent``); a digest other than the assigned
one marks the device failed, never done. Report tokens issued before check-in existed
(``owner_report_token``) still authenticate the report until the next TO2 or a
revocation.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fdo.serviceinfo import CommandOwner, Devmod, DownloadOwner, OwnerModule, UploadOwner
from fdo.serviceinfo.bootc import BOOTC as BOOTC_MODULE
from fdo.serviceinfo.bootc import (
    UNIT_DIR,
    Assignment,
    BootcOwner,
    FileItem,
    ImageRef,
    Report,
    SSHKeys,
    stock_plan,
)
from fdo.serviceinfo.owner import Restore, module_restorer
from fdo.types import Guid
from fdo_server.sql import Conn, Sql
from owner import checkin, groups
from owner.states import APPLIED, FAILED

if TYPE_CHECKING:  # the admin plane's records; the device plane runs Sql statements
    from sqlmodel import Session

    from owner.groups_tables import Device

#: Device-facing paths (the same listener as TO2, docs/checkin.md).
REPORT_PATH = "/device/v1/report"
CHECKIN_PATH = "/device/v1/checkin"
#: Where devices onboarded before check-in existed post their report (deprecated).
LEGACY_REPORT_PATH = "/api/v1/report"

SIGSTORE_DIR = "/etc/pki/containers"

#: Rebuilds every owner module TO2 may persist between messages.
restore_modules: Restore = module_restorer(BootcOwner, CommandOwner, DownloadOwner, UploadOwner)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_report_token(db: Session, device: Device) -> str:
    """A fresh report token for ``device`` (replacing any earlier one)."""
    from sqlmodel import select

    from owner.groups_tables import DeviceReportToken

    assert device.id is not None  # noqa: S101 - a stored record
    token = "fdr_" + secrets.token_urlsafe(32)
    row = db.exec(select(DeviceReportToken).where(DeviceReportToken.device_id == device.id)).first()
    if row is None:
        row = DeviceReportToken(device_id=device.id, token_hash=_hash(token))
    else:
        row.token_hash = _hash(token)
        row.created_at = datetime.now(UTC)
    db.add(row)
    return token


# What a device's report reads and writes (:func:`device_for_token`, :func:`record_report`).
_DEVICE_OF_TOKEN = Sql(
    "SELECT d.id, d.guid FROM owner_report_token t JOIN owner_device d ON d.id = t.device_id "
    "WHERE t.token_hash = :h"
)
# The revision the device was handed (its onboarded one, else its assigned one).
_EXPECTED_IMAGE = Sql(
    "SELECT r.image FROM owner_device d JOIN owner_revision r "
    "ON r.id = COALESCE(d.revision_id, d.assigned_revision_id) WHERE d.id = :d"
)
# The status of the device that has, or had, the GUID (as owner.inventory.record_status finds it).
_SET_STATUS = Sql(
    "UPDATE owner_device SET status = :status, updated_at = :at "
    "WHERE id = (SELECT device_id FROM owner_device_guid WHERE guid = :g) RETURNING id"
)


def device_for_token(token: str, conn: Conn | None = None) -> dict[str, Any] | None:
    """The device (``id``, ``guid``) a report token belongs to, read on ``conn`` (by
    default the unit of work's)."""
    return _DEVICE_OF_TOKEN.mapping({"h": _hash(token)}, conn)


def _mode(text: str) -> int:
    return int(text, 8)


def _owner_group(text: str) -> tuple[str, str | None]:
    owner, _, group = text.partition(":")
    return owner or "root", group or None


def to_bootc(assignment: groups.Assignment, report: Report | None) -> Assignment:
    """The revision (with its write-only secrets) as the bootc module's assignment."""
    revision = assignment.revision
    config: Mapping[str, Any] = revision.config
    files: list[FileItem] = []
    for spec in [*config.get("files", []), *assignment.secret_files]:
        owner, group = _owner_group(str(spec.get("owner", "root:root")))
        files.append(
            FileItem(
                path=str(spec["path"]),
                content=str(spec["content"]).encode(),
                mode=_mode(str(spec.get("mode", "0644"))),
                owner=owner,
                group=group,
            )
        )
    units: list[str] = []
    for unit in config.get("units", []):
        if unit.get("content") is not None:
            files.append(FileItem(path=f"{UNIT_DIR}/{unit['name']}", content=str(unit["content"]).encode()))
        if unit.get("enable", True):
            units.append(str(unit["name"]))
    ssh = config.get("ssh")
    policy = config.get("policy")
    return Assignment(
        auth_json=assignment.registry_auth,
        policy_json=None if policy is None else json.dumps(policy, indent=2).encode(),
        registries_d=tuple((name, text.encode()) for name, text in config.get("registries_d", {}).items()),
        keys=tuple(
            (f"{SIGSTORE_DIR}/{name}", pem.encode()) for name, pem in config.get("public_keys", {}).items()
        ),
        files=tuple(files),
        units=tuple(units),
        ssh_keys=None if not ssh or not ssh.get("keys") else SSHKeys(str(ssh["user"]), tuple(ssh["keys"])),
        image=ImageRef(
            ref=revision.image,
            transport=revision.transport,
            revision=revision.number,
            apply=revision.apply_mode,  # type: ignore[arg-type]
        ),
        report=report,
    )


def modules_for(
    guid: Guid, devmod: Devmod, *, status_base_url: str | None, conn: Conn | None = None
) -> Sequence[OwnerModule]:
    """The modules delivering this device's group assignment (none without one), on
    ``conn`` (by default the unit of work's)."""
    assignment = groups.assignment_for(guid, devmod, conn=conn)
    if assignment is None:
        return []
    report = None
    if status_base_url and assignment.device_id is not None:
        # The per-device check-in secret (owner.checkin) authenticates check-ins and the
        # report; it travels only inside the encrypted ServiceInfo channel.
        base = status_base_url.rstrip("/")
        secret = checkin.issue_secret(assignment.device_id, conn)
        report = Report(base + REPORT_PATH, secret, base + CHECKIN_PATH)
    bootc = to_bootc(assignment, report)
    if BOOTC_MODULE in devmod.modules:
        return [BootcOwner(bootc)]
    return stock_plan(bootc, devmod.modules).modules


def record_report(
    device: Mapping[str, Any],
    *,
    booted_digest: str | None,
    revision: int | None,
    healthy: bool,
    detail: str,
    conn: Conn | None = None,
) -> str:
    """Record the report of ``device`` (its ``id`` and ``guid``: :func:`device_for_token`,
    :func:`owner.checkin.authenticate`): its status, with a timeline event, at the current time;
    returns that status (applied or failed)."""
    expected = _EXPECTED_IMAGE.scalar({"d": device["id"]}, conn)
    want = None if expected is None else str(expected).rpartition("@")[2]
    reasons = []
    if not healthy:
        reasons.append("device reported unhealthy")
    if want is not None and booted_digest != want:
        reasons.append(f"booted {booted_digest or 'nothing'}, assigned {want}")
    status = FAILED if reasons else APPLIED
    info: dict[str, object] = {"booted_digest": booted_digest, "revision": revision, "detail": detail[:1000]}
    if reasons:
        info["reason"] = "; ".join(reasons)
    at = groups.now_or(None)
    updated = _SET_STATUS.first({"status": status, "at": at, "g": bytes(device["guid"])}, conn)
    if updated is not None:
        groups.add_event_row(int(updated[0]), status, info, at=at, conn=conn)
    return status
