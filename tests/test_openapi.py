"""The OpenAPI 3.1 document: it is valid, real responses match it, and a bounded
schemathesis run over it finds no server error and no answer that contradicts it."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from werkzeug.test import TestResponse

from analytics_service.openapi import document

from .conftest import PORTAL, Browser, FrozenClock, HistoryEnv
from .test_admin import ADMIN, week  # noqa: F401  (a fixture)
from .test_rollup import HANOI, at

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
MAX_EXAMPLES = 25


def test_the_document_is_openapi_3_1_and_every_schema_is_valid_json_schema() -> None:
    doc = document()
    assert doc["openapi"] == "3.1.0"
    for schema in doc["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)


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
def fuzz_app(history_env: HistoryEnv, clock: FrozenClock) -> Flask:
    clock.set(at(HANOI, 2026, 11, 28, 10, 0))
    Browser(history_env.client).hit("/seen", referrer="https://google.com/")
    return history_env.app


def test_a_bounded_schemathesis_run_finds_no_server_error_and_no_contradiction(
    fuzz_app: Flask,
) -> None:
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", fuzz_app)
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        # Valid data aimed at the seeded site (so the admin endpoints get past 404), and
        # data that breaks the document's rules.
        fixed = {"path_parameters": {"site": "demo"}} if "{site}" in operation.path else {}
        strategy = operation.as_strategy(GenerationMode.POSITIVE, **fixed) | operation.as_strategy(
            GenerationMode.NEGATIVE
        )

        @given(case=strategy)
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            case.call_and_validate(headers={"Authorization": f"Bearer {ADMIN}"}, checks=CHECKS)

        try:
            run()
        except Exception as exc:
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
