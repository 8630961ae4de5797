"""Redis coming back empty: the service rebuilds totals and the open day from SQL, once."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timedelta

import pytest
import redis

from analytics_service import keys
from analytics_service.buffer import Transient
from analytics_service.ingest import HitRequest
from analytics_service.rollup import Rollup
from analytics_service.services import Services

from .conftest import (
    HISTORY_METRICS_TOKEN,
    ON_SERVER_AND_CLUSTER,
    PORTAL,
    Browser,
    FrozenClock,
    HistoryEnv,
    counter,
    counting_app,
    eventually,
)
from .test_metrics import parse, value
from .test_rollup import HANOI, at, hits, make_rollup, rows

# The same assertions on one Redis server and on a Redis Cluster.
pytestmark = ON_SERVER_AND_CLUSTER

TODAY = date(2026, 11, 28)


def _set_baseline(env: HistoryEnv, visits: int, pageviews: int) -> None:
    repo = env.services.repo
    site = repo.require("demo")
    repo.update(replace(site, baseline_visits=visits, baseline_pageviews=pageviews), site_now())
    env.services.sites.forget("demo")


def site_now():  # type: ignore[no-untyped-def]
    return at(HANOI, 2026, 11, 28, 9, 0)


def test_a_redis_wiped_mid_day_gives_back_the_last_checkpoint_plus_the_hits_after_the_wipe(
    history_env: HistoryEnv, clock: FrozenClock, rdb: redis.Redis
) -> None:
    _set_baseline(history_env, 30545, 91230)
    rollup, site = make_rollup(history_env), history_env.services.repo.require("demo")
    hits(history_env, clock, at(HANOI, 2026, 11, 27, 15, 0), 4)
    assert rollup.finalise(site, at(HANOI, 2026, 11, 28, 1, 0)) == [date(2026, 11, 27)]
    hits(history_env, clock, at(HANOI, 2026, 11, 28, 10, 0), 3)
    assert rollup.checkpoint(site, clock())
    # Two readers come back after the checkpoint: 2 pageviews that the wipe will lose.
    hits(history_env, clock, at(HANOI, 2026, 11, 28, 10, 2), 2)
    before = counter(history_env.client)
    assert (before["today"]["visits"], before["total"]["visits"]) == (3, 30545 + 7)

    rdb.flushall()
    clock.set(at(HANOI, 2026, 11, 28, 10, 6))
    Browser(history_env.client, ip="192.0.2.99").hit("/after-the-wipe")

    after = counter(history_env.client)
    assert after["today"] == {"date": "2026-11-28", "visits": 4, "pageviews": 4, "visitors": 4}
    assert after["total"] == {"visits": 30545 + 4 + 3 + 1, "pageviews": 91230 + 4 + 3 + 1}
    assert counter(history_env.client) == after  # restored once, not on every read

    assert rollup.checkpoint(site, clock())
    assert rows(history_env)[TODAY] == (4, 4, 4, False)
    paths = {k.decode(): int(v) for k, v in rdb.hgetall(keys.SiteKeys("demo").paths(TODAY)).items()}
    assert paths == {"/p0": 2, "/p1": 1, "/after-the-wipe": 1}


def _copy(rdb: redis.Redis) -> dict[bytes, tuple[bytes, int]]:
    """Every key of the site as DUMP gives it, with its TTL: an older copy of Redis."""
    return {key: (rdb.dump(key), max(rdb.pttl(key), 0)) for key in rdb.scan_iter("an:{demo}:*")}


def _put_back(rdb: redis.Redis, copy: dict[bytes, tuple[bytes, int]]) -> None:
    for key in list(rdb.scan_iter("an:{demo}:*")):
        rdb.delete(key)
    for key, (dumped, ttl) in copy.items():
        rdb.restore(key, ttl, dumped)


def _copied_after_three_of_five(
    env: HistoryEnv, clock: FrozenClock, rdb: redis.Redis, start: datetime
) -> dict[bytes, tuple[bytes, int]]:
    """Three readers at `start`, then two more on /later two minutes on: the copy of Redis
    taken between them (with the site's history marker, as any copy would hold it)."""
    counter(env.client)
    hits(env, clock, start, 3)
    older = _copy(rdb)
    clock.set(start + timedelta(minutes=2))
    for reader in (4, 5):
        Browser(env.client, ip=f"198.51.100.{reader}").hit("/later")
    return older


def test_a_redis_put_back_from_before_the_last_checkpoint_is_raised_to_the_history(
    history_env: HistoryEnv, clock: FrozenClock, rdb: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A backup put back (or a replica promoted before it had the last writes) holds the
    history marker, so nothing is restored as after a wipe; the checkpoint sees that Redis
    holds less of the day than the history and raises it, instead of writing less."""
    rollup, site = make_rollup(history_env), history_env.services.repo.require("demo")
    older = _copied_after_three_of_five(history_env, clock, rdb, at(HANOI, 2026, 11, 28, 10, 0))
    assert rollup.checkpoint(site, clock())
    assert rows(history_env)[TODAY] == (5, 5, 5, False)

    _put_back(rdb, older)
    assert counter(history_env.client)["today"]["visits"] == 3  # until the next checkpoint
    clock.set(at(HANOI, 2026, 11, 28, 10, 5))
    assert rollup.checkpoint(site, clock())
    assert rows(history_env)[TODAY] == (5, 5, 5, False)
    assert "Redis holds less than the SQL history (2026-11-28: visits 3" in caplog.text
    now = counter(history_env.client)
    assert now["today"] == {"date": "2026-11-28", "visits": 5, "pageviews": 5, "visitors": 5}
    assert now["total"] == {"visits": 5, "pageviews": 5}
    paths = {k.decode(): int(v) for k, v in rdb.hgetall(keys.SiteKeys("demo").paths(TODAY)).items()}
    assert paths == {"/p0": 2, "/p1": 1, "/later": 2}

    # Raised once: hits go on on top of it, and the next checkpoint finds nothing behind.
    caplog.clear()
    Browser(history_env.client, ip="198.51.100.9").hit("/")
    assert rollup.checkpoint(site, clock() + timedelta(seconds=1))
    assert rows(history_env)[TODAY] == (6, 6, 6, False)
    assert "Redis holds less" not in caplog.text


def test_a_redis_wiped_just_after_it_was_found_behind_is_restored_and_written(
    history_env: HistoryEnv,
    clock: FrozenClock,
    rdb: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rollup, site = make_rollup(history_env), history_env.services.repo.require("demo")
    older = _copied_after_three_of_five(history_env, clock, rdb, at(HANOI, 2026, 11, 28, 10, 0))
    assert rollup.checkpoint(site, clock())
    _put_back(rdb, older)
    history = history_env.services.recovery.history
    counted_total = history.counted_total

    def then_wiped(site_id: str) -> tuple[int, int]:
        monkeypatch.setattr(history, "counted_total", counted_total)
        found = counted_total(site_id)
        rdb.flushall()
        return found

    monkeypatch.setattr(history, "counted_total", then_wiped)
    clock.set(at(HANOI, 2026, 11, 28, 10, 5))
    assert rollup.checkpoint(site, clock())
    assert rows(history_env)[TODAY] == (5, 5, 5, False)
    assert counter(history_env.client)["total"] == {"visits": 5, "pageviews": 5}


def test_a_backup_from_before_a_day_that_is_closed_now_is_raised_by_the_sites_total(
    history_env: HistoryEnv, clock: FrozenClock, rdb: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """The day the backup lacks is closed and never read again; today has no row yet. The
    site's total still holds less than the history's days add up to."""
    rollup, site = make_rollup(history_env), history_env.services.repo.require("demo")
    older = _copied_after_three_of_five(history_env, clock, rdb, at(HANOI, 2026, 11, 27, 15, 0))
    assert rollup.finalise(site, at(HANOI, 2026, 11, 28, 1, 0)) == [date(2026, 11, 27)]

    _put_back(rdb, older)
    clock.set(at(HANOI, 2026, 11, 28, 10, 0))
    assert not rollup.checkpoint(site, clock())  # nothing of today yet: nothing written
    assert "in all: visits 3, pageviews 3 against 5, 5" in caplog.text
    Browser(history_env.client, ip="198.51.100.9").hit("/")
    assert counter(history_env.client)["total"] == {"visits": 6, "pageviews": 6}
    yesterday = keys.SiteKeys("demo").day(date(2026, 11, 27))
    assert {k.decode(): int(v) for k, v in rdb.hgetall(yesterday).items()} == {
        "visits": 5,
        "pageviews": 5,
    }


def test_a_row_written_from_a_newer_redis_between_the_two_reads_is_no_shortfall(
    history_env: HistoryEnv,
    clock: FrozenClock,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis is read before the history: a checkpoint (or an admin's query) that reads a
    newer Redis and writes its row in between makes Redis look behind. It is read again."""
    rollup, site = make_rollup(history_env), history_env.services.repo.require("demo")
    hits(history_env, clock, at(HANOI, 2026, 11, 28, 10, 0), 3)
    assert rollup.checkpoint(site, clock())
    history = history_env.services.recovery.history
    counted = history.counted

    def another_rollup_first(site_id: str, day: date) -> object:
        monkeypatch.setattr(history, "counted", counted)
        Browser(history_env.client, ip="198.51.100.9").hit("/")
        assert rollup.checkpoint(site, clock())
        return counted(site_id, day)

    monkeypatch.setattr(history, "counted", another_rollup_first)
    assert rollup.checkpoint(site, clock() + timedelta(seconds=1))
    assert rows(history_env)[TODAY] == (4, 4, 4, False)
    assert "Redis holds less" not in caplog.text


def test_raising_a_redis_that_was_wiped_since_adds_the_history_as_a_restore_does(
    history_env: HistoryEnv, clock: FrozenClock, rdb: redis.Redis
) -> None:
    """Found behind, then wiped before the raise: the hits after the wipe are added to,
    not taken for part of, the history."""
    rollup, site = make_rollup(history_env), history_env.services.repo.require("demo")
    hits(history_env, clock, at(HANOI, 2026, 11, 28, 10, 0), 3)
    assert rollup.checkpoint(site, clock())
    rdb.flushall()
    Browser(history_env.client, ip="198.51.100.9").hit("/")
    plan = history_env.services.history.restore_plan("demo", TODAY - timedelta(days=9))
    history_env.services.store.restore(site, plan, clock(), top_up=True)
    assert counter(history_env.client)["total"] == {"visits": 4, "pageviews": 4}


def test_the_history_is_added_once_however_many_callers_race_to_restore(
    history_env: HistoryEnv, clock: FrozenClock, rdb: redis.Redis
) -> None:
    rollup, site = make_rollup(history_env), history_env.services.repo.require("demo")
    hits(history_env, clock, at(HANOI, 2026, 11, 28, 10, 0), 3)
    assert rollup.checkpoint(site, clock())
    rdb.flushall()
    recovery = history_env.services.recovery
    assert recovery.restore(site, clock()) is True
    mark = rdb.hget(keys.SiteKeys("demo").total, keys.RESTORED)
    assert recovery.restore(site, clock()) is False
    assert rdb.hgetall(keys.SiteKeys("demo").total) == {
        b"visits": b"3",
        b"pageviews": b"3",
        keys.RESTORED.encode(): mark,  # the first restore's, that the second left
    }
    assert rdb.keys("an:{demo}:restore:*") == []


def test_a_checkpoint_after_a_wipe_restores_first_so_it_never_writes_less_than_before(
    history_env: HistoryEnv, clock: FrozenClock, rdb: redis.Redis
) -> None:
    rollup, site = make_rollup(history_env), history_env.services.repo.require("demo")
    hits(history_env, clock, at(HANOI, 2026, 11, 28, 10, 0), 3)
    assert rollup.checkpoint(site, clock())
    rdb.flushall()
    clock.advance(60)
    Browser(history_env.client, ip="192.0.2.99").hit("/")
    assert rollup.checkpoint(site, clock() + timedelta(seconds=1))
    assert rows(history_env)[TODAY] == (4, 4, 4, False)


def test_a_new_site_is_marked_restored_by_its_first_counter_read_with_nothing_added(
    history_env: HistoryEnv, rdb: redis.Redis
) -> None:
    assert counter(history_env.client)["total"] == {"visits": 0, "pageviews": 0}
    total = rdb.hgetall(keys.SiteKeys("demo").total)
    assert total[keys.RESTORED.encode()]  # the restore's own token
    del total[keys.RESTORED.encode()]
    assert total == {b"visits": b"0", b"pageviews": b"0"}


def test_a_metrics_scrape_of_a_wiped_redis_restores_first_and_shows_the_restored_numbers(
    history_env: HistoryEnv, clock: FrozenClock, rdb: redis.Redis
) -> None:
    """A scrape between the wipe and the first counter read showed 0 visits today and in
    total, as if the portals had lost their history."""
    _set_baseline(history_env, 30545, 91230)
    rollup, site = make_rollup(history_env), history_env.services.repo.require("demo")
    hits(history_env, clock, at(HANOI, 2026, 11, 28, 10, 0), 3)
    assert rollup.checkpoint(site, clock())
    rdb.flushall()
    auth = {"Authorization": f"Bearer {HISTORY_METRICS_TOKEN}"}
    samples = parse(history_env.client.get("/metrics", headers=auth).get_data(as_text=True))
    assert value(samples, "analytics_visits_today") == 3
    assert value(samples, "analytics_visits_total") == 30545 + 3
    assert counter(history_env.client)["total"]["visits"] == 30545 + 3  # restored once


def test_readers_keep_their_visitor_ids_when_the_worker_reads_a_wiped_salt_again(
    history_env: HistoryEnv, clock: FrozenClock, rdb: redis.Redis
) -> None:
    """The day's salt went with the wipe. The worker's refresh must put back the salt it
    holds, not choose a new one: with a new one, every reader of the day so far would be
    counted as a second visitor for the rest of it."""
    rollup, site = make_rollup(history_env), history_env.services.repo.require("demo")
    hits(history_env, clock, at(HANOI, 2026, 11, 28, 10, 0), 3)
    assert rollup.checkpoint(site, clock())
    rdb.flushall()
    salts = history_env.services.ingestor.salts
    salts.refresh_seconds = 0  # every use finds the salt stale: its thread reads it again
    hits(history_env, clock, at(HANOI, 2026, 11, 28, 10, 40), 3)  # the same three readers
    salt_key = keys.salt(TODAY)
    eventually(lambda: salts.get(TODAY, clock()) == rdb.get(salt_key))
    hits(history_env, clock, at(HANOI, 2026, 11, 28, 11, 20), 3)
    today = counter(history_env.client)["today"]
    assert (today["visits"], today["visitors"]) == (9, 3)


def test_the_worker_that_finds_redis_wiped_puts_the_days_salt_back_at_once(
    history_env: HistoryEnv, clock: FrozenClock, rdb: redis.Redis
) -> None:
    """Not only when the salt is next due to be read again (5 minutes): meanwhile a worker
    that never held it (one started after the wipe) would set a new one."""
    hits(history_env, clock, at(HANOI, 2026, 11, 28, 10, 0), 3)
    salt_key = keys.salt(TODAY)
    salt = rdb.get(salt_key)
    assert salt is not None
    rdb.flushall()
    counter(history_env.client)  # finds the history marker missing and restores
    eventually(lambda: rdb.get(salt_key) == salt)


def test_a_wipe_found_while_the_salts_refresh_is_on_its_way_back_still_puts_the_salt_back(
    history_env: HistoryEnv, clock: FrozenClock, rdb: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refresh read the salt, the wipe was found (offer_again) before that read was
    stored, and the store marked the salt as just read: it was offered again only at its
    next refresh (5 minutes), while a worker started meanwhile set a new one."""
    hits(history_env, clock, at(HANOI, 2026, 11, 28, 10, 0), 1)
    salt_key = keys.salt(TODAY)
    salt = rdb.get(salt_key)
    salts = history_env.services.ingestor.salts
    store = history_env.services.store
    read = store.salt

    def read_then_wipe_found(day: date, ttl: int, known: bytes | None) -> bytes:
        answer = read(day, ttl, known)
        monkeypatch.setattr(store, "salt", read)  # once
        rdb.flushall()
        salts.offer_again(clock())
        return answer

    monkeypatch.setattr(store, "salt", read_then_wipe_found)
    salts._fetch(TODAY, clock())  # the refresh thread's read, run here to order the two
    eventually(lambda: rdb.get(salt_key) == salt)


def test_the_days_salt_goes_back_at_once_when_another_process_restored_the_history(
    history_env: HistoryEnv, clock: FrozenClock, rdb: redis.Redis
) -> None:
    """The scheduler's checkpoint found the wipe first and put the history back: it holds
    no salts, and the workers, finding the history marker present, offered theirs only at
    their next refresh (5 minutes). A worker started meanwhile set a new salt, and every
    reader seen by both counted twice."""
    clock.set(at(HANOI, 2026, 11, 28, 9, 59))
    counter(history_env.client)  # this worker has seen the history's marker before
    hits(history_env, clock, at(HANOI, 2026, 11, 28, 10, 0), 1)
    salt_key = keys.salt(TODAY)
    salt = rdb.get(salt_key)
    salts = history_env.services.ingestor.salts
    eventually(lambda: salts.holds(TODAY + timedelta(days=1)))  # its fetch ahead is over
    rdb.flushall()
    clock.set(at(HANOI, 2026, 11, 28, 10, 2))
    with Services.open(history_env.services.settings, clock) as scheduler:
        rollup = Rollup(scheduler.history, scheduler.recovery, timedelta(seconds=600))
        rollup.checkpoint(scheduler.repo.require("demo"), clock())
    assert rdb.hexists(keys.SiteKeys("demo").total, keys.RESTORED)  # the history is back
    assert rdb.get(salt_key) is None
    clock.advance(2)  # past the worker's reuse of its last counter read
    counter(history_env.client)
    eventually(lambda: rdb.get(salt_key) == salt)
    other_worker = counting_app(history_env.services.settings, clock)  # started after it
    try:
        clock.set(at(HANOI, 2026, 11, 28, 10, 3))
        Browser(other_worker.test_client(), ip="198.51.100.1").hit("/p0")
    finally:
        other_worker.extensions["analytics"].close()
    today = counter(history_env.client)["today"]
    assert (today["visits"], today["visitors"]) == (1, 1)  # the reader of 10:00, once


@pytest.mark.parametrize("checkpointed", [True, False], ids=["checkpointed", "not-checkpointed"])
def test_a_batch_sent_again_across_a_wipe_counts_once_whether_or_not_sql_has_it(
    history_env: HistoryEnv, clock: FrozenClock, rdb: redis.Redis, checkpointed: bool
) -> None:
    """Redis ran a batch, its reply was lost, and Redis was wiped before the writer sent it
    again, the batch's record with it. If a checkpoint had copied the batch to SQL, the
    restore gives it back and the retry must count nothing; if not, the retry must count
    it. (The writer's calls driven by hand: a lost reply cannot be timed against a
    checkpoint and a wipe from outside.)"""
    rollup, site = make_rollup(history_env), history_env.services.repo.require("demo")
    svc = history_env.services
    hits(history_env, clock, at(HANOI, 2026, 11, 28, 10, 0), 2)
    assert rollup.checkpoint(site, clock())
    clock.set(at(HANOI, 2026, 11, 28, 10, 1))
    ua = "Mozilla/5.0 (X11; Linux x86_64) Firefox/131.0"
    held = [
        svc.ingestor.check(
            HitRequest("demo", f"{PORTAL}/b", None, None, f"192.0.2.{n}", ua, None), clock()
        )
        for n in range(3)
    ]
    [batch] = svc.store._prepare(held)
    svc.store._send([batch])  # Redis ran it; say the reply was lost
    if checkpointed:
        assert rollup.checkpoint(site, clock())
    rdb.flushall()
    # Sent again before anything read the site: it waits for the history to be put back.
    with pytest.raises(Transient):
        svc.store._send([batch])
    svc.store._send([batch])
    today = counter(history_env.client)["today"]
    assert (today["visits"], today["pageviews"]) == (5, 5)
    assert rollup.checkpoint(site, clock())
    assert rows(history_env)[TODAY][:2] == (5, 5)


def test_a_day_that_many_writers_wrote_to_is_restored_whole(
    history_env: HistoryEnv, clock: FrozenClock, rdb: redis.Redis
) -> None:
    """Each worker that writes to a day leaves its last batches in the day's record, and a
    worker that is replaced leaves them there until the record expires: a busy day of a
    deployment that recycles workers holds thousands (here 5,000 writers' last batch).
    Restored after a wipe, the record goes back whole, and the day's counts with it (Lua
    cannot unpack that many values into one command, and a script that fails halfway has
    set the marker: the rest of the history never came back)."""
    rollup, site = make_rollup(history_env), history_env.services.repo.require("demo")
    hits(history_env, clock, at(HANOI, 2026, 11, 28, 10, 0), 3)
    record = keys.SiteKeys("demo").batches(TODAY)
    rdb.hset(record, mapping={f"{n:016x}:1": "1" for n in range(5000)})
    assert rollup.checkpoint(site, clock())
    held = rdb.hgetall(record)  # with the hits' own batches
    rdb.flushall()
    today = counter(history_env.client)["today"]
    assert (today["visits"], today["pageviews"]) == (3, 3)
    assert rdb.hgetall(record) == held


def test_a_batch_sent_again_hours_after_the_restore_still_counts_once(
    history_env: HistoryEnv, clock: FrozenClock, rdb: redis.Redis
) -> None:
    """After a wipe, the day's record of batches the restore puts back is the only one
    left of a batch Redis ran before the checkpoint (the writer's own went with the wipe).
    It lived an hour, which a batch sent again later (a spool file whose workers' host came
    back two hours after the restore) outlived: counted twice. It now lives a day, as long
    as a writer's record, and a batch written to the day meanwhile does not shorten it."""
    rollup, site = make_rollup(history_env), history_env.services.repo.require("demo")
    svc = history_env.services
    hits(history_env, clock, at(HANOI, 2026, 11, 28, 10, 0), 2)
    ua = "Mozilla/5.0 (X11; Linux x86_64) Firefox/131.0"
    held = [
        svc.ingestor.check(
            HitRequest("demo", f"{PORTAL}/b", None, None, f"192.0.2.{n}", ua, None), clock()
        )
        for n in range(3)
    ]
    [batch] = svc.store._prepare(held)
    svc.store._send([batch])  # Redis ran it; say the reply was lost
    assert rollup.checkpoint(site, clock())
    rdb.flushall()
    assert counter(history_env.client)["today"]["pageviews"] == 5  # restored
    Browser(history_env.client, ip="198.51.100.50").hit("/after-the-restore")
    record = keys.SiteKeys("demo").batches(TODAY)
    left = rdb.pttl(record) - 2 * 3600 * 1000  # two hours on, for this key
    if left > 0:
        rdb.pexpire(record, left)
    else:
        rdb.delete(record)
    svc.store._send([batch])
    today = counter(history_env.client)["today"]
    assert (today["visits"], today["pageviews"]) == (6, 6)
