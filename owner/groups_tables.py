"""Tables of the device inventory, groups, revisions and the admin audit log.

* :class:`Device` — one record per physical device. TO2 replaces the device's GUID, so
  every GUID the device has had is a :class:`DeviceGuid` row pointing at the record;
  looking a device up by any of them finds the same record.
* :class:`DeviceEvent` — the device's timeline (imported, labelled, assigned, onboarded).
* :class:`Group` — selects devices (explicit members, model glob, serial glob, labels);
  one live group may be the default. Deleting a group only marks it ``deleted_at`` so
  the revisions devices recorded stay; live names are unique (a partial index).
* :class:`Revision` — an image digest and configuration, numbered per group, never
  changed once published. :class:`RevisionSecret` holds its write-only secrets
  (registry ``auth.json``, secret files): no API response reads that table.
* :class:`AuditEntry` — who changed what, when (never with secret values).

Datetimes are stored as UTC (see :func:`owner.tables.utc`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    false,
    text,
)
from sqlmodel import Field, SQLModel

from owner.states import NEW


def _now() -> datetime:
    return datetime.now(UTC)


def _ts(*, index: bool = False) -> Any:
    return Field(default_factory=_now, sa_column=Column(DateTime(timezone=True), index=index, nullable=False))


def _json(default: type[dict[str, Any]] | type[list[Any]]) -> Any:
    return Field(default_factory=default, sa_column=Column(JSON, nullable=False))


class Group(SQLModel, table=True):
    """A set of devices sharing an image and configuration (see ``docs/groups.md``)."""

    __tablename__ = "owner_group"
    __table_args__ = (
        Index(
            "ux_owner_group_live_name",
            "name",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
        # At most one live default group.
        Index(
            "ux_owner_group_default",
            "is_default",
            unique=True,
            sqlite_where=text("is_default AND deleted_at IS NULL"),
            postgresql_where=text("is_default AND deleted_at IS NULL"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=128)
    description: str = Field(default="", max_length=2000)
    #: Higher wins when several groups select a device.
    priority: int = 0
    #: ``fnmatch`` glob (an exact name has no wildcards) on devmod ``device``.
    model: str | None = Field(default=None, max_length=256)
    #: ``fnmatch`` glob on devmod ``sn``.
    serial_pattern: str | None = Field(default=None, max_length=256)
    #: Labels a device must all carry (key -> value).
    labels: dict[str, str] = _json(dict)
    #: Devices listed explicitly: GUIDs (any the device has had) or serial numbers.
    members: list[str] = _json(list)
    is_default: bool = False
    created_at: datetime = _ts()
    created_by: str = Field(default="", max_length=128)
    deleted_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    #: The revision devices of the group should run and onboarding hands out
    #: (docs/rollouts.md); None: the newest.
    target_revision_id: int | None = Field(
        default=None,
        sa_column=Column(
            Integer,
            ForeignKey("owner_revision.id", name="fk_owner_group_target_revision", use_alter=True),
            nullable=True,
        ),
    )
    #: Rollout options (``owner.rollouts.Policy``) a publish starts a rollout with; None:
    #: publishing starts none.
    rollout_policy: dict[str, Any] | None = Field(
        default=None, sa_column=Column(JSON(none_as_null=True), nullable=True)
    )


class Revision(SQLModel, table=True):
    """One published image and configuration of a group; immutable."""

    __tablename__ = "owner_revision"
    __table_args__ = (UniqueConstraint("group_id", "number", name="ux_owner_revision_number"),)

    id: int | None = Field(default=None, primary_key=True)
    group_id: int = Field(foreign_key="owner_group.id", index=True)
    number: int
    #: Digest-pinned image reference, ``name[:tag]@sha256:<64 hex>``.
    image: str = Field(max_length=1024)
    transport: str = Field(default="registry", max_length=32)
    apply_mode: str = Field(default="switch-reboot", max_length=32)
    #: Files, units, ssh, policy, registries.d, public keys (no secrets).
    config: dict[str, Any] = _json(dict)
    has_registry_auth: bool = False
    #: Paths of the write-only secret files (their contents are in RevisionSecret).
    secret_paths: list[str] = _json(list)
    published_at: datetime = _ts()
    published_by: str = Field(default="", max_length=128)


class RevisionSecret(SQLModel, table=True):
    """Write-only secrets of a revision: never returned by the admin API."""

    __tablename__ = "owner_revision_secret"

    id: int | None = Field(default=None, primary_key=True)
    revision_id: int = Field(foreign_key="owner_revision.id", unique=True)
    registry_auth: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    #: ``[{"path", "mode", "owner", "content"}]``
    files: list[dict[str, Any]] = _json(list)


class Device(SQLModel, table=True):
    """One device, across the GUID change of TO2."""

    __tablename__ = "owner_device"

    id: int | None = Field(default=None, primary_key=True)
    #: The GUID the device has now.
    guid: bytes = Field(sa_column=Column(LargeBinary(16), unique=True, index=True, nullable=False))
    serial: str | None = Field(default=None, max_length=256, index=True)
    model: str | None = Field(default=None, max_length=256)
    devmod: dict[str, Any] = _json(dict)
    labels: dict[str, str] = _json(dict)
    group_id: int | None = Field(default=None, foreign_key="owner_group.id")
    #: The revision handed out at the latest TO2 (may not have completed).
    assigned_revision_id: int | None = Field(default=None, foreign_key="owner_revision.id")
    #: The revision of the latest completed TO2.
    revision_id: int | None = Field(default=None, foreign_key="owner_revision.id")
    status: str = Field(default=NEW, max_length=16, index=True)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    #: What the latest completed TO2 delivered of its assignment (``owner.delivery``):
    #: ``{"result": "full"|"partial"|"none", "revision", "delivered", "missing"}``; None
    #: when it had nothing to deliver.
    delivery: dict[str, Any] | None = Field(
        default=None, sa_column=Column(JSON(none_as_null=True), nullable=True)
    )
    # --- desired state and check-in (owner.checkin, docs/checkin.md) ---------------
    #: The revision the device should run: set by onboarding, later by a rollout or an
    #: operator's redelivery (:func:`owner.desired.set_desired`).
    desired_revision_id: int | None = Field(
        default=None,
        sa_column=Column(
            Integer, ForeignKey("owner_revision.id", name="fk_owner_device_desired_revision"), nullable=True
        ),
    )
    #: Bumped by every set_desired after onboarding, so a redelivery of the same
    #: revision reaches the device again (onboarding resets it to 0).
    desired_generation: int = Field(
        default=0, sa_column=Column(Integer, nullable=False, server_default=text("0"))
    )
    #: SHA-256 (hex) of the check-in secret in use, and of the next one the owner handed
    #: out (valid too until it is first used, then it replaces the current one).
    checkin_hash: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    checkin_next_hash: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    #: The highest check-in sequence number accepted (a request must carry a higher one).
    checkin_seq: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default=text("0"))
    )
    checkin_revoked_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    # What the device said at its latest check-in.
    last_checkin_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    booted_image: str | None = Field(default=None, sa_column=Column(String(1024), nullable=True))
    booted_digest: str | None = Field(default=None, sa_column=Column(String(80), nullable=True))
    staged_image: str | None = Field(default=None, sa_column=Column(String(1024), nullable=True))
    staged_digest: str | None = Field(default=None, sa_column=Column(String(80), nullable=True))
    applied_revision: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    #: ``none``, ``applying``, ``staged``, ``applied``, ``failed``, ``rolled-back``.
    apply_state: str | None = Field(default=None, sa_column=Column(String(16), nullable=True))
    #: ``healthy``, ``unhealthy`` or ``unknown`` (greenboot where installed).
    health: str | None = Field(default=None, sa_column=Column(String(16), nullable=True))
    last_error_step: str | None = Field(default=None, sa_column=Column(String(256), nullable=True))
    last_error: str | None = Field(default=None, sa_column=Column(String(2000), nullable=True))
    rolled_back: bool = Field(
        default=False, sa_column=Column(Boolean, nullable=False, server_default=false())
    )
    #: The revision and generation the device said it holds at its latest check-in.
    held_revision: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    held_generation: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    #: The device's UTC offset in seconds (its latest check-in; None: never sent, UTC).
    utc_offset: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))


class DeviceGuid(SQLModel, table=True):
    """A GUID a device has had (its current one included)."""

    __tablename__ = "owner_device_guid"

    id: int | None = Field(default=None, primary_key=True)
    device_id: int = Field(foreign_key="owner_device.id", index=True)
    guid: bytes = Field(sa_column=Column(LargeBinary(16), unique=True, index=True, nullable=False))
    added_at: datetime = _ts()


class DeviceEvent(SQLModel, table=True):
    """One entry of a device's timeline."""

    __tablename__ = "owner_device_event"

    id: int | None = Field(default=None, primary_key=True)
    device_id: int = Field(foreign_key="owner_device.id", index=True)
    at: datetime = _ts()
    kind: str = Field(max_length=32)
    detail: dict[str, Any] = _json(dict)


class AuditEntry(SQLModel, table=True):
    """One change made through the admin API (or a local admin command)."""

    __tablename__ = "owner_audit"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = _ts(index=True)
    who: str = Field(max_length=128)
    action: str = Field(max_length=64, index=True)
    target: str = Field(default="", max_length=256)
    detail: dict[str, Any] = _json(dict)


class DeviceReportToken(SQLModel, table=True):
    """The hash of a device's report token (one live token per device)."""

    __tablename__ = "owner_report_token"

    id: int | None = Field(default=None, primary_key=True)
    device_id: int = Field(foreign_key="owner_device.id", index=True, unique=True)
    token_hash: str = Field(max_length=64, unique=True, index=True)
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


GROUP_TABLES: list[type[SQLModel]] = [
    Group,
    Revision,
    RevisionSecret,
    Device,
    DeviceGuid,
    DeviceEvent,
    AuditEntry,
    DeviceReportToken,
]
