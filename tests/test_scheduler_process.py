"""`analytics-service scheduler`: its own process, runs every job at start, stops on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from analytics_service.jobs import RENEW_SECONDS, throttled
from analytics_service.live import LOCK_SECONDS

from .conftest import FrozenClock, HistoryEnv
from .test_rollup import hits, rows


def test_the_scheduler_process_runs_every_job_at_start_and_stops_cleanly_on_sigterm(
    history_env: HistoryEnv, clock: FrozenClock, tmp_path: Path
) -> None:
    now = datetime.now(UTC)  # the process runs on the real clock
    hits(history_env, clock, now, 2)
    env = {**history_env.process_env(tmp_path), "ANALYTICS_LOG_LEVEL": "INFO"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "analytics_service.cli", "scheduler"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen = []
    try:
        # Reading the log of a starting process until both start-up runs are done.
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if sum("job checkpoint:" in x or "job finalise:" in x for x in seen) == 2:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=30)[0]
    output = "".join(seen) + rest
    assert proc.returncode == 0, output
    assert "scheduler stopped" in output
    assert [r[:2] for r in rows(history_env).values()] == [(2, 2)]


def test_a_run_renews_its_lock_once_renew_seconds_have_passed_not_after_every_site() -> None:
    """A run renewed its lock after every site: a Redis round trip a site, most of what a
    finalise over thousands of idle sites sent once their days were read many at a time.
    It renews once RENEW_SECONDS have passed since it last did, well within the lock's
    life."""
    assert RENEW_SECONDS <= LOCK_SECONDS / 2
    now, renewed = [0.0], []
    renew = throttled(lambda: renewed.append(now[0]), RENEW_SECONDS, lambda: now[0])
    for t in (1.0, RENEW_SECONDS - 1, RENEW_SECONDS, RENEW_SECONDS + 1, 2 * RENEW_SECONDS + 1):
        now[0] = t
        renew()
    assert renewed == [RENEW_SECONDS, 2 * RENEW_SECONDS + 1]
