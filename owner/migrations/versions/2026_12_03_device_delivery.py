"""Device records say what their latest TO2 delivered (``owner_device.delivery``).

Revision ID: 2026_12_03_device_delivery
Revises: 2026_11_26_onboarding_new_guid
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "2026_12_03_device_delivery"
down_revision: str | None = "2026_11_26_onboarding_new_guid"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # A database adopted from before migrations was made from the models: it may have it.
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("owner_device")}
    if "delivery" in columns:
        return
    with op.batch_alter_table("owner_device", schema=None) as batch_op:
        batch_op.add_column(sa.Column("delivery", sa.JSON(none_as_null=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("owner_device", schema=None) as batch_op:
        batch_op.drop_column("delivery")
