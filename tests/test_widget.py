"""The widget script as served, the SVG counter and the demo page (HTTP level; the browser
behaviour is in tests/browser/)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import re
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from analytics_service import widget_asset
from analytics_service.counter_svg import format_number

from .conftest import Browser

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "widget" / "widget.js"


@pytest.fixture
def asset() -> widget_asset.WidgetAsset:
    return widget_asset.load()


def test_widget_minified_and_gzipped_stays_under_4_kb(asset: widget_asset.WidgetAsset) -> None:
    size = len(gzip.compress(asset.body, compresslevel=9))
    assert size < 4096, f"widget.js is {size} bytes minified and gzipped"


def test_widget_source_uses_no_eval_no_function_constructor_and_no_html_sinks() -> None:
    source = SOURCE.read_text(encoding="utf-8")
    for forbidden in (
        r"\beval\s*\(",
        r"new\s+Function\b",
        r"innerHTML",
        r"outerHTML",
        r"insertAdjacentHTML",
        r"document\.write",
        r"\bimport\s*\(",
    ):
        assert not re.search(forbidden, source), forbidden


def test_the_package_serves_the_one_source_file_in_widget_dir(
    asset: widget_asset.WidgetAsset,
) -> None:
    assert asset == widget_asset.WidgetAsset.from_source(SOURCE.read_text(encoding="utf-8"))


def test_widget_js_has_a_short_cache_an_etag_cors_and_answers_304_when_unchanged(
    client: FlaskClient, asset: widget_asset.WidgetAsset
) -> None:
    response = client.get("/widget.js")
    assert response.status_code == 200
    assert response.data == asset.body
    assert response.content_type == "text/javascript; charset=utf-8"
    assert response.headers["Cache-Control"] == "public, max-age=300"
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    etag = response.headers["ETag"]
    again = client.get("/widget.js", headers={"If-None-Match": etag})
    assert (again.status_code, again.data) == (304, b"")


def test_widget_is_sent_gzipped_to_a_browser_that_accepts_it_with_its_own_etag(
    client: FlaskClient, asset: widget_asset.WidgetAsset
) -> None:
    plain = client.get("/widget.js")
    zipped = client.get("/widget.js", headers={"Accept-Encoding": "gzip, deflate, br"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(zipped.data) == asset.body
    assert "Accept-Encoding" in zipped.headers["Vary"]
    assert zipped.headers["ETag"] != plain.headers["ETag"]


def test_versioned_widget_url_is_immutable_for_a_year_and_matches_its_integrity_hash(
    client: FlaskClient, asset: widget_asset.WidgetAsset
) -> None:
    response = client.get(asset.versioned_path)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    digest = base64.b64encode(hashlib.sha384(response.data).digest()).decode()
    assert asset.integrity == f"sha384-{digest}"
    assert asset.version == hashlib.sha256(response.data).hexdigest()[:16]


def test_a_versioned_widget_url_of_another_version_is_404(client: FlaskClient) -> None:
    response = client.get("/widget.v0123456789abcdef.js")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "unknown_widget_version"


def test_readme_script_tag_names_the_current_version_and_its_integrity_hash(
    asset: widget_asset.WidgetAsset,
) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    tags = re.findall(r'<script async src="https://STATS-HOST/widget\.v\w+\.js"[^>]*>', readme)
    assert tags, "the README shows no versioned script tag"
    for tag in tags:
        assert asset.versioned_path in tag, "README tag is stale: paste the new one"
        assert f'integrity="{asset.integrity}"' in tag
        assert 'crossorigin="anonymous"' in tag


def test_demo_page_embeds_the_versioned_widget_under_a_strict_csp(
    client: FlaskClient, asset: widget_asset.WidgetAsset
) -> None:
    response = client.get("/")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert f'src="{asset.versioned_path}" integrity="{asset.integrity}"' in html
    assert "Thống kê truy cập" in html
    assert 'data-analytics-counter data-site="demo"' in html
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    with client.get("/static/demo.css") as stylesheet:
        assert stylesheet.status_code == 200


def test_numbers_are_grouped_with_dots_in_vietnamese_and_commas_in_english() -> None:
    assert format_number(30545, "vi") == "30.545"
    assert format_number(30545, "en") == "30,545"
    assert format_number(1234567, "vi") == "1.234.567"
    assert format_number(999, "vi") == "999"


def _svg(client: FlaskClient, query: str = "") -> str:
    response = client.get(f"/api/v1/sites/demo/counter.svg{query}")
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_data(as_text=True)


def test_counter_svg_draws_the_three_numbers_with_vietnamese_labels_by_default(
    client: FlaskClient, reader: Browser
) -> None:
    reader.hit("/")
    Browser(client, ip="198.51.100.4").hit("/")
    svg = _svg(client)
    assert svg.startswith('<svg xmlns="http://www.w3.org/2000/svg"')
    assert re.findall(r"<text[^>]*>([^<]*)</text>", svg) == [
        "Thống kê truy cập",
        "Đang online:",
        "2",
        "Hôm nay:",
        "2",
        "Đã truy cập:",
        "2",
    ]


def test_counter_svg_speaks_english_and_takes_hex_colours_from_the_query(
    client: FlaskClient,
) -> None:
    svg = _svg(client, "?lang=en&bg=000&fg=%23EEEEEE&title_bg=8a1c1c&title_fg=fff&border=123456")
    assert "Visitor statistics" in svg
    assert "Online now:" in svg
    assert 'fill="#000"' in svg
    assert 'fill="#eeeeee"' in svg
    assert 'fill="#8a1c1c"' in svg
    assert 'stroke="#123456"' in svg


@pytest.mark.parametrize(
    "query",
    [
        "?bg=red",
        '?bg=fff"/><script>alert(1)</script>',
        "?title_fg=12345",
        "?border=url(%23x)",
        "?lang=fr",
        "?lang=<b>",
    ],
)
def test_counter_svg_refuses_anything_but_hex_colours_and_known_languages(
    client: FlaskClient, query: str
) -> None:
    response = client.get(f"/api/v1/sites/demo/counter.svg{query}")
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] in {"bad_colour", "bad_lang"}


def test_counter_svg_is_public_briefly_cached_and_revalidated_per_query(
    client: FlaskClient, reader: Browser
) -> None:
    response = client.get("/api/v1/sites/demo/counter.svg")
    assert response.content_type == "image/svg+xml; charset=utf-8"
    assert response.headers["Cache-Control"] == "public, max-age=5"
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    # The server's to send: the app's own came out as a second one under Werkzeug's server
    # (tests/test_make_run.py reads that server's bytes).
    assert "Date" not in response.headers
    etag = response.headers["ETag"]
    assert (
        client.get("/api/v1/sites/demo/counter.svg", headers={"If-None-Match": etag}).status_code
        == 304
    )
    # Another style is another image: the old ETag must not validate it.
    english = client.get("/api/v1/sites/demo/counter.svg?lang=en", headers={"If-None-Match": etag})
    assert english.status_code == 200
    reader.hit("/")
    changed = client.get("/api/v1/sites/demo/counter.svg", headers={"If-None-Match": etag})
    assert changed.status_code == 200


def test_counter_svg_of_an_unknown_site_is_404(client: FlaskClient) -> None:
    response = client.get("/api/v1/sites/nosuch/counter.svg")
    assert response.status_code == 404


@pytest.mark.parametrize("path", ["/widget.js", "VERSIONED", "/api/v1/sites/demo/counter.svg"])
def test_an_if_match_naming_another_etag_is_a_412_refusal_that_no_cache_keeps(
    client: FlaskClient, asset: widget_asset.WidgetAsset, path: str
) -> None:
    path = asset.versioned_path if path == "VERSIONED" else path
    refused = client.get(path, headers={"If-Match": '"another"'})
    assert refused.status_code == 412
    # Not the script or the image under their public max-age: a shared cache that kept
    # this answer would serve it to every page, and a browser runs no script answered 412.
    assert refused.headers["Cache-Control"] == "no-store"
    assert refused.get_json()["error"]["code"] == "precondition_failed"
    etag = client.get(path).headers["ETag"]
    assert client.get(path, headers={"If-Match": etag}).status_code == 200
