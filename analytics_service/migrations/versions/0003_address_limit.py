"""sites: the per-address flood guard's limit

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing sites get the default: 120 new visits a minute from one address.
    with op.batch_alter_table("sites") as batch:
        batch.add_column(
            sa.Column("address_visit_limit", sa.Integer, nullable=False, server_default="120")
        )


def downgrade() -> None:
    with op.batch_alter_table("sites") as batch:
        batch.drop_column("address_visit_limit")
