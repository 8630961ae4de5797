"""The embeddable box: the widget script and its SVG twin for pages without JavaScript (the
demo page that shows it is in pages.py)."""

from __future__ import annotations

import hashlib

from flask import Blueprint, Flask, Response, current_app, request

from .. import counter_svg, widget_asset
from ..errors import ApiError
from ..services import services
from .counter import current_counter
from .errors import error_response

bp = Blueprint("widget", __name__)

# /widget.js may change with a deploy: browsers revalidate it (ETag) every few minutes.
LATEST_CACHE = "public, max-age=300"
# /widget.v<hash>.js never changes: its URL changes instead.
VERSIONED_CACHE = "public, max-age=31536000, immutable"


def init_app(app: Flask) -> None:
    app.extensions["widget_asset"] = widget_asset.load()
    app.register_blueprint(bp)


def asset() -> widget_asset.WidgetAsset:
    return current_app.extensions["widget_asset"]


def _script(cache_control: str) -> Response:
    script = asset()
    gzipped = request.accept_encodings["gzip"] > 0
    response = Response(script.gzipped if gzipped else script.body)
    response.content_type = "text/javascript; charset=utf-8"
    if gzipped:
        response.content_encoding = "gzip"
    # Each encoding is a different representation, so it gets its own strong ETag.
    response.set_etag(script.version + ("-gzip" if gzipped else ""))
    response.vary.add("Accept-Encoding")
    # A page loading the script with integrity= and crossorigin="anonymous" needs CORS.
    return _embeddable(response, cache_control)


def _embeddable(response: Response, cache_control: str) -> Response:
    """Headers of a resource that any page may embed, answered with 304 when unchanged."""
    response.headers["Cache-Control"] = cache_control
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["Cross-Origin-Resource-Policy"] = "cross-origin"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.make_conditional(request)
    if response.status_code == 412:
        # werkzeug answers a failed If-Match with the whole script or image under this
        # public Cache-Control: a shared cache could keep that 412 and serve it to every
        # page for minutes (a browser runs no script answered 412). It is a refusal.
        return error_response(412, "precondition_failed", "If-Match names no ETag of this resource")
    return response


@bp.get("/widget.js")
def widget_latest() -> Response:
    return _script(LATEST_CACHE)


@bp.get("/widget.v<version>.js")
def widget_versioned(version: str) -> Response:
    if version != asset().version:
        raise ApiError(
            404,
            "unknown_widget_version",
            f"this service serves widget version {asset().version}; "
            "use /widget.js or update the script tag",
        )
    return _script(VERSIONED_CACHE)


@bp.get("/api/v1/sites/<site:site_id>/counter.svg")
def counter_image(site_id: str) -> Response:
    style = counter_svg.SvgStyle.from_query(request.args)
    counter = current_counter(site_id)
    body = counter_svg.render(counter, style).encode()
    response = Response(body, mimetype="image/svg+xml")
    # The body depends on the numbers and every query parameter, never on `as_of`.
    response.set_etag(hashlib.blake2b(body, digest_size=12).hexdigest())
    return _embeddable(response, f"public, max-age={services().settings.counter_max_age}")
