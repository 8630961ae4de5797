"""Removing a site for good (`analytics-service site delete`): its row, every history row
that names it, and every Redis key under its hash tag.

The site's row goes first, in the same transaction as its history, so no worker loads the
site again and the scheduler stops rolling it up; a row in `deleted_sites` takes its place
until the last sweep is done, so the id cannot be taken again meanwhile (the new site would
lose its first hits to that sweep), and a delete that failed part way (Redis down) is
finished by running `site delete --yes` again.

Before anything is deleted, Redis is told which site is removed (`removed`, keys.py: its
creation time, as a new site of the id has another), and hits.lua drops its hits from then
on: those of a worker that still has the site in its cache (for up to
ANALYTICS_SITE_CACHE_SECONDS), and those a worker that cannot reach Redis writes whenever
it can again. A job run that read the site list before the delete may still write its day
(and, through a restore, put its keys back): so the history and the keys are swept once
more, after the cache time and once every such run has ended (the sweep holds every job's
lock).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from . import db
from .jobs import JOBS
from .live import LiveStore
from .sites import SiteRepository

log = logging.getLogger(__name__)

# How long a removal waits for a job run that began before it (and may still write the
# site's rows) to end: longer than any run should take. A run that died stops holding its
# lock within live.LOCK_SECONDS.
JOB_RUN_SECONDS = 900
# Every table that holds rows of a site, by the column naming it; daily_totals first, in the
# order History.write_day locks them (the day's row, then its paths and referrers): on
# PostgreSQL a delete that took the paths first deadlocked with a rollup writing the day.
SITE_TABLES = sorted(
    ((t, t.c.site_id) for t in db.metadata.sorted_tables if "site_id" in t.c),
    key=lambda table: table[0] is not db.daily_totals,
)


@dataclass(frozen=True)
class Footprint:
    """What a site has stored: what `site delete` removes."""

    history_days: int
    first_day: date | None
    last_day: date | None
    history_rows: int
    redis_keys: int


def footprint(engine: Engine, store: LiveStore, site_id: str) -> Footprint:
    t = db.daily_totals
    with engine.connect() as conn:
        days, first, last = conn.execute(
            sa.select(sa.func.count(), sa.func.min(t.c.day), sa.func.max(t.c.day)).where(
                t.c.site_id == site_id
            )
        ).one()
        rows = sum(
            conn.execute(sa.select(sa.func.count()).where(column == site_id)).scalar_one()
            for _, column in SITE_TABLES
        )
    return Footprint(days, first, last, rows, store.count_site_keys(site_id))


def deletion_began(engine: Engine, site_id: str) -> datetime | None:
    """When a deletion of the site began that has not finished, or None."""
    deleted = db.deleted_sites
    with engine.connect() as conn:
        return conn.execute(  # type: ignore[no-any-return]
            sa.select(deleted.c.deleted_at).where(deleted.c.id == site_id)
        ).scalar_one_or_none()


def _delete_rows(engine: Engine, site_id: str, *, began: datetime | None = None) -> None:
    """The site's history rows; with `began`, also its row, leaving its tombstone."""
    with engine.begin() as conn:
        if began is not None:
            conn.execute(db.sites.delete().where(db.sites.c.id == site_id))
            deleted = db.deleted_sites
            if conn.execute(sa.select(deleted.c.id).where(deleted.c.id == site_id)).first() is None:
                conn.execute(deleted.insert().values(id=site_id, deleted_at=began))
        for table, column in SITE_TABLES:
            conn.execute(table.delete().where(column == site_id))


def remove_site(
    engine: Engine,
    store: LiveStore,
    site_id: str,
    settle_seconds: float,
    now: datetime,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Delete the site, its history and its keys; sweep again once no worker can still hold
    the site in its cache (`settle_seconds`, the site cache time) and no job run that began
    before the delete is still at work. Run again after a failure, it finishes the job."""
    # Read without loading the site: one whose time zone this host cannot load is removed too.
    found = SiteRepository(engine).identity(site_id)
    if found is not None:  # else a removal run before got as far as its row, and marked it
        store.mark_removed(site_id, found[1])
    _delete_rows(engine, site_id, began=now)
    store.delete_site(site_id)
    sleep(settle_seconds)
    with contextlib.ExitStack() as held:
        for job in JOBS:
            lock = store.lock(job.name, wait_seconds=JOB_RUN_SECONDS, sleep=sleep)
            if not held.enter_context(lock):  # a run held it for JOB_RUN_SECONDS on end
                log.warning("job %s kept its lock; site %s swept all the same", job.name, site_id)
        _delete_rows(engine, site_id)
        store.delete_site(site_id)
    with engine.begin() as conn:
        conn.execute(db.deleted_sites.delete().where(db.deleted_sites.c.id == site_id))
