"""The OpenAPI 3.1 description of every endpoint, served at `/api/v1/openapi.json`.

Built in Python from small helpers: to describe a new endpoint, add an entry to `PATHS`
(and its schemas to `SCHEMAS`). What the admin API accepts comes from the pydantic models
in params.py that the handlers validate with, and the hit fields' limits from ingest.py,
so the document states the rules the service applies. tests/test_openapi.py checks real
responses against it and runs schemathesis over it with every check.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from .counter_svg import HEX_COLOUR, LABELS
from .imports import EXPORT_HEADER, HEADER, WHOLE
from .ingest import HIT_ID, MAX_BODY_BYTES, MAX_URL_CHARS
from .params import DATE_PATTERN, Baseline, ExportParams, StatsParams, TopParams
from .sites import SITE_ID

JSON = "application/json"
Doc = dict[str, Any]


def ref(name: str) -> Doc:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(required: dict[str, Doc], optional: dict[str, Doc] | None = None) -> Doc:
    return {
        "type": "object",
        "required": list(required),
        "properties": {**required, **(optional or {})},
    }


INT = {"type": "integer", "minimum": 0}
STR = {"type": "string"}
DATE = {"type": "string", "format": "date"}
# The rule counter_svg.py applies (fullmatch), anchored as JSON Schema needs it.
HEX = {"type": "string", "pattern": f"^{HEX_COLOUR.pattern}$"}


def error(description: str, media: str = JSON) -> Doc:
    schema = ref("Error") if media == JSON else {"type": "string"}
    return {"description": description, "content": {media: {"schema": schema}}}


def ok(schema: Doc, description: str = "OK", media: str = JSON, **extra: Any) -> Doc:
    return {"description": description, "content": {media: {"schema": schema}}, **extra}


def query(name: str, schema: Doc, description: str, required: bool = False) -> Doc:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "schema": schema,
        "description": description,
    }


def _shown(schema: Doc) -> Doc:
    # pydantic's titles repeat the names, and a null default means "left out".
    return {k: v for k, v in schema.items() if k != "title" and not (k == "default" and v is None)}


def model_schema(model: type[BaseModel]) -> Doc:
    """A params.py model as the document shows it, names as they are sent."""
    schema = _shown(model.model_json_schema(by_alias=True))
    schema["properties"] = {k: _shown(v) for k, v in schema["properties"].items()}
    return schema


def query_parameters(model: type[BaseModel]) -> list[Doc]:
    """One query parameter per field of a params.py model, each to be given once."""
    schema = model_schema(model)
    required = set(schema.get("required", ()))
    parameters = []
    for name, prop in schema["properties"].items():
        description = prop.pop("description", "")
        parameters.append(query(name, prop, description, name in required))
    return parameters


SITE = {
    "name": "site",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": f"^{SITE_ID.pattern}$"},
    "description": "site id (another id is an unknown site: 404)",
}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": STR}}
UNAVAILABLE = {
    **error(
        "the counter store is unavailable (`storage_unavailable`: Redis unreachable or too "
        "slow) or full (`storage_full`: Redis out of memory), or the history database "
        "cannot be reached or is busy, a lock another session holds having kept the request "
        "waiting too long (`database_unavailable`); retry after `Retry-After`"
    ),
    "headers": RETRY_AFTER,
}
PRECONDITION_FAILED = error("If-Match names no ETag of this resource (`precondition_failed`)")
# Sent by the server in front, never by the service: nginx with the tested configuration
# (deploy/nginx.conf.template) answers with the service's JSON errors; gunicorn alone, with
# an HTML page.
URI_TOO_LONG = {
    "description": (
        "the request line is over the front server's limit: behind deploy/nginx.conf.template, "
        "8 KB (`uri_too_long`); gunicorn alone, 8,190 bytes (an HTML page)"
    ),
    "content": {JSON: {"schema": ref("Error")}, "text/html": {"schema": STR}},
}
HEADERS_TOO_LARGE = {
    "description": (
        "a header is over the front server's limit: behind deploy/nginx.conf.template, a "
        "header over 8 KB or all of them over 32 KB (`request_header_fields_too_large`); "
        "gunicorn alone, a header over 8,190 bytes (an HTML page, 400 or 431)"
    ),
    "content": {JSON: {"schema": ref("Error")}, "text/html": {"schema": STR}},
}


def _from_the_proxy(description: str, retry: bool = False) -> Doc:
    """An answer nginx gives in the service's stead (deploy/nginx.conf.template)."""
    answer = error(f"from nginx in front: {description}")
    return {**answer, "headers": RETRY_AFTER} if retry else answer


# What any request can meet from the server in front, whatever the endpoint.
FROM_THE_PROXY = {
    "400": _from_the_proxy(
        "the request is not valid HTTP/1.1, or its target holds raw bytes that are not "
        "ASCII (`bad_request`)"
    ),
    "414": URI_TOO_LONG,
    "431": HEADERS_TOO_LARGE,
    "501": _from_the_proxy("a transfer coding other than chunked (`not_implemented`)"),
    "502": _from_the_proxy("the service is not reachable (`bad_gateway`)", retry=True),
    "503": _from_the_proxy(
        "100 requests of this address are in progress already (`too_many_connections`)",
        retry=True,
    ),
    "504": _from_the_proxy("the service did not answer in 10 s (`gateway_timeout`)", retry=True),
    "505": _from_the_proxy(
        "HTTP/2 or a later version in plain text (`http_version_not_supported`)"
    ),
}
UNAUTHORIZED = {
    **error("missing or unknown token"),
    "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
}
ADMIN_ERRORS = {
    "400": error("a bad parameter, named in the message"),
    "401": UNAUTHORIZED,
    "403": error("a token of another site"),
    "404": error("unknown site"),
    "503": UNAVAILABLE,
}
DROPPED = {
    "X-Analytics-Dropped": {
        "description": (
            "a robot: accepted, tallied, not counted. The flood guards and the dedup run "
            "when the worker's buffer is written, after the answer: their drops are "
            "tallied per day (rate_limited, duplicates), never sent here"
        ),
        "schema": {"enum": ["bot"]},
    }
}


def admin(
    summary: str,
    parameters: list[Doc],
    response: Doc,
    errors: Doc | None = None,
    **extra: Any,
) -> Doc:
    return {
        "summary": summary,
        "security": [{"bearer": []}],
        "parameters": [SITE, *parameters],
        "responses": {"200": response, **ADMIN_ERRORS, **(errors or {})},
        **extra,
    }


NON_EMPTY = {"type": "string", "minLength": 1}
# ingest.UNSTORABLE refuses control characters in a page URL (and lone surrogates, which
# UTF-8 text cannot hold).
URL = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_URL_CHARS,
    "pattern": "^[^\\x00-\\x1f\\x7f]*$",
}
HIT_ID_SCHEMA = {"type": "string", "pattern": f"^{HIT_ID.pattern}$"}
# What imports.py reads, as written; it also takes a header in any case, blank lines, spaces
# around cells and a BOM. Dates must also be distinct, closed and not counted by this
# service, and a row's counts possible together, which no pattern can say.
CSV_ROW = f"{DATE_PATTERN},{WHOLE.pattern},{WHOLE.pattern},{WHOLE.pattern}"
# The export's rows, which import back under the export's own header.
EXPORT_ROW = ",".join([DATE_PATTERN] + [WHOLE.pattern] * (len(EXPORT_HEADER) - 1))
CSV = {
    "type": "string",
    "pattern": (
        f"^(?:{','.join(HEADER)}\\r?\\n)?(?:{CSV_ROW}\\r?\\n)*{CSV_ROW}(?:\\r?\\n)?$"
        f"|^{','.join(EXPORT_HEADER)}\\r?\\n(?:{EXPORT_ROW}\\r?\\n)*{EXPORT_ROW}(?:\\r?\\n)?$"
    ),
}

COUNTS = {
    "visits": INT,
    "pageviews": INT,
    "visitors": INT,
    "bots": INT,
    "rate_limited": INT,
    "duplicates": INT,
}
RANGE = {"site": STR, "timezone": STR, "from": DATE, "to": DATE}

SCHEMAS: Doc = {
    "Error": obj(
        {
            "error": obj(
                {"code": STR, "message": STR},
                {"details": {"type": "array", "items": STR, "description": "every problem"}},
            )
        }
    ),
    "Hit": {
        **obj(
            {"site": NON_EMPTY, "url": URL},
            # The widget sends a null referrer when the page has none.
            {"referrer": {"type": ["string", "null"]}, "id": HIT_ID_SCHEMA},
        ),
        "description": "each key once; user info in `url` (`http://u@host/`) is refused",
    },
    "Counter": obj(
        {
            "site": STR,
            "timezone": STR,
            "online_window_seconds": INT,
            "online": INT,
            "today": obj({"date": DATE, "visits": INT, "pageviews": INT, "visitors": INT}),
            "total": obj({"visits": INT, "pageviews": INT}),
            "as_of": {"type": "string", "format": "date-time"},
        }
    ),
    "Health": obj({"status": {"const": "ok"}}),
    "Ready": obj(
        {
            "status": {"enum": ["ready", "not_ready"]},
            "checks": obj(
                {
                    "buffer": {"enum": ["ok", "full"]},
                    "redis": {"enum": ["ok", "unreachable"]},
                    "database": {"enum": ["ok", "unreachable"]},
                    "salts": {"enum": ["held", "not_held"]},
                }
            ),
        }
    ),
    "Stats": obj(
        {
            **RANGE,
            "interval": {"enum": ["day", "week", "month"]},
            "totals": obj(COUNTS),
            "series": {
                "type": "array",
                "items": obj({"period": DATE, "from": DATE, "to": DATE, **COUNTS}),
            },
        }
    ),
    "Pages": obj(
        {
            **RANGE,
            "pageviews": {
                **INT,
                "description": "the period's pageviews on its days with pages (not imported "
                "ones): what each page's share is of",
            },
            "pages": {"type": "array", "items": obj({"path": STR, "pageviews": INT})},
        }
    ),
    "Referrers": obj(
        {
            **RANGE,
            "visits": {
                **INT,
                "description": "the period's visits on its days with referrers (not imported "
                "ones): what each host's share is of",
            },
            "referrers": {
                "type": "array",
                # display_host: the host in Unicode (an IDN's punycode labels decoded; as sent
                # when a label mixes scripts: google.com spelt with a Cyrillic o is a disguise).
                "items": obj({"host": STR, "display_host": STR, "visits": INT}),
            },
        }
    ),
    "Imported": obj({"site": STR, "imported": INT, "from": DATE, "to": DATE}),
    "Site": obj(
        {
            "id": STR,
            "name": STR,
            "timezone": STR,
            "origins": {"type": "array", "items": STR},
            "display_origins": {"type": "array", "items": STR},
            "online_window_seconds": INT,
            "baseline": obj({"visits": INT, "pageviews": INT}),
            "history_from": {
                **DATE,
                "description": "the first day the site has numbers for (its creation, in its "
                "time zone, or an imported history's first day)",
            },
        }
    ),
    "Sites": obj({"sites": {"type": "array", "items": ref("Site")}}),
    "TokenScope": obj({"scope": {"enum": ["server", "site"]}}, {"site": STR}),
    "Baseline": model_schema(Baseline),
    "BaselineSet": obj({"site": STR, "baseline": obj({"visits": INT, "pageviews": INT})}),
}

GIF = "image/gif"
PIXEL_HEADERS = {
    **DROPPED,
    "X-Analytics-Error": {"description": "why the hit was refused", "schema": STR},
}


def pixel(description: str, **headers: Doc) -> Doc:
    return {
        "description": description,
        "headers": {**PIXEL_HEADERS, **headers},
        "content": {GIF: {"schema": {"type": "string", "format": "binary"}}},
    }


HIT_REFUSED = (
    "not a JSON object, or a key twice; `site` or `url` missing or empty; `url` over "
    f"{MAX_URL_CHARS} characters, unparseable or with user info; a bad `id`"
)
HIT_BODY = {
    "required": True,
    "description": (
        "The JSON object, as `application/json` or as `text/plain` (what `sendBeacon` sends, "
        "without a CORS preflight); either with or without a charset. A body without a "
        "Content-Type is read as JSON too."
    ),
    "content": {JSON: {"schema": ref("Hit")}, "text/plain": {"schema": ref("Hit")}},
}

ACCEPTED = (
    "accepted: held in the worker's buffer and counted within a flush interval, unless a "
    "robot (X-Analytics-Dropped) or stopped then by a flood guard or the dedup"
)

PATHS: Doc = {
    "/api/v1/hit": {
        "post": {
            "summary": "Count a page view (JSON, or text/plain as sendBeacon sends it)",
            "requestBody": HIT_BODY,
            "responses": {
                "202": {
                    "description": ACCEPTED,
                    "headers": DROPPED,
                },
                "400": error(HIT_REFUSED),
                "403": error("url or Origin not among the site's origins"),
                "404": error("unknown site"),
                "413": error(
                    f"body over {MAX_BODY_BYTES // 1024} KB, whatever its framing (a "
                    "Content-Length or chunked)"
                ),
                "415": error("a Content-Type other than application/json or text/plain"),
                "503": UNAVAILABLE,
            },
        },
        "options": {
            "summary": "CORS preflight",
            "responses": {"204": {"description": "preflight answer"}},
        },
    },
    "/api/v1/hit.gif": {
        "get": {
            "summary": "Count a page view from an <img> (no JavaScript)",
            "description": (
                "Always a 1x1 GIF; the status tells the outcome. `url` defaults to the "
                "Referer header: one of the two is needed. A HEAD request is answered the "
                "same way but never counts."
            ),
            "parameters": [
                query("site", NON_EMPTY, "site id", required=True),
                query("url", URL, "page URL (default: the Referer header)"),
                query("ref", STR, "referrer"),
                query("id", HIT_ID_SCHEMA, "hit id: the same id within 5 minutes counts once"),
                {
                    "name": "Referer",
                    "in": "header",
                    "required": False,
                    "schema": STR,
                    "description": "the page URL when `url` is not given (then as `url`)",
                },
            ],
            "responses": {
                "202": pixel(ACCEPTED),
                "400": pixel(HIT_REFUSED + "; neither `url` nor a Referer"),
                "403": pixel("url not among the site's origins"),
                "404": pixel("unknown site"),
                "503": pixel(
                    "storage unavailable (`storage_unavailable`) or full (`storage_full`), or "
                    "a site this worker has not read while the database is down "
                    "(`database_unavailable`)",
                    **RETRY_AFTER,
                ),
            },
        }
    },
    "/api/v1/sites/{site}/counter": {
        "get": {
            "summary": "The public counter: online now, today, total",
            "parameters": [SITE],
            "responses": {
                "200": ok(ref("Counter"), headers={"ETag": {"schema": STR}}),
                "304": {"description": "not modified (If-None-Match)"},
                "404": error("unknown site"),
                "503": UNAVAILABLE,
            },
        }
    },
    "/api/v1/token": {
        "get": {
            "summary": "What the Bearer token opens: every site (server) or one site",
            "security": [{"bearer": []}],
            "responses": {"200": ok(ref("TokenScope")), "401": UNAUTHORIZED},
        }
    },
    "/api/v1/sites": {
        "get": {
            "summary": "Every site's settings (the server token only)",
            "security": [{"bearer": []}],
            "responses": {
                "200": ok(ref("Sites")),
                "401": UNAUTHORIZED,
                "403": error("a site's token (it reads its own site only)"),
            },
        }
    },
    "/api/v1/sites/{site}": {
        "get": {
            "summary": "One site's settings: name, time zone, origins, baseline",
            "security": [{"bearer": []}],
            "parameters": [SITE],
            "responses": {
                "200": ok(ref("Site")),
                **{k: v for k, v in ADMIN_ERRORS.items() if k not in ("400", "503")},
            },
        }
    },
    "/api/v1/sites/{site}/stats": {
        "get": admin(
            "Totals and a zero-filled series", query_parameters(StatsParams), ok(ref("Stats"))
        )
    },
    "/api/v1/sites/{site}/pages": {
        "get": admin("Top paths by pageviews", query_parameters(TopParams), ok(ref("Pages")))
    },
    "/api/v1/sites/{site}/referrers": {
        "get": admin(
            "Top referrer hosts by visits", query_parameters(TopParams), ok(ref("Referrers"))
        )
    },
    "/api/v1/sites/{site}/export.csv": {
        "get": admin(
            "One CSV row per day: date,visits,pageviews,visitors,bots,rate_limited,duplicates",
            query_parameters(ExportParams),
            ok(STR, media="text/csv"),
        )
    },
    "/api/v1/sites/{site}/import": {
        "post": admin(
            "Import an old counter's days (CSV date,visits,pageviews,visitors), or this "
            "service's own export",
            [],
            ok(ref("Imported")),
            requestBody={
                "required": True,
                "description": (
                    "At most 4 MB, as the body or as the one file part of a form. Every date "
                    "once, closed (before today, site time, and not yesterday in the first "
                    "ANALYTICS_ROLLUP_GRACE_SECONDS after midnight), and not a day this "
                    "service counted itself; a row's visitors and pageviews not above and "
                    "not below its visits (0 is not known); any bad line refuses "
                    "the whole file. Cells may "
                    "be separated by ';' instead of ',' (as spreadsheets save CSV where ',' "
                    "is the decimal mark), or by tabs (cells pasted from a spreadsheet). Dates may "
                    "also be written DD/MM/YYYY, MM/DD/YYYY (the order read from the file's "
                    "dates; a file that does not tell is refused) or YYYY/MM/DD, and counts "
                    'grouped by threes (30.545, "30,545", 30 545), as spreadsheets save them. The '
                    "export's rows of zeros (days without data) "
                    "are left out."
                ),
                "content": {
                    "text/csv": {"schema": CSV},
                    "multipart/form-data": {
                        "schema": obj({"file": CSV}),
                        "encoding": {"file": {"contentType": "text/csv"}},
                    },
                },
            },
            errors={"413": error("file over 4 MB, whatever its framing")},
        )
    },
    "/api/v1/sites/{site}/baseline": {
        "put": admin(
            "Set what the old counter had reached (added to the total)",
            [],
            ok(ref("BaselineSet")),
            requestBody={"required": True, "content": {JSON: {"schema": ref("Baseline")}}},
            errors={"413": error(f"body over {MAX_BODY_BYTES // 1024} KB, whatever its framing")},
        )
    },
    "/api/v1/sites/{site}/counter.svg": {
        "get": {
            "summary": "The same box as an SVG image, for pages without JavaScript",
            "parameters": [
                SITE,
                query("lang", {"enum": list(LABELS)}, "labels' language (default vi)"),
                *(
                    query(name, HEX, text)
                    for name, text in (
                        ("bg", "background colour, hex"),
                        ("fg", "text colour, hex"),
                        ("title_bg", "title bar colour, hex"),
                        ("title_fg", "title text colour, hex"),
                        ("border", "border colour, hex"),
                    )
                ),
            ],
            "responses": {
                "200": ok({"type": "string"}, media="image/svg+xml"),
                "304": {"description": "not modified (If-None-Match)"},
                "400": error("a bad colour or language"),
                "412": PRECONDITION_FAILED,
                "404": error("unknown site"),
                "503": UNAVAILABLE,
            },
        }
    },
    "/widget.js": {
        "get": {
            "summary": "The embeddable widget script (short cache, ETag)",
            "responses": {
                "200": ok(STR, media="text/javascript"),
                "304": {"description": "not modified (If-None-Match)"},
                "412": PRECONDITION_FAILED,
            },
        }
    },
    "/widget.v{version}.js": {
        "get": {
            "summary": "The widget script at an immutable, versioned URL (one-year cache)",
            "parameters": [
                {"name": "version", "in": "path", "required": True, "schema": STR},
            ],
            "responses": {
                "200": ok(STR, media="text/javascript"),
                "304": {"description": "not modified (If-None-Match)"},
                "412": PRECONDITION_FAILED,
                "404": error("not the version this service serves"),
            },
        }
    },
    "/": {
        "get": {
            "summary": "The demo portal page with the live box (`make run`), else a landing page",
            "responses": {"200": ok(STR, media="text/html")},
        }
    },
    "/admin": {
        "get": {
            "summary": "The statistics dashboard (signs in with a token, reads this API)",
            "responses": {"200": ok(STR, media="text/html")},
        }
    },
    "/favicon.ico": {
        "get": {
            "summary": "The service's icon",
            "responses": {
                "200": ok({"type": "string", "format": "binary"}, media="image/vnd.microsoft.icon"),
                "304": {"description": "not modified"},
            },
        }
    },
    "/healthz": {
        "get": {"summary": "Liveness", "responses": {"200": ok(ref("Health"))}},
    },
    "/readyz": {
        "get": {
            "summary": "Readiness: this worker takes hits (Redis and the database reported)",
            "responses": {
                "200": ok(ref("Ready")),
                "503": ok(
                    ref("Ready"),
                    "not ready, hits are refused: the worker's buffer is full, or Redis is "
                    "unreachable and the worker holds no salt (it was started during the "
                    "outage); `Cache-Control: no-store`, as on the 200",
                ),
            },
        }
    },
    "/api/v1/openapi.json": {
        "get": {
            "summary": "This document",
            "responses": {"200": ok({"type": "object"})},
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics, text format; the Bearer token is "
            "ANALYTICS_METRICS_TOKEN (not an admin token)",
            "security": [{"bearer": []}],
            "responses": {
                "200": ok({"type": "string"}, media="text/plain"),
                "401": UNAUTHORIZED,
                "404": error("ANALYTICS_METRICS_TOKEN is not set: there are no metrics"),
            },
        }
    },
}


def _every_operation(paths: Doc) -> Doc:
    """PATHS with FROM_THE_PROXY added to each operation's answers."""
    return {
        path: {
            method: {**op, "responses": _with_the_proxys(op["responses"])}
            for method, op in ops.items()
        }
        for path, ops in paths.items()
    }


def _with_the_proxys(responses: Doc) -> Doc:
    """`responses` and FROM_THE_PROXY; where the service has an answer of the same status,
    one entry names both."""
    merged = dict(responses)
    for status, theirs in FROM_THE_PROXY.items():
        own = responses.get(status)
        merged[status] = (
            theirs
            if own is None
            else {
                **theirs,
                **own,
                "description": f"{own['description']}; or {theirs['description']}",
                "content": {**theirs["content"], **own.get("content", {})},
            }
        )
    return merged


def document() -> Doc:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "analytics-service",
            "version": "1",
            "description": "Visitor analytics: live counters in Redis, history in SQL.",
        },
        "paths": _every_operation(PATHS),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the site's admin token, or ANALYTICS_ADMIN_TOKEN",
                }
            },
        },
    }
