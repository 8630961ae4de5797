"""The HTTP API: what a hit and a counter read answer, and what bad input gets."""

from __future__ import annotations

import dataclasses
import socket
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from analytics_service import db, metrics
from analytics_service.app import create_app
from analytics_service.config import Settings
from analytics_service.sites import SiteRepository, build_site

from .conftest import (
    PORTAL,
    Browser,
    FrozenClock,
    _fresh_postgres,
    counter,
    counting_app,
    eventually,
)

UA = {"User-Agent": "Mozilla/5.0 (Windows NT 10.0) Chrome/131.0"}


def _unchanged(client: FlaskClient) -> None:
    c = counter(client)
    assert (c["online"], c["today"]["pageviews"], c["total"]["pageviews"]) == (0, 0, 0)


def test_a_beacon_sent_as_text_plain_is_counted(client: FlaskClient) -> None:
    body = f'{{"site": "demo", "url": "{PORTAL}/"}}'
    response = client.post("/api/v1/hit", data=body, content_type="text/plain", headers=UA)
    assert response.status_code == 202
    assert "X-Analytics-Dropped" not in response.headers
    assert counter(client)["today"]["pageviews"] == 1


def test_a_hit_from_an_allowed_origin_gets_cors_for_that_origin(client: FlaskClient) -> None:
    response = client.post(
        "/api/v1/hit",
        json={"site": "demo", "url": f"{PORTAL}/"},
        headers={**UA, "Origin": PORTAL},
    )
    assert response.status_code == 202
    assert response.headers["Access-Control-Allow-Origin"] == PORTAL
    assert "Origin" in response.headers["Vary"]


def test_the_preflight_allows_a_json_post(client: FlaskClient) -> None:
    response = client.options(
        "/api/v1/hit",
        headers={"Origin": PORTAL, "Access-Control-Request-Method": "POST"},
    )
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Methods"] == "POST"
    assert "Content-Type" in response.headers["Access-Control-Allow-Headers"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"site": "nope", "url": f"{PORTAL}/"}, 404, "unknown_site"),
        ({"site": "demo"}, 400, "missing_field"),
        ({"url": f"{PORTAL}/"}, 400, "missing_field"),
        ({"site": 5, "url": f"{PORTAL}/"}, 400, "invalid_field"),
        ({"site": "demo", "url": f"{PORTAL}/", "referrer": ["x"]}, 400, "invalid_field"),
        ({"site": "demo", "url": f"{PORTAL}/", "id": "short"}, 400, "invalid_field"),
        ({"site": "demo", "url": "ftp://portal.example/"}, 403, "url_not_allowed"),
        ({"site": "demo", "url": "javascript:alert(1)"}, 403, "url_not_allowed"),
        ({"site": "demo", "url": "https://evil.example/"}, 403, "url_not_allowed"),
        ({"site": "demo", "url": "https://portal.example:8443/"}, 403, "url_not_allowed"),
        ({"site": "demo", "url": "http://[::1/"}, 400, "invalid_url"),
        # Text Redis could count but SQL could never store (PostgreSQL refuses NUL; lone
        # surrogates are not UTF-8): refused, so the day's rollup cannot be poisoned.
        ({"site": "demo", "url": f"{PORTAL}/a\x00b"}, 400, "invalid_url"),
        ({"site": "demo", "url": f"{PORTAL}/a\udc80"}, 400, "invalid_url"),
        ({"site": "demo", "url": f"{PORTAL}/a\ud800"}, 400, "invalid_url"),
        ({"site": "demo", "url": f"{PORTAL}/a\nb"}, 400, "invalid_url"),
    ],
)
def test_bad_hits_get_a_clear_error_and_change_nothing(
    client: FlaskClient, body: dict, status: int, code: str
) -> None:
    response = client.post("/api/v1/hit", json=body, headers=UA)
    assert response.status_code == status
    error = response.get_json()["error"]
    assert error["code"] == code
    assert error["message"]
    _unchanged(client)


@pytest.mark.parametrize(
    "raw", [b"", b"{", b"[1, 2]", b'"demo"', b"\xff\xfe", b"null", b"[" * 4000 + b"]" * 4000]
)
def test_a_body_that_is_not_a_json_object_is_a_400(client: FlaskClient, raw: bytes) -> None:
    response = client.post("/api/v1/hit", data=raw, content_type="application/json", headers=UA)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_json"
    _unchanged(client)


def test_a_body_over_8_kb_is_a_413(client: FlaskClient) -> None:
    body = {"site": "demo", "url": f"{PORTAL}/", "referrer": "x" * 9000}
    response = client.post("/api/v1/hit", json=body, headers=UA)
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "request_entity_too_large"
    assert response.get_json()["error"]["message"] == "the body is over 8 KB"
    _unchanged(client)


def test_an_origin_that_is_not_the_site_is_a_403_the_widget_can_read_and_counts_nothing(
    client: FlaskClient,
) -> None:
    response = client.post(
        "/api/v1/hit",
        json={"site": "demo", "url": f"{PORTAL}/"},
        headers={**UA, "Origin": "https://evil.example"},
    )
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "origin_not_allowed"
    # Readable by the page, so the widget can tell its owner why (no credentials involved).
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    _unchanged(client)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/hit"),
        ("PUT", "/api/v1/hit"),
        ("DELETE", "/api/v1/sites/demo/counter"),
        ("POST", "/api/v1/hit.gif"),
    ],
)
def test_a_wrong_method_is_a_json_405(client: FlaskClient, method: str, path: str) -> None:
    response = client.open(path, method=method)
    assert response.status_code == 405
    assert response.get_json()["error"]["code"] == "method_not_allowed"
    assert response.headers["Allow"]


def test_an_unknown_path_is_a_json_404(client: FlaskClient) -> None:
    response = client.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    "user_agent",
    [
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "curl/8.5.0",
        "python-requests/2.32.3",
        "",
    ],
)
def test_robots_are_accepted_but_not_counted_and_the_header_says_so(
    client: FlaskClient, user_agent: str, rdb
) -> None:
    response = client.post(
        "/api/v1/hit",
        json={"site": "demo", "url": f"{PORTAL}/"},
        headers={"User-Agent": user_agent},
    )
    assert response.status_code == 202
    assert response.headers["X-Analytics-Dropped"] == "bot"
    _unchanged(client)
    assert rdb.hget("an:{demo}:day:2026-11-28", "bots") == b"1"


def test_a_visitor_over_60_pageviews_a_minute_is_dropped_until_the_minute_slides_on(
    reader: Browser, client: FlaskClient, clock: FrozenClock, rdb, written: list[str]
) -> None:
    clock.set(clock().replace(second=0))
    for _ in range(61):
        reader.hit("/")
    assert written[-1] == "r"  # rate-limited, tallied for the day
    assert rdb.hget("an:{demo}:day:2026-11-28", "rate_limited") == b"1"
    assert counter(client)["today"]["pageviews"] == 60
    # Half a minute into the next one, half of the previous minute's 60 still weigh in.
    clock.advance(90)
    for _ in range(31):
        reader.hit("/")
    assert written[-31:] == ["p"] * 30 + ["r"]
    assert counter(client)["today"]["pageviews"] == 90


def test_a_hit_sent_again_with_its_id_is_counted_once(
    reader: Browser, client: FlaskClient, clock: FrozenClock, rdb, written: list[str]
) -> None:
    reader.hit("/", id="3f9c1a2b7d")
    clock.advance(5)
    response = reader.hit("/", id="3f9c1a2b7d")
    assert "X-Analytics-Dropped" not in response.headers  # decided when written
    assert written == ["v", "d"]
    assert rdb.hget("an:{demo}:day:2026-11-28", "duplicates") == b"1"
    assert counter(client)["today"]["pageviews"] == 1


def test_the_pixel_counts_a_page_and_always_answers_a_gif(client: FlaskClient) -> None:
    ok = client.get(f"/api/v1/hit.gif?site=demo&url={PORTAL}/lien-he", headers=UA)
    assert (ok.status_code, ok.mimetype) == (202, "image/gif")
    assert ok.data.startswith(b"GIF89a")
    assert ok.headers["Cache-Control"] == "no-store"
    from_referer = client.get("/api/v1/hit.gif?site=demo", headers={**UA, "Referer": f"{PORTAL}/"})
    assert from_referer.status_code == 202
    assert counter(client)["today"]["pageviews"] == 2

    unknown = client.get(f"/api/v1/hit.gif?site=nope&url={PORTAL}/", headers=UA)
    assert (unknown.status_code, unknown.mimetype) == (404, "image/gif")
    assert unknown.headers["X-Analytics-Error"] == "unknown_site"
    missing = client.get("/api/v1/hit.gif?site=demo", headers=UA)
    assert (missing.status_code, missing.mimetype) == (400, "image/gif")


def test_the_counter_is_public_cacheable_and_answers_304_while_unchanged(
    reader: Browser, client: FlaskClient, clock: FrozenClock
) -> None:
    reader.hit("/")
    first = client.get("/api/v1/sites/demo/counter")
    assert first.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in first.headers
    assert first.headers["Cache-Control"] == "public, max-age=5"
    etag = first.headers["ETag"]
    # Weak: two bodies under it differ in `as_of`, and a strong one promises the same bytes
    # (a cache may then join byte ranges of the two, or compare them by If-Match).
    assert etag.startswith('W/"')

    clock.advance(2)  # as_of moves, the numbers do not
    again = client.get("/api/v1/sites/demo/counter", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.headers["ETag"] == etag
    assert client.get("/api/v1/sites/demo/counter").get_json()["as_of"] != first.json["as_of"]
    assert again.data == b""

    reader.hit("/other")
    changed = client.get("/api/v1/sites/demo/counter", headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["ETag"] != etag


def test_the_counter_changes_its_etag_when_the_site_changes_its_time_zone(
    settings: Settings, clock: FrozenClock, site_token: str, repo: SiteRepository
) -> None:
    """The body names the site's time zone: a reader holding the old one must not be told
    that nothing changed. (Bangkok and Hanoi share the date: only the zone differs.)"""
    app = create_app(dataclasses.replace(settings, site_cache_seconds=0), clock=clock)
    client = app.test_client()
    etag = client.get("/api/v1/sites/demo/counter").headers["ETag"]
    repo.update(dataclasses.replace(repo.require("demo"), timezone="Asia/Bangkok"), clock())
    clock.advance(2)  # past the counter's own reuse
    again = client.get("/api/v1/sites/demo/counter", headers={"If-None-Match": etag})
    assert again.status_code == 200
    assert again.get_json()["timezone"] == "Asia/Bangkok"
    app.extensions["analytics"].close()


def test_the_counter_of_an_unknown_site_is_a_404(client: FlaskClient) -> None:
    response = client.get("/api/v1/sites/nope/counter")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "unknown_site"


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/sites/lhh/counter",
        "/api/v1/sites/lhh/counter.svg",
        "/widget.v0000000000000000.js",
    ],
)
def test_a_public_404_tells_a_shared_cache_not_to_keep_it(client: FlaskClient, path: str) -> None:
    """A 404 is cacheable by default (RFC 9111 4.2.2): with no Cache-Control, a CDN in
    front keeps "no site lhh" as long as it likes (Fastly: an hour), so a portal that
    pastes its tag before `site create lhh` runs shows dashes (a broken image without
    JavaScript) long after the site exists. Each such 404 must say it is not to be kept."""
    response = client.get(path)
    assert response.status_code == 404
    assert response.headers.get("Cache-Control") == "no-store"


def test_health_and_readiness(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    # A probe's answer is now's: no cache in between may answer for it.
    assert ready.headers["Cache-Control"] == "no-store"
    assert ready.get_json()["checks"] == {
        "buffer": "ok",
        "redis": "ok",
        "database": "ok",
        "salts": "not_held",  # no site read yet: read with the first hit, Redis answering
    }


def test_a_readiness_check_waiting_on_the_database_holds_up_no_other_request(
    settings: Settings, clock: FrozenClock, site_token: str
) -> None:
    """/readyz is public. While the database stalls, each check waited for it up to the
    connect or pool timeout: 24 requests of one client through nginx held every thread of
    two workers, and a hit waited behind them, answered 504 and not counted. Only one
    check at a time waits; the others report the last result at once."""
    app = counting_app(settings, clock)
    client = app.test_client()
    assert client.get("/readyz").get_json()["checks"]["database"] == "ok"
    Browser(client).hit("/")  # the site read from SQL, as a worker's warm-up reads it
    engine = app.extensions["analytics"].engine
    # Every connection of the pool taken: a check now waits for one, as on a stalled server.
    held = [engine.connect() for _ in range(engine.pool.size() + engine.pool._max_overflow)]  # type: ignore[attr-defined]
    answers: list[str] = []

    def ask() -> None:
        answers.append(client.get("/readyz").get_json()["checks"]["database"])

    askers = [threading.Thread(target=ask) for _ in range(2)]
    try:
        for asker in askers:
            asker.start()
        # One waits for a connection; the other answers at once, with the last result.
        assert eventually(lambda: answers) == ["ok"]
        Browser(client).hit("/a")
    finally:
        for conn in held:
            conn.close()
        for asker in askers:
            asker.join(30)
    assert answers == ["ok", "ok"]
    app.extensions["analytics"].store.flush(timeout=10)
    assert counter(client)["today"]["pageviews"] == 2
    app.extensions["analytics"].close()


def test_a_readiness_check_stalled_past_its_timeouts_reports_the_database_unreachable(
    settings: Settings, clock: FrozenClock
) -> None:
    """A PostgreSQL that stalls on a connection already open holds the check with no
    timeout: every other /readyz of the worker reported the last result, "ok", for as long
    as the stall lasted."""
    app = counting_app(settings, clock)
    client = app.test_client()
    assert client.get("/readyz").get_json()["checks"]["database"] == "ok"
    engine = app.extensions["analytics"].engine
    # Every connection of the pool taken: the check waits, as on a stalled server.
    held = [engine.connect() for _ in range(engine.pool.size() + engine.pool._max_overflow)]  # type: ignore[attr-defined]
    waiting = threading.Thread(target=lambda: client.get("/readyz"))
    try:
        waiting.start()
        # A check under way within its timeouts: the last result.
        assert eventually(lambda: app.extensions["readiness_database"]._running.locked())
        assert client.get("/readyz").get_json()["checks"]["database"] == "ok"
        clock.advance(60)  # past every timeout of a check
        assert client.get("/readyz").get_json()["checks"]["database"] == "unreachable"
    finally:
        for conn in held:
            conn.close()
        waiting.join(30)
    app.extensions["analytics"].close()


def failed_for_the_database() -> float:
    labels = {"outcome": "failed", "code": "database_unavailable"}
    return metrics.REGISTRY.get_sample_value("analytics_hits_total", labels) or 0.0


def test_while_the_database_is_down_hits_are_counted_and_the_admin_api_answers_503(
    settings: Settings, clock: FrozenClock, site_token: str
) -> None:
    """The site's settings come from the worker's cache, which expires: with the database
    unreachable, hits answered 500 and were lost, though Redis was all they needed."""
    app = counting_app(dataclasses.replace(settings, site_cache_seconds=0), clock)
    client = app.test_client()
    Browser(client).hit("/")  # the site read from SQL once
    assert counter(client)["today"]["pageviews"] == 1  # and its history put into Redis
    database = Path(sa.engine.make_url(settings.effective_database_url).database or "")
    away = database.with_suffix(".away")
    engine = app.extensions["analytics"].engine
    database.rename(away)
    database.mkdir()  # not a database any more: every connection fails
    engine.dispose()
    try:
        Browser(client, ip="198.51.100.7").hit("/a")
        assert counter(client)["today"]["pageviews"] == 2
        stats = client.get(
            "/api/v1/sites/demo/stats", headers={"Authorization": f"Bearer {site_token}"}
        )
        assert stats.status_code == 503
        assert stats.get_json()["error"]["code"] == "database_unavailable"
        assert stats.headers["Retry-After"] == "5"
        failed_before = failed_for_the_database()
        unknown = client.post(
            "/api/v1/hit",
            json={"site": "never-read", "url": f"{PORTAL}/"},
            headers={"User-Agent": Browser(client).user_agent},
        )
        assert unknown.status_code == 503  # a site never read: no settings to count it by
        assert unknown.get_json()["error"]["code"] == "database_unavailable"
        pixel = client.get(
            f"/api/v1/hit.gif?site=never-read&url={PORTAL}/",
            headers={"User-Agent": Browser(client).user_agent},
        )
        assert (pixel.status_code, pixel.mimetype) == (503, "image/gif")  # a pixel, always
        assert pixel.headers["X-Analytics-Error"] == "database_unavailable"
        assert pixel.headers["Retry-After"] == "5"
        assert failed_for_the_database() == failed_before + 2  # the POST's and the pixel's
        ready = client.get("/readyz")  # it takes hits: ready, the database reported down
        assert (ready.status_code, ready.get_json()["checks"]["database"]) == (200, "unreachable")
    finally:
        database.rmdir()
        away.rename(database)
        engine.dispose()
    Browser(client, ip="198.51.100.8").hit("/b")
    assert counter(client)["today"]["pageviews"] == 3
    app.extensions["analytics"].close()


def test_a_request_that_finds_every_pooled_connection_taken_is_answered_503(
    settings: Settings, clock: FrozenClock, postgres_url: str | None, caplog
) -> None:
    """More request threads than the pool holds (or queries stuck behind a lock): a request
    waited SQLAlchemy's 30 s for a connection and was then answered 500. Hits go on being
    counted under the settings the worker last read, as with the database down."""
    if postgres_url is None:
        pytest.skip("TEST_DATABASE_URL is not set")
    url = _fresh_postgres(postgres_url)
    engine = db.create_engine(url)
    db.upgrade(engine)
    token = SiteRepository(engine).create(
        build_site("demo", name="Demo", origins=[PORTAL]), clock()
    )
    engine.dispose()
    app = counting_app(dataclasses.replace(settings, database_url=url, site_cache_seconds=0), clock)
    client = app.test_client()
    admin = {"Authorization": f"Bearer {token}"}
    Browser(client).hit("/")  # the site read from SQL once
    pool = app.extensions["analytics"].engine.pool
    taken = [pool.connect() for _ in range(pool.size() + pool._max_overflow)]
    try:
        Browser(client, ip="198.51.100.7").hit("/a")
        stats = client.get("/api/v1/sites/demo/stats", headers=admin)
        assert stats.status_code == 503
        assert stats.get_json()["error"]["code"] == "database_unavailable"
        assert stats.headers["Retry-After"] == "5"
        assert "QueuePool limit of size 5 overflow 10 reached" in caplog.text
    finally:
        for connection in taken:
            connection.close()
    assert client.get("/api/v1/sites/demo/stats", headers=admin).status_code == 200
    assert counter(client)["today"]["pageviews"] == 2
    app.extensions["analytics"].close()


def test_a_database_that_takes_connections_and_never_answers_is_given_up_on() -> None:
    """psycopg waits about 130 s by default for a server that accepts the connection and
    says nothing: each request needing the database held a worker thread that long. The
    bound below only tells a connection that gives up on its own (5 s) from one that
    hangs; it measures no speed."""
    silent = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; nobody answers
    port = silent.getsockname()[1]
    engine = db.create_engine(f"postgresql+psycopg://nobody@127.0.0.1:{port}/none")
    failed: list[BaseException] = []

    def connect() -> None:
        try:
            engine.connect().close()
        except sa.exc.OperationalError as exc:
            failed.append(exc)

    attempt = threading.Thread(target=connect, daemon=True)
    attempt.start()
    attempt.join(60)
    silent.close()
    engine.dispose()
    assert failed, "still connecting after 60 s"
    assert "timeout" in str(failed[0]).lower()


def test_a_referrer_host_that_cannot_be_stored_is_ignored_and_the_hit_counted(
    reader: Browser, client: FlaskClient, rdb
) -> None:
    reader.hit("/", referrer="https://bad\x00host.example/")
    reader.hit("/x", referrer="https://b\udc80d.example/")
    assert counter(client)["today"]["pageviews"] == 2
    assert rdb.hgetall("an:{demo}:refs:2026-11-28") == {}


def test_a_referrer_on_the_site_itself_with_a_final_dot_or_www_is_not_external(
    client: FlaskClient, rdb
) -> None:
    Browser(client, ip="192.0.2.1").hit("/", referrer="https://portal.example./tin-tuc")
    Browser(client, ip="192.0.2.2").hit("/", referrer="https://zalo.me./")
    # Nor with www. before it, that most sites redirect to their name or from it.
    Browser(client, ip="192.0.2.3").hit("/", referrer="https://www.portal.example/tin-tuc")
    Browser(client, ip="192.0.2.4").hit("/", referrer="https://www.zalo.me/")
    refs = rdb.hgetall("an:{demo}:refs:2026-11-28")
    assert refs == {b"zalo.me": b"1", b"www.zalo.me": b"1"}


def test_origins_match_with_default_ports_dropped_and_ipv6_in_brackets(
    repo, client: FlaskClient, clock: FrozenClock
) -> None:
    origins = ["https://secure.example:443", "http://[::1]:8000"]
    repo.create(build_site("v6", name="V6", origins=origins), clock())
    assert repo.require("v6").origins == ("https://secure.example", "http://[::1]:8000")
    for url, origin in [
        ("https://secure.example/a", "https://secure.example"),
        ("https://secure.example:443/b", "https://secure.example"),
        ("http://[::1]:8000/c", "http://[::1]:8000"),
    ]:
        response = client.post(
            "/api/v1/hit",
            json={"site": "v6", "url": url},
            headers={**UA, "Origin": origin},
        )
        assert response.status_code == 202, (url, response.get_json())
    assert counter(client, "v6")["today"]["pageviews"] == 3


def test_a_site_with_a_vietnamese_domain_counts_hits_as_browsers_send_them(
    repo, client: FlaskClient, clock: FrozenClock
) -> None:
    repo.create(build_site("lhh", name="LHH", origins=["https://liênhiệphội.vn"]), clock())
    punycode = "https://xn--linhiphi-l1a7657ezfa.vn"
    # A browser: the page URL and Origin in punycode. A hand-written client: in Unicode.
    for url, origin in [
        (f"{punycode}/tin-tuc", punycode),
        ("https://liênhiệphội.vn/gioi-thieu", None),
        ("https://LIÊNHIỆPHỘI.VN/", None),
    ]:
        headers = {**UA, **({"Origin": origin} if origin else {})}
        response = client.post("/api/v1/hit", json={"site": "lhh", "url": url}, headers=headers)
        assert response.status_code == 202, response.get_json()
    assert counter(client, "lhh")["today"]["pageviews"] == 3


def test_a_page_url_is_judged_by_each_site_s_own_origins_however_often_it_is_sent(
    repo, client: FlaskClient, clock: FrozenClock
) -> None:
    # What a page URL is made of is remembered between hits (ingest._page); which sites may
    # count it is not, so the same URL is counted for one site and refused for another.
    repo.create(build_site("open", name="Open"), clock())  # no origins: any page counts
    url = "https://elsewhere.example/tin-tuc?id=7"
    for site, status in [("open", 202), ("demo", 403), ("open", 202), ("demo", 403)]:
        response = client.post("/api/v1/hit", json={"site": site, "url": url}, headers=UA)
        assert response.status_code == status, (site, response.get_json())
    assert counter(client, "open")["today"]["pageviews"] == 2
    assert counter(client)["today"]["pageviews"] == 0
