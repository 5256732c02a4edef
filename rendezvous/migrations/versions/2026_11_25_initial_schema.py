"""Initial schema: the tables as the service created them at start before migrations.

Revision ID: 2026_11_25_initial
Revises: -
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "2026_11_25_initial"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "admin_token",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_admin_token_token_hash"), "admin_token", ["token_hash"], unique=True)
    op.create_table(
        "fdo_session",
        sa.Column("token", sa.String(length=64), nullable=False),
        sa.Column("protocol", sa.String(length=8), nullable=False),
        sa.Column("state", sa.LargeBinary(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("token"),
    )
    op.create_index(op.f("ix_fdo_session_expires_at"), "fdo_session", ["expires_at"], unique=False)
    op.create_table(
        "rv_registration",
        sa.Column("guid", sa.LargeBinary(), nullable=False),
        sa.Column("to1d", sa.LargeBinary(), nullable=False),
        sa.Column("device_key_spki", sa.LargeBinary(), nullable=False),
        sa.Column("owner_key_spki", sa.LargeBinary(), nullable=False),
        sa.Column("manufacturer_key_spki", sa.LargeBinary(), nullable=False),
        sa.Column("wait_seconds", sa.Integer(), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("guid"),
    )
    op.create_index(op.f("ix_rv_registration_expires_at"), "rv_registration", ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_rv_registration_expires_at"), table_name="rv_registration")
    op.drop_table("rv_registration")
    op.drop_index(op.f("ix_fdo_session_expires_at"), table_name="fdo_session")
    op.drop_table("fdo_session")
    op.drop_index(op.f("ix_admin_token_token_hash"), table_name="admin_token")
    op.drop_table("admin_token")
