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
        "mfg_voucher",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("guid", sa.LargeBinary(), nullable=False),
        sa.Column("serial", sa.String(length=1024), nullable=False),
        sa.Column("model", sa.String(length=255), nullable=False),
        sa.Column("key_kind", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("num_entries", sa.Integer(), nullable=False),
        sa.Column("owner_key_spki", sa.LargeBinary(), nullable=True),
        sa.Column("handed_off_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_mfg_voucher_created_at"), "mfg_voucher", ["created_at"], unique=False)
    op.create_index(op.f("ix_mfg_voucher_guid"), "mfg_voucher", ["guid"], unique=True)
    op.create_index(op.f("ix_mfg_voucher_model"), "mfg_voucher", ["model"], unique=False)
    op.create_index(op.f("ix_mfg_voucher_serial"), "mfg_voucher", ["serial"], unique=False)
    op.create_table(
        "mfg_handoff",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("voucher_id", sa.Integer(), nullable=False),
        sa.Column("owner_key_spki", sa.LargeBinary(), nullable=False),
        sa.Column("owner_key_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("extended_raw", sa.LargeBinary(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("by", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["voucher_id"],
            ["mfg_voucher.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_mfg_handoff_owner_key_fingerprint"), "mfg_handoff", ["owner_key_fingerprint"], unique=False
    )
    op.create_index(op.f("ix_mfg_handoff_voucher_id"), "mfg_handoff", ["voucher_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_mfg_handoff_voucher_id"), table_name="mfg_handoff")
    op.drop_index(op.f("ix_mfg_handoff_owner_key_fingerprint"), table_name="mfg_handoff")
    op.drop_table("mfg_handoff")
    op.drop_index(op.f("ix_mfg_voucher_serial"), table_name="mfg_voucher")
    op.drop_index(op.f("ix_mfg_voucher_model"), table_name="mfg_voucher")
    op.drop_index(op.f("ix_mfg_voucher_guid"), table_name="mfg_voucher")
    op.drop_index(op.f("ix_mfg_voucher_created_at"), table_name="mfg_voucher")
    op.drop_table("mfg_voucher")
    op.drop_index(op.f("ix_fdo_session_expires_at"), table_name="fdo_session")
    op.drop_table("fdo_session")
    op.drop_index(op.f("ix_admin_token_token_hash"), table_name="admin_token")
    op.drop_table("admin_token")
