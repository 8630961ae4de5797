"""The SQL database: engine, table definitions, and Alembic migrations.

SQLite by default, PostgreSQL in production. The schema is changed only by the migrations
in `migrations/versions`; the tables below mirror them for queries (a test checks that
the migrated database and these definitions agree).
"""

from __future__ import annotations

import fcntl
import math
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.util import CommandError
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.pool import ConnectionPoolEntry


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """A moment, stored as UTC and read back with its zone. SQLite keeps no zone: its
    values came back naive, and `.timestamp()` took them for the host's local time (the
    job metrics were 7 hours old on a host in Vietnam)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError(f"{value!r} names no time zone")
        return None if value is None else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData()

sites = sa.Table(
    "sites",
    metadata,
    sa.Column("id", sa.String(63), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("timezone", sa.String(64), nullable=False),
    sa.Column("origins", sa.JSON, nullable=False),
    sa.Column("online_window", sa.Integer, nullable=False),
    # New visits a minute from one client address before the rest are dropped.
    sa.Column("address_visit_limit", sa.Integer, nullable=False, server_default="120"),
    sa.Column("baseline_visits", sa.BigInteger, nullable=False),
    sa.Column("baseline_pageviews", sa.BigInteger, nullable=False),
    # sha256 of the admin token; the token itself is shown once and never stored.
    sa.Column("token_hash", sa.String(64), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
)


# How long a connection to PostgreSQL may take to open. psycopg's own default is none: a
# server that accepts the connection and never answers (a hung host, a half-open network
# path) held each request that needed it for about 130 s, /readyz probes included, until
# they had taken every worker thread.
CONNECT_TIMEOUT_SECONDS = 5
# How long a request waits for a pooled PostgreSQL connection when all are in use (more
# threads than the pool's 15, or queries stuck behind a lock) before it is answered 503, as
# for a database that cannot be reached. SQLAlchemy's own 30 s held the worker's thread
# that long and then answered 500.
POOL_TIMEOUT_SECONDS = 5
# What a request can meet when the history database is down, hung or out of connections:
# a 503 that the client retries, never a 500 (api/errors.py).
UNAVAILABLE_ERRORS = (sa.exc.OperationalError, sa.exc.TimeoutError)


# How long SQLite waits for a lock (its busy timeout), unless bound_lock_waits says otherwise.
SQLITE_BUSY_SECONDS = 15


def create_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        # Several threads of the dev server share the file; wait for a lock rather than fail.
        return sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_SECONDS})
    return sa.create_engine(
        url,
        pool_pre_ping=True,
        pool_timeout=POOL_TIMEOUT_SECONDS,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS},
    )


def bound_lock_waits(engine: Engine, seconds: float) -> None:
    """Make every connection `engine` opens from now on give up waiting for a lock that
    another session holds after `seconds` (ANALYTICS_DATABASE_LOCK_TIMEOUT), with an error
    that `lock_wait_expired` recognises. PostgreSQL waited without a limit: a request
    behind a long `site delete`, an import, a migration or a `LOCK TABLE` in psql hung until
    the lock went. Set as the connection opens (libpq's `options`, sqlite3's `timeout`):
    no statement of its own, so a request that runs no SQL (a hit) runs none for it."""

    @sa.event.listens_for(engine, "do_connect")
    def _bounded(
        dialect: Dialect, record: ConnectionPoolEntry, cargs: object, cparams: dict[str, object]
    ) -> None:
        if dialect.name == "sqlite":
            cparams["timeout"] = seconds
            return
        # Whole milliseconds, at least one: 0 would be no limit.
        bound = f"-c lock_timeout={math.ceil(seconds * 1000)}"
        cparams["options"] = f"{cparams.get('options') or ''} {bound}".strip()


# PostgreSQL's SQLSTATE for a lock not granted in time (lock_timeout); SQLite's primary codes
# for a lock another connection holds past the busy timeout.
LOCK_NOT_AVAILABLE = "55P03"
SQLITE_LOCK_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def lock_wait_expired(exc: BaseException) -> bool:
    """`exc` ended a wait for a lock another session held (bound_lock_waits), not a
    database that is down."""
    orig = getattr(exc, "orig", None)
    if getattr(orig, "sqlstate", None) == LOCK_NOT_AVAILABLE:
        return True
    code = getattr(orig, "sqlite_errorcode", None)  # extended: the primary is its low byte
    return code is not None and code & 0xFF in SQLITE_LOCK_CODES


class MigrationError(RuntimeError):
    """The schema cannot be brought to this release's: most often a database that a newer
    release has migrated (the previous image started again after an upgrade)."""


# The key of the PostgreSQL advisory lock that a migration holds (any fixed number).
MIGRATION_LOCK_KEY = 7_405_112_026


@contextmanager
def _one_migration_at_a_time(engine: Engine) -> Iterator[None]:
    """Two processes migrating an empty database at once (two web hosts starting, the
    compose file's migrate beside a gunicorn master) both created the same tables, and
    one failed. PostgreSQL: an advisory lock, taken inside the migration's transaction.
    A SQLite file: a lock file beside it, as SQLite takes no lock for a CREATE TABLE until
    it writes."""
    database = (engine.url.database or "").removeprefix("file:")  # a URI filename too
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    try:
        lock = open(f"{database}.migrate-lock", "wb")  # noqa: SIM115 (held until the yield ends)
    except OSError:  # a read-only folder: nothing can be migrated there, nor raced
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply every migration not yet applied (what `analytics-service db upgrade` runs), or
    those up to `revision`."""
    cfg = Config()
    cfg.set_main_option("script_location", "analytics_service:migrations")
    with _one_migration_at_a_time(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        cfg.attributes["connection"] = conn
        try:
            command.upgrade(cfg, revision)
        except CommandError as exc:
            raise MigrationError(
                f"the database's schema is not one this release can migrate ({exc}); if a "
                "newer release of analytics-service migrated it, run that release, or "
                "restore the database from a backup"
            ) from exc


# History: one row per (site, site-local day). Written by rollup.py with absolute values, so
# a rerun (or two processes at once) leaves the same rows. The primary keys serve the admin
# API: every query reads one site's rows over a date range, `WHERE site_id = ? AND day
# BETWEEN ? AND ?`, which is a range scan of (site_id, day, ...).
daily_totals = sa.Table(
    "daily_totals",
    metadata,
    sa.Column("site_id", sa.String(63), primary_key=True),
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("visits", sa.BigInteger, nullable=False),
    sa.Column("pageviews", sa.BigInteger, nullable=False),
    sa.Column("visitors", sa.BigInteger, nullable=False),
    sa.Column("bots", sa.BigInteger, nullable=False),
    sa.Column("rate_limited", sa.BigInteger, nullable=False),
    sa.Column("duplicates", sa.BigInteger, nullable=False, server_default="0"),
    # The day's HyperLogLog as Redis stores it (GET), so a wiped Redis can resume the day.
    sa.Column("hll", sa.LargeBinary, nullable=True),
    # The writers' batches ("writer:seq") the row's counts hold, read with them from Redis
    # (keys.py `batches`); NULL for a row written before they were kept, or imported.
    sa.Column("batches", sa.JSON, nullable=True),
    # False: a checkpoint of a day still being counted; True: the day is closed.
    sa.Column("final", sa.Boolean, nullable=False),
    # "rollup": counted here; "import": an old counter's figures (already in the baseline,
    # so never added to the total when Redis is rebuilt).
    sa.Column("source", sa.String(8), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
)

# Top pages over a range: `WHERE site_id = ? AND day BETWEEN ? AND ? GROUP BY path` scans
# the primary key (site_id, day, path).
daily_paths = sa.Table(
    "daily_paths",
    metadata,
    sa.Column("site_id", sa.String(63), primary_key=True),
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("path", sa.String(512), primary_key=True),
    sa.Column("pageviews", sa.BigInteger, nullable=False),
)

# Top referrers over a range: the same shape, primary key (site_id, day, host).
daily_referrers = sa.Table(
    "daily_referrers",
    metadata,
    sa.Column("site_id", sa.String(63), primary_key=True),
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("host", sa.String(512), primary_key=True),
    sa.Column("visits", sa.BigInteger, nullable=False),
)

# The catch-up watermark: every day up to `finalised_through` has been closed for the site
# (days without traffic have no row in daily_totals, so the row count cannot tell).
rollup_watermarks = sa.Table(
    "rollup_watermarks",
    metadata,
    sa.Column("site_id", sa.String(63), primary_key=True),
    sa.Column("finalised_through", sa.Date, nullable=False),
)

# The last run of each scheduled job (jobs.py), written by the scheduler process so that
# the web's /metrics can tell how the jobs are doing (metrics.py): one row per job.
job_runs = sa.Table(
    "job_runs",
    metadata,
    sa.Column("job", sa.String(32), primary_key=True),
    sa.Column("last_run_at", UtcDateTime(), nullable=False),
    sa.Column("last_duration_seconds", sa.Float, nullable=False),
    # Sites the last run could not roll up (0: it succeeded).
    sa.Column("last_failed_sites", sa.Integer, nullable=False),
    sa.Column("last_success_at", UtcDateTime(), nullable=True),
)

# A site whose deletion (site_removal.py) has begun and not finished: its id cannot be
# taken again until then, or the new site would lose its first hits to the last sweep, or
# inherit the keys a failed sweep left. Keyed `id`, not `site_id`: it is not a row of the
# site that the deletion removes with the others.
deleted_sites = sa.Table(
    "deleted_sites",
    metadata,
    sa.Column("id", sa.String(63), primary_key=True),
    sa.Column("deleted_at", UtcDateTime(), nullable=False),
)
