"""Migrations that change data, not only the schema: run on rows an earlier release wrote,
on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import date

import pytest
import sqlalchemy as sa

from analytics_service import db
from analytics_service.migrations import respelling

DAY = date(2026, 12, 1)
NEXT = date(2026, 12, 2)


def _paths_upgraded_from(
    revision: str, rows: list[tuple[str, date, str, int]], database_url: str
) -> list[tuple[object, ...]]:
    """daily_paths after an upgrade to the head from `revision`, where it held `rows`."""
    engine = db.create_engine(database_url)
    db.upgrade(engine, revision)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(db.daily_paths),
            [dict(zip(("site_id", "day", "path", "pageviews"), r, strict=True)) for r in rows],
        )
    db.upgrade(engine)
    with engine.connect() as conn:
        found = sorted(tuple(r) for r in conn.execute(sa.select(db.daily_paths)))
    engine.dispose()
    return found


def test_the_rows_of_a_page_under_two_spellings_are_added_together(
    empty_database_url: str,
) -> None:
    """Before 2026-12-06 a path was kept as the client sent it: a page sent by the widget
    (percent-encoded), by hand (/tin-tức) and with lower-case escapes was three rows a day,
    three lines in the top pages."""
    earlier = [
        ("demo", DAY, "/tin-t%E1%BB%A9c", 2),  # the widget's
        ("demo", DAY, "/tin-tức", 3),
        ("demo", DAY, "/tin-t%e1%bb%a9c", 1),
        ("demo", DAY, "/a b", 4),
        ("demo", NEXT, "/tin-tức", 7),  # no row of the stored spelling that day
        ("demo", NEXT, "/", 9),
        ("other", DAY, "/tin-tức", 5),
    ]
    assert _paths_upgraded_from("0007", earlier, empty_database_url) == [
        ("demo", DAY, "/a%20b", 4),
        ("demo", DAY, "/tin-t%E1%BB%A9c", 6),
        ("demo", NEXT, "/", 9),
        ("demo", NEXT, "/tin-t%E1%BB%A9c", 7),
        ("other", DAY, "/tin-t%E1%BB%A9c", 5),
    ]


def test_the_rows_of_a_page_under_an_escaped_unreserved_character_are_added_together(
    empty_database_url: str,
) -> None:
    """Before 2026-12-07 an escaped unreserved character stayed as the client sent it: a
    page linked as /%7Euser and as /~user (RFC 3986: one path) was two rows a day."""
    earlier = [
        ("demo", DAY, "/~user", 2),
        ("demo", DAY, "/%7Euser", 3),
        ("demo", DAY, "/%41", 4),  # no row of the stored spelling that day
        ("demo", DAY, "/a%2Fb", 5),  # a reserved character: another path than /a/b
        ("demo", DAY, "/a/b", 6),
    ]
    assert _paths_upgraded_from("0008", earlier, empty_database_url) == [
        ("demo", DAY, "/A", 4),
        ("demo", DAY, "/a%2Fb", 5),
        ("demo", DAY, "/a/b", 6),
        ("demo", DAY, "/~user", 5),
    ]


def test_the_rows_of_a_page_under_a_stray_percent_sign_are_added_together(
    empty_database_url: str,
) -> None:
    """0009 kept a '%' that begins no escape as it was: /50%-off (the widget's) and
    /50%25-off were two rows a day."""
    earlier = [
        ("demo", DAY, "/50%-off", 1),
        ("demo", DAY, "/50%25-off", 2),
        ("demo", DAY, "/100%", 4),
    ]
    assert _paths_upgraded_from("0009", earlier, empty_database_url) == [
        ("demo", DAY, "/100%25", 4),
        ("demo", DAY, "/50%25-off", 3),
    ]


def test_paths_are_respelled_a_page_of_rows_at_a_time(
    empty_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rows are read and rewritten a few at a time (the whole table at once held every
    row to respell in the migrating process: 656 MiB for 5.1 million rows), and a page's
    rows of a day meet the next page's: spellings of one page a day split across pages
    still add up, and a row written ahead of the reading is left alone when read again."""
    monkeypatch.setattr(respelling, "PAGE_ROWS", 2)
    earlier = [
        ("demo", DAY, "/%7Euser", 3),  # sorts before /~user: the upsert makes that row
        ("demo", DAY, "/50%-off", 1),
        ("demo", DAY, "/50%25-off", 2),
        ("demo", DAY, "/a b", 4),
        ("demo", DAY, "/tin-t%E1%BB%A9c", 2),
        ("demo", DAY, "/tin-t%e1%bb%a9c", 1),
        ("demo", DAY, "/tin-tức", 3),
        ("demo", DAY, "/~user", 2),
        ("demo", NEXT, "/100%", 4),
        ("other", DAY, "/tin-tức", 5),
    ]
    assert _paths_upgraded_from("0007", earlier, empty_database_url) == [
        ("demo", DAY, "/50%25-off", 3),
        ("demo", DAY, "/a%20b", 4),
        ("demo", DAY, "/tin-t%E1%BB%A9c", 6),
        ("demo", DAY, "/~user", 5),
        ("demo", NEXT, "/100%25", 4),
        ("other", DAY, "/tin-t%E1%BB%A9c", 5),
    ]


def test_one_upgrade_reads_the_paths_once(
    empty_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0008, 0009 and 0010 respell with today's stored_path: after the first of them in one
    upgrade, the others have nothing left to do and do not read the table again (each read
    took 6 s for 5.1 million rows on PostgreSQL, the service down meanwhile)."""
    pages: list[object] = []
    respell = respelling._respell

    def counted(conn: sa.Connection, page: list[sa.Row[tuple[str, date, str, int]]]) -> None:
        pages.append(page)
        respell(conn, page)

    monkeypatch.setattr(respelling, "_respell", counted)
    earlier = [("demo", DAY, "/tin-tức", 3), ("demo", DAY, "/~user", 2)]
    assert _paths_upgraded_from("0007", earlier, empty_database_url) == [
        ("demo", DAY, "/tin-t%E1%BB%A9c", 3),
        ("demo", DAY, "/~user", 2),
    ]
    assert len(pages) == 1
