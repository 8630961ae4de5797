"""The durable history in SQL: daily totals, paths and referrers per (site, site-local day).

Every write is an absolute-value upsert, so running a rollup twice, or in two processes at
once, leaves the same rows. A checkpoint (final = false) never overwrites a closed day.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from . import db

ROLLUP = "rollup"
IMPORT = "import"
# The fields of a day that each counted, refused or robot hit adds to (visits with its
# pageview): in Redis they only ever grow.
# Keys named in one query of History.top.
TOP_KEYS_PER_QUERY = 500
TALLIES = ("visits", "pageviews", "bots", "rate_limited", "duplicates")


class Ranking(StrEnum):
    """What a day's top list ranks: pages by pageviews, or referrer hosts by visits."""

    PAGES = "pages"
    REFERRERS = "referrers"


@dataclass(frozen=True, slots=True)
class DayCounts:
    visits: int = 0
    pageviews: int = 0
    visitors: int = 0
    bots: int = 0
    rate_limited: int = 0
    duplicates: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "visits": self.visits,
            "pageviews": self.pageviews,
            "visitors": self.visitors,
            "bots": self.bots,
            "rate_limited": self.rate_limited,
            "duplicates": self.duplicates,
        }


@dataclass(frozen=True, slots=True)
class DaySnapshot:
    """One site-local day as it stands: what a rollup writes and a restore puts back."""

    site_id: str
    day: date
    counts: DayCounts
    hll: bytes | None = None
    paths: Mapping[str, int] = field(default_factory=dict)
    refs: Mapping[str, int] = field(default_factory=dict)
    # The writers' batches that counted hits of the day ("writer:seq", keys.py `batches`):
    # stored with the counts so that, after a wipe, a batch sent again is not counted twice.
    batches: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class RestorePlan:
    """What a wiped Redis needs back for one site: the sum of every counted day, and each
    recent counted day as the history holds it (its closed row, or its last checkpoint)."""

    total_visits: int
    total_pageviews: int
    days: Sequence[DaySnapshot]


def dialect_insert(conn: Connection, table: sa.TableClause) -> sqlite.Insert | postgresql.Insert:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def _counts(row: sa.Row) -> DayCounts:
    return DayCounts(
        row.visits, row.pageviews, row.visitors, row.bots, row.rate_limited, row.duplicates
    )


class History:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def write_day(self, snap: DaySnapshot, *, final: bool, now: datetime) -> bool:
        """Upsert the day; False when the day was already closed and this is a checkpoint,
        or when it is an imported day (an old counter's figures, which an admin put there
        and this service's hits never replace). A close read before the one the closed row
        holds leaves that row (True: the day is closed, with those hits and more)."""
        t = db.daily_totals
        values = {
            "site_id": snap.site_id,
            "day": snap.day,
            **snap.counts.as_dict(),
            "hll": snap.hll,
            "batches": list(snap.batches),
            "final": final,
            "source": ROLLUP,
            "updated_at": now,
        }
        with self.engine.begin() as conn:
            stmt = dialect_insert(conn, t).values(**values)
            new = stmt.excluded
            # A day's tallies in Redis only grow: a close whose every tally is at most the
            # closed row's and one less, was read before the read that row was written from
            # (two finalise runs at once, one closing a late day again). It must not
            # take the later hits back out.
            older = sa.and_(
                t.c.final.is_(True),
                *(new[c] <= t.c[c] for c in TALLIES),
                sa.or_(*(new[c] < t.c[c] for c in TALLIES)),
            )
            stmt = stmt.on_conflict_do_update(
                index_elements=[t.c.site_id, t.c.day],
                set_={k: new[k] for k in values if k not in ("site_id", "day")},
                # A late checkpoint must not reopen or shrink a closed day.
                where=sa.and_(
                    t.c.source == ROLLUP,
                    sa.or_(t.c.final.is_(False), new.final.is_(True)),
                    sa.not_(older),
                ),
            ).returning(t.c.day)
            # On PostgreSQL the upsert also locks the row, so a concurrent writer of the
            # same day waits here and the replacement of paths below never interleaves.
            # (RETURNING, not rowcount: psycopg reports 1 for a skipped upsert.)
            if conn.execute(stmt).first() is None:
                # A close from an older read: the day is closed already, with more.
                return final and self._closed_here(conn, snap)
            self._replace(conn, db.daily_paths, "path", "pageviews", snap, snap.paths)
            self._replace(conn, db.daily_referrers, "host", "visits", snap, snap.refs)
        return True

    @staticmethod
    def _closed_here(conn: Connection, snap: DaySnapshot) -> bool:
        """Whether the day has a closed row this service counted (not an imported one)."""
        t = db.daily_totals
        source = conn.execute(
            sa.select(t.c.source).where(
                t.c.site_id == snap.site_id, t.c.day == snap.day, t.c.final.is_(True)
            )
        ).scalar()
        return source == ROLLUP

    @staticmethod
    def _replace(
        conn: Connection,
        table: sa.Table,
        key: str,
        amount: str,
        snap: DaySnapshot,
        values: Mapping[str, int],
    ) -> None:
        conn.execute(table.delete().where(table.c.site_id == snap.site_id, table.c.day == snap.day))
        if values:
            conn.execute(
                table.insert(),
                [
                    {"site_id": snap.site_id, "day": snap.day, key: k, amount: v}
                    for k, v in values.items()
                ],
            )

    def close_checkpoint(self, site_id: str, day: date, now: datetime) -> bool:
        """Close a day from its last checkpoint (its Redis keys are gone). True if closed."""
        t = db.daily_totals
        with self.engine.begin() as conn:
            result = conn.execute(
                t.update()
                .where(t.c.site_id == site_id, t.c.day == day, t.c.final.is_(False))
                .values(final=True, updated_at=now)
            )
        return result.rowcount > 0

    def closed_days(self, site_id: str, start: date, end: date) -> set[date]:
        t = db.daily_totals
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.c.day).where(
                    t.c.site_id == site_id, t.c.day.between(start, end), t.c.final.is_(True)
                )
            )
            return {r.day for r in rows}

    def first_days(self, site_ids: Iterable[str]) -> dict[str, date]:
        """Each of the sites' first stored day (counted or imported), those that have one."""
        t = db.daily_totals
        wanted = list(site_ids)
        query = sa.select(t.c.site_id, sa.func.min(t.c.day)).group_by(t.c.site_id)
        if len(wanted) == 1:  # the one site's rows, not every site's
            query = query.where(t.c.site_id == wanted[0])
        with self.engine.connect() as conn:
            return {r[0]: r[1] for r in conn.execute(query) if r[0] in wanted}

    def last_closed_day(self, site_id: str) -> date | None:
        """The latest day that will not be rolled up again: closed, or passed by the
        watermark (finalise looks at no day up to it again)."""
        t = db.daily_totals
        with self.engine.connect() as conn:
            closed = conn.execute(
                sa.select(sa.func.max(t.c.day)).where(t.c.site_id == site_id, t.c.final.is_(True))
            ).scalar()
        return max(filter(None, (closed, self.watermark(site_id))), default=None)

    def watermark(self, site_id: str) -> date | None:
        return self.watermarks([site_id]).get(site_id)

    def record_job_run(
        self, job: str, now: datetime, seconds: float, failed_sites: int, *, succeeded: bool
    ) -> None:
        """The last run of `job`: when, how long, how many sites it could not roll up; a
        success also becomes its last success, a failure leaves that as it was."""
        t = db.job_runs
        values: dict[str, object] = {
            "job": job,
            "last_run_at": now,
            "last_duration_seconds": seconds,
            "last_failed_sites": failed_sites,
            "last_success_at": now if succeeded else None,
        }
        updated = [k for k in values if k != "job" and (succeeded or k != "last_success_at")]
        with self.engine.begin() as conn:
            stmt = dialect_insert(conn, t).values(**values)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[t.c.job], set_={k: stmt.excluded[k] for k in updated}
                )
            )

    def job_runs(self) -> list[sa.Row]:
        """The last run of every job that has run (for /metrics)."""
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(db.job_runs)).all())

    def watermarks(self, site_ids: Sequence[str] | None = None) -> dict[str, date]:
        """The watermark of each of `site_ids` that has one (every site's: None), in one
        query (for /metrics, and finalise's sites at once)."""
        t = db.rollup_watermarks
        query = sa.select(t.c.site_id, t.c.finalised_through)
        if site_ids is not None:
            query = query.where(t.c.site_id.in_(site_ids))
        with self.engine.connect() as conn:
            return dict(conn.execute(query).all())  # type: ignore[arg-type]

    def stored_days(self, site_ids: Sequence[str], start: date) -> dict[str, dict[date, bool]]:
        """Of each of `site_ids`, every day from `start` on that has a row, and whether it
        is closed, in one query: what finalise needs of many sites before closing a day."""
        t = db.daily_totals
        found: dict[str, dict[date, bool]] = {site_id: {} for site_id in site_ids}
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.c.site_id, t.c.day, t.c.final).where(
                    t.c.site_id.in_(site_ids), t.c.day >= start
                )
            )
            for row in rows:
                found[row.site_id][row.day] = row.final
        return found

    def advance_watermarks(self, through: Mapping[str, date]) -> None:
        """Move each site's watermark forward to its day; never backwards (another run may
        be ahead). One statement for all: a transaction a site was most of a first
        finalise's writes (thousands of new sites, docs/scaling.md)."""
        if not through:
            return
        t = db.rollup_watermarks
        # In id order: two runs at once then lock the rows alike, never in a deadlock.
        rows = [{"site_id": s, "finalised_through": d} for s, d in sorted(through.items())]
        with self.engine.begin() as conn:
            stmt = dialect_insert(conn, t)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[t.c.site_id],
                    set_={"finalised_through": stmt.excluded.finalised_through},
                    where=t.c.finalised_through < stmt.excluded.finalised_through,
                ),
                rows,
            )

    def counted(self, site_id: str, day: date) -> DayCounts | None:
        """The day as the rollup last wrote it (its closed row or its last checkpoint), or
        None when this service has not written it."""
        t = db.daily_totals
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t).where(t.c.site_id == site_id, t.c.day == day, t.c.source == ROLLUP)
            ).first()
        return None if row is None else _counts(row)

    def counted_total(self, site_id: str) -> tuple[int, int]:
        """(visits, pageviews) of every day the rollup wrote: what Redis's total holds at
        least, once the history is in it."""
        t = db.daily_totals
        with self.engine.connect() as conn:
            visits, pageviews = conn.execute(
                sa.select(
                    sa.func.coalesce(sa.func.sum(t.c.visits), 0),
                    sa.func.coalesce(sa.func.sum(t.c.pageviews), 0),
                ).where(t.c.site_id == site_id, t.c.source == ROLLUP)
            ).one()
        return int(visits), int(pageviews)

    def restore_plan(self, site_id: str, since: date) -> RestorePlan:
        """The site's restore, with every counted day from `since` on."""
        return self.restore_plans({site_id: since})[site_id]

    def restore_plans(self, since: Mapping[str, date]) -> dict[str, RestorePlan]:
        """`restore_plan` of each site of `since` (its first day), in four queries for
        all of them: a Redis that lost its data needs every site's back, and a query or
        three a site made that take minutes at thousands of sites (docs/scaling.md)."""
        t = db.daily_totals
        ids = list(since)
        start = min(since.values())
        with self.engine.connect() as conn:
            totals = {
                row.site_id: (int(row.visits), int(row.pageviews))
                for row in conn.execute(
                    sa.select(
                        t.c.site_id,
                        sa.func.sum(t.c.visits).label("visits"),
                        sa.func.sum(t.c.pageviews).label("pageviews"),
                    )
                    .where(t.c.site_id.in_(ids), t.c.source == ROLLUP)
                    .group_by(t.c.site_id)
                )
            }
            recent = [
                r
                for r in conn.execute(
                    sa.select(t).where(t.c.site_id.in_(ids), t.c.source == ROLLUP, t.c.day >= start)
                )
                if r.day >= since[r.site_id]
            ]
            # None to read for sites without a recent day (new or idle ones, most of them).
            held = sorted({r.site_id for r in recent})
            paths = self._amounts(conn, db.daily_paths, "path", "pageviews", held, start)
            refs = self._amounts(conn, db.daily_referrers, "host", "visits", held, start)
        days: dict[str, list[DaySnapshot]] = {site_id: [] for site_id in ids}
        for r in recent:
            days[r.site_id].append(
                DaySnapshot(
                    r.site_id,
                    r.day,
                    _counts(r),
                    r.hll,
                    paths.get((r.site_id, r.day), {}),
                    refs.get((r.site_id, r.day), {}),
                    tuple(r.batches or ()),
                )
            )
        return {
            site_id: RestorePlan(*totals.get(site_id, (0, 0)), days[site_id]) for site_id in ids
        }

    @staticmethod
    def _amounts(
        conn: Connection, table: sa.Table, key: str, amount: str, ids: list[str], start: date
    ) -> dict[tuple[str, date], dict[str, int]]:
        """Each (site, day)'s amounts per key, of `ids` from `start` on."""
        found: dict[tuple[str, date], dict[str, int]] = {}
        if not ids:
            return found
        rows = conn.execute(
            sa.select(table.c.site_id, table.c.day, table.c[key], table.c[amount]).where(
                table.c.site_id.in_(ids), table.c.day >= start
            )
        )
        for site_id, day, name, n in rows:
            found.setdefault((site_id, day), {})[name] = n
        return found

    def days(self, site_id: str, start: date, end: date) -> dict[date, tuple[DayCounts, bool]]:
        """Every stored day in [start, end]: its counts and whether it is closed."""
        t = db.daily_totals
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t).where(t.c.site_id == site_id, t.c.day.between(start, end))
            )
            return {r.day: (_counts(r), r.final) for r in rows}

    def top(
        self,
        ranking: Ranking,
        site_id: str,
        span: tuple[date, date],
        limit: int,
        *,
        exclude: Iterable[date] = (),
        also: Iterable[str] = (),
    ) -> dict[str, int]:
        """Sums per path or referrer host over the stored days of `span` (but `exclude`):
        the `limit` largest (ties by name, in code point order as Python sorts), and those
        of the keys in `also`. Ranked in SQL: a year of a busy site's days is millions of
        rows, which loaded whole took seconds and hundreds of MB of a worker's memory."""
        table, key, amount = (
            (db.daily_paths, "path", "pageviews")
            if ranking is Ranking.PAGES
            else (db.daily_referrers, "host", "visits")
        )
        total = sa.func.sum(table.c[amount])
        query = (
            sa.select(table.c[key], total)
            .where(table.c.site_id == site_id, table.c.day.between(*span))
            .group_by(table.c[key])
        )
        skipped = list(exclude)
        if skipped:
            query = query.where(table.c.day.not_in(skipped))
        # PostgreSQL's default collation orders by language rules; "C" orders by bytes,
        # which for UTF-8 is code point order. SQLite compares bytes already.
        name = (
            table.c[key].collate("C") if self.engine.dialect.name == "postgresql" else table.c[key]
        )
        leaders = query.order_by(total.desc(), name).limit(limit)
        wanted = sorted(set(also))
        with self.engine.connect() as conn:
            sums = {r[0]: int(r[1]) for r in conn.execute(leaders)}
            # In slices: an old SQLite takes at most 999 parameters a statement.
            for i in range(0, len(wanted), TOP_KEYS_PER_QUERY):
                chosen = query.where(table.c[key].in_(wanted[i : i + TOP_KEYS_PER_QUERY]))
                sums.update({r[0]: int(r[1]) for r in conn.execute(chosen)})
        return sums

    def sources(self, site_id: str, days: Iterable[date]) -> dict[date, str]:
        """Where the rows of those of `days` that have one came from: ROLLUP (this
        service counted the day) or IMPORT."""
        t = db.daily_totals
        wanted = set(days)
        if not wanted:
            return {}
        # Between the first and the last, not IN: an import names up to 50,000 days, and a
        # SQLite built with its default limit takes 32,766 parameters a statement.
        span = t.c.day.between(min(wanted), max(wanted))
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.c.day, t.c.source).where(t.c.site_id == site_id, span))
            return {r.day: r.source for r in rows if r.day in wanted}

    def import_days(self, site_id: str, days: Mapping[date, DayCounts], now: datetime) -> None:
        """Upsert an old counter's days as closed rows, all in one transaction."""
        t = db.daily_totals
        rows = [
            {
                "site_id": site_id,
                "day": d,
                **c.as_dict(),
                "hll": None,
                "final": True,
                "source": IMPORT,
                "updated_at": now,
            }
            # In date order, whatever the file's: two imports of overlapping days locked
            # their rows in opposite orders (a counter's file newest first, an export oldest
            # first) and PostgreSQL broke the deadlock by failing all but one (503s).
            for d, c in sorted(days.items())
        ]
        with self.engine.begin() as conn:
            stmt = dialect_insert(conn, t)
            # One statement for all rows (SQLAlchemy sends them as multi-row VALUES): a row
            # at a time, 20,000 days took 12 s on PostgreSQL, past a proxy's timeout.
            upsert = stmt.on_conflict_do_update(
                index_elements=[t.c.site_id, t.c.day],
                set_={c.name: stmt.excluded[c.name] for c in t.columns if not c.primary_key},
                # Never replace a day this service counted.
                where=t.c.source == IMPORT,
            )
            conn.execute(upsert, rows)
