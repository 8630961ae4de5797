"""The rollup: copy each site's days from Redis into the SQL history.

- `checkpoint`: today's numbers as they stand (and yesterday's, until it is closed), written
  as an open (final = false) row, so a Redis that comes back empty loses at most one
  checkpoint interval.
- `finalise`: every finished day, once local midnight plus the grace period for late hits
  has passed, gets its closed row. The days to look at run from the site's watermark (the
  last day closed) to the last finished day, so a service that was down across several
  midnights catches up on its next run. Days come from zoneinfo (sitetime.py): a DST day of
  23 or 25 hours is one date like any other, closed once. A closed day that a worker's
  buffer wrote to afterwards (hits.lua marks it late: the worker could not reach Redis
  across midnight) is closed again.

Everything here is idempotent (absolute values, upserts): a rerun, or two processes at once,
leave the same rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum

from .history import History
from .live import DAYS_HELD
from .recovery import Recovery
from .sites import Site
from .sitetime import local_date

log = logging.getLogger(__name__)


class DayOutcome(StrEnum):
    """What closing (or, by hand, rolling up) one day did."""

    CLOSED = "closed"  # closed from Redis
    FROM_CHECKPOINT = "from_checkpoint"  # Redis no longer had it: closed from SQL
    EMPTY = "empty"  # no data anywhere
    # The history's closed row stands: an imported day (whatever Redis holds of it: hits
    # written late, after the import), or, by hand, one that Redis no longer holds.
    KEPT = "kept"
    CHECKPOINT = "checkpoint"  # not finished yet: written open
    FUTURE = "future"  # not begun


def last_due_day(site: Site, now: datetime, grace: timedelta) -> date:
    """The last day of `site` whose local midnight plus `grace` has passed at `now`."""
    return local_date(now - grace, site.tz) - timedelta(days=1)


@dataclass
class Rollup:
    history: History
    recovery: Recovery
    grace: timedelta

    def checkpoint(self, site: Site, now: datetime) -> int:
        """Write today as it stands (open), and yesterday too while it is not due to be
        closed (midnight plus the grace period): a Redis lost in those minutes then loses
        at most one checkpoint interval of yesterday as well. Returns how many days were
        written (0 when there is nothing to write)."""
        today = local_date(now, site.tz)
        yesterday = today - timedelta(days=1)
        days = [today] if self.last_due_day(site, now) >= yesterday else [yesterday, today]
        written = 0
        for day in days:
            snap = self.recovery.snapshot(site, day, now)
            if snap is not None and self.history.write_day(snap, final=False, now=now):
                written += 1
        return written

    def last_due_day(self, site: Site, now: datetime) -> date:
        """The last day whose local midnight plus the grace period has passed."""
        return last_due_day(site, now, self.grace)

    def close_day(self, site: Site, day: date, now: datetime) -> DayOutcome:
        """Write the closed row of a finished day: from Redis, or from its last checkpoint
        when Redis no longer has it; EMPTY when neither has data."""
        snap = self.recovery.snapshot(site, day, now)
        if snap is not None:
            if self.history.write_day(snap, final=True, now=now):
                return DayOutcome.CLOSED
            # An import takes a day only once nothing of it is in Redis and its grace is
            # over; a worker that could not reach Redis for longer wrote some hits after.
            log.warning(
                "site %s: %s is an imported day, kept as imported; %d visit(s) and %d "
                "pageview(s) a worker wrote to it afterwards are in the site's total only",
                site.id,
                day,
                snap.counts.visits,
                snap.counts.pageviews,
            )
            return DayOutcome.KEPT
        if self.history.close_checkpoint(site.id, day, now):
            log.warning("site %s: %s closed from its last checkpoint (not in Redis)", site.id, day)
            return DayOutcome.FROM_CHECKPOINT
        return DayOutcome.EMPTY

    def finalise(self, site: Site, now: datetime) -> list[date]:
        """Close every due day after the watermark; returns the days that had data."""
        last = self.last_due_day(site, now)
        watermark = self.history.watermark(site.id)
        if watermark is None:  # a new site, or the first run: look as far back as Redis keeps
            first = local_date(now, site.tz) - timedelta(days=DAYS_HELD)
        else:
            first = watermark + timedelta(days=1)
        closed = []
        if first <= last:
            done = self.history.closed_days(site.id, first, last)
            day = first
            while day <= last:
                if day not in done and self.close_day(site, day, now) != DayOutcome.EMPTY:
                    closed.append(day)
                day += timedelta(days=1)
            self.history.advance_watermark(site.id, last)
        again = self._close_late_days(site, last, now)
        return closed + [day for day in again if day not in closed]

    def _close_late_days(self, site: Site, last: date, now: datetime) -> list[date]:
        """Close again the due days a worker's buffer wrote to after they may have been
        closed (a worker that could not write to Redis for a while across midnight)."""
        store = self.recovery.store
        again = []
        for day in sorted(d for d in store.late_days(site) if d <= last):
            store.closing_late(site, day)
            if self.close_day(site, day, now) != DayOutcome.EMPTY:
                again.append(day)
            store.closed_late(site, day)
        return again

    def rollup(self, site: Site, day: date, now: datetime) -> DayOutcome:
        """By hand (`analytics-service rollup`): close `day` if it is due, else checkpoint it."""
        if day <= self.last_due_day(site, now):
            outcome = self.close_day(site, day, now)
            # "empty" would tell an admin that an imported day holds nothing.
            if outcome == DayOutcome.EMPTY and self.history.closed_days(site.id, day, day):
                return DayOutcome.KEPT
            return outcome
        if day <= local_date(now, site.tz):
            snap = self.recovery.snapshot(site, day, now)
            if snap is not None and self.history.write_day(snap, final=False, now=now):
                return DayOutcome.CHECKPOINT
            return DayOutcome.EMPTY
        return DayOutcome.FUTURE

    def run_checkpoint(
        self, sites: Iterable[Site], now: datetime, after_each: Callable[[], None]
    ) -> int:
        """Checkpoint every site, calling `after_each` after each (the job's lock renewal);
        returns how many site-days were written."""
        return self._each("checkpoint", sites, lambda s: self.checkpoint(s, now), after_each)

    def run_finalise(
        self, sites: Iterable[Site], now: datetime, after_each: Callable[[], None]
    ) -> int:
        """Close the due days of every site, calling `after_each` after each; returns how
        many days were closed."""
        return self._each("finalise", sites, lambda s: len(self.finalise(s, now)), after_each)

    @staticmethod
    def _each(
        job: str,
        sites: Iterable[Site],
        work: Callable[[Site], int],
        after_each: Callable[[], None],
    ) -> int:
        """Run `work` for every site: one site's failure does not hold back the others, and
        the run still fails at the end, naming them."""
        done, failed = 0, []
        for site in sites:
            try:
                done += work(site)
            except Exception:
                log.exception("%s of site %s failed", job, site.id)
                failed.append(site.id)
            after_each()
        if failed:
            raise RollupError(failed)
        return done


class ClockSkew(Exception):
    """This host's clock is too far from Redis's for a day to be closed by it (jobs.py)."""


class RollupError(RuntimeError):
    def __init__(self, failed: list[str]) -> None:
        super().__init__(f"rollup failed for site(s): {', '.join(failed)}")
        self.failed = failed
