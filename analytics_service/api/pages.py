"""The HTML pages: `/` (the demo portal page under `make run`, a landing page that links to
the dashboard otherwise), `/admin` (the statistics dashboard) and `/favicon.ico`.

The pages carry no data: the dashboard's scripts read the admin API with the token the
person pasted, so the HTML itself can be cached and holds nothing secret.
"""

from __future__ import annotations

import hashlib
from importlib import resources

from flask import Blueprint, Response, render_template, request

from ..services import services
from .widget import asset

bp = Blueprint("pages", __name__)

# Scripts, styles and requests only from the service itself; no inline code of any kind.
DASHBOARD_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
# The demo page passes the strict policy a careful portal would set.
DEMO_CSP = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# What the snippet shows when no public URL is configured (never the request's Host).
PLACEHOLDER_URL = "https://STATS-HOST"
FAVICON_CACHE = "public, max-age=86400"
# Read once: browsers ask for it with nearly every page.
FAVICON = resources.files("analytics_service").joinpath("static/favicon.ico").read_bytes()
FAVICON_ETAG = hashlib.blake2b(FAVICON, digest_size=12).hexdigest()


def _page(html: str, csp: str) -> Response:
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = csp
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.get("/")
def home() -> Response:
    settings = services().settings
    if not settings.demo_page:
        return _page(render_template("landing.html"), DASHBOARD_CSP)
    script = asset()
    html = render_template(
        "demo.html",
        public_url=settings.public_url or PLACEHOLDER_URL,
        widget_path=script.versioned_path,
        integrity=script.integrity,
    )
    return _page(html, DEMO_CSP)


@bp.get("/admin")
def dashboard() -> Response:
    return _page(render_template("admin.html"), DASHBOARD_CSP)


@bp.get("/favicon.ico")
def favicon() -> Response:
    response = Response(FAVICON, mimetype="image/vnd.microsoft.icon")
    response.headers["Cache-Control"] = FAVICON_CACHE
    response.set_etag(FAVICON_ETAG)
    return response.make_conditional(request)
