"""Two rollups at once, in two processes against the same Redis and database, leave exactly
what one run leaves: the writes are idempotent, the lock is only a second guard."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from analytics_service import db
from analytics_service.clock import system_clock
from analytics_service.config import Settings
from analytics_service.services import Services

from .conftest import FrozenClock, HistoryEnv
from .test_rollup import HANOI, hits, make_rollup, on, snapshot_tables

DAYS = [date(2026, 11, 24) + timedelta(days=i) for i in range(4)]
CLOSING = on(HANOI, date(2026, 11, 28), 1, 0)
ROUNDS = 5


def _close_days(settings: Settings, barrier, now: datetime) -> None:  # type: ignore[no-untyped-def]
    with Services.open(settings, system_clock) as ctx:
        site = ctx.repo.require("demo")
        barrier.wait(timeout=60)
        for _ in range(ROUNDS):
            for day in DAYS:
                ctx.rollup.close_day(site, day, now)
            ctx.rollup.checkpoint(site, now)


def _seed(env: HistoryEnv, clock: FrozenClock) -> None:
    for i, day in enumerate(DAYS):
        hits(env, clock, on(HANOI, day, 12, 0), i + 2)
    hits(env, clock, on(HANOI, date(2026, 11, 28), 0, 30), 1)  # today: checkpointed


def _clear(env: HistoryEnv) -> None:
    with env.services.engine.begin() as conn:
        for table in (db.daily_totals, db.daily_paths, db.daily_referrers, db.rollup_watermarks):
            conn.execute(sa.delete(table))


def test_two_processes_closing_the_same_days_at_once_leave_what_one_run_leaves(
    history_env: HistoryEnv, clock: FrozenClock
) -> None:
    _seed(history_env, clock)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    settings = history_env.services.settings
    procs = [ctx.Process(target=_close_days, args=(settings, barrier, CLOSING)) for _ in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    together = snapshot_tables(history_env)

    _clear(history_env)
    rollup, site = make_rollup(history_env), history_env.services.repo.require("demo")
    for day in DAYS:
        rollup.close_day(site, day, CLOSING)
    rollup.checkpoint(site, CLOSING)
    alone = snapshot_tables(history_env)
    assert together == alone
    assert len(alone["daily_totals"]) == len(DAYS) + 1


def test_two_rollup_commands_at_once_leave_what_one_leaves(
    history_env: HistoryEnv, clock: FrozenClock, tmp_path: Path
) -> None:
    # The command runs on the real clock: put the traffic on the real yesterday and today.
    now = datetime.now(UTC)
    hits(history_env, clock, now - timedelta(days=1), 3)
    hits(history_env, clock, now, 2)
    env = history_env.process_env(tmp_path)
    command = [sys.executable, "-m", "analytics_service.cli", "rollup"]
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE) for _ in "ab"]
    outputs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    together = snapshot_tables(history_env)

    _clear(history_env)
    assert subprocess.run(command, env=env, capture_output=True, check=True).returncode == 0
    alone = snapshot_tables(history_env)
    assert together == alone
    # Yesterday closed or (before midnight + grace) checkpointed; today checkpointed.
    assert sorted(r[2:4] for r in alone["daily_totals"]) == [(2, 2), (3, 3)]
