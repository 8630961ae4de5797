"""Recovery: when Redis comes back empty, put each site's history back into it, and read
live days only from a Redis that has it.

The total hash carries a marker (keys.RESTORED). Whoever reads Redis in order to show or
store numbers (the counter, the admin API, the rollup) sees when it is missing and calls
`Recovery.restore`: one SQL read, then restore.lua, which sets the marker first so that only
one caller adds the history. What it adds: the sum of every day counted here (closed days
and the checkpoints of open ones) to the total, and to each day's keys that Redis would
still hold, the day as the history has it: its last checkpoint while open, its closed row
once closed. Closed days come back too because a day can be closed again from Redis (a
worker's late batch, a rollup by hand), and Redis must then hold the whole day, not only
what came after the loss. Hits counted between the wipe and the restore are kept (the
script adds).

The hit path never checks: it only adds, and adding is right whether the history is put
back before or after. So it stays one round trip with no SQL.

A Redis that holds the marker can still be behind the history: a replica promoted before
it had the last writes, or a backup put back. A day then holds fewer visits or pageviews
than the row the rollup wrote from it, or the site's total less than the rows add up to,
which counts in Redis never do otherwise. The rollup looks before it writes (`snapshot`),
so a checkpoint never writes fewer of either for a day than before; it raises such a Redis
to the history (every amount to at least the history's: what it counted since it fell
behind cannot be told from what it lost), and logs an error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta

from .history import DayCounts, DaySnapshot, History, RestorePlan
from .live import DAYS_HELD, HeldDay, LiveStore
from .sites import Site
from .sitetime import local_date

log = logging.getLogger(__name__)

# Sites whose history restore_all reads and puts back at once (a plan can be a few hundred
# KB: a day's 5,000 paths, for each of 9 days).
RESTORES_AT_ONCE = 100


class Recovery:
    def __init__(
        self,
        history: History,
        store: LiveStore,
        on_restored: Callable[[datetime], None] = lambda now: None,
    ) -> None:
        self.history = history
        self.store = store
        # Told when this process put a site's history back, or found that another one had
        # (visitor.SaltStore.offer_again: the day's salt went with the wipe too).
        self.on_restored = on_restored
        self._marks: set[bytes] = set()

    def snapshot(self, site: Site, day: date, now: datetime) -> DaySnapshot | None:
        """The day as Redis holds it (None when Redis has nothing for it). Numbers read from
        a Redis that lost its data, or that is behind the history, are never taken for the
        day's numbers: the history is put back first, and the day read again."""
        for _ in range(2):
            held = self.store.snapshot(site, day)
            if not held.intact:
                self.restore(site, now)
                continue
            held = self._unless_behind(site, day, held, now)
            if held is not None:
                return held.snap
        raise RuntimeError(
            f"site {site.id}: Redis lost its data again, or stayed behind the history, while "
            "being restored"
        )

    def _unless_behind(self, site: Site, day: date, held: HeldDay, now: datetime) -> HeldDay | None:
        """`held`, or a newer read, if Redis holds at least what the history has of the day
        and in all; None once a Redis behind it has been raised to it (or, wiped since the
        first read, restored)."""
        written = self.history.counted(site.id, day)
        total = self.history.counted_total(site.id)
        if not _short(held, written, total):
            return held
        # Read again after the history: a row written meanwhile from a newer Redis (another
        # rollup, the admin API) is no shortfall, since Redis's counts only grow.
        held = self.store.snapshot(site, day)
        if not held.intact:  # wiped meanwhile
            self.restore(site, now)
            return None
        if not _short(held, written, total):
            return held
        log.error(
            "site %s: Redis holds less than the SQL history (%s: visits %d, pageviews %d "
            "against %s; in all: visits %d, pageviews %d against %d, %d): it is older than "
            "the last checkpoint (a replica promoted before it had the last writes, or a "
            "backup put back); raising it to the history",
            site.id,
            day,
            held.snap.counts.visits if held.snap else 0,
            held.snap.counts.pageviews if held.snap else 0,
            f"{written.visits}, {written.pageviews}" if written else "none",
            held.total_visits,
            held.total_pageviews,
            *total,
        )
        self.store.restore(site, self._plan(site, now), now, top_up=True)
        self.on_restored(now)
        return None

    def noticed(self, mark: bytes, now: datetime) -> None:
        """A counter read found the site's history marked `mark` in Redis. A mark not seen
        before is a restore (another process's, the scheduler's say, or one before this
        worker started): the salts go back to Redis now, not at their next refresh, so
        that a worker that never held them (started since the wipe) does not set new
        ones and count each reader twice."""
        if mark in self._marks:
            return
        self._marks.add(mark)
        self.on_restored(now)

    def restore(self, site: Site, now: datetime) -> bool:
        """Put the site's history into Redis unless already there; True if this call did."""
        plan = self._plan(site, now)
        restored, days = self.store.restore(site, plan, now)
        if restored:
            # A new site (nothing to add) is routine; history put back means Redis lost data.
            _log_restored(site, plan, days, logging.INFO)
            self.on_restored(now)
        return restored

    def restore_all(self, sites: Sequence[Site], now: datetime) -> None:
        """`restore` of each of `sites` (read without the marker at once: /metrics after
        a wipe), RESTORES_AT_ONCE at a time, each time in four queries and a round trip:
        one site at a time took 47-55 s at 20,000 sites, past a scrape's timeout. Each
        site whose history came back is logged as by `restore`; those with nothing to
        add (new, or idle: most of thousands) in one line, not one each. A site whose
        restore failed raises once the others are done, its error naming it."""
        idle, restored_any, failed = [], False, None
        for start in range(0, len(sites), RESTORES_AT_ONCE):
            chunk = sites[start : start + RESTORES_AT_ONCE]
            plans = self.history.restore_plans({s.id: self._since(s, now) for s in chunk})
            results = self.store.restore_all([(s, plans[s.id]) for s in chunk], now)
            for site, result in zip(chunk, results, strict=True):
                if isinstance(result, Exception):
                    failed = failed or result
                    continue
                restored, days = result
                if not restored:
                    continue  # another process's restore was first
                restored_any = True
                if _log_restored(site, plans[site.id], days, logging.DEBUG) == logging.DEBUG:
                    idle.append(site.id)
        if idle:
            log.info(
                "%d site(s) had no history marker and no history to put back (new, or "
                "nothing counted yet; %s): marked restored",
                len(idle),
                ", ".join(idle[:3]) + (", ..." if len(idle) > 3 else ""),
            )
        if restored_any:
            self.on_restored(now)
        if failed is not None:
            raise failed

    def _plan(self, site: Site, now: datetime) -> RestorePlan:
        return self.history.restore_plan(site.id, self._since(site, now))

    @staticmethod
    def _since(site: Site, now: datetime) -> date:
        return local_date(now, site.tz) - timedelta(days=DAYS_HELD)


def _log_restored(site: Site, plan: RestorePlan, days: int, idle_level: int) -> int:
    """Log a site's restore: a WARNING when it put history back (Redis lost data), at
    `idle_level` when there was none (a new site is routine); the level logged at."""
    level = logging.WARNING if plan.total_visits or plan.total_pageviews or days else idle_level
    log.log(
        level,
        "site %s: Redis had no history marker; restored total +%d visits +%d pageviews "
        "and %d day(s) from SQL",
        site.id,
        plan.total_visits,
        plan.total_pageviews,
        days,
    )
    return level


def _short(held: HeldDay, written: DayCounts | None, total: tuple[int, int]) -> bool:
    """Whether Redis holds fewer visits or pageviews than the history: of the day (when
    both have it), or in all."""
    day = held.snap.counts if held.snap else None
    return (
        held.total_visits < total[0]
        or held.total_pageviews < total[1]
        or (
            day is not None
            and written is not None
            and (day.visits < written.visits or day.pageviews < written.pageviews)
        )
    )
