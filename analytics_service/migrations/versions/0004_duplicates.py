"""history: the resends of a hit id, tallied per day like robots and rate-limited hits

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("daily_totals") as batch:
        batch.add_column(sa.Column("duplicates", sa.BigInteger, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("daily_totals") as batch:
        batch.drop_column("duplicates")
