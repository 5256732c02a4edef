"""Device records hold the desired revision, the check-in credential and what the
device said at its latest check-in (docs/checkin.md).

Revision ID: 2026_12_03_device_checkin
Revises: 2026_12_03_device_delivery
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "2026_12_03_device_checkin"
down_revision: str | None = "2026_12_03_device_delivery"
branch_labels: str | None = None
depends_on: str | None = None


def _columns() -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column(
            "desired_revision_id",
            sa.Integer(),
            sa.ForeignKey("owner_revision.id", name="fk_owner_device_desired_revision"),
            nullable=True,
        ),
        sa.Column("desired_generation", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("checkin_hash", sa.String(64), nullable=True),
        sa.Column("checkin_next_hash", sa.String(64), nullable=True),
        sa.Column("checkin_seq", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("checkin_revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_checkin_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("booted_image", sa.String(1024), nullable=True),
        sa.Column("booted_digest", sa.String(80), nullable=True),
        sa.Column("staged_image", sa.String(1024), nullable=True),
        sa.Column("staged_digest", sa.String(80), nullable=True),
        sa.Column("applied_revision", sa.Integer(), nullable=True),
        sa.Column("apply_state", sa.String(16), nullable=True),
        sa.Column("health", sa.String(16), nullable=True),
        sa.Column("last_error_step", sa.String(256), nullable=True),
        sa.Column("last_error", sa.String(2000), nullable=True),
        sa.Column("rolled_back", sa.Boolean(), nullable=False, server_default=sa.false()),
    ]


def upgrade() -> None:
    # A database adopted from before migrations was made from the models: it may have them.
    existing = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("owner_device")}
    with op.batch_alter_table("owner_device", schema=None) as batch_op:
        for column in _columns():
            if column.name not in existing:
                batch_op.add_column(column)
    # Devices onboarded before: what they were given is what they should run.
    op.execute("UPDATE owner_device SET desired_revision_id = revision_id WHERE desired_revision_id IS NULL")


def downgrade() -> None:
    with op.batch_alter_table("owner_device", schema=None) as batch_op:
        for column in reversed(_columns()):
            batch_op.drop_column(column.name)
