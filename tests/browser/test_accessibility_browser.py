"""axe-core's WCAG 2.1 A and AA rules on the running pages in Chromium: the demo page and a
portal page with the live box (axe-core goes into the box's open shadow root), the
dashboard's sign-in form, and the dashboard signed in with a week of data (chart, table,
English), each at 1280 and 375 px wide. Any violation fails, and is printed with its rule,
impact, element and what to fix. The banner's text over its gradient, which axe-core leaves
for a person to review, is measured here against each colour of it.

axe-core comes from the `axe-playwright-python` wheel (README, "Dependencies"): its bundled
script is injected, and `axe.run` called here with options passed as JSON (the wheel's own
`Axe.run` writes its context argument with Python's repr).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, Page, expect

from analytics_service.config import Settings

from ..conftest import FrozenClock, counting_app
from .conftest import LOCALE, Server, Service, Watched, host_page
from .test_dashboard_browser import ADMIN, DASH, WATCH_CSP, seed

WCAG_21_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
WIDTHS = [1280, 375]
BOX = "[data-analytics-counter]"

# What axe-core reports that is not a real problem: (rule id, target as printed) -> why.
# Element by element, never a rule turned off for a whole page. None so far: every
# violation it found was real and is fixed (NOTES of the change).
NOT_PROBLEMS: dict[tuple[str, str], str] = {}

AXE = Axe()


def target(node: dict) -> str:
    """axe-core's selector of an element: a list, one entry a frame; an entry that is itself
    a list is a path through shadow roots, shown here as `host >>> inside`."""
    return " >> ".join(t if isinstance(t, str) else " >>> ".join(t) for t in node["target"])


def in_shadow_root(node: dict) -> bool:
    return any(not isinstance(t, str) for t in node["target"])


def assert_no_violations(page: Page, where: str) -> None:
    """Runs axe-core's WCAG 2.1 A and AA rules on `page` as it is now (open shadow roots
    included) and fails on any violation, printing each element's rule, impact, target and
    what to fix."""
    page.evaluate(AXE.axe_script)
    results = page.evaluate(
        "options => axe.run(document, options)",
        {"runOnly": {"type": "tag", "values": WCAG_21_AA}, "resultTypes": ["violations"]},
    )
    violations = [
        f"{v['id']} ({v['impact']}) {target(node)}: "
        + " ".join(node.get("failureSummary", v["help"]).split())
        + f" [{v['helpUrl'].split('?')[0]}]"
        for v in results["violations"]
        for node in v["nodes"]
        if (v["id"], target(node)) not in NOT_PROBLEMS
    ]
    report = "\n".join(f"  {line}" for line in violations)
    if violations:
        print(f"axe-core, {where}: {len(violations)} violation(s)\n{report}")
    assert violations == [], f"axe-core, {where}:\n{report}"


def assert_the_boxes_were_checked(page: Page, boxes: int) -> None:
    """axe-core reaches into each box's open shadow root: run on the boxes alone, its
    contrast rule passes on the title and the three labels and numbers of each (7 texts a
    box), every one of them inside a shadow root."""
    results = page.evaluate(
        """([box, options]) => axe.run({include: [{fromShadowDom: [box, ".b"]}]}, options)""",
        [BOX, {"runOnly": {"type": "tag", "values": WCAG_21_AA}}],
    )
    assert results["violations"] == []
    [contrast] = [r for r in results["passes"] if r["id"] == "color-contrast"]
    assert len(contrast["nodes"]) == 7 * boxes, contrast["nodes"]
    assert all(in_shadow_root(node) for node in contrast["nodes"]), contrast["nodes"]


# -- the widget ----------------------------------------------------------------------------


@pytest.fixture
def reader_tab(open_page: Callable[..., Watched]) -> Callable[[int], Watched]:
    def at_width(width: int) -> Watched:
        w = open_page()
        w.page.set_viewport_size({"width": width, "height": 900})
        return w

    return at_width


@pytest.mark.parametrize("width", WIDTHS)
def test_the_demo_page_with_its_live_box_breaks_no_wcag_21_aa_rule(
    service: Service, reader_tab: Callable[[int], Watched], width: int
) -> None:
    w = reader_tab(width)
    w.page.goto(f"{service.origin}/")
    w.settle(at_least=1)
    service.wait_for_pageviews(1)
    w.step(2)
    expect(w.page.locator(f"{BOX} dd")).to_have_text(["1", "1", "30.546"])
    # axe-core waits on timers: the page's clock runs from here on (the box's next read is
    # 30 s away).
    w.page.clock.resume()
    assert_no_violations(w.page, f"demo page at {width} px")
    assert_the_boxes_were_checked(w.page, 1)
    assert w.errors == []


@pytest.mark.parametrize("width", WIDTHS)
def test_a_portal_page_with_the_box_breaks_no_wcag_21_aa_rule(
    service: Service, host: tuple, reader_tab: Callable[[int], Watched], width: int
) -> None:
    """Two boxes on a page of another origin, behind its hostile stylesheet: one with the
    page's own title over English labels, one as it comes."""
    body = (
        '<aside><div data-analytics-counter data-site="demo" data-lang="en"'
        ' data-title="Lượt truy cập"></div></aside>'
        '<div data-analytics-counter data-site="demo"></div>'
    )
    site, server = host
    site.pages["/"] = (host_page(service.origin, body=body), {})
    w = reader_tab(width)
    w.page.goto(f"{server.origin}/")
    w.settle(at_least=1)
    service.wait_for_pageviews(1)
    w.step(2)
    expect(w.page.locator(f"{BOX} dd")).to_have_text(["1", "1", "30,546", "1", "1", "30.546"])
    w.page.clock.resume()
    assert_no_violations(w.page, f"portal page at {width} px")
    assert_the_boxes_were_checked(w.page, 2)
    assert w.errors == []


# WCAG 2's contrast ratio of `el`'s text against each colour stop of the gradient behind
# it (its own or its nearest ancestor's background-image), its opacity applied: axe-core
# reports text over a gradient as "needs review", never as a violation.
GRADIENT_CONTRASTS = """el => {
  const rgb = (c) => c.match(/[\\d.]+/g).slice(0, 4).map(Number);
  const luminance = ([r, g, b]) => [r, g, b].map((v) => {
    const c = v / 255;
    return c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
  }).reduce((sum, c, i) => sum + c * [0.2126, 0.7152, 0.0722][i], 0);
  let behind = el;
  while (!getComputedStyle(behind).backgroundImage.includes("gradient")) {
    behind = behind.parentElement;
  }
  const stops = getComputedStyle(behind).backgroundImage.match(/rgba?\\([^)]*\\)/g).map(rgb);
  const [r, g, b] = rgb(getComputedStyle(el).color);
  const alpha = Number(getComputedStyle(el).opacity);
  return stops.map((stop) => {
    const text = [r, g, b].map((v, i) => v * alpha + stop[i] * (1 - alpha));
    const [light, dark] = [luminance(text), luminance(stop)].sort((x, y) => y - x);
    return (light + 0.05) / (dark + 0.05);
  });
}"""


@pytest.mark.parametrize("width", WIDTHS)
def test_the_demo_pages_banner_text_is_readable_on_every_colour_of_its_gradient(
    service: Service, reader_tab: Callable[[int], Watched], width: int
) -> None:
    """WCAG 1.4.3, where axe-core cannot tell: 4.5:1 (3:1 for the large name) against each
    stop, since a narrow screen wraps the lines across the whole banner."""
    w = reader_tab(width)
    w.page.goto(f"{service.origin}/")
    for selector, least in ((".kicker", 4.5), (".banner .name", 3), (".motto", 4.5)):
        ratios = w.page.locator(selector).evaluate(GRADIENT_CONTRASTS)
        assert len(ratios) == 3 and min(ratios) >= least, (selector, ratios)


# -- the dashboard -------------------------------------------------------------------------


@pytest.fixture
def dashboard(settings: Settings, clock: FrozenClock) -> Iterator[str]:
    """The service with the dashboard tests' two sites and their traffic: its origin."""
    app = counting_app(replace(settings, admin_token=ADMIN), clock)
    seed(app, clock)
    server = Server(app)
    yield server.origin
    server.stop()
    app.extensions["analytics"].close()


@pytest.fixture
def admin_tab(browser: Browser) -> Iterator[Callable[[int], Page]]:
    contexts = []

    def at_width(width: int) -> Page:
        context = browser.new_context(
            viewport={"width": width, "height": 900}, locale=LOCALE, timezone_id="Asia/Bangkok"
        )
        contexts.append(context)
        page = context.new_page()
        page.add_init_script(WATCH_CSP)
        return page

    yield at_width
    for context in contexts:
        context.close()


@pytest.mark.parametrize("width", WIDTHS)
def test_the_dashboards_sign_in_form_breaks_no_wcag_21_aa_rule(
    dashboard: str, admin_tab: Callable[[int], Page], width: int
) -> None:
    page = admin_tab(width)
    page.goto(f"{dashboard}/admin")
    expect(page.locator("#sign-in")).to_be_visible()
    assert_no_violations(page, f"sign-in form at {width} px")
    # A wrong token: the form shows its error.
    page.fill("#sign-in-token", "not-a-token")
    page.click("#sign-in-form button[type=submit]")
    expect(page.locator("#sign-in-token")).to_have_attribute("aria-invalid", "true")
    assert_no_violations(page, f"sign-in form with its error at {width} px")


@pytest.mark.parametrize("width", WIDTHS)
def test_the_dashboard_signed_in_with_a_week_of_data_breaks_no_wcag_21_aa_rule(
    dashboard: str, admin_tab: Callable[[int], Page], width: int
) -> None:
    page = admin_tab(width)
    page.goto(f"{dashboard}/admin")
    page.fill("#sign-in-token", ADMIN)
    page.click("#sign-in-form button[type=submit]")
    expect(page.locator("#dashboard")).to_be_visible()
    expect(page.locator("#tile-visits .value")).not_to_have_text(DASH)
    page.click("[data-preset='7d']")
    expect(page.locator("#top-pages tbody tr")).to_have_count(10)
    page.wait_for_load_state("networkidle")
    assert_no_violations(page, f"dashboard, chart shown, at {width} px")
    # The same numbers as a table.
    page.click("#view-toggle")
    expect(page.locator("#series-table")).to_be_visible()
    assert_no_violations(page, f"dashboard, table shown, at {width} px")
    # In English: the page's language and each label's change with it.
    page.click("#lang-switch")
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.locator("#view-toggle")).to_have_text("Show the chart")
    assert_no_violations(page, f"dashboard in English at {width} px")
    assert page.evaluate("window.__violations") == []
