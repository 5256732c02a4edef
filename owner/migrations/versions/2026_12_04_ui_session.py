"""Status page sign-ins are server-side sessions (``owner_ui_session``, owner/web_session.py).

Revision ID: 2026_12_04_ui_session
Revises: 2026_12_03_device_checkin
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "2026_12_04_ui_session"
down_revision: str | None = "2026_12_03_device_checkin"
branch_labels: str | None = None
depends_on: str | None = None

TABLE = "owner_ui_session"


def upgrade() -> None:
    # A database adopted from before migrations was made from the models: it may have it.
    if TABLE in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        TABLE,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_hash", sa.String(length=64), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["token_id"], ["admin_token.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_owner_ui_session_session_hash"), TABLE, ["session_hash"], unique=True)
    op.create_index(op.f("ix_owner_ui_session_token_id"), TABLE, ["token_id"], unique=False)
    op.create_index(op.f("ix_owner_ui_session_expires_at"), TABLE, ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_owner_ui_session_expires_at"), table_name=TABLE)
    op.drop_index(op.f("ix_owner_ui_session_token_id"), table_name=TABLE)
    op.drop_index(op.f("ix_owner_ui_session_session_hash"), table_name=TABLE)
    op.drop_table(TABLE)
