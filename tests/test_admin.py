"""The admin API: tokens, statistics over periods, top lists, export, import, baseline."""

from __future__ import annotations

import csv
import io
import logging
import sqlite3
import threading
from datetime import date, timedelta

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from werkzeug.test import TestResponse

from analytics_service import cli as cli_module
from analytics_service.ingest import HitRequest
from analytics_service.sites import build_site

from .conftest import PORTAL, Browser, FrozenClock, HistoryEnv, counter
from .test_rollup import HANOI, at, hits, make_rollup

ADMIN = "server-admin-token-0123456789"


def get(env: HistoryEnv, path: str, token: str | None = None, **params: str):  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {token or env.token}"}
    return env.client.get(f"/api/v1/sites/demo/{path}", query_string=params, headers=headers)


@pytest.fixture
def week(history_env: HistoryEnv, clock: FrozenClock) -> HistoryEnv:
    """Traffic on 2026-11-24 (closed), 11-26 (closed), 11-27 (checkpoint only) and today
    11-28 (live), with a referrer on 11-26 and today."""
    rollup, site = make_rollup(history_env), history_env.services.repo.require("demo")
    hits(history_env, clock, at(HANOI, 2026, 11, 24, 9, 0), 2)
    clock.set(at(HANOI, 2026, 11, 26, 9, 0))
    Browser(history_env.client, ip="192.0.2.1").hit("/a", referrer="https://google.com/")
    hits(history_env, clock, at(HANOI, 2026, 11, 27, 9, 0), 1)
    assert rollup.finalise(site, at(HANOI, 2026, 11, 27, 9, 5)) == [
        date(2026, 11, 24),
        date(2026, 11, 26),
    ]
    assert rollup.checkpoint(site, clock())
    hits(history_env, clock, at(HANOI, 2026, 11, 27, 9, 50), 3)  # Redis only, not in SQL
    clock.set(at(HANOI, 2026, 11, 28, 10, 0))
    for i in range(3):
        Browser(history_env.client, ip=f"192.0.2.{i + 10}").hit("/a", referrer="https://zalo.me/x")
    return history_env


def test_stats_by_day_are_zero_filled_and_include_today_and_unclosed_days_live(
    week: HistoryEnv,
) -> None:
    body = get(week, "stats", **{"from": "2026-11-23", "to": "2026-11-29"}).get_json()
    by_day = {r["period"]: (r["visits"], r["pageviews"], r["visitors"]) for r in body["series"]}
    assert by_day == {
        "2026-11-23": (0, 0, 0),
        "2026-11-24": (2, 2, 2),
        "2026-11-25": (0, 0, 0),
        "2026-11-26": (1, 1, 1),
        "2026-11-27": (4, 4, 3),
        "2026-11-28": (3, 3, 3),
        "2026-11-29": (0, 0, 0),
    }
    assert body["totals"] == {
        "visits": 10,
        "pageviews": 10,
        "visitors": 9,
        "bots": 0,
        "rate_limited": 0,
        "duplicates": 0,
    }
    assert (body["from"], body["to"], body["interval"]) == ("2026-11-23", "2026-11-29", "day")


def test_the_default_start_of_a_range_stays_within_the_dates_the_document_allows(
    history_env: HistoryEnv,
) -> None:
    body = get(history_env, "stats", to="1900-01-05").get_json()
    assert (body["from"], body["to"]) == ("1900-01-01", "1900-01-05")
    assert body["series"][0]["period"] == "1900-01-01"


def test_stats_by_week_and_month_group_site_local_days_cut_to_the_range(week: HistoryEnv) -> None:
    weeks = get(week, "stats", **{"from": "2026-11-20", "to": "2026-11-28", "interval": "week"})
    assert [(r["period"], r["from"], r["to"], r["visits"]) for r in weeks.get_json()["series"]] == [
        ("2026-11-16", "2026-11-20", "2026-11-22", 0),
        ("2026-11-23", "2026-11-23", "2026-11-28", 10),
    ]
    months = get(week, "stats", **{"from": "2026-10-31", "to": "2026-12-01", "interval": "month"})
    assert [(r["period"], r["visits"]) for r in months.get_json()["series"]] == [
        ("2026-10-01", 0),
        ("2026-11-01", 10),
        ("2026-12-01", 0),
    ]


def test_top_pages_and_referrers_merge_history_with_the_live_days(week: HistoryEnv) -> None:
    pages = get(week, "pages", **{"from": "2026-11-20", "to": "2026-11-28", "limit": "2"})
    assert pages.get_json()["pages"] == [
        {"path": "/a", "pageviews": 4},  # a tie is ordered by name
        {"path": "/p0", "pageviews": 4},
    ]
    refs = get(week, "referrers", **{"from": "2026-11-20", "to": "2026-11-28"}).get_json()
    assert refs["referrers"] == [
        {"host": "zalo.me", "display_host": "zalo.me", "visits": 3},
        {"host": "google.com", "display_host": "google.com", "visits": 1},
    ]
    only_closed = get(week, "referrers", **{"from": "2026-11-26", "to": "2026-11-26"})
    assert only_closed.get_json()["referrers"] == [
        {"host": "google.com", "display_host": "google.com", "visits": 1}
    ]


def test_a_top_lists_shares_are_of_the_days_it_ranks_not_of_imported_ones(week: HistoryEnv) -> None:
    """An old counter's days have totals but no pages or referrers: counted into what the
    shares are of, they made every page's share look smaller (here 4 of 10 would show as
    4 of 910)."""
    imported = post_import(week, "2026-11-21,300,300,250\n2026-11-22,300,600,200\n")
    assert imported.status_code == 200, imported.get_json()
    span = {"from": "2026-11-20", "to": "2026-11-28"}
    assert get(week, "stats", **span).get_json()["totals"]["pageviews"] == 910
    pages = get(week, "pages", **span).get_json()
    assert pages["pageviews"] == 10 == sum(p["pageviews"] for p in pages["pages"])
    refs = get(week, "referrers", **span).get_json()
    assert refs["visits"] == 10  # 4 of them from a referrer, the rest direct
    assert get(week, "pages", **{"from": "2026-11-21", "to": "2026-11-22"}).get_json() == {
        "site": "demo",
        "timezone": "Asia/Ho_Chi_Minh",
        "from": "2026-11-21",
        "to": "2026-11-22",
        "pageviews": 0,
        "pages": [],
    }


def test_a_page_the_live_day_lifts_past_the_stored_leaders_is_ranked_with_its_whole_count(
    history_env: HistoryEnv, clock: FrozenClock
) -> None:
    """The stored days are ranked in SQL, only their leaders read (a year of a busy site is
    millions of rows): a page below them there, and behind 600 other pages of the live
    day, must still come out first with its stored and live counts added, and ties must
    go by name as Python orders them (/B before /a)."""
    rollup, site = make_rollup(history_env), history_env.services.repo.require("demo")
    clock.set(at(HANOI, 2026, 11, 26, 9, 0))
    for n, path in enumerate(["/B"] * 3 + ["/a"] * 3 + ["/z"] * 2):
        Browser(history_env.client, ip=f"192.0.2.{n + 1}").hit(path)
    history_env.services.store.flush(timeout=10)
    assert date(2026, 11, 26) in rollup.finalise(site, at(HANOI, 2026, 11, 27, 9, 0))
    clock.set(at(HANOI, 2026, 11, 28, 10, 0))
    for n in range(600):
        Browser(history_env.client, ip=f"198.51.100.{n % 200}", user_agent=f"UA/{n}").hit(
            f"/n{n:03d}"
        )
    for n in range(2):
        Browser(history_env.client, ip=f"203.0.113.{n + 1}").hit("/z")
    history_env.services.store.flush(timeout=10)

    def top(limit: int, to: str = "2026-11-28") -> list[tuple[str, int]]:
        body = get(history_env, "pages", **{"from": "2026-11-20", "to": to, "limit": str(limit)})
        return [(row["path"], row["pageviews"]) for row in body.get_json()["pages"]]

    assert top(2) == [("/z", 4), ("/B", 3)]
    assert top(4) == [("/z", 4), ("/B", 3), ("/a", 3), ("/n000", 1)]
    assert top(1, to="2026-11-27") == [("/B", 3)]  # stored days only: the tie cut in SQL


def test_a_referrer_host_that_mixes_scripts_to_pass_for_another_is_shown_as_sent(
    history_env: HistoryEnv,
) -> None:
    """Anyone can send a referrer. "google.com" spelt with two Cyrillic o's is a valid IDN that
    reads exactly as google.com: shown decoded, the dashboard would list two rows that read
    the same, one of them the forger's. A label mixing scripts, or made only of Cyrillic
    letters that pass for Latin ones under a TLD that is not Cyrillic, is shown in the
    punycode browsers show for it; others (Vietnamese, Russian, Arabic, Japanese with its
    kana and kanji) are still shown in Unicode."""
    sent = {
        "google.com": "google.com",
        "xn--ggle-55da.com": "xn--ggle-55da.com",  # g, two Cyrillic o (U+043E), gle
        "xn--pple-43d.com": "xn--pple-43d.com",  # a Cyrillic a (U+0430), pple
        "xn--80aa0cbo65f.com": "xn--80aa0cbo65f.com",  # paypal, all in Cyrillic look-alikes
        "xn--j1ahi.com": "\u0441\u043e\u043a.com",  # Russian, with a letter no Latin one
        "xn--80aa0cbo65f.xn--p1ai": "\u0440\u0430\u0443\u0440\u0430\u04cf.\u0440\u0444",
        "xn--linhiphi-l1a7657ezfa.vn": "liênhiệphội.vn",
        "xn--mgbh0fb.xn--kgbechtv": "مثال.إختبار",
        "xn--r8jz45g.jp": "例え.jp",
    }
    for i, host in enumerate(sent):
        Browser(history_env.client, ip=f"192.0.2.{i + 10}").hit("/", referrer=f"https://{host}/")
    refs = get(history_env, "referrers").get_json()["referrers"]
    assert {r["host"]: r["display_host"] for r in refs} == sent


def test_export_has_one_row_per_day_and_imports_back_unchanged(
    week: HistoryEnv, clock: FrozenClock
) -> None:
    """Moving a site's history to another instance: its export is an import, every column."""
    span = {"from": "2026-11-24", "to": "2026-11-26"}
    response = get(week, "export.csv", **span)
    assert response.mimetype == "text/csv"
    exported = response.get_data(as_text=True)
    assert exported.splitlines() == [
        "date,visits,pageviews,visitors,bots,rate_limited,duplicates",
        "2026-11-24,2,2,2,0,0,0",
        "2026-11-25,0,0,0,0,0,0",
        "2026-11-26,1,1,1,0,0,0",
    ]
    with_drops = exported.replace("2026-11-26,1,1,1,0,0,0", "2026-11-26,1,1,1,4,5,6")
    token = week.add_site("moved", "Asia/Ho_Chi_Minh", clock())
    moved = week.client.post(
        "/api/v1/sites/moved/import",
        data=with_drops.encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "text/csv"},
    )
    assert moved.status_code == 200, moved.get_json()
    again = week.client.get(
        "/api/v1/sites/moved/export.csv",
        query_string=span,
        headers={"Authorization": f"Bearer {token}"},
    )
    assert again.get_data(as_text=True) == with_drops


def test_an_export_for_a_spreadsheet_that_reads_semicolons_imports_back_too(
    week: HistoryEnv, clock: FrozenClock
) -> None:
    """Excel set for Vietnamese (',' the decimal mark) splits CSV cells at ';' only."""
    span = {"from": "2026-11-24", "to": "2026-11-25", "separator": "semicolon"}
    exported = get(week, "export.csv", **span).get_data(as_text=True)
    assert exported.splitlines() == [
        "date;visits;pageviews;visitors;bots;rate_limited;duplicates",
        "2026-11-24;2;2;2;0;0;0",
        "2026-11-25;0;0;0;0;0;0",
    ]
    token = week.add_site("moved", "Asia/Ho_Chi_Minh", clock())
    moved = week.client.post(
        "/api/v1/sites/moved/import",
        data=exported.encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "text/csv"},
    )
    assert moved.status_code == 200, moved.get_json()
    refused = get(week, "export.csv", separator="tab")
    assert refused.status_code == 400
    assert refused.get_json()["error"]["message"] == (
        "'separator' must be one of comma, semicolon, got 'tab'"
    )


def post_import(env: HistoryEnv, body: str, token: str | None = None):  # type: ignore[no-untyped-def]
    return env.client.post(
        "/api/v1/sites/demo/import",
        data=body.encode(),
        headers={"Authorization": f"Bearer {token or env.token}", "Content-Type": "text/csv"},
    )


def test_an_import_shows_in_the_stats_is_idempotent_per_date_and_leaves_the_total_alone(
    history_env: HistoryEnv,
) -> None:
    first = post_import(
        history_env, "date,visits,pageviews,visitors\n2025-01-01,10,30,9\n2025-01-03,5,6,5\n"
    )
    assert first.status_code == 200, first.get_json()
    assert first.get_json() == {
        "site": "demo",
        "imported": 2,
        "from": "2025-01-01",
        "to": "2025-01-03",
    }
    again = post_import(history_env, "2025-01-01,11,31,10\n")  # no header; replaces the date
    assert again.status_code == 200
    body = get(history_env, "stats", **{"from": "2025-01-01", "to": "2025-01-03"}).get_json()
    assert [(r["visits"], r["pageviews"], r["visitors"]) for r in body["series"]] == [
        (11, 31, 10),
        (0, 0, 0),
        (5, 6, 5),
    ]
    assert counter(history_env.client)["total"] == {"visits": 0, "pageviews": 0}


def test_a_large_import_is_written_in_a_few_statements_not_one_per_day(
    history_env: HistoryEnv,
) -> None:
    """Written a row at a time, 20,000 days took 12 s on PostgreSQL: the shipped nginx
    answered 504 after 10 s, while the import went on and was committed."""
    days = [date(1990, 1, 1) + timedelta(days=i) for i in range(5000)]
    inserts: list[str] = []

    def note(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("INSERT"):
            inserts.append(statement)

    engine = history_env.services.engine
    sa.event.listen(engine, "before_cursor_execute", note)
    try:
        response = post_import(history_env, "".join(f"{d},3,5,2\n" for d in days))
    finally:
        sa.event.remove(engine, "before_cursor_execute", note)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["imported"] == 5000
    # SQLite takes the rows in one executemany; PostgreSQL in batches of 1,000 rows.
    assert 1 <= len(inserts) <= 5
    stats = get(history_env, "stats", **{"from": "2003-01-01", "to": str(days[-1])}).get_json()
    assert stats["totals"]["pageviews"] == 5 * (days[-1] - date(2003, 1, 1)).days + 5


@pytest.mark.parametrize(
    "body",
    [
        "date,visits,pageviews,visitors\r\n2025-01-01,10,30,9\r\n2025-01-03,5,6,5\r\n",
        # Excel for Mac's "CSV (Macintosh)": a lone CR ends each line.
        "date,visits,pageviews,visitors\r2025-01-01,10,30,9\r2025-01-03,5,6,5\r",
        "\n\ndate;visits;pageviews;visitors\n2025-01-01;10;30;9\n\n2025-01-03;5;6;5",
        # Cells copied from a spreadsheet and pasted into a text file.
        "2025-01-01\t10\t30\t9\n2025-01-03\t5\t6\t5\n",
    ],
    ids=["crlf", "cr", "blank-lines-first", "tabs"],
)
def test_an_import_reads_the_line_breaks_and_separators_spreadsheets_write(
    history_env: HistoryEnv, body: str
) -> None:
    response = post_import(history_env, body)
    assert response.status_code == 200, response.get_json()
    stats = get(history_env, "stats", **{"from": "2025-01-01", "to": "2025-01-03"}).get_json()
    assert [(r["visits"], r["pageviews"], r["visitors"]) for r in stats["series"]] == [
        (10, 30, 9),
        (0, 0, 0),
        (5, 6, 5),
    ]


@pytest.mark.parametrize(
    "body",
    [
        # An export opened in a spreadsheet set to Vietnamese and saved again as CSV: ';'
        # between cells, dates day first, counts grouped by '.'.
        "\ufeffdate;visits;pageviews;visitors;bots;rate_limited;duplicates\r\n"
        "12/01/2025;1.024;3.100;998;0;0;0\r\n13/01/2025;0;0;0;0;0;0\r\n"
        "14/1/2025;5;6;5;1.200;0;0\r\n",
        # The same under American settings: month first, grouping commas in quoted cells.
        'date,visits,pageviews,visitors\n01/12/2025,"1,024","3,100",998\n1/14/2025,5,6,5\n',
        # Year first, as Japanese or Chinese settings write it; French grouping by spaces.
        "2025/01/12\t1\u00a0024\t3 100\t998\n2025.1.14\t5\t6\t5\n",
    ],
    ids=["vietnamese", "american", "year-first"],
)
def test_an_import_reads_the_dates_and_counts_a_spreadsheet_writes_under_its_settings(
    history_env: HistoryEnv, body: str
) -> None:
    response = post_import(history_env, body)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["imported"] == 2
    stats = get(history_env, "stats", **{"from": "2025-01-12", "to": "2025-01-14"}).get_json()
    assert [(r["visits"], r["pageviews"], r["visitors"]) for r in stats["series"]] == [
        (1024, 3100, 998),
        (0, 0, 0),
        (5, 6, 5),
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("2025-01-01,1,2,1\n2025-02-30,1,2,1\n", "line 2: date '2025-02-30'"),
        # Day first or month first: the file must say which, and say it once.
        ("01/02/2025,1,2,1\n03/04/2025,1,2,1\n", "line 1: '01/02/2025' may put the day or"),
        (
            "31/01/2025,1,2,1\n01/31/2025,1,2,1\n",
            "line 1 writes the day first (31/01/2025), line 2",
        ),
        ("31/02/2025,1,2,1\n", "line 1: date '31/02/2025' is not a date"),
        # A mark followed by other than three digits is a fraction, not grouping.
        ("2025-01-01,1.5,2,1\n", "line 1: visits '1.5' is not a whole number"),
        ("2025-01-01,1.000.00,2,1\n", "line 1: visits '1.000.00' is not a whole number"),
        ("2025-01-01,1.000,2,1\n", "line 1: 2 pageviews but 1000 visits"),
        ('2025-01-01,"1,000.000",2,1\n', "line 1: visits '1,000.000' is not a whole number"),
        ("date,visits,pageviews,visitors\n2025-01-01,1,-2,1\n", "line 2: pageviews '-2'"),
        ("2025-01-01,1,2\n", "line 1: expected 4 columns"),
        ("2025-01-01,1,2,1\n\n2025-01-01,1,2,1\n", "line 3: 2025-01-01 also on line 1"),
        ("2026-11-28,1,2,1\n", "line 1: 2026-11-28 is not closed yet"),
        ("day,visits,pageviews,visitors\n", "line 1: date 'day'"),
        ("date,visits,views,visitors\n", "line 1: the header must be"),
        ("", "no rows"),
        ("1899-12-31,1,1,1\n", "line 1: date '1899-12-31'"),
        ("2025-01-01,1000000000000000,1,1\n", "line 1: visits '1000000000000000'"),
        # Counts no day can have: most often the columns in another order.
        ("2025-01-01,5,2,9\n", "line 1: 9 visitors but 5 visits"),
        ("2025-01-01,900,50,10\n", "line 1: 50 pageviews but 900 visits"),
        (
            "date,visits,pageviews,visitors,bots,rate_limited,duplicates\n2025-01-01,2,1,1,0,0,0\n",
            "line 2: 1 pageviews but 2 visits",
        ),
        # A quoted field across lines: the record is named by the line it begins on.
        ('2025-01-01,1,1,1\n2025-01-02,"1\n2",1,1\n', "line 2: visits '1\\n2'"),
    ],
)
def test_a_bad_import_names_its_line_and_writes_nothing(
    history_env: HistoryEnv, body: str, message: str
) -> None:
    response = post_import(history_env, body)
    assert response.status_code == 400
    assert message in response.get_json()["error"]["message"]
    stats = get(history_env, "stats", **{"from": "2025-01-01", "to": "2025-01-03"}).get_json()
    assert stats["totals"]["visits"] == 0


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        # Excel's "Unicode Text": UTF-16 with a byte-order mark.
        ("\ufeff2025-01-01\t120\t310\t97\r\n".encode("utf-16-le"), "UTF-16 text"),
        # A Vietnamese header saved by a spreadsheet in the Windows code page.
        (
            "Ngày,visits,pageviews,visitors\n2025-01-01,120,310,97\n".encode("cp1258"),
            "not UTF-8 text",
        ),
    ],
)
def test_a_file_that_is_not_utf8_is_refused_with_how_to_save_one_that_is(
    history_env: HistoryEnv, body: bytes, kind: str
) -> None:
    response = history_env.client.post(
        "/api/v1/sites/demo/import",
        data=body,
        headers={"Authorization": f"Bearer {history_env.token}", "Content-Type": "text/csv"},
    )
    assert response.status_code == 400
    message = response.get_json()["error"]["message"]
    assert f'the file is {kind}: save it as "CSV UTF-8" and import that' in message


def test_an_old_counters_counts_it_did_not_keep_import_as_0(history_env: HistoryEnv) -> None:
    body = "2025-01-01,120,0,0\n2025-01-02,0,340,95\n"  # visits only; pageviews and visitors
    assert post_import(history_env, body).status_code == 200
    stats = get(history_env, "stats", **{"from": "2025-01-01", "to": "2025-01-02"}).get_json()
    assert [(r["visits"], r["pageviews"]) for r in stats["series"]] == [(120, 0), (0, 340)]


def test_an_import_over_days_this_service_counted_is_refused(
    week: HistoryEnv,
) -> None:
    response = post_import(week, "2024-01-01,1,1,1\n2026-11-24,1,1,1\n")
    assert response.status_code == 400
    assert (
        "line 2: 2026-11-24 holds this service's own counts"
        in response.get_json()["error"]["message"]
    )
    assert (
        get(week, "stats", **{"from": "2024-01-01", "to": "2024-01-01"}).get_json()["totals"][
            "visits"
        ]
        == 0
    )


def test_an_import_over_a_counted_day_not_yet_rolled_up_is_refused(
    history_env: HistoryEnv, clock: FrozenClock
) -> None:
    Browser(history_env.client).hit("/")
    clock.advance(86400)  # yesterday now; no rollup has run
    response = post_import(history_env, "2026-11-28,1,1,1\n")
    assert response.status_code == 400
    assert (
        "line 1: 2026-11-28 holds this service's own counts"
        in (response.get_json()["error"]["message"])
    )


def test_yesterday_is_imported_only_once_the_grace_for_its_late_hits_is_over(
    history_env: HistoryEnv, clock: FrozenClock
) -> None:
    """In the first minutes after midnight a worker may still write yesterday's late hits,
    and the rollup would then skip the day an import had closed: those hits would be in the
    total and never in the history."""
    clock.set(at(HANOI, 2026, 11, 29, 0, 9, 59))
    early = post_import(history_env, "2026-11-28,100,300,90\n")
    assert early.status_code == 400
    assert (
        "line 1: 2026-11-28 is not closed yet: an import takes days up to 2026-11-27"
        in early.get_json()["error"]["message"]
    )
    clock.set(at(HANOI, 2026, 11, 29, 0, 10, 1))
    assert post_import(history_env, "2026-11-28,100,300,90\n").status_code == 200


def test_an_import_of_more_days_than_sqlite_takes_parameters_goes_in(
    history_env: HistoryEnv,
) -> None:
    """SQLite's own build takes at most 32,766 parameters a statement (Debian's takes more),
    and the check for days this service counted bound one per day of the file: a long
    history answered 503 there."""
    engine = history_env.services.engine
    if engine.dialect.name == "sqlite":
        limit = sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER
        sa.event.listen(engine, "connect", lambda conn, _: conn.setlimit(limit, 32_766))
        engine.dispose()
    first = date(1900, 1, 1)
    body = "".join(f"{first + timedelta(days=i)},2,3,1\n" for i in range(40_000))
    response = post_import(history_env, body)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["imported"] == 40_000


def test_an_import_takes_a_file_of_4_mib_in_a_form_and_refuses_a_byte_more(
    history_env: HistoryEnv,
) -> None:
    """A form's envelope around a file of 4 MiB made the body bigger than the 4 MiB the
    service took: the dashboard let the file through and got 413."""
    line = b"2026-01-01,1,1,1\n"
    for size, status in [(4 * 2**20, 400), (4 * 2**20 + 1, 413)]:
        csv = line * (size // len(line)) + b"1" * (size % len(line))
        # The form by hand: the test client's own spools a big one to a file it leaves open.
        form = (
            b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="old.csv"'
            b"\r\nContent-Type: text/csv\r\n\r\n" + csv + b"\r\n--b0undary--\r\n"
        )
        response = history_env.client.post(
            "/api/v1/sites/demo/import",
            data=form,
            content_type="multipart/form-data; boundary=b0undary",
            headers={"Authorization": f"Bearer {history_env.token}"},
        )
        # 400: read, and refused for its lines (one date 246,723 times), not for its size.
        assert response.status_code == status, (size, response.get_json())


@pytest.mark.parametrize("size", [4 * 2**20 + 1, 5 * 2**20], ids=["4-mib-and-a-byte", "5-mib"])
def test_a_file_over_4_mib_is_refused_with_the_limit_whatever_its_size(
    history_env: HistoryEnv, size: int
) -> None:
    """A file past the form's envelope too was answered with Werkzeug's "The data value
    transmitted exceeds the capacity limit.", which names no limit, where one a byte over
    4 MiB was told the limit."""
    response = history_env.client.post(
        "/api/v1/sites/demo/import",
        data=b"1" * size,
        content_type="text/csv",
        headers={"Authorization": f"Bearer {history_env.token}"},
    )
    assert response.status_code == 413
    assert response.get_json()["error"]["message"] == "the file is over 4 MiB"


def test_hits_written_to_an_imported_day_after_the_import_leave_it_as_imported(
    history_env: HistoryEnv, clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker that cannot reach Redis across midnight and past the grace writes its
    hits of the day after an admin imported it. Closing the day again from Redis replaced
    the old counter's figures with those few hits, and made the day refuse a new import
    as "this service's own counts"."""
    svc = history_env.services
    rollup, site = make_rollup(history_env), svc.repo.require("demo")
    clock.set(at(HANOI, 2026, 11, 27, 23, 59))
    late = svc.ingestor.check(
        HitRequest("demo", f"{PORTAL}/late", None, None, "192.0.2.77", Browser.user_agent, None),
        clock(),
    )  # answered 202; its worker's buffer holds it
    clock.set(at(HANOI, 2026, 11, 28, 0, 15))
    assert rollup.finalise(site, clock()) == []
    assert post_import(history_env, "2026-11-27,120,310,97\n").status_code == 200
    clock.set(at(HANOI, 2026, 11, 28, 0, 18))
    svc.store.submit(late)
    svc.store.flush(timeout=10)
    assert rollup.finalise(site, at(HANOI, 2026, 11, 28, 0, 20)) == [date(2026, 11, 27)]
    assert "2026-11-27 is an imported day, kept as imported; 1 visit(s)" in caplog.text
    day = get(history_env, "stats", **{"from": "2026-11-27", "to": "2026-11-27"}).get_json()
    assert (day["totals"]["visits"], day["totals"]["pageviews"]) == (120, 310)
    assert counter(history_env.client)["total"]["visits"] == 1  # the hit, not the import
    again = post_import(history_env, "2026-11-27,121,311,98\n")
    assert again.status_code == 200, again.get_json()


def test_an_exports_rows_of_zeros_replace_no_imported_day_and_clash_with_no_counted_one(
    week: HistoryEnv,
) -> None:
    """Moving a site's export onto a site that holds an old counter's history (imported)
    and days of its own: the export's rows for days without data are no data."""
    old = post_import(week, "2025-01-01,10,30,9\n2025-01-02,10,30,9\n2025-01-03,10,30,9\n")
    assert old.status_code == 200, old.get_json()
    export = (
        "date,visits,pageviews,visitors,bots,rate_limited,duplicates\n"
        "2025-01-01,0,0,0,0,0,0\n"
        "2025-01-02,5,6,5,0,0,0\n"
        "2026-11-24,0,0,0,0,0,0\n"
        "2026-12-31,0,0,0,0,0,0\n"  # an export asked up to a date still to come
    )
    moved = post_import(week, export)
    assert moved.status_code == 200, moved.get_json()
    assert moved.get_json() == {
        "site": "demo",
        "imported": 1,
        "from": "2025-01-02",
        "to": "2025-01-02",
    }
    stats = get(week, "stats", **{"from": "2025-01-01", "to": "2025-01-03"}).get_json()
    assert [r["visits"] for r in stats["series"]] == [10, 5, 10]
    counted = get(week, "stats", **{"from": "2026-11-24", "to": "2026-11-24"}).get_json()
    assert counted["totals"]["visits"] == 2


def test_an_export_of_a_period_without_data_imports_nothing_and_says_so(
    history_env: HistoryEnv,
) -> None:
    export = "date,visits,pageviews,visitors,bots,rate_limited,duplicates\n2025-01-01,0,0,0,0,0,0\n"
    response = post_import(history_env, export)
    assert response.status_code == 400
    assert "every row of the export is zero" in response.get_json()["error"]["message"]


@pytest.mark.parametrize("body", [b"[" * 4000 + b"]" * 4000, b"{", b"[]"])
def test_a_baseline_body_that_is_not_a_json_object_is_a_400(
    history_env: HistoryEnv, body: bytes
) -> None:
    response = history_env.client.put(
        "/api/v1/sites/demo/baseline",
        data=body,
        content_type="application/json",
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_json"


def test_setting_the_baseline_moves_the_total_at_once(history_env: HistoryEnv) -> None:
    response = history_env.client.put(
        "/api/v1/sites/demo/baseline",
        json={"visits": 30545},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert response.get_json() == {"site": "demo", "baseline": {"visits": 30545, "pageviews": 0}}
    assert counter(history_env.client)["total"]["visits"] == 30545
    bad = history_env.client.put(
        "/api/v1/sites/demo/baseline",
        json={"visits": -1},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert bad.status_code == 400
    assert counter(history_env.client)["total"]["visits"] == 30545


def put_baseline(env: HistoryEnv, body: object):  # type: ignore[no-untyped-def]
    return env.client.put(
        "/api/v1/sites/demo/baseline", json=body, headers={"Authorization": f"Bearer {ADMIN}"}
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"visits": None}, "'visits'"),
        ({"visits": "5"}, "'visits'"),
        ({"visits": True}, "'visits'"),
        ({"visits": 1.5}, "'visits'"),
        ({"pageviews": 10**15 + 1}, "'pageviews'"),
        ({"visits": 5, "pagevews": 3}, "'pagevews'"),  # a typo is not silently dropped
    ],
)
def test_a_bad_baseline_field_is_a_400_naming_it_and_changes_nothing(
    history_env: HistoryEnv, body: dict[str, object], field: str
) -> None:
    response = put_baseline(history_env, body)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_field"
    assert response.get_json()["error"]["message"].startswith(field)
    assert counter(history_env.client)["total"] == {"visits": 0, "pageviews": 0}


def test_a_baseline_may_leave_either_number_out_and_a_whole_float_is_a_whole_number(
    history_env: HistoryEnv,
) -> None:
    assert put_baseline(history_env, {"visits": 30545.0, "pageviews": 10**15}).status_code == 200
    response = put_baseline(history_env, {"pageviews": 91230})
    assert response.get_json()["baseline"] == {"visits": 30545, "pageviews": 91230}
    assert counter(history_env.client)["total"] == {"visits": 30545, "pageviews": 91230}


def test_a_baseline_set_while_the_site_is_updated_leaves_the_update_standing(
    history_env: HistoryEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`site update` commits between the baseline request's read of the site and its write
    (the update is run at that point by hand): the write sets the baseline only, so the new
    origins stand instead of being written back from the request's stale copy."""
    repo = history_env.services.repo
    read = repo.get

    def read_then_updated(site_id: str):  # type: ignore[no-untyped-def]
        site = read(site_id)
        settings = {**site.as_dict(), "origins": ["https://moved.example"]}
        settings.pop("id")
        repo.update(build_site(site_id, **settings), history_env.services.clock())
        return site

    monkeypatch.setattr(repo, "get", read_then_updated)
    response = put_baseline(history_env, {"visits": 30545})
    monkeypatch.undo()
    assert response.get_json()["baseline"] == {"visits": 30545, "pageviews": 0}
    stored = repo.get("demo")
    assert stored.origins == ("https://moved.example",)
    assert stored.baseline_visits == 30545


def test_a_baseline_set_while_a_time_zone_change_waits_stands_after_the_change(
    history_env: HistoryEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`site update --timezone` reads the site, then waits (up to 30 s) for finalise's
    lock and checks the change: a baseline the dashboard set meanwhile (answered 200) was
    written back as the command had read it, and the total fell back with it."""
    check = cli_module.refuse_a_zone_change

    def baseline_set_meanwhile(*args, **kwargs):  # type: ignore[no-untyped-def]
        assert put_baseline(history_env, {"visits": 30545}).status_code == 200
        return check(*args, **kwargs)

    monkeypatch.setattr(cli_module, "refuse_a_zone_change", baseline_set_meanwhile)
    settings = history_env.services.settings
    env = {
        "ANALYTICS_DATABASE_URL": settings.effective_database_url,
        "ANALYTICS_REDIS_URL": settings.redis_url,
    }
    args = ["site", "update", "demo", "--timezone", "Asia/Bangkok"]
    result = CliRunner().invoke(cli_module.main, args, env=env)
    assert result.exit_code == 0, result.output
    stored = history_env.services.repo.require("demo")
    assert (stored.timezone, stored.baseline_visits) == ("Asia/Bangkok", 30545)
    assert "baseline_visits     30545" in result.output  # what is stored, not what was read
    assert counter(history_env.client)["total"]["visits"] == 30545


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"from": "2026-13-01"}, "'from'"),
        ({"to": "yesterday"}, "'to'"),
        ({"from": "2026-11-28", "to": "2026-11-01"}, "'from' (2026-11-28) is after 'to' ("),
        # The range ends today: it said "is after 'to'", which the client never sent.
        ({"from": "2030-01-01"}, "'from' (2030-01-01) is after today ("),
        ({"from": "2020-01-01", "to": "2026-11-28"}, "'to'"),
        # Without `to` the range ends today: the client sent only `from`.
        ({"from": "2020-01-01"}, "'from'"),
        ({"interval": "year"}, "'interval'"),
        ({"limit": "0"}, "'limit'"),
        ({"limit": "1001"}, "'limit'"),
        ({"limit": "ten"}, "'limit'"),
        # Empty, given twice, or not only digits: the document's integer and date say no.
        ({"limit": ""}, "'limit'"),
        ({"limit": " 10"}, "'limit'"),
        ({"limit": ["5", "5"]}, "'limit'"),
        ({"from": ""}, "'from'"),
        ({"to": ""}, "'to'"),
        ({"interval": ""}, "'interval'"),
        ({"from": ["2026-11-01", "2026-11-02"]}, "'from'"),
        ({"from": "1899-12-31"}, "'from'"),
        # Near the ends of the calendar the default range would step past date.min.
        ({"to": "0001-01-05"}, "'to'"),
        ({"from": "2026-01-01", "to": "9999-12-31", "interval": "month"}, "'to'"),
    ],
)
def test_a_bad_query_gets_a_400_naming_the_parameter(
    history_env: HistoryEnv, params: dict[str, str], parameter: str
) -> None:
    endpoint = "pages" if "limit" in params else "stats"
    response = get(history_env, endpoint, **params)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_parameter"
    assert response.get_json()["error"]["message"].startswith(parameter)


def test_five_years_exactly_is_allowed(history_env: HistoryEnv) -> None:
    assert (
        get(
            history_env, "stats", **{"from": "2021-11-29", "to": "2026-11-28", "interval": "month"}
        ).status_code
        == 200
    )


@pytest.mark.parametrize("path", ["stats", "pages", "referrers", "export.csv"])
def test_every_admin_endpoint_needs_a_token_of_the_site_or_the_server(
    history_env: HistoryEnv, clock: FrozenClock, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    other = history_env.add_site("other", "Asia/Ho_Chi_Minh", clock())
    url = f"/api/v1/sites/demo/{path}"
    caplog.set_level(logging.DEBUG)
    missing = history_env.client.get(url)
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    for header in ("Bearer wrong-token", f"Basic {history_env.token}", "Bearer "):
        assert history_env.client.get(url, headers={"Authorization": header}).status_code == 401
    assert (
        history_env.client.get(url, headers={"Authorization": f"Bearer {other}"}).status_code == 403
    )
    for token in (history_env.token, ADMIN):
        assert (
            history_env.client.get(url, headers={"Authorization": f"Bearer {token}"}).status_code
            == 200
        )
    assert history_env.token not in caplog.text and ADMIN not in caplog.text


def test_the_server_token_reads_any_site_and_learns_which_do_not_exist(
    history_env: HistoryEnv, clock: FrozenClock
) -> None:
    other_token = history_env.add_site("other", "Asia/Ho_Chi_Minh", clock())
    auth = {"Authorization": f"Bearer {ADMIN}"}
    assert history_env.client.get("/api/v1/sites/other/stats", headers=auth).status_code == 200
    assert history_env.client.get("/api/v1/sites/ghost/stats", headers=auth).status_code == 404
    # A site token learns nothing about other ids, existing or not.
    site_auth = {"Authorization": f"Bearer {other_token}"}
    assert history_env.client.get("/api/v1/sites/ghost/stats", headers=site_auth).status_code == 403


def test_import_and_baseline_need_the_token_too_and_change_nothing_without_it(
    history_env: HistoryEnv, clock: FrozenClock
) -> None:
    other = history_env.add_site("other", "Asia/Ho_Chi_Minh", clock())
    assert post_import(history_env, "2025-01-01,1,1,1\n", token="nope").status_code == 401
    assert post_import(history_env, "2025-01-01,1,1,1\n", token=other).status_code == 403
    put = history_env.client.put(
        "/api/v1/sites/demo/baseline",
        json={"visits": 5},
        headers={"Authorization": f"Bearer {other}"},
    )
    assert put.status_code == 403
    assert (
        get(history_env, "stats", **{"from": "2025-01-01", "to": "2025-01-01"}).get_json()[
            "totals"
        ]["visits"]
        == 0
    )
    assert counter(history_env.client)["total"]["visits"] == 0


def test_the_csv_export_is_valid_csv_for_a_spreadsheet(week: HistoryEnv) -> None:
    text = get(week, "export.csv").get_data(as_text=True)
    rows = list(csv.reader(io.StringIO(text)))
    assert len(rows) == 31 and rows[-1][0] == "2026-11-28"


def test_imports_of_the_same_days_in_opposite_orders_at_once_all_go_in(
    history_env: HistoryEnv,
) -> None:
    """An old counter's file lists its days newest first, an export oldest first: sent at
    once (two admins, two tabs), their upserts locked the rows in opposite orders, and
    PostgreSQL failed all but one with a deadlock (503 database_unavailable). On SQLite
    writers take turns. Each waits for the others' locks at most
    ANALYTICS_DATABASE_LOCK_TIMEOUT: one that waited longer is told the database was busy
    (never a deadlock), changed nothing, and goes in when sent again."""
    days = [date(1950, 1, 1) + timedelta(days=i) for i in range(20_000)]
    lines = [f"{d},2,3,1" for d in days]
    bodies = ["\n".join(lines) + "\n", "\n".join(reversed(lines)) + "\n"] * 3
    answers: list[tuple[str, TestResponse]] = []
    start = threading.Barrier(len(bodies))
    headers = {"Authorization": f"Bearer {history_env.token}", "Content-Type": "text/csv"}

    def send(body: str) -> None:
        client = history_env.app.test_client()
        start.wait()
        answers.append((body, client.post("/api/v1/sites/demo/import", data=body, headers=headers)))

    threads = [threading.Thread(target=send, args=(body,)) for body in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for body, answer in answers:
        if answer.status_code == 503:
            assert "held a lock this request needed" in answer.get_json()["error"]["message"]
            again = history_env.client.post("/api/v1/sites/demo/import", data=body, headers=headers)
            assert again.status_code == 200, again.get_json()
        else:
            assert answer.status_code == 200, answer.get_json()
    assert len(answers) == len(bodies)
    span = {"from": "2000-01-01", "to": str(days[-1])}
    assert get(history_env, "stats", **span).get_json()["totals"]["pageviews"] == 3 * (
        (days[-1] - date(2000, 1, 1)).days + 1
    )
