"""Every error leaves as JSON `{"error": {"code", "message"}}`: never an HTML page, and
readable from any origin."""

from __future__ import annotations

import logging
import threading
import time

import sqlalchemy as sa
from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from .. import metrics
from ..db import UNAVAILABLE_ERRORS, lock_wait_expired
from ..errors import ApiError
from ..live import FULL, STORAGE_ERRORS, BufferFull
from ..logs import db_reason, reason
from ..services import services

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
# While Redis is down or full every hit is refused: one line per this many seconds, kind of
# refusal and process, with the count of the refusals since the last one, keeps it loud
# without writing a line per hit (at a thousand hits a second, half a gigabyte an hour).
REFUSAL_LOG_SECONDS = 10.0


def error_response(
    status: int, code: str, message: str, details: list[str] | None = None
) -> Response:
    error: dict[str, object] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    response = jsonify({"error": error})
    response.status_code = status
    # Readable from any page (no credentials are ever involved): the widget on a portal can
    # tell its owner why a hit was refused instead of failing silently.
    response.headers["Access-Control-Allow-Origin"] = "*"
    # A 404 is cacheable by default: a CDN in front of the public counter would keep "no
    # site lhh" after `site create lhh`, and a stale pinned widget's 404 after a rollback.
    # No refusal is worth keeping.
    response.headers["Cache-Control"] = "no-store"
    return response


def _api_error(exc: ApiError) -> Response:
    return error_response(exc.status, exc.code, exc.message, exc.details)


def http_error_code(exc: HTTPException) -> str:
    """The error code of one of Werkzeug's HTTP errors (413: request_entity_too_large)."""
    return (exc.name or "error").lower().replace(" ", "_")


def _http_error(exc: HTTPException) -> Response:
    response = error_response(exc.code or 500, http_error_code(exc), exc.description or exc.name)
    if exc.code == 405 and exc.valid_methods:  # type: ignore[attr-defined]
        response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
    if request.url_rule is None:
        # Refused by the routing, before any blueprint could say how its answers are
        # cached: a path under a private route's must not be kept by a cache either.
        response.headers["Cache-Control"] = "no-store"
    return response


class RefusalLog:
    """Logs one kind of 503 at most once per REFUSAL_LOG_SECONDS, with how many requests
    got it since the last line and the last one's endpoint and cause."""

    def __init__(self, level: int, what: str, advice: str = "") -> None:
        self._level = level
        self._what = what
        self._advice = advice
        self._lock = threading.Lock()
        self._next = float("-inf")
        self._refused = 0

    def refused(self, endpoint: str, cause: str, now: float | None = None) -> bool:
        """Count one refusal; log the count if the last line is old enough (then True)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._refused += 1
            if now < self._next:
                return False
            count, self._refused, self._next = self._refused, 0, now + REFUSAL_LOG_SECONDS
        log.log(
            self._level,
            "%s: %d request(s) refused with 503 since the last such line, the last %s: %s%s",
            self._what,
            count,
            endpoint,
            cause,
            self._advice,
        )
        return True


class RefusalLogs:
    """An app's lines for the 503s of a Redis that is full, down, or behind the hits."""

    def __init__(self) -> None:
        self.full = RefusalLog(
            logging.ERROR,
            "Redis is out of memory (maxmemory reached under noeviction)",
            " (free memory or raise maxmemory; the service resumes by itself)",
        )
        self.unavailable = RefusalLog(logging.WARNING, "Redis unavailable")
        self.buffer_full = RefusalLog(logging.WARNING, "write-behind buffer full")


def _refusals() -> RefusalLogs:
    refusals: RefusalLogs = current_app.extensions["analytics_refusals"]
    return refusals


def _endpoint() -> str:
    return f"{request.method} {request.path}"


def storage_error(exc: Exception) -> tuple[str, str]:
    """Log a Redis failure with its endpoint (nothing personal: no IP, no User-Agent) and
    give the (code, message) of the 503 that answers it."""
    metrics.redis_error(exc)
    if isinstance(exc, FULL):
        _refusals().full.refused(_endpoint(), reason(exc))
        return "storage_full", "the counter store is full; retry later"
    _refusals().unavailable.refused(_endpoint(), reason(exc))
    return "storage_unavailable", "the counter store is unavailable; retry shortly"


def _storage_unavailable(exc: Exception) -> Response:
    response = error_response(503, *storage_error(exc))
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def buffer_full(exc: BufferFull) -> tuple[str, str]:
    """The (code, message) of the 503 for a hit the worker's buffer has no room for."""
    cause = reason(exc.cause) if exc.cause else "no error; writes fall behind the hits"
    _refusals().buffer_full.refused(_endpoint(), f"Redis: {cause}")
    if buffer_full_code(exc) == "storage_full":
        return "storage_full", "the counter store is full; retry later"
    return "storage_unavailable", "the counter store is unavailable; retry shortly"


def buffer_full_code(exc: BufferFull) -> str:
    return "storage_full" if isinstance(exc.cause, FULL) else "storage_unavailable"


def _buffer_full(exc: BufferFull) -> Response:
    response = error_response(503, *buffer_full(exc))
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


DATABASE_UNAVAILABLE = "database_unavailable"


def database_error(exc: sa.exc.SQLAlchemyError) -> tuple[str, str]:
    """Log that the database cannot be reached (down, restarting, out of connections) or
    holds a lock the request waited for too long, and give the (code, message) of the 503
    that answers it: the client may retry, as with Redis. Other database errors are our
    bugs: 500. One code for both: a client does the same (retries), and hits' metrics and
    alerts count them alike."""
    if lock_wait_expired(exc):
        return DATABASE_UNAVAILABLE, _lock_wait_expired(exc)
    log.warning(
        "database unavailable during %s %s: %s", request.method, request.path, db_reason(exc)
    )
    return DATABASE_UNAVAILABLE, "the history database is unavailable; retry shortly"


def _lock_wait_expired(exc: sa.exc.SQLAlchemyError) -> str:
    seconds = services().settings.database_lock_timeout
    log.warning(
        "database busy during %s %s: another session held a lock it needed for more than "
        "%g s (ANALYTICS_DATABASE_LOCK_TIMEOUT); answered 503: %s",
        request.method,
        request.path,
        seconds,
        db_reason(exc),
    )
    return (
        "the history database is busy: another session (a site delete, an import, a "
        f"migration) held a lock this request needed for more than {seconds:g} s, and the "
        "request changed nothing; retry shortly"
    )


def _database_unavailable(exc: sa.exc.SQLAlchemyError) -> Response:
    response = error_response(503, *database_error(exc))
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def _unexpected(exc: Exception) -> Response:
    log.exception("unhandled error during %s %s", request.method, request.path)
    return error_response(500, "internal_error", "internal error; it has been logged")


def init_app(app: Flask) -> None:
    app.extensions["analytics_refusals"] = RefusalLogs()
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    # STORAGE_ERRORS (live.py): Redis down, unreachable, too slow, between cluster owners,
    # or out of memory: the client may retry. Other Redis errors (a script error) are our
    # bugs and fall through to the 500.
    for exc_type in STORAGE_ERRORS:
        app.register_error_handler(exc_type, _storage_unavailable)
    app.register_error_handler(BufferFull, _buffer_full)
    for exc_type in UNAVAILABLE_ERRORS:
        app.register_error_handler(exc_type, _database_unavailable)
    app.register_error_handler(Exception, _unexpected)
