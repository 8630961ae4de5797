"""What an admin's token opens, for the dashboard's sign-in and site picker:
`GET /api/v1/token` (the server's or which site's), `GET /api/v1/sites` (every site, the
server token only) and `GET /api/v1/sites/{site}` (one site's settings)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime

from flask import Blueprint, Response, jsonify, request

from ..auth import authorise, authorise_server, token_site
from ..services import services
from ..sites import Site, display_origin
from ..sitetime import local_date
from .admin import stored_site
from .private import private

bp = Blueprint("access", __name__, url_prefix="/api/v1")
bp.after_request(private)


def _authorization() -> str | None:
    return request.headers.get("Authorization")


def site_settings(site: Site, first_stored: date | None) -> dict[str, object]:
    created = local_date(datetime.fromtimestamp(site.created, UTC), site.tz)
    return {
        "id": site.id,
        "name": site.name,
        "timezone": site.timezone,
        # As browsers send them (and the site stores them), and as people read them.
        "origins": list(site.origins),
        "display_origins": [display_origin(o) for o in site.origins],
        "online_window_seconds": site.online_window,
        "baseline": {"visits": site.baseline_visits, "pageviews": site.baseline_pageviews},
        # The first day the site has numbers for: its creation, or an imported history's
        # first day. A period before it is not a period without visits.
        "history_from": min(created, first_stored or created).isoformat(),
    }


def _settings(sites: Sequence[Site]) -> list[dict[str, object]]:
    first = services().history.first_days(s.id for s in sites)
    return [site_settings(s, first.get(s.id)) for s in sites]


@bp.get("/token")
def get_token() -> Response:
    svc = services()
    site = token_site(svc.engine, svc.settings.admin_token, _authorization())
    return jsonify({"scope": "server"} if site is None else {"scope": "site", "site": site})


@bp.get("/sites")
def list_sites() -> Response:
    svc = services()
    authorise_server(svc.engine, svc.settings.admin_token, _authorization())
    return jsonify({"sites": _settings(svc.repo.list())})


@bp.get("/sites/<site:site_id>")
def get_site(site_id: str) -> Response:
    svc = services()
    authorise(svc.engine, svc.settings.admin_token, _authorization(), site_id)
    return jsonify(_settings([stored_site(svc.repo, site_id)])[0])
