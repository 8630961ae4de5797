"""The flood guards and the dedup: what keeps the public counter from being inflated.

A visitor (address + User-Agent) may make 60 pageviews in a sliding minute; one address may
start the site's `address_visit_limit` (120) visits in a sliding minute, whatever
User-Agents it rotates through; a hit id is counted once. What is refused is tallied as
`rate_limited`, never counted, and stores nothing an attacker could grow.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import redis
from flask import Flask
from flask.testing import FlaskClient

from analytics_service import keys
from analytics_service.ingest import HitRequest
from analytics_service.sites import SiteRepository, build_site

from .conftest import ON_SERVER_AND_CLUSTER, PORTAL, Browser, FrozenClock, counter
from .test_counting import HANOI

# The same assertions on one Redis server and on a Redis Cluster.
pytestmark = ON_SERVER_AND_CLUSTER

ADDRESS = "203.0.113.50"


def _agent(n: int) -> str:
    return f"Mozilla/5.0 (X11; Linux x86_64) Firefox/{n}.0"


# What the writer decided for a hit (the 202 no longer says: the guards run when the
# worker's buffer is written), as X-Analytics-Dropped used to name it.
DROPPED = {"v": None, "p": None, "b": "bot", "d": "duplicate", "r": "rate_limited"}


def _dropped(reader: Browser, written: list[str], path: str = "/", **fields: object) -> str | None:
    before = len(written)
    reader.hit(path, **fields)
    assert len(written) == before + 1
    return DROPPED[written[-1]]


def test_one_address_rotating_its_user_agent_starts_at_most_120_visits_a_minute(
    client: FlaskClient, rdb: redis.Redis, written: list[str]
) -> None:
    outcomes = [
        _dropped(Browser(client, ip=ADDRESS, user_agent=_agent(n)), written) for n in range(200)
    ]
    assert outcomes.count(None) == 120
    assert set(outcomes[120:]) == {"rate_limited"}
    c = counter(client)
    assert (c["online"], c["today"]["visits"], c["total"]["visits"]) == (120, 120, 120)
    assert rdb.hget("an:{demo}:day:2026-11-28", "rate_limited") == b"80"


def test_readers_on_addresses_of_their_own_are_all_counted(
    client: FlaskClient, written: list[str]
) -> None:
    for n in range(300):
        assert _dropped(Browser(client, ip=f"198.51.{n // 250}.{n % 250}"), written) is None
    assert counter(client)["today"]["visits"] == 300


def test_an_ipv6_client_counts_as_one_address_across_its_64_block(
    client: FlaskClient, written: list[str]
) -> None:
    """A subscriber is given a /64: rotating addresses inside it is rotating nothing."""
    outcomes = [
        _dropped(Browser(client, ip=f"2001:db8:7:1::{n:x}", user_agent=_agent(n % 3)), written)
        for n in range(130)
    ]
    assert outcomes.count(None) == 120
    # Other blocks, and IPv4 readers written as IPv4-mapped IPv6, are addresses of their own.
    for n in range(5):
        assert _dropped(Browser(client, ip=f"2001:db8:7:{n + 2}::1"), written) is None
        assert _dropped(Browser(client, ip=f"::ffff:198.51.100.{n}"), written) is None


def test_the_address_limit_is_a_site_setting(
    repo: SiteRepository, client: FlaskClient, clock: FrozenClock, written: list[str]
) -> None:
    repo.create(build_site("school", name="School", address_visit_limit=5), clock())
    outcomes = [
        _dropped(Browser(client, ip=ADDRESS, user_agent=_agent(n)), written, site="school")
        for n in range(8)
    ]
    assert outcomes == [None] * 5 + ["rate_limited"] * 3


def test_readers_already_visiting_keep_reading_when_their_address_is_at_its_limit(
    repo: SiteRepository, client: FlaskClient, clock: FrozenClock, written: list[str]
) -> None:
    repo.create(build_site("office", name="Office", address_visit_limit=2), clock())
    first, second, third = (Browser(client, ip=ADDRESS, user_agent=_agent(n)) for n in range(3))
    assert _dropped(first, written, site="office") is None
    assert _dropped(second, written, site="office") is None
    assert _dropped(third, written, site="office") == "rate_limited"
    clock.advance(20)
    # Pageviews of visits already going are not new visits.
    assert _dropped(first, written, "/b", site="office") is None
    assert _dropped(second, written, "/b", site="office") is None


def test_a_burst_across_a_minute_boundary_gets_one_minutes_allowance_not_two(
    reader: Browser, client: FlaskClient, clock: FrozenClock, written: list[str]
) -> None:
    clock.set(clock().replace(second=59, microsecond=100_000))
    outcomes = [_dropped(reader, written) for _ in range(60)]
    clock.advance(1.5)  # 0.6 s into the next minute
    outcomes += [_dropped(reader, written) for _ in range(60)]
    # 0.6 s of the new minute frees 1 % of the old one's 60: one pageview more, not 60.
    assert outcomes.count(None) == 61
    assert counter(client)["today"]["pageviews"] == 61


def test_a_sliding_minute_later_the_visitor_has_the_whole_allowance_again(
    reader: Browser, clock: FrozenClock, written: list[str]
) -> None:
    clock.set(clock().replace(second=30))
    for _ in range(60):
        reader.hit("/")
    assert _dropped(reader, written) == "rate_limited"
    clock.advance(90)  # the burst's minute is now entirely past the sliding minute
    assert [_dropped(reader, written) for _ in range(61)].count(None) == 60


def test_a_reader_carried_across_midnight_is_not_a_new_arrival_for_the_address_guard(
    repo: SiteRepository, client: FlaskClient, clock: FrozenClock, written: list[str]
) -> None:
    repo.create(build_site("night", name="Night", address_visit_limit=1), clock())
    clock.set(datetime(2026, 11, 28, 23, 59, 50, tzinfo=HANOI))
    night_owl = Browser(client, ip=ADDRESS, user_agent=_agent(1))
    assert _dropped(night_owl, written, site="night") is None
    clock.advance(20)  # 00:00:10: a new day, a new visit, the same reader
    assert _dropped(night_owl, written, site="night") is None
    assert counter(client, "night")["today"]["visits"] == 1
    # 10 s into the minute, 5/6 of the night owl's arrival before midnight still weighs in:
    # below the limit of 1 only because the owl's hit after midnight added nothing to it.
    first, second = (Browser(client, ip=ADDRESS, user_agent=_agent(n)) for n in (2, 3))
    assert _dropped(first, written, site="night") is None
    assert _dropped(second, written, site="night") == "rate_limited"


def test_readers_held_across_midnight_start_the_new_days_visits_beyond_the_address_limit(
    repo: SiteRepository, client: FlaskClient, clock: FrozenClock, written: list[str]
) -> None:
    """The other side of the test above, as README's "What the guards cannot do" says: the
    readers one address kept active before midnight are no new arrivals after it, so they
    all start a visit of the new day at once, whatever the address's limit."""
    repo.create(build_site("night", name="Night", address_visit_limit=1), clock())
    clock.set(datetime(2026, 11, 28, 23, 50, 30, tzinfo=HANOI))
    readers = [Browser(client, ip=ADDRESS, user_agent=_agent(n)) for n in range(6)]
    for reader in readers:  # one new reader a minute: within the limit
        assert _dropped(reader, written, site="night") is None
        clock.advance(60)
    clock.set(datetime(2026, 11, 29, 0, 0, 1, tzinfo=HANOI))
    assert [_dropped(reader, written, site="night") for reader in readers] == [None] * 6
    assert counter(client, "night")["today"]["visits"] == 6


def test_the_guards_and_the_dedup_see_a_readers_hits_of_before_midnight(
    repo: SiteRepository, client: FlaskClient, clock: FrozenClock, written: list[str]
) -> None:
    """A reader's ids change with the day's salt at midnight: the guards and the dedup
    look at its ids under yesterday's salt too, so a resend across midnight is still a
    duplicate and a burst across it gets one minute's allowance, not two."""
    repo.create(build_site("night", name="Night", address_visit_limit=2), clock())
    clock.set(datetime(2026, 11, 28, 23, 59, 57, tzinfo=HANOI))
    reader = Browser(client, ip="198.51.100.7", user_agent=_agent(7))
    assert _dropped(reader, written, site="night", id="across-midnight") is None
    clock.advance(4)  # 00:00:01
    assert _dropped(reader, written, site="night", id="across-midnight") == "duplicate"

    clock.set(datetime(2026, 11, 29, 23, 59, 30, tzinfo=HANOI))
    fast = Browser(client, ip="198.51.100.8", user_agent=_agent(8))
    outcomes = []
    for _ in range(60):  # the visitor's allowance, in the minute before midnight
        outcomes.append(_dropped(fast, written, site="night"))
        clock.advance(0.5)
    assert set(outcomes) == {None}
    clock.set(datetime(2026, 11, 30, 0, 0, 0, tzinfo=HANOI))
    assert _dropped(fast, written, site="night") == "rate_limited"

    clock.set(datetime(2026, 11, 30, 23, 59, 58, tzinfo=HANOI))
    for n in (1, 2):  # the address's allowance of new visits
        assert (
            _dropped(Browser(client, ip=ADDRESS, user_agent=_agent(n)), written, site="night")
            is None
        )
    clock.set(datetime(2026, 12, 1, 0, 0, 0, tzinfo=HANOI))
    third = Browser(client, ip=ADDRESS, user_agent=_agent(3))
    assert _dropped(third, written, site="night") == "rate_limited"


def test_a_rate_limited_visitor_stores_none_of_its_hit_ids(
    reader: Browser, rdb: redis.Redis, clock: FrozenClock
) -> None:
    clock.set(clock().replace(second=0))
    for n in range(200):
        reader.hit("/", id=f"flood-id-{n:04d}")
    bucket = int(clock().timestamp()) // keys.DEDUP_SECONDS
    assert rdb.hlen(f"an:{{demo}}:ids:{bucket}") == 60


def test_a_resend_of_a_counted_hit_over_the_flood_guard_is_a_duplicate(
    reader: Browser, client: FlaskClient, clock: FrozenClock, written: list[str]
) -> None:
    """The day's `duplicates` are the resends, `rate_limited` the hits a flood guard
    refused: a widget's resend of a hit it sent in a burst is the first, not the second."""
    clock.set(clock().replace(second=0))
    for n in range(60):
        assert _dropped(reader, written, id=f"burst-id-{n:04d}") is None
    assert _dropped(reader, written, id="burst-id-0100") == "rate_limited"
    assert _dropped(reader, written, id="burst-id-0007") == "duplicate"
    # A resend of the refused hit is refused again: it was never counted.
    assert _dropped(reader, written, id="burst-id-0100") == "rate_limited"
    assert counter(client)["today"]["pageviews"] == 60


def test_a_resend_in_the_next_dedup_bucket_is_still_a_duplicate(
    reader: Browser, client: FlaskClient, clock: FrozenClock, written: list[str]
) -> None:
    bucket_end = (int(clock().timestamp()) // keys.DEDUP_SECONDS + 1) * keys.DEDUP_SECONDS
    clock.set(datetime.fromtimestamp(bucket_end - 1, tz=HANOI))
    assert _dropped(reader, written, id="resend-0001") is None
    clock.advance(keys.DEDUP_SECONDS)  # the next bucket, 300 s after the first send
    assert _dropped(reader, written, id="resend-0001") == "duplicate"
    clock.advance(keys.DEDUP_SECONDS)  # two buckets on: forgotten
    assert _dropped(reader, written, id="resend-0001") is None
    assert counter(client)["today"]["pageviews"] == 2


def test_one_reader_cannot_suppress_another_readers_hit_by_sending_its_id(
    client: FlaskClient, written: list[str]
) -> None:
    assert _dropped(Browser(client, ip="198.51.100.1"), written, id="shared-id-01") is None
    assert _dropped(Browser(client, ip="198.51.100.2"), written, id="shared-id-01") is None
    assert counter(client)["today"]["pageviews"] == 2


def test_head_of_the_pixel_answers_its_headers_and_counts_nothing(client: FlaskClient) -> None:
    response = client.head(
        f"/api/v1/hit.gif?site=demo&url={PORTAL}/", headers={"User-Agent": _agent(1)}
    )
    assert (response.status_code, response.mimetype) == (200, "image/gif")
    assert counter(client)["today"]["pageviews"] == 0


def test_the_pixel_on_a_third_party_page_does_not_count(client: FlaskClient) -> None:
    ua = {"User-Agent": _agent(1)}
    url = f"/api/v1/hit.gif?site=demo&url={PORTAL}/tin-tuc"
    elsewhere = client.get(url, headers={**ua, "Referer": "https://evil.example/page"})
    assert (elsewhere.status_code, elsewhere.mimetype) == (403, "image/gif")
    assert elsewhere.headers["X-Analytics-Error"] == "origin_not_allowed"
    assert counter(client)["today"]["pageviews"] == 0
    # The site's own page (browsers send its origin), or no Referer at all, counts.
    assert client.get(url, headers={**ua, "Referer": f"{PORTAL}/"}).status_code == 202
    assert client.get(url, headers=ua).status_code == 202
    assert counter(client)["today"]["pageviews"] == 2


def test_the_guards_keys_expire_once_they_can_no_longer_be_the_previous_period(
    reader: Browser, rdb: redis.Redis, clock: FrozenClock
) -> None:
    reader.hit("/", id="ttl-check-01")
    minute = int(clock().timestamp()) // 60
    bucket = int(clock().timestamp()) // keys.DEDUP_SECONDS
    assert timedelta(seconds=rdb.ttl(f"an:{{demo}}:rate:{minute}")) >= timedelta(seconds=60)
    assert rdb.ttl(f"an:{{demo}}:ids:{bucket}") == 2 * keys.DEDUP_SECONDS


def test_a_resend_across_midnight_written_before_the_first_send_is_still_a_duplicate(
    app: Flask, client: FlaskClient, clock: FrozenClock, written: list[str]
) -> None:
    """The first send reached one worker at 23:59:58, the resend (its answer was lost)
    another at 00:00:01; the second worker's buffer reached Redis first (README: "a
    reader's hits that went through two workers can reach it out of their order")."""
    svc = app.extensions["analytics"]
    hit = HitRequest(
        site="demo",
        url=f"{PORTAL}/",
        referrer=None,
        hit_id="across-midnight",
        ip="198.51.100.7",
        user_agent=_agent(7),
        origin=None,
    )
    clock.set(datetime(2026, 11, 28, 23, 59, 58, tzinfo=HANOI))
    first_send = svc.ingestor.check(hit, clock())
    clock.set(datetime(2026, 11, 29, 0, 0, 1, tzinfo=HANOI))
    resend = svc.ingestor.check(hit, clock())
    svc.store.submit(resend)
    svc.store.flush()
    svc.store.submit(first_send)
    svc.store.flush()
    assert sorted(written) == ["d", "v"]
    assert counter(client)["total"]["pageviews"] == 1


def test_a_resend_in_the_next_bucket_written_before_the_first_send_is_still_a_duplicate(
    app: Flask, client: FlaskClient, clock: FrozenClock, written: list[str]
) -> None:
    """As across midnight, within a day: the first send at the end of a dedup bucket, the
    resend 3 s later in the next one, through another worker whose buffer reached Redis
    first (README: "whichever of the two sends reaches Redis first")."""
    svc = app.extensions["analytics"]
    hit = HitRequest(
        site="demo",
        url=f"{PORTAL}/",
        referrer=None,
        hit_id="in-the-day-01",
        ip="198.51.100.7",
        user_agent=_agent(7),
        origin=None,
    )
    bucket_end = (int(clock().timestamp()) // keys.DEDUP_SECONDS + 1) * keys.DEDUP_SECONDS
    clock.set(datetime.fromtimestamp(bucket_end - 2, tz=HANOI))
    first_send = svc.ingestor.check(hit, clock())
    clock.advance(3)
    resend = svc.ingestor.check(hit, clock())
    svc.store.submit(resend)
    svc.store.flush()
    svc.store.submit(first_send)
    svc.store.flush()
    assert written == ["v", "d"]
    assert counter(client)["total"]["pageviews"] == 1
