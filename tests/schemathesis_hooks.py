"""What schemathesis must know about this API beyond its OpenAPI document.

tests/test_openapi.py imports it; the command line loads it with
`SCHEMATHESIS_HOOKS=tests.schemathesis_hooks` (see that file's docstring).

- A `text/plain` hit is the same JSON text as an `application/json` one (what
  `navigator.sendBeacon` sends): serialise it as JSON, not as Python's `str()`.
- Requests go to the site `demo` (schemathesis.toml for `{site}` in paths, `map_case` for
  the hit endpoints' `site` field), so that they get past 404 to everything else.
- Valid cases keep the rules no schema can state, which the document says in words: `from`
  not after `to` and at most MAX_DAYS days apart; an import's dates distinct, closed
  (before today) and not counted by the service, its counts possible together; `hit.gif`
  given a `url` or a `Referer`.
  Everything else a generated valid case holds is left as generated.
"""

from __future__ import annotations

import json
import re
from datetime import date, timedelta
from typing import Any

import schemathesis
from schemathesis import GenerationMode

from analytics_service.ingest import MAX_URL_CHARS
from analytics_service.params import DATE_PATTERN, LAST_DATE, MAX_DAYS

SITE = "demo"  # the CLI run's service and the test's app both have it
PORTAL = "https://portal.example"
# Imported days: long past, so before any "today" and never counted by a test's service.
FIRST_IMPORTED = date(2001, 1, 1)
ROW_DATE = re.compile(f"^{DATE_PATTERN}", re.MULTILINE)
ROW_COUNTS = re.compile(
    f"^(?P<date>{DATE_PATTERN}),(?P<visits>\\d+),(?P<pageviews>\\d+),(?P<visitors>\\d+)",
    re.MULTILINE,
)


@schemathesis.serializer("text/plain")
def json_text(ctx: Any, value: Any) -> bytes:
    # Also used for text/* types without a serializer of their own (text/csv): a string
    # goes as it is.
    if isinstance(value, bytes):
        return value
    return value.encode() if isinstance(value, str) else json.dumps(value).encode()


def _short_range(query: dict[str, Any]) -> dict[str, Any]:
    try:
        start = date.fromisoformat(query["from"])
    except (KeyError, TypeError, ValueError):
        return query
    if "to" not in query:  # `to` is today: a `from` of its own would have to know the clock
        end = start + timedelta(days=29)
    else:
        end = date.fromisoformat(query["to"])
        start, end = min(start, end), max(start, end)
        end = min(end, start + timedelta(days=MAX_DAYS - 1))
    return {**query, "from": start.isoformat(), "to": min(end, LAST_DATE).isoformat()}


def _past_dates(body: str) -> str:
    days = (FIRST_IMPORTED + timedelta(days=i) for i in range(10**6))
    return ROW_DATE.sub(lambda _: next(days).isoformat(), body)


def _possible_counts(row: re.Match[str]) -> str:
    """visitors at most visits, pageviews 0 or at least visits (imports._check_consistent)."""
    visits, pageviews, visitors = (int(row[n]) for n in ("visits", "pageviews", "visitors"))
    if pageviews:
        pageviews = max(pageviews, visits)
    return f"{row['date']},{visits},{pageviews},{min(visitors, visits)}"


def _importable(body: str) -> str:
    return ROW_COUNTS.sub(_possible_counts, _past_dates(body))


def _on_portal(url: Any) -> Any:
    """A generated string as a page of the site's origin, no longer than it was if it fit."""
    if not isinstance(url, str) or not url or url.startswith("http"):
        return url
    page = f"{PORTAL}/{url}"
    return page[:MAX_URL_CHARS] if len(url) <= MAX_URL_CHARS else page


def _at_demo(fields: Any, url: str = "url") -> Any:
    # A non-empty string is a valid site id and a valid url, whatever the case's mode: send
    # the seeded site and a page of its origin, so that the hit gets to the later steps.
    if not isinstance(fields, dict):
        return fields
    fields = {**fields, url: _on_portal(fields.get(url))} if url in fields else dict(fields)
    if isinstance(fields.get("site"), str) and fields["site"]:
        fields["site"] = SITE
    return fields


@schemathesis.hook
def map_case(ctx: Any, case: Any) -> Any:
    if case.path.startswith("/api/v1/hit"):
        case.query = _at_demo(case.query)
        case.body = _at_demo(case.body)
        case.headers = _at_demo(case.headers, url="Referer")
    if case.meta is None or case.meta.generation.mode != GenerationMode.POSITIVE:
        return case
    if case.query and "from" in case.query:
        case.query = _short_range(case.query)
    if case.path.endswith("/import") and isinstance(case.body, str):
        case.body = _importable(case.body)
    form_file = case.body.get("file") if isinstance(case.body, dict) else None
    if case.path.endswith("/import") and isinstance(form_file, str):
        case.body = {**case.body, "file": _importable(form_file)}  # the form's file part
    if case.path.endswith("/hit.gif") and not (case.query or {}).get("url"):
        headers = case.headers or {}
        if not headers.get("Referer"):
            case.headers = {**headers, "Referer": f"{PORTAL}/"}
    return case
