"""history: every page under the one spelling paths.py stores its path in (percent-encoded,
escapes in upper case), the rows of a page counted under two spellings added together

Releases before 2026-12-06 kept a path as the client sent it, so a page a hand-written
client sent as /tin-tức (or /tin-t%e1%bb%a9c) and the widget as /tin-t%E1%BB%A9c had two
rows a day, and two lines in the top pages.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from alembic import op

from analytics_service.migrations.respelling import respell_paths

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    respell_paths(op.get_bind())


def downgrade() -> None:
    """Nothing to undo: a page's rows stay added together, under the spelling every
    release reads."""
