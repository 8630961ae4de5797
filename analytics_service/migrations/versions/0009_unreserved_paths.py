"""history: an escaped unreserved character under the character itself (/%41 is the page
/A, /%7Euser is /~user), the rows of a page counted under both spellings added together

Releases before 2026-12-07 kept such an escape as the client sent it (RFC 3986 6.2.2.2:
the two spell one path), so a page linked once as /%7Euser and once as /~user had two
rows a day, and two lines in the top pages.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from alembic import op

from analytics_service.migrations.respelling import respell_paths

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    respell_paths(op.get_bind())


def downgrade() -> None:
    """Nothing to undo: a page's rows stay added together, under the spelling every
    release reads."""
