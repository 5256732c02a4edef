"""Pin each GUID to its first registration's manufacturer key and owner key chain.

Revision ID: 2026_12_04_registration_pins
Revises: 2026_11_25_initial
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "2026_12_04_registration_pins"
down_revision: str | None = "2026_11_25_initial"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Registrations already stored are not pinned: each GUID is pinned by its next TO0.
    # A database adopted from before migrations was made from the models: it may have it.
    if sa.inspect(op.get_bind()).has_table("rv_pin"):
        return
    op.create_table(
        "rv_pin",
        sa.Column("guid", sa.LargeBinary(), nullable=False),
        sa.Column("manufacturer_key_hash", sa.LargeBinary(), nullable=False),
        sa.Column("owner_chain", sa.LargeBinary(), nullable=False),
        sa.Column("pinned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("guid"),
    )


def downgrade() -> None:
    op.drop_table("rv_pin")
