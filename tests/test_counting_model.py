"""The numbers against a model of README's "How the numbers are defined".

The model below is written from the README alone (one reader is an address and a
User-Agent; a day is a site-local date): it knows nothing of salts, Redis keys or batches.
The service and the model are given the same random sequences of hits, across local
midnights (one of them at a DST change), resends, bursts over the flood guards and the
online window's edge, and must agree on every hit's outcome and every number of the box.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, Phase, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from analytics_service import keys
from analytics_service.sites import SiteRepository, build_site

from .conftest import Browser, FrozenClock, counter

VISIT_IDLE = 1800  # README: a hit 30 minutes or more after the previous one starts a visit
PAGEVIEWS_A_MINUTE = 60

# (zone, online window, address visit limit, baseline visits): Santiago's clocks go from
# 00:00 to 01:00 on 2026-09-06 (a midnight that does not exist) and from 24:00 back to
# 23:00 on 2026-04-04 (a day of 25 hours); New York's online window is longer than a visit.
SITES = (
    ("America/Santiago", 60, 3, 0),
    ("Asia/Ho_Chi_Minh", 300, 2, 30545),
    ("America/New_York", 3600, 120, 0),
)
# Each example starts two minutes before one of these site-local times.
MIDNIGHTS = (
    datetime(2026, 9, 6, 0, 0, tzinfo=ZoneInfo("America/Santiago")),  # the missing one
    # Not a midnight: the first of the two 23:00s of Santiago's 2026-04-04.
    datetime(2026, 4, 4, 23, 0, tzinfo=ZoneInfo("America/Santiago")),
    datetime(2026, 11, 28, 0, 0, tzinfo=ZoneInfo("Asia/Ho_Chi_Minh")),
    datetime(2026, 11, 28, 0, 0, tzinfo=ZoneInfo("America/New_York")),
)
# Readers: (address, User-Agent). Two share an address (the address guard), one
# is an IPv6 address in the same /64 as another (one address to the guard).
READERS = (
    ("203.0.113.50", "Mozilla/5.0 Firefox/1.0"),
    ("203.0.113.50", "Mozilla/5.0 Firefox/2.0"),
    ("203.0.113.50", "Mozilla/5.0 Firefox/3.0"),
    ("198.51.100.9", "Mozilla/5.0 Firefox/1.0"),
    ("2001:db8::1", "Mozilla/5.0 Firefox/1.0"),
    ("2001:db8::2", "Mozilla/5.0 Firefox/2.0"),
)
# How far the clock moves before a step: around the guards', the dedup's, the online
# window's and the visit's edges.
GAPS = (0.0, 0.25, 1.0, 29.0, 59.0, 60.0, 61.0, 299.0, 300.0, 301.0, 1799.0, 1800.0, 3600.0)


def _network(ip: str) -> str:
    # README: an IPv6 address counts by its /64.
    return ip.rsplit(":", 2)[0] if ":" in ip else ip


@dataclass
class ModelDay:
    visits: int = 0
    pageviews: int = 0
    rate_limited: int = 0
    duplicates: int = 0
    visitors: set[tuple[str, str]] = field(default_factory=set)


@dataclass
class ModelSite:
    """README's definitions for one site, applied to hits in the order they are written."""

    tz: ZoneInfo
    window: int
    address_limit: int
    baseline_visits: int
    days: dict[date, ModelDay] = field(default_factory=lambda: defaultdict(ModelDay))
    # reader -> (time, site-local date) of their last counted hit
    last: dict[tuple[str, str], tuple[float, date]] = field(default_factory=dict)
    # per-minute counts (unix minute): a reader's pageviews, an address's new visits
    pageviews: dict[tuple[tuple[str, str], int], int] = field(default_factory=dict)
    arrivals: dict[tuple[str, int], int] = field(default_factory=dict)
    # (reader, hit id) -> the dedup buckets its counted sends fell in
    ids: dict[tuple[tuple[str, str], str], set[int]] = field(default_factory=dict)
    latest: float = float("-inf")  # the latest counted hit, any reader's

    def _sliding(self, counts: dict, key: object, t: float) -> float:
        # README: a sliding minute estimated from two fixed ones, the previous one weighing
        # in with the share of it still within the last 60 s.
        minute = int(t // 60)
        return counts.get((key, minute - 1), 0) * (1 - (t % 60) / 60) + counts.get((key, minute), 0)

    def hit(self, reader: tuple[str, str], t: float, hit_id: str | None) -> str:
        t = round(t, 3)
        day = datetime.fromtimestamp(t, UTC).astimezone(self.tz).date()
        today = self.days[day]
        bucket = int(t // keys.DEDUP_SECONDS)
        # A resend of a counted hit is a duplicate, over a flood guard too.
        sent = self.ids.setdefault((reader, hit_id), set()) if hit_id is not None else set()
        if sent & {bucket, bucket - 1}:
            today.duplicates += 1
            return "d"
        if self._sliding(self.pageviews, reader, t) >= PAGEVIEWS_A_MINUTE:
            today.rate_limited += 1
            return "r"
        last = self.last.get(reader)
        new_visit = last is None or last[1] != day or t - last[0] >= VISIT_IDLE
        # Carried across midnight: known under yesterday's id, i.e. still among the
        # readers the service keeps (the online window or the visit's idle time, the
        # longer, back from the latest counted hit).
        horizon = max(VISIT_IDLE, self.window)
        carried = (
            last is not None
            and last[1] == day - timedelta(days=1)
            and last[0] >= self.latest - horizon
        )
        address = _network(reader[0])
        arrival = new_visit and not carried
        if arrival and self._sliding(self.arrivals, address, t) >= self.address_limit:
            today.rate_limited += 1
            return "r"
        sent.add(bucket)
        minute = int(t // 60)
        self.pageviews[(reader, minute)] = self.pageviews.get((reader, minute), 0) + 1
        if arrival:
            self.arrivals[(address, minute)] = self.arrivals.get((address, minute), 0) + 1
        self.last[reader] = (t, day)
        self.latest = max(self.latest, t)
        today.pageviews += 1
        today.visitors.add(reader)
        if new_visit:
            today.visits += 1
            return "v"
        return "p"

    def online(self, now: float) -> int:
        # README: seen 300 s ago counts, 301 s does not; a reader across midnight once.
        return sum(1 for t, _ in self.last.values() if now - t <= self.window)

    def box(self, now: datetime) -> dict:
        day = now.astimezone(self.tz).date()
        held = self.days.get(day, ModelDay())
        return {
            "online": self.online(round(now.timestamp(), 3)),
            "today": {"date": day.isoformat(), "visits": held.visits, "pageviews": held.pageviews},
            "total": {
                "visits": self.baseline_visits + sum(d.visits for d in self.days.values()),
                "pageviews": sum(d.pageviews for d in self.days.values()),
            },
        }


# One step: (gap before it, site, reader, hit id or None, how many hits at once).
STEP = st.tuples(
    st.sampled_from(GAPS),
    st.integers(0, len(SITES) - 1),
    st.integers(0, len(READERS) - 1),
    st.one_of(st.none(), st.sampled_from(["resend-aaaa", "resend-bbbb"])),
    st.sampled_from([1, 1, 1, 2, 62]),
)

_example = itertools.count()


@hypothesis_settings(
    max_examples=10,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(start=st.sampled_from(MIDNIGHTS), steps=st.lists(STEP, min_size=1, max_size=25))
# The edges, each once for sure (the clock starts two minutes before midnight): a visit's
# 30 minutes and the online window, at both sides of their edge.
@example(
    start=MIDNIGHTS[2],
    steps=[
        (0, 1, 0, None, 1),
        (1799, 1, 0, None, 1),
        (1800, 1, 0, None, 1),
        (300, 0, 3, None, 1),
        (1, 0, 3, None, 1),
        (3599, 2, 3, None, 1),
        (1, 0, 3, None, 1),
    ],
)
# Two readers of one address, then a burst of a third over the visitor guard across
# midnight; after it, the two carried across it (no new arrivals, and a resend of before
# midnight), a new reader, and a resend across a dedup bucket.
@example(
    start=MIDNIGHTS[2],
    steps=[
        (10, 1, 1, None, 1),
        (10, 1, 2, "resend-aaaa", 1),
        (85, 1, 0, None, 62),
        (1, 1, 1, None, 1),
        (0, 1, 2, "resend-aaaa", 1),
        (0, 1, 2, None, 1),
        (0, 1, 3, None, 1),
        (290, 1, 2, "resend-bbbb", 1),
        (5, 1, 2, "resend-bbbb", 1),
    ],
)
# Across the midnight Santiago does not have, and the repeated hour of its 25-hour day.
@example(
    start=MIDNIGHTS[0],
    steps=[(90, 0, 4, None, 1), (60, 0, 5, None, 1), (0, 0, 4, None, 1), (1, 0, 0, None, 1)],
)
@example(
    start=MIDNIGHTS[1],
    steps=[
        (120, 0, 4, None, 1),
        (1799, 0, 4, None, 1),
        (1800, 0, 4, None, 1),
        (1799, 0, 4, None, 1),
        (1800, 0, 4, None, 1),
        (1800, 0, 4, None, 1),
    ],
)
def test_the_numbers_are_readmes_definitions(
    app: Flask,
    client: FlaskClient,
    repo: SiteRepository,
    clock: FrozenClock,
    written: list[str],
    start: datetime,
    steps: list[tuple[float, int, int, str | None, int]],
) -> None:
    clock.set(start.astimezone(UTC) - timedelta(minutes=2))
    names, models = [], []
    for zone, window, limit, baseline in SITES:  # new sites each example: nothing carries over
        name = f"m{next(_example)}"
        repo.create(
            build_site(
                name,
                name=name,
                timezone=zone,
                origins=["https://portal.example"],
                online_window=window,
                address_visit_limit=limit,
                baseline_visits=baseline,
            ),
            clock(),
        )
        names.append(name)
        models.append(ModelSite(ZoneInfo(zone), window, limit, baseline))
    for gap, s, r, hit_id, burst in steps:
        clock.advance(gap)
        ip, agent = READERS[r]
        reader = Browser(client, ip=ip, user_agent=agent)
        for _ in range(burst):
            before = len(written)
            reader.hit("/", site=names[s], **({"id": hit_id} if hit_id else {}))
            assert written[before:] == [models[s].hit(READERS[r], clock().timestamp(), hit_id)]
            if burst > 1:
                clock.advance(0.25)
        for name, model in zip(names, models, strict=True):
            shown = counter(client, name)
            expected = model.box(clock())
            assert {k: shown[k] for k in expected} | {
                "today": {k: shown["today"][k] for k in expected["today"]}
            } == expected
            held = model.days.get(date.fromisoformat(shown["today"]["date"]), ModelDay())
            # A HyperLogLog: no more than there are, and never above visits.
            assert shown["today"]["visitors"] <= len(held.visitors)
    store = app.extensions["analytics"].store
    for name, model in zip(names, models, strict=True):
        site = repo.get(name)
        assert site is not None
        for day, held in model.days.items():
            snap = store.snapshot(site, day).snap
            assert snap is not None
            assert (snap.counts.rate_limited, snap.counts.duplicates) == (
                held.rate_limited,
                held.duplicates,
            )
