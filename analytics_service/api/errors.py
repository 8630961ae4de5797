"""Every error leaves as JSON `{"error": {"code", "message"}}`: never an HTML page, and
readable from any origin."""

from __future__ import annotations

import logging

import redis
from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from ..errors import ApiError

log = logging.getLogger(__name__)

REDIS_RETRY_AFTER_SECONDS = 5
REDIS_UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError)


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
    return response


def _api_error(exc: ApiError) -> Response:
    return error_response(exc.status, exc.code, exc.message, exc.details)


def _http_error(exc: HTTPException) -> Response:
    code = (exc.name or "error").lower().replace(" ", "_")
    response = error_response(exc.code or 500, code, exc.description or exc.name)
    if exc.code == 405 and exc.valid_methods:  # type: ignore[attr-defined]
        response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
    return response


def log_redis_unavailable(exc: Exception) -> None:
    # The endpoint gives context; nothing personal (IP, User-Agent) is logged.
    log.warning("Redis unavailable during %s %s: %r", request.method, request.path, exc)


def _redis_unavailable(exc: redis.ConnectionError | redis.TimeoutError) -> Response:
    log_redis_unavailable(exc)
    response = error_response(
        503, "storage_unavailable", "the counter store is unavailable; retry shortly"
    )
    response.headers["Retry-After"] = str(REDIS_RETRY_AFTER_SECONDS)
    return response


def _unexpected(exc: Exception) -> Response:
    log.exception("unhandled error during %s %s", request.method, request.path)
    return error_response(500, "internal_error", "internal error; it has been logged")


def init_app(app: Flask) -> None:
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    # Down, unreachable, too slow, or still loading its data: the client may retry. Other
    # Redis errors (a script error) are our bugs and fall through to the 500 handler.
    for exc_type in REDIS_UNAVAILABLE:
        app.register_error_handler(exc_type, _redis_unavailable)
    app.register_error_handler(Exception, _unexpected)
