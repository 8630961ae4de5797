"""The embeddable box: the widget script, its SVG twin for pages without JavaScript, and the
demo page at `/`."""

from __future__ import annotations

import hashlib

from flask import Blueprint, Flask, Response, current_app, render_template, request

from .. import counter_svg, widget_asset
from ..errors import ApiError
from ..services import services
from .counter import current_counter

bp = Blueprint("widget", __name__)

# /widget.js may change with a deploy: browsers revalidate it (ETag) every few minutes.
LATEST_CACHE = "public, max-age=300"
# /widget.v<hash>.js never changes: its URL changes instead.
VERSIONED_CACHE = "public, max-age=31536000, immutable"
# The demo page itself passes the strict policy a careful portal would set.
DEMO_CSP = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


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
    return response.make_conditional(request)


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


@bp.get("/")
def demo_page() -> Response:
    script = asset()
    html = render_template(
        "demo.html", widget_path=script.versioned_path, integrity=script.integrity
    )
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = DEMO_CSP
    response.headers["Cache-Control"] = "no-cache"
    return response
