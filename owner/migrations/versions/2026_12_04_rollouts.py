"""Rollouts (docs/rollouts.md): the group's target revision and rollout policy, what a
device says it holds and its UTC offset, and the rollout tables.

Revision ID: 2026_12_04_rollouts
Revises: 2026_12_04_ui_session
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "2026_12_04_rollouts"
down_revision: str | None = "2026_12_04_ui_session"
branch_labels: str | None = None
depends_on: str | None = None

_DEVICE_COLUMNS = ("held_revision", "held_generation", "utc_offset")


def upgrade() -> None:
    # A database adopted from before migrations was made from the models: it has them.
    inspector = sa.inspect(op.get_bind())
    if "owner_rollout" in inspector.get_table_names():
        return
    # Plain ADD COLUMN (the reference inline on SQLite): a batch copy of owner_group would
    # drop a table its revisions point at, which SQLite's foreign keys refuse.
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "ALTER TABLE owner_group ADD COLUMN target_revision_id INTEGER REFERENCES owner_revision (id)"
        )
    else:
        target = sa.ForeignKey("owner_revision.id", name="fk_owner_group_target_revision")
        op.add_column("owner_group", sa.Column("target_revision_id", sa.Integer(), target, nullable=True))
    op.add_column("owner_group", sa.Column("rollout_policy", sa.JSON(none_as_null=True), nullable=True))
    # Each group's target is what onboarding handed out so far: its newest revision.
    op.execute(
        "UPDATE owner_group SET target_revision_id = (SELECT r.id FROM owner_revision r"
        " WHERE r.group_id = owner_group.id ORDER BY r.number DESC LIMIT 1)"
    )
    with op.batch_alter_table("owner_device", schema=None) as batch_op:
        for name in _DEVICE_COLUMNS:
            batch_op.add_column(sa.Column(name, sa.Integer(), nullable=True))
    op.create_table(
        "owner_rollout",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("revision_id", sa.Integer(), nullable=False),
        sa.Column("from_revision_id", sa.Integer(), nullable=True),
        sa.Column("active_group_id", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("batch", sa.Integer(), nullable=False),
        sa.Column("batches", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=2000), nullable=True),
        sa.Column("rollback_of", sa.Integer(), nullable=True),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.ForeignKeyConstraint(["group_id"], ["owner_group.id"]),
        sa.ForeignKeyConstraint(["revision_id"], ["owner_revision.id"]),
        sa.ForeignKeyConstraint(
            ["from_revision_id"], ["owner_revision.id"], name="fk_owner_rollout_from_revision"
        ),
        sa.ForeignKeyConstraint(
            ["active_group_id"], ["owner_group.id"], name="fk_owner_rollout_active_group"
        ),
        sa.ForeignKeyConstraint(["rollback_of"], ["owner_rollout.id"], name="fk_owner_rollout_rollback_of"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("active_group_id", name="ux_owner_rollout_active_group"),
    )
    op.create_index("ix_owner_rollout_group_id", "owner_rollout", ["group_id"])
    op.create_index("ix_owner_rollout_state", "owner_rollout", ["state"])
    op.create_table(
        "owner_rollout_device",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("rollout_id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("batch", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("from_revision_id", sa.Integer(), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error_step", sa.String(length=256), nullable=True),
        sa.Column("error", sa.String(length=2000), nullable=True),
        sa.ForeignKeyConstraint(["rollout_id"], ["owner_rollout.id"]),
        sa.ForeignKeyConstraint(["device_id"], ["owner_device.id"]),
        sa.ForeignKeyConstraint(
            ["from_revision_id"], ["owner_revision.id"], name="fk_owner_rollout_device_from_revision"
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("rollout_id", "device_id", name="ux_owner_rollout_device"),
    )
    op.create_index("ix_owner_rollout_device_rollout_id", "owner_rollout_device", ["rollout_id"])
    op.create_index("ix_owner_rollout_device_device_id", "owner_rollout_device", ["device_id"])


def downgrade() -> None:
    op.drop_table("owner_rollout_device")
    op.drop_table("owner_rollout")
    with op.batch_alter_table("owner_device", schema=None) as batch_op:
        for name in reversed(_DEVICE_COLUMNS):
            batch_op.drop_column(name)
    with op.batch_alter_table("owner_group", schema=None) as batch_op:
        if op.get_bind().dialect.name != "sqlite":
            batch_op.drop_constraint("fk_owner_group_target_revision", type_="foreignkey")
        batch_op.drop_column("rollout_policy")
        batch_op.drop_column("target_revision_id")
