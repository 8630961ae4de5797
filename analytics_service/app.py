"""The Flask application factory: wires configuration, Redis, SQL and the blueprints."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import redis
import sqlalchemy as sa
from flask import Flask, current_app
from sqlalchemy.engine import Engine
from werkzeug.middleware.proxy_fix import ProxyFix

from . import db, logs, redis_store
from .clock import Clock, system_clock
from .config import Settings
from .counters import CounterCache
from .history import History
from .ingest import Ingestor
from .recovery import Recovery
from .scripts import Scripts
from .sites import SiteCache, SiteRepository
from .sitetime import local_date
from .visitor import SaltStore

log = logging.getLogger(__name__)


@dataclass
class Services:
    """What the request handlers need, built once per process."""

    settings: Settings
    clock: Clock
    redis: redis.Redis
    engine: Engine
    scripts: Scripts
    sites: SiteCache
    repo: SiteRepository
    ingestor: Ingestor
    history: History
    recovery: Recovery
    counters: CounterCache


def services() -> Services:
    return current_app.extensions["analytics"]


def create_app(settings: Settings | None = None, clock: Clock = system_clock) -> Flask:
    settings = settings or Settings.from_env()
    if not settings.redis_url:
        raise RuntimeError(
            "ANALYTICS_REDIS_URL is not set: use `analytics-service run`, which starts the "
            "embedded Redis, or point ANALYTICS_REDIS_URL at a server"
        )
    logs.configure(settings.log_level, settings.log_format)
    app = Flask(__name__)
    app.json.sort_keys = False
    if settings.trusted_proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies)  # type: ignore[method-assign]
    app.wsgi_app = logs.RequestIdMiddleware(app.wsgi_app)  # type: ignore[method-assign]

    client = redis_store.connect(settings.redis_url, settings)
    redis_store.check_server(client)
    engine = db.create_engine(settings.effective_database_url)
    scripts = Scripts.register(client)
    repo = SiteRepository(engine)
    sites = SiteCache(repo, settings.site_cache_seconds)
    history = History(engine)
    app.extensions["analytics"] = Services(
        settings=settings,
        clock=clock,
        redis=client,
        engine=engine,
        scripts=scripts,
        sites=sites,
        repo=repo,
        ingestor=Ingestor(sites, SaltStore(client), scripts.hit),
        history=history,
        recovery=Recovery(history, scripts.restore),
        counters=CounterCache(scripts.counter, settings.counter_cache_seconds),
    )

    from .api import admin, counter, errors, health, hits, openapi, widget

    errors.init_app(app)
    app.register_blueprint(hits.bp)
    app.register_blueprint(counter.bp)
    app.register_blueprint(health.bp)
    widget.init_app(app)
    app.register_blueprint(admin.bp)
    app.register_blueprint(openapi.bp)
    return app


def warm_up(app: Flask, now: datetime) -> None:
    """Before a worker takes traffic: load every site, today's salts and the Lua scripts,
    and compile the crawler patterns. Otherwise each fresh worker's first hits pay for all
    of it while the requests behind them wait (stalls of 100-400 ms measured on the bench
    machine). Failing here is not fatal: the hit path loads the same things on demand."""
    svc: Services = app.extensions["analytics"]
    try:
        sites = svc.sites.preload()
        Scripts.load(svc.redis)
        svc.ingestor.warm({local_date(now, site.tz) for site in sites}, now)
    except (sa.exc.SQLAlchemyError, redis.RedisError) as exc:
        log.warning("warm-up incomplete, the first hits will load what is missing: %r", exc)
