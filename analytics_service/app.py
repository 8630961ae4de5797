"""The Flask application factory: the services (services.py) and the blueprints (api/)."""

from __future__ import annotations

import functools
import logging
from datetime import datetime

import sqlalchemy as sa
from flask import Flask, Response
from werkzeug.middleware.proxy_fix import ProxyFix

from . import db, logs, metrics, spool
from .api import access, admin, body, counter, errors, health, hits, openapi, pages, widget
from .api import metrics as metrics_api
from .api.converters import SiteIdConverter
from .clock import Clock, system_clock
from .config import Settings
from .live import LATE_MARGIN_SECONDS
from .redis_store import REDIS_ERRORS
from .services import Services

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, clock: Clock = system_clock) -> Flask:
    settings = settings or Settings.from_env()
    logs.configure(settings.log_level, settings.log_format)
    app = Flask(__name__)
    app.json.sort_keys = False
    svc = app.extensions["analytics"] = Services.build(settings, clock)
    # Requests only: the scheduler's and the commands' engines wait for locks as before
    # (README, ANALYTICS_DATABASE_LOCK_TIMEOUT).
    db.bound_lock_waits(svc.engine, settings.database_lock_timeout)
    svc.store.on_written(metrics.hit_letters)
    # Innermost: the hot loop skips Flask, not the proxy's address, metrics or request ids.
    app.wsgi_app = hits.HitRoute(app.wsgi_app, svc)  # type: ignore[method-assign]
    if settings.trusted_proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies)  # type: ignore[method-assign]
    app.wsgi_app = metrics.RequestMetrics(app.wsgi_app)  # type: ignore[method-assign]
    app.teardown_request(metrics.RequestMetrics.note_route)
    app.wsgi_app = logs.RequestIdMiddleware(app.wsgi_app)  # type: ignore[method-assign]

    app.url_map.converters["site"] = SiteIdConverter
    # Werkzeug would answer `//` in a path with a redirect built from the Host header,
    # which a cache that does not key on Host would serve to everyone.
    app.url_map.merge_slashes = False
    app.after_request(_no_sniffing)
    app.after_request(_no_date)
    largest_body = admin.MAX_IMPORT_BYTES + admin.FORM_ENVELOPE_BYTES
    app.after_request(functools.partial(body.drain_unread, most=largest_body))
    errors.init_app(app)
    app.register_blueprint(hits.bp)
    app.register_blueprint(counter.bp)
    app.register_blueprint(health.bp)
    widget.init_app(app)
    app.register_blueprint(admin.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(access.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(metrics_api.bp)
    return app


def _no_sniffing(response: Response) -> Response:
    # Paths and hosts in JSON answers are data sent by strangers: never let a browser
    # take a response for another type than the one it says.
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _no_date(response: Response) -> Response:
    # The server stamps every answer with Date (gunicorn, Werkzeug's dev server). Werkzeug's
    # make_conditional adds one of its own (the widget script, the SVG counter, the favicon,
    # static files), which gunicorn drops but the dev server sent as a second Date header.
    del response.headers["Date"]
    return response


def _check_clock(svc: Services, now: datetime) -> None:
    """A worker's clock decides which of its hits' days are late (closed already): the
    margin allows for clocks a minute apart. The scheduler refuses to run off Redis's
    clock; a worker cannot refuse hits, so it says so where an operator looks."""
    skew = svc.store.clock_skew(now)
    if abs(skew) > LATE_MARGIN_SECONDS:
        log.error(
            "this host's clock is %+.0f s off Redis's (at most %d s allowed): hits written "
            "around a site's midnight may be left out of that day's history; set the clock "
            "right (NTP)",
            skew,
            LATE_MARGIN_SECONDS,
        )


def _check_spool(svc: Services) -> None:
    """A worker stopped while Redis is away keeps what it holds in the spool folder; one it
    cannot write to loses those hits, which was said only at that stop, too late. Said as
    each worker starts, where an operator looks before an outage."""
    folder = svc.settings.effective_spool_dir
    try:
        spool.check_writable(folder)
    except OSError as exc:
        log.error(
            "spool: %s cannot be written (%s): a worker stopped while Redis is unavailable "
            "will lose the hits it holds (ANALYTICS_SPOOL_DIR)",
            folder,
            logs.reason(exc),
        )


def warm_up(app: Flask, now: datetime) -> None:
    """Before a worker takes traffic: load every site, today's salts and the Lua scripts,
    and compile the crawler patterns. Otherwise each fresh worker's first hits pay for all
    of it while the requests behind them wait (stalls of 100-400 ms measured on the bench
    machine). Failing here is not fatal: the hit path loads the same things on demand."""
    svc: Services = app.extensions["analytics"]
    _check_spool(svc)  # also while Redis is down, when it matters most
    try:
        sites = svc.sites.preload()
        svc.store.warm()
        svc.ingestor.warm(sites, now)
        _check_clock(svc, now)
    except (sa.exc.SQLAlchemyError, *REDIS_ERRORS) as exc:
        log.warning(
            "warm-up incomplete, the first hits will load what is missing: %s", logs.reason(exc)
        )
