"""The public counter: `GET /api/v1/sites/{site}/counter`, what the widget shows."""

from __future__ import annotations

import hashlib

from flask import Blueprint, Response, jsonify, request

from ..app import services
from ..counters import Counter, read_counter
from ..errors import ApiError
from ..sites import Site

bp = Blueprint("counter", __name__, url_prefix="/api/v1/sites")


def public_site(site_id: str) -> Site:
    site = services().sites.get(site_id)
    if site is None:
        raise ApiError(404, "unknown_site", f"no site {site_id!r}")
    return site


def _etag(counter: Counter) -> str:
    # Every number shown, but not `as_of`: a reader whose numbers have not changed gets 304.
    raw = (
        f"{counter.site.id}|{counter.site.online_window}|{counter.day}|{counter.online}|"
        f"{counter.today_visits}|{counter.today_pageviews}|{counter.today_visitors}|"
        f"{counter.total_visits}|{counter.total_pageviews}"
    )
    return hashlib.blake2b(raw.encode(), digest_size=12).hexdigest()


def current_counter(site_id: str) -> Counter:
    """The live numbers of a public site (404 if unknown), restored from history first when
    Redis has come back empty."""
    svc = services()
    site, now = public_site(site_id), svc.clock()
    counter = read_counter(svc.scripts.counter, site, now)
    if not counter.restored:
        # Redis came back empty (or the site is new): put its history back once, read again.
        svc.recovery.restore(site, now)
        counter = read_counter(svc.scripts.counter, site, now)
    return counter


@bp.get("/<site_id>/counter")
def get_counter(site_id: str) -> Response:
    svc = services()
    counter = current_counter(site_id)
    response = jsonify(counter.as_dict())
    response.set_etag(_etag(counter))
    response.headers["Cache-Control"] = f"public, max-age={svc.settings.counter_max_age}"
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response.make_conditional(request)
