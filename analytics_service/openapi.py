"""The OpenAPI 3.1 description of every endpoint, served at `/api/v1/openapi.json`.

Built in Python from small helpers: to describe a new endpoint, add an entry to `PATHS`
(and its schemas to `SCHEMAS`). tests/test_openapi.py checks real responses against it and
runs schemathesis over it.
"""

from __future__ import annotations

from typing import Any

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
HEX = {"type": "string", "pattern": "^#?([0-9a-fA-F]{3}|[0-9a-fA-F]{6})$"}


def error(description: str, media: str = JSON) -> Doc:
    schema = ref("Error") if media == JSON else {"type": "string"}
    return {"description": description, "content": {media: {"schema": schema}}}


def ok(schema: Doc, description: str = "OK", media: str = JSON, **extra: Any) -> Doc:
    return {"description": description, "content": {media: {"schema": schema}}, **extra}


def query(name: str, schema: Doc, description: str) -> Doc:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


SITE = {"name": "site", "in": "path", "required": True, "schema": STR, "description": "site id"}
FROM = query("from", DATE, "first site-local date, inclusive (default: 29 days before `to`)")
TO = query("to", DATE, "last site-local date, inclusive (default: today)")
LIMIT = query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "rows (default 10)")
INTERVAL = query("interval", {"enum": ["day", "week", "month"]}, "series step (default day)")
UNAVAILABLE = {
    **error("Redis unreachable or too slow"),
    "headers": {"Retry-After": {"schema": {"type": "string"}}},
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
        "description": "why the hit was accepted but not counted",
        "schema": {"enum": ["bot", "rate_limited", "duplicate"]},
    }
}


def admin(summary: str, parameters: list[Doc], response: Doc, **extra: Any) -> Doc:
    return {
        "summary": summary,
        "security": [{"bearer": []}],
        "parameters": [SITE, *parameters],
        "responses": {"200": response, **ADMIN_ERRORS},
        **extra,
    }


COUNTS = {"visits": INT, "pageviews": INT, "visitors": INT, "bots": INT, "rate_limited": INT}
RANGE = {"site": STR, "timezone": STR, "from": DATE, "to": DATE}

SCHEMAS: Doc = {
    "Error": obj({"error": obj({"code": STR, "message": STR})}),
    "Hit": obj(
        {"site": STR, "url": STR},
        {
            "referrer": STR,
            "id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{8,64}$"},
        },
    ),
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
                    "redis": {"enum": ["ok", "unreachable"]},
                    "database": {"enum": ["ok", "unreachable"]},
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
        {**RANGE, "pages": {"type": "array", "items": obj({"path": STR, "pageviews": INT})}}
    ),
    "Referrers": obj(
        {**RANGE, "referrers": {"type": "array", "items": obj({"host": STR, "visits": INT})}}
    ),
    "Imported": obj({"site": STR, "imported": INT, "from": DATE, "to": DATE}),
    "Baseline": obj({"visits": INT}, {"pageviews": INT}),
    "BaselineSet": obj({"site": STR, "baseline": obj({"visits": INT, "pageviews": INT})}),
}

GIF = "image/gif"
PIXEL_HEADERS = {
    **DROPPED,
    "X-Analytics-Error": {"description": "why the hit was refused", "schema": STR},
}


def pixel(description: str) -> Doc:
    return {
        "description": description,
        "headers": PIXEL_HEADERS,
        "content": {GIF: {"schema": {"type": "string", "format": "binary"}}},
    }


PATHS: Doc = {
    "/api/v1/hit": {
        "post": {
            "summary": "Count a page view (JSON, or text/plain as sendBeacon sends it)",
            "requestBody": {
                "required": True,
                "content": {JSON: {"schema": ref("Hit")}, "text/plain": {"schema": STR}},
            },
            "responses": {
                "202": {
                    "description": "accepted (counted unless a header says why not)",
                    "headers": DROPPED,
                },
                "400": error("malformed body or field"),
                "403": error("url or Origin not among the site's origins"),
                "404": error("unknown site"),
                "413": error("body over 8 KB"),
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
            "parameters": [
                query("site", STR, "site id"),
                query("url", STR, "page URL (default: the Referer header)"),
                query("ref", STR, "referrer"),
                query("id", STR, "hit id"),
            ],
            "responses": {
                code: pixel(text)
                for code, text in {
                    "202": "accepted",
                    "400": "malformed",
                    "403": "not allowed",
                    "404": "unknown site",
                    "503": "storage unavailable",
                }.items()
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
    "/api/v1/sites/{site}/stats": {
        "get": admin("Totals and a zero-filled series", [FROM, TO, INTERVAL], ok(ref("Stats")))
    },
    "/api/v1/sites/{site}/pages": {
        "get": admin("Top paths by pageviews", [FROM, TO, LIMIT], ok(ref("Pages")))
    },
    "/api/v1/sites/{site}/referrers": {
        "get": admin("Top referrer hosts by visits", [FROM, TO, LIMIT], ok(ref("Referrers")))
    },
    "/api/v1/sites/{site}/export.csv": {
        "get": admin(
            "One CSV row per day: date,visits,pageviews,visitors,bots,rate_limited",
            [FROM, TO],
            ok(STR, media="text/csv"),
        )
    },
    "/api/v1/sites/{site}/import": {
        "post": {
            **admin(
                "Import an old counter's days (CSV date,visits,pageviews,visitors)",
                [],
                ok(ref("Imported")),
                requestBody={"required": True, "content": {"text/csv": {"schema": STR}}},
            ),
            "responses": {
                "200": ok(ref("Imported")),
                **ADMIN_ERRORS,
                "413": error("file over 4 MB"),
            },
        }
    },
    "/api/v1/sites/{site}/baseline": {
        "put": {
            **admin(
                "Set what the old counter had reached (added to the total)",
                [],
                ok(ref("BaselineSet")),
                requestBody={"required": True, "content": {JSON: {"schema": ref("Baseline")}}},
            ),
            "responses": {
                "200": ok(ref("BaselineSet")),
                **ADMIN_ERRORS,
                "413": error("body over 8 KB"),
            },
        }
    },
    "/api/v1/sites/{site}/counter.svg": {
        "get": {
            "summary": "The same box as an SVG image, for pages without JavaScript",
            "parameters": [
                SITE,
                query("lang", {"enum": ["vi", "en"]}, "labels' language (default vi)"),
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
                "404": error("unknown site"),
                "503": UNAVAILABLE,
            },
        }
    },
    "/widget.js": {
        "get": {
            "summary": "The embeddable widget script (short cache, ETag)",
            "responses": {"200": ok(STR, media="text/javascript")},
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
                "404": error("not the version this service serves"),
            },
        }
    },
    "/": {
        "get": {
            "summary": "The demo portal page with the live box",
            "responses": {"200": ok(STR, media="text/html")},
        }
    },
    "/healthz": {
        "get": {"summary": "Liveness", "responses": {"200": ok(ref("Health"))}},
    },
    "/readyz": {
        "get": {
            "summary": "Readiness: Redis and the database answer",
            "responses": {
                "200": ok(ref("Ready")),
                "503": ok(ref("Ready"), "Redis or the database failed"),
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


def document() -> Doc:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "analytics-service",
            "version": "1",
            "description": "Visitor analytics: live counters in Redis, history in SQL.",
        },
        "paths": PATHS,
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
