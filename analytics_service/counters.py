"""The live counters of the box: online now, today, total. One Redis round trip per read."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime

from . import metrics
from .live import LiveCounts, LiveStore
from .recovery import Recovery
from .sites import Site
from .sitetime import local_date


@dataclass(frozen=True, slots=True)
class Counter:
    site: Site
    day: date
    online: int
    today_visits: int
    today_pageviews: int
    today_visitors: int
    total_visits: int
    total_pageviews: int
    as_of: datetime
    # The token of the restore that put the site's history into Redis, b"" when Redis lacks
    # it (see recovery.py): restore, then read again.
    history_mark: bytes = b"-"

    @property
    def restored(self) -> bool:
        return bool(self.history_mark)

    def as_dict(self) -> dict[str, object]:
        return {
            "site": self.site.id,
            "timezone": self.site.timezone,
            "online_window_seconds": self.site.online_window,
            "online": self.online,
            "today": {
                "date": self.day.isoformat(),
                "visits": self.today_visits,
                "pageviews": self.today_pageviews,
                "visitors": self.today_visitors,
            },
            "total": {"visits": self.total_visits, "pageviews": self.total_pageviews},
            "as_of": self.as_of.isoformat(timespec="seconds"),
        }


def read_counter(store: LiveStore, site: Site, now: datetime) -> Counter:
    """Online = visitors whose last hit is at most `online_window` seconds old (inclusive);
    today = the site-local date of `now`; total = the site's baseline + everything counted."""
    day = local_date(now, site.tz)
    return _counter(site, day, store.counts(site, day, now), now)


def read_counters(store: LiveStore, sites: Sequence[Site], now: datetime) -> list[Counter]:
    """`read_counter` of each site, in a few round trips (LiveStore.counts_of)."""
    days = [local_date(now, site.tz) for site in sites]
    lives = store.counts_of(list(zip(sites, days, strict=True)), now)
    return [
        _counter(site, day, live, now) for site, day, live in zip(sites, days, lives, strict=True)
    ]


def _counter(site: Site, day: date, live: LiveCounts, now: datetime) -> Counter:
    return Counter(
        site=site,
        day=day,
        online=live.online,
        today_visits=live.today.visits,
        today_pageviews=live.today.pageviews,
        today_visitors=live.today.visitors,
        total_visits=site.baseline_visits + live.total_visits,
        total_pageviews=site.baseline_pageviews + live.total_pageviews,
        as_of=now,
        history_mark=live.history_mark,
    )


def read_restored(
    read: Callable[[Site, datetime], Counter],
    recovery: Recovery,
    site: Site,
    now: datetime,
    counter: Counter | None = None,
) -> Counter:
    """`read(site, now)` (or `counter`, read already); when Redis came back empty (or the
    site is new), its history is put back first (once) and the site read again, so no
    reader is shown the empty numbers."""
    if counter is None:
        counter = read(site, now)
    if not counter.restored:
        recovery.restore(site, now)
        counter = read(site, now)
    recovery.noticed(counter.history_mark, now)
    return counter


class CounterCache:
    """The counter as last read from Redis, per site, reused for `ttl_seconds` of the app's
    clock (0: never reused).

    The public counter is served with `Cache-Control: max-age` (5 s by default), so its
    readers already accept numbers that old; a worker that reuses its last read for a
    second turns a popular widget's reads into one Redis call per site, worker and second.
    A changed site (new baseline, window or time zone) is read afresh at once, as is a site
    created again under its id.
    """

    def __init__(self, store: LiveStore, ttl_seconds: float) -> None:
        self.store = store
        self.ttl_seconds = ttl_seconds
        self._last: dict[str, Counter] = {}

    def read(self, site: Site, now: datetime) -> Counter:
        if self.ttl_seconds <= 0:
            metrics.counter_cache(reused=False)
            return read_counter(self.store, site, now)
        last = self._last.get(site.id)
        if (
            last is not None
            and (last.site is site or (last.site == site and last.site.created == site.created))
            and 0 <= (now - last.as_of).total_seconds() < self.ttl_seconds
        ):
            metrics.counter_cache(reused=True)
            return last
        metrics.counter_cache(reused=False)
        fresh = read_counter(self.store, site, now)
        # A read of a Redis that lost its data is about to be restored and read again:
        # keeping it would serve the empty numbers for the rest of the second.
        if fresh.restored:
            self._last[site.id] = fresh
        return fresh
