"""Cookieless identity: the raw IP and User-Agent are never stored or logged."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import redis
import sqlalchemy as sa
from flask.testing import FlaskClient

from analytics_service import db, keys
from analytics_service.config import Settings
from analytics_service.live import LiveStore
from analytics_service.sites import MAX_ONLINE_WINDOW, SiteRepository, build_site
from analytics_service.visitor import SaltStore, salt_expiry, visitor_id

from .conftest import PORTAL, Browser, FrozenClock, counter, counting_app, eventually

IP = "203.0.113.77"
UA = "Mozilla/5.0 (PrivacyProbe; rv:99.0) Gecko/20100101 Firefox/99.0"


def test_neither_ip_nor_user_agent_reaches_redis_sql_or_logs(
    client: FlaskClient,
    rdb: redis.Redis,
    settings: Settings,
    clock: FrozenClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    reader = Browser(client, ip=IP, user_agent=UA)
    for n in range(3):
        reader.hit(f"/p{n}", referrer="https://news.example/")
        clock.advance(2000)

    # The day written to SQL too, as the scheduler's checkpoint writes it.
    svc = client.application.extensions["analytics"]
    assert svc.rollup.checkpoint(svc.repo.require("demo"), clock())

    needles = [IP.encode(), UA.encode(), b"PrivacyProbe"]
    keys = rdb.keys("*")
    assert len(keys) > 5  # the day's keys, the online set, the total...
    for key in keys:
        blob = key + (rdb.dump(key) or b"")
        assert not any(n in blob for n in needles), key

    engine = db.create_engine(settings.effective_database_url)
    with engine.connect() as conn:
        for table in db.metadata.sorted_tables:
            dumped = repr(conn.execute(sa.select(table)).all()).encode()
            assert not any(n in dumped for n in needles), table.name
    engine.dispose()
    assert IP not in caplog.text and "PrivacyProbe" not in caplog.text


def test_visitor_ids_differ_by_salt_so_days_cannot_be_linked() -> None:
    a = visitor_id(b"salt-of-monday" * 2, "demo", IP, UA)
    b = visitor_id(b"salt-of-tuesday" * 2, "demo", IP, UA)
    assert len(a) == 8
    assert a != b
    assert visitor_id(b"salt-of-monday" * 2, "other-site", IP, UA) != a


def test_every_worker_uses_the_same_salt_for_a_day(settings: Settings, clock: FrozenClock) -> None:
    stores = LiveStore(settings), LiveStore(settings)
    first, second = (SaltStore(store) for store in stores)
    day = clock().date()
    assert first.get(day, clock()) == second.get(day, clock())
    assert len(first.get(day, clock())) == 32
    for store in stores:
        store.close()


def test_a_salt_past_its_expiry_is_never_put_back_into_redis(
    settings: Settings, clock: FrozenClock, rdb: redis.Redis
) -> None:
    """The worker re-reads the salts it holds, offering each: once Redis has deleted one
    (two days after its date), offering it would set it again, and the ids of its date
    could be linked to readers for as long as workers kept doing so."""
    store = LiveStore(settings)
    read: list[date] = []
    read_salt = store.salt

    def recorded(day: date, ttl_seconds: int, known: bytes | None = None) -> bytes:
        read.append(day)
        return read_salt(day, ttl_seconds, known)

    store.salt = recorded  # type: ignore[method-assign]
    salts = SaltStore(store, refresh_seconds=0)  # every salt due for a re-read at once
    day = clock().date()
    salts.get(day, clock())
    clock.advance(86400)
    salts.get(day + timedelta(days=1), clock())  # a worker counting day after day
    # That day's round of the thread, which still sees `day` unexpired, is over (the next
    # date's salt, fetched ahead, comes last): run late, it put the salt back after the
    # delete below, whatever the code under test does.
    eventually(lambda: day + timedelta(days=2) in read)
    clock.set(salt_expiry(day) + timedelta(hours=8))
    rdb.delete(keys.salt(day))  # as Redis does at the expiry (its clock is not the test's)
    later = clock().date()
    salts.get(later, clock())
    read.clear()
    salts.get(later, clock())  # the thread re-reads every salt it holds, in date order
    eventually(lambda: later in read)
    assert day not in read
    assert not rdb.exists(keys.salt(day))
    store.close()


def test_a_salt_outlives_the_online_window_of_a_reader_carried_into_the_next_day(
    settings: Settings, clock: FrozenClock, rdb: redis.Redis, repo: SiteRepository
) -> None:
    """A reader online across a site's midnight counts once: their first hit of the new
    day looks them up under yesterday's id, with yesterday's salt, for as long as they can
    be online (the longest window, a day). West of UTC that is well past 00:00 UTC two
    days after the date: a worker started then (recycled by gunicorn) found the salt gone
    from Redis and counted the reader twice."""
    new_york = ZoneInfo("America/New_York")
    repo.create(
        build_site(
            "ny",
            name="NY",
            timezone="America/New_York",
            origins=[PORTAL],
            online_window=MAX_ONLINE_WINDOW,
        ),
        clock(),
    )
    clock.set(datetime(2026, 11, 27, 23, 0, tzinfo=new_york))
    first = counting_app(settings, clock)
    Browser(first.test_client()).hit("/", site="ny")
    first.extensions["analytics"].close()
    salt_key = keys.salt(date(2026, 11, 27))
    expires_at = clock() + timedelta(seconds=rdb.ttl(salt_key))

    # 20:00 the next evening: the reader's hit of 23:00 is 21 hours old, still online.
    clock.set(datetime(2026, 11, 28, 20, 0, tzinfo=new_york))
    if clock() >= expires_at:
        rdb.delete(salt_key)  # as Redis does at the expiry (its clock is not the test's)
    later = counting_app(settings, clock)
    Browser(later.test_client()).hit("/", site="ny")
    assert counter(later.test_client(), "ny")["online"] == 1
    later.extensions["analytics"].close()


def test_x_forwarded_for_is_ignored_unless_proxies_are_trusted(
    client: FlaskClient, settings: Settings, clock: FrozenClock, site_token: str
) -> None:
    def visitors_after_two_forwarded_hits(app_client: FlaskClient) -> int:
        for ip in ("198.51.100.1", "198.51.100.2"):
            app_client.post(
                "/api/v1/hit",
                json={"site": "demo", "url": "https://portal.example/"},
                headers={"User-Agent": UA, "X-Forwarded-For": ip},
                environ_base={"REMOTE_ADDR": "10.0.0.1"},
            )
        counter = app_client.get("/api/v1/sites/demo/counter").get_json()
        return counter["today"]["visitors"]

    # Untrusted: both hits come from the proxy's address, i.e. one visitor.
    assert visitors_after_two_forwarded_hits(client) == 1
    trusted = counting_app(replace(settings, trusted_proxies=1), clock)
    assert visitors_after_two_forwarded_hits(trusted.test_client()) == 3
    trusted.extensions["analytics"].close()


def test_a_port_or_brackets_a_proxy_adds_to_the_forwarded_address_make_no_new_visitor(
    settings: Settings, clock: FrozenClock, site_token: str
) -> None:
    """Some proxies send X-Forwarded-For as address:port (a new port per connection): each
    connection of a reader was a new visitor, and a new address to the flood guard."""
    app = counting_app(replace(settings, trusted_proxies=1), clock)
    client = app.test_client()
    for forwarded in ("198.51.100.7:1111", "198.51.100.7:2222", "198.51.100.7"):
        assert (
            client.post(
                "/api/v1/hit",
                json={"site": "demo", "url": "https://portal.example/"},
                headers={"User-Agent": UA, "X-Forwarded-For": forwarded},
            ).status_code
            == 202
        )
    for forwarded in ("[2001:db8::1]:443", "[2001:db8::1]", "2001:db8::1"):
        client.post(
            "/api/v1/hit",
            json={"site": "demo", "url": "https://portal.example/"},
            headers={"User-Agent": UA, "X-Forwarded-For": forwarded},
        )
    today = client.get("/api/v1/sites/demo/counter").get_json()["today"]
    assert (today["pageviews"], today["visitors"]) == (6, 2)
    app.extensions["analytics"].close()


def test_one_address_in_any_of_its_spellings_is_one_visitor(
    settings: Settings, clock: FrozenClock, site_token: str
) -> None:
    """An IPv6 address has many spellings (case, zeros, `::`), and a server listening on
    both families sees an IPv4 client as `::ffff:a.b.c.d`: two nodes behind one balancer,
    one bound to `[::]` and one to `0.0.0.0`, made two visitors of one reader."""
    app = counting_app(replace(settings, trusted_proxies=1), clock)
    client = app.test_client()
    spellings = (
        ("2001:db8::1", "2001:DB8:0:0:0:0:0:1", "[2001:0db8::0001]:443"),
        ("198.51.100.9", "::ffff:198.51.100.9", "[::FFFF:198.51.100.9]:80"),
    )
    for forwarded in (f for same in spellings for f in same):
        response = client.post(
            "/api/v1/hit",
            json={"site": "demo", "url": "https://portal.example/"},
            headers={"User-Agent": UA, "X-Forwarded-For": forwarded},
        )
        assert response.status_code == 202
    today = client.get("/api/v1/sites/demo/counter").get_json()["today"]
    assert (today["pageviews"], today["visitors"]) == (6, 2)
    app.extensions["analytics"].close()
