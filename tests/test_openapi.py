"""The OpenAPI 3.1 document: it is valid, real responses match it, and a bounded
schemathesis run over it with every check (valid and invalid data) finds no server error
and no disagreement between the document and the service.

The same run from the command line, against a running service with a site `demo` (the
settings and hooks are in schemathesis.toml and tests/schemathesis_hooks.py):

    ANALYTICS_ADMIN_TOKEN=... schemathesis run http://127.0.0.1:8000/api/v1/openapi.json \
        --checks all --mode all -n 300 --seed 1
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.config import SchemathesisConfig
from werkzeug.test import TestResponse

from analytics_service import widget_asset
from analytics_service.app import create_app
from analytics_service.config import Settings
from analytics_service.openapi import document
from analytics_service.params import FIRST_DATE, LAST_DATE

from . import schemathesis_hooks  # noqa: F401  (registers the hooks and a serializer)
from .conftest import PORTAL, Browser, FrozenClock, HistoryEnv
from .test_admin import ADMIN, week  # noqa: F401  (a fixture)
from .test_rollup import HANOI, at

CONFIG = Path(__file__).parent.parent / "schemathesis.toml"
# Per operation and test; the coverage phase's deterministic cases come on top.
MAX_EXAMPLES = 20
FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def test_the_document_is_openapi_3_1_and_every_schema_is_valid_json_schema() -> None:
    doc = document()
    assert doc["openapi"] == "3.1.0"
    for schema in doc["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)


def test_the_documented_date_pattern_is_the_date_range_the_service_takes() -> None:
    stats = document()["paths"]["/api/v1/sites/{site}/stats"]["get"]["parameters"]
    pattern = re.compile(next(p for p in stats if p["name"] == "from")["schema"]["pattern"])
    day = timedelta(days=1)
    for value, taken in [
        (FIRST_DATE, True),
        (FIRST_DATE - day, False),
        (LAST_DATE, True),
        (LAST_DATE + day, False),
    ]:
        assert bool(pattern.fullmatch(value.isoformat())) is taken, value


def test_every_route_of_the_app_is_in_the_document(app: Flask) -> None:
    documented = {
        (path, method.upper()) for path, ops in document()["paths"].items() for method in ops
    }
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule).replace("{site_id}", "{site}")
        served |= {(path, m) for m in rule.methods - {"HEAD", "OPTIONS"}}
        if "OPTIONS" in rule.methods and rule.endpoint.endswith("preflight_hit"):
            served.add((path, "OPTIONS"))
    assert served == documented


def _validate(path: str, method: str, response: TestResponse) -> None:
    doc = document()
    operation = doc["paths"][path][method]
    documented = operation["responses"][str(response.status_code)]
    if "content" not in documented:
        assert not response.data
        return
    media = documented["content"]
    assert response.mimetype in media, (path, response.mimetype)
    if response.mimetype == "application/json":
        schema = {**media["application/json"]["schema"], "components": doc["components"]}
        jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(
            response.get_json()
        )


def test_real_responses_match_the_documented_schemas(week: HistoryEnv) -> None:  # noqa: F811
    c = week.client
    auth = {"Authorization": f"Bearer {week.token}"}
    stats = "/api/v1/sites/{site}/stats"
    cases: list[tuple[str, str, TestResponse]] = [
        ("/api/v1/hit", "post", Browser(c).hit("/x")),
        ("/api/v1/hit", "post", c.post("/api/v1/hit", data="{}", content_type="text/plain")),
        ("/api/v1/hit", "post", Browser(c).hit("/x", site="ghost", expect=404)),
        ("/api/v1/hit", "options", c.options("/api/v1/hit", headers={"Origin": PORTAL})),
        ("/api/v1/hit.gif", "get", c.get("/api/v1/hit.gif?site=demo", headers={"Referer": PORTAL})),
        ("/api/v1/hit.gif", "get", c.get("/api/v1/hit.gif")),
        ("/api/v1/sites/{site}/counter", "get", c.get("/api/v1/sites/demo/counter")),
        ("/api/v1/sites/{site}/counter", "get", c.get("/api/v1/sites/nope/counter")),
        ("/healthz", "get", c.get("/healthz")),
        ("/readyz", "get", c.get("/readyz")),
        (stats, "get", c.get("/api/v1/sites/demo/stats?interval=week", headers=auth)),
        (stats, "get", c.get("/api/v1/sites/demo/stats?interval=year", headers=auth)),
        (stats, "get", c.get("/api/v1/sites/demo/stats")),
        ("/api/v1/sites/{site}/pages", "get", c.get("/api/v1/sites/demo/pages", headers=auth)),
        (
            "/api/v1/sites/{site}/referrers",
            "get",
            c.get("/api/v1/sites/demo/referrers", headers=auth),
        ),
        (
            "/api/v1/sites/{site}/export.csv",
            "get",
            c.get("/api/v1/sites/demo/export.csv", headers=auth),
        ),
        (
            "/api/v1/sites/{site}/import",
            "post",
            c.post("/api/v1/sites/demo/import", data="2020-01-01,1,1,1\n", headers=auth),
        ),
        (
            "/api/v1/sites/{site}/baseline",
            "put",
            c.put("/api/v1/sites/demo/baseline", json={"visits": 3}, headers=auth),
        ),
        ("/api/v1/openapi.json", "get", c.get("/api/v1/openapi.json")),
    ]
    for path, method, response in cases:
        _validate(path, method, response)
    assert sorted({r.status_code for _, _, r in cases}) == [200, 202, 204, 400, 401, 404]


@pytest.fixture
def fuzz_app(settings: Settings, clock: FrozenClock, site_token: str) -> Iterator[Flask]:
    """The app on SQLite (the SQL layer is not what this checks) with the server token (also
    the metrics token, so /metrics exists and takes the same bearer), its site `demo`
    already counting."""
    app = create_app(
        dataclasses.replace(settings, admin_token=ADMIN, metrics_token=ADMIN), clock=clock
    )
    clock.set(at(HANOI, 2026, 11, 28, 10, 0))
    Browser(app.test_client()).hit("/seen", referrer="https://google.com/")
    yield app
    app.extensions["analytics"].close()


@pytest.fixture
def fuzz_schema(
    fuzz_app: Flask, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Any:
    # schemathesis 4.32 renames the test item through `_nodeid`, which pytest 9.2 no longer
    # has: give it one (it only changes how a failing operation is named in the report).
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid
    monkeypatch.setenv("ANALYTICS_ADMIN_TOKEN", ADMIN)  # schemathesis.toml's bearer token
    config = SchemathesisConfig.from_path(CONFIG)
    return schemathesis.openapi.from_wsgi("/api/v1/openapi.json", fuzz_app, config=config)


fuzz = schemathesis.pytest.from_fixture("fuzz_schema")


def test_the_run_below_has_every_check_of_schemathesis_enabled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ANALYTICS_ADMIN_TOKEN", ADMIN)
    load_all_checks()
    enabled = SchemathesisConfig.from_path(CONFIG).projects.default.checks
    names = [check.__name__ for check in CHECKS.get_all()]
    assert "negative_data_rejection" in names and "positive_data_acceptance" in names
    assert all(enabled.get_by_name(name=name).enabled for name in names)


# A check that fails until the hit validation (ingest.py) refuses what the document says it
# refuses: the test below lists each case. When they are refused, that test XPASSes and
# fails the suite: then empty this, and drop the test's mark.
PENDING: dict[str, list[Any]] = {}


@fuzz.parametrize()
@FUZZ_SETTINGS
def test_schemathesis_with_every_check_finds_no_disagreement(case: Any) -> None:
    case.call_and_validate(excluded_checks=PENDING.get(case.operation.label, []))


HIT = {"site": "demo", "url": f"{PORTAL}/x"}


@pytest.mark.parametrize(
    "request_kwargs",
    [
        {"json": {**HIT, "id": ""}},
        {"json": {**HIT, "id": None}},
        {"method": "GET", "path": "/api/v1/hit.gif", "query_string": {**HIT, "id": ""}},
    ],
    ids=["empty id", "null id", "empty id in hit.gif"],
)
def test_a_hit_id_that_is_not_8_to_64_characters_is_refused_as_the_document_says(
    client: FlaskClient, request_kwargs: dict[str, Any]
) -> None:
    kwargs = {"method": "POST", "path": "/api/v1/hit", **request_kwargs}
    assert client.open(**kwargs).status_code == 400


def test_a_revalidated_widget_script_answers_304_as_the_document_says(client: FlaskClient) -> None:
    for path, documented in [
        ("/widget.js", "/widget.js"),
        (widget_asset.load().versioned_path, "/widget.v{version}.js"),
    ]:
        etag = client.get(path).headers["ETag"]
        again = client.get(path, headers={"If-None-Match": etag})
        assert again.status_code == 304
        _validate(documented, "get", again)
