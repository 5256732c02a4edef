"""Index onboardings by new GUID (``GET /api/v1/onboardings?guid=`` finds either GUID).

Revision ID: 2026_11_26_onboarding_new_guid
Revises: 2026_11_25_initial
"""

from __future__ import annotations

from alembic import op

revision: str = "2026_11_26_onboarding_new_guid"
down_revision: str | None = "2026_11_25_initial"
branch_labels: str | None = None
depends_on: str | None = None

INDEX = "ix_owner_device_onboarding_new_guid"


def upgrade() -> None:
    # A database adopted from before migrations may have been made with this index already.
    op.create_index(INDEX, "owner_device_onboarding", ["new_guid"], unique=False, if_not_exists=True)


def downgrade() -> None:
    op.drop_index(INDEX, table_name="owner_device_onboarding")
