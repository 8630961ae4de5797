"""Hit endpoints: `POST /api/v1/hit` (the widget's `fetch`, or any client) and
`GET /api/v1/hit.gif` (pages without JavaScript)."""

from __future__ import annotations

import base64
from typing import Any

from flask import Blueprint, Response, request
from werkzeug.exceptions import HTTPException

from .. import metrics
from ..db import UNAVAILABLE_ERRORS
from ..errors import ApiError
from ..ingest import MAX_BODY_BYTES, HitRequest, hit_request, parse_payload
from ..live import FULL, STORAGE_ERRORS, BufferFull, Outcome
from ..services import services
from ..visitor import client_address
from .body import read_body
from .errors import (
    DATABASE_UNAVAILABLE,
    RETRY_AFTER_SECONDS,
    buffer_full,
    buffer_full_code,
    database_error,
    http_error_code,
    storage_error,
)

bp = Blueprint("hits", __name__, url_prefix="/api/v1")

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
PREFLIGHT_MAX_AGE = "86400"
# What a beacon (text/plain, no CORS preflight), fetch with JSON, or a bare client sends.
HIT_CONTENT_TYPES = frozenset({"", "text/plain", "application/json"})


# The hit path reads its headers from the WSGI environ: werkzeug's header lookup builds and
# catches an exception for each header that is absent (most hits have no Origin). It takes
# the environ once: each `request.` goes through Flask's context-local proxy.


def _header_text(environ: dict[str, Any], environ_key: str) -> str | None:
    """A header as the client wrote it: WSGI hands headers over as Latin-1, so UTF-8 bytes
    (an Origin with a Vietnamese host name, sent by hand) would otherwise read garbled."""
    raw = environ.get(environ_key)
    if raw is None:
        return None
    return raw.encode("latin-1", "replace").decode("utf-8", "replace")


def _record(environ: dict[str, Any], fields: dict[str, object], origin: str | None) -> Outcome:
    hit: HitRequest = hit_request(
        fields,
        ip=client_address(environ.get("REMOTE_ADDR", "")),
        user_agent=environ.get("HTTP_USER_AGENT", ""),
        origin=origin,
    )
    svc = services()
    return svc.ingestor.ingest(hit, svc.clock())


class _Untyped(Response):
    """A response without a Content-Type: an empty 202 has nothing to describe."""

    default_mimetype = None


def _accepted(outcome: Outcome, body: bytes = b"", mimetype: str | None = None) -> Response:
    response = Response(body, 202, mimetype=mimetype) if body else _Untyped(status=202)
    if outcome.dropped is not None:
        response.headers["X-Analytics-Dropped"] = outcome.dropped.value
    return response


@bp.post("/hit", provide_automatic_options=False)
def post_hit() -> Response:
    # Counted, bot, duplicate, rate-limited: the writer thread records those (metrics.py);
    # here, the hits refused or failed before they reach it.
    try:
        return _post_hit()
    # The app's handlers answer these (errors.py); the codes are the ones they send.
    except ApiError as exc:
        metrics.hit_refused(exc.code)
        raise
    except HTTPException as exc:  # 413 from read_body
        metrics.hit_refused(http_error_code(exc))
        raise
    except BufferFull as exc:
        metrics.hit_failed(buffer_full_code(exc))
        raise
    except STORAGE_ERRORS as exc:
        metrics.hit_failed("storage_full" if isinstance(exc, FULL) else "storage_unavailable")
        raise
    except UNAVAILABLE_ERRORS:  # a site never read by this worker, the database down
        metrics.hit_failed(DATABASE_UNAVAILABLE)
        raise


def _post_hit() -> Response:
    environ = request.environ
    mimetype = environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
    if mimetype not in HIT_CONTENT_TYPES:
        raise ApiError(
            415, "unsupported_media_type", "send the hit as application/json or text/plain"
        )
    fields = parse_payload(read_body(MAX_BODY_BYTES))
    origin = _header_text(environ, "HTTP_ORIGIN")
    response = _accepted(_record(environ, fields, origin))
    if origin:
        # Reached only when the origin is allowed (check_origin raises otherwise). The
        # browser compares the header with its Origin byte for byte: send it back as it
        # came (WSGI's Latin-1 text), not as the Unicode read above, which gunicorn could
        # not even write.
        response.headers["Access-Control-Allow-Origin"] = environ["HTTP_ORIGIN"]
        response.headers["Vary"] = "Origin"
    return response


@bp.route("/hit", methods=["OPTIONS"])
def preflight_hit() -> Response:
    """CORS preflight for `fetch` with application/json. The real request is checked
    against the site's origins; the preflight cannot know the site yet."""
    response = Response(status=204)
    origin = request.headers.get("Origin")
    if origin:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Methods"] = "POST"
        response.headers["Access-Control-Allow-Headers"] = "Content-Type"
        response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
        response.headers["Vary"] = "Origin"
    return response


def _pixel(status: int, error_code: str | None = None) -> Response:
    response = Response(PIXEL, status=status, mimetype="image/gif")
    if error_code is not None:
        response.headers["X-Analytics-Error"] = error_code
    return response


def _pixel_hit() -> Response:
    if request.method == "HEAD":
        return _pixel(200)  # a link checker or a prefetch: nobody read the page
    fields: dict[str, object] = {
        "site": request.args.get("site"),
        "url": request.args.get("url") or request.referrer,
        "referrer": request.args.get("ref"),
    }
    if "id" in request.args:
        fields["id"] = request.args["id"]
    # An image request carries no Origin; the page that embeds it is in the Referer, and a
    # third-party page must not count for the site.
    try:
        return _accepted(_record(request.environ, fields, request.referrer), PIXEL, "image/gif")
    except ApiError as exc:
        metrics.hit_refused(exc.code)
        return _pixel(exc.status, exc.code)
    except (*STORAGE_ERRORS, BufferFull, *UNAVAILABLE_ERRORS) as exc:
        if isinstance(exc, UNAVAILABLE_ERRORS):
            code = database_error(exc)[0]
        elif isinstance(exc, BufferFull):
            code = buffer_full(exc)[0]
        else:
            code = storage_error(exc)[0]
        metrics.hit_failed(code)
        response = _pixel(503, code)
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response


@bp.get("/hit.gif")
def pixel_hit() -> Response:
    """For pages without JavaScript: always a 1x1 GIF; the status tells the outcome."""
    response = _pixel_hit()
    response.headers["Cache-Control"] = "no-store"
    # A page under `Cross-Origin-Embedder-Policy: require-corp` loads it only with this.
    response.headers["Cross-Origin-Resource-Policy"] = "cross-origin"
    return response
