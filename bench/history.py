"""The history phase of `make bench`: what the SQL history keeps per site-day, and how long
the scheduler's two jobs take per site, for many sites of a typical portal's traffic.

Each site gets a day like the one in the seed page's box (about 150 visits) yesterday and
today, sent through the service's own ingest code and write-behind buffer. Then, as on any
night: `finalise` closes yesterday for every site, and `checkpoint` writes today's open
row. The watermarks are set the day before, so each site's finalise closes exactly one
day, as it does every night (a new site's first run looks back over every day Redis can
still hold).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as dt_time
from typing import Any

import sqlalchemy as sa

from analytics_service import db
from analytics_service.clock import system_clock
from analytics_service.config import Settings
from analytics_service.ingest import HitRequest
from analytics_service.services import Services
from analytics_service.sites import Site, build_site
from analytics_service.sitetime import local_date

HISTORY_TABLES = ("daily_totals", "daily_paths", "daily_referrers")
AGENT = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36"


@dataclass(frozen=True)
class PortalDay:
    """A day of one site: each reader makes `pages` pageviews in one visit."""

    readers: int = 150
    pages: int = 3
    paths: int = 40
    referrers: int = 6  # every fourth reader comes from one of them


TYPICAL = PortalDay()


@contextmanager
def scratch_database(url: str) -> Iterator[str]:
    """`url` itself for SQLite (a fresh file); for PostgreSQL, a database of its own on that
    server, dropped afterwards, so that sizes count nothing but this phase's rows."""
    if not url.startswith("postgresql"):
        yield url
        return
    name = f"analytics_bench_{secrets.token_hex(4)}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    try:
        yield str(sa.engine.make_url(url).set(database=name).render_as_string(hide_password=False))
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()


def history_bytes(engine: sa.Engine) -> int:
    """Bytes the history tables take on disk, indexes included."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM"))  # SQLite: free pages back; PostgreSQL: up-to-date stats
        if engine.dialect.name == "postgresql":
            return sum(
                conn.execute(sa.text(f"SELECT pg_total_relation_size('{t}')")).scalar_one()
                for t in HISTORY_TABLES
            )
        pages = conn.execute(sa.text("PRAGMA page_count")).scalar_one()
        size = conn.execute(sa.text("PRAGMA page_size")).scalar_one()
        return int(pages * size)


def rows(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()
            for t in HISTORY_TABLES
        }


def send_day(svc: Services, site: Site, day: date, shape: PortalDay, offset: int) -> None:
    """A day of `site`'s readers, 08:00 to 18:00 site time, through the real hit path."""
    opening = datetime(day.year, day.month, day.day, 8, tzinfo=site.tz)
    for reader in range(shape.readers):
        v = offset + reader
        ip = f"100.{(v >> 16) & 255}.{(v >> 8) & 255}.{v & 255}"
        arrives = opening + timedelta(seconds=36_000 * reader / shape.readers)
        referrer = f"https://ref{reader % shape.referrers}.example/" if reader % 4 == 0 else None
        for page in range(shape.pages):
            hit = HitRequest(
                site=site.id,
                url=f"https://{site.id}.example/p/{(reader + page) % shape.paths}",
                referrer=referrer if page == 0 else None,
                hit_id=None,
                ip=ip,
                user_agent=AGENT,
                origin=None,
            )
            svc.ingestor.ingest(hit, arrives + timedelta(seconds=60 * page))


def evening(now: datetime) -> datetime:
    """20:00 site time on the sites' current day: the moment the jobs are timed at. Today's
    readers (08:00 to past 18:00) have all come by then, and yesterday is long past the
    rollup's grace, at whatever hour the bench runs (at 00:05 the wall clock would leave
    yesterday open and the night's finalise with nothing to close)."""
    tz = build_site("h00000", name="Portal").tz
    return datetime.combine(local_date(now, tz), dt_time(20), tz).astimezone(UTC)


def history(redis_url: str, database_url: str, sites: int, now: datetime) -> dict[str, Any]:
    """Sites with a typical day yesterday and today (the local day of `now`); one night's
    jobs at `now`, timed and sized."""
    with scratch_database(database_url) as url:
        settings = Settings(redis_url=redis_url, database_url=url, log_level="WARNING")
        with Services.open(settings, system_clock) as svc:
            db.upgrade(svc.engine)
            made = [build_site(f"h{n:05d}", name=f"Portal {n}") for n in range(sites)]
            for site in made:
                svc.repo.create(site, now - timedelta(days=3))
            svc.rollup.run_finalise(made, now - timedelta(days=1), lambda: None)  # the night before
            today = local_date(now, made[0].tz)
            for n, site in enumerate(made):
                for day in (today - timedelta(days=1), today):
                    send_day(svc, site, day, TYPICAL, offset=n * TYPICAL.readers)
                svc.store.flush()
            empty = history_bytes(svc.engine)

            # Under the job's lock, renewed after each site, as the scheduler runs it.
            started = time.perf_counter()
            with svc.store.lock("finalise") as held:
                closed = svc.rollup.run_finalise(made, now, held.renew)
            finalise_seconds = time.perf_counter() - started
            after_close = history_bytes(svc.engine)
            started = time.perf_counter()
            with svc.store.lock("checkpoint") as held:
                checkpointed = svc.rollup.run_checkpoint(made, now, held.renew)
            checkpoint_seconds = time.perf_counter() - started
            after_checkpoint = history_bytes(svc.engine)
            counted = rows(svc.engine)
    site_days = closed + checkpointed
    return {
        "database": sa.engine.make_url(database_url).get_backend_name(),
        "sites": sites,
        "day": TYPICAL.__dict__,
        "closed_days": closed,
        "checkpointed_days": checkpointed,
        "finalise_seconds_per_site": finalise_seconds / sites,
        "checkpoint_seconds_per_site": checkpoint_seconds / sites,
        "bytes_per_closed_site_day": (after_close - empty) / max(closed, 1),
        "bytes_per_site_day": (after_checkpoint - empty) / max(site_days, 1),
        "rows_per_site_day": {t: n / max(site_days, 1) for t, n in counted.items()},
    }
