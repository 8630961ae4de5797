"""The history's paths put under the spelling paths.py stores them in (run by the
migrations that follow a change of that spelling: 0008, 0009, 0010), the rows of a page a
day counted under two spellings added together."""

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

# Rows read, respelled and written at a time. The whole table at once held every row to
# respell in the migrating process: 656 MiB for 5.1 million rows (558,000 respelled) on
# PostgreSQL, about 2.7 GiB for a history of 22 million, in the gunicorn master.
PAGE_ROWS = 10_000

# The upgrade's transaction, kept on the connection once every path has been put under
# today's spelling in it: each revision respells with the current stored_path, so after the
# first of 0008-0010 in one upgrade the others would read the whole table again (6 s each
# for 5.1 million rows) to find nothing. (The transaction, not True: the pooled
# connection's info outlives it, and a later upgrade may find rows to respell.)
_DONE = "analytics_service.paths_respelled"


def respell_paths(conn: sa.Connection) -> None:
    if conn.info.get(_DONE) is conn.get_transaction():
        return
    after: tuple[str, date, str] | None = None
    while True:
        rows = sa.select(*_ROW, daily_paths.c.pageviews).order_by(*_ROW).limit(PAGE_ROWS)
        if after is not None:
            rows = rows.where(sa.tuple_(*_ROW) > sa.tuple_(*after))
        page = conn.execute(rows).all()
        if not page:
            break
        after = tuple(page[-1][:3])  # type: ignore[assignment]
        # A row written here sorts anywhere, a later page too; it is read again there, as a
        # spelling that stored_path keeps, and left alone.
        _respell(conn, page)
    conn.info[_DONE] = conn.get_transaction()


def _respell(conn: sa.Connection, page: list[sa.Row[tuple[str, date, str, int]]]) -> None:
    respelled: list[dict[str, object]] = []
    moved: defaultdict[tuple[str, date, str], int] = defaultdict(int)
    for site_id, day, path, pageviews in page:
        stored = stored_path(path)
        if stored != path:
            respelled.append({"s": site_id, "d": day, "p": path})
            moved[site_id, day, stored] += pageviews
    if not respelled:
        return
    # Two statements a page (a row at a time, three round trips each: 50,000 rows took
    # 68 s on PostgreSQL, the service down meanwhile). A page's rows of a day and another
    # page's of the same day meet in the upsert, which adds them together.
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
