"""`GET /metrics`: the Prometheus text format (analytics_service/metrics.py), for a scraper
that sends `Authorization: Bearer $ANALYTICS_METRICS_TOKEN`. Without that setting the path
does not exist (404); with it, any other request gets 401.

On the service's own port, so one scrape target works behind the proxy too. What the
scheduler and Redis hold is read at scrape time; a store that fails then leaves its
families out of this scrape (and is logged), the rest is still served.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterator
from datetime import datetime

import redis
import sqlalchemy as sa
from flask import Blueprint, Response, request
from prometheus_client.core import Metric
from werkzeug.exceptions import NotFound

from .. import metrics, spool
from ..auth import bearer_token
from ..counters import read_counters
from ..errors import ApiError
from ..jobs import JOBS
from ..live import STORAGE_ERRORS
from ..logs import reason
from ..services import Services, services
from ..sites import Site
from .private import private

bp = Blueprint("metrics", __name__)
bp.after_request(private)
log = logging.getLogger(__name__)


def _authorised(token: str | None) -> None:
    if not token:
        raise NotFound()
    sent = bearer_token(request.headers.get("Authorization"))
    if not hmac.compare_digest(sent.encode(), token.encode()):
        raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <metrics token>'")


@bp.get("/metrics")
def get_metrics() -> Response:
    svc = services()
    _authorised(svc.settings.metrics_token)
    now = svc.clock()
    body = metrics.exposition(lambda: _state(svc, now))
    return Response(body, content_type=metrics.CONTENT_TYPE_LATEST)


def _state(svc: Services, now: datetime) -> Iterator[Metric]:
    sites: list[Site] | None = None
    try:
        sites = svc.repo.list()
        yield from _sql_state(svc, sites, now)
    except sa.exc.SQLAlchemyError as exc:
        log.warning("metrics: the database failed; job and site metrics left out: %s", reason(exc))
    try:
        yield from _redis_state(svc, sites, now)
    except STORAGE_ERRORS as exc:
        log.warning("metrics: Redis failed; memory and live totals left out: %s", reason(exc))
    try:
        # The buffers' gauge falls to 0 when stopping workers spill what they held while
        # Redis is away: those hits wait on disk, and this says so.
        yield metrics.spool_family(spool.waiting(svc.settings.effective_spool_dir))
    except OSError as exc:
        log.warning("metrics: the spool folder cannot be read; its files left out: %s", reason(exc))


def _sql_state(svc: Services, sites: list[Site], now: datetime) -> Iterator[Metric]:
    runs = {row.job: row for row in svc.history.job_runs()}
    states = []
    for job in JOBS:
        row = runs.get(job.name)
        if row is None:
            states.append(metrics.JobState(job.name, job.period(svc.settings)))
            continue
        success = row.last_success_at
        states.append(
            metrics.JobState(
                job.name,
                job.period(svc.settings),
                last_run=row.last_run_at.timestamp(),
                last_success=success.timestamp() if success else None,
                last_duration_seconds=row.last_duration_seconds,
                last_failed_sites=row.last_failed_sites,
            )
        )
    marks = svc.history.watermarks()
    lags = {
        site.id: max(0, (svc.rollup.last_due_day(site, now) - marks[site.id]).days)
        for site in sites
        if site.id in marks
    }
    yield from metrics.job_families(states)
    yield metrics.watermark_family(lags)


def _redis_state(svc: Services, sites: list[Site] | None, now: datetime) -> Iterator[Metric]:
    yield from metrics.redis_memory_families(svc.store.memory())
    if sites is None:  # the database failed, the sites are unknown
        return
    try:
        live = list(_live_families(svc, sites, now))
    except STORAGE_ERRORS as exc:
        # One site's keys unreadable (on a cluster: its slot half moved by a reshard, which
        # answers TRYAGAIN, or its master down) while every master answered INFO above:
        # its memory stays, when a reshard is likeliest, for a master filling up.
        log.warning("metrics: a site could not be read; live totals left out: %s", reason(exc))
        return
    yield from live


def _live_families(svc: Services, sites: list[Site], now: datetime) -> Iterator[Metric]:
    """The three numbers over every site; none when a site's read fails: Redis unavailable
    for it (raised, and left out by the caller), a key of the wrong type, a script error,
    its restore's SQL. A sum without that site would be wrong, and the error, raised, made
    the whole scrape a 500: every series gone, the alerts on them silent, and MetricsDown
    firing instead of what the rollup reports of that site."""
    try:
        # Every site's counter in a few round trips; then the sites Redis lacks the history
        # of (after a wipe: all of them; or new) are restored, many at a time, and read
        # again. One at a time, the first scrape after a wipe of 20,000 sites took 47-55 s.
        counters = read_counters(svc.store, sites, now)
        missing = [c.site for c in counters if not c.restored]
        if missing:
            svc.recovery.restore_all(missing, now)
            again = {c.site.id: c for c in read_counters(svc.store, missing, now)}
            counters = [again.get(c.site.id, c) for c in counters]
    except STORAGE_ERRORS:
        raise
    except (redis.RedisError, sa.exc.SQLAlchemyError) as exc:
        log.error("metrics: a site could not be read; live totals left out: %s", reason(exc))
        return iter(())
    for c in counters:
        svc.recovery.noticed(c.history_mark, now)
    totals = metrics.LiveTotals(
        online=sum(c.online for c in counters),
        visits_today=sum(c.today_visits for c in counters),
        visits_total=sum(c.total_visits for c in counters),
    )
    return metrics.live_families(totals)
