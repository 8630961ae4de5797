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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum

from .history import History
from .live import DAYS_HELD
from .recovery import Recovery
from .sites import Site
from .sitetime import local_date

log = logging.getLogger(__name__)

# Sites whose due days a finalise run reads at once, and whose watermarks it writes in one
# statement (500 ids a query: an old SQLite takes at most 999 parameters a statement).
SITES_AT_ONCE = 500


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


@dataclass(frozen=True)
class _Due:
    """What a finalise run is to do for one site, read before it closes anything."""

    last: date  # the last due day
    through: date | None  # the watermark to set once `days` are closed; None: none due
    days: Sequence[date]  # the due days to close: those not closed that may hold data
    late: set[date] | Exception  # its late days (live.late_days), or why they are unknown


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


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
        [due] = self._due([site], now)
        closed = self._close_due_days(site, due, now)
        if due.through is not None:
            self.history.advance_watermarks({site.id: due.through})
        return self._with_late_days(site, due, closed, now)

    def _due(self, sites: Sequence[Site], now: datetime) -> list[_Due]:
        """What finalise is to do for each site, read for all of them at once: one query
        for their watermarks, one per first day to look at for the rows those days have,
        one Redis round trip for the days it holds and one for the late days. A due day
        with neither (a new or idle site's: most of the 9 days a site without a watermark
        looks at) has nothing to close; each read a day on its own made a first finalise
        over 5,000 new sites take minutes (docs/scaling.md)."""
        marks = self.history.watermarks([site.id for site in sites])
        spans = {}
        for site in sites:
            mark = marks.get(site.id)
            # A new site, or the first run: look as far back as Redis keeps.
            first = (
                local_date(now, site.tz) - timedelta(days=DAYS_HELD)
                if mark is None
                else mark + timedelta(days=1)
            )
            spans[site.id] = (first, self.last_due_day(site, now))
        looked_at = [site for site in sites if spans[site.id][0] <= spans[site.id][1]]
        stored: dict[str, dict[date, bool]] = {}
        for first in {spans[site.id][0] for site in looked_at}:
            ids = [site.id for site in looked_at if spans[site.id][0] == first]
            stored.update(self.history.stored_days(ids, first))
        unclosed = [
            (site, [d for d in _days(*spans[site.id]) if not stored[site.id].get(d, False)])
            for site in looked_at
        ]
        store = self.recovery.store
        in_redis = store.days_held_of(
            [
                (site, [d for d in days if (local_date(now, site.tz) - d).days <= DAYS_HELD])
                for site, days in unclosed
            ]
        )
        # An open row (a checkpoint) closes from SQL when Redis no longer has its day.
        to_close = {
            site.id: [d for d in days if d in held or d in stored[site.id]]
            for (site, days), held in zip(unclosed, in_redis, strict=True)
        }
        late = store.late_days_of(sites)
        return [
            _Due(
                last=spans[site.id][1],
                through=spans[site.id][1] if site.id in to_close else None,
                days=to_close.get(site.id, []),
                late=late_days,
            )
            for site, late_days in zip(sites, late, strict=True)
        ]

    def _close_due_days(self, site: Site, due: _Due, now: datetime) -> list[date]:
        """Close the due days that may hold data; the days that had data."""
        return [day for day in due.days if self.close_day(site, day, now) != DayOutcome.EMPTY]

    def _with_late_days(
        self, site: Site, due: _Due, closed: list[date], now: datetime
    ) -> list[date]:
        """`closed`, and the due days a worker's buffer wrote to after they may have been
        closed (a worker that could not write to Redis for a while across midnight),
        closed again."""
        if isinstance(due.late, Exception):
            raise due.late
        store = self.recovery.store
        again = []
        for day in sorted(d for d in due.late if d <= due.last):
            store.closing_late(site, day)
            if self.close_day(site, day, now) != DayOutcome.EMPTY:
                again.append(day)
            store.closed_late(site, day)
        return closed + [day for day in again if day not in closed]

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
        many days were closed. Sites go SITES_AT_ONCE at a time: their due days are read
        together, and their watermarks written in one statement once their days are
        closed (a run that dies before leaves them to the next, which finds those days
        closed)."""
        done, failed = 0, []
        listed = list(sites)
        for start in range(0, len(listed), SITES_AT_ONCE):
            chunk = listed[start : start + SITES_AT_ONCE]
            dues: Sequence[_Due | None]
            try:
                dues = self._due(chunk, now)
            except Exception:
                log.exception(
                    "finalise: the due days of sites %s to %s could not be read at once; "
                    "each is read on its own",
                    chunk[0].id,
                    chunk[-1].id,
                )
                dues = [None] * len(chunk)
            through = {}
            for site, due in zip(chunk, dues, strict=True):
                try:
                    if due is None:
                        [due] = self._due([site], now)
                    closed = self._close_due_days(site, due, now)
                    if due.through is not None:
                        through[site.id] = due.through
                    done += len(self._with_late_days(site, due, closed, now))
                except Exception:
                    log.exception("finalise of site %s failed", site.id)
                    failed.append(site.id)
                after_each()
            try:
                self.history.advance_watermarks(through)
            except Exception:
                log.exception(
                    "finalise: the watermarks of %d site(s) (%s to %s) were not written; "
                    "their days are closed, and the next run looks at them again",
                    len(through),
                    min(through),
                    max(through),
                )
                failed += [site_id for site_id in through if site_id not in failed]
        if failed:
            raise RollupError(failed)
        return done

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
