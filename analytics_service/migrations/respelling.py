"""The history's paths put under the spelling paths.py stores them in (run by the
migrations that follow a change of that spelling: 0008, 0009), the rows of a page a day
counted under two spellings added together."""

from collections import defaultdict
from datetime import date

import sqlalchemy as sa

from analytics_service.paths import stored_path

# The table as these revisions know it (not db.py's, which later revisions may change).
daily_paths = sa.table(
    "daily_paths",
    sa.column("site_id", sa.String),
    sa.column("day", sa.Date),
    sa.column("path", sa.String),
    sa.column("pageviews", sa.BigInteger),
)
_ROW = (daily_paths.c.site_id, daily_paths.c.day, daily_paths.c.path)


def respell_paths(conn: sa.Connection) -> None:
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
