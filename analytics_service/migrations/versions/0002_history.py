"""history: daily totals, paths, referrers, and the rollup watermark

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Each primary key (site_id, day, ...) is the index of the admin API's range queries.
    op.create_table(
        "daily_totals",
        sa.Column("site_id", sa.String(63), primary_key=True),
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("visits", sa.BigInteger, nullable=False),
        sa.Column("pageviews", sa.BigInteger, nullable=False),
        sa.Column("visitors", sa.BigInteger, nullable=False),
        sa.Column("bots", sa.BigInteger, nullable=False),
        sa.Column("rate_limited", sa.BigInteger, nullable=False),
        sa.Column("hll", sa.LargeBinary, nullable=True),
        sa.Column("final", sa.Boolean, nullable=False),
        sa.Column("source", sa.String(8), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "daily_paths",
        sa.Column("site_id", sa.String(63), primary_key=True),
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("path", sa.String(512), primary_key=True),
        sa.Column("pageviews", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "daily_referrers",
        sa.Column("site_id", sa.String(63), primary_key=True),
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("host", sa.String(512), primary_key=True),
        sa.Column("visits", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "rollup_watermarks",
        sa.Column("site_id", sa.String(63), primary_key=True),
        sa.Column("finalised_through", sa.Date, nullable=False),
    )


def downgrade() -> None:
    for table in ("rollup_watermarks", "daily_referrers", "daily_paths", "daily_totals"):
        op.drop_table(table)
