"""Liveness and readiness probes."""

from __future__ import annotations

import logging
import threading

import sqlalchemy as sa
from flask import Blueprint, Response, current_app, jsonify
from flask.blueprints import BlueprintSetupState

from ..db import CONNECT_TIMEOUT_SECONDS, POOL_TIMEOUT_SECONDS
from ..logs import reason
from ..redis_store import REDIS_ERRORS
from ..services import services

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)


# A check under way longer than this waits on a database that does not answer: longer than
# it can wait for a pooled connection and then to open one.
STALLED_CHECK_SECONDS = POOL_TIMEOUT_SECONDS + CONNECT_TIMEOUT_SECONDS


class DatabaseCheck:
    """The database's line of /readyz, checked by one request at a time in a worker. A
    check waits for a database that stalls up to its connect or pool timeout (5 s), and
    /readyz is public: a dozen requests of one client held every thread of the workers
    that long, and hits, which need no database, waited behind them until nginx answered
    504. A request that finds a check under way reports the last one's result instead
    ("unreachable" before any has ended: the database has not answered yet), or
    "unreachable" once that check has taken longer than its timeouts allow: a server that
    stalls on a connection already open holds it with no timeout, and the last result,
    "ok", was reported for as long as the stall lasted."""

    def __init__(self) -> None:
        self._running = threading.Lock()
        self._last = "unreachable"
        self._began: float | None = None  # when the check under way began, unix time

    def __call__(self, engine: sa.engine.Engine, now: float) -> str:
        if not self._running.acquire(blocking=False):
            began = self._began  # None: the check is just beginning or ending
            if began is not None and now - began > STALLED_CHECK_SECONDS:
                return "unreachable"
            return self._last
        self._began = now
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            self._last = "ok"
        except sa.exc.SQLAlchemyError as exc:
            log.warning("readiness: database unreachable: %s", reason(exc))
            self._last = "unreachable"
        finally:
            self._began = None
            self._running.release()
        return self._last


@bp.record_once
def _add_database_check(state: BlueprintSetupState) -> None:
    state.app.extensions["readiness_database"] = DatabaseCheck()


@bp.get("/healthz")
def healthz() -> Response:
    """The process is up and serving requests; touches nothing else."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    """Whether this worker takes hits: its buffer has room, and it can tell readers apart
    (Redis answers, or it holds the salts of its sites' dates). Redis and the database
    are reported, not required: the buffer carries hits through a Redis outage and hits
    need no database, and both are shared, so a probe failing on them would take every node
    out of the load balancer at once, turning an outage the service rides out into lost
    hits. A worker started during the outage holds no salt, and refuses every hit."""
    svc = services()
    checks: dict[str, str] = {"buffer": "full" if svc.store.buffer_full else "ok"}
    try:
        svc.store.ping()
        checks["redis"] = "ok"
    except REDIS_ERRORS as exc:
        log.warning("readiness: Redis unreachable: %s", reason(exc))
        checks["redis"] = "unreachable"
    checks["database"] = current_app.extensions["readiness_database"](
        svc.engine, svc.clock().timestamp()
    )
    checks["salts"] = "held" if svc.ingestor.salted(svc.clock()) else "not_held"
    ready = checks["buffer"] == "ok" and (checks["redis"] == "ok" or checks["salts"] == "held")
    response = jsonify({"status": "ready" if ready else "not_ready", "checks": checks})
    response.status_code = 200 if ready else 503
    # A probe's answer holds for the moment it is given: no cache in between may repeat it.
    response.headers["Cache-Control"] = "no-store"
    return response
