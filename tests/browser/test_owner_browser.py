"""What a site owner meets in a browser: a refused page view says why in the console, and the
demo page fits a phone."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import ConsoleMessage, Page, expect

from ..conftest import eventually
from .conftest import TEST_OUTPUT, HostSite, Server, Service, Watched, host_page

BOX = "[data-analytics-counter]"


@pytest.fixture
def stranger() -> Iterator[tuple[HostSite, Server]]:
    """A portal page on an origin the site `demo` does not list."""
    site = HostSite()
    server = Server(site)
    yield site, server
    server.stop()


def warnings_of(w: Watched) -> list[str]:
    found: list[str] = []

    def note(message: ConsoleMessage) -> None:
        if message.type == "warning":
            found.append(message.text)

    w.page.on("console", note)
    return found


def wait_for(page: Page, warned: list[str]) -> None:
    """The warning follows the hit's answer: poll for it (bounded)."""
    deadline = time.monotonic() + 10
    while not warned:
        assert time.monotonic() < deadline, "no console.warn"
        page.wait_for_timeout(50)


def test_a_page_view_refused_for_its_origin_warns_once_with_the_reason_and_the_fix(
    service: Service, stranger: tuple[HostSite, Server], open_page: Callable[..., Watched]
) -> None:
    site, server = stranger
    boxes = '<div data-analytics-counter data-site="demo"></div>' * 2
    site.pages["/"] = (host_page(service.origin, body=boxes), {})
    w = open_page()
    warned = warnings_of(w)
    w.page.goto(f"{server.origin}/")
    w.settle(at_least=2)
    expect(w.page.locator(f"{BOX} dd")).to_have_text(["0", "0", "30.545"] * 2)  # still shown
    assert service.counter()["today"]["pageviews"] == 0
    wait_for(w.page, warned)
    assert warned == [
        f"Visitor counter: page view not counted (origin_not_allowed): origin "
        f"'{server.origin}' is not allowed for this site. Fix: add {server.origin} to the "
        f"site's origins (analytics-service site update demo --origin {server.origin}, with "
        "its other origins)"
    ]
    assert w.errors == []


def test_an_unknown_site_warns_to_check_data_site(
    service: Service, host: tuple[HostSite, Server], open_page: Callable[..., Watched]
) -> None:
    site, server = host
    site.pages["/"] = (host_page(service.origin, 'data-site="so-giao-duc"'), {})
    w = open_page()
    warned = warnings_of(w)
    w.page.goto(f"{server.origin}/")
    w.settle(at_least=1)
    wait_for(w.page, warned)
    assert len(warned) == 1
    assert warned[0].startswith("Visitor counter: page view not counted (unknown_site)")
    assert f'check data-site="so-giao-duc": {service.origin}/ has no such site' in warned[0]


def test_an_accepted_page_view_warns_nothing(
    service: Service, host: tuple[HostSite, Server], open_page: Callable[..., Watched]
) -> None:
    site, server = host
    site.pages["/"] = (host_page(service.origin), {})
    w = open_page()
    warned = warnings_of(w)
    w.page.goto(f"{server.origin}/")
    service.wait_for_pageviews(1)
    w.settle(at_least=1)
    # The view goes by fetch with keepalive as text/plain: a simple request, no preflight.
    # (The recorder notes a request as it is answered, after the count shows it.)
    hits = eventually(lambda: [s for s in service.recorder.seen if s.path == "/api/v1/hit"])
    assert [(h.method, h.status) for h in hits] == [("POST", 202)]
    assert not [s for s in service.recorder.seen if s.method == "OPTIONS"]
    assert warned == []
    assert w.errors == []


def test_the_demo_page_fits_a_375_px_phone_and_is_saved_as_a_screenshot(
    service: Service, open_page: Callable[..., Watched]
) -> None:
    w = open_page()
    w.page.set_viewport_size({"width": 375, "height": 800})
    w.page.goto(f"{service.origin}/")
    w.settle(at_least=1)
    service.wait_for_pageviews(1)
    expect(w.page.locator("pre")).to_have_count(2)  # /widget.js, and the pinned tag
    for snippet in w.page.locator("pre").all():
        expect(snippet).to_be_visible()
    scroll, inner = w.page.evaluate("[document.documentElement.scrollWidth, innerWidth]")
    assert scroll <= inner, f"the demo page is {scroll} px wide on a {inner} px screen"
    TEST_OUTPUT.mkdir(exist_ok=True)
    w.page.screenshot(path=TEST_OUTPUT / "demo-page-375.png", full_page=True)
    assert w.violations() == []
    assert w.errors == [] and w.console == []


def test_the_fix_a_refused_view_suggests_names_the_origin_the_view_was_sent_for(
    service: Service,
    stranger: tuple[HostSite, Server],
    open_page: Callable[..., Watched],
    tmp_path: Path,
) -> None:
    """The fix named `location.origin`. In a frame the page wrote (srcdoc) that is "null",
    while the view sent is the embedding page's: "--origin null", which the command
    refuses. A page opened from the disk (file://, an owner trying the tag out) can never
    be counted, and was told to add "file://" as an origin, which the command refuses too."""
    site, server = stranger
    inner = f'<div><script src="{service.origin}/widget.js" data-site="demo"></script></div>'
    site.pages["/framed"] = (f"<!doctype html><iframe srcdoc='{inner}'></iframe>", {})
    w = open_page()
    warned = warnings_of(w)
    w.page.goto(f"{server.origin}/framed")
    wait_for(w.page, warned)
    assert len(warned) == 1
    assert warned[0].endswith(
        f"Fix: add {server.origin} to the site's origins (analytics-service site update demo "
        f"--origin {server.origin}, with its other origins)"
    ), warned[0]

    on_disk = tmp_path / "thu-nghiem.html"
    on_disk.write_text(host_page(service.origin), encoding="utf-8")
    w = open_page()
    warned = warnings_of(w)
    w.page.goto(on_disk.as_uri())
    w.settle(at_least=1)
    wait_for(w.page, warned)
    assert len(warned) == 1
    assert "--origin file://" not in warned[0], warned[0]
    assert "--origin null" not in warned[0], warned[0]
    assert warned[0].endswith(
        "Fix: open the page from its web address (http:// or https://): a page opened "
        "from a file is never counted"
    ), warned[0]
