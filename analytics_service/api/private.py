"""The answers of the routes that carry data behind a token (a site's numbers and settings,
what a token opens, the metrics)."""

from __future__ import annotations

from flask import Response


def private(response: Response) -> Response:
    """after_request of such a blueprint. No browser or proxy cache may keep any of its
    answers, refusals included: a 404 tells which sites exist, a 400 repeats what was sent,
    and a shared cache would hand either to the next person who asks."""
    response.headers["Cache-Control"] = "no-store"
    if response.status_code == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="analytics"'
    return response
