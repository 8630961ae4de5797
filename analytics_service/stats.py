"""Statistics over a period: a query parsed into a small value object, run against the
history (closed days) and Redis (today and days not closed yet), then zero-filled.

Dates are site-local and inclusive. `visitors` of a week, month or range is the sum of the
daily unique visitors: visitor ids change every day by design (privacy), so distinct
visitors across days cannot be known.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from werkzeug.datastructures import MultiDict

from .history import IMPORT, DayCounts, DaySnapshot, History, Ranking
from .live import DAYS_HELD
from .params import (
    DEFAULT_DAYS,
    DEFAULT_LIMIT,
    FIRST_DATE,
    MAX_DAYS,
    SEPARATORS,
    RangeParams,
    bad_parameter,
    parse_query,
)
from .recovery import Recovery
from .sites import Site
from .sitetime import local_date

FIELDS = ("visits", "pageviews", "visitors", "bots", "rate_limited", "duplicates")


@dataclass(frozen=True, slots=True)
class StatsQuery:
    start: date
    end: date
    interval: str = "day"
    limit: int = DEFAULT_LIMIT
    separator: str = "comma"

    @classmethod
    def parse(
        cls, args: MultiDict[str, str], today: date, model: type[RangeParams] = RangeParams
    ) -> StatsQuery:
        """From the query parameters `model` declares (params.py): `from`, `to` (default:
        the 30 days up to today), and `interval` or `limit`; 400 naming a bad one."""
        params = parse_query(model, args)
        end = params.end or today
        start = params.start or max(FIRST_DATE, end - timedelta(days=DEFAULT_DAYS - 1))
        if start > end:
            # Without `to` the range ends today: say so, rather than name a `to` never sent.
            bound = f"'to' ({end})" if params.end is not None else f"today ({end}; no 'to' given)"
            raise bad_parameter("from", f"({start}) is after {bound}")
        if (end - start).days + 1 > MAX_DAYS:
            # Name the one the client sent: without `to`, the range ends today.
            culprit = "to" if params.end is not None else "from"
            raise bad_parameter(
                culprit,
                f"makes the range {start} to {end} longer than 5 years ({MAX_DAYS} days)",
            )
        return cls(start, end, **params.model_dump(exclude={"start", "end"}))

    def days(self) -> list[date]:
        return [self.start + timedelta(days=i) for i in range((self.end - self.start).days + 1)]


def period_start(day: date, interval: str) -> date:
    if interval == "week":  # ISO weeks: Monday to Sunday
        return day - timedelta(days=day.weekday())
    if interval == "month":
        return day.replace(day=1)
    return day


def _add(a: DayCounts, b: DayCounts) -> DayCounts:
    return DayCounts(*(getattr(a, f) + getattr(b, f) for f in FIELDS))


def series(daily: Mapping[date, DayCounts], query: StatsQuery) -> list[dict[str, object]]:
    """One row per period touching the range, zero-filled, each cut to the range."""
    rows: dict[date, dict[str, object]] = {}
    for day in query.days():
        key = period_start(day, query.interval)
        row = rows.setdefault(key, {"period": key, "from": day, "to": day, "counts": DayCounts()})
        row["to"] = day
        row["counts"] = _add(row["counts"], daily.get(day, DayCounts()))  # type: ignore[arg-type]
    return [
        {
            "period": r["period"].isoformat(),  # type: ignore[attr-defined]
            "from": r["from"].isoformat(),  # type: ignore[attr-defined]
            "to": r["to"].isoformat(),  # type: ignore[attr-defined]
            **r["counts"].as_dict(),  # type: ignore[attr-defined]
        }
        for r in rows.values()
    ]


class StatsReader:
    """Reads a site's days: closed ones from SQL, the others live from Redis."""

    def __init__(self, history: History, recovery: Recovery) -> None:
        self.history = history
        self.recovery = recovery

    def _live(
        self, site: Site, query: StatsQuery, closed: set[date], now: datetime
    ) -> dict[date, DaySnapshot]:
        today = local_date(now, site.tz)
        day = max(query.start, today - timedelta(days=DAYS_HELD))
        live = {}
        while day <= min(query.end, today):
            if day not in closed:
                snap = self.recovery.snapshot(site, day, now)
                if snap is not None:
                    live[day] = snap
            day += timedelta(days=1)
        return live

    def daily(self, site: Site, query: StatsQuery, now: datetime) -> dict[date, DayCounts]:
        stored = self.history.days(site.id, query.start, query.end)
        closed = {d for d, (_, final) in stored.items() if final}
        counts = {d: c for d, (c, _) in stored.items()}
        counts.update({d: s.counts for d, s in self._live(site, query, closed, now).items()})
        return counts

    def counted(self, site: Site, query: StatsQuery, now: datetime) -> dict[date, DayCounts]:
        """The range's days but the imported ones (an old counter's, which have no pages or
        referrers): the days a top list ranks, whose totals its shares are of."""
        daily = self.daily(site, query, now)
        sources = self.history.sources(site.id, daily)
        return {d: c for d, c in daily.items() if sources.get(d) != IMPORT}

    def top(
        self, ranking: Ranking, site: Site, query: StatsQuery, now: datetime
    ) -> list[tuple[str, int]]:
        """Paths or referrer hosts by count, most first, ties by name."""
        closed = self.history.closed_days(site.id, query.start, query.end)
        live = self._live(site, query, closed, now)
        live_sums: Counter[str] = Counter()
        for snap in live.values():
            live_sums.update(snap.paths if ranking is Ranking.PAGES else snap.refs)
        # Exact: a key among neither the stored days' leaders nor the live days' keys has
        # no more than each leader, and comes after it by name where they tie.
        span = (query.start, query.end)
        stored = self.history.top(ranking, site.id, span, query.limit, exclude=live, also=live_sums)
        sums = Counter(stored)
        sums.update(live_sums)
        ranked = sorted(sums.items(), key=lambda kv: (-kv[1], kv[0]))
        return ranked[: query.limit]


def totals(daily: Mapping[date, DayCounts], query: StatsQuery) -> dict[str, int]:
    out = DayCounts()
    for day in query.days():
        out = _add(out, daily.get(day, DayCounts()))
    return out.as_dict()


def export_csv(daily: Mapping[date, DayCounts], query: StatsQuery) -> str:
    """One row per day of the range, zero-filled; its first four columns are what
    `import` reads."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter=SEPARATORS[query.separator], lineterminator="\n")
    writer.writerow(["date", *FIELDS])
    for day in query.days():
        c = daily.get(day, DayCounts())
        writer.writerow([day.isoformat(), *(getattr(c, f) for f in FIELDS)])
    return out.getvalue()
