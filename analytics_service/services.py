"""What the service's code needs at run time, built once per process: the live store, the
SQL history and sites, and what is made of them. The web app keeps one in its extensions
(request handlers reach it with `services()`); the scheduler, the CLI and the bench open
their own with `Services.open`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from flask import current_app
from sqlalchemy.engine import Engine

from . import db
from .clock import Clock
from .config import Settings
from .counters import CounterCache
from .history import History
from .ingest import Ingestor
from .live import DRAIN_SECONDS, LiveStore
from .recovery import Recovery
from .rollup import Rollup
from .sites import SiteCache, SiteRepository
from .stats import StatsReader
from .visitor import SaltStore


@dataclass
class Services:
    settings: Settings
    clock: Clock
    store: LiveStore
    engine: Engine
    repo: SiteRepository
    sites: SiteCache
    ingestor: Ingestor
    history: History
    recovery: Recovery
    counters: CounterCache
    rollup: Rollup
    stats: StatsReader

    @classmethod
    def build(cls, settings: Settings, clock: Clock) -> Services:
        store = LiveStore(settings, clock)
        engine = db.create_engine(settings.effective_database_url)
        repo = SiteRepository(engine)
        sites = SiteCache(repo, settings.site_cache_seconds)
        store.know_sites(sites.get)
        history = History(engine)
        salts = SaltStore(store)
        recovery = Recovery(history, store, on_restored=salts.offer_again)
        store.on_history_missing(lambda site: recovery.restore(site, clock()))
        rollup = Rollup(history, recovery, timedelta(seconds=settings.rollup_grace_seconds))
        return cls(
            settings=settings,
            clock=clock,
            store=store,
            engine=engine,
            repo=repo,
            sites=sites,
            ingestor=Ingestor(sites, salts, store),
            history=history,
            recovery=recovery,
            counters=CounterCache(store, settings.counter_cache_seconds),
            rollup=rollup,
            stats=StatsReader(history, recovery),
        )

    @classmethod
    @contextmanager
    def open(cls, settings: Settings, clock: Clock) -> Iterator[Services]:
        svc = cls.build(settings, clock)
        try:
            yield svc
        finally:
            svc.close()

    def close(self, drain_seconds: float = DRAIN_SECONDS) -> None:
        """Write what the hit buffer holds (for at most `drain_seconds`), then disconnect."""
        self.store.close(drain_seconds)
        self.engine.dispose()


def services() -> Services:
    """The services of the app serving the current request."""
    return current_app.extensions["analytics"]
