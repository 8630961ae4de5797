"""Statistics over a period: a query parsed into a small value object, run against the
history (closed days) and Redis (today and days not closed yet), then zero-filled.

Dates are site-local and inclusive. `visitors` of a week, month or range is the sum of the
daily unique visitors: visitor ids change every day by design (privacy), so distinct
visitors across days cannot be known.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from .errors import ApiError
from .history import DayCounts, DaySnapshot, History, Ranking
from .live import DAYS_HELD
from .recovery import Recovery
from .sites import Site
from .sitetime import local_date

INTERVALS = ("day", "week", "month")
DEFAULT_DAYS = 30
# Five years, leap days included.
MAX_DAYS = 5 * 365 + 2
DEFAULT_LIMIT = 10
MAX_LIMIT = 1000
ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
LIMIT = re.compile(r"[0-9]{1,4}")
FIELDS = ("visits", "pageviews", "visitors", "bots", "rate_limited")


def bad(parameter: str, message: str) -> ApiError:
    return ApiError(400, "invalid_parameter", f"'{parameter}' {message}")


# Dates outside these bounds are refused: near date.min/date.max the default range and the
# week/month zero-fill would step past what `date` can hold.
FIRST_DATE, LAST_DATE = date(1900, 1, 1), date(9000, 12, 31)


def parse_date(raw: str, parameter: str) -> date:
    try:
        if ISO_DATE.fullmatch(raw):
            day = date.fromisoformat(raw)
            if FIRST_DATE <= day <= LAST_DATE:
                return day
    except ValueError:
        pass
    raise bad(
        parameter, f"must be a date YYYY-MM-DD from {FIRST_DATE} to {LAST_DATE}, got {raw[:40]!r}"
    )


@dataclass(frozen=True, slots=True)
class StatsQuery:
    start: date
    end: date
    interval: str = "day"
    limit: int = DEFAULT_LIMIT

    @classmethod
    def parse(cls, args: Mapping[str, str], today: date) -> StatsQuery:
        """From query parameters `from`, `to` (default: the 30 days up to today),
        `interval` (default day) and `limit` (default 10); 400 naming a bad one."""
        end = parse_date(args["to"], "to") if args.get("to") else today
        if args.get("from"):
            start = parse_date(args["from"], "from")
        else:
            start = end - timedelta(days=DEFAULT_DAYS - 1)
        if start > end:
            raise bad("from", f"({start}) is after 'to' ({end})")
        if (end - start).days + 1 > MAX_DAYS:
            raise bad("to", f"makes the range longer than 5 years ({MAX_DAYS} days)")
        interval = args.get("interval") or "day"
        if interval not in INTERVALS:
            raise bad("interval", f"must be one of {', '.join(INTERVALS)}")
        raw_limit = args.get("limit") or str(DEFAULT_LIMIT)
        if not LIMIT.fullmatch(raw_limit) or not 1 <= int(raw_limit) <= MAX_LIMIT:
            raise bad("limit", f"must be a whole number from 1 to {MAX_LIMIT}")
        return cls(start, end, interval, int(raw_limit))

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

    def top(
        self, ranking: Ranking, site: Site, query: StatsQuery, now: datetime
    ) -> list[tuple[str, int]]:
        """Paths or referrer hosts by count, most first, ties by name."""
        closed = self.history.closed_days(site.id, query.start, query.end)
        live = self._live(site, query, closed, now)
        sums = Counter(self.history.top(ranking, site.id, query.start, query.end, exclude=live))
        for snap in live.values():
            sums.update(snap.paths if ranking is Ranking.PAGES else snap.refs)
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
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["date", *FIELDS])
    for day in query.days():
        c = daily.get(day, DayCounts())
        writer.writerow([day.isoformat(), *(getattr(c, f) for f in FIELDS)])
    return out.getvalue()
