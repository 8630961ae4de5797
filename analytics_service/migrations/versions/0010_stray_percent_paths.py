"""history: a '%' that begins no escape stored escaped (/50%-off is /50%25-off), the rows
of a page counted under both spellings added together

0009 kept such a '%' as it was: a stored spelling was then not always its own (/%4%41 was
stored as /%4A, which is /J when read again), and the widget's /50%-off and a client's
/50%25-off were two rows a day.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from alembic import op

from analytics_service.migrations.respelling import respell_paths

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    respell_paths(op.get_bind())


def downgrade() -> None:
    """Nothing to undo: a page's rows stay added together, under the spelling every
    release reads."""
