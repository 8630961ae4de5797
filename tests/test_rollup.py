"""The rollup from Redis into SQL: checkpoints, closing days on the site's own calendar,
catch-up after downtime, idempotence, and the lock. SQLite, and PostgreSQL when set."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import click
import pytest
import redis
import sqlalchemy as sa
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, JobExecutionEvent
from click.testing import CliRunner
from redis.cluster import RedisCluster

from analytics_service import cli, db, jobs, keys
from analytics_service.cli import main
from analytics_service.clock import system_clock
from analytics_service.history import DayCounts, DaySnapshot
from analytics_service.ingest import HitRequest
from analytics_service.jobs import (
    JOBS,
    STEP_SECONDS,
    build_scheduler,
    realign,
    run_job,
)
from analytics_service.live import LOCK_SECONDS, CheckedHit, LiveStore
from analytics_service.rollup import ClockSkew, Rollup, RollupError
from analytics_service.services import Services
from analytics_service.site_removal import SITE_TABLES
from analytics_service.sites import Site, SiteError, build_site

from .conftest import (
    ON_SERVER_AND_CLUSTER,
    PORTAL,
    Browser,
    FrozenClock,
    HistoryEnv,
    counter,
    eventually,
)

# The same assertions on one Redis server and on a Redis Cluster.
pytestmark = ON_SERVER_AND_CLUSTER

HANOI = ZoneInfo("Asia/Ho_Chi_Minh")
NEW_YORK = ZoneInfo("America/New_York")
GRACE = timedelta(seconds=600)


def at(tz: ZoneInfo, *args: int) -> datetime:
    return datetime(*args, tzinfo=tz).astimezone(UTC)


def on(tz: ZoneInfo, day: date, hour: int, minute: int) -> datetime:
    return at(tz, day.year, day.month, day.day, hour, minute)


def make_rollup(env: HistoryEnv) -> Rollup:
    svc = env.services
    return Rollup(svc.history, svc.recovery, GRACE)


def hits(env: HistoryEnv, clock: FrozenClock, when: datetime, n: int, site: str = "demo") -> None:
    """n visits (n readers, one page each) at `when`."""
    clock.set(when)
    for i in range(n):
        Browser(env.client, ip=f"198.51.100.{i + 1}").hit(f"/p{i % 2}", site=site)


def rows(env: HistoryEnv, site: str = "demo") -> dict[date, tuple[int, int, int, bool]]:
    t = db.daily_totals
    with env.services.engine.connect() as conn:
        found = conn.execute(
            sa.select(t.c.day, t.c.visits, t.c.pageviews, t.c.visitors, t.c.final).where(
                t.c.site_id == site
            )
        )
        return {r.day: (r.visits, r.pageviews, r.visitors, r.final) for r in found}


def snapshot_tables(env: HistoryEnv) -> dict[str, list[tuple]]:
    out = {}
    with env.services.engine.connect() as conn:
        for table in (db.daily_totals, db.daily_paths, db.daily_referrers, db.rollup_watermarks):
            cols = [c for c in table.columns if c.name != "updated_at"]
            out[table.name] = sorted(tuple(r) for r in conn.execute(sa.select(*cols)))
    return out


def test_a_checkpoint_writes_today_as_an_open_row_with_its_paths_and_hll(
    history_env: HistoryEnv, clock: FrozenClock
) -> None:
    hits(history_env, clock, at(HANOI, 2026, 11, 28, 10, 0), 3)
    rollup, site = make_rollup(history_env), history_env.services.repo.require("demo")
    assert rollup.checkpoint(site, clock())
    assert rows(history_env) == {date(2026, 11, 28): (3, 3, 3, False)}
    tables = snapshot_tables(history_env)
    assert [r[2:] for r in tables["daily_paths"]] == [("/p0", 2), ("/p1", 1)]
    [total] = tables["daily_totals"]
    hll = [c.name for c in db.daily_totals.columns if c.name != "updated_at"].index("hll")
    assert total[hll] == history_env.services.store.client.get(
        keys.SiteKeys("demo").uv(date(2026, 11, 28))
    )
    assert rollup.checkpoint(site, clock())
    assert snapshot_tables(history_env) == tables


def test_a_day_an_earlier_release_counted_under_two_spellings_of_a_page_is_one_page(
    history_env: HistoryEnv, clock: FrozenClock
) -> None:
    """Redis still holds the days counted before paths were stored in one spelling (up to
    a week of them): the top pages and the rows written from them add the spellings up."""
    hits(history_env, clock, at(HANOI, 2026, 11, 28, 10, 0), 1)  # /p0
    day_paths = keys.SiteKeys("demo").paths(date(2026, 11, 28))
    client = history_env.services.store.client
    client.hset(day_paths, mapping={"/p%C4%91": 2, "/pđ": 3, "/p%c4%91": 1})
    pages = history_env.client.get(
        "/api/v1/sites/demo/pages", headers={"Authorization": f"Bearer {history_env.token}"}
    ).get_json()["pages"]
    assert pages == [{"path": "/p%C4%91", "pageviews": 6}, {"path": "/p0", "pageviews": 1}]
    rollup, site = make_rollup(history_env), history_env.services.repo.require("demo")
    assert rollup.checkpoint(site, clock())
    assert [r[2:] for r in snapshot_tables(history_env)["daily_paths"]] == [
        ("/p%C4%91", 6),
        ("/p0", 1),
    ]


@pytest.mark.parametrize("job", ["checkpoint", "finalise"])
def test_a_site_whose_rollup_fails_holds_back_no_other_and_the_log_names_the_job(
    history_env: HistoryEnv,
    clock: FrozenClock,
    rdb: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    job: str,
) -> None:
    history_env.add_site("lhh", "Asia/Ho_Chi_Minh", clock())
    hits(history_env, clock, at(HANOI, 2026, 11, 28, 10, 0), 2)
    hits(history_env, clock, at(HANOI, 2026, 11, 28, 10, 0), 1, site="lhh")
    rdb.delete(keys.SiteKeys("demo").day(date(2026, 11, 28)))
    rdb.set(keys.SiteKeys("demo").day(date(2026, 11, 28)), "not a hash")  # WRONGTYPE
    now = clock() if job == "checkpoint" else at(HANOI, 2026, 11, 29, 0, 11)
    sites = [history_env.services.repo.require(s) for s in ("demo", "lhh")]
    run = getattr(make_rollup(history_env), f"run_{job}")
    after: list[int] = []
    with pytest.raises(RollupError, match=r"rollup failed for site\(s\): demo$"):
        run(sites, now, lambda: after.append(len(rows(history_env, "lhh"))))
    assert after == [0, 1]  # after each site, the failed one included: the lock's renewal
    assert rows(history_env, "lhh") == {date(2026, 11, 28): (1, 1, 1, job == "finalise")}
    [logged] = [r for r in caplog.records if r.exc_info]
    assert logged.getMessage() == f"{job} of site demo failed"


def test_a_day_crossing_midnight_in_hanoi_is_closed_once_after_the_grace_period(
    history_env: HistoryEnv, clock: FrozenClock
) -> None:
    rollup, site = make_rollup(history_env), history_env.services.repo.require("demo")
    hits(history_env, clock, at(HANOI, 2026, 11, 28, 23, 50), 2)
    hits(history_env, clock, at(HANOI, 2026, 11, 29, 0, 5), 1)
    assert rollup.finalise(site, at(HANOI, 2026, 11, 29, 0, 9)) == []
    assert rollup.finalise(site, at(HANOI, 2026, 11, 29, 0, 10)) == [date(2026, 11, 28)]
    assert rollup.finalise(site, at(HANOI, 2026, 11, 29, 0, 30)) == []
    assert rows(history_env) == {date(2026, 11, 28): (2, 2, 2, True)}
    assert history_env.services.history.watermark("demo") == date(2026, 11, 28)


@pytest.mark.parametrize(("dst_day", "hours"), [(date(2026, 3, 8), 23), (date(2026, 11, 1), 25)])
def test_new_york_dst_days_of_23_and_25_hours_are_each_closed_once_with_their_own_hits(
    history_env: HistoryEnv, clock: FrozenClock, dst_day: date, hours: int
) -> None:
    history_env.add_site("ny", "America/New_York", clock())
    before, after = dst_day - timedelta(days=1), dst_day + timedelta(days=1)
    start = on(NEW_YORK, dst_day, 0, 30)
    assert on(NEW_YORK, after, 0, 0) - start == timedelta(hours=hours, minutes=-30)
    hits(history_env, clock, on(NEW_YORK, before, 23, 55), 1, "ny")
    hits(history_env, clock, start, 2, "ny")
    hits(history_env, clock, on(NEW_YORK, dst_day, 23, 55), 3, "ny")
    hits(history_env, clock, on(NEW_YORK, after, 0, 5), 4, "ny")

    rollup, site = make_rollup(history_env), history_env.services.repo.require("ny")
    closing = on(NEW_YORK, after, 0, 10)
    assert rollup.finalise(site, closing - timedelta(seconds=1)) == [before]
    assert rollup.finalise(site, closing) == [dst_day]
    assert rollup.finalise(site, closing + timedelta(hours=1)) == []
    # Readers 1-2 of the DST day come back at 23:55 among the 3: 3 visits (new visit after
    # 30 min idle), 5 pageviews, 3 distinct visitors.
    assert rows(history_env, "ny") == {before: (1, 1, 1, True), dst_day: (5, 5, 3, True)}


def test_a_service_down_across_two_midnights_closes_every_missed_day_on_its_next_run(
    history_env: HistoryEnv, clock: FrozenClock
) -> None:
    rollup, site = make_rollup(history_env), history_env.services.repo.require("demo")
    assert rollup.finalise(site, at(HANOI, 2026, 11, 27, 12, 0)) == []
    hits(history_env, clock, at(HANOI, 2026, 11, 27, 20, 0), 1)
    hits(history_env, clock, at(HANOI, 2026, 11, 28, 20, 0), 2)
    hits(history_env, clock, at(HANOI, 2026, 11, 29, 20, 0), 3)
    closed = rollup.finalise(site, at(HANOI, 2026, 11, 29, 21, 0))
    assert closed == [date(2026, 11, 27), date(2026, 11, 28)]
    assert rows(history_env) == {
        date(2026, 11, 27): (1, 1, 1, True),
        date(2026, 11, 28): (2, 2, 2, True),
    }


def test_within_the_grace_period_after_midnight_a_checkpoint_writes_yesterday_too(
    history_env: HistoryEnv, clock: FrozenClock
) -> None:
    """Yesterday is closed only at midnight plus the grace period: until then each
    checkpoint writes it too, so a Redis lost in those minutes loses no more of it than
    one checkpoint interval. Once closed, yesterday is left alone."""
    rollup, site = make_rollup(history_env), history_env.services.repo.require("demo")
    hits(history_env, clock, at(HANOI, 2026, 11, 27, 23, 58), 3)
    hits(history_env, clock, at(HANOI, 2026, 11, 28, 0, 2), 2)
    assert rollup.checkpoint(site, at(HANOI, 2026, 11, 28, 0, 5))
    assert rows(history_env) == {
        date(2026, 11, 27): (3, 3, 3, False),
        date(2026, 11, 28): (2, 2, 2, False),
    }
    assert rollup.finalise(site, at(HANOI, 2026, 11, 28, 0, 10)) == [date(2026, 11, 27)]
    hits(history_env, clock, at(HANOI, 2026, 11, 28, 0, 12), 1)  # seen: a pageview, no visit
    assert rollup.checkpoint(site, at(HANOI, 2026, 11, 28, 0, 15))
    assert rows(history_env) == {
        date(2026, 11, 27): (3, 3, 3, True),
        date(2026, 11, 28): (2, 3, 2, False),
    }


def test_the_checkpoint_job_counts_each_day_it_wrote_as_its_log_line_says(
    history_env: HistoryEnv, clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The job logs "N site-day(s) written": in the grace period after midnight a site's
    checkpoint writes two days, and the line said 1 (it counted the sites)."""
    hits(history_env, clock, at(HANOI, 2026, 11, 27, 23, 58), 3)
    hits(history_env, clock, at(HANOI, 2026, 11, 28, 0, 2), 2)
    checkpoint = next(job for job in JOBS if job.name == "checkpoint")
    with caplog.at_level("INFO", logger="analytics_service.jobs"):
        assert run_job(checkpoint, history_env.services, at(HANOI, 2026, 11, 28, 0, 5)) == 2
    assert "job checkpoint: 2 site-day(s) written" in caplog.text
    assert len(rows(history_env)) == 2


def hold_a_late_hit(
    env: HistoryEnv, clock: FrozenClock, path: str
) -> tuple[Rollup, Site, CheckedHit]:
    """Two readers at 23:00 on 2026-11-27, then a hit at 23:59 answered 202 and still in its
    worker's buffer (the worker cannot write to Redis) while finalise closes the day."""
    rollup, site = make_rollup(env), env.services.repo.require("demo")
    hits(env, clock, at(HANOI, 2026, 11, 27, 23, 0), 2)
    clock.set(at(HANOI, 2026, 11, 27, 23, 59))
    ua = "Mozilla/5.0 (X11; Linux x86_64) Firefox/131.0"
    late = HitRequest("demo", f"{PORTAL}{path}", None, None, "192.0.2.77", ua, None)
    held = env.services.ingestor.check(late, clock())
    assert rollup.finalise(site, at(HANOI, 2026, 11, 28, 0, 15)) == [date(2026, 11, 27)]
    assert rows(env)[date(2026, 11, 27)] == (2, 2, 2, True)
    return rollup, site, held


def test_a_hit_written_after_its_day_was_closed_is_added_to_it_by_the_next_finalise(
    history_env: HistoryEnv, clock: FrozenClock
) -> None:
    """A worker that cannot write to Redis across midnight (while the scheduler can read
    it) holds a 23:59 hit past the day's close. Written at last, it is in the totals, and
    the next finalise closes its day again with it, once."""
    rollup, site, held = hold_a_late_hit(history_env, clock, "/")
    svc = history_env.services
    clock.set(at(HANOI, 2026, 11, 28, 0, 18))
    svc.store.submit(held)  # Redis takes the worker's writes again
    svc.store.flush(timeout=10)
    assert rollup.finalise(site, at(HANOI, 2026, 11, 28, 0, 20)) == [date(2026, 11, 27)]
    assert rows(history_env)[date(2026, 11, 27)] == (3, 3, 3, True)
    assert rollup.finalise(site, at(HANOI, 2026, 11, 28, 0, 25)) == []


def test_a_close_read_before_a_later_late_hit_never_overwrites_the_close_that_holds_it(
    history_env: HistoryEnv, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two finalise runs at once (a second scheduler, or a run that outlived its lock): run
    A reads the late day, another late hit comes, run B closes the day again with it, then
    A writes its older read. The closed row keeps B's hit, and the total agrees with it."""
    rollup, site, first = hold_a_late_hit(history_env, clock, "/")  # 11-27 closed: 2
    svc = history_env.services
    clock.set(at(HANOI, 2026, 11, 27, 23, 59))
    ua = "Mozilla/5.0 (X11; Linux x86_64) Firefox/132.0"
    second = svc.ingestor.check(
        HitRequest("demo", f"{PORTAL}/", None, None, "192.0.2.78", ua, None), clock()
    )

    def written(hit: CheckedHit, when: datetime) -> None:
        clock.set(when)
        svc.store.submit(hit)
        svc.store.flush(timeout=10)

    written(first, at(HANOI, 2026, 11, 28, 0, 18))  # 11-27 late, 3 visits in Redis
    snapshot = svc.recovery.snapshot

    def run_b_after_run_as_read(site_: Site, day: date, now: datetime) -> DaySnapshot | None:
        read = snapshot(site_, day, now)
        monkeypatch.setattr(svc.recovery, "snapshot", snapshot)
        written(second, at(HANOI, 2026, 11, 28, 0, 19))  # 4 visits in Redis
        assert make_rollup(history_env).finalise(site, at(HANOI, 2026, 11, 28, 0, 20)) == [
            date(2026, 11, 27)
        ]
        assert rows(history_env)[date(2026, 11, 27)] == (4, 4, 4, True)
        return read

    monkeypatch.setattr(svc.recovery, "snapshot", run_b_after_run_as_read)
    rollup.finalise(site, at(HANOI, 2026, 11, 28, 0, 20))  # run A, writing its read of 3
    assert rollup.finalise(site, at(HANOI, 2026, 11, 28, 0, 25)) == []
    assert rows(history_env)[date(2026, 11, 27)] == (4, 4, 4, True)
    assert counter(history_env.client)["total"]["visits"] == 4


@pytest.mark.parametrize(
    ("written_at", "counted"),
    [
        # 6 days 23 hours after the day: its keys are still there for the finalise.
        (at(HANOI, 2026, 12, 4, 23, 0), True),
        # Over 8 days after: its keys are gone (their TTL, done here by hand).
        (at(HANOI, 2026, 12, 6, 1, 0), False),
    ],
    ids=["within-a-week", "keys-gone"],
)
def test_a_hit_written_more_than_a_week_after_its_day_is_dropped_and_its_day_stays_closed(
    history_env: HistoryEnv,
    clock: FrozenClock,
    rdb: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    written_at: datetime,
    counted: bool,
) -> None:
    """A worker's buffer or spool file holds a 23:59 hit for days. Within a week of its day
    it is counted, and the next finalise closes the day again with it. Later, its day's keys
    are gone or about to go: written anyway, it made new keys of its day alone, which the
    finalise took for a Redis behind the history and failed on at every run for 8 days,
    and the hit was in the site's total but in none of its days. It is dropped, and said."""
    rollup, site, held = hold_a_late_hit(history_env, clock, "/")  # 11-27 closed: 2 visits
    svc, day = history_env.services, date(2026, 11, 27)
    k = site.keys
    if not counted:
        rdb.delete(k.day(day), k.uv(day), k.paths(day), k.refs(day), k.batches(day))
    clock.set(written_at)
    svc.store.submit(held)
    svc.store.flush(timeout=10)
    visits = 3 if counted else 2
    assert counter(history_env.client)["total"]["visits"] == visits
    after = written_at + timedelta(minutes=5)
    assert rollup.finalise(site, after) == ([day] if counted else [])
    assert rows(history_env)[day] == (visits, visits, visits, True)
    assert rollup.finalise(site, after + timedelta(minutes=5)) == []
    dropped = [r for r in caplog.records if "were dropped" in r.getMessage()]
    assert len(dropped) == (not counted)
    assert rdb.exists(k.day(day)) == counted


def test_a_late_day_whose_second_close_fails_is_closed_again_by_the_next_finalise(
    history_env: HistoryEnv, clock: FrozenClock
) -> None:
    """The held hit written at last, but the database fails while finalise closes its day
    again (the paths table renamed away: a real error on SQLite and PostgreSQL alike). The
    day stays marked, and the next finalise adds the hit to the closed row."""
    rollup, site, held = hold_a_late_hit(history_env, clock, "/")
    svc = history_env.services
    clock.set(at(HANOI, 2026, 11, 28, 0, 18))
    svc.store.submit(held)
    svc.store.flush(timeout=10)
    rename = "ALTER TABLE {} RENAME TO {}"
    with svc.engine.begin() as conn:
        conn.execute(sa.text(rename.format("daily_paths", "daily_paths_away")))
    try:
        with pytest.raises(sa.exc.DBAPIError):
            rollup.finalise(site, at(HANOI, 2026, 11, 28, 0, 20))
    finally:
        with svc.engine.begin() as conn:
            conn.execute(sa.text(rename.format("daily_paths_away", "daily_paths")))
    assert rows(history_env)[date(2026, 11, 27)] == (2, 2, 2, True)
    assert rollup.finalise(site, at(HANOI, 2026, 11, 28, 0, 25)) == [date(2026, 11, 27)]
    assert rows(history_env)[date(2026, 11, 27)] == (3, 3, 3, True)
    assert rollup.finalise(site, at(HANOI, 2026, 11, 28, 0, 30)) == []


def test_a_late_hit_after_redis_lost_its_data_adds_to_the_closed_day_and_never_shrinks_it(
    history_env: HistoryEnv, clock: FrozenClock, rdb: redis.Redis
) -> None:
    """The same held hit, but Redis came back empty after the day was closed: the day is
    closed again with the late hit added to its closed row, not with the late hit alone."""
    rollup, site, held = hold_a_late_hit(history_env, clock, "/late")
    svc = history_env.services
    rdb.flushall()
    clock.set(at(HANOI, 2026, 11, 28, 0, 18))
    svc.store.submit(held)
    svc.store.flush(timeout=10)
    assert rollup.finalise(site, at(HANOI, 2026, 11, 28, 0, 20)) == [date(2026, 11, 27)]
    assert rows(history_env)[date(2026, 11, 27)] == (3, 3, 3, True)
    tables = snapshot_tables(history_env)
    assert [r[2:] for r in tables["daily_paths"] if r[1] == date(2026, 11, 27)] == [
        ("/late", 1),
        ("/p0", 1),
        ("/p1", 1),
    ]


def test_rolling_up_a_closed_day_by_hand_after_redis_lost_its_data_keeps_its_row(
    history_env: HistoryEnv, clock: FrozenClock, rdb: redis.Redis
) -> None:
    rollup, site = make_rollup(history_env), history_env.services.repo.require("demo")
    hits(history_env, clock, at(HANOI, 2026, 11, 27, 10, 0), 2)
    assert rollup.finalise(site, at(HANOI, 2026, 11, 28, 0, 15)) == [date(2026, 11, 27)]
    rdb.flushall()
    assert rollup.rollup(site, date(2026, 11, 27), at(HANOI, 2026, 11, 28, 9, 0)) == "closed"
    assert rows(history_env)[date(2026, 11, 27)] == (2, 2, 2, True)


def test_rolling_up_an_imported_day_by_hand_says_its_row_stands_and_keeps_it(
    history_env: HistoryEnv, clock: FrozenClock
) -> None:
    rollup, site = make_rollup(history_env), history_env.services.repo.require("demo")
    day, history = date(2026, 11, 20), history_env.services.history
    history.import_days("demo", {day: DayCounts(visits=7, pageviews=9)}, clock())
    assert rollup.rollup(site, day, at(HANOI, 2026, 11, 28, 9, 0)) == "kept"
    assert rows(history_env)[day] == (7, 9, 0, True)
    assert rollup.rollup(site, date(2026, 11, 21), at(HANOI, 2026, 11, 28, 9, 0)) == "empty"


def test_a_late_checkpoint_never_reopens_or_shrinks_a_closed_day(
    history_env: HistoryEnv, clock: FrozenClock
) -> None:
    rollup, site = make_rollup(history_env), history_env.services.repo.require("demo")
    hits(history_env, clock, at(HANOI, 2026, 11, 28, 10, 0), 2)
    assert rollup.close_day(site, date(2026, 11, 28), at(HANOI, 2026, 11, 29, 1, 0)) == "closed"
    shrunk = DaySnapshot("demo", date(2026, 11, 28), DayCounts(visits=1, pageviews=1))
    assert history_env.services.history.write_day(shrunk, final=False, now=clock()) is False
    assert rows(history_env) == {date(2026, 11, 28): (2, 2, 2, True)}


def test_a_day_redis_lost_before_it_was_closed_is_closed_from_its_last_checkpoint(
    history_env: HistoryEnv, clock: FrozenClock, rdb: redis.Redis
) -> None:
    rollup, site = make_rollup(history_env), history_env.services.repo.require("demo")
    hits(history_env, clock, at(HANOI, 2026, 11, 28, 10, 0), 2)
    assert rollup.checkpoint(site, clock())
    rdb.flushall()
    assert rollup.finalise(site, at(HANOI, 2026, 11, 29, 1, 0)) == [date(2026, 11, 28)]
    assert rows(history_env) == {date(2026, 11, 28): (2, 2, 2, True)}


def test_the_lock_admits_one_run_and_only_its_holder_releases_it(
    history_env: HistoryEnv, rdb: redis.Redis
) -> None:
    store = history_env.services.store
    with store.lock("finalise") as first:
        assert first
        with store.lock("finalise") as second:
            assert not second
        assert rdb.exists(keys.lock("finalise"))  # the loser did not delete it
        rdb.set(keys.lock("finalise"), "someone-else")  # ours expired; another run took it
    assert rdb.get(keys.lock("finalise")) == b"someone-else"


def test_a_held_lock_lives_a_minute_is_renewed_to_a_minute_and_never_renews_anothers(
    history_env: HistoryEnv, rdb: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A run killed with kill -9 keeps the next one out for a minute at most (it was 15),
    so its lock lives a minute and the run renews it as it goes."""
    key = keys.lock("finalise")
    with history_env.services.store.lock("finalise") as held:
        assert 0 < rdb.pttl(key) <= 60_000
        rdb.pexpire(key, 1_000)
        held.renew()
        assert 59_000 < rdb.pttl(key) <= 60_000
        rdb.set(key, "someone-else")  # ours expired in a pause; another run took it
        held.renew()
        assert rdb.pttl(key) == -1  # theirs, untouched
    assert rdb.get(key) == b"someone-else"
    [lost] = [r for r in caplog.records if "expired or was taken" in r.getMessage()]
    assert lost.levelname == "ERROR"


def _round_trips(rdb: redis.Redis) -> int:
    """How many times Redis has read from its clients' sockets (on every master of a
    cluster): one per round trip of a client, however many commands a pipeline sends."""
    if isinstance(rdb, RedisCluster):
        stats = list(rdb.info("stats", target_nodes=RedisCluster.PRIMARIES).values())
    else:
        stats = [rdb.info("stats")]
    return sum(int(s["total_reads_processed"]) for s in stats)


def test_a_first_finalise_over_many_new_sites_costs_a_few_statements_not_dozens_a_site(
    history_env: HistoryEnv, clock: FrozenClock, rdb: redis.Redis
) -> None:
    """A site without a watermark (new, by the thousand) has its last 9 days looked at.
    Each day was read on its own (a Redis read and three SQL statements, hits or none), and
    each watermark written in a transaction of its own: 5,000 new sites took 8 minutes on
    SQLite, 20,000 ten on PostgreSQL, the runs due meanwhile skipped and the lock that
    `site delete` waits for held throughout (docs/scaling.md). The sites' days are looked
    up many at a time now, only the days with data are closed one by one, and the
    watermarks are written together."""
    n = 150
    for i in range(n):
        history_env.add_site(f"p{i:03d}", "Asia/Ho_Chi_Minh", clock())
    hits(history_env, clock, at(HANOI, 2026, 11, 28, 10, 0), 2)
    hits(history_env, clock, at(HANOI, 2026, 11, 28, 11, 0), 1, site="p007")
    finalise = next(job for job in JOBS if job.name == "finalise")
    statements: list[str] = []

    def note(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    engine, before = history_env.services.engine, _round_trips(rdb)
    sa.event.listen(engine, "before_cursor_execute", note)
    try:
        done = run_job(finalise, history_env.services, at(HANOI, 2026, 11, 29, 0, 15))
    finally:
        sa.event.remove(engine, "before_cursor_execute", note)
    round_trips = _round_trips(rdb) - before
    assert done == 2
    assert rows(history_env) == {date(2026, 11, 28): (2, 2, 2, True)}
    assert rows(history_env, "p007") == {date(2026, 11, 28): (1, 1, 1, True)}
    everyone = ["demo", *(f"p{i:03d}" for i in range(n))]
    assert history_env.services.history.watermarks() == dict.fromkeys(everyone, date(2026, 11, 28))
    assert len(statements) < n / 3, f"{len(statements)} SQL statements for {n + 1} sites"
    # A cluster's pipelines go to each of its masters, and its client may read the slot map
    # again: 21-52 round trips seen there, against 11 a site before.
    assert round_trips < n / 2, f"{round_trips} Redis round trips for {n + 1} sites"
    tables = snapshot_tables(history_env)
    assert run_job(finalise, history_env.services, at(HANOI, 2026, 11, 29, 0, 20)) == 0
    assert snapshot_tables(history_env) == tables


def test_a_job_finds_the_lock_taken_and_writes_nothing(
    history_env: HistoryEnv, clock: FrozenClock, rdb: redis.Redis
) -> None:
    hits(history_env, clock, at(HANOI, 2026, 11, 28, 10, 0), 1)
    settings = history_env.services.settings
    with Services.open(settings, clock) as ctx:
        rdb.set(keys.lock("checkpoint"), "other-run")
        assert run_job(JOBS[1], ctx, clock()) is None
        assert rows(history_env) == {}
        rdb.delete(keys.lock("checkpoint"))
        assert run_job(JOBS[1], ctx, clock()) == 1
    assert rows(history_env) == {date(2026, 11, 28): (1, 1, 1, False)}


def test_a_run_of_one_site_by_hand_leaves_the_jobs_record_as_its_last_run_of_every_site(
    history_env: HistoryEnv, clock: FrozenClock, rdb: redis.Redis
) -> None:
    """Site `bad` fails every checkpoint (a key of the wrong type), which /metrics shows
    as the job's failed sites and its last success. An operator's `rollup --site demo`
    by hand once showed the job as succeeding with no site failed (and a dead scheduler
    as alive): the alerts on both went quiet while `bad` went on failing."""
    history_env.add_site("bad", "Asia/Ho_Chi_Minh", clock())
    hits(history_env, clock, at(HANOI, 2026, 11, 28, 10, 0), 2, site="bad")
    rdb.set(keys.SiteKeys("bad").uv(date(2026, 11, 28)), "not a HyperLogLog")
    svc = history_env.services
    checkpoint = JOBS[1]
    with pytest.raises(RollupError):
        run_job(checkpoint, svc, clock())
    [before] = svc.history.job_runs()
    assert (before.last_failed_sites, before.last_success_at) == (1, None)
    clock.advance(60)
    assert run_job(checkpoint, svc, clock(), "demo") is not None
    assert svc.history.job_runs() == [before]


def test_a_scheduler_whose_clock_is_off_redis_closes_nothing_and_records_a_failed_run(
    history_env: HistoryEnv, clock: FrozenClock
) -> None:
    """The frozen clock is a week behind Redis's real one, as a host whose clock jumped
    would be: its jobs must not close or checkpoint a day by that clock."""
    hits(history_env, clock, at(HANOI, 2026, 11, 27, 9, 0), 2)
    clock.set(at(HANOI, 2026, 11, 28, 1, 0))
    svc = history_env.services
    scheduler = build_scheduler(svc, svc.settings, clock)
    for name in ("finalise", "checkpoint"):
        with pytest.raises(ClockSkew, match="off Redis's"):
            scheduler.get_job(name).func()
    assert rows(history_env) == {}
    runs = {r.job: r for r in svc.history.job_runs()}
    assert {name: runs[name].last_success_at for name in runs} == {
        "finalise": None,
        "checkpoint": None,
    }
    # Given Redis's own time, the same run goes ahead.
    assert run_job(JOBS[1], svc, svc.store.server_time(), real_clock=True) is not None


def test_a_rollup_of_one_date_by_hand_on_a_clock_off_redis_writes_nothing(
    history_env: HistoryEnv, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`analytics-service rollup --date`, on a host whose clock is two days ahead."""
    hits(history_env, clock, at(HANOI, 2026, 11, 27, 9, 0), 2)
    ahead = history_env.services.store.server_time() + timedelta(days=2)
    monkeypatch.setattr(cli, "system_clock", lambda: ahead)
    with pytest.raises(ClockSkew, match="off Redis's"):
        cli._rollup(history_env.services.settings, "demo", datetime(2026, 11, 27))
    assert rows(history_env) == {}


def test_a_rollup_of_one_date_by_hand_waits_for_finalise_and_writes_nothing_while_it_runs(
    history_env: HistoryEnv, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`analytics-service rollup --date` takes finalise's lock: a run by hand that read a
    day while finalise closed it again (a late batch) would write the older numbers over
    the newer ones. While a finalise run holds the lock, the run by hand says so and
    writes nothing."""
    hits(history_env, clock, at(HANOI, 2026, 11, 27, 9, 0), 2)
    svc = history_env.services
    monkeypatch.setattr(cli, "system_clock", svc.store.server_time)
    monkeypatch.setattr(cli, "MANUAL_ROLLUP_WAIT_SECONDS", 0.2, raising=False)
    with svc.store.lock("finalise") as acquired:
        assert acquired
        with pytest.raises(click.ClickException, match="closing days right now"):
            cli._rollup(svc.settings, "demo", datetime(2026, 11, 27))
    assert rows(history_env) == {}
    cli._rollup(svc.settings, "demo", datetime(2026, 11, 27))
    assert rows(history_env)[date(2026, 11, 27)][:2] == (2, 2)


def test_jobs_a_backward_clock_step_left_asleep_are_run_again_by_realign(
    history_env: HistoryEnv,
) -> None:
    """A host clock put back an hour (NTP correcting a clock that ran ahead) leaves every
    job's next run an hour further away than its period, as moving that run an hour
    ahead does here: APScheduler compares it with the wall clock only. The scheduler
    process calls realign every WATCH_SECONDS; the jobs must run again at once."""
    svc = history_env.services
    ran: dict[str, threading.Event] = {job.name: threading.Event() for job in JOBS}

    def done(event: JobExecutionEvent) -> None:
        ran[event.job_id].set()

    scheduler = build_scheduler(svc, svc.settings, system_clock)
    scheduler.add_listener(done, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
    scheduler.start()
    try:
        for name in ran:  # the runs at start
            assert ran[name].wait(30), name
            ran[name].clear()
        assert realign(scheduler, svc.settings, system_clock()) == []  # nothing to move
        step = timedelta(hours=1)
        for job in scheduler.get_jobs():
            job.modify(next_run_time=job.next_run_time + step)
        # A step shorter than STEP_SECONDS only delays the jobs: left as they are.
        small = system_clock() + step - timedelta(seconds=STEP_SECONDS - 5)
        assert realign(scheduler, svc.settings, small) == []
        assert realign(scheduler, svc.settings, system_clock()) == [j.name for j in JOBS]
        for name in ran:
            assert ran[name].wait(30), f"{name} did not run after realign"
        checkpoint = scheduler.get_job("checkpoint")
        period = timedelta(seconds=svc.settings.checkpoint_seconds)
        assert checkpoint.next_run_time - system_clock() <= period  # back on its period
    finally:
        scheduler.shutdown()
    runs = {r.job: r for r in svc.history.job_runs()}
    assert all(runs[job.name].last_success_at is not None for job in JOBS)


def test_a_scheduler_restarted_after_a_kill_runs_again_once_the_dead_runs_lock_expires(
    history_env: HistoryEnv, rdb: redis.Redis
) -> None:
    """A scheduler killed with -9 leaves its runs' locks for up to LOCK_SECONDS. Started
    again at once, its runs at start were skipped and the next came a whole period later:
    five minutes, or a checkpoint interval of up to a day."""
    for job in JOBS:
        rdb.set(keys.lock(job.name), "a-dead-process-token", px=LOCK_SECONDS * 1000)
    svc = history_env.services
    skipped: dict[str, threading.Event] = {job.name: threading.Event() for job in JOBS}
    scheduler = build_scheduler(svc, svc.settings, system_clock)
    scheduler.add_listener(lambda event: skipped[event.job_id].set(), EVENT_JOB_EXECUTED)
    start = system_clock()
    scheduler.start()
    try:
        for name, event in skipped.items():
            assert event.wait(30), name
        due = {job.id: job.next_run_time - start for job in scheduler.get_jobs()}
    finally:
        scheduler.shutdown()
    assert svc.history.job_runs() == []  # both were skipped
    assert all(wait <= timedelta(seconds=LOCK_SECONDS + 10) for wait in due.values()), due


def test_the_scheduler_runs_every_job_at_start_coalesced_with_a_whole_period_of_grace(
    history_env: HistoryEnv, clock: FrozenClock
) -> None:
    settings = history_env.services.settings
    with Services.open(settings, clock) as ctx:
        scheduler = build_scheduler(ctx, settings, clock)
        jobs = {j.id: j for j in scheduler.get_jobs()}
    assert set(jobs) == {"finalise", "checkpoint"}
    for job in jobs.values():
        assert job.coalesce and job.max_instances == 1
        assert job.next_run_time == clock()
    assert jobs["checkpoint"].trigger.interval == timedelta(seconds=settings.checkpoint_seconds)
    assert jobs["checkpoint"].misfire_grace_time == settings.checkpoint_seconds


TOKYO = ZoneInfo("Asia/Tokyo")


def test_a_zone_change_east_in_the_old_zones_grace_period_keeps_its_late_hits_in_the_history(
    history_env: HistoryEnv, clock: FrozenClock
) -> None:
    """Hanoi to Tokyo (two hours east) one minute after Hanoi's midnight, at the very time
    the refusal of a change late in the day names ("after 17:00 UTC"). In Tokyo, Hanoi's
    yesterday is long over: finalise closes it at once, nine minutes before Hanoi's grace
    for late hits ends. A 23:59:59 hit a worker still held (Redis out of its reach for a few
    seconds) is written inside that grace: not marked late (its day's midnight plus grace,
    in the zone it was counted in, has not passed), so it never reaches the closed row. The
    change must wait for the old zone's grace, or the hit must reach the history."""
    svc = history_env.services
    rollup, site = make_rollup(history_env), svc.repo.require("demo")
    hits(history_env, clock, at(HANOI, 2026, 11, 28, 20, 0), 2)
    assert rollup.finalise(site, at(HANOI, 2026, 11, 28, 23, 0)) == []  # watermark 11-27
    clock.set(at(HANOI, 2026, 11, 28, 23, 59, 59))
    ua = "Mozilla/5.0 (X11; Linux x86_64) Firefox/131.0"
    held = svc.ingestor.check(
        HitRequest("demo", f"{PORTAL}/", None, None, "192.0.2.77", ua, None), clock()
    )
    change_at = at(HANOI, 2026, 11, 29, 0, 1)
    moved = build_site("demo", name="Demo", origins=[PORTAL], timezone="Asia/Tokyo")
    try:
        cli.refuse_a_zone_change(svc.history, site, moved, svc.settings, change_at)
    except SiteError:
        pass  # refused: the site stays in Hanoi time for now
    else:
        svc.repo.update(moved, change_at)
    current = svc.repo.require("demo")
    rollup.finalise(current, at(HANOI, 2026, 11, 29, 0, 2))
    clock.set(at(HANOI, 2026, 11, 29, 0, 3))  # within Hanoi's grace (00:10)
    svc.store.submit(held)
    svc.store.flush(timeout=10)
    assert counter(history_env.client)["total"]["visits"] == 3
    for minutes in (15, 20, 30):
        rollup.finalise(current, at(HANOI, 2026, 11, 29, 0, minutes))
    assert rows(history_env)[date(2026, 11, 28)][:2] == (3, 3)


def test_a_zone_change_between_a_runs_read_of_the_sites_and_its_lock_closes_no_open_day(
    history_env: HistoryEnv, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`site update --timezone` takes finalise's lock so that a run that read the sites
    before the change cannot close the old zone's day after the checks passed
    (cli._change_time_zone). A run reads the sites before it takes the lock: a change
    made in between (here during the run's clock check, one Redis round trip) passes its
    checks, and the run then closes, by the old zone, the day that is today in the new
    one. Tokyo to Hanoi (two hours west) at 00:10 in Tokyo: the hits of the rest of
    Hanoi's evening go to a closed day and never reach the history."""
    svc = history_env.services
    history_env.add_site("tk", "Asia/Tokyo", clock())
    tokyo = svc.repo.require("tk")
    hits(history_env, clock, at(TOKYO, 2026, 11, 28, 20, 0), 2, site="tk")
    assert make_rollup(history_env).finalise(tokyo, at(TOKYO, 2026, 11, 28, 23, 0)) == []
    run_at = at(TOKYO, 2026, 11, 29, 0, 10)
    clock.set(run_at)
    moved = build_site("tk", name="tk", origins=[PORTAL], timezone="Asia/Ho_Chi_Minh")
    monkeypatch.setattr(cli, "system_clock", lambda: run_at)

    def change_during_the_clock_check(svc_: Services, now: datetime) -> None:
        cli._change_time_zone(svc.settings, svc.repo, moved, ["timezone"])  # under the lock

    monkeypatch.setattr(jobs, "check_clock", change_during_the_clock_check)
    run_job(JOBS[0], svc, run_at, "tk", real_clock=True)
    assert svc.repo.require("tk").timezone == "Asia/Ho_Chi_Minh"
    svc.sites.forget("tk")  # the workers' cache time is over
    hits(history_env, clock, at(HANOI, 2026, 11, 28, 23, 0), 3, site="tk")  # today in Hanoi
    hanoi = svc.repo.require("tk")
    make_rollup(history_env).finalise(hanoi, at(HANOI, 2026, 11, 29, 0, 15))
    # 2 readers in Tokyo's evening, then 3 in Hanoi's (the first two come back: pageviews)
    assert rows(history_env, "tk")[date(2026, 11, 28)][1] == 5


def test_a_zone_change_waiting_for_finalise_is_checked_against_the_zone_the_site_has_then(
    history_env: HistoryEnv, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`site update tk --timezone Asia/Seoul` reads the site in Tokyo time (Seoul's twin),
    then waits for finalise's lock. Meanwhile another change moves it to Hanoi (two hours
    west, allowed at 00:15 in Tokyo: Tokyo's yesterday is not closed yet). Seoul is then a
    move two hours east late in Hanoi's day, which would close Hanoi's today while
    workers count on it: the waiting command must be refused, not pass its checks
    against the Tokyo it read."""
    svc = history_env.services
    history_env.add_site("tk", "Asia/Tokyo", clock())
    tokyo = svc.repo.require("tk")
    make_rollup(history_env).finalise(tokyo, at(TOKYO, 2026, 11, 28, 23, 0))  # through 11-27
    now = at(TOKYO, 2026, 11, 29, 0, 15)
    monkeypatch.setattr(cli, "system_clock", lambda: now)
    hanoi = build_site("tk", name="tk", origins=[PORTAL], timezone="Asia/Ho_Chi_Minh")
    cli.refuse_a_zone_change(svc.history, tokyo, hanoi, svc.settings, now)  # allowed
    lock = LiveStore.lock

    def moved_meanwhile(store: LiveStore, name: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        svc.repo.update(hanoi, now)
        return lock(store, name, *args, **kwargs)

    monkeypatch.setattr(LiveStore, "lock", moved_meanwhile)
    env = history_env.process_env(tmp_path)
    result = CliRunner().invoke(main, ["site", "update", "tk", "--timezone", "Asia/Seoul"], env=env)
    assert result.exit_code == 2, result.output
    assert "would be closed while workers still count hits on it" in result.output
    assert svc.repo.require("tk").timezone == "Asia/Ho_Chi_Minh"


def waiting_on_a_lock(engine: sa.engine.Engine, holder: sa.Connection) -> bool:
    """Whether a session waits on a lock that `holder`'s session holds (PostgreSQL)."""
    holder_pid = holder.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    with engine.connect() as conn:
        blocked = conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"
            ),
            {"pid": holder_pid},
        ).scalar_one()
    return blocked > 0


def test_a_site_removed_while_a_rollup_writes_its_day_deadlocks_neither(
    history_env: HistoryEnv, clock: FrozenClock
) -> None:
    """`site delete` deletes the site's rows table by table in one transaction
    (site_removal._delete_rows) while a run that read the site before may be writing its
    day (History.write_day: the day's row, then its paths). On PostgreSQL, a delete that
    took the paths first and the day's row next deadlocked with it: one of the two failed
    ("deadlock detected"), the rollup of the site or the delete itself."""
    svc = history_env.services
    if svc.engine.dialect.name != "postgresql":
        pytest.skip("row locks: PostgreSQL (SQLite takes one lock for the whole file)")
    hits(history_env, clock, at(HANOI, 2026, 11, 28, 10, 0), 2)
    site = svc.repo.require("demo")
    assert make_rollup(history_env).checkpoint(site, clock())
    snap = svc.recovery.snapshot(site, date(2026, 11, 28), clock())
    failed: list[str] = []

    def rollup_writes_the_day() -> None:
        try:
            svc.history.write_day(snap, final=True, now=clock())
        except sa.exc.DBAPIError as exc:
            failed.append(f"write_day: {exc.orig}")

    with svc.engine.connect() as conn:  # _delete_rows' statements, one at a time
        removal = conn.begin()
        first, column = SITE_TABLES[0]
        conn.execute(first.delete().where(column == "demo"))
        writer = threading.Thread(target=rollup_writes_the_day)
        writer.start()
        eventually(lambda: waiting_on_a_lock(svc.engine, conn))  # one the removal holds
        try:
            for table, column in SITE_TABLES[1:]:
                conn.execute(table.delete().where(column == "demo"))
            removal.commit()
        except sa.exc.DBAPIError as exc:
            removal.rollback()
            failed.append(f"delete: {exc.orig}")
        writer.join(10)
    assert failed == []
