"""`POST /api/v1/hit` answered before Flask (hits.HitRoute): the same answers, headers,
counts as Flask's route gives, which still answers the refusals and the bodies without a
length. (Its hits' log lines, request ids and timings are test_metrics.py's and
test_logs.py's, on gunicorn.)"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from analytics_service.config import Settings

from .conftest import PORTAL, counter
from .stack import gunicorn as _gunicorn
from .test_admin import ADMIN

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0"
CRAWLER = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
# Headers every answer carries with values of its own.
OWN_VALUES = {"date", "x-request-id"}


@pytest.fixture
def served(settings: Settings, site_token: str, tmp_path: Path) -> Iterator[int]:
    with _gunicorn(
        settings,
        tmp_path / "gunicorn.log",
        GUNICORN_WORKERS="1",
        ANALYTICS_ADMIN_TOKEN=ADMIN,
        ANALYTICS_COUNTER_CACHE_SECONDS="0",
    ) as port:
        yield port


def _send(port: int, body: bytes, *, chunked: bool, **headers: str) -> tuple[str, list[str]]:
    """The status line and the header lines (as sent, in order) of a hit whose body goes
    with a Content-Length, or chunked (which HitRoute leaves to Flask)."""
    framing = {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(len(body))}
    head = "POST /api/v1/hit HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    for name, value in {**framing, "Content-Type": "text/plain", **headers}.items():
        head += f"{name}: {value}\r\n"
    payload = b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body) if chunked else body
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode() + b"\r\n" + payload)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    status, *lines = received.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    return status, lines


def _comparable(lines: list[str]) -> list[str]:
    kept = [line for line in lines if line.partition(":")[0].lower() not in OWN_VALUES]
    return sorted(line.lower() for line in kept)


@pytest.mark.parametrize(
    "headers",
    [
        {"User-Agent": BROWSER},
        {"User-Agent": BROWSER, "Origin": PORTAL},
        {"User-Agent": CRAWLER},
    ],
    ids=["beacon", "fetch-with-origin", "crawler"],
)
def test_a_hit_with_a_length_is_answered_as_flask_answers_a_chunked_one(
    served: int, headers: dict[str, str]
) -> None:
    body = f'{{"site": "demo", "url": "{PORTAL}/a"}}'.encode()
    status, lines = _send(served, body, chunked=False, **headers)
    flask_status, flask_lines = _send(served, body, chunked=True, **headers)
    assert (status, _comparable(lines)) == (flask_status, _comparable(flask_lines))
    assert status.split()[1] == "202"
    names = [line.partition(":")[0].lower() for line in lines]
    assert len(names) == len(set(names)), lines


def test_a_hit_with_a_length_is_answered_before_flask_and_its_refusals_by_flask(
    app: Flask, client: FlaskClient
) -> None:
    entered: list[str] = []
    app.before_request(lambda: entered.append("flask"))
    hit = {"site": "demo", "url": f"{PORTAL}/"}
    assert client.post("/api/v1/hit", json=hit, headers={"User-Agent": BROWSER}).status_code == 202
    assert entered == []
    assert counter(client)["today"]["pageviews"] == 1
    entered.clear()
    refused = client.post(
        "/api/v1/hit", json={**hit, "site": "nope"}, headers={"User-Agent": BROWSER}
    )
    assert refused.status_code == 404
    assert refused.get_json()["error"]["code"] == "unknown_site"
    assert refused.headers["X-Content-Type-Options"] == "nosniff"
    assert entered == ["flask"]
