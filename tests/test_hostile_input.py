"""Input an attacker controls: bodies past their limits, odd URLs and hosts, markup, huge
headers, a full Redis. Each is refused or made harmless, and nothing is written."""

from __future__ import annotations

import contextlib
import json
import logging
import random
import re
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest
import redis
from crawlerdetect import CrawlerDetect
from flask import Flask
from flask.testing import FlaskClient

from analytics_service.api.errors import REFUSAL_LOG_SECONDS, RefusalLog
from analytics_service.app import create_app
from analytics_service.config import Settings
from analytics_service.imports import MAX_LINES
from analytics_service.ingest import MAX_USER_AGENT_CHARS, crawler_patterns, hit_request, is_crawler
from analytics_service.live import LiveStore
from analytics_service.sites import SiteRepository, build_site

from .conftest import PORTAL, Browser, FrozenClock, HistoryEnv, counter, eventually, start_redis
from .stack import gunicorn as _gunicorn
from .stack import raw_request
from .test_admin import ADMIN
from .test_rollup import make_rollup

UA = {"User-Agent": "Mozilla/5.0 (Windows NT 10.0) Chrome/131.0"}
BROWSER_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 "
    "Safari/537.36"
)
TEXT = {"Content-Type": "text/plain"}
HIT = f'{{"site": "demo", "url": "{PORTAL}/"}}'


def _post(client: FlaskClient, body: str | bytes, content_type: str | None = "text/plain"):  # type: ignore[no-untyped-def]
    headers = {**UA, **({"Content-Type": content_type} if content_type else {})}
    return client.post("/api/v1/hit", data=body, headers=headers)


# -- bodies ---------------------------------------------------------------------------


def _chunked(port: int, method: str, path: str, body: bytes, **headers: str) -> int:
    """The status of a request whose body is sent with Transfer-Encoding: chunked (no
    Content-Length). The server may answer and close before the body is all sent."""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    for name, value in {"Transfer-Encoding": "chunked", **UA, **headers}.items():
        head += f"{name}: {value}\r\n"
    chunks = b"".join(
        b"%x\r\n%b\r\n" % (len(body[i : i + 4096]), body[i : i + 4096])
        for i in range(0, len(body), 4096)
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head.encode() + b"\r\n" + chunks + b"0\r\n\r\n")
        with sock.makefile("rb") as answer:
            status_line = answer.readline()
    return int(status_line.split()[1])


@pytest.fixture
def served(settings: Settings, site_token: str, tmp_path: Path) -> Iterator[int]:
    """The app under the production gunicorn, on the test Redis and database."""
    with _gunicorn(
        settings,
        tmp_path / "gunicorn.log",
        GUNICORN_WORKERS="1",
        ANALYTICS_ADMIN_TOKEN=ADMIN,
        ANALYTICS_COUNTER_CACHE_SECONDS="0",
    ) as port:
        yield port


def _get_json(port: int, path: str, headers: dict[str, str] | None = None) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_a_chunked_body_past_its_limit_is_refused_whatever_it_starts_with(served: int) -> None:
    def hit(path: str) -> bytes:
        valid = f'{{"site": "demo", "url": "{PORTAL}{path}"}}'.encode()
        return valid + b" " * (8192 - len(valid))  # valid JSON, exactly at the limit

    assert _chunked(served, "POST", "/api/v1/hit", hit("/too-long") + b"junk" * 3500) == 413
    # At the limit itself, the same framing is counted.
    assert _chunked(served, "POST", "/api/v1/hit", hit("/at-the-limit"), **TEXT) == 202
    # The one worker's writer counts in order: once the second hit shows, the first would.
    auth = {"Authorization": f"Bearer {ADMIN}"}
    pages = eventually(lambda: _get_json(served, "/api/v1/sites/demo/pages", auth)["pages"])
    assert pages == [{"path": "/at-the-limit", "pageviews": 1}]


def test_a_chunked_import_past_4_mib_is_refused_and_nothing_is_imported(served: int) -> None:
    row = b"2001-06-01,10,20,3456789\n"
    body = b"date,visits,pageviews,visitors\n" + row * (4 * 1024 * 1024 // len(row) + 1)
    auth = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "text/csv"}
    assert _chunked(served, "POST", "/api/v1/sites/demo/import", body, **auth) == 413
    stats = _get_json(served, "/api/v1/sites/demo/stats?from=2001-06-01&to=2001-06-01", auth)
    assert stats["totals"]["visits"] == 0


def test_a_chunked_baseline_past_its_limit_is_refused(served: int) -> None:
    body = b'{"visits": 5' + b" " * 9000 + b"}"
    auth = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"}
    assert _chunked(served, "PUT", "/api/v1/sites/demo/baseline", body, **auth) == 413


def test_an_import_of_blank_lines_is_refused_before_it_is_parsed(history_env: HistoryEnv) -> None:
    response = history_env.client.post(
        "/api/v1/sites/demo/import",
        data=b"\n" * (MAX_LINES + 1),
        headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "text/csv"},
    )
    assert response.status_code == 400
    assert f"more than {MAX_LINES} lines" in response.get_json()["error"]["message"]


# -- the request ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/json",
        "application/json; charset=utf-8",
    ],
)
def test_a_hit_is_taken_as_json_text_or_untyped(client: FlaskClient, content_type: str) -> None:
    assert _post(client, HIT, content_type).status_code == 202


@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/html"],
)
def test_another_content_type_is_a_415_and_counts_nothing(
    client: FlaskClient, content_type: str
) -> None:
    response = _post(client, HIT, content_type)
    assert response.status_code == 415
    assert response.get_json()["error"]["code"] == "unsupported_media_type"
    assert counter(client)["today"]["pageviews"] == 0


def test_a_hit_with_a_key_twice_is_refused(client: FlaskClient) -> None:
    response = _post(client, f'{{"site": "other", "site": "demo", "url": "{PORTAL}/"}}')
    assert response.status_code == 400
    assert "twice" in response.get_json()["error"]["message"]
    assert counter(client)["today"]["pageviews"] == 0


def test_a_baseline_with_a_key_twice_is_refused(history_env: HistoryEnv) -> None:
    baseline = history_env.client.put(
        "/api/v1/sites/demo/baseline",
        data='{"visits": 1, "visits": 2}',
        content_type="application/json",
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert baseline.status_code == 400


def test_a_counted_hit_answers_an_empty_202_without_a_misleading_type(
    client: FlaskClient,
) -> None:
    response = _post(client, HIT)
    assert (response.status_code, response.data) == (202, b"")
    assert "Content-Type" not in response.headers


@pytest.mark.parametrize(
    ("url", "status", "code"),
    [
        ("https://portal.example:0/", 400, "invalid_url"),
        ("https://portal.example:000/", 400, "invalid_url"),
        ("https://portal.example:0443/", 400, "invalid_url"),
        ("https://portal.example:/", 400, "invalid_url"),
        ("https://evil@portal.example/", 400, "invalid_url"),
        ("https://u:p@portal.example/", 400, "invalid_url"),
        ("http://portal.example/", 403, "url_not_allowed"),  # the site is https only
        ("https://portal.example:8443/", 403, "url_not_allowed"),
    ],
)
def test_a_url_counts_only_when_scheme_host_and_port_are_the_sites(
    client: FlaskClient, url: str, status: int, code: str
) -> None:
    response = _post(client, f'{{"site": "demo", "url": "{url}"}}')
    assert response.status_code == status
    assert response.get_json()["error"]["code"] == code
    assert counter(client)["today"]["pageviews"] == 0


def test_the_default_port_written_out_is_the_same_origin(client: FlaskClient) -> None:
    assert (
        _post(client, '{"site": "demo", "url": "https://portal.example:443/x"}').status_code == 202
    )


def test_an_origin_header_sent_as_utf_8_reads_as_written_in_the_refusal(
    client: FlaskClient,
) -> None:
    origin = "https://liênhiệphội.vn"
    response = client.post(
        "/api/v1/hit",
        data=HIT,
        headers={**UA, "Content-Type": "text/plain", "Origin": origin.encode().decode("latin-1")},
    )
    assert response.status_code == 403
    assert origin in response.get_json()["error"]["message"]


def test_an_allowed_origin_sent_as_utf_8_is_answered_with_the_bytes_it_came_with(
    served: int, repo: SiteRepository, clock: FrozenClock
) -> None:
    """CORS compares the answer's Access-Control-Allow-Origin with the request's Origin as
    bytes. Decoded to Unicode, the header could not even be sent: gunicorn answered an HTML
    500, after the hit was counted."""
    origin = "https://liênhiệphội.vn"
    repo.create(build_site("idn", name="IDN", origins=[origin]), clock())
    body = json.dumps({"site": "idn", "url": f"{origin}/tin"}).encode()
    head = (
        "POST /api/v1/hit HTTP/1.1\r\nHost: analytics.example\r\nConnection: close\r\n"
        f"Content-Type: text/plain\r\nUser-Agent: {UA['User-Agent']}\r\n"
        f"Content-Length: {len(body)}\r\n"
    ).encode()
    response = raw_request(served, head + b"Origin: " + origin.encode() + b"\r\n\r\n" + body)
    assert response is not None
    assert response.status == 202
    assert response.headers["access-control-allow-origin"].encode("latin-1") == origin.encode()


def test_a_huge_user_agent_is_cut_before_any_work(client: FlaskClient) -> None:
    fields = {"site": "demo", "url": f"{PORTAL}/"}
    hit = hit_request(fields, ip="192.0.2.1", user_agent="A" * 8000, origin=None)
    assert len(hit.user_agent) == MAX_USER_AGENT_CHARS
    # Two agents that differ only past the cut are one reader.
    base = "Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0 " + "x" * 8000
    Browser(client, user_agent=base + "1").hit("/")
    Browser(client, user_agent=base + "2").hit("/")
    assert counter(client)["today"]["visitors"] == 1


def test_the_robot_check_gives_crawlerdetects_answers_without_its_quadratic_prefix() -> None:
    """crawlerdetect's catch-all pattern, `[a-z0-9\\-_]*(bot|crawl|...)`, ran its greedy
    prefix to the end of a run of letters from every position: quadratic in the
    User-Agent's length. 512 letters cost the check 20-40 ms, and one client sending
    distinct ones took a worker from ~900 hits a second to ~40, everyone's counter reads
    with it (docs/benchmarks.md, "The robot check"). The service compiles crawlerdetect's
    lists itself, without that prefix, which in a search changes no answer."""
    _, crawlers = crawler_patterns()
    # No alternative may begin with an unbounded run of a class (as a new crawlerdetect's
    # catch-all might, where removeprefix would then remove nothing).
    assert re.search(r"(?:^\(|\|)\[[^\]]*\][*+]", crawlers.pattern) is None
    reference = CrawlerDetect()
    rng = random.Random(7)
    words = [
        "bot",
        "Crawl",
        "spider",
        "Mozilla/5.0",
        "(X11; Linux x86_64)",
        "Chrome/131.0",
        "Safari/537.36",
        "Googlebot/2.1",
        "checker",
        "curl/8.5",
        "python-requests/2.32",
        "HeadlessChrome",
        "-",
        "_",
        "x",
        "Zalo",
        "coc_coc_browser/139",
        "facebookexternalhit",
    ]
    agents = [
        UA["User-Agent"],
        BROWSER_UA,
        "x" * 509 + "bot",
        "Mozilla/5.0 (compatible; ExampleSiteChecker/1.0)",
    ]
    for _ in range(3000):
        parts = rng.choices(words, k=rng.randint(1, 8))
        agents.append(rng.choice(["", " ", "/", ";"]).join(parts))
    differ = [a for a in agents if is_crawler(a) != reference.is_crawler(a)]
    assert differ == []
    assert is_crawler("x" * 509 + "bot") and not is_crawler(BROWSER_UA)


# -- paths and hosts ----------------------------------------------------------------


@pytest.mark.parametrize("path", ["/static//x", "/api/v1//hit.gif", "/api//v1/sites/demo/counter"])
def test_a_double_slash_is_a_404_never_a_redirect_built_from_the_host(
    client: FlaskClient, path: str
) -> None:
    response = client.get(path, headers={"Host": "evil.example"})
    assert response.status_code == 404
    assert "Location" not in response.headers


@pytest.mark.parametrize("suffix", ["stats", "export.csv", "baseline", "pages", "counter"])
def test_a_site_id_that_cannot_be_valid_is_a_404_before_any_query(
    history_env: HistoryEnv, suffix: str
) -> None:
    response = history_env.client.get(
        f"/api/v1/sites/a%00/{suffix}", headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


MARKUP_PATHS = [
    "/<script>alert(1)</script>",
    '/=HYPERLINK("https://evil.example","x")',
    "/\u202eevil",
    "/a\u2028b",
    "/a\x85b",
]


def test_paths_are_kept_as_browsers_send_them_and_every_json_answer_says_nosniff(
    history_env: HistoryEnv, clock: FrozenClock
) -> None:
    """Percent-encoded, as a browser's location.href has them: the same characters, and no
    markup, quote or line break as such in what the API answers."""
    reader = Browser(history_env.client)
    for n, path in enumerate(MARKUP_PATHS):
        clock.advance(1)
        reader.ip = f"192.0.2.{n}"
        reader.hit(path)
    response = history_env.client.get(
        "/api/v1/sites/demo/pages?limit=100", headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert response.mimetype == "application/json"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    stored = [p["path"] for p in response.get_json()["pages"]]
    assert {unquote(p) for p in stored} == set(MARKUP_PATHS)
    assert all(re.fullmatch(r"[A-Za-z0-9/%!$&'()*+,;=:@._~-]+", p) for p in stored), stored
    for path in ("/api/v1/sites/demo/counter", "/api/v1/nothing", "/healthz"):
        assert history_env.client.get(path).headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    ("referrer", "stored"),
    [
        ("https://www.google.com/search?q=x", "www.google.com"),
        ("http://192.0.2.9:8080/", "192.0.2.9"),
        ("http://[2001:db8::1]/", "2001:db8::1"),
        ("https://liênhiệphội.vn/tin", "xn--linhiphi-l1a7657ezfa.vn"),
        ("http://<svg onload=alert(1)>/", None),
        ('http://x"onmouseover=1/', None),
        ("http://a..b/", None),
        ("http://" + "a" * 300 + ".example/", None),
        # An IPv6 zone id names an interface of the reader's machine and holds any text: a
        # lone surrogate once made the whole batch unwritable, a NUL the day unstorable.
        ("http://[fe80::1%25eth0]/", None),
        ("http://[fe80::1%25\ud800]/", None),
        ("http://[fe80::1%25\u0000]/", None),
        ("http://[fe80::1%25<img src=x onerror=alert(1)>]/", None),
    ],
)
def test_referrer_hosts_are_host_names_or_addresses_and_nothing_else_is_kept(
    reader: Browser, rdb: redis.Redis, referrer: str, stored: str | None
) -> None:
    reader.hit("/", referrer=referrer)
    refs = {k.decode() for k in rdb.hkeys("an:{demo}:refs:2026-11-28")}
    assert refs == ({stored} if stored else set())
    assert rdb.hget("an:{demo}:day:2026-11-28", "pageviews") == b"1"  # the hit itself counts


def test_a_day_with_a_referrer_holding_a_nul_in_its_zone_id_still_rolls_up(
    history_env: HistoryEnv, clock: FrozenClock
) -> None:
    """PostgreSQL text cannot hold NUL: such a referrer, stored, stopped the day's rollup."""
    Browser(history_env.client).hit("/", referrer="http://[fe80::1%25\u0000]/")
    svc = history_env.services
    svc.store.flush()
    assert make_rollup(history_env).checkpoint(svc.repo.require("demo"), clock())


# -- a full Redis ---------------------------------------------------------------------


@pytest.fixture
def full_app(
    tmp_path: Path, database_url: str, clock: FrozenClock, site_token: str
) -> Iterator[tuple[Flask, redis.Redis]]:
    """The app on a Redis of its own, which never evicts, with room for 3 hits in the
    worker's buffer."""
    server = start_redis(tmp_path / "small-redis", **{"maxmemory-policy": "noeviction"})
    settings = Settings(
        data_dir=tmp_path,
        redis_url=server.connection_url,
        database_url=database_url,
        buffer_max_hits=3,
    )
    app = create_app(settings, clock=clock)
    client = redis.Redis.from_url(server.connection_url)
    try:
        yield app, client
    finally:
        client.close()
        app.extensions["analytics"].close(drain_seconds=0)
        server.stop()


def _fill(client: redis.Redis) -> None:
    """A megabyte of ballast, then maxmemory just under what Redis now uses."""
    for n in range(256):
        client.set(f"ballast:{n}", b"x" * 4096)
    used = client.info("memory")["used_memory"]
    client.config_set("maxmemory", used - 64 * 1024)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set("one-more", b"x")


def _hold_until_full(client: FlaskClient, store: LiveStore, redis_client: redis.Redis) -> None:
    """One hit counted (the day's salt and the site's history marker set), Redis filled,
    and the worker holding what it can (3 hits) while the writer cannot write."""
    assert _post(client, HIT).status_code == 202
    store.flush()
    assert counter(client)["today"]["pageviews"] == 1
    _fill(redis_client)
    assert [_post(client, HIT).status_code for _ in range(3)] == [202] * 3
    eventually(lambda: isinstance(store.writer_error, redis.exceptions.OutOfMemoryError))


def test_a_full_redis_holds_hits_in_the_buffer_then_gives_503_storage_full_and_resumes(
    full_app: tuple[Flask, redis.Redis], caplog: pytest.LogCaptureFixture
) -> None:
    app, redis_client = full_app
    store = app.extensions["analytics"].store
    client = app.test_client()
    _hold_until_full(client, store, redis_client)
    refused = _post(client, HIT)
    assert refused.status_code == 503
    assert refused.get_json()["error"]["code"] == "storage_full"
    assert refused.headers["Retry-After"]
    pixel = client.get(f"/api/v1/hit.gif?site=demo&url={PORTAL}/", headers=UA)
    assert (pixel.status_code, pixel.mimetype) == (503, "image/gif")
    assert pixel.headers["X-Analytics-Error"] == "storage_full"
    assert pixel.headers["Retry-After"]
    assert any(
        r.levelname == "ERROR" and "OutOfMemoryError" in r.getMessage() for r in caplog.records
    )
    # Reading still works: the reader sees the numbers counted before it filled up.
    assert counter(client)["today"]["pageviews"] == 1

    redis_client.delete(*redis_client.keys("ballast:*"))
    store.flush(timeout=30)  # the held hits go in once there is room
    assert counter(client)["today"]["pageviews"] == 4
    assert _post(client, HIT).status_code == 202
    store.flush()
    assert counter(client)["today"]["pageviews"] == 5


def test_hits_refused_while_redis_is_full_write_one_line_per_interval_not_one_each(
    full_app: tuple[Flask, redis.Redis], caplog: pytest.LogCaptureFixture
) -> None:
    """A line per refused hit, at a thousand hits a second, fills a disk in an outage."""
    app, redis_client = full_app
    client = app.test_client()
    _hold_until_full(client, app.extensions["analytics"].store, redis_client)
    caplog.clear()
    refused = [_post(client, HIT).status_code for _ in range(40)]
    refused += [client.get(f"/api/v1/hit.gif?site=demo&url={PORTAL}/", headers=UA).status_code]
    assert refused == [503] * 41
    lines = [r for r in caplog.records if r.name == "analytics_service.api.errors"]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert "write-behind buffer full: 1 request(s) refused" in lines[0].getMessage()
    assert "OutOfMemoryError" in lines[0].getMessage()


def test_a_refusal_line_counts_the_refusals_since_the_last_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refusals = RefusalLog(logging.WARNING, "Redis unavailable")
    start = 1000.0
    assert refusals.refused("POST /api/v1/hit", "ConnectionError: refused", now=start)
    assert not any(
        refusals.refused("POST /api/v1/hit", "ConnectionError: refused", now=start + n / 10)
        for n in range(1, 50)
    )
    caplog.clear()
    later = start + REFUSAL_LOG_SECONDS
    assert refusals.refused("GET /api/v1/hit.gif", "TimeoutError: timed out", now=later)
    assert [r.getMessage() for r in caplog.records] == [
        "Redis unavailable: 50 request(s) refused with 503 since the last such line, the last "
        "GET /api/v1/hit.gif: TimeoutError: timed out"
    ]
