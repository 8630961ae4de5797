"""The admin statistics API: `/api/v1/sites/{site}/stats|pages|referrers|export.csv`,
`POST .../import` and `PUT .../baseline`. Every request needs a Bearer token (auth.py)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from ..auth import authorise
from ..errors import ApiError
from ..history import IMPORT, ROLLUP, Ranking
from ..imports import ImportRejected, csv_body, parse_csv
from ..ingest import MAX_BODY_BYTES, parse_payload
from ..params import Baseline, ExportParams, StatsParams, TopParams, parse_body
from ..services import Services, services
from ..sites import Site, SiteNotFound, SiteRepository, unicode_host
from ..sitetime import UnloadableZone, local_date
from ..stats import StatsQuery, export_csv, series, totals
from .body import read_body
from .private import private

bp = Blueprint("admin", __name__, url_prefix="/api/v1/sites")
bp.after_request(private)

MAX_IMPORT_BYTES = 4 * 1024 * 1024
# A form around the file (the dashboard's, `curl -F`): its boundaries and part headers.
FORM_ENVELOPE_BYTES = 64 * 1024


def _site(site_id: str) -> tuple[Services, Site, datetime]:
    """Authorised site, before anything else is looked at: 401/403 come before 400/404."""
    svc = services()
    authorise(svc.engine, svc.settings.admin_token, request.headers.get("Authorization"), site_id)
    return svc, stored_site(svc.repo, site_id), svc.clock()


def stored_site(repo: SiteRepository, site_id: str) -> Site:
    """The site, or 404: also for a site stored under a zone this host cannot load, left
    out as lists, the jobs and its counter leave it out, with why and the remedy (every
    admin request of it was a 500 with a traceback)."""
    try:
        site = repo.get(site_id)
    except UnloadableZone as exc:
        raise ApiError(
            404,
            "unknown_site",
            f"site {site_id!r} is left out: {exc}; `analytics-service site update {site_id} "
            "--timezone NAME` alone gives it a zone this host has",
        ) from None
    if site is None:
        raise ApiError(404, "unknown_site", f"no site {site_id!r}")
    return site


def _range(site: Site, query: StatsQuery) -> dict[str, object]:
    return {
        "site": site.id,
        "timezone": site.timezone,
        "from": query.start.isoformat(),
        "to": query.end.isoformat(),
    }


@bp.get("/<site:site_id>/stats")
def get_stats(site_id: str) -> Response:
    svc, site, now = _site(site_id)
    query = StatsQuery.parse(request.args, local_date(now, site.tz), StatsParams)
    daily = svc.stats.daily(site, query, now)
    return jsonify(
        {
            **_range(site, query),
            "interval": query.interval,
            "totals": totals(daily, query),
            "series": series(daily, query),
        }
    )


def _top(
    site_id: str, ranking: Ranking, amount: str, row: Callable[[str, int], dict[str, object]]
) -> Response:
    svc, site, now = _site(site_id)
    query = StatsQuery.parse(request.args, local_date(now, site.tz), TopParams)
    ranked = svc.stats.top(ranking, site, query, now)
    # What a row's share is of: the period's total over its days with pages and referrers
    # (an imported day has neither, and would make every share look smaller).
    out_of = totals(svc.stats.counted(site, query, now), query)[amount]
    return jsonify(
        {**_range(site, query), amount: out_of, ranking.value: [row(k, v) for k, v in ranked]}
    )


@bp.get("/<site:site_id>/pages")
def get_pages(site_id: str) -> Response:
    return _top(site_id, Ranking.PAGES, "pageviews", lambda path, n: {"path": path, "pageviews": n})


@bp.get("/<site:site_id>/referrers")
def get_referrers(site_id: str) -> Response:
    # Hosts are kept as browsers send them (punycode); people read them in Unicode.
    return _top(
        site_id,
        Ranking.REFERRERS,
        "visits",
        lambda host, n: {"host": host, "display_host": unicode_host(host), "visits": n},
    )


@bp.get("/<site:site_id>/export.csv")
def get_export(site_id: str) -> Response:
    svc, site, now = _site(site_id)
    query = StatsQuery.parse(request.args, local_date(now, site.tz), ExportParams)
    body = export_csv(svc.stats.daily(site, query, now), query)
    response = Response(body, mimetype="text/csv")
    response.headers["Content-Disposition"] = (
        f'attachment; filename="{site.id}-{query.start}-{query.end}.csv"'
    )
    return response


@bp.post("/<site:site_id>/import")
def post_import(site_id: str) -> Response:
    svc, site, now = _site(site_id)
    today = local_date(now, site.tz)
    too_large = f"the file is over {MAX_IMPORT_BYTES // 2**20} MiB"
    body = read_body(MAX_IMPORT_BYTES + FORM_ENVELOPE_BYTES, too_large)
    upload = csv_body(body, request.mimetype, request.mimetype_params)
    if len(upload) > MAX_IMPORT_BYTES:
        raise RequestEntityTooLarge(too_large)
    days = parse_csv(upload, svc.rollup.last_due_day(site, now))
    # Recent days this service counted that are not rolled up yet (scheduler behind) must
    # not be overwritten either. An imported day may be imported again: hits a worker
    # wrote to it after its import never replace it (rollup.Rollup.close_day).
    sources = svc.history.sources(site.id, days)
    imported = {d for d, source in sources.items() if source == IMPORT}
    counted = {d for d, source in sources.items() if source == ROLLUP}
    counted |= svc.store.days_held(site, days, today) - imported
    if counted:
        raise ImportRejected(
            [
                f"line {days[d][0]}: {d} holds this service's own counts"
                for d in sorted(counted, key=lambda d: days[d][0])
            ]
        )
    svc.history.import_days(site.id, {d: c for d, (_, c) in days.items()}, now)
    first: date = min(days)
    last: date = max(days)
    return jsonify({"site": site.id, "imported": len(days), "from": str(first), "to": str(last)})


@bp.put("/<site:site_id>/baseline")
def put_baseline(site_id: str) -> Response:
    """What the old counter had reached: added to the total the counter shows."""
    svc, site, now = _site(site_id)
    body = parse_body(Baseline, parse_payload(read_body(MAX_BODY_BYTES)))
    try:
        visits, pageviews = svc.repo.set_baseline(
            site.id, now, visits=body.visits, pageviews=body.pageviews
        )
    except SiteNotFound:  # deleted since it was read
        raise ApiError(404, "unknown_site", f"no site {site_id!r}") from None
    # This worker at once; the others within ANALYTICS_SITE_CACHE_SECONDS.
    svc.sites.forget(site.id)
    return jsonify({"site": site.id, "baseline": {"visits": visits, "pageviews": pageviews}})
