"""The dashboard's server side: its pages and their headers, the sites API, imports as a
browser form sends them, and the shipped chart library. (The page in a browser is in
tests/browser/test_dashboard_browser.py.)"""

from __future__ import annotations

import hashlib
import re
import urllib.request
from dataclasses import dataclass, field, replace
from io import BytesIO
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from analytics_service.app import create_app
from analytics_service.config import Settings

from .conftest import FrozenClock, HistoryEnv
from .stack import gunicorn as _gunicorn
from .test_admin import ADMIN

ROOT = Path(__file__).resolve().parents[1]
UPLOT = ROOT / "analytics_service" / "static" / "vendor" / "uplot"
LHH = "https://liênhiệphội.vn"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_the_dashboard_page_is_served_under_a_strict_policy(client: FlaskClient) -> None:
    response = client.get("/admin")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    csp = dict(
        d.strip().split(" ", 1) for d in response.headers["Content-Security-Policy"].split(";")
    )
    assert csp["default-src"] == "'self'"
    assert csp["script-src"] == "'self'" and csp["style-src"] == "'self'"
    assert csp["frame-ancestors"] == "'none'"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    html = response.get_data(as_text=True)
    # No inline script or style, nothing from another host.
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    assert "<style" not in html and " style=" not in html
    assert not re.search(r"""(?:src|href)=["']?(?:https?:)?//""", html)
    assets = re.findall(r"""(?:src|href)="(/static/[^"]+)""", html)
    assert len(assets) >= 3, assets  # the stylesheet, the chart library, the page's module
    for asset in assets:
        with client.get(asset) as served:
            assert served.status_code == 200, asset


def test_every_dashboard_module_is_served_as_javascript_and_uses_no_html_sinks(
    client: FlaskClient,
) -> None:
    modules = sorted((ROOT / "analytics_service" / "static" / "admin").glob("*.js"))
    assert len(modules) > 5
    for module in modules:
        with client.get(f"/static/admin/{module.name}") as response:
            assert response.status_code == 200
            assert response.mimetype == "text/javascript", module.name
        source = module.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in source, (module.name, sink)
        for imported in re.findall(r'from "\./([\w-]+\.js)"', source):
            assert (module.parent / imported).is_file(), (module.name, imported)


def test_in_production_the_home_page_links_to_the_dashboard_instead_of_a_demo(
    settings: Settings, clock: FrozenClock, site_token: str
) -> None:
    app = create_app(replace(settings, demo_page=False), clock=clock)
    try:
        response = app.test_client().get("/")
        html = response.get_data(as_text=True)
        assert response.status_code == 200
        assert 'href="/admin"' in html
        assert "data-analytics-counter" not in html and "widget" not in html
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    finally:
        app.extensions["analytics"].close()


def test_the_demo_snippet_takes_the_public_url_from_configuration_never_the_host_header(
    settings: Settings, clock: FrozenClock, site_token: str
) -> None:
    app = create_app(replace(settings, public_url="https://stats.lhh.example"), clock=clock)
    try:
        html = app.test_client().get("/", headers={"Host": "evil.example"}).get_data(as_text=True)
        assert 'src="https://stats.lhh.example/widget.v' in html
        assert "evil.example" not in html
    finally:
        app.extensions["analytics"].close()


def test_without_a_public_url_the_snippet_shows_a_placeholder(client: FlaskClient) -> None:
    html = client.get("/", headers={"Host": "evil.example"}).get_data(as_text=True)
    assert "https://STATS-HOST/widget.v" in html
    assert "evil.example" not in html


def test_the_favicon_is_an_icon_cached_for_a_day(client: FlaskClient) -> None:
    response = client.get("/favicon.ico")
    assert response.status_code == 200
    assert response.mimetype == "image/vnd.microsoft.icon"
    assert response.data[:4] == b"\x00\x00\x01\x00"  # the ICO header
    assert response.headers["Cache-Control"] == "public, max-age=86400"
    again = client.get("/favicon.ico", headers={"If-None-Match": response.headers["ETag"]})
    assert again.status_code == 304


def test_a_sites_numbers_begin_at_its_creation_or_its_imported_historys_first_day(
    history_env: HistoryEnv, clock: FrozenClock
) -> None:
    """What the dashboard compares a period with: a previous period that begins before the
    site's numbers would count days never counted here as days without visits."""
    history_env.add_site("hue", "America/New_York", clock())  # 2026-11-27 22:00 there
    c = history_env.client
    for path in ("/api/v1/sites/hue", "/api/v1/sites"):
        listed = c.get(path, headers=auth(ADMIN)).get_json()
        sites = {s["id"]: s for s in listed.get("sites", [listed])}
        assert sites["hue"]["history_from"] == "2026-11-27"
    imported = c.post(
        "/api/v1/sites/hue/import",
        data=b"2019-03-04,5,9,5\n2020-01-01,1,1,1\n",
        headers={**auth(ADMIN), "Content-Type": "text/csv"},
    )
    assert imported.status_code == 200, imported.get_json()
    for path in ("/api/v1/sites/hue", "/api/v1/sites"):
        listed = c.get(path, headers=auth(ADMIN)).get_json()
        sites = {s["id"]: s for s in listed.get("sites", [listed])}
        assert sites["hue"]["history_from"] == "2019-03-04"
        assert sites.get("demo", {"history_from": "2026-11-28"})["history_from"] == "2026-11-28"


def test_the_server_token_lists_every_site_with_unicode_origins_shown(
    history_env: HistoryEnv, clock: FrozenClock
) -> None:
    other = history_env.add_site("lhh", "Asia/Bangkok", clock())
    svc = history_env.services
    lhh = svc.repo.require("lhh")
    svc.repo.update(replace(lhh, origins=("https://xn--linhiphi-l1a7657ezfa.vn",)), clock())
    c = history_env.client
    listed = c.get("/api/v1/sites", headers=auth(ADMIN))
    assert listed.status_code == 200
    assert listed.headers["Cache-Control"] == "no-store"
    sites = listed.get_json()["sites"]
    assert [s["id"] for s in sites] == ["demo", "lhh"]
    assert sites[1] == {
        "id": "lhh",
        "name": "lhh",
        "timezone": "Asia/Bangkok",
        "origins": ["https://xn--linhiphi-l1a7657ezfa.vn"],
        "display_origins": [LHH],
        "online_window_seconds": 300,
        "baseline": {"visits": 0, "pageviews": 0},
        "history_from": "2026-11-28",
    }
    # A site's token reads only its own site; no token, or a wrong one, nothing.
    refused = c.get("/api/v1/sites", headers=auth(other))
    assert refused.status_code == 403
    assert "server token" in refused.get_json()["error"]["message"]
    for headers in ({}, auth("wrong")):
        response = c.get("/api/v1/sites", headers=headers)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_one_sites_settings_need_its_token_or_the_server_token(
    history_env: HistoryEnv, clock: FrozenClock
) -> None:
    other = history_env.add_site("other", "Asia/Ho_Chi_Minh", clock())
    c = history_env.client
    for token in (history_env.token, ADMIN):
        response = c.get("/api/v1/sites/demo", headers=auth(token))
        assert response.status_code == 200
        assert response.get_json()["timezone"] == "Asia/Ho_Chi_Minh"
        assert response.headers["Cache-Control"] == "no-store"
    assert c.get("/api/v1/sites/demo", headers=auth(other)).status_code == 403
    assert c.get("/api/v1/sites/demo").status_code == 401
    assert c.get("/api/v1/sites/ghost", headers=auth(ADMIN)).status_code == 404


@dataclass(frozen=True)
class PrivateRoute:
    """A route whose answers carry a site's numbers or settings, or what a token opens."""

    method: str
    path: str  # {site}: the site's id
    good: dict[str, object] = field(default_factory=dict)  # the test client's arguments
    bad: dict[str, object] | None = None  # arguments it refuses with a 400


BAD_DATES = {"query_string": {"from": "yesterday"}}
PRIVATE_ROUTES = [
    PrivateRoute("GET", "/api/v1/token"),
    PrivateRoute("GET", "/api/v1/sites"),
    PrivateRoute("GET", "/api/v1/sites/{site}"),
    PrivateRoute("GET", "/api/v1/sites/{site}/stats", bad=BAD_DATES),
    PrivateRoute("GET", "/api/v1/sites/{site}/pages", bad=BAD_DATES),
    PrivateRoute("GET", "/api/v1/sites/{site}/referrers", bad=BAD_DATES),
    PrivateRoute("GET", "/api/v1/sites/{site}/export.csv", bad=BAD_DATES),
    PrivateRoute(
        "POST",
        "/api/v1/sites/{site}/import",
        good={"data": "2025-01-01,1,1,1\n", "content_type": "text/csv"},
        bad={"data": "2025-01-01,many\n", "content_type": "text/csv"},
    ),
    PrivateRoute(
        "PUT",
        "/api/v1/sites/{site}/baseline",
        good={"json": {"visits": 5}},
        bad={"json": {"visits": -1}},
    ),
]


@pytest.mark.parametrize("route", PRIVATE_ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_no_answer_of_a_route_that_carries_data_may_be_stored_not_even_an_error(
    history_env: HistoryEnv, clock: FrozenClock, route: PrivateRoute
) -> None:
    other = history_env.add_site("other", "Asia/Ho_Chi_Minh", clock())

    def call(token: str | None, site: str = "demo", **kwargs: object):  # type: ignore[no-untyped-def]
        return history_env.client.open(
            route.path.format(site=site),
            method=route.method,
            headers=auth(token) if token else {},
            **(kwargs or route.good),
        )

    # A browser's or a proxy's cache must not keep a refusal either: a 404 says which
    # sites exist, a 400 repeats what was sent.
    answers = [(200, call(ADMIN)), (401, call(None)), (401, call("wrong"))]
    if "{site}" in route.path:
        answers += [(403, call(other)), (404, call(ADMIN, site="ghost"))]
    elif route.path == "/api/v1/sites":
        answers.append((403, call(history_env.token)))
    if route.bad is not None:
        answers.append((400, call(ADMIN, **route.bad)))
    # Refused by the routing itself, before the route's blueprint is reached.
    unrouted = route.path.format(site="demo") + "/nothing-here"
    answers.append((404, history_env.client.get(unrouted, headers=auth(ADMIN))))
    answers.append((405, history_env.client.open(route.path.format(site="demo"), method="TRACE")))
    for status, response in answers:
        assert response.status_code == status, response.get_data(as_text=True)
        assert response.headers.get("Cache-Control") == "no-store", status


def _import(env: HistoryEnv, **kwargs: object):  # type: ignore[no-untyped-def]
    return env.client.post("/api/v1/sites/demo/import", headers=auth(env.token), **kwargs)


def _visits(env: HistoryEnv, day: str) -> int:
    stats = env.client.get(
        f"/api/v1/sites/demo/stats?from={day}&to={day}", headers=auth(env.token)
    ).get_json()
    return stats["totals"]["visits"]


def test_a_file_sent_as_a_text_field_that_is_not_utf8_gets_the_advice_a_file_part_gets(
    history_env: HistoryEnv,
) -> None:
    """`curl -F 'file=<days.csv'` of a file a spreadsheet saved in its own code page: it was
    refused for its columns, where a file part gets how to save it as UTF-8."""
    saved = "Ngày,visits,pageviews,visitors\n2025-01-01,120,310,97\n".encode("cp1258")
    body = b'--b\r\nContent-Disposition: form-data; name="file"\r\n\r\n' + saved + b"\r\n--b--\r\n"
    response = _import(history_env, data=body, content_type="multipart/form-data; boundary=b")
    assert response.status_code == 400
    message = response.get_json()["error"]["message"]
    assert (
        message
        == 'nothing imported: the file is not UTF-8 text: save it as "CSV UTF-8" and import that'
    )


def test_an_import_takes_the_file_part_of_a_multipart_form(history_env: HistoryEnv) -> None:
    csv = b"date,visits,pageviews,visitors\r\n2025-01-01,10,30,9\r\n"
    response = _import(
        history_env,
        data={"file": (BytesIO(csv), "days.csv", "text/csv")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["imported"] == 1
    assert _visits(history_env, "2025-01-01") == 10


def test_an_import_reads_semicolon_separated_files_as_spreadsheets_save_them(
    history_env: HistoryEnv,
) -> None:
    body = "\ufeffdate;visits;pageviews;visitors\r\n2025-01-01;10;30;9\r\n2025-01-02;1;2;1\r\n"
    response = _import(history_env, data=body.encode(), content_type="text/csv")
    assert response.status_code == 200, response.get_json()
    assert _visits(history_env, "2025-01-01") == 10


def test_a_rejected_import_lists_every_bad_line_in_details_and_writes_nothing(
    history_env: HistoryEnv,
) -> None:
    lines = ["2025-01-01,1,1,1"] + [f"2025-02-{d:02},x,1,1" for d in range(1, 13)]
    response = _import(history_env, data="\n".join(lines).encode(), content_type="text/csv")
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "invalid_csv"
    assert len(error["details"]) == 12
    assert error["details"][0] == "line 2: visits 'x' is not a whole number >= 0"
    assert error["details"][-1].startswith("line 13: ")
    assert error["message"].endswith("; and 2 more")
    assert _visits(history_env, "2025-01-01") == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        # curl -d @days.csv: form-encoded, the line breaks gone.
        (
            {
                "data": "date,visits,pageviews,visitors2025-01-01,1,1,1",
                "content_type": "application/x-www-form-urlencoded",
            },
            "--data-binary @days.csv",
        ),
        ({"data": {"note": "no file"}, "content_type": "multipart/form-data"}, "0 files, not one"),
        # curl -F file=@a.csv -F file=@b.csv: two files under one name.
        (
            {
                # Made for each run: a file part is read and closed by the first.
                "data": lambda: {
                    "file": [
                        (BytesIO(b"2025-01-01,1,1,1\n"), "a.csv"),
                        (BytesIO(b"2025-01-02,1,1,1\n"), "b.csv"),
                    ]
                },
                "content_type": "multipart/form-data",
            },
            "2 files, not one",
        ),
    ],
)
def test_an_import_sent_the_wrong_way_says_what_to_send(
    history_env: HistoryEnv, kwargs: dict, message: str
) -> None:
    response = _import(history_env, **{k: v() if callable(v) else v for k, v in kwargs.items()})
    assert response.status_code == 400
    assert message in response.get_json()["error"]["message"]
    assert _visits(history_env, "2025-01-01") == 0


def test_two_files_sent_as_text_fields_under_one_name_are_refused_not_one_dropped(
    history_env: HistoryEnv,
) -> None:
    """curl -F 'file=<a.csv' -F 'file=<b.csv' sends each file as a text field named file:
    the import took the first and answered 200, and b.csv was dropped without a word (two
    file parts under one name are refused)."""
    form = (
        b'--b0undary\r\nContent-Disposition: form-data; name="file"\r\n\r\n'
        b"2025-01-01,10,30,9\n"
        b'\r\n--b0undary\r\nContent-Disposition: form-data; name="file"\r\n\r\n'
        b"2025-01-02,10,30,9\n"
        b"\r\n--b0undary--\r\n"
    )
    response = _import(
        history_env, data=form, content_type="multipart/form-data; boundary=b0undary"
    )
    assert response.status_code == 400, response.get_json()
    assert "2 files, not one" in response.get_json()["error"]["message"]
    assert _visits(history_env, "2025-01-01") == 0


def test_a_file_curl_sends_with_data_binary_and_no_content_type_is_imported(
    history_env: HistoryEnv,
) -> None:
    """curl labels --data-binary @days.csv as a form, but keeps the file's line breaks."""
    response = _import(
        history_env,
        data=b"2025-01-01,7,8,6\r\n2025-01-02,1,1,1\r\n",
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 200, response.get_json()
    assert _visits(history_env, "2025-01-01") == 7


@pytest.mark.parametrize("data", [b"2025-01-01,7,8,6", b"\xef\xbb\xbf2025-01-01;7;8;6"])
def test_a_one_day_file_without_a_line_break_sent_as_a_form_is_imported(
    history_env: HistoryEnv, data: bytes
) -> None:
    """A file of one day whose last line has no line break (as an editor or a script may
    write it), sent as the README says (curl --data-binary @days.csv, which labels it a
    form) or with -d: nothing was lost, and it was refused as a file whose line breaks were."""
    response = _import(history_env, data=data, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 200, response.get_json()
    assert _visits(history_env, "2025-01-01") == 7


def test_the_shipped_uplot_files_are_the_pinned_release_unchanged() -> None:
    header, *files = (UPLOT / "MANIFEST").read_text().splitlines()
    name, version, integrity = header.split()
    makefile = (ROOT / "Makefile").read_text()
    assert name == "uplot"
    assert f"UPLOT_VERSION ?= {version}" in makefile
    assert f"UPLOT_INTEGRITY ?= {integrity}" in makefile
    listed = {}
    for line in files:
        digest, filename = line.split()
        listed[filename] = digest
        assert hashlib.sha256((UPLOT / filename).read_bytes()).hexdigest() == digest, filename
    assert set(listed) == {"uPlot.iife.min.js", "uPlot.min.css", "LICENSE"}
    assert f"(v{version})" in (UPLOT / "uPlot.iife.min.js").read_text()[:200]
    assert "MIT License" in (UPLOT / "LICENSE").read_text()


def test_the_package_data_ships_the_dashboard_files(app: Flask) -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    static = Path(app.static_folder or "")
    for folder in {p.parent for p in static.rglob("*") if p.is_file()}:
        pattern = f'"{folder.relative_to(static.parent).as_posix()}/*"'
        assert pattern in pyproject, pattern


def test_gunicorn_serves_the_landing_page_at_the_root_and_the_dashboard_at_admin(
    settings: Settings, site_token: str, tmp_path: Path
) -> None:
    with _gunicorn(settings, tmp_path / "gunicorn.log", GUNICORN_WORKERS="1") as port:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            home = response.read().decode()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/admin", timeout=5) as response:
            dashboard = response.read().decode()
    assert 'href="/admin"' in home and "data-analytics-counter" not in home
    assert 'id="sign-in-form"' in dashboard


def test_an_import_takes_a_form_field_named_file_too(history_env: HistoryEnv) -> None:
    # curl -F 'file=<days.csv' sends the file's text as a plain field.
    response = _import(
        history_env,
        data={"file": "2025-01-02,7,8,6\n"},
        content_type="multipart/form-data",
    )
    assert response.status_code == 200, response.get_json()
    assert _visits(history_env, "2025-01-02") == 7
