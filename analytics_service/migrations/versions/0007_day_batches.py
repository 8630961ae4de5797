"""history: the writers' batches each day's row holds, so a batch sent again after a wipe
counts once

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("daily_totals") as batch:
        batch.add_column(sa.Column("batches", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("daily_totals") as batch:
        batch.drop_column("batches")
