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
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import date, datetime, timedelta

from .history import DaySnapshot, History
from .live import DAYS_HELD, LiveStore
from .sites import Site
from .sitetime import local_date

log = logging.getLogger(__name__)


class Recovery:
    def __init__(
        self,
        history: History,
        store: LiveStore,
        on_restored: Callable[[datetime], None] = lambda now: None,
    ) -> None:
        self.history = history
        self.store = store
        # Told when this process put a site's history back (visitor.SaltStore.offer_again:
        # the day's salt went with the wipe too).
        self.on_restored = on_restored

    def snapshot(self, site: Site, day: date, now: datetime) -> DaySnapshot | None:
        """The day as Redis holds it (None when Redis has nothing for it). Numbers read from
        a Redis that lost its data are never taken for the day's numbers: the history is
        put back first, and the day read again."""
        for _ in range(2):
            intact, snap = self.store.snapshot(site, day)
            if intact:
                return snap
            self.restore(site, now)
        raise RuntimeError(f"site {site.id}: Redis lost its data again while being restored")

    def restore(self, site: Site, now: datetime) -> bool:
        """Put the site's history into Redis unless already there; True if this call did."""
        since = local_date(now, site.tz) - timedelta(days=DAYS_HELD)
        plan = self.history.restore_plan(site.id, since)
        restored, days = self.store.restore(site, plan, now)
        if restored:
            # A new site (nothing to add) is routine; history put back means Redis lost data.
            log.log(
                logging.WARNING
                if plan.total_visits or plan.total_pageviews or days
                else logging.INFO,
                "site %s: Redis had no history marker; restored total +%d visits +%d pageviews "
                "and %d day(s) from SQL",
                site.id,
                plan.total_visits,
                plan.total_pageviews,
                days,
            )
            self.on_restored(now)
        return restored
