"""Browser fixtures: Debian's Chromium driven by Playwright, the real service on a free port
(Redis and SQLite from the suite's fixtures, a frozen service clock), and host pages served
from another origin, as a portal embedding the widget would be.

The page's timers run on Playwright's fake clock (`page.clock`), so a 30-second refresh is
stepped through, never waited for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, Playwright, sync_playwright
from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

from analytics_service import db
from analytics_service.config import Settings
from analytics_service.sites import SiteRepository, build_site

from ..conftest import FrozenClock, counting_app, start_redis

CHROMIUM = Path("/usr/bin/chromium")
# The pages under test are Vietnamese. Chromium draws its own widgets (a date field's
# dd/mm/yyyy order, a file picker's button) in its interface language, which only the
# environment sets (a context's `locale` does not) and only with chromium-l10n's files.
CHROMIUM_VIETNAMESE = Path("/usr/lib/chromium/locales/vi.pak")
LOCALE = "vi-VN"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
# Headless Chromium says "HeadlessChrome", which the service rightly drops as a robot.
READER_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/130.0 Safari/537.36"
)
SECOND_READER_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:131.0) Gecko/20100101 Firefox/131.0"
)
BASELINE_VISITS = 30545
OTHER_BASELINE_VISITS = 5000
TEST_OUTPUT = Path(__file__).resolve().parents[2] / "test-output"
# The hostile host stylesheet: it must not reach into the box.
HOST_CSS = "dl, dt, dd, section, .b, .t { display: inline !important; color: red !important; }"


class Server:
    """A WSGI app served on 127.0.0.1 by werkzeug in a thread, stoppable mid-test."""

    def __init__(self, app: Callable) -> None:
        self._server: BaseWSGIServer | None = make_server("127.0.0.1", 0, app, threaded=True)
        self.port = self._server.port
        self.origin = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class SilentServer:
    """Accepts connections and never answers: a service that hangs."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.origin = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self._accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # the listening socket was closed
            while True:
                self._accepted.append(self._socket.accept()[0])

    def stop(self) -> None:
        self._socket.close()
        for conn in self._accepted:
            conn.close()


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    if_none_match: str | None
    status: int


@dataclass
class Recorder:
    """WSGI middleware that notes every request the service answered."""

    app: Callable
    seen: list[Seen] = field(default_factory=list)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        def start(status: str, headers: list, exc_info: object = None) -> Callable:
            self.seen.append(
                Seen(
                    environ["REQUEST_METHOD"],
                    environ["PATH_INFO"],
                    environ.get("HTTP_IF_NONE_MATCH"),
                    int(status.split()[0]),
                )
            )
            return start_response(status, headers, exc_info)

        return self.app(environ, start)

    def counter_reads(self) -> list[Seen]:
        return [s for s in self.seen if s.path == "/api/v1/sites/demo/counter"]


@dataclass
class HostSite:
    """The portal embedding the widget: pages by path, each with its own headers."""

    pages: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)
    requested: list[str] = field(default_factory=list)
    # What pages sent to /report (navigator.sendBeacon): for a browser no test drives.
    reports: list[dict] = field(default_factory=list)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        request = Request(environ)
        self.requested.append(request.path)
        if request.path == "/host.css":
            response = Response(HOST_CSS, mimetype="text/css")
        elif request.path == "/report" and request.method == "POST":
            self.reports.append(json.loads(request.get_data()))
            response = Response(status=204)
        elif request.path in self.pages:
            html, headers = self.pages[request.path]
            response = Response(html, mimetype="text/html", headers=headers)
        else:
            response = Response("not found", status=404)
        return response(environ, start_response)


@dataclass
class Service:
    server: Server
    recorder: Recorder
    database_url: str

    @property
    def origin(self) -> str:
        return self.server.origin

    def counter(self) -> dict:
        with urllib.request.urlopen(f"{self.origin}/api/v1/sites/demo/counter") as response:
            return json.load(response)

    def wait_for_pageviews(self, expected: int) -> dict:
        """Beacons arrive on their own schedule: poll (bounded) until they are counted."""
        deadline = time.monotonic() + 10
        while (counter := self.counter())["today"]["pageviews"] != expected:
            assert time.monotonic() < deadline, f"pageviews stayed at {counter['today']}"
            time.sleep(0.05)
        return counter

    def visit(self, user_agent: str, host_origin: str) -> None:
        """Another reader's page view, sent as a widget would."""
        body = json.dumps({"site": "demo", "url": f"{host_origin}/elsewhere"}).encode()
        request = urllib.request.Request(
            f"{self.origin}/api/v1/hit",
            data=body,
            headers={"User-Agent": user_agent, "Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(request) as response:
            assert response.status == 202
            assert response.headers.get("X-Analytics-Dropped") is None


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    for path, package in ((CHROMIUM, "chromium"), (CHROMIUM_VIETNAMESE, "chromium-l10n")):
        if not path.exists():
            pytest.fail(f"{path} is missing: `apt-get install -y {package}` (.ci/run does it)")
    browser = playwright.chromium.launch(
        executable_path=str(CHROMIUM),
        args=CHROMIUM_ARGS,
        env={**os.environ, "LANGUAGE": LOCALE.split("-")[0]},
    )
    yield browser
    browser.close()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.stop()


@pytest.fixture
def host() -> Iterator[tuple[HostSite, Server]]:
    site = HostSite()
    server = Server(site)
    yield site, server
    server.stop()


@contextlib.contextmanager
def _serving(
    settings: Settings, clock: FrozenClock, host: tuple[HostSite, Server], baseline: int
) -> Iterator[Service]:
    """The service on `settings`, with a site `demo` for the host's pages."""
    app = counting_app(settings, clock)
    recorder = Recorder(app.wsgi_app)
    app.wsgi_app = recorder  # type: ignore[method-assign]
    server = Server(app)
    engine = db.create_engine(settings.effective_database_url)
    SiteRepository(engine).create(
        build_site(
            "demo",
            name="Demo portal",
            origins=[host[1].origin, server.origin],
            baseline_visits=baseline,
        ),
        clock(),
    )
    engine.dispose()
    yield Service(server, recorder, settings.effective_database_url)
    server.stop()
    services = app.extensions["analytics"]
    services.close()


@pytest.fixture
def service(
    settings: Settings, clock: FrozenClock, host: tuple[HostSite, Server]
) -> Iterator[Service]:
    with _serving(settings, clock, host, BASELINE_VISITS) as service:
        yield service


@pytest.fixture
def other_service(
    settings: Settings, clock: FrozenClock, host: tuple[HostSite, Server], tmp_path: Path
) -> Iterator[Service]:
    """A second service, with a Redis and a database of its own and a `demo` site of its
    own: a portal moving from one service to another has both services' tags for a while."""
    data_dir = tmp_path / "other-service"
    data_dir.mkdir()
    redis_server = start_redis(data_dir)
    url = f"sqlite:///{data_dir / 'analytics.db'}"
    engine = db.create_engine(url)
    db.upgrade(engine)
    engine.dispose()
    other = dataclasses.replace(
        settings, data_dir=data_dir, redis_url=redis_server.connection_url, database_url=url
    )
    with _serving(other, clock, host, OTHER_BASELINE_VISITS) as service:
        yield service
    redis_server.stop()


@dataclass
class Watched:
    """A page whose uncaught errors and console errors are collected."""

    page: Page
    errors: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def violations(self) -> list[str]:
        return self.page.evaluate("window.__violations")

    def reads(self) -> list[dict]:
        return self.page.evaluate("window.__reads")

    def settle(self, at_least: int = 0) -> list[dict]:
        """Waits (bounded) until the page has started `at_least` counter reads and every
        read it started is over."""
        deadline = time.monotonic() + 10
        while len(reads := self.reads()) < at_least or not all(r["done"] for r in reads):
            assert time.monotonic() < deadline, f"a counter read never finished: {reads}"
            time.sleep(0.02)
        return reads

    def step(self, seconds: float, settle: bool = True) -> list[dict]:
        """Moves the page's clock on, then (unless told not to) lets the reads it started
        finish."""
        self.page.clock.run_for(int(seconds * 1000))
        return self.settle() if settle else self.reads()

    def step_to_next_read(self, limit: float, settle: bool = True) -> list[dict]:
        """Moves the clock on in steps shorter than the widget's 8 s request timeout, so a
        read that the service answers is never overtaken by the fake clock."""
        before = len(self.reads())
        for _ in range(int(limit // 4) + 1):
            if len(reads := self.step(4, settle)) > before:
                return reads
        raise AssertionError(f"no new read within {limit} s")


# Playwright injects this before any page script, whatever the page's CSP. It notes CSP
# violations, and every counter read the page starts: when (fake clock), with which cache
# mode, and when it is over (failed, answered with an error, or its body read), so a test
# knows the widget has scheduled its next read.
WATCH_PAGE = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__violations.push(e.violatedDirective + " " + e.blockedURI);
});
window.__reads = [];
var realFetch = window.fetch;
window.fetch = function (url, init) {
  var read = {url: String(url), at: Date.now(), cache: init && init.cache, done: false};
  var over = function () { read.done = true; read.doneAt = Date.now(); };
  var reply = realFetch.apply(this, arguments);
  if (read.url.indexOf("/counter") < 0) return reply;
  window.__reads.push(read);
  reply.then(function (response) {
    if (!response.ok) return over();
    var json = response.json;
    response.json = function () { return json.call(response).finally(over); };
  }, over);
  return reply;
};
"""
START = 1_800_000_000  # seconds: the fake clock's start, paused


@pytest.fixture
def open_page(browser: Browser) -> Iterator[Callable[..., Watched]]:
    contexts: list[BrowserContext] = []

    def open_page(user_agent: str = READER_UA) -> Watched:
        context = browser.new_context(
            user_agent=user_agent, viewport={"width": 1100, "height": 800}, locale=LOCALE
        )
        contexts.append(context)
        page = context.new_page()
        page.add_init_script(WATCH_PAGE)
        page.clock.install(time=START)
        page.clock.pause_at(START + 1)
        watched = Watched(page)
        page.on("pageerror", lambda exc: watched.errors.append(str(exc)))
        page.on(
            "console",
            lambda msg: watched.console.append(msg.text) if msg.type == "error" else None,
        )
        return watched

    yield open_page
    for context in contexts:
        context.close()


def host_page(service_origin: str, script_attrs: str = 'data-site="demo"', body: str = "") -> str:
    """A portal page: its own (hostile) CSS, the given boxes, the script, a paragraph after."""
    return f"""<!doctype html>
<html lang="vi"><head><meta charset="utf-8"><title>Host</title>
<link rel="stylesheet" href="/host.css"></head>
<body><h1>Host portal</h1>
{body}
<script async src="{service_origin}/widget.js" {script_attrs}></script>
<p id="after">After the box</p>
</body></html>"""


# WCAG 2's contrast ratio of an element's colour `property` (color, borderTopColor,
# outlineColor) against the background it is seen on: its own for text, its parent's for a
# border or an outline, which lie at its edge. The background is the nearest opaque one.
CONTRAST = """(el, property) => {
  const luminance = (colour) => {
    const [r, g, b] = colour.match(/[\\d.]+/g).slice(0, 3).map((v) => {
      const c = Number(v) / 255;
      return c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const opaque = (node) => getComputedStyle(node).backgroundColor.startsWith("rgb(");
  let behind = property === "color" ? el : el.parentElement;
  while (behind && !opaque(behind)) behind = behind.parentElement;
  const background = behind ? getComputedStyle(behind).backgroundColor : "rgb(255, 255, 255)";
  const [light, dark] = [getComputedStyle(el)[property], background].map(luminance).sort(
    (a, b) => b - a
  );
  return (light + 0.05) / (dark + 0.05);
}"""


def contrast(locator: Locator, property: str = "color") -> float:
    return round(locator.evaluate(CONTRAST, property), 2)
