"""history: every page under the one spelling paths.py stores its path in (percent-encoded,
escapes in upper case), the rows of a page counted under two spellings added together

Releases before 2026-12-06 kept a path as the client sent it, so a page a hand-written
client sent as /tin-tức (or /tin-t%e1%bb%a9c) and the widget as /tin-t%E1%BB%A9c had two
rows a day, and two lines in the top pages.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from collections import defaultdict
from datetime import date

import sqlalchemy as sa
from alembic import op

from analytics_service.paths import stored_path

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# The table as this revision knows it (not db.py's, which later revisions may change).
daily_paths = sa.table(
    "daily_paths",
    sa.column("site_id", sa.String),
    sa.column("day", sa.Date),
    sa.column("path", sa.String),
    sa.column("pageviews", sa.BigInteger),
)
_ROW = (daily_paths.c.site_id, daily_paths.c.day, daily_paths.c.path)


def upgrade() -> None:
    conn = op.get_bind()
    respelled: list[tuple[str, date, str]] = []
    moved: defaultdict[tuple[str, date, str], int] = defaultdict(int)
    rows = sa.select(*_ROW, daily_paths.c.pageviews).execution_options(yield_per=10_000)
    for site_id, day, path, pageviews in conn.execute(rows):
        stored = stored_path(path)
        if stored != path:
            respelled.append((site_id, day, path))
            moved[site_id, day, stored] += pageviews
    for key in respelled:
        conn.execute(sa.delete(daily_paths).where(*_matches(key)))
    for key, pageviews in moved.items():
        kept = conn.execute(sa.select(daily_paths.c.pageviews).where(*_matches(key))).scalar()
        if kept is None:
            site_id, day, path = key
            conn.execute(
                sa.insert(daily_paths).values(
                    site_id=site_id, day=day, path=path, pageviews=pageviews
                )
            )
        else:
            conn.execute(
                sa.update(daily_paths).where(*_matches(key)).values(pageviews=kept + pageviews)
            )


def _matches(key: tuple[str, date, str]) -> list[sa.ColumnElement[bool]]:
    return [column == value for column, value in zip(_ROW, key, strict=True)]


def downgrade() -> None:
    """Nothing to undo: a page's rows stay added together, under the spelling every
    release reads."""
