"""`GET /api/v1/openapi.json`: the OpenAPI 3.1 document (built in analytics_service/openapi.py)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from ..openapi import document

bp = Blueprint("openapi", __name__)


@bp.get("/api/v1/openapi.json")
def get_openapi() -> Response:
    response = jsonify(document())
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response
