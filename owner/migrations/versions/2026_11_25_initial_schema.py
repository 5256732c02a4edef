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
        "owner_audit",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("who", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=256), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_owner_audit_action"), "owner_audit", ["action"], unique=False)
    op.create_index(op.f("ix_owner_audit_at"), "owner_audit", ["at"], unique=False)
    op.create_table(
        "owner_group",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("description", sa.String(length=2000), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=True),
        sa.Column("serial_pattern", sa.String(length=256), nullable=True),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("members", sa.JSON(), nullable=False),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ux_owner_group_default",
        "owner_group",
        ["is_default"],
        unique=True,
        sqlite_where=sa.text("is_default AND deleted_at IS NULL"),
        postgresql_where=sa.text("is_default AND deleted_at IS NULL"),
    )
    op.create_index(
        "ux_owner_group_live_name",
        "owner_group",
        ["name"],
        unique=True,
        sqlite_where=sa.text("deleted_at IS NULL"),
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    op.create_table(
        "owner_voucher",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("guid", sa.LargeBinary(length=16), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("device_info", sa.String(), nullable=False),
        sa.Column("owner_key_spki", sa.LargeBinary(), nullable=False),
        sa.Column("num_entries", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("imported_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("replaces_id", sa.Integer(), nullable=True),
        sa.Column("replaced_by_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["replaced_by_id"],
            ["owner_voucher.id"],
        ),
        sa.ForeignKeyConstraint(
            ["replaces_id"],
            ["owner_voucher.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_owner_voucher_guid"), "owner_voucher", ["guid"], unique=True)
    op.create_index(op.f("ix_owner_voucher_state"), "owner_voucher", ["state"], unique=False)
    op.create_table(
        "owner_device_onboarding",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("guid", sa.LargeBinary(length=16), nullable=False),
        sa.Column("new_guid", sa.LargeBinary(length=16), nullable=True),
        sa.Column("voucher_id", sa.Integer(), nullable=True),
        sa.Column("devmod", sa.JSON(), nullable=False),
        sa.Column("modules", sa.JSON(), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["voucher_id"],
            ["owner_voucher.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_owner_device_onboarding_guid"), "owner_device_onboarding", ["guid"], unique=False
    )
    op.create_table(
        "owner_revision",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("image", sa.String(length=1024), nullable=False),
        sa.Column("transport", sa.String(length=32), nullable=False),
        sa.Column("apply_mode", sa.String(length=32), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("has_registry_auth", sa.Boolean(), nullable=False),
        sa.Column("secret_paths", sa.JSON(), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_by", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["owner_group.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("group_id", "number", name="ux_owner_revision_number"),
    )
    op.create_index(op.f("ix_owner_revision_group_id"), "owner_revision", ["group_id"], unique=False)
    op.create_table(
        "owner_to0_work",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("voucher_id", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("registered_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=2000), nullable=True),
        sa.Column("claimed_by", sa.String(length=128), nullable=True),
        sa.Column("claim_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["voucher_id"],
            ["owner_voucher.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("voucher_id"),
    )
    op.create_index(
        op.f("ix_owner_to0_work_next_attempt_at"), "owner_to0_work", ["next_attempt_at"], unique=False
    )
    op.create_table(
        "owner_device",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("guid", sa.LargeBinary(length=16), nullable=False),
        sa.Column("serial", sa.String(length=256), nullable=True),
        sa.Column("model", sa.String(length=256), nullable=True),
        sa.Column("devmod", sa.JSON(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=True),
        sa.Column("assigned_revision_id", sa.Integer(), nullable=True),
        sa.Column("revision_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["assigned_revision_id"],
            ["owner_revision.id"],
        ),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["owner_group.id"],
        ),
        sa.ForeignKeyConstraint(
            ["revision_id"],
            ["owner_revision.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_owner_device_guid"), "owner_device", ["guid"], unique=True)
    op.create_index(op.f("ix_owner_device_serial"), "owner_device", ["serial"], unique=False)
    op.create_index(op.f("ix_owner_device_status"), "owner_device", ["status"], unique=False)
    op.create_table(
        "owner_revision_secret",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("revision_id", sa.Integer(), nullable=False),
        sa.Column("registry_auth", sa.LargeBinary(), nullable=True),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["revision_id"],
            ["owner_revision.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("revision_id"),
    )
    op.create_table(
        "owner_device_event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["owner_device.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_owner_device_event_device_id"), "owner_device_event", ["device_id"], unique=False
    )
    op.create_table(
        "owner_device_guid",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("guid", sa.LargeBinary(length=16), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["owner_device.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_owner_device_guid_device_id"), "owner_device_guid", ["device_id"], unique=False)
    op.create_index(op.f("ix_owner_device_guid_guid"), "owner_device_guid", ["guid"], unique=True)
    op.create_table(
        "owner_report_token",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["owner_device.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_owner_report_token_device_id"), "owner_report_token", ["device_id"], unique=True)
    op.create_index(
        op.f("ix_owner_report_token_token_hash"), "owner_report_token", ["token_hash"], unique=True
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_owner_report_token_token_hash"), table_name="owner_report_token")
    op.drop_index(op.f("ix_owner_report_token_device_id"), table_name="owner_report_token")
    op.drop_table("owner_report_token")
    op.drop_index(op.f("ix_owner_device_guid_guid"), table_name="owner_device_guid")
    op.drop_index(op.f("ix_owner_device_guid_device_id"), table_name="owner_device_guid")
    op.drop_table("owner_device_guid")
    op.drop_index(op.f("ix_owner_device_event_device_id"), table_name="owner_device_event")
    op.drop_table("owner_device_event")
    op.drop_table("owner_revision_secret")
    op.drop_index(op.f("ix_owner_device_status"), table_name="owner_device")
    op.drop_index(op.f("ix_owner_device_serial"), table_name="owner_device")
    op.drop_index(op.f("ix_owner_device_guid"), table_name="owner_device")
    op.drop_table("owner_device")
    op.drop_index(op.f("ix_owner_to0_work_next_attempt_at"), table_name="owner_to0_work")
    op.drop_table("owner_to0_work")
    op.drop_index(op.f("ix_owner_revision_group_id"), table_name="owner_revision")
    op.drop_table("owner_revision")
    op.drop_index(op.f("ix_owner_device_onboarding_guid"), table_name="owner_device_onboarding")
    op.drop_table("owner_device_onboarding")
    op.drop_index(op.f("ix_owner_voucher_state"), table_name="owner_voucher")
    op.drop_index(op.f("ix_owner_voucher_guid"), table_name="owner_voucher")
    op.drop_table("owner_voucher")
    op.drop_index(
        "ux_owner_group_live_name",
        table_name="owner_group",
        sqlite_where=sa.text("deleted_at IS NULL"),
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    op.drop_index(
        "ux_owner_group_default",
        table_name="owner_group",
        sqlite_where=sa.text("is_default AND deleted_at IS NULL"),
        postgresql_where=sa.text("is_default AND deleted_at IS NULL"),
    )
    op.drop_table("owner_group")
    op.drop_index(op.f("ix_owner_audit_at"), table_name="owner_audit")
    op.drop_index(op.f("ix_owner_audit_action"), table_name="owner_audit")
    op.drop_table("owner_audit")
    op.drop_index(op.f("ix_fdo_session_expires_at"), table_name="fdo_session")
    op.drop_table("fdo_session")
    op.drop_index(op.f("ix_admin_token_token_hash"), table_name="admin_token")
    op.drop_table("admin_token")
