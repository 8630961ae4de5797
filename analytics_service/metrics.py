"""Prometheus metrics: every metric the service exports, the small functions that record
them, and their text exposition (served by api/metrics.py at GET /metrics).

Under gunicorn, prometheus-client runs in its multiprocess mode: gunicorn.conf.py sets
PROMETHEUS_MULTIPROC_DIR before a worker imports this module, and the master wipes it at
start and folds each exited worker's files into an archive (metrics_files.py). Every
worker writes its own files there, and a scrape, whichever worker answers it, reads all
of them into a fresh registry. Without
that variable (the dev server, the tests' in-process app) the metrics live in REGISTRY.

Two kinds of metric:

- recorded as things happen, in the web workers: hits by outcome, request durations,
  requests in progress, Redis errors, the counter cache's reuse. The recording functions
  below are plain calls, safe from any thread (a hit's outcome may be decided off the
  request's thread);
- read at scrape time (`exposition(state)`, the state from api/metrics.py), from what the
  scheduler records in SQL (its jobs' last runs, each site's watermark) and from Redis (its
  memory, the three numbers): the scheduler is a process of its own, and one scrape target
  shows the whole picture.

No metric has a label an attacker controls: no site label on anything a request records
(thousands of sites, and unknown ones in refused hits), only on the watermark lag, whose
sites come from the sites table.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from flask import request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import metrics_files
from .logs import StartResponse, WsgiApp

__all__ = ["CONTENT_TYPE_LATEST"]

REGISTRY = CollectorRegistry()

# What happened to a hit. Counted: "visit" (it started a visit) or "pageview" (within one);
# not counted: "bot", "duplicate", "rate_limited", "site_removed" (written after its site
# was removed), "day_expired" (written too long after its day); "refused" (a client error,
# 4xx, with its code) and "failed" (the store failed, 503, with its code).
COUNTED_OUTCOMES = (
    "visit",
    "pageview",
    "bot",
    "duplicate",
    "rate_limited",
    "site_removed",
    "day_expired",
)
HITS = Counter(
    "analytics_hits",
    "Hits received, by outcome (visit, pageview: counted; bot, duplicate, rate_limited, "
    "site_removed, day_expired: accepted, not counted; refused: a client error; failed: the store "
    "failed) and, for refused and failed, the error code.",
    ["outcome", "code"],
    registry=REGISTRY,
)
_COUNTED = {outcome: HITS.labels(outcome, "") for outcome in COUNTED_OUTCOMES}
# Series that exist from the start at 0, so that a rate over them is 0, not absent.
FAILED_CODES = ("storage_unavailable", "storage_full", "database_unavailable")
for _code in FAILED_CODES:
    HITS.labels("failed", _code)

REQUEST_SECONDS = Histogram(
    "analytics_http_request_duration_seconds",
    "Time to answer a request, in the app, by route (the URL rule, 'unmatched' for none) "
    "and status class (2xx, 3xx, 4xx, 5xx).",
    ["route", "status"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)
IN_PROGRESS = Gauge(
    "analytics_http_requests_in_progress",
    "Requests being answered now, over all live workers.",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
# (Not named REDIS_ERRORS: that is redis_store's tuple of the exceptions caught as such.)
REDIS_FAILED_CALLS = Counter(
    "analytics_redis_errors",
    "Redis calls that failed (requests, and the write-behind writer's attempts), by kind: "
    "timeout, connection, full (out of memory), other (cluster resharding, read-only "
    "replica).",
    ["kind"],
    registry=REGISTRY,
)
for _kind in ("timeout", "connection", "full", "other"):
    REDIS_FAILED_CALLS.labels(_kind)
COUNTER_CACHE = Counter(
    "analytics_counter_cache_reads",
    "Reads of a site's live counter: hit (the worker's last read reused), miss (Redis).",
    ["result"],
    registry=REGISTRY,
)
_CACHE_HIT, _CACHE_MISS = COUNTER_CACHE.labels("hit"), COUNTER_CACHE.labels("miss")
BUFFERED = Gauge(
    "analytics_buffer_hits",
    "Hits the live workers hold in their write-behind buffers, accepted but not yet in "
    "Redis (updated by each writer at every attempt: it grows while Redis is unavailable).",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
BUFFER_LOST = Counter(
    "analytics_buffer_lost_hits",
    "Accepted hits never written: given up when a worker stopped with Redis unavailable, "
    "or lost to a refused batch or an unexpected error (each logged at ERROR).",
    registry=REGISTRY,
)
SPOOL_HELD = Counter(
    "analytics_spool_held_hits",
    "Hits of spool files held for the operator, not written: some of their batches may have "
    "been counted already, longer ago than Redis remembers (each file logged at ERROR, "
    "renamed *.hits.held; `analytics-service spool release` writes it anyway).",
    registry=REGISTRY,
)


# -- recording ------------------------------------------------------------------------------


def hit_outcome(outcome: str, n: int = 1) -> None:
    """`n` hits whose outcome the store decided: one of COUNTED_OUTCOMES."""
    _COUNTED[outcome].inc(n)


def hit_refused(code: str) -> None:
    """A hit refused with a client error (its ApiError code)."""
    HITS.labels("refused", code).inc()


def hit_failed(code: str) -> None:
    """A hit the service could not take (storage_unavailable, storage_full; or
    database_unavailable: a site this worker had not read yet, the database down)."""
    HITS.labels("failed", code).inc()


def redis_error(exc: BaseException) -> None:
    """A Redis call that failed (in a request, or in the writer thread's attempts)."""
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        kind = "full"
    elif isinstance(exc, redis.TimeoutError):
        kind = "timeout"
    elif isinstance(exc, redis.ConnectionError):
        kind = "connection"
    else:
        kind = "other"
    REDIS_FAILED_CALLS.labels(kind).inc()


# hits.lua's answer for each hit of a batch (live.Letter) -> its outcome.
LETTERS = {
    "v": "visit",
    "p": "pageview",
    "b": "bot",
    "d": "duplicate",
    "r": "rate_limited",
    "x": "site_removed",
    "o": "day_expired",
}


# Hits applied before Redis was wiped, whose answer was lost then: what they were is not
# known any more, so they are left out of the outcomes.
UNKNOWN_LETTERS = frozenset("a")


def hit_letters(letters: str) -> None:
    """A batch's outcomes as the writer thread got them from hits.lua (a listener of
    LiveStore.on_written): one letter per hit."""
    for letter, n in collections.Counter(letters).items():
        if letter not in UNKNOWN_LETTERS:
            hit_outcome(LETTERS[letter], n)


def buffer_held(held: int) -> None:
    """How many accepted hits a worker's writer holds now, not yet in Redis."""
    BUFFERED.set(held)


def hits_lost(n: int) -> None:
    """Accepted hits that will never be written."""
    BUFFER_LOST.inc(n)


def spool_held(n: int) -> None:
    """A spool file of `n` hits held for the operator (spool.py)."""
    SPOOL_HELD.inc(n)


def counter_cache(reused: bool) -> None:
    (_CACHE_HIT if reused else _CACHE_MISS).inc()


ROUTE_KEY = "analytics.route"


class RequestMetrics:
    """WSGI middleware: each request's duration by route and status class, and the
    requests in progress. The route is Flask's URL rule (a template such as
    `/api/v1/sites/<site:site_id>/counter`), never the path: paths hold site ids. Flask
    forgets its request when it returns, so `note_route` (a teardown_request function)
    leaves the rule in the WSGI environ first."""

    def __init__(self, app: WsgiApp) -> None:
        self.app = app

    @staticmethod
    def note_route(exc: BaseException | None = None) -> None:
        rule = request.url_rule
        request.environ[ROUTE_KEY] = rule.rule if rule is not None else "unmatched"

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        status = ["5xx"]

        def start(line: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            status[0] = f"{line[0]}xx"
            return start_response(line, headers, *exc_info)

        IN_PROGRESS.inc()
        try:
            return self.app(environ, start)
        finally:
            IN_PROGRESS.dec()
            route = environ.get(ROUTE_KEY, "unmatched")
            REQUEST_SECONDS.labels(route, status[0]).observe(time.perf_counter() - started)


# -- read at scrape time ----------------------------------------------------------------------


@dataclass(frozen=True)
class JobState:
    """A scheduled job as the scheduler last recorded it (History.record_job_run)."""

    name: str
    period_seconds: float
    last_run: float | None = None  # unix time
    last_success: float | None = None
    last_duration_seconds: float | None = None
    last_failed_sites: int | None = None


@dataclass(frozen=True)
class LiveTotals:
    """The box's three numbers, summed over every site."""

    online: int
    visits_today: int
    visits_total: int


# The jobs' label: not "job", which Prometheus keeps for the scrape's own job and would
# rename to "exported_job" (alert summaries and dashboard legends then named no job).
JOB_LABEL = "task"


def job_families(jobs: Iterable[JobState]) -> Iterator[Metric]:
    period = GaugeMetricFamily(
        "analytics_job_period_seconds", "How often the job is scheduled.", labels=[JOB_LABEL]
    )
    last_run = GaugeMetricFamily(
        "analytics_job_last_run_timestamp_seconds",
        "When the job's last run (success or failure) started, unix time.",
        labels=[JOB_LABEL],
    )
    last_success = GaugeMetricFamily(
        "analytics_job_last_success_timestamp_seconds",
        "When the job last succeeded, unix time; 0: never.",
        labels=[JOB_LABEL],
    )
    duration = GaugeMetricFamily(
        "analytics_job_last_duration_seconds",
        "How long the job's last run took.",
        labels=[JOB_LABEL],
    )
    failed = GaugeMetricFamily(
        "analytics_job_last_failed_sites",
        "Sites the job's last run could not roll up (every site, when the run failed whole).",
        labels=[JOB_LABEL],
    )
    for job in jobs:
        period.add_metric([job.name], job.period_seconds)
        last_success.add_metric([job.name], job.last_success or 0)
        if job.last_run is not None:
            last_run.add_metric([job.name], job.last_run)
            duration.add_metric([job.name], job.last_duration_seconds or 0)
            failed.add_metric([job.name], job.last_failed_sites or 0)
    yield from (period, last_run, last_success, duration, failed)


def watermark_family(lag_days: Mapping[str, int]) -> Metric:
    lag = GaugeMetricFamily(
        "analytics_rollup_watermark_lag_days",
        "Finished days of the site not closed yet: its last due day minus its watermark "
        "(0: up to date). A site appears once its first finalise run has set a watermark.",
        labels=["site"],
    )
    for site_id, days in sorted(lag_days.items()):
        lag.add_metric([site_id], days)
    return lag


def redis_memory_families(info_by_node: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
    """From INFO memory of each Redis node (one, unless it is a cluster)."""
    used = GaugeMetricFamily(
        "analytics_redis_memory_used_bytes", "Memory Redis uses (used_memory).", labels=["node"]
    )
    limit = GaugeMetricFamily(
        "analytics_redis_memory_max_bytes",
        "Redis's maxmemory; 0: no limit (then it grows until the host runs out).",
        labels=["node"],
    )
    for node, info in sorted(info_by_node.items()):
        used.add_metric([node], float(info["used_memory"]))
        limit.add_metric([node], float(info.get("maxmemory", 0)))
    yield from (used, limit)


def live_families(totals: LiveTotals) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "analytics_online_visitors", "Visitors online now, over every site.", totals.online
    )
    yield GaugeMetricFamily(
        "analytics_visits_today",
        "Visits today (each site's own local day), over every site.",
        totals.visits_today,
    )
    yield GaugeMetricFamily(
        "analytics_visits_total",
        "Visits ever, baselines included (each box's 'Đã truy cập'), over every site.",
        totals.visits_total,
    )


def spool_family(files: int) -> Metric:
    return GaugeMetricFamily(
        "analytics_spool_files",
        "Spool files waiting in this node's ANALYTICS_SPOOL_DIR: hits stopped workers could "
        "not write (a stop while Redis was unavailable), written by a worker's sweep within a "
        "minute once Redis takes them; held files not included (read at scrape time).",
        files,
    )


class _Families(Collector):
    def __init__(self, families: Callable[[], Iterable[Metric]]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families()


def exposition(state: Callable[[], Iterable[Metric]]) -> bytes:
    """The text format of every metric: the recorded ones (from every worker's files in
    multiprocess mode), and `state`'s families, read now."""
    registry = CollectorRegistry()
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        families = metrics_files.recorded(Path(folder))
        registry.register(_Families(lambda: families))
    else:
        registry.register(_Families(REGISTRY.collect))
    registry.register(_Families(state))
    return generate_latest(registry)
