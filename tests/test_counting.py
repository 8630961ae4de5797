"""How the three numbers are defined: online, today, total."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import quote, unquote
from zoneinfo import ZoneInfo

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from analytics_service.ingest import HitRequest
from analytics_service.sites import SiteRepository, build_site

from .conftest import ON_SERVER_AND_CLUSTER, PORTAL, Browser, FrozenClock, HistoryEnv, counter

# The same assertions on one Redis server and on a Redis Cluster.
pytestmark = ON_SERVER_AND_CLUSTER

HANOI = ZoneInfo("Asia/Ho_Chi_Minh")
NEW_YORK = ZoneInfo("America/New_York")


def other_reader(client: FlaskClient, n: int) -> Browser:
    return Browser(client, ip=f"198.51.100.{n}")


def test_a_first_hit_is_one_visit_one_pageview_one_visitor_and_online(
    reader: Browser, client: FlaskClient
) -> None:
    reader.hit("/")
    c = counter(client)
    assert c["online"] == 1
    assert c["today"] == {"date": "2026-11-28", "visits": 1, "pageviews": 1, "visitors": 1}
    assert c["total"] == {"visits": 1, "pageviews": 1}
    assert c["site"] == "demo"
    assert c["timezone"] == "Asia/Ho_Chi_Minh"
    assert c["online_window_seconds"] == 300


@pytest.mark.parametrize(("elapsed", "online"), [(299, 1), (300, 1), (301, 0)])
def test_a_visitor_is_online_for_exactly_the_window_after_their_last_hit(
    reader: Browser, client: FlaskClient, clock: FrozenClock, elapsed: int, online: int
) -> None:
    reader.hit("/")
    clock.advance(elapsed)
    assert counter(client)["online"] == online


def test_online_counts_distinct_visitors_not_hits(
    reader: Browser, client: FlaskClient, clock: FrozenClock
) -> None:
    for _ in range(3):
        reader.hit("/")
        clock.advance(10)
    other_reader(client, 1).hit("/")
    assert counter(client)["online"] == 2


def test_the_site_online_window_setting_is_what_counts(
    repo: SiteRepository, client: FlaskClient, clock: FrozenClock
) -> None:
    repo.create(build_site("short", name="Short", online_window=60), clock())
    Browser(client).hit("/", site="short")
    clock.advance(61)
    assert counter(client, "short")["online"] == 0
    assert counter(client, "short")["online_window_seconds"] == 60


@pytest.mark.parametrize(("gap", "visits"), [(1799, 1), (1800, 2)])
def test_a_visit_ends_after_30_minutes_without_a_hit(
    reader: Browser, client: FlaskClient, clock: FrozenClock, gap: int, visits: int
) -> None:
    reader.hit("/a")
    clock.advance(gap)
    reader.hit("/b")
    today = counter(client)["today"]
    assert today["visits"] == visits
    assert today["pageviews"] == 2
    assert today["visitors"] == 1


def test_a_hit_after_local_midnight_starts_a_new_visit_but_the_reader_is_online_once(
    reader: Browser, client: FlaskClient, clock: FrozenClock
) -> None:
    clock.set(datetime(2026, 11, 28, 23, 58, tzinfo=HANOI))
    reader.hit("/a")
    clock.set(datetime(2026, 11, 29, 0, 1, tzinfo=HANOI))
    reader.hit("/b")
    c = counter(client)
    assert c["online"] == 1
    assert c["today"] == {"date": "2026-11-29", "visits": 1, "pageviews": 1, "visitors": 1}
    assert c["total"] == {"visits": 2, "pageviews": 2}


def test_today_follows_the_site_time_zone_not_utc(
    reader: Browser, client: FlaskClient, clock: FrozenClock
) -> None:
    # 06:30 in Hanoi is still the previous day in UTC.
    clock.set(datetime(2026, 11, 28, 6, 30, tzinfo=HANOI))
    reader.hit("/")
    assert counter(client)["today"]["date"] == "2026-11-28"
    assert counter(client)["today"]["visits"] == 1


@pytest.mark.parametrize(
    ("last_of_day", "first_of_next", "next_date"),
    [
        # 23-hour day: 2026-03-08 02:00 EST jumps to 03:00 EDT.
        (datetime(2026, 3, 8, 23, 50), datetime(2026, 3, 9, 0, 5), "2026-03-09"),
        # 25-hour day: 2026-11-01 02:00 EDT falls back to 01:00 EST.
        (datetime(2026, 11, 1, 23, 50), datetime(2026, 11, 2, 0, 5), "2026-11-02"),
    ],
)
def test_new_york_dst_days_count_every_hit_once_and_split_at_local_midnight(
    repo: SiteRepository,
    client: FlaskClient,
    clock: FrozenClock,
    last_of_day: datetime,
    first_of_next: datetime,
    next_date: str,
) -> None:
    repo.create(build_site("nyc", name="NYC", timezone="America/New_York"), clock())
    reader = Browser(client)
    day = last_of_day.replace(hour=0, minute=30, tzinfo=NEW_YORK)
    # Hits at 00:30, at both 01:30s on the 25-hour day, at 03:30 and at 23:50.
    moments = [
        day,
        day.replace(hour=1),
        day.replace(hour=1, fold=1),
        day.replace(hour=3),
        last_of_day.replace(tzinfo=NEW_YORK),
    ]
    # Same-zone datetimes compare equal across `fold`: dedupe on the real instant.
    instants = sorted({m.timestamp() for m in moments})
    for ts in instants:
        clock.set(datetime.fromtimestamp(ts, NEW_YORK))
        reader.hit("/", site="nyc")
    today = counter(client, "nyc")["today"]
    assert today["date"] == last_of_day.date().isoformat()
    assert today["pageviews"] == len(instants)
    clock.set(first_of_next.replace(tzinfo=NEW_YORK))
    reader.hit("/", site="nyc")
    assert counter(client, "nyc")["today"] == {
        "date": next_date,
        "visits": 1,
        "pageviews": 1,
        "visitors": 1,
    }


def test_the_baseline_carries_an_old_counter_over(
    repo: SiteRepository, client: FlaskClient, clock: FrozenClock
) -> None:
    site = build_site("lhh", name="Portal", baseline_visits=30545, baseline_pageviews=91000)
    repo.create(site, clock())
    assert counter(client, "lhh")["total"] == {"visits": 30545, "pageviews": 91000}
    Browser(client).hit("/", site="lhh")
    assert counter(client, "lhh")["total"] == {"visits": 30546, "pageviews": 91001}


def test_unique_visitors_are_distinct_people_of_the_day(
    client: FlaskClient, clock: FrozenClock
) -> None:
    for n in range(50):
        for _ in range(2):
            other_reader(client, n).hit("/")
            clock.advance(1)
    today = counter(client)["today"]
    assert (today["visits"], today["pageviews"]) == (50, 100)
    # A HyperLogLog estimate: with 16,384 registers two of 50 visitors can share one.
    assert 48 <= today["visitors"] <= 50


def test_the_same_ip_with_another_browser_is_another_visitor(client: FlaskClient) -> None:
    Browser(client, user_agent="Mozilla/5.0 Firefox/130.0").hit("/")
    Browser(client, user_agent="Mozilla/5.0 Chrome/130.0").hit("/")
    assert counter(client)["today"]["visitors"] == 2


def _paths(rdb: redis.Redis, day: str = "2026-11-28") -> dict[str, int]:
    return {k.decode(): int(v) for k, v in rdb.hgetall(f"an:{{demo}}:paths:{day}").items()}


def test_paths_drop_the_query_and_fragment_and_are_cut_at_512_characters(
    reader: Browser, rdb: redis.Redis
) -> None:
    reader.hit("/tin-tuc/bai-viet?id=5&utm_source=x#binh-luan")
    reader.hit("/tin-tuc/bai-viet")
    reader.hit("")
    reader.hit("/" + "a" * 600)
    assert _paths(rdb) == {"/tin-tuc/bai-viet": 2, "/": 1, "/" + "a" * 511: 1}


def test_past_5000_distinct_paths_a_day_the_rest_count_as_other(
    app: Flask, rdb: redis.Redis, clock: FrozenClock
) -> None:
    ingestor = app.extensions["analytics"].ingestor
    for n in range(5003):
        hit = HitRequest(
            site="demo",
            url=f"{PORTAL}/p/{n}",
            referrer=f"https://ref{n}.example/",
            hit_id=None,
            ip=f"10.{n // 250}.{n % 250}.1",
            user_agent="Mozilla/5.0",
            origin=None,
        )
        ingestor.ingest(hit, clock())
    app.extensions["analytics"].store.flush()
    paths = _paths(rdb)
    assert len(paths) == 5001
    assert paths["(other)"] == 3
    assert paths["/p/4999"] == 1
    refs = rdb.hgetall("an:{demo}:refs:2026-11-28")
    assert len(refs) == 5001
    assert refs[b"(other)"] == b"3"


def test_external_referrers_are_counted_per_visit_and_the_site_itself_is_not(
    reader: Browser, rdb: redis.Redis, clock: FrozenClock
) -> None:
    reader.hit("/", referrer="https://www.google.com/search?q=lien+hiep+hoi")
    reader.hit("/a", referrer=f"{PORTAL}/")  # inside the same visit: not a referral
    clock.advance(3600)
    reader.hit("/b", referrer=f"{PORTAL}/a")  # new visit from the site itself
    Browser(reader.client, ip="192.0.2.1").hit("/", referrer="not a url")
    assert rdb.hgetall("an:{demo}:refs:2026-11-28") == {b"www.google.com": b"1"}


def test_a_page_sent_in_unicode_or_percent_encoded_counts_as_one_page(
    history_env: HistoryEnv,
) -> None:
    """The widget sends location.href, percent-encoded; a client of the API may send the
    same page as people write it. One page, stored as browsers send it."""
    Browser(history_env.client, ip="192.0.2.1").hit("/tin-tức/đại-hội")
    Browser(history_env.client, ip="192.0.2.2").hit("/tin-t%E1%BB%A9c/%C4%91%E1%BA%A1i-h%E1%BB%99i")
    pages = history_env.client.get(
        "/api/v1/sites/demo/pages", headers={"Authorization": f"Bearer {history_env.token}"}
    ).get_json()["pages"]
    assert pages == [{"path": "/tin-t%E1%BB%A9c/%C4%91%E1%BA%A1i-h%E1%BB%99i", "pageviews": 2}]


def test_a_page_whose_escapes_are_written_in_lower_case_is_the_same_page(
    history_env: HistoryEnv,
) -> None:
    Browser(history_env.client, ip="192.0.2.1").hit("/tin-t%E1%BB%A9c")  # as browsers write
    Browser(history_env.client, ip="192.0.2.2").hit("/tin-t%e1%bb%a9c")
    [page] = history_env.client.get(
        "/api/v1/sites/demo/pages", headers={"Authorization": f"Bearer {history_env.token}"}
    ).get_json()["pages"]
    assert (page["path"], page["pageviews"]) == ("/tin-t%E1%BB%A9c", 2)


def test_an_escaped_unreserved_character_is_the_same_page_as_the_character(
    history_env: HistoryEnv,
) -> None:
    """RFC 3986 6.2.2.2: /%7Euser and /~user, /%41 and /A spell one path each; an escaped
    reserved character (/a%2Fb) is another path than the character (/a/b)."""
    for n, path in enumerate(["/~user", "/%7euser", "/%7Euser", "/A", "/%41", "/a/b", "/a%2fb"]):
        Browser(history_env.client, ip=f"192.0.2.{n + 1}").hit(path)
    pages = history_env.client.get(
        "/api/v1/sites/demo/pages", headers={"Authorization": f"Bearer {history_env.token}"}
    ).get_json()["pages"]
    assert sorted((p["path"], p["pageviews"]) for p in pages) == [
        ("/A", 2),
        ("/a%2Fb", 1),
        ("/a/b", 1),
        ("/~user", 3),
    ]


def test_a_percent_sign_that_begins_no_escape_is_the_page_with_it_escaped(
    history_env: HistoryEnv,
) -> None:
    Browser(history_env.client, ip="192.0.2.1").hit("/50%-off")
    Browser(history_env.client, ip="192.0.2.2").hit("/50%25-off")
    [page] = history_env.client.get(
        "/api/v1/sites/demo/pages", headers={"Authorization": f"Bearer {history_env.token}"}
    ).get_json()["pages"]
    assert (page["path"], page["pageviews"]) == ("/50%25-off", 2)


def test_a_path_longer_than_the_limit_is_cut_between_characters(history_env: HistoryEnv) -> None:
    Browser(history_env.client).hit("/" + "đ" * 300)
    [page] = history_env.client.get(
        "/api/v1/sites/demo/pages", headers={"Authorization": f"Bearer {history_env.token}"}
    ).get_json()["pages"]
    assert page["path"] == "/" + "%C4%91" * 85  # 511 characters: a 86th would not fit
    assert unquote(page["path"], errors="strict") == "/" + "đ" * 85


@pytest.mark.parametrize("fill", [509, 510, 511, 508, 506])
def test_a_long_page_sent_encoded_or_not_is_cut_alike_at_a_whole_character(
    history_env: HistoryEnv, fill: int
) -> None:
    """The widget sends location.href (percent-encoded), an API client may send the
    characters: near the limit, both are one page, cut where a character ends."""
    raw = "/" + "a" * fill + "tức"
    Browser(history_env.client, ip="192.0.2.1").hit(quote(raw, safe="/"))
    Browser(history_env.client, ip="192.0.2.2").hit(raw)
    [page] = history_env.client.get(
        "/api/v1/sites/demo/pages", headers={"Authorization": f"Bearer {history_env.token}"}
    ).get_json()["pages"]
    assert page["pageviews"] == 2
    assert len(page["path"]) <= 512
    assert raw.startswith(unquote(page["path"], errors="strict"))


@pytest.mark.parametrize(
    ("referrer", "stored"),
    [
        # A browser writes an ideographic or full-width full stop as "." (UTS 46): the
        # site's own host with its final dot is still the site itself...
        ("https://portal.example\u3002/", set()),
        ("https://www.portal.example\uff0e/", set()),
        # ...and another site's is one host, whichever way its final dot was written.
        ("https://www.google.com\u3002/", {"www.google.com"}),
        ("https://www.google.com../", {"www.google.com"}),
    ],
)
def test_a_referrers_final_dot_is_dropped_however_it_was_written(
    reader: Browser, rdb: redis.Redis, referrer: str, stored: set[str]
) -> None:
    reader.hit("/", referrer=referrer)
    assert {k.decode() for k in rdb.hkeys("an:{demo}:refs:2026-11-28")} == stored
