"""Hit endpoints: `POST /api/v1/hit` (the widget's `fetch`, or any client) and
`GET /api/v1/hit.gif` (pages without JavaScript).

`POST /api/v1/hit` is the hot loop, answered by HitRoute, a WSGI layer in front of Flask:
Flask's request context, URL map, Response object and hooks cost more CPU than the hit's
own work (docs/benchmarks.md). Whatever HitRoute does not accept goes on to Flask, whose
route and error handlers answer it as any other request."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

from flask import Blueprint, Response, request
from werkzeug.exceptions import HTTPException
from werkzeug.wsgi import get_content_length

from .. import metrics
from ..db import UNAVAILABLE_ERRORS
from ..errors import ApiError
from ..ingest import MAX_BODY_BYTES, HitRequest, hit_request, parse_payload
from ..live import FULL, STORAGE_ERRORS, BufferFull, Outcome
from ..logs import StartResponse, WsgiApp
from ..services import Services, services
from ..visitor import client_address
from .body import read_body, read_sized_body
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


def _record(
    environ: dict[str, Any], fields: dict[str, object], origin: str | None, svc: Services
) -> Outcome:
    hit: HitRequest = hit_request(
        fields,
        ip=client_address(environ.get("REMOTE_ADDR", "")),
        user_agent=environ.get("HTTP_USER_AGENT", ""),
        origin=origin,
    )
    return svc.ingestor.ingest(hit, svc.clock())


class _Untyped(Response):
    """A response without a Content-Type: an empty 202 has nothing to describe."""

    default_mimetype = None


HIT_PATH = "/api/v1/hit"
# The exception HitRoute refused a hit with, for post_hit to raise again.
REFUSED = "analytics.hit_refused"
# An empty answer's length, and what app.py's _no_sniffing adds to every answer.
ACCEPTED_HEADERS = (("Content-Length", "0"), ("X-Content-Type-Options", "nosniff"))


class HitRoute:
    """WSGI: answers `POST /api/v1/hit` with a Content-Length (every browser's fetch and
    beacon) before Flask. A hit it refuses, with whatever exception (a 400, Redis down, a
    bug of ours), is handed to Flask with that exception, which post_hit raises again: the
    app's error handlers, hooks, logs and metrics answer it as any request's. Other
    requests, and a hit whose body has no length (chunked), go to Flask as they came."""

    def __init__(self, app: WsgiApp, svc: Services) -> None:
        self.app = app
        self.svc = svc

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != HIT_PATH or environ.get("REQUEST_METHOD") != "POST":
            return self.app(environ, start_response)
        length = get_content_length(environ)
        if length is None:
            return self.app(environ, start_response)
        try:
            _check_type(environ)
            headers = _accept(environ, read_sized_body(environ, length, MAX_BODY_BYTES), self.svc)
        except Exception as exc:  # answered by Flask, as every refusal of post_hit
            environ[REFUSED] = exc
            return self.app(environ, start_response)
        environ[metrics.ROUTE_KEY] = HIT_PATH
        start_response("202 ACCEPTED", [*ACCEPTED_HEADERS, *headers])
        return []


def _check_type(environ: dict[str, Any]) -> None:
    mimetype = environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
    if mimetype not in HIT_CONTENT_TYPES:
        raise ApiError(
            415, "unsupported_media_type", "send the hit as application/json or text/plain"
        )


def _accept(environ: dict[str, Any], body: bytes, svc: Services) -> list[tuple[str, str]]:
    """Records a hit; the headers its 202 carries beyond ACCEPTED_HEADERS."""
    fields = parse_payload(body)
    origin = _header_text(environ, "HTTP_ORIGIN")
    outcome = _record(environ, fields, origin, svc)
    headers = []
    if outcome.dropped is not None:
        headers.append(("X-Analytics-Dropped", outcome.dropped.value))
    if origin:
        # Reached only when the origin is allowed (check_origin raises otherwise). The
        # browser compares the header with its Origin byte for byte: send it back as it
        # came (WSGI's Latin-1 text), not as the Unicode read above, which gunicorn could
        # not even write.
        headers.append(("Access-Control-Allow-Origin", environ["HTTP_ORIGIN"]))
        headers.append(("Vary", "Origin"))
    return headers


@bp.post("/hit", provide_automatic_options=False)
def post_hit() -> Response:
    """What HitRoute did not accept: its refusals, and bodies without a length."""
    # Counted, bot, duplicate, rate-limited: the writer thread records those (metrics.py);
    # here, the hits refused or failed before they reach it.
    try:
        refused = request.environ.pop(REFUSED, None)
        if refused is not None:
            raise refused
        _check_type(request.environ)
        headers = _accept(request.environ, read_body(MAX_BODY_BYTES), services())
        return _Untyped(status=202, headers=headers)
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
        outcome = _record(request.environ, fields, request.referrer, services())
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
    response = _pixel(202)
    if outcome.dropped is not None:
        response.headers["X-Analytics-Dropped"] = outcome.dropped.value
    return response


@bp.get("/hit.gif")
def pixel_hit() -> Response:
    """For pages without JavaScript: always a 1x1 GIF; the status tells the outcome."""
    response = _pixel_hit()
    response.headers["Cache-Control"] = "no-store"
    # A page under `Cross-Origin-Embedder-Policy: require-corp` loads it only with this.
    response.headers["Cross-Origin-Resource-Policy"] = "cross-origin"
    return response
