"""Hit endpoints: `POST /api/v1/hit` (script and sendBeacon) and `GET /api/v1/hit.gif`."""

from __future__ import annotations

import base64

from flask import Blueprint, Response, request

from ..app import services
from ..errors import ApiError
from ..ingest import MAX_BODY_BYTES, HitRequest, Outcome, hit_request, parse_payload
from .errors import REDIS_UNAVAILABLE, log_redis_unavailable

bp = Blueprint("hits", __name__, url_prefix="/api/v1")

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
PREFLIGHT_MAX_AGE = "86400"


def _request_context() -> dict[str, object]:
    return {
        "ip": request.remote_addr or "",
        "user_agent": request.headers.get("User-Agent", ""),
        "origin": request.headers.get("Origin"),
    }


def _record(hit: HitRequest) -> Outcome:
    svc = services()
    return svc.ingestor.ingest(hit, svc.clock())


def _outcome_response(outcome: Outcome, body: bytes = b"", mimetype: str | None = None) -> Response:
    response = Response(body, status=202, mimetype=mimetype)
    if outcome.dropped is not None:
        response.headers["X-Analytics-Dropped"] = outcome.dropped.value
    return response


@bp.post("/hit", provide_automatic_options=False)
def post_hit() -> Response:
    # Read at most 8 KB: a larger body is refused (413) before it is parsed.
    request.max_content_length = MAX_BODY_BYTES
    fields = parse_payload(request.get_data(cache=False))
    hit = hit_request(fields, **_request_context())  # type: ignore[arg-type]
    response = _outcome_response(_record(hit))
    if hit.origin:
        # Reached only when the origin is allowed (check_origin raises otherwise).
        response.headers["Access-Control-Allow-Origin"] = hit.origin
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


def _pixel_error(status: int, code: str) -> Response:
    response = Response(PIXEL, status=status, mimetype="image/gif")
    response.headers["X-Analytics-Error"] = code
    return response


@bp.get("/hit.gif")
def pixel_hit() -> Response:
    """For pages without JavaScript: always a 1x1 GIF; the status tells the outcome."""
    fields = {
        "site": request.args.get("site"),
        "url": request.args.get("url") or request.referrer,
        "referrer": request.args.get("ref"),
        "id": request.args.get("id"),
    }
    try:
        hit = hit_request(fields, **_request_context())  # type: ignore[arg-type]
        response = _outcome_response(_record(hit), PIXEL, "image/gif")
    except ApiError as exc:
        response = _pixel_error(exc.status, exc.code)
    except REDIS_UNAVAILABLE as exc:
        log_redis_unavailable(exc)
        response = _pixel_error(503, "storage_unavailable")
    response.headers["Cache-Control"] = "no-store"
    return response
