"""The dashboard at /admin in headless Chromium, against the running service (real Redis and
SQL, a frozen service clock at 2026-11-28 10:00 in Hanoi), with nothing of the API mocked.

Every test also checks that the page logged no console error, threw nothing and broke no
rule of its Content-Security-Policy.
"""

from __future__ import annotations

import calendar
import json
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from urllib.parse import unquote

import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, Route, expect

from analytics_service import db
from analytics_service.config import Settings
from analytics_service.counter_svg import format_number
from analytics_service.sites import SiteRepository, build_site

from ..conftest import Browser as Reader
from ..conftest import FrozenClock, counting_app
from ..test_rollup import HANOI, at
from .conftest import LOCALE, READER_UA, START, TEST_OUTPUT, Server, contrast

ADMIN = "server-admin-token-for-the-dashboard"
PORTAL = "https://portal.example"
XSS = "/<img src=x onerror=window.__pwned=1>"
# Site-local days -> the paths of that day's readers (one reader, one visit each).
TRAFFIC = {
    (11, 20): ["/a", "/b"],
    (11, 21): ["/a", "/c"],
    (11, 23): ["/a", "/tin-tuc/1", "/tin-tuc/2"],
    (11, 26): ["/a", "/a", XSS, *(f"/p{i:02}" for i in range(1, 10))],
    (11, 28): ["/a"],  # today, still in Redis only
}
BASELINE = 30545
DASH = "\u2013"  # between the ends of a period, and in a tile before its number


@dataclass
class Service:
    server: Server
    tokens: dict[str, str]

    @property
    def origin(self) -> str:
        return self.server.origin

    def get(self, path: str, token: str = ADMIN, **params: object) -> bytes:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        request = urllib.request.Request(
            f"{self.origin}{path}{query}", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request) as response:
            return response.read()

    def api(self, path: str, token: str = ADMIN, **params: object) -> dict:
        return json.loads(self.get(f"/api/v1/sites/{path}", token, **params))


def seed(app, clock: FrozenClock) -> dict[str, str]:  # type: ignore[no-untyped-def]
    svc = app.extensions["analytics"]
    tokens = {
        "demo": svc.repo.create(
            build_site("demo", name="Cổng thông tin demo", origins=[PORTAL],
                       baseline_visits=BASELINE),
            clock(),
        ),
        "lhh": svc.repo.create(
            build_site("lhh", name="Liên hiệp hội Thanh Hóa", origins=["https://liênhiệphội.vn"]),
            clock(),
        ),
    }  # fmt: skip
    client = app.test_client()
    for (month, day), paths in TRAFFIC.items():
        clock.set(at(HANOI, 2026, month, day, 9, 0))
        for i, path in enumerate(paths):
            referrer = "https://zalo.me/x" if i % 2 else "https://google.com/"
            Reader(client, ip=f"198.51.100.{i + 1}").hit(path, referrer=referrer)
    body = {"site": "lhh", "url": "https://xn--linhiphi-l1a7657ezfa.vn/"}
    client.post("/api/v1/hit", json=body, headers={"User-Agent": READER_UA})
    clock.set(at(HANOI, 2026, 11, 28, 10, 0))
    assert svc.rollup.finalise(svc.repo.require("demo"), clock())
    return tokens


@pytest.fixture
def service(settings: Settings, clock: FrozenClock) -> Iterator[Service]:
    app = counting_app(replace(settings, admin_token=ADMIN), clock)
    tokens = seed(app, clock)
    server = Server(app)
    yield Service(server, tokens)
    server.stop()
    app.extensions["analytics"].close()


# Notes CSP violations before any page script runs.
WATCH_CSP = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__violations.push(e.violatedDirective + " " + e.blockedURI);
});
"""


@dataclass
class Tab:
    page: Page
    origin: str
    errors: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def open(self, path: str = "/admin") -> None:
        self.page.goto(f"{self.origin}{path}")

    def sign_in(self, token: str) -> None:
        expect(self.page.locator("#sign-in")).to_be_visible()
        self.page.fill("#sign-in-token", token)
        self.page.click("#sign-in-form button[type=submit]")

    def wait_until_loaded(self) -> None:
        expect(self.page.locator("#dashboard")).to_be_visible()
        expect(self.page.locator("#tile-visits .value")).not_to_have_text(DASH)
        self.page.wait_for_load_state("networkidle")

    def api_requests(self) -> list[str]:
        return [r for r in self.requests if "/api/v1/" in r]

    def assert_clean(self, expected_statuses: tuple[int, ...] = ()) -> None:
        """No error thrown, no CSP violation, no console error except the browser's own
        note of an API answer the test asked for (a 401 for a wrong token...)."""
        assert self.errors == []
        assert self.page.evaluate("window.__violations") == []
        allowed = tuple(f"status of {s}" for s in expected_statuses)
        unexpected = [m for m in self.console if not any(a in m for a in allowed)]
        assert unexpected == []


@pytest.fixture
def open_tab(browser: Browser, service: Service) -> Iterator[Callable[..., Tab]]:
    contexts: list[BrowserContext] = []

    def open_tab(width: int = 1280, height: int = 900) -> Tab:
        # A Vietnamese browser (conftest.py); a clock far from the site's time zone, which must
        # not shift any date shown.
        context = browser.new_context(
            viewport={"width": width, "height": height},
            locale=LOCALE,
            timezone_id="America/New_York",
        )
        contexts.append(context)
        page = context.new_page()
        page.add_init_script(WATCH_CSP)
        tab = Tab(page, service.origin)
        page.on("pageerror", lambda exc: tab.errors.append(str(exc)))
        page.on("console", lambda m: tab.console.append(m.text) if m.type == "error" else None)
        page.on("request", lambda r: tab.requests.append(r.url))
        return tab

    yield open_tab
    for context in contexts:
        context.close()


def signed_in(open_tab: Callable[..., Tab], token: str, path: str = "/admin") -> Tab:
    """A tab on the dashboard, signed in with `token`, its first period drawn."""
    tab = open_tab()
    tab.open(path)
    tab.sign_in(token)
    tab.wait_until_loaded()
    return tab


def caught(tab: Tab, held: list[Route]) -> Route:
    """The first request the route filling `held` caught. Playwright calls route handlers
    only while the test waits on the page, so this waits, in short steps, for at most 10 s."""
    deadline = time.monotonic() + 10
    while not held:
        assert time.monotonic() < deadline, "the request never reached its route"
        tab.page.wait_for_timeout(10)
    return held[0]


def vi(n: int) -> str:
    return format_number(n, "vi")


def vi_date(iso: str) -> str:
    y, m, d = iso.split("-")
    return f"{d}/{m}/{y}"


def vi_period(row: dict, interval: str) -> str:
    """A day by its date, a whole month by its name, a week or part of a month by its dates."""
    if interval == "day":
        return vi_date(row["period"])
    y, m, _ = (int(part) for part in row["period"].split("-"))
    last = date(y, m, calendar.monthrange(y, m)[1]).isoformat()
    if interval == "month" and (row["from"], row["to"]) == (row["period"], last):
        return f"Tháng {m}/{y}"
    return f"{vi_date(row['from'])[:5]} {DASH} {vi_date(row['to'])}"


def tile(tab: Tab, name: str) -> str:
    return tab.page.locator(f"#tile-{name} .value").inner_text()


def table_rows(tab: Tab) -> list[list[str]]:
    rows = tab.page.locator("#series-table tbody tr")
    return [[c.strip() for c in r.locator("th, td").all_inner_texts()] for r in rows.all()]


# The tooltip as text: the period, then "label: number" per line.
TIP_TEXT = """tip => [...tip.children].map(p => p.children.length
    ? [...p.children].map(c => c.textContent).join(": ") : p.textContent).join("\\n")"""


def chart_points(tab: Tab, rows: int) -> list[str]:
    """The tooltip of every point, found by sweeping the pointer across the plot in steps
    of a third of the room a point has when there are `rows` of them: a chart with another
    number of points shows another number of tooltips."""
    over = tab.page.locator("#chart .u-over")
    over.scroll_into_view_if_needed()
    box = over.bounding_box()
    assert box is not None
    tip = tab.page.locator("#chart .chart-tip")
    titles: list[str] = []
    step = max(2.0, box["width"] / (3 * rows))
    x = box["x"] + step / 2
    while x < box["x"] + box["width"]:
        tab.page.mouse.move(x, box["y"] + box["height"] / 2)
        if tip.is_visible():
            text = tip.evaluate(TIP_TEXT)
            if not titles or titles[-1] != text:
                titles.append(text)
        x += step
    tab.page.mouse.move(0, 0)
    return titles


def expected_point(row: dict, interval: str) -> str:
    return "\n".join(
        [
            vi_period(row, interval),
            f"Lượt truy cập: {vi(row['visits'])}",
            f"Lượt xem trang: {vi(row['pageviews'])}",
            f"Người truy cập: {vi(row['visitors'])}",
        ]
    )


def check_period(tab: Tab, service: Service, site: str, frm: str, to: str, interval: str) -> None:
    """Tiles, chart and table against the API's answer for the same period."""
    stats = service.api(f"{site}/stats", **{"from": frm, "to": to, "interval": interval})
    totals = stats["totals"]
    expect(tab.page.locator("#period-label")).to_contain_text(vi_date(frm))
    for name in ("visits", "pageviews", "visitors"):
        expect(tab.page.locator(f"#tile-{name} .value")).to_have_text(vi(totals[name]))
    counter = json.loads(service.get(f"/api/v1/sites/{site}/counter"))
    expect(tab.page.locator("#tile-total .value")).to_have_text(vi(counter["total"]["visits"]))
    expect(tab.page.locator("#tile-online .value")).to_have_text(vi(counter["online"]))
    points = chart_points(tab, len(stats["series"]))
    assert points == [expected_point(r, interval) for r in stats["series"]]
    tab.page.click("#view-toggle")
    expect(tab.page.locator("#series-table")).to_be_visible()
    expect(tab.page.locator("#chart")).to_be_hidden()
    assert table_rows(tab) == [
        [vi_period(r, interval), vi(r["visits"]), vi(r["pageviews"]), vi(r["visitors"])]
        for r in stats["series"]
    ]
    tab.page.click("#view-toggle")
    expect(tab.page.locator("#chart")).to_be_visible()


def test_a_site_token_opens_its_site_whose_tiles_chart_and_table_equal_the_api(
    service: Service, open_tab: Callable[..., Tab]
) -> None:
    tab = signed_in(open_tab, service.tokens["demo"])
    # One site only: the picker shows it and offers nothing else.
    expect(tab.page.locator("#site-picker option")).to_have_text(["Cổng thông tin demo (demo)"])
    expect(tab.page.locator("#site-picker")).to_be_disabled()
    # 30 days by default, by day, in the site's time zone.
    expect(tab.page.locator("[data-preset='30d']")).to_have_attribute("aria-pressed", "true")
    expect(tab.page.locator("#period-label")).to_have_text(
        f"30/10/2026 {DASH} 28/11/2026 · giờ Asia/Ho_Chi_Minh"
    )
    check_period(tab, service, "demo", "2026-10-30", "2026-11-28", "day")
    assert tile(tab, "total") == vi(BASELINE + 20)  # 30.565: the baseline and 20 visits
    tab.assert_clean()


def test_switching_the_period_changes_tiles_chart_and_table_and_compares_with_the_last(
    service: Service, open_tab: Callable[..., Tab]
) -> None:
    tab = signed_in(open_tab, service.tokens["demo"])
    assert service.api("demo")["history_from"] == "2026-11-20"

    # The site's numbers begin on 20/11, within the 7 days before these: no whole period to
    # compare with (4 visits of 2 of its days would show as +300 %).
    tab.page.click("[data-preset='7d']")
    check_period(tab, service, "demo", "2026-11-22", "2026-11-28", "day")
    expect(tab.page.locator("#tile-visits .change")).to_have_text(
        "Số liệu bắt đầu từ 20/11/2026: chưa có trọn kỳ trước để so sánh"
    )
    assert not [r for r in tab.requests if "from=2026-11-15" in r]

    # An old counter's history from before makes it a whole period.
    old_counter = urllib.request.Request(
        f"{service.origin}/api/v1/sites/demo/import",
        data=b"2026-11-01,5,9,5\n",
        headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "text/csv"},
    )
    urllib.request.urlopen(old_counter).close()
    tab.page.reload()
    tab.wait_until_loaded()
    check_period(tab, service, "demo", "2026-11-22", "2026-11-28", "day")
    # 16 visits against 4 in the 7 days before.
    expect(tab.page.locator("#tile-visits .change")).to_have_text("+300% so với kỳ trước")
    expect(tab.page.locator("#tile-visits .change")).to_have_attribute("data-trend", "up")

    tab.page.click("[data-preset='today']")
    check_period(tab, service, "demo", "2026-11-28", "2026-11-28", "day")
    expect(tab.page.locator("#tile-visits .change")).to_have_text("Kỳ trước chưa có số liệu")

    tab.page.click("[data-preset='12m']")
    expect(tab.page.locator("#interval")).to_have_value("month")  # the interval follows
    check_period(tab, service, "demo", "2025-12-01", "2026-11-28", "month")

    tab.page.click("[data-preset='month']")
    expect(tab.page.locator("#interval")).to_have_value("day")
    tab.page.select_option("#interval", "week")  # and can be changed
    check_period(tab, service, "demo", "2026-11-01", "2026-11-28", "week")

    tab.page.fill("#range-from", "2026-11-20")
    tab.page.fill("#range-to", "2026-11-23")
    tab.page.click("#custom-range button")
    expect(tab.page.locator("#interval")).to_have_value("day")
    check_period(tab, service, "demo", "2026-11-20", "2026-11-23", "day")
    tab.assert_clean()


def top_rows(tab: Tab, list_id: str) -> list[list[str]]:
    rows = tab.page.locator(f"#{list_id} tbody tr")
    return [[c.strip() for c in r.locator("th, td").all_inner_texts()] for r in rows.all()]


def share(part: int, whole: int) -> str:
    """As Intl.NumberFormat("vi", {style: "percent", minimumFractionDigits: 1,
    maximumFractionDigits: 1}): 25,0% and 6,3%."""
    percent = (Decimal(part) * 100 / whole).quantize(Decimal("0.1"), ROUND_HALF_UP)
    return f"{percent:f}".replace(".", ",") + "%"


def test_top_pages_and_referrers_equal_the_api_with_their_share_and_markup_stays_text(
    service: Service, open_tab: Callable[..., Tab]
) -> None:
    # An old counter's days in the period: totals, but no pages or referrers, so not in
    # what the shares are of (they made every share look smaller).
    old_counter = urllib.request.Request(
        f"{service.origin}/api/v1/sites/demo/import",
        data=b"2026-11-22,40,90,30\n2026-11-24,50,80,45\n",
        headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "text/csv"},
    )
    with urllib.request.urlopen(old_counter) as imported:
        assert json.loads(imported.read())["imported"] == 2
    tab = signed_in(open_tab, service.tokens["demo"])
    tab.page.click("[data-preset='7d']")
    period = {"from": "2026-11-22", "to": "2026-11-28"}
    expect(tab.page.locator("#period-label")).to_contain_text("22/11/2026")
    totals = service.api("demo/stats", **period)["totals"]

    answer = service.api("demo/pages", **period, limit=50)
    pages = answer["pages"]
    assert len(pages) == 13
    assert answer["pageviews"] == totals["pageviews"] - 90 - 80
    totals["pageviews"] = answer["pageviews"]
    totals["visits"] = service.api("demo/referrers", **period)["visits"]
    assert totals["visits"] == service.api("demo/stats", **period)["totals"]["visits"] - 40 - 50
    # Paths come percent-encoded, as browsers send them, and are shown decoded.
    expected = [
        [unquote(p["path"]), vi(p["pageviews"]), share(p["pageviews"], totals["pageviews"])]
        for p in pages
    ]
    expect(tab.page.locator("#top-pages tbody tr")).to_have_count(10)
    assert top_rows(tab, "top-pages") == expected[:10]
    tab.page.click("#top-pages .more")
    expect(tab.page.locator("#top-pages tbody tr")).to_have_count(13)
    assert top_rows(tab, "top-pages") == expected
    expect(tab.page.locator("#top-pages .more")).to_be_hidden()

    referrers = service.api("demo/referrers", **period)["referrers"]
    assert top_rows(tab, "top-referrers") == [
        [r["display_host"], vi(r["visits"]), share(r["visits"], totals["visits"])]
        for r in referrers
    ]
    expect(tab.page.locator("#top-referrers .more")).to_be_hidden()

    # The path with markup is shown as those characters, and nothing of it ran or loaded.
    expect(tab.page.get_by_text(XSS, exact=True)).to_be_visible()
    assert tab.page.locator("#top-pages img").count() == 0
    assert tab.page.evaluate("window.__pwned") is None
    assert not [r for r in tab.requests if r.endswith("/x")]
    tab.assert_clean()


def test_vietnamese_paths_and_idn_referrers_read_as_people_write_them(
    service: Service, open_tab: Callable[..., Tab]
) -> None:
    """A browser sends a page's path percent-encoded and a referrer's host in punycode: the
    dashboard showed /tin-t%E1%BB%A9c and xn--linhiphi-l1a7657ezfa.vn. The same words typed
    decomposed (ư + combining acute, as some Vietnamese keyboards do) are another path: it
    read the same as the first, so it is shown as sent."""
    decomposed = "/tin-tu%CC%9B%CC%81c/%C4%91%E1%BA%A1i-h%E1%BB%99i"
    paths = ["/tin-t%E1%BB%A9c/%C4%91%E1%BA%A1i-h%E1%BB%99i", decomposed]
    _viewed(service, paths, referrer="https://xn--linhiphi-l1a7657ezfa.vn/tin")
    today = {"from": "2026-11-28", "to": "2026-11-28"}
    idn = {"host": "xn--linhiphi-l1a7657ezfa.vn", "display_host": "liênhiệphội.vn", "visits": 1}
    assert idn in service.api("demo/referrers", **today)["referrers"]

    tab = signed_in(open_tab, service.tokens["demo"])
    tab.page.click("[data-preset='today']")
    expect(tab.page.locator("#top-pages")).to_contain_text("/tin-tức/đại-hội")
    expect(tab.page.locator("#top-pages")).to_contain_text(decomposed)
    expect(tab.page.locator("#top-referrers")).to_contain_text("liênhiệphội.vn")
    expect(tab.page.locator("#top-referrers")).not_to_contain_text("xn--")
    tab.assert_clean()


def _viewed(service: Service, paths: list[str], **fields: str) -> None:
    """A page view of each of `paths` (beside the fixture's "/a"), once they are written."""
    for path in paths:
        hit = {"site": "demo", "url": f"{PORTAL}{path}", **fields}
        request = urllib.request.Request(
            f"{service.origin}/api/v1/hit",
            data=json.dumps(hit).encode(),
            headers={"Content-Type": "application/json", "User-Agent": READER_UA},
        )
        with urllib.request.urlopen(request) as response:
            assert response.status == 202
    today = {"from": "2026-11-28", "to": "2026-11-28"}
    deadline = time.monotonic() + 10
    while len(service.api("demo/pages", **today)["pages"]) < len(paths) + 1:
        assert time.monotonic() < deadline, "the hits were never written"
        time.sleep(0.05)


def test_a_path_that_mixes_scripts_to_read_as_another_is_shown_as_sent(
    service: Service, open_tab: Callable[..., Tab]
) -> None:
    """Anyone can send a page view. /admin spelt with a Cyrillic a (U+0430) is another path
    that, decoded, read exactly as /admin: two rows the same, one of them the forger's. A
    word that mixes Latin letters with those of another script is shown as sent; Vietnamese,
    Russian, or Japanese mixing its kana and kanji with Latin, still read decoded."""
    spoof = "/%D0%B0dmin"  # a Cyrillic a, then "dmin"
    russian = "/%D0%BD%D0%BE%D0%B2%D0%BE%D1%81%D1%82%D0%B8"  # /новости
    japanese = "/%E3%83%8B%E3%83%A5%E3%83%BC%E3%82%B9news"  # /ニュースnews
    _viewed(service, ["/admin", spoof, russian, japanese])

    tab = signed_in(open_tab, service.tokens["demo"])
    tab.page.click("[data-preset='today']")
    expect(tab.page.locator("#top-pages tbody tr")).to_have_count(5)
    shown = [row[0] for row in top_rows(tab, "top-pages")]
    assert sorted(shown) == sorted(["/a", "/admin", spoof, unquote(russian), unquote(japanese)])
    tab.assert_clean()


def test_the_server_token_picks_any_site_and_a_wrong_token_calls_nothing_else(
    service: Service, open_tab: Callable[..., Tab]
) -> None:
    tab = open_tab()
    tab.open()
    tab.sign_in("not-a-token")
    expect(tab.page.locator("#sign-in-error")).to_have_text(
        "Mã truy cập không đúng. Hãy kiểm tra lại và dán đủ cả mã."
    )
    tab.page.wait_for_load_state("networkidle")
    assert tab.api_requests() == [f"{service.origin}/api/v1/token"]
    expect(tab.page.locator("#dashboard")).to_be_hidden()

    tab.sign_in(ADMIN)
    tab.wait_until_loaded()
    expect(tab.page.locator("#site-picker option")).to_have_text(
        ["Cổng thông tin demo (demo)", "Liên hiệp hội Thanh Hóa (lhh)"]
    )
    tab.page.select_option("#site-picker", "lhh")
    expect(tab.page.locator("#tile-visits .value")).to_have_text("1")
    check_period(tab, service, "lhh", "2026-10-30", "2026-11-28", "day")
    # The token lives in this tab's sessionStorage only: no cookie, no URL, no localStorage.
    assert tab.page.evaluate("sessionStorage.getItem('analytics.token')") == ADMIN
    assert tab.page.context.cookies() == []
    assert tab.page.evaluate("JSON.stringify(localStorage)").find(ADMIN) < 0
    assert not [r for r in tab.requests if ADMIN in r]

    # A reload keeps the session; signing out forgets it.
    tab.page.reload()
    tab.wait_until_loaded()
    expect(tab.page.locator("#site-picker")).to_have_value("lhh")
    tab.page.click("#sign-out")
    expect(tab.page.locator("#sign-in")).to_be_visible()
    assert tab.page.evaluate("sessionStorage.getItem('analytics.token')") is None
    tab.page.reload()
    expect(tab.page.locator("#sign-in")).to_be_visible()
    tab.assert_clean(expected_statuses=(401,))


def test_a_token_pasted_with_a_character_no_token_has_is_called_wrong_not_unreachable(
    service: Service, open_tab: Callable[..., Tab]
) -> None:
    """A token copied through a chat app or a word processor can come with a zero-width
    space or an en dash for "-". fetch refuses such a header before sending anything, and the form
    said the service could not be reached: try later, for a token that will never work."""
    tab = open_tab()
    tab.open()
    for pasted in (ADMIN.replace("-", "\u2013"), ADMIN + "\u200b"):
        tab.sign_in(pasted)
        expect(tab.page.locator("#sign-in-error")).to_have_text(
            "Mã truy cập không đúng: có ký tự không thể có trong mã (dấu gạch dài"
            f" {DASH} thay cho -,"
            " hoặc ký tự ẩn). Hãy sao chép lại mã."
        )
        expect(tab.page.locator("#sign-in-token")).to_have_attribute("aria-invalid", "true")
    assert tab.api_requests() == []
    tab.sign_in(ADMIN)
    tab.wait_until_loaded()
    tab.assert_clean()


def test_a_token_pasted_with_its_authorization_scheme_signs_in(
    service: Service, open_tab: Callable[..., Tab]
) -> None:
    """README's curl examples send `Authorization: Bearer TOKEN`; a token copied from one
    with its scheme was called wrong, without saying why."""
    tab = open_tab()
    tab.open()
    tab.sign_in(f"Bearer {service.tokens['demo']}")
    tab.wait_until_loaded()
    tab.assert_clean()


def test_the_server_token_opens_the_site_the_address_names_first(
    service: Service, open_tab: Callable[..., Tab]
) -> None:
    tab = signed_in(open_tab, ADMIN, "/admin?site=lhh")
    expect(tab.page.locator("#site-picker")).to_have_value("lhh")
    expect(tab.page.locator("#site-picker")).to_be_enabled()
    tab.assert_clean()


def test_the_address_names_the_site_on_screen_and_wins_over_the_one_this_tab_saw_last(
    service: Service, open_tab: Callable[..., Tab]
) -> None:
    tab = signed_in(open_tab, ADMIN)
    expect(tab.page.locator("#site-picker")).to_have_value("demo")
    tab.page.select_option("#site-picker", "lhh")
    expect(tab.page).to_have_url(f"{service.origin}/admin?site=lhh")
    # A link to another site, opened in this tab (which remembers lhh).
    tab.open("/admin?site=demo")
    tab.wait_until_loaded()
    expect(tab.page.locator("#site-picker")).to_have_value("demo")
    tab.assert_clean()


def test_a_reload_the_back_button_or_a_link_shows_the_period_and_interval_on_screen(
    service: Service, open_tab: Callable[..., Tab]
) -> None:
    """Only the site was in the address: an admin who had picked "7 ngày" by week, or typed
    dates, and pressed F5, or followed a link and came back, or sent the address to a
    colleague, got the default 30 days by day."""
    tab = signed_in(open_tab, ADMIN, "/admin?site=demo")
    page = tab.page
    page.click("[data-preset='7d']")
    page.select_option("#interval", "week")
    expect(page).to_have_url(f"{service.origin}/admin?site=demo&period=7d&interval=week")
    page.reload()
    tab.wait_until_loaded()
    expect(page.locator("[data-preset='7d']")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#interval")).to_have_value("week")
    check_period(tab, service, "demo", "2026-11-22", "2026-11-28", "week")

    page.fill("#range-from", "2025-12-20")
    page.fill("#range-to", "2026-01-10")
    page.click("#custom-range button")
    expect(page).to_have_url(f"{service.origin}/admin?site=demo&from=2025-12-20&to=2026-01-10")
    tab.open("/healthz")
    page.go_back()
    tab.wait_until_loaded()
    expect(page.locator("#range-from")).to_have_value("2025-12-20")
    check_period(tab, service, "demo", "2025-12-20", "2026-01-10", "day")

    # The address sent to another admin opens that period for them.
    link = "/admin?site=lhh&from=2026-11-20&to=2026-11-26&interval=month"
    other = signed_in(open_tab, ADMIN, link)
    expect(other.page.locator("#interval")).to_have_value("month")
    expect(other.page.locator("[aria-pressed='true']")).to_have_count(0)
    check_period(other, service, "lhh", "2026-11-20", "2026-11-26", "month")
    # Dates belong to the site they were chosen for: another site picked starts at 30 days.
    other.page.select_option("#site-picker", "demo")
    expect(other.page.locator("#period-label")).to_contain_text("30/10/2026")
    expect(other.page).to_have_url(f"{service.origin}/admin?site=demo")
    tab.assert_clean()
    other.assert_clean()


def shows_period(tab: Tab, service: Service, site: str, frm: str, to: str, interval: str) -> None:
    """The controls and the drawn numbers are those of `site` over frm..to by `interval`."""
    stats = service.api(f"{site}/stats", **{"from": frm, "to": to, "interval": interval})
    page = tab.page
    expect(page.locator("#site-picker")).to_have_value(site)
    expect(page.locator("#range-from")).to_have_value(frm)
    expect(page.locator("#range-to")).to_have_value(to)
    expect(page.locator("#interval")).to_have_value(interval)
    expect(page.locator("#period-label")).to_contain_text(f"{vi_date(frm)} {DASH} {vi_date(to)}")
    expect(page.locator("#tile-visits .value")).to_have_text(vi(stats["totals"]["visits"]))
    expect(page.locator("#series-table tbody tr")).to_have_count(len(stats["series"]))


def test_back_and_forward_step_through_each_site_period_and_interval_the_admin_chose(
    service: Service, open_tab: Callable[..., Tab]
) -> None:
    """The view was kept in the address by replacing its entry: Back after picking "7 ngày",
    then a week view, then dates, then another site left the dashboard for the page before
    it. Each choice is an entry; Back and Forward load the entry's view and add none; the
    refresh every 30 s adds none."""
    tab = open_tab()
    page = tab.page
    page.clock.install(time=START)
    tab.open("/admin?site=demo")
    tab.sign_in(ADMIN)
    tab.wait_until_loaded()
    base = f"{service.origin}/admin?site="
    entries = page.evaluate("history.length")

    page.click("[data-preset='7d']")
    expect(page).to_have_url(f"{base}demo&period=7d")
    page.click("[data-preset='7d']")  # the view on screen again: no entry
    page.select_option("#interval", "week")
    expect(page).to_have_url(f"{base}demo&period=7d&interval=week")
    page.fill("#range-from", "2026-11-20")
    page.fill("#range-to", "2026-11-26")
    page.click("#custom-range button")
    expect(page).to_have_url(f"{base}demo&from=2026-11-20&to=2026-11-26")
    page.select_option("#site-picker", "lhh")
    expect(page).to_have_url(f"{base}lhh")
    shows_period(tab, service, "lhh", "2026-10-30", "2026-11-28", "day")
    assert page.evaluate("history.length") == entries + 4

    steps = [
        (f"{base}demo&from=2026-11-20&to=2026-11-26", ("demo", "2026-11-20", "2026-11-26", "day")),
        (f"{base}demo&period=7d&interval=week", ("demo", "2026-11-22", "2026-11-28", "week")),
        (f"{base}demo&period=7d", ("demo", "2026-11-22", "2026-11-28", "day")),
        (f"{base}demo", ("demo", "2026-10-30", "2026-11-28", "day")),
    ]
    for url, shown in steps:
        page.go_back()
        expect(page).to_have_url(url)
        shows_period(tab, service, *shown)
    expect(page.locator("[data-preset='30d']")).to_have_attribute("aria-pressed", "true")
    page.go_forward()
    page.go_forward()
    expect(page).to_have_url(f"{base}demo&period=7d&interval=week")
    shows_period(tab, service, "demo", "2026-11-22", "2026-11-28", "week")
    assert page.evaluate("history.length") == entries + 4

    # The refresh of a period with today in it (today's numbers moved) adds no entry.
    _viewed(service, ["/tin-moi"])
    page.clock.run_for(31_000)
    shows_period(tab, service, "demo", "2026-11-22", "2026-11-28", "week")
    assert page.evaluate("history.length") == entries + 4
    page.reload()
    tab.wait_until_loaded()
    shows_period(tab, service, "demo", "2026-11-22", "2026-11-28", "week")
    page.go_forward()
    expect(page).to_have_url(f"{base}demo&from=2026-11-20&to=2026-11-26")
    shows_period(tab, service, "demo", "2026-11-20", "2026-11-26", "day")
    assert page.evaluate("history.length") == entries + 4
    tab.assert_clean()


def test_a_site_picked_before_the_last_ones_first_read_came_back_shows_only_its_own_numbers(
    service: Service, open_tab: Callable[..., Tab]
) -> None:
    """lhh is picked and, before its counter answers, demo again: lhh's late answer must
    neither be drawn under demo nor start a second refresh timer."""
    tab = open_tab()
    tab.page.clock.install(time=START)
    tab.page.clock.pause_at(START + 1)
    tab.open()
    tab.sign_in(ADMIN)
    tab.wait_until_loaded()
    held: list = []
    lhh_counter = "**/api/v1/sites/lhh/counter"
    tab.page.route(lhh_counter, lambda route: held.append(route))
    tab.page.select_option("#site-picker", "lhh")
    lhh_read = caught(tab, held)
    assert len(held) == 1
    tab.page.select_option("#site-picker", "demo")
    tab.page.wait_for_load_state("networkidle")
    lhh_read.continue_()
    tab.page.unroute(lhh_counter)
    demo = json.loads(service.get("/api/v1/sites/demo/counter"))
    lhh = json.loads(service.get("/api/v1/sites/lhh/counter"))
    assert demo["total"]["visits"] != lhh["total"]["visits"]
    tab.page.wait_for_load_state("networkidle")
    expect(tab.page.locator("#tile-total .value")).to_have_text(vi(demo["total"]["visits"]))
    lhh_reads = sum(1 for r in tab.requests if r.endswith("/sites/lhh/counter"))
    tab.page.clock.run_for(95_000)  # three refreshes
    tab.page.wait_for_load_state("networkidle")
    assert sum(1 for r in tab.requests if r.endswith("/sites/lhh/counter")) == lhh_reads
    expect(tab.page.locator("#tile-total .value")).to_have_text(vi(demo["total"]["visits"]))
    tab.assert_clean()


UNAVAILABLE = {"error": {"code": "storage_unavailable", "message": "Redis is unavailable"}}
TILES = ("online", "visits", "pageviews", "visitors", "total")


def fail_with_503(route: Route) -> None:
    route.fulfill(status=503, json=UNAVAILABLE)


def expect_no_numbers(tab: Tab) -> None:
    for name in TILES:
        expect(tab.page.locator(f"#tile-{name} .value")).to_have_text(DASH)
    expect(tab.page.locator("#top-pages tbody tr")).to_have_count(0)
    expect(tab.page.locator("#top-referrers tbody tr")).to_have_count(0)


def test_after_the_sites_midnight_the_period_on_screen_moves_to_the_new_day(
    service: Service, open_tab: Callable[..., Tab], clock: FrozenClock
) -> None:
    """The counter's read every 30 s brings the site's new date: "Hôm nay" is then that day,
    not the day the tab signed in on."""
    tab = open_tab()
    tab.page.clock.install(time=START)
    tab.open()
    tab.sign_in(service.tokens["demo"])
    tab.wait_until_loaded()
    tab.page.click("[data-preset='today']")
    label = tab.page.locator("#period-label")
    expect(label).to_contain_text("28/11/2026")
    expect(tab.page.locator("#tile-visits .value")).to_have_text("1")
    clock.set(at(HANOI, 2026, 11, 29, 0, 1))
    tab.page.clock.run_for(31_000)
    expect(label).to_contain_text("29/11/2026")
    expect(tab.page.locator("#tile-visits .value")).to_have_text("0")
    tab.assert_clean()


def test_a_period_that_takes_today_in_follows_todays_hits_as_the_total_does(
    service: Service, open_tab: Callable[..., Tab]
) -> None:
    """A dashboard left open on "Hôm nay" (a wall screen): every 30 s the counter's read
    moved "Đã truy cập" on with the day's new visits, while the period's tiles, chart and
    top pages stayed at the numbers of the sign-in, shown as the day's."""
    tab = open_tab()
    tab.page.clock.install(time=START)
    tab.open()
    tab.sign_in(service.tokens["demo"])
    tab.wait_until_loaded()
    tab.page.click("[data-preset='today']")
    expect(tab.page.locator("#tile-visits .value")).to_have_text("1")
    # Someone typing another period meanwhile keeps what they typed.
    tab.page.fill("#range-from", "2026-11-01")
    _viewed(service, ["/tin-moi"])
    today = {"from": "2026-11-28", "to": "2026-11-28"}
    stats = service.api("demo/stats", **today)
    assert stats["totals"]["visits"] == 2
    tab.page.clock.run_for(31_000)
    total = service.api("demo/counter")["total"]["visits"]
    expect(tab.page.locator("#tile-total .value")).to_have_text(vi(total))
    expect(tab.page.locator("#tile-visits .value")).to_have_text("2")
    expect(tab.page.locator("#top-pages tbody tr")).to_have_count(2)
    tab.page.click("#view-toggle")
    assert table_rows(tab) == [["28/11/2026", "2", "2", "2"]]
    expect(tab.page.locator("#range-from")).to_have_value("2026-11-01")
    tab.assert_clean()


def test_a_refresh_of_the_same_period_does_not_rewrite_its_spoken_label(
    service: Service, open_tab: Callable[..., Tab]
) -> None:
    """The period's label is a live region: a screen reader reads out what is put in it. A
    dashboard left open on a site with readers read its period again at every refresh, every
    30 s, because the same words were put in anew."""
    tab = open_tab()
    tab.page.clock.install(time=START)
    tab.open()
    tab.sign_in(service.tokens["demo"])
    tab.wait_until_loaded()
    label = tab.page.locator("#period-label")
    expect(label).to_have_attribute("aria-live", "polite")
    label.evaluate(
        """node => { window.__labelChanges = 0;
        new MutationObserver(m => { window.__labelChanges += m.length; })
            .observe(node, {childList: true, characterData: true, subtree: true}); }"""
    )
    _viewed(service, ["/tin-moi"])
    tab.page.clock.run_for(31_000)
    expect(tab.page.locator("#tile-visits .value")).to_have_text(vi(21))
    assert tab.page.evaluate("window.__labelChanges") == 0
    tab.page.click("[data-preset='7d']")
    expect(label).to_contain_text("22/11/2026")
    tab.assert_clean()


def test_the_sites_midnight_moves_the_period_but_keeps_the_interval_the_admin_chose(
    service: Service, open_tab: Callable[..., Tab], clock: FrozenClock
) -> None:
    """A dashboard left open (a wall screen, a tab kept for the day) with "Tháng này" shown
    by week: at the site's midnight the period moved to the new day and the chart and table
    went back to days, the interval the admin had picked dropped without a word."""
    tab = open_tab()
    tab.page.clock.install(time=START)
    tab.open()
    tab.sign_in(service.tokens["demo"])
    tab.wait_until_loaded()
    tab.page.click("[data-preset='month']")
    tab.page.select_option("#interval", "week")
    tab.page.click("#view-toggle")
    rows = tab.page.locator("#series-table tbody tr")
    expect(rows).to_have_count(5)  # 1 to 28 November 2026 by ISO week
    expect(rows.first.locator("th")).to_have_text(f"01/11 {DASH} 01/11/2026")
    clock.set(at(HANOI, 2026, 11, 29, 0, 1))
    tab.page.clock.run_for(31_000)
    expect(tab.page.locator("#period-label")).to_contain_text(f"01/11/2026 {DASH} 29/11/2026")
    expect(tab.page.locator("#interval")).to_have_value("week")
    expect(rows).to_have_count(5)
    expect(rows.last.locator("th")).to_have_text(f"23/11 {DASH} 29/11/2026")
    tab.assert_clean()


def test_a_site_switched_to_whose_counter_fails_shows_none_of_the_last_sites_numbers(
    service: Service, open_tab: Callable[..., Tab]
) -> None:
    tab = signed_in(open_tab, ADMIN, "/admin?site=demo")
    expect(tab.page.locator("#top-pages tbody tr").first).to_be_visible()
    tab.page.route("**/api/v1/sites/lhh/counter", fail_with_503)
    tab.page.select_option("#site-picker", "lhh")
    expect(tab.page.locator("#load-error")).to_contain_text("Redis is unavailable")
    expect_no_numbers(tab)
    tab.assert_clean(expected_statuses=(503,))


def test_the_next_token_signed_in_never_sees_the_last_ones_site(
    service: Service, open_tab: Callable[..., Tab]
) -> None:
    """The server's admin looks at demo and signs out; lhh's owner signs in on the same tab.
    Until lhh's own numbers come, nothing of demo's may show."""
    tab = signed_in(open_tab, ADMIN, "/admin?site=demo")
    expect(tab.page.locator("#top-pages tbody tr").first).to_be_visible()
    tab.page.click("#sign-out")
    held: list[Route] = []
    tab.page.route("**/api/v1/sites/lhh/counter", lambda route: held.append(route))
    tab.sign_in(service.tokens["lhh"])
    expect(tab.page.get_by_role("heading", level=1)).to_have_text("Liên hiệp hội Thanh Hóa")
    caught(tab, held)
    expect_no_numbers(tab)
    held[0].continue_()
    tab.page.unroute("**/api/v1/sites/lhh/counter")
    lhh = service.api("lhh/counter")
    expect(tab.page.locator("#tile-total .value")).to_have_text(vi(lhh["total"]["visits"]))
    tab.assert_clean()


def test_a_token_rotated_meanwhile_signs_the_tab_out_saying_the_session_ended(
    service: Service, open_tab: Callable[..., Tab], settings: Settings, clock: FrozenClock
) -> None:
    """`site token demo --rotate` while the admin's tab is open: the next call, or the next
    reload, signs it out. The reload said the token was mistyped ("check it and paste it
    whole") to an admin who had pasted nothing since yesterday."""
    ended = "Phiên làm việc đã kết thúc: mã truy cập không còn dùng được. Hãy đăng nhập lại."
    engine = db.create_engine(settings.effective_database_url)
    for reload in (False, True):
        tab = signed_in(open_tab, service.tokens["demo"])
        service.tokens["demo"] = SiteRepository(engine).rotate_token("demo", clock())
        if reload:
            tab.page.reload()
        else:
            tab.page.click("[data-preset='7d']")
        expect(tab.page.locator("#sign-in-error")).to_have_text(ended)
        expect(tab.page.locator("#sign-in-token")).to_be_focused()
        expect(tab.page.locator("#dashboard")).to_be_hidden()
        assert tab.page.evaluate("sessionStorage.getItem('analytics.token')") is None
        tab.assert_clean(expected_statuses=(401,))
    engine.dispose()


def test_a_reload_while_the_service_cannot_answer_keeps_the_token_for_the_next_one(
    service: Service, open_tab: Callable[..., Tab]
) -> None:
    """Only a token that stopped working signs the tab out: a site's token is printed once."""
    tab = signed_in(open_tab, service.tokens["demo"])
    tab.page.route("**/api/v1/token", fail_with_503)
    tab.page.reload()
    # The API's reason in the sentence, as words (it read "[object HTMLSpanElement]").
    expect(tab.page.locator("#sign-in-error")).to_have_text(
        f"Không tải được số liệu: {UNAVAILABLE['error']['message']} Tải lại trang để thử lại."
    )
    expect(tab.page.locator("#sign-in-error [lang=en]")).to_have_text(
        UNAVAILABLE["error"]["message"]
    )
    tab.page.unroute("**/api/v1/token")
    tab.page.reload()
    tab.wait_until_loaded()
    expect(tab.page.get_by_role("heading", level=1)).to_have_text("Cổng thông tin demo")
    tab.assert_clean(expected_statuses=(503,))


def test_a_counter_that_fails_at_sign_in_is_read_again_and_then_the_period_loads(
    service: Service, open_tab: Callable[..., Tab]
) -> None:
    tab = open_tab()
    tab.page.clock.install(time=START)
    tab.page.route("**/api/v1/sites/demo/counter", fail_with_503)
    tab.open()
    tab.sign_in(service.tokens["demo"])
    expect(tab.page.locator("#load-error")).to_contain_text("Redis is unavailable")
    tab.page.click("[data-preset='7d']")  # waits for the site's today; throws nothing
    tab.page.unroute("**/api/v1/sites/demo/counter")
    tab.page.clock.run_for(31_000)
    expect(tab.page.locator("#period-label")).to_contain_text("22/11/2026")
    demo = service.api("demo/counter")
    expect(tab.page.locator("#tile-total .value")).to_have_text(vi(demo["total"]["visits"]))
    expect(tab.page.locator("#load-error")).to_be_hidden()
    tab.assert_clean(expected_statuses=(503,))


def test_a_saved_baseline_is_in_the_form_when_its_site_is_picked_again(
    service: Service, open_tab: Callable[..., Tab]
) -> None:
    """Picked again, the form showed the old values, and saving the pageviews alone wrote
    the old visits back."""
    tab = signed_in(open_tab, ADMIN, "/admin?site=demo")
    tab.page.fill("#baseline-visits", "40000")
    tab.page.click("#baseline-form button")
    expect(tab.page.locator("#baseline-form .status")).to_contain_text("Đã lưu")
    tab.page.select_option("#site-picker", "lhh")
    tab.wait_until_loaded()
    tab.page.select_option("#site-picker", "demo")
    expect(tab.page.locator("#baseline-visits")).to_have_value("40000")
    tab.assert_clean()


def test_a_baseline_or_an_import_answered_after_another_site_is_picked_stays_its_own_sites(
    service: Service, open_tab: Callable[..., Tab]
) -> None:
    """demo's baseline answered once lhh was picked: lhh's form said "Đã lưu" with lhh's
    total and, picked again later, showed demo's numbers as lhh's own (saving it wrote them
    to lhh). An import answered likewise said "Đã nhập" under lhh, and a file chosen for
    demo stayed in lhh's form."""
    tab = signed_in(open_tab, ADMIN, "/admin?site=demo")
    page = tab.page
    held: list[Route] = []
    for endpoint in ("baseline", "import"):
        page.route(f"**/api/v1/sites/demo/{endpoint}", lambda route: held.append(route))
    page.fill("#baseline-visits", "40000")
    page.click("#baseline-form button")
    saving = caught(tab, held)
    page.set_input_files(
        "#import-file",
        files=[{"name": "old.csv", "mimeType": "text/csv", "buffer": b"2026-11-10,5,9,4\n"}],
    )
    page.click("#import-form button")
    page.wait_for_timeout(0)
    importing = caught(tab, held[1:])
    page.select_option("#site-picker", "lhh")
    tab.wait_until_loaded()
    lhh_visits = page.locator("#baseline-visits").input_value()
    assert lhh_visits != "40000"
    expect(page.locator("#import-file")).to_have_value("")  # demo's file is not lhh's
    saving.continue_()
    importing.continue_()
    page.unroute("**/api/v1/sites/demo/baseline")
    page.unroute("**/api/v1/sites/demo/import")
    expect(page.locator("#baseline-form button")).to_be_enabled()
    expect(page.locator("#import-form button")).to_be_enabled()
    page.wait_for_load_state("networkidle")
    expect(page.locator("#baseline-form .status")).to_be_hidden()
    expect(page.locator("#import-form .status")).to_be_hidden()
    expect(page.locator("#baseline-visits")).to_have_value(lhh_visits)
    assert service.api("demo")["baseline"]["visits"] == 40000  # both went to demo
    assert service.api("lhh")["baseline"]["visits"] == int(lhh_visits)
    page.select_option("#site-picker", "demo")
    expect(page.locator("#baseline-visits")).to_have_value("40000")
    tab.assert_clean()


def test_a_baseline_saved_while_the_counter_cannot_be_read_says_it_is_saved(
    service: Service, open_tab: Callable[..., Tab]
) -> None:
    """The save went through and only the read of the new total after it failed: the form
    said the save had failed."""
    tab = signed_in(open_tab, service.tokens["demo"])
    tab.page.route("**/api/v1/sites/demo/counter", fail_with_503)
    tab.page.fill("#baseline-visits", "40000")
    tab.page.click("#baseline-form button")
    expect(tab.page.locator("#baseline-form .status")).to_have_text("Đã lưu.")
    assert service.api("demo")["baseline"]["visits"] == 40000
    tab.assert_clean(expected_statuses=(503,))


def test_a_period_that_fails_to_load_shows_none_of_the_last_periods_numbers(
    service: Service, open_tab: Callable[..., Tab]
) -> None:
    """ "7 ngày" pressed while the service could not answer: the buttons and the dates said
    7 days (and the export took them), the tiles, chart and lists the 30 days before."""
    tab = signed_in(open_tab, service.tokens["demo"])
    page = tab.page
    expect(page.locator("#top-pages tbody tr").first).to_be_visible()
    page.route("**/api/v1/sites/demo/stats?*", fail_with_503)
    page.click("[data-preset='7d']")
    expect(page.locator("#load-error")).to_contain_text("Redis is unavailable")
    expect(page.locator("[data-preset='7d']")).to_have_attribute("aria-pressed", "true")
    for name in ("visits", "pageviews", "visitors"):
        expect(page.locator(f"#tile-{name} .value")).to_have_text(DASH)
    expect(page.locator("#tile-total .value")).not_to_have_text(DASH)  # the site's own
    expect(page.locator("#period-label")).to_have_text("")
    expect(page.locator("#top-pages tbody tr")).to_have_count(0)
    expect(page.locator("#series-table tr")).to_have_count(0)
    tab.assert_clean(expected_statuses=(503,))


def test_a_period_still_on_its_way_marks_the_last_periods_numbers_as_not_its_own(
    service: Service, open_tab: Callable[..., Tab]
) -> None:
    """A database that takes its time (SQLite's 15 s busy wait, nginx's 10 s): for as long,
    "12 tháng" was pressed and its dates in the fields while the tiles, chart and lists
    showed the 30 days' numbers, as they were, with nothing saying they were not the year's."""
    tab = signed_in(open_tab, service.tokens["demo"])
    page = tab.page
    held: list[Route] = []
    page.route("**/api/v1/sites/demo/stats?from=2026-11-22*", lambda route: held.append(route))
    page.click("[data-preset='7d']")
    waiting = caught(tab, held)
    expect(page.locator("[data-preset='7d']")).to_have_attribute("aria-pressed", "true")
    shown = ["#period-label", "#tile-visits", "#tile-pageviews", "#tile-visitors", "#chart"]
    shown += ["#series-table", "#top-pages", "#top-referrers"]
    for selector in shown:
        expect(page.locator(selector)).to_have_attribute("aria-busy", "true")
    expect(page.locator("#tile-visits")).to_have_css("opacity", "0.6")
    expect(page.locator("#tile-total")).not_to_have_attribute("aria-busy", "true")  # the site's
    waiting.continue_()
    page.unroute("**/api/v1/sites/demo/stats?from=2026-11-22*")
    expect(page.locator("#period-label")).to_contain_text("22/11/2026")
    page.wait_for_load_state("networkidle")
    for selector in shown:
        expect(page.locator(selector)).not_to_have_attribute("aria-busy", "true")
    expect(page.locator("#tile-visits")).to_have_css("opacity", "1")
    tab.assert_clean()


def test_a_wrong_custom_period_marks_its_field_and_a_week_across_new_year_names_both_years(
    service: Service, open_tab: Callable[..., Tab]
) -> None:
    tab = signed_in(open_tab, service.tokens["demo"])
    page = tab.page
    # The top lists are tables a screen reader lists by name.
    expect(page.get_by_role("table", name="Trang được xem nhiều")).to_have_count(1)
    expect(page.get_by_role("table", name="Nguồn truy cập")).to_have_count(1)
    start, end = page.locator("#range-from"), page.locator("#range-to")
    start.fill("")
    page.click("#custom-range button")
    expect(start).to_be_focused()
    expect(start).to_have_attribute("aria-invalid", "true")
    expect(start).to_have_accessible_description(re.compile("^Ngày bắt đầu phải"))
    start.fill("2025-12-20")
    end.fill("2026-01-10")
    page.click("#custom-range button")
    expect(page.locator("#period-label")).to_contain_text("20/12/2025")
    assert start.get_attribute("aria-invalid") is None
    page.select_option("#interval", "week")
    page.click("#view-toggle")
    expect(page.locator("#series-table")).to_contain_text(f"29/12/2025 {DASH} 04/01/2026")
    # The months it takes part of, by their dates: "Tháng 12/2025" over 20-31 December
    # read as the whole month's numbers.
    page.select_option("#interval", "month")
    expect(page.locator("#series-table tbody th")).to_have_text(
        [f"20/12 {DASH} 31/12/2025", f"01/01 {DASH} 10/01/2026"]
    )
    start.fill("2025-11-01")
    page.click("#custom-range button")
    page.select_option("#interval", "month")
    expect(page.locator("#series-table tbody th")).to_have_text(
        ["Tháng 11/2025", "Tháng 12/2025", f"01/01 {DASH} 10/01/2026"]
    )
    tab.assert_clean()


def test_a_period_at_the_first_date_the_api_takes_has_no_previous_one_to_compare_with(
    service: Service, open_tab: Callable[..., Tab]
) -> None:
    tab = signed_in(open_tab, service.tokens["demo"])
    tab.page.fill("#range-from", "1899-12-31")
    tab.page.fill("#range-to", "1900-01-31")
    tab.page.click("#custom-range button")
    expect(tab.page.locator("#load-error")).to_contain_text("01/01/1900")
    tab.page.fill("#range-from", "1900-01-01")
    tab.page.click("#custom-range button")
    expect(tab.page.locator("#period-label")).to_contain_text("01/01/1900")
    expect(tab.page.locator("#tile-visits .change")).to_have_text(
        "Số liệu bắt đầu từ 20/11/2026: chưa có trọn kỳ trước để so sánh"
    )
    expect(tab.page.locator("#load-error")).to_be_empty()
    assert not [r for r in tab.requests if "from=1899" in r]
    tab.assert_clean()


def test_export_downloads_the_periods_csv_as_the_api_gives_it(
    service: Service, open_tab: Callable[..., Tab]
) -> None:
    tab = signed_in(open_tab, service.tokens["demo"])
    tab.page.click("[data-preset='7d']")
    expect(tab.page.locator("#period-label")).to_contain_text("22/11/2026")
    with tab.page.expect_download() as download:
        tab.page.click("#export")
    saved = download.value
    assert saved.suggested_filename == "demo-2026-11-22-2026-11-28.csv"
    with open(saved.path(), encoding="utf-8") as f:
        got = f.read()
    api = service.get("/api/v1/sites/demo/export.csv", **{"from": "2026-11-22", "to": "2026-11-28"})
    assert got == api.decode()
    assert got.splitlines()[5] == "2026-11-26,12,12,12,0,0,0"
    tab.page.get_by_label("Các cột cách nhau bằng dấu chấm phẩy (;)").check()
    with tab.page.expect_download() as download:
        tab.page.click("#export")
    with open(download.value.path(), encoding="utf-8") as f:
        assert f.read() == got.replace(",", ";")
    tab.assert_clean()


def test_a_bad_import_shows_each_bad_lines_number_and_writes_nothing_a_good_one_shows(
    service: Service, open_tab: Callable[..., Tab]
) -> None:
    tab = signed_in(open_tab, service.tokens["demo"])
    bad = (
        "date;visits;pageviews;visitors\n2026-11-10;40;90;35\n2026-11-11;x;1;1\n2026-02-30;1;1;1\n"
    )
    tab.page.set_input_files(
        "#import-file", files=[{"name": "old.csv", "mimeType": "text/csv", "buffer": bad.encode()}]
    )
    tab.page.click("#import-form button")
    expect(tab.page.locator("#import-form .status")).to_have_text("Không nhập gì. Các dòng lỗi:")
    expect(tab.page.locator("#import-form .problems li")).to_have_text(
        [
            "line 3: visits 'x' is not a whole number >= 0",
            "line 4: date '2026-02-30' is not a date YYYY-MM-DD (or DD/MM/YYYY, MM/DD/YYYY) "
            "from 1900-01-01",
        ]
    )
    stats = service.api("demo/stats", **{"from": "2026-11-10", "to": "2026-11-10"})
    assert stats["totals"]["visits"] == 0

    good = bad.splitlines()[:2]
    tab.page.set_input_files(
        "#import-file",
        files=[{"name": "old.csv", "mimeType": "text/csv", "buffer": "\n".join(good).encode()}],
    )
    # The service unable to take it: said so, not "could not load the numbers".
    tab.page.route("**/api/v1/sites/demo/import", fail_with_503)
    tab.page.click("#import-form button")
    expect(tab.page.locator("#import-form .status")).to_have_text(
        f"Chưa nhập được tệp: {UNAVAILABLE['error']['message']}"
    )
    tab.page.unroute("**/api/v1/sites/demo/import")
    tab.page.click("#import-form button")
    expect(tab.page.locator("#import-form .status")).to_have_text("Đã nhập 1 ngày: 10/11/2026.")
    expect(tab.page.locator("#import-form .problems")).to_be_hidden()
    # The chart now has the imported day (and the tiles its visits).
    expect(tab.page.locator("#tile-visits .value")).to_have_text(vi(20 + 40))
    point = [p for p in chart_points(tab, 30) if p.startswith("10/11/2026")]
    assert point == ["10/11/2026\nLượt truy cập: 40\nLượt xem trang: 90\nNgười truy cập: 35"]
    tab.assert_clean(expected_statuses=(400, 503))


def test_an_import_over_the_apis_4_mb_is_refused_in_the_page_and_never_sent(
    service: Service, open_tab: Callable[..., Tab]
) -> None:
    tab = signed_in(open_tab, service.tokens["demo"])
    rows = "".join(f"2020-01-{d % 28 + 1:02};1;1;1\n" for d in range(300_000))
    big = f"date;visits;pageviews;visitors\n{rows}".encode()
    assert len(big) > 4 * 1024 * 1024
    tab.page.set_input_files(
        "#import-file", files=[{"name": "old.csv", "mimeType": "text/csv", "buffer": big}]
    )
    tab.page.click("#import-form button")
    expect(tab.page.locator("#import-form .status")).to_have_text(
        "Tệp lớn hơn 4 MB: hãy chia theo khoảng ngày rồi nhập từng tệp."
    )
    assert not [r for r in tab.api_requests() if r.endswith("/import")]
    tab.assert_clean()


def test_the_baseline_form_shows_the_old_counter_and_moves_the_total(
    service: Service, open_tab: Callable[..., Tab]
) -> None:
    tab = signed_in(open_tab, service.tokens["demo"])
    expect(tab.page.locator("#baseline-visits")).to_have_value(str(BASELINE))
    tab.page.fill("#baseline-visits", "40000")
    tab.page.click("#baseline-form button")
    expect(tab.page.locator("#baseline-form .status")).to_have_text(
        "Đã lưu. “Đã truy cập” bây giờ là 40.020."
    )
    expect(tab.page.locator("#tile-total .value")).to_have_text("40.020")
    assert service.api("demo")["baseline"] == {"visits": 40000, "pageviews": 0}
    # As the dashboard itself writes it.
    tab.page.fill("#baseline-visits", "30.545")
    tab.page.click("#baseline-form button")
    expect(tab.page.locator("#tile-total .value")).to_have_text("30.565")
    assert service.api("demo")["baseline"]["visits"] == BASELINE
    for wrong in ("-1", "30.5", "1.0000"):
        tab.page.fill("#baseline-visits", wrong)
        tab.page.click("#baseline-form button")
        expect(tab.page.locator("#baseline-form .status")).to_have_text(
            "Lượt truy cập: hãy nhập số nguyên từ 0 trở lên."
        )
    assert service.api("demo")["baseline"]["visits"] == BASELINE
    tab.assert_clean()


def test_english_on_the_switch_is_remembered_with_numbers_and_dates_its_way(
    service: Service, open_tab: Callable[..., Tab]
) -> None:
    tab = signed_in(open_tab, service.tokens["demo"])
    tab.page.click("#import-form button")  # no file chosen: a message in Vietnamese
    status = tab.page.locator("#import-form .status")
    expect(status).to_have_text("Hãy chọn một tệp CSV.")
    tab.page.fill("#baseline-visits", "40000")
    tab.page.click("#baseline-form button")
    saved = tab.page.locator("#baseline-form .status")
    expect(saved).to_have_text("Đã lưu. “Đã truy cập” bây giờ là 40.020.")
    tab.page.fill("#baseline-visits", str(BASELINE))
    tab.page.click("#lang-switch")
    # Made again in English, its number written the English way, and marked so for a
    # screen reader's voice.
    expect(status).to_have_text("Choose a CSV file first.")
    expect(status).to_have_attribute("lang", "en")
    expect(saved).to_have_text("Saved. “Total visits” is now 40,020.")
    tab.page.click("#baseline-form button")
    expect(tab.page.locator("#tile-total h2")).to_have_text("Total visits")
    expect(tab.page.locator("#tile-total .value")).to_have_text("30,565")
    expect(tab.page.locator("#period-label")).to_have_text(
        f"Oct 30, 2026 {DASH} Nov 28, 2026 · Asia/Ho_Chi_Minh time"
    )
    assert tab.page.evaluate("document.documentElement.lang") == "en"
    tab.page.reload()
    tab.wait_until_loaded()
    expect(tab.page.locator("[data-preset='7d']")).to_have_text("7 days")
    tab.page.click("#lang-switch")
    expect(tab.page.locator("#tile-total .value")).to_have_text("30.565")

    english = open_tab()
    english.open("/admin?lang=en")
    expect(english.page.locator("#sign-in-title")).to_have_text("Sign in to the dashboard")
    english.sign_in("not-a-token")
    expect(english.page.locator("#sign-in-error")).to_have_text(
        "This token is not valid. Check it and paste it whole."
    )
    english.page.click("#lang-switch")
    expect(english.page.locator("#sign-in-error")).to_have_text(
        "Mã truy cập không đúng. Hãy kiểm tra lại và dán đủ cả mã."
    )
    tab.assert_clean()
    english.assert_clean(expected_statuses=(401,))


def test_the_online_tile_rereads_every_30_seconds_and_not_while_the_tab_is_hidden(
    service: Service, open_tab: Callable[..., Tab], clock: FrozenClock
) -> None:
    tab = open_tab()
    tab.page.clock.install(time=START)
    tab.page.clock.pause_at(START + 1)
    tab.open()
    tab.sign_in(service.tokens["demo"])
    tab.wait_until_loaded()

    def reads() -> int:
        return sum(1 for r in tab.requests if r.endswith("/api/v1/sites/demo/counter"))

    online = json.loads(service.get("/api/v1/sites/demo/counter"))["online"]
    expect(tab.page.locator("#tile-online .value")).to_have_text(vi(online))
    first = reads()
    # Another reader arrives; the tile shows them at the next read, 30 s later.
    app_client = urllib.request.Request(
        f"{service.origin}/api/v1/hit",
        data=json.dumps({"site": "demo", "url": f"{PORTAL}/moi"}).encode(),
        headers={"User-Agent": READER_UA, "Content-Type": "text/plain"},
    )
    with urllib.request.urlopen(app_client) as response:
        assert response.status == 202
    tab.page.clock.run_for(29_000)
    assert reads() == first
    tab.page.clock.run_for(1_000)
    expect(tab.page.locator("#tile-online .value")).to_have_text(vi(online + 1))
    assert reads() == first + 1
    # The time of the read, by the page's clock (START is 15:00:00 in Hanoi).
    expect(tab.page.locator("#online-as-of")).to_have_text("Cập nhật lúc 15:00:31")

    set_hidden = """hidden => {
        Object.defineProperty(document, "hidden", {configurable: true, get: () => hidden});
        document.dispatchEvent(new Event("visibilitychange"));
    }"""
    tab.page.evaluate(set_hidden, True)
    tab.page.clock.run_for(30_000)
    expect(tab.page.locator("#online-as-of")).to_have_text("Tạm dừng khi thẻ bị ẩn")
    tab.page.clock.run_for(300_000)
    assert reads() == first + 1  # the tick that found the tab hidden did not read
    tab.page.evaluate(set_hidden, False)
    # Nothing changed since the last read (304, the stored body and its as_of): the note
    # still tells when this read was made.
    expect(tab.page.locator("#online-as-of")).to_have_text("Cập nhật lúc 15:06:01")
    assert reads() == first + 2
    tab.assert_clean()


def wide_enough(tab: Tab) -> tuple[int, int]:
    return tab.page.evaluate("[document.documentElement.scrollWidth, innerWidth]")


@pytest.mark.parametrize("width", [1280, 375])
def test_the_dashboard_fits_the_screen_at_1280_and_375_px_and_is_saved_as_a_screenshot(
    service: Service, open_tab: Callable[..., Tab], width: int
) -> None:
    tab = open_tab(width=width, height=900)
    tab.open()
    TEST_OUTPUT.mkdir(exist_ok=True)
    tab.page.screenshot(path=TEST_OUTPUT / f"dashboard-sign-in-{width}.png")
    scroll, inner = wide_enough(tab)
    assert scroll <= inner
    tab.sign_in(ADMIN)
    tab.wait_until_loaded()
    tab.page.click("[data-preset='7d']")
    expect(tab.page.locator("#top-pages tbody tr")).to_have_count(10)
    # The chart has taken the card's width (it follows it on resize).
    tab.page.wait_for_function(
        "Math.abs(document.querySelector('#chart canvas').getBoundingClientRect().width"
        " - document.querySelector('#chart').getBoundingClientRect().width) <= 2"
    )
    tab.page.wait_for_load_state("networkidle")
    path = TEST_OUTPUT / f"dashboard-{width}.png"
    tab.page.screenshot(path=path, full_page=True)
    assert path.stat().st_size > 10_000
    scroll, inner = wide_enough(tab)
    assert scroll <= inner, f"the dashboard is {scroll} px wide on a {inner} px screen"
    tab.assert_clean()


# -- accessibility (a review of the dashboard and the widget) -----------------------------


def press_enter_while_held(tab: Tab, selector: str, request: re.Pattern[str]) -> None:
    """Presses Enter on the control `selector`, holding the request it makes until the
    browser has taken the focus off the control (disabled meanwhile), then lets it go."""
    held: list[Route] = []
    tab.page.route(request, lambda route: held.append(route))
    tab.page.focus(selector)
    tab.page.keyboard.press("Enter")
    expect(tab.page.locator("body")).to_be_focused()
    caught(tab, held).continue_()
    tab.page.unroute(request)


def test_focus_stays_where_a_keyboard_user_was_after_signing_in_and_each_busy_button(
    service: Service, open_tab: Callable[..., Tab]
) -> None:
    """A button disabled while its request runs, or the sign-in form hidden, drops the
    focus to <body>: the next Tab would start again from the top of the page."""
    tab = open_tab()
    tab.open()
    expect(tab.page.locator("#sign-in")).to_be_visible()
    tab.page.fill("#sign-in-token", service.tokens["demo"])
    tab.page.press("#sign-in-token", "Enter")
    title = tab.page.get_by_role("heading", level=1)
    expect(title).to_have_text("Cổng thông tin demo")
    expect(title).to_be_focused()
    tab.wait_until_loaded()

    press_enter_while_held(tab, "#export", re.compile(r"/export\.csv\?"))
    expect(tab.page.locator("#export")).to_be_focused()

    press_enter_while_held(tab, "#baseline-form button", re.compile(r"/baseline$"))
    expect(tab.page.locator("#baseline-form .status")).to_contain_text("Đã lưu")
    expect(tab.page.locator("#baseline-form button")).to_be_focused()

    good = "date,visits,pageviews,visitors\n2026-11-10,1,1,1\n"
    tab.page.set_input_files(
        "#import-file", files=[{"name": "old.csv", "mimeType": "text/csv", "buffer": good.encode()}]
    )
    press_enter_while_held(tab, "#import-form button", re.compile(r"/import$"))
    expect(tab.page.locator("#import-form .status")).to_contain_text("Đã nhập 1 ngày")
    expect(tab.page.locator("#import-form button")).to_be_focused()

    # The 7 days' own list, not the 30 days' that the import reloaded: a list that arrived
    # after "show more" was pressed would be drawn over the rows it added.
    with tab.page.expect_response(re.compile(r"/sites/demo/pages\?from=2026-11-22&")):
        tab.page.click("[data-preset='7d']")
    expect(tab.page.locator("#top-pages tbody tr")).to_have_count(10)
    press_enter_while_held(tab, "#top-pages .more", re.compile(r"/sites/demo/pages\?"))
    # All 13 pages shown, the button gone: the focus is on the first row it added.
    expect(tab.page.locator("#top-pages tbody tr")).to_have_count(13)
    expect(tab.page.locator("#top-pages tbody tr").nth(10)).to_be_focused()
    tab.assert_clean()


def test_a_refresh_keeps_the_focus_on_its_rows_key_and_the_charts_tooltip_open_on_its_point(
    service: Service, open_tab: Callable[..., Tab]
) -> None:
    """Every 30 s the period with today in it is read again and drawn anew: the row of the
    top pages a keyboard user was on (focused by "Xem thêm") was replaced, the focus fell to
    <body>, and the chart, made again, dropped the tooltip the pointer had opened."""
    tab = open_tab()
    page = tab.page
    page.clock.install(time=START)
    tab.open()
    tab.sign_in(service.tokens["demo"])
    tab.wait_until_loaded()
    page.click("[data-preset='7d']")
    rows = page.locator("#top-pages tbody tr")
    expect(rows).to_have_count(10)
    page.focus("#top-pages .more")
    page.keyboard.press("Enter")
    expect(rows).to_have_count(13)
    focused = rows.nth(10)
    expect(focused).to_be_focused()
    name = focused.locator("th").inner_text()
    # The pointer on today's point, the last of 7.
    over = page.locator("#chart .u-over")
    over.scroll_into_view_if_needed()
    box = over.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] * 6.5 / 7, box["y"] + box["height"] / 2)
    tip = page.locator("#chart .chart-tip")
    expect(tip).to_be_visible()
    expect(tip.locator(".pageviews b")).to_have_text("1")

    # The focused page is read again, and a new one: its row moves up to second place.
    _viewed(service, [name, "/tin-moi"])
    page.clock.run_for(31_000)
    expect(tip.locator(".pageviews b")).to_have_text("3")
    expect(tip).to_be_visible()
    expect(rows).to_have_count(14)
    expect(rows.nth(1).locator("th")).to_have_text(name)
    expect(rows.nth(1)).to_be_focused()
    # The same numbers read again (the online count moved only) change nothing.
    page.clock.run_for(30_000)
    expect(rows.nth(1)).to_be_focused()
    expect(tip).to_be_visible()
    tab.assert_clean()


def show_tip(tab: Tab) -> Locator:
    """Moves the pointer over the middle of the plot, on a point: its tooltip shows."""
    over = tab.page.locator("#chart .u-over")
    over.scroll_into_view_if_needed()
    box = over.bounding_box()
    assert box is not None
    tab.page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    tip = tab.page.locator("#chart .chart-tip")
    expect(tip).to_be_visible()
    return tip


def test_borders_focus_rings_and_tooltip_numbers_stand_out_enough_from_their_background(
    service: Service, open_tab: Callable[..., Tab]
) -> None:
    """WCAG 1.4.3 and 1.4.11: text at least 4.5:1, a control's edge, the focus ring and the
    chart's lines at least 3:1, each against what it is seen on."""
    tab = signed_in(open_tab, service.tokens["demo"])
    page = tab.page
    # On the white cards and on the grey page.
    controls = ["#export", "#baseline-visits", "#interval", "[data-preset='today']", "#range-from"]
    for selector in controls:
        assert contrast(page.locator(selector), "borderTopColor") >= 3, selector
    page.keyboard.press("Tab")  # from here on, focus is shown as for a keyboard user
    for selector in [*controls, "#lang-switch"]:  # the last on the blue bar
        page.focus(selector)
        assert page.locator(selector).evaluate("e => e.matches(':focus-visible')"), selector
        assert contrast(page.locator(selector), "outlineColor") >= 3, selector
    for marker in page.locator("#chart .u-legend .u-series .u-marker").all():
        assert contrast(marker, "borderTopColor") >= 3
    tip = show_tip(tab)
    for metric in ("visits", "pageviews", "visitors"):
        assert contrast(tip.locator(f".{metric} b")) >= 4.5, metric
    tab.assert_clean()


def test_escape_hides_the_charts_tooltip_until_the_pointer_moves_to_another_point(
    service: Service, open_tab: Callable[..., Tab]
) -> None:
    """WCAG 1.4.13: what shows on hover can be dismissed without moving the pointer."""
    tab = signed_in(open_tab, service.tokens["demo"])
    tip = show_tip(tab)
    first = tip.inner_text()
    tab.page.keyboard.press("Escape")
    expect(tip).to_be_hidden()
    box = tab.page.locator("#chart .u-over").bounding_box()
    assert box is not None
    tab.page.mouse.move(box["x"] + box["width"] / 4, box["y"] + box["height"] / 2)
    expect(tip).to_be_visible()
    expect(tip).not_to_have_text(first)
    tab.assert_clean()


def test_the_charts_legend_is_a_key_and_no_mouse_only_switch(
    service: Service, open_tab: Callable[..., Tab]
) -> None:
    """uPlot hides a line when its legend entry is clicked, which no keyboard could do."""
    tab = signed_in(open_tab, service.tokens["demo"])
    entries = tab.page.locator("#chart .u-legend .u-series")
    expect(entries).to_have_count(3)
    visits = entries.first
    expect(visits).to_have_text("Lượt truy cập")
    box = visits.bounding_box()
    assert box is not None
    tab.page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    expect(visits).not_to_have_class(re.compile(r"\bu-off\b"))
    tab.assert_clean()


def test_a_form_error_names_its_field_is_tied_to_it_and_the_apis_english_is_marked_so(
    service: Service, open_tab: Callable[..., Tab]
) -> None:
    """A screen reader on a field with an error hears that it is invalid and why
    (aria-invalid, aria-describedby); the API's English messages are read in English."""
    tab = open_tab()
    tab.open()
    page = tab.page
    token = page.locator("#sign-in-token")
    tab.sign_in("")
    expect(page.locator("#sign-in-error")).to_have_text("Hãy dán mã truy cập vào ô trên.")
    expect(token).to_have_attribute("aria-invalid", "true")
    expect(token).to_have_accessible_description(re.compile("^Hãy dán mã truy cập vào ô trên"))
    tab.sign_in("not-a-token")
    expect(page.locator("#sign-in-error")).to_contain_text("Mã truy cập không đúng")
    expect(token).to_have_accessible_description(re.compile("^Mã truy cập không đúng"))
    tab.sign_in(service.tokens["demo"])
    tab.wait_until_loaded()

    visits, pageviews = page.locator("#baseline-visits"), page.locator("#baseline-pageviews")
    status = page.locator("#baseline-form .status")
    pageviews.fill("nhiều")
    page.click("#baseline-form button")
    expect(status).to_have_text("Lượt xem trang: hãy nhập số nguyên từ 0 trở lên.")
    expect(pageviews).to_have_attribute("aria-invalid", "true")
    expect(pageviews).to_have_accessible_description(status.inner_text())
    expect(pageviews).to_be_focused()
    assert visits.get_attribute("aria-invalid") is None
    # Over the API's limit: its own (English) message, in a Vietnamese sentence.
    visits.fill("9999999999999999")
    pageviews.fill("0")
    page.click("#baseline-form button")
    # Refused, not "could not load the numbers", which it said.
    expect(status).to_contain_text("Chưa lưu được: 'visits' must be")
    expect(status.locator("[lang=en]")).to_have_text(re.compile("^'visits' must be"))
    assert pageviews.get_attribute("aria-invalid") is None

    bad = "date,visits,pageviews,visitors\n2026-11-11,x,1,1\n"
    page.set_input_files(
        "#import-file", files=[{"name": "old.csv", "mimeType": "text/csv", "buffer": bad.encode()}]
    )
    page.click("#import-form button")
    problem = page.locator("#import-form .problems li")
    expect(problem).to_have_text("line 2: visits 'x' is not a whole number >= 0")
    expect(problem).to_have_attribute("lang", "en")
    expect(page.locator("#import-file")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#import-file")).to_have_accessible_description(
        "Không nhập gì. Các dòng lỗi:"
    )
    tab.assert_clean(expected_statuses=(400, 401))


def test_the_chart_or_table_button_is_named_for_what_it_does_without_a_pressed_state(
    service: Service, open_tab: Callable[..., Tab]
) -> None:
    """A name that changes with a pressed state that changes too read as "Xem biểu đồ,
    pressed" while the table showed: one of the two has to go."""
    tab = signed_in(open_tab, service.tokens["demo"])
    toggle = tab.page.locator("#view-toggle")
    for name, shown in (("Xem dạng bảng", "#chart"), ("Xem biểu đồ", "#series-table")):
        expect(tab.page.get_by_role("button", name=name, exact=True)).to_have_id("view-toggle")
        expect(tab.page.locator(shown)).to_be_visible()
        assert toggle.get_attribute("aria-pressed") is None
        toggle.click()
    expect(tab.page.locator("#chart")).to_be_visible()
    tab.assert_clean()


# The width `el` would take on its own: a copy of it, out of the layout, at its natural size.
NATURAL_WIDTH = """el => {
    const copy = el.cloneNode();
    copy.removeAttribute("id");
    copy.style.cssText = "position: absolute; width: auto; visibility: hidden";
    el.parentElement.append(copy);
    const natural = copy.getBoundingClientRect().width;
    copy.remove();
    return [el.getBoundingClientRect().width, natural];
}"""


@pytest.mark.parametrize("width", [320, 375])
def test_the_date_fields_show_the_whole_date_on_a_narrow_phone(
    service: Service, open_tab: Callable[..., Tab], width: int
) -> None:
    """Squeezed onto one line with the button, a date field narrower than its natural width
    showed 30/10/20, the year cut off."""
    tab = open_tab(width=width, height=800)
    tab.open()
    tab.sign_in(service.tokens["demo"])
    tab.wait_until_loaded()
    for field_id in ("#range-from", "#range-to"):
        shown, natural = tab.page.locator(field_id).evaluate(NATURAL_WIDTH)
        assert shown >= natural, f"{field_id} is {shown} px wide and needs {natural}"
    scroll, inner = wide_enough(tab)
    assert scroll <= inner
    tab.assert_clean()
