"""The scheduled jobs, as a table, and the one scheduler process that runs them.

Production runs exactly one `analytics-service scheduler` (APScheduler in its own
process); gunicorn workers never start one (APScheduler inside workers would run every job
once per worker). Each job is also a plain function of `now`, called by the tests and by
`analytics-service rollup`.

Two guards against a second scheduler: every write is idempotent (the first, and the one
correctness rests on), and each run holds a Redis lock with a token (the second: it saves
duplicate work, but a paused process can outlive its lock).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.interval import IntervalTrigger

from .clock import Clock
from .config import Settings
from .live import LATE_MARGIN_SECONDS, LOCK_SECONDS
from .rollup import ClockSkew, Rollup, RollupError
from .services import Services
from .sites import Site

log = logging.getLogger(__name__)

# How often finished days are looked for: a day is closed at most this long after its local
# midnight plus the grace period. One sweep serves every time zone, and days are computed
# per site, so there is no per-zone cron to keep in step with the sites table.
FINALISE_SECONDS = 300
# How often the scheduler process looks for jobs a backward clock step left asleep
# (realign); a step back of up to STEP_SECONDS only delays the jobs by as much.
WATCH_SECONDS = 10.0
STEP_SECONDS = 60
# How often a run renews its lock (of LOCK_SECONDS) at most. After every site, it was a
# Redis round trip a site, most of a finalise run's once its reads went many sites at a time.
RENEW_SECONDS = LOCK_SECONDS / 6


@dataclass(frozen=True)
class Job:
    name: str
    description: str
    # (rollup, sites, now, renew): `renew` keeps the run's lock alive, called after each site
    # (and renewing it every RENEW_SECONDS at most).
    run: Callable[[Rollup, Sequence[Site], datetime, Callable[[], None]], int]
    period: Callable[[Settings], float]


JOBS: tuple[Job, ...] = (
    Job(
        "finalise",
        "close every finished day (after midnight + grace), catching up from the watermark",
        lambda rollup, sites, now, renew: rollup.run_finalise(sites, now, renew),
        lambda settings: FINALISE_SECONDS,
    ),
    Job(
        "checkpoint",
        "write each site's current day as it stands (open), for recovery",
        lambda rollup, sites, now, renew: rollup.run_checkpoint(sites, now, renew),
        lambda settings: settings.checkpoint_seconds,
    ),
)


def check_clock(svc: Services, now: datetime) -> None:
    """ClockSkew when `now` (this host's clock) is more than LATE_MARGIN_SECONDS from
    Redis's. A clock a day ahead would close today with what it has so far, and once the
    clock is put right nothing opens that day again; the web workers' late marks allow for
    clocks that differ by a minute at most."""
    skew = svc.store.clock_skew(now)
    if abs(skew) > LATE_MARGIN_SECONDS:
        raise ClockSkew(
            f"this host's clock is {skew:+.0f} s off Redis's (at most {LATE_MARGIN_SECONDS} s "
            "allowed): no day is closed or checkpointed until the clocks agree (NTP)"
        )


def run_job(
    job: Job,
    svc: Services,
    now: datetime,
    site_id: str | None = None,
    *,
    real_clock: bool = False,
) -> int | None:
    """One run of `job` under its Redis lock; None when another run holds the lock. Each
    run of every site that was not skipped is recorded in SQL (History.record_job_run),
    where the web's /metrics reads how the jobs are doing: the scheduler is a process of
    its own. `real_clock`: `now` is this host's clock, to be checked against Redis's
    first."""
    sites = _sites(svc, site_id)
    started = time.perf_counter()
    try:
        if real_clock:
            check_clock(svc, now)
        with svc.store.lock(job.name) as held:
            if not held:
                log.info("job %s: another run holds the lock; skipped", job.name)
                return None
            # Read again under the lock: a time zone change takes it so that no run works on
            # the site as it was before the change (cli._change_time_zone), and one that
            # happened since the read above, while this run waited on Redis, would
            # otherwise have the run close the old zone's day after the change's checks.
            sites = _sites(svc, site_id)
            done = job.run(svc.rollup, sites, now, throttled(held.renew, RENEW_SECONDS))
    except RollupError as exc:
        _record(svc, job, site_id, now, started, failed_sites=len(exc.failed))
        raise
    except Exception:
        # The run died as a whole (Redis down, say): none of its sites was rolled up.
        _record(svc, job, site_id, now, started, failed_sites=len(sites), whole_run=True)
        raise
    _record(svc, job, site_id, now, started, failed_sites=0)
    log.info("job %s: %d site-day(s) written", job.name, done)
    return done


def throttled(
    renew: Callable[[], None], seconds: float, monotonic: Callable[[], float] = time.monotonic
) -> Callable[[], None]:
    """`renew`, called only once `seconds` have passed since it last was (or since this
    was made: the lock was just taken)."""
    last = monotonic()

    def maybe() -> None:
        nonlocal last
        if monotonic() - last >= seconds:
            renew()
            last = monotonic()

    return maybe


def _sites(svc: Services, site_id: str | None) -> Sequence[Site]:
    return svc.repo.list() if site_id is None else [svc.repo.require(site_id)]


def _record(
    svc: Services,
    job: Job,
    site_id: str | None,
    now: datetime,
    started: float,
    failed_sites: int,
    whole_run: bool = False,
) -> None:
    if site_id is not None:
        # A run of one site (`rollup --site`) says nothing of the others. Recorded, it
        # showed a job whose runs fail for another site, or whose scheduler is down, as
        # succeeding with no site failed, and silenced the alerts on it.
        return
    seconds = time.perf_counter() - started
    try:
        svc.history.record_job_run(
            job.name, now, seconds, failed_sites, succeeded=not (failed_sites or whole_run)
        )
    except sa.exc.SQLAlchemyError:
        # The run's own outcome matters more than its record: log, and let it stand.
        log.exception("job %s: could not record the run", job.name)


def build_scheduler(svc: Services, settings: Settings, clock: Clock) -> BackgroundScheduler:
    scheduler = BackgroundScheduler(timezone=UTC)
    start = clock()
    for job in JOBS:
        period = job.period(settings)
        scheduler.add_job(
            lambda job=job: _run_scheduled(scheduler, job, svc, clock),
            IntervalTrigger(seconds=period, timezone=UTC),
            id=job.name,
            name=job.description,
            # Every job runs at start too: that is the catch-up after downtime.
            next_run_time=start,
            # Missed runs are harmless (the next run catches up from the watermark and
            # checkpoints are absolute), so several missed runs become one (coalesce), and
            # a run that starts late is still worth doing for up to a whole period instead of
            # being dropped after APScheduler's 1-second default.
            coalesce=True,
            misfire_grace_time=max(1, int(period)),
            max_instances=1,
        )
    return scheduler


def _run_scheduled(scheduler: BaseScheduler, job: Job, svc: Services, clock: Clock) -> None:
    """A scheduled run; skipped for another run's lock, the job runs again once that lock
    can have expired. A run that died (its scheduler killed with -9) holds it for up to
    LOCK_SECONDS, and the job would otherwise wait a whole period (a checkpoint's may be a
    day), a restarted scheduler's catch-up at start skipped too. A live holder renews it:
    then this run is skipped again, or, once that run is over, runs once more, harmlessly
    (every run writes absolute values)."""
    if run_job(job, svc, clock(), real_clock=True) is not None:
        return
    retry = clock() + timedelta(seconds=LOCK_SECONDS + 1)
    scheduled = scheduler.get_job(job.name)
    due = scheduled.next_run_time if scheduled is not None else None
    if due is not None and due > retry:
        scheduled.modify(next_run_time=retry)


def realign(scheduler: BaseScheduler, settings: Settings, now: datetime) -> list[str]:
    """Bring forward every job due more than its period after `now`; the names of those
    moved. Only a backward step of this host's clock puts a job there (NTP putting right a
    clock that ran ahead, a virtual machine restored from a snapshot): APScheduler sets the
    next run by the wall clock and waits for it, so the jobs would sleep for as long as the
    step, checkpoints included, and a Redis lost meanwhile would lose that much more."""
    moved = []
    for job in JOBS:
        scheduled = scheduler.get_job(job.name)
        if scheduled is None or scheduled.next_run_time is None:
            continue
        ahead = scheduled.next_run_time - now
        if ahead > timedelta(seconds=job.period(settings) + STEP_SECONDS):
            log.warning(
                "job %s was due in %.0f s, more than its period: this host's clock went back; "
                "running it now",
                job.name,
                ahead.total_seconds(),
            )
            scheduled.modify(next_run_time=now)
            moved.append(job.name)
    return moved
