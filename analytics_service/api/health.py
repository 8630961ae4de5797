"""Liveness and readiness probes."""

from __future__ import annotations

import logging

import sqlalchemy as sa
from flask import Blueprint, Response, jsonify

from ..logs import reason
from ..redis_store import REDIS_ERRORS
from ..services import services

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)


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
    try:
        with svc.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        checks["database"] = "ok"
    except sa.exc.SQLAlchemyError as exc:
        log.warning("readiness: database unreachable: %s", reason(exc))
        checks["database"] = "unreachable"
    checks["salts"] = "held" if svc.ingestor.salted(svc.clock()) else "not_held"
    ready = checks["buffer"] == "ok" and (checks["redis"] == "ok" or checks["salts"] == "held")
    response = jsonify({"status": "ready" if ready else "not_ready", "checks": checks})
    response.status_code = 200 if ready else 503
    # A probe's answer holds for the moment it is given: no cache in between may repeat it.
    response.headers["Cache-Control"] = "no-store"
    return response
