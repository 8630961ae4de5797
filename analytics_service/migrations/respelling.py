"""The history's paths put under the spelling paths.py stores them in (run by the
migrations that follow a change of that spelling: 0008, 0009), the rows of a page a day
counted under two spellings added together."""

from collections import defaultdict
from datetime import date

import sqlalchemy as sa

from analytics_service.history import dialect_insert
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
    respelled: list[dict[str, object]] = []
    moved: defaultdict[tuple[str, date, str], int] = defaultdict(int)
    rows = sa.select(*_ROW, daily_paths.c.pageviews).execution_options(yield_per=10_000)
    for site_id, day, path, pageviews in conn.execute(rows):
        stored = stored_path(path)
        if stored != path:
            respelled.append({"s": site_id, "d": day, "p": path})
            moved[site_id, day, stored] += pageviews
    if not respelled:
        return
    # Two statements for all rows (a row at a time, three round trips each: 50,000 rows
    # took 68 s on PostgreSQL, the service down meanwhile).
    row = [column == sa.bindparam(name) for column, name in zip(_ROW, "sdp", strict=True)]
    conn.execute(sa.delete(daily_paths).where(*row), respelled)
    insert = dialect_insert(conn, daily_paths)
    conn.execute(
        insert.on_conflict_do_update(
            index_elements=[c.name for c in _ROW],
            set_={"pageviews": daily_paths.c.pageviews + insert.excluded.pageviews},
        ),
        [
            {"site_id": site_id, "day": day, "path": path, "pageviews": pageviews}
            for (site_id, day, path), pageviews in moved.items()
        ],
    )
