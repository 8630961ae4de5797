"""Sites as an admin sees them: `GET /api/v1/sites` (every site, server token only) and
`GET /api/v1/sites/{site}` (one site's settings, its own token or the server token). The
dashboard's site picker, time zone and baseline form read these."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from ..app import services
from ..auth import authorise, authorise_server
from ..errors import ApiError
from ..sites import Site, display_origin

bp = Blueprint("site_settings", __name__, url_prefix="/api/v1/sites")


@bp.after_request
def _private(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    if response.status_code == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="analytics"'
    return response


def site_settings(site: Site) -> dict[str, object]:
    return {
        "id": site.id,
        "name": site.name,
        "timezone": site.timezone,
        # As browsers send them (and the site stores them), and as people read them.
        "origins": list(site.origins),
        "display_origins": [display_origin(o) for o in site.origins],
        "online_window_seconds": site.online_window,
        "baseline": {"visits": site.baseline_visits, "pageviews": site.baseline_pageviews},
    }


@bp.get("")
def list_sites() -> Response:
    svc = services()
    authorise_server(svc.engine, svc.settings.admin_token, request.headers.get("Authorization"))
    return jsonify({"sites": [site_settings(s) for s in svc.repo.list()]})


@bp.get("/<site_id>")
def get_site(site_id: str) -> Response:
    svc = services()
    authorise(svc.engine, svc.settings.admin_token, request.headers.get("Authorization"), site_id)
    site = svc.repo.get(site_id)
    if site is None:
        raise ApiError(404, "unknown_site", f"no site {site_id!r}")
    return jsonify(site_settings(site))
