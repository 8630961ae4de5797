"""The public counter: `GET /api/v1/sites/{site}/counter`, what the widget shows."""

from __future__ import annotations

import hashlib

from flask import Blueprint, Response, jsonify, request

from ..counters import Counter, read_restored
from ..errors import ApiError
from ..services import services
from ..sites import Site

bp = Blueprint("counter", __name__, url_prefix="/api/v1/sites")


def public_site(site_id: str) -> Site:
    site = services().sites.get(site_id)
    if site is None:
        raise ApiError(404, "unknown_site", f"no site {site_id!r}")
    return site


def _etag(counter: Counter) -> str:
    # Everything shown, but not `as_of`: a reader whose numbers have not changed gets 304.
    raw = (
        f"{counter.site.id}|{counter.site.timezone}|{counter.site.online_window}|"
        f"{counter.day}|{counter.online}|"
        f"{counter.today_visits}|{counter.today_pageviews}|{counter.today_visitors}|"
        f"{counter.total_visits}|{counter.total_pageviews}"
    )
    return hashlib.blake2b(raw.encode(), digest_size=12).hexdigest()


# The body and ETag last rendered per site, reused while the counter cache hands out the
# same Counter object (identity, so a fresh read is always rendered anew).
_rendered: dict[str, tuple[Counter, bytes, str]] = {}


def _render(counter: Counter) -> tuple[bytes, str]:
    last = _rendered.get(counter.site.id)
    if last is not None and last[0] is counter:
        return last[1], last[2]
    body = jsonify(counter.as_dict()).get_data()
    etag = _etag(counter)
    _rendered[counter.site.id] = (counter, body, etag)
    return body, etag


def current_counter(site_id: str) -> Counter:
    """The live numbers of a public site (404 if unknown), restored from history first when
    Redis has come back empty."""
    svc = services()
    return read_restored(svc.counters.read, svc.recovery, public_site(site_id), svc.clock())


@bp.get("/<site:site_id>/counter")
def get_counter(site_id: str) -> Response:
    svc = services()
    body, etag = _render(current_counter(site_id))
    # Every widget on every page reads this: the headers are built in one go, and the
    # conditional answer is the one check it needs (werkzeug's make_conditional also
    # handles dates and ranges, which this endpoint never has).
    headers = [
        # Weak: the bodies it stands for differ in `as_of`, not in what a reader sees.
        ("ETag", f'W/"{etag}"'),
        ("Cache-Control", f"public, max-age={svc.settings.counter_max_age}"),
        ("Access-Control-Allow-Origin", "*"),
    ]
    if request.if_none_match.contains_weak(etag):
        return Response(status=304, headers=headers)
    return Response(body, headers=headers, content_type="application/json")
