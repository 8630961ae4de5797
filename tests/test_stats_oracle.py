"""The admin statistics against an oracle: a random fortnight of hits for three sites in
three time zones (Hanoi; New York and Berlin, each with its 25-hour day at the end of
summer time), sent through the real hit path, with the rollup run at random moments and on
the edges of its grace period, an old counter's days imported, and one day imported in the
middle of the run. Every `stats` series (day, week, month), top list and CSV export over
random ranges must equal what the README's definitions give when worked out by brute force
from the log of what was sent. Unique visitors are left out: a HyperLogLog estimates them.
"""

from __future__ import annotations

import csv
import io
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo

from .conftest import PORTAL, Browser, FrozenClock, HistoryEnv
from .test_admin import ADMIN
from .test_rollup import make_rollup

ZONES = {"demo": "Asia/Ho_Chi_Minh", "ny": "America/New_York", "ber": "Europe/Berlin"}
START = datetime(2026, 10, 22, tzinfo=UTC)  # Berlin's 25-hour day is 10-25, New York's 11-01
END = datetime(2026, 11, 3, 12, tzinfo=UTC)
PATHS = ["/", "/a", "/b", "/tin-tuc", "/c", "/d"]
# None twice: a hit without a referrer is the commonest; the last two are the site itself.
REFERRERS = [None, None, "https://google.com/", "https://zalo.me/x", "https://bing.com/"]
REFERRERS += [f"{PORTAL}/x", "https://www.portal.example/"]
OWN_HOSTS = {"portal.example", "www.portal.example"}
READERS = [(f"198.51.100.{i}", f"Mozilla/5.0 Firefox/{100 + i % 7}") for i in range(25)]
BOT = ("192.0.2.99", "Googlebot/2.1 (+http://www.google.com/bot.html)")
# A day of Berlin's with no hits, imported once it is over.
GAP_SITE, GAP_DAY, GAP_IMPORTED_AT = (
    "ber",
    date(2026, 10, 27),
    datetime(2026, 10, 28, 6, tzinfo=UTC),
)
COUNTED = ("visits", "pageviews", "bots", "rate_limited", "duplicates")
AUTH = {"Authorization": f"Bearer {ADMIN}"}


class Sent(NamedTuple):
    site: str
    at: datetime
    reader: int | None  # None: the robot
    path: str
    referrer: str | None
    kind: str  # "hit", "duplicate" (the same id again) or "bot"


@dataclass
class Expected:
    days: dict[str, dict[date, Counter[str]]] = field(default_factory=dict)
    pages: dict[str, dict[date, Counter[str]]] = field(default_factory=dict)
    referrers: dict[str, dict[date, Counter[str]]] = field(default_factory=dict)


def _local_midnights(zone: str) -> list[datetime]:
    tz = ZoneInfo(zone)
    day, midnights = START.astimezone(tz).date(), []
    while (midnight := datetime.combine(day, time(), tz)) < END:
        midnights.append(midnight.astimezone(UTC))
        day += timedelta(days=1)
    return midnights


def _hit_times(rnd: random.Random) -> list[datetime]:
    """Uniform over the fortnight, and crowded within 40 minutes of each local midnight."""
    span = (END - START).total_seconds()
    times = [START + timedelta(seconds=rnd.uniform(0, span)) for _ in range(700)]
    for zone in ZONES.values():
        for midnight in _local_midnights(zone):
            near = (midnight + timedelta(seconds=rnd.uniform(-2400, 2400)) for _ in range(8))
            times += [t for t in near if START <= t < END]
    return sorted(times)


def _rollup_edges() -> set[datetime]:
    """Each local midnight, and its grace period's last second, end and the second after."""
    return {
        midnight + timedelta(seconds=offset)
        for zone in ZONES.values()
        for midnight in _local_midnights(zone)
        for offset in (0, 599, 600, 601)
    }


def _import(env: HistoryEnv, site: str, rows: dict[date, dict[str, int]]) -> None:
    body = "\n".join(f"{d},{c['visits']},{c['pageviews']},{c['visitors']}" for d, c in rows.items())
    answer = env.client.post(
        f"/api/v1/sites/{site}/import", data=body, content_type="text/csv", headers=AUTH
    )
    assert answer.status_code == 200, answer.get_json()


def _old_counter(rnd: random.Random) -> dict[date, dict[str, int]]:
    rows = {}
    for n in range(12):
        visits = rnd.randrange(50)
        rows[date(2026, 10, 8) + timedelta(days=n)] = {
            "visits": visits,
            "pageviews": visits + rnd.randrange(30),
            "visitors": rnd.randrange(visits + 1),
        }
    return rows


def _send(env: HistoryEnv, rnd: random.Random, site: str, at: datetime) -> list[Sent]:
    if rnd.random() < 0.05:
        Browser(env.client, ip=BOT[0], user_agent=BOT[1]).hit("/", site=site)
        return [Sent(site, at, None, "/", None, "bot")]
    reader = rnd.randrange(len(READERS))
    path, referrer = rnd.choice(PATHS), rnd.choice(REFERRERS)
    fields = {"referrer": referrer} if referrer else {}
    browser = Browser(env.client, ip=READERS[reader][0], user_agent=READERS[reader][1])
    sent = Sent(site, at, reader, path, referrer, "hit")
    if rnd.random() < 0.05:  # sent twice with its id: the second is a duplicate
        hit_id = f"id{rnd.randrange(10**9):09d}"
        browser.hit(path, site=site, id=hit_id, **fields)
        browser.hit(path, site=site, id=hit_id, **fields)
        return [sent, sent._replace(kind="duplicate")]
    browser.hit(path, site=site, **fields)
    return [sent]


def _expected(log: list[Sent], imported: dict[tuple[str, date], dict[str, int]]) -> Expected:
    """The README's definitions, by brute force: a visit is a reader's first pageview of the
    site-local day or one 30 minutes or more after their last; referrers count visits from
    hosts other than the site's own; an imported day is the old counter's numbers."""
    expected = Expected(*({s: defaultdict(Counter) for s in ZONES} for _ in range(3)))
    last_seen: dict[tuple[str, int], datetime] = {}
    for sent in log:
        tz = ZoneInfo(ZONES[sent.site])
        day = sent.at.astimezone(tz).date()
        counts = expected.days[sent.site][day]
        if sent.kind != "hit" or sent.reader is None:
            counts["bots" if sent.kind == "bot" else "duplicates"] += 1
            continue
        before = last_seen.get((sent.site, sent.reader))
        last_seen[(sent.site, sent.reader)] = sent.at
        counts["pageviews"] += 1
        expected.pages[sent.site][day][sent.path] += 1
        if (
            before
            and before.astimezone(tz).date() == day
            and sent.at - before < timedelta(minutes=30)
        ):
            continue
        counts["visits"] += 1
        host = sent.referrer.split("/")[2] if sent.referrer else None
        if host and host not in OWN_HOSTS:
            expected.referrers[sent.site][day][host] += 1
    for (site, day), counts in imported.items():
        expected.days[site][day] = Counter(counts)
    return expected


def _period(day: date, interval: str) -> date:
    if interval == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1) if interval == "month" else day


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def _check_range(
    env: HistoryEnv, expected: Expected, site: str, span: tuple[date, date], limit: int
) -> list[object]:
    wrong: list[object] = []
    days = _days(*span)
    query = {"from": span[0].isoformat(), "to": span[1].isoformat()}
    for interval in ("day", "week", "month"):
        body = env.client.get(
            f"/api/v1/sites/{site}/stats",
            query_string={**query, "interval": interval},
            headers=AUTH,
        ).get_json()
        want: dict[str, Counter[str]] = defaultdict(Counter)
        for day in days:
            want[_period(day, interval).isoformat()].update(
                {f: expected.days[site][day][f] for f in COUNTED}
            )
        got = {row["period"]: Counter({f: row[f] for f in COUNTED}) for row in body["series"]}
        if got != want:
            wrong.append((site, span, interval, got, dict(want)))
    for kind, key, number, source in (
        ("pages", "path", "pageviews", expected.pages),
        ("referrers", "host", "visits", expected.referrers),
    ):
        body = env.client.get(
            f"/api/v1/sites/{site}/{kind}", query_string={**query, "limit": limit}, headers=AUTH
        ).get_json()
        total: Counter[str] = sum((source[site][day] for day in days), Counter())
        want_top = sorted(total.items(), key=lambda item: (-item[1], item[0]))[:limit]
        got_top = [(row[key], row[number]) for row in body[kind]]
        if got_top != want_top:
            wrong.append((site, span, kind, got_top, want_top))
    csv_text = env.client.get(
        f"/api/v1/sites/{site}/export.csv", query_string=query, headers=AUTH
    ).get_data(as_text=True)
    rows = csv.DictReader(io.StringIO(csv_text))
    got_days = {row["date"]: [int(row[f]) for f in COUNTED] for row in rows}
    want_days = {day.isoformat(): [expected.days[site][day][f] for f in COUNTED] for day in days}
    if got_days != want_days:
        wrong.append((site, span, "export.csv", got_days, want_days))
    return wrong


def _check(
    env: HistoryEnv,
    rnd: random.Random,
    log: list[Sent],
    imported: dict[tuple[str, date], dict[str, int]],
    now: datetime,
    ranges: int,
) -> None:
    """`ranges` random ranges per site, from before the history to today, and today; or,
    with no random ranges (on a grace period's edge), yesterday and today: the days an
    edge changes, one of them closed or not."""
    expected = _expected(log, imported)
    days = _days(date(2026, 10, 18), date(2026, 11, 11))
    wrong: list[object] = []
    for site, zone in ZONES.items():
        today = now.astimezone(ZoneInfo(zone)).date()
        spans = [(a, b) for a in days for b in days if a <= b]
        checked = [*rnd.sample(spans, ranges), (date(2026, 10, 20), today), (today, today)]
        for span in checked if ranges else [(today - timedelta(days=1), today)]:
            wrong += _check_range(env, expected, site, span, rnd.choice([1, 2, 3, 10]))
    assert not wrong, (now, len(wrong), wrong[:3])


def test_every_statistic_over_random_ranges_is_what_the_definitions_give_for_the_hits_sent(
    history_env: HistoryEnv, clock: FrozenClock
) -> None:
    env, rnd = history_env, random.Random(1)
    for site, zone in ZONES.items():
        if site != "demo":
            env.add_site(site, zone, clock())
    rollup = make_rollup(env)
    imported: dict[tuple[str, date], dict[str, int]] = {}
    for site in ZONES:
        rows = _old_counter(rnd)
        _import(env, site, rows)
        imported |= {(site, day): counts for day, counts in rows.items()}
    edges, log, rolled_up, gap_imported = _rollup_edges(), [], START, False

    def roll_up(at: datetime, checkpoint_chance: float) -> None:
        for site in ZONES:
            record = env.services.repo.require(site)
            rollup.finalise(record, at)
            if rnd.random() < checkpoint_chance:
                rollup.checkpoint(record, at)

    for at in _hit_times(rnd):
        due = sorted(edge for edge in edges if rolled_up < edge <= at)
        if due and rnd.random() < 0.5:  # on a grace period's edge
            roll_up(due[-1], 0.5)
            _check(env, rnd, log, imported, due[-1], ranges=0)
            rolled_up = due[-1]
        if at - rolled_up > timedelta(hours=rnd.choice([3, 7, 11])):
            roll_up(at, 1.0)
            rolled_up = at
        clock.set(at)
        if not gap_imported and at > GAP_IMPORTED_AT:
            rows = {GAP_DAY: {"visits": 7, "pageviews": 9, "visitors": 5}}
            _import(env, GAP_SITE, rows)
            imported[(GAP_SITE, GAP_DAY)] = rows[GAP_DAY]
            gap_imported = True
        site = rnd.choice(list(ZONES))
        if (site, at.astimezone(ZoneInfo(ZONES[site])).date()) != (GAP_SITE, GAP_DAY):
            log += _send(env, rnd, site, at)
    roll_up(END, 0.0)
    clock.set(END)
    _check(env, rnd, log, imported, END, ranges=15)
    # The box's total: every day counted here, none of the imported ones.
    counted = _expected(log, {}).days
    for site in ZONES:
        total = env.client.get(f"/api/v1/sites/{site}/counter").get_json()["total"]
        visits = sum(c["visits"] for c in counted[site].values())
        pageviews = sum(c["pageviews"] for c in counted[site].values())
        assert (total["visits"], total["pageviews"]) == (visits, pageviews), site
