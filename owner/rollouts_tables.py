"""Tables of rollouts (docs/rollouts.md).

* :class:`Rollout` — one rollout of a revision to a group's onboarded devices: its
  options (``owner.rollouts.Policy`` as JSON), state, current batch and a ``version``
  that every change bumps with a compare-and-set, so two owner replicas advancing the
  same rollout never both apply a transition. ``active_group_id`` is the group's id
  while the rollout is running or paused and NULL after: its unique constraint makes
  "one active rollout per group" a rule of the database.
* :class:`RolloutDevice` — a device's place in a rollout: its batch (computed once, at
  start), state and, when it failed, the failing step and text it reported.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, ForeignKey, Integer, String, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from owner.states import RUNNING


def _now() -> datetime:
    return datetime.now(UTC)


def _ts() -> Any:
    return Field(default_factory=_now, sa_column=Column(DateTime(timezone=True), nullable=False))


def _optional_ts() -> Any:
    return Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=True))


class Rollout(SQLModel, table=True):
    """A rollout of ``revision_id`` to the onboarded devices of ``group_id``."""

    __tablename__ = "owner_rollout"
    __table_args__ = (UniqueConstraint("active_group_id", name="ux_owner_rollout_active_group"),)

    id: int | None = Field(default=None, primary_key=True)
    group_id: int = Field(foreign_key="owner_group.id", index=True)
    revision_id: int = Field(foreign_key="owner_revision.id")
    #: The group's target when the rollout started (abort returns the target to it).
    from_revision_id: int | None = Field(
        default=None,
        sa_column=Column(
            Integer, ForeignKey("owner_revision.id", name="fk_owner_rollout_from_revision"), nullable=True
        ),
    )
    #: The group's id while running or paused, NULL after (unique: one active per group).
    active_group_id: int | None = Field(
        default=None,
        sa_column=Column(
            Integer, ForeignKey("owner_group.id", name="fk_owner_rollout_active_group"), nullable=True
        ),
    )
    state: str = Field(default=RUNNING, max_length=16, index=True)
    #: ``owner.rollouts.Policy.to_json()``.
    options: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    #: The batch being rolled out (1 = the first); batches are numbered from 1.
    batch: int = 1
    batches: int = 0
    #: Why the rollout paused or ended (None while it runs undisturbed).
    reason: str | None = Field(default=None, sa_column=Column(String(2000), nullable=True))
    #: The rollout this one rolls back (``fdo owner rollouts rollback``), if any.
    rollback_of: int | None = Field(
        default=None,
        sa_column=Column(
            Integer, ForeignKey("owner_rollout.id", name="fk_owner_rollout_rollback_of"), nullable=True
        ),
    )
    created_by: str = Field(default="", max_length=128)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    #: Bumped by every change, compare-and-set (``owner.rollout_runner.compare_and_set``).
    version: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default=text("0")))


class RolloutDevice(SQLModel, table=True):
    """One device of a rollout."""

    __tablename__ = "owner_rollout_device"
    __table_args__ = (UniqueConstraint("rollout_id", "device_id", name="ux_owner_rollout_device"),)

    id: int | None = Field(default=None, primary_key=True)
    rollout_id: int = Field(foreign_key="owner_rollout.id", index=True)
    device_id: int = Field(foreign_key="owner_device.id", index=True)
    batch: int
    #: ``pending``, ``updating``, ``succeeded``, ``failed``, ``held``, ``rolled-back``.
    state: str = Field(default="pending", max_length=16)
    #: The device's desired revision when the rollout started.
    from_revision_id: int | None = Field(
        default=None,
        sa_column=Column(
            Integer,
            ForeignKey("owner_revision.id", name="fk_owner_rollout_device_from_revision"),
            nullable=True,
        ),
    )
    #: The device's desired generation once the rollout told it (its check-ins count from it).
    generation: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    started_at: datetime | None = _optional_ts()
    finished_at: datetime | None = _optional_ts()
    error_step: str | None = Field(default=None, sa_column=Column(String(256), nullable=True))
    error: str | None = Field(default=None, sa_column=Column(String(2000), nullable=True))


ROLLOUT_TABLES: list[type[SQLModel]] = [Rollout, RolloutDevice]
