"""The widget in headless Chromium against the running service, on a page of another origin."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import redis
from playwright.sync_api import Browser, Route, expect

from analytics_service import db
from analytics_service.config import Settings
from analytics_service.keys import SiteKeys
from analytics_service.sites import SiteRepository, build_site
from analytics_service.sitetime import local_date

from ..conftest import FrozenClock, eventually
from .conftest import (
    CHROMIUM,
    CHROMIUM_ARGS,
    READER_UA,
    SECOND_READER_UA,
    TEST_OUTPUT,
    HostSite,
    Server,
    Service,
    SilentServer,
    Watched,
    contrast,
    host_page,
)

BOX = "[data-analytics-counter]"
OTHER_READERS = [f"Mozilla/5.0 (X11; Linux x86_64) Firefox/13{i}.0" for i in range(2)]


def values(w: Watched, box: str = BOX) -> list[str]:
    return w.page.locator(f"{box} dd").all_text_contents()


def show_page(
    w: Watched, host: tuple[HostSite, Server], html: str, headers: dict | None = None
) -> None:
    site, server = host
    site.pages["/"] = (html, headers or {})
    w.page.goto(f"{server.origin}/")
    w.settle(at_least=1)


def test_box_shows_the_numbers_of_the_counter_endpoint_formatted_in_vietnamese(
    service: Service, host: tuple[HostSite, Server], open_page: Callable[..., Watched]
) -> None:
    for user_agent in OTHER_READERS:
        service.visit(user_agent, host[1].origin)
    w = open_page()
    show_page(w, host, host_page(service.origin))
    counter = service.wait_for_pageviews(3)
    w.step(2)  # the quick second read after this page's own page view
    assert (counter["online"], counter["today"]["visits"], counter["total"]["visits"]) == (
        3,
        3,
        30548,
    )
    expect(w.page.locator(f"{BOX} dd")).to_have_text(["3", "3", "30.548"])
    expect(w.page.locator(f"{BOX} dt")).to_have_text(["Đang online", "Hôm nay", "Đã truy cập"])
    expect(w.page.locator(f"{BOX} .t")).to_have_text("Thống kê truy cập")
    # The numbers are not a live region, which would read all of them out on every page
    # load and refresh; the title is a heading to screen readers.
    assert w.page.locator(f"{BOX} [aria-live], {BOX} [role=status]").count() == 0
    expect(
        w.page.get_by_role("heading", name="Thống kê truy cập", level=2, exact=True)
    ).to_have_class("t")
    # Rendered where the script tag stands: between it and the paragraph that follows it.
    assert w.page.evaluate(f"document.querySelector('{BOX}').previousElementSibling.tagName") == (
        "SCRIPT"
    )
    assert w.page.evaluate(f"document.querySelector('{BOX}').nextElementSibling.id") == "after"
    assert w.errors == []


def test_a_second_readers_visit_raises_online_and_today_within_one_refresh(
    service: Service, host: tuple[HostSite, Server], open_page: Callable[..., Watched]
) -> None:
    first = open_page()
    show_page(first, host, host_page(service.origin))
    service.wait_for_pageviews(1)
    first.step(2)
    expect(first.page.locator(f"{BOX} dd")).to_have_text(["1", "1", "30.546"])

    second = open_page(SECOND_READER_UA)
    second.page.goto(f"{host[1].origin}/")
    service.wait_for_pageviews(2)
    first.step(30)
    expect(first.page.locator(f"{BOX} dd")).to_have_text(["2", "2", "30.547"])


def test_box_rereads_every_30_seconds_by_default_revalidating_with_the_etag_without_preflight(
    service: Service, host: tuple[HostSite, Server], open_page: Callable[..., Watched]
) -> None:
    w = open_page()
    show_page(w, host, host_page(service.origin, 'data-site="demo" data-track="false"'))
    expect(w.page.locator(f"{BOX} dd")).to_have_text(["0", "0", "30.545"])
    assert len(w.step(29.9)) == 1
    reads = w.step(0.1)
    assert len(reads) == 2
    assert {r["cache"] for r in reads} == {"no-cache"}
    first, second = service.recorder.counter_reads()
    assert (first.status, first.if_none_match) == (200, None)
    # The browser revalidated with the ETag it kept, and nothing had changed.
    assert (second.status, second.if_none_match is not None) == (304, True)
    assert not [s for s in service.recorder.seen if s.method == "OPTIONS"]
    expect(w.page.locator(f"{BOX} dd")).to_have_text(["0", "0", "30.545"])


@pytest.mark.parametrize("refresh", ["2", "0", "-5"])
def test_a_refresh_below_10_seconds_is_raised_to_10(
    service: Service,
    host: tuple[HostSite, Server],
    open_page: Callable[..., Watched],
    refresh: str,
) -> None:
    # "0" is below 10 too (it gave the default 30 s).
    w = open_page()
    attrs = f'data-site="demo" data-track="false" data-refresh="{refresh}"'
    show_page(w, host, host_page(service.origin, attrs))
    assert len(w.step(9.9)) == 1
    assert len(w.step(0.1)) == 2
    assert len(w.step(10)) == 3


def test_a_refresh_that_is_no_number_reads_every_30_seconds(
    service: Service, host: tuple[HostSite, Server], open_page: Callable[..., Watched]
) -> None:
    w = open_page()
    attrs = 'data-site="demo" data-track="false" data-refresh="soon"'
    show_page(w, host, host_page(service.origin, attrs))
    assert len(w.step(29.9)) == 1
    assert len(w.step(0.1)) == 2


def test_a_huge_refresh_is_capped_at_a_day_instead_of_overflowing_into_a_loop(
    service: Service, host: tuple[HostSite, Server], open_page: Callable[..., Watched]
) -> None:
    w = open_page()
    show_page(
        w,
        host,
        host_page(service.origin, 'data-site="demo" data-track="false" data-refresh="Infinity"'),
    )
    assert len(w.step(3600)) == 1
    assert len(w.step(86400 - 3600)) == 2


def test_box_does_not_read_while_the_tab_is_hidden_and_reads_at_once_when_shown(
    service: Service, host: tuple[HostSite, Server], open_page: Callable[..., Watched]
) -> None:
    w = open_page()
    show_page(w, host, host_page(service.origin, 'data-site="demo" data-track="false"'))
    set_hidden = """hidden => {
        // On the prototype: the widget reads it there, past any element named "hidden".
        Object.defineProperty(Document.prototype, "hidden", {
            configurable: true, get: () => hidden
        });
        document.dispatchEvent(new Event("visibilitychange"));
    }"""
    w.page.evaluate(set_hidden, True)
    assert len(w.step(300)) == 1
    w.page.evaluate(set_hidden, False)
    assert len(w.settle(at_least=2)) == 2
    assert len(w.step(30)) == 3


def test_a_box_taken_off_the_page_stops_reading_and_reads_again_when_put_back(
    service: Service, host: tuple[HostSite, Server], open_page: Callable[..., Watched]
) -> None:
    """A page that redraws its sidebar with its own script leaves no box reading unseen."""
    w = open_page()
    body = '<aside id="side"><div data-analytics-counter data-site="demo"></div></aside>'
    show_page(w, host, host_page(service.origin, 'data-site="demo" data-track="false"', body))
    w.page.evaluate(f"window.__box = document.querySelector('{BOX}'); __box.remove()")
    assert len(w.step(300)) == 1
    w.page.evaluate("document.getElementById('side').append(__box)")
    assert len(w.settle(at_least=2)) == 2  # at once, without the clock moving
    assert len(w.step(30)) == 3
    assert w.errors == []


def test_a_box_the_page_adds_after_loading_is_drawn_without_a_second_view(
    service: Service, host: tuple[HostSite, Server], open_page: Callable[..., Watched]
) -> None:
    """A sidebar the page's own script renders later; the fields of a form added with it
    shadow Element's methods by name."""
    html = f"""<!doctype html><html lang="vi"><head><meta charset="utf-8">
<script async src="{service.origin}/widget.js" data-site="demo"></script></head>
<body><aside id="side"></aside></body></html>"""
    w = open_page()
    host[0].pages["/"] = (html, {})
    w.page.goto(f"{host[1].origin}/")
    service.wait_for_pageviews(1)
    assert w.reads() == []  # a tag in <head> and no box: the view only
    w.page.evaluate(
        """document.getElementById('side').innerHTML =
        '<form><input name="matches"><input name="querySelectorAll"></form>' +
        '<div><div id="late" data-analytics-counter data-site="demo" data-lang="en"></div></div>'
        """
    )
    w.settle(at_least=1)
    w.step(2)
    expect(w.page.locator("#late dd")).to_have_text(["1", "1", "30,546"])
    assert service.counter()["today"]["pageviews"] == 1
    assert w.errors == []


def test_a_page_the_back_forward_cache_shows_again_counts_a_view_and_reads_at_once(
    service: Service, host: tuple[HostSite, Server], open_page: Callable[..., Watched]
) -> None:
    """Playwright keeps Chromium's back/forward cache off (its navigation tracking cannot
    follow a restore), so the test fires what the browser fires on one: a `pageshow` whose
    `persisted` is true. Two copies of the script on the page send one view between them."""
    second_tag = f'<script async src="{service.origin}/widget.js" data-site="demo"></script>'
    w = open_page()
    show_page(w, host, host_page(service.origin, body=second_tag))
    service.wait_for_pageviews(1)
    w.settle(at_least=2)
    w.step(2)
    expect(w.page.locator(f"{BOX} dd")).to_have_text(["1", "1", "30.546"] * 2)
    service.visit(SECOND_READER_UA, host[1].origin)  # while the page was away
    service.wait_for_pageviews(2)
    w.page.evaluate("dispatchEvent(new PageTransitionEvent('pageshow', {persisted: false}))")
    before = len(w.reads())
    w.page.evaluate("dispatchEvent(new PageTransitionEvent('pageshow', {persisted: true}))")
    w.settle(at_least=before + 2)  # both boxes, at once, without the clock moving
    counter = service.wait_for_pageviews(3)
    assert counter["today"]["visits"] == 2  # the same reader's visit goes on
    w.step(2)  # the second read, after the view
    expect(w.page.locator(f"{BOX} dd")).to_have_text(["2", "2", "30.547"] * 2)
    assert service.counter()["today"]["pageviews"] == 3
    assert w.errors == []


def test_a_restored_page_sends_each_view_to_the_service_its_script_came_from(
    service: Service,
    host: tuple[HostSite, Server],
    open_page: Callable[..., Watched],
    clock: FrozenClock,
) -> None:
    """Two services' scripts on one page (a portal moving to another): the copies share
    which sites the page counts, but each sends its own views to its own service."""
    elsewhere = _another_site(service, host, clock, "elsewhere")
    with urllib.request.urlopen(f"{service.origin}/widget.js") as response:
        source = response.read().decode()
    host[0].pages["/other/widget.js"] = (source, {})
    other_tag = f'<script async src="{host[1].origin}/other/widget.js" data-site="elsewhere">'
    w = open_page()
    show_page(w, host, host_page(service.origin, body=other_tag + "</script>"))
    service.wait_for_pageviews(1)
    w.page.evaluate("dispatchEvent(new PageTransitionEvent('pageshow', {persisted: true}))")
    service.wait_for_pageviews(2)
    assert elsewhere() == 0  # its view goes to the other service (here: the host, a 404)


def test_a_wake_up_during_a_read_brings_the_next_read_forward_without_a_second_chain(
    service: Service, host: tuple[HostSite, Server], open_page: Callable[..., Watched]
) -> None:
    w = open_page()
    held: list[Route] = []
    w.page.route("**/api/v1/sites/demo/counter", lambda route: held.append(route))
    host[0].pages["/"] = (host_page(service.origin, 'data-site="demo" data-track="false"'), {})
    w.page.goto(f"{host[1].origin}/")
    eventually(lambda: held and len(w.reads()) == 1)
    w.page.evaluate("dispatchEvent(new PageTransitionEvent('pageshow', {persisted: true}))")
    held[0].continue_()
    w.page.unroute("**/api/v1/sites/demo/counter")
    assert len(w.settle(at_least=2)) == 2  # the one it asked for, at once
    assert len(w.step(29.9)) == 2
    assert len(w.step(0.1)) == 3
    assert w.errors == []


def test_english_custom_labels_and_two_boxes_on_one_page_count_one_page_view(
    service: Service, host: tuple[HostSite, Server], open_page: Callable[..., Watched]
) -> None:
    boxes = """
    <div id="en" data-analytics-counter data-site="demo" data-lang="en"></div>
    <div id="own" data-analytics-counter data-site="demo" data-title="Lượt xem"
         data-label-online="Trực tuyến" data-label-today="Trong ngày" data-label-total="Tổng"></div>
    """
    w = open_page()
    show_page(w, host, host_page(service.origin, body=boxes))
    service.wait_for_pageviews(1)
    w.settle(at_least=2)  # each box's first read is over, so its second is due in 2 s
    w.step(2)
    page = w.page
    expect(page.locator(BOX)).to_have_count(2)  # boxes given: none added at the script tag
    expect(page.locator("#en .t")).to_have_text("Visitor statistics")
    expect(page.locator("#en dt")).to_have_text(["Online now", "Today", "Total visits"])
    expect(page.locator("#en dd")).to_have_text(["1", "1", "30,546"])
    expect(page.locator("#own .t")).to_have_text("Lượt xem")
    expect(page.locator("#own dt")).to_have_text(["Trực tuyến", "Trong ngày", "Tổng"])
    expect(page.locator("#own dd")).to_have_text(["1", "1", "30.546"])
    # The English box on this Vietnamese page says which language it is in.
    expect(page.locator("#en [part=box]")).to_have_attribute("lang", "en")
    expect(page.get_by_role("heading", name="Visitor statistics", level=2)).to_have_count(1)
    expect(page.locator("#own [part=box]")).to_have_attribute("lang", "vi")
    assert service.counter()["today"]["pageviews"] == 1
    assert w.errors == []


def test_each_label_says_the_language_it_is_written_in(
    service: Service, host: tuple[HostSite, Server], open_page: Callable[..., Watched]
) -> None:
    """Our labels are Vietnamese or English; an owner's are in data-lang's language or, without
    it, the page's. A screen reader picks its voice by these, so French labels marked as
    Vietnamese are read as gibberish."""
    boxes = """
    <div id="fr" data-analytics-counter data-site="demo" data-lang="fr" data-title="Statistiques"
         data-label-online="En ligne" data-label-today="Ce jour" data-label-total="Total"></div>
    <div lang="en"><div id="page-en" data-analytics-counter data-site="demo"
         data-title="Visits" data-label-online="Here now" data-label-today="Today"
         data-label-total="All time"></div></div>
    <div lang="fr"><div id="mixed" data-analytics-counter data-site="demo"
         data-title="Statistiques"></div></div>
    """
    w = open_page()
    show_page(w, host, host_page(service.origin, body=boxes))
    w.settle(at_least=1)
    page = w.page
    expect(page.locator("#fr [part=box]")).to_have_attribute("lang", "fr")
    expect(page.locator("#fr dt")).to_have_text(["En ligne", "Ce jour", "Total"])
    expect(page.locator("#page-en [part=box]")).to_have_attribute("lang", "en")
    # Our labels under the owner's French title: the box is Vietnamese, its title French.
    expect(page.locator("#mixed [part=box]")).to_have_attribute("lang", "vi")
    expect(page.locator("#mixed [part=title]")).to_have_attribute("lang", "fr")
    expect(page.locator("#mixed dt").first).not_to_have_attribute("lang", re.compile("."))
    # Each box is a region named by its heading.
    expect(page.get_by_role("region", name="Statistiques")).to_have_count(2)
    expect(page.get_by_role("region", name="Visits")).to_have_count(1)
    assert w.errors == []


def test_a_page_with_a_long_query_string_counts_its_view(
    service: Service, host: tuple[HostSite, Server], open_page: Callable[..., Watched]
) -> None:
    """The service keeps a page's path only; a search or tracking query of thousands of
    characters once made the whole URL too long and the view was refused."""
    site, server = host
    site.pages["/"] = (host_page(service.origin), {})
    w = open_page()
    w.page.goto(f"{server.origin}/?q={'x' * 4100}#{'y' * 3000}")
    w.settle(at_least=1)
    service.wait_for_pageviews(1)
    assert w.errors == []


# A page being prerendered (speculation rules), until the test shows it to the reader.
PRERENDERING = """
let prerendering = true;
Object.defineProperty(Document.prototype, "prerendering", { get: () => prerendering });
window.__show = () => {
  prerendering = false;
  document.dispatchEvent(new Event("prerenderingchange"));
};
"""


def test_a_prerendered_page_counts_its_view_only_once_it_is_shown(
    service: Service, host: tuple[HostSite, Server], open_page: Callable[..., Watched]
) -> None:
    """Browsers prerender pages a reader may open next; many are never seen."""
    w = open_page()
    w.page.add_init_script(PRERENDERING)
    show_page(w, host, host_page(service.origin))
    w.step(5)
    assert service.counter()["today"]["pageviews"] == 0
    w.page.evaluate("window.__show()")
    service.wait_for_pageviews(1)
    assert w.errors == []


# A page a reader may open next, prerendered by the browser (speculation rules); the page
# opens it once the test serves /go. The next page notes every page view the widget sends
# (whether the page was still prerendered then) and reports it once the widget has started
# and once the page is shown, each time after the widget's own listeners have run.
PRERENDER_FROM = """<!doctype html><meta charset="utf-8"><title>Tin tức</title>
<script type="speculationrules">{"prerender": [{"source": "list", "urls": ["/next"]}]}</script>
<a id="next" href="/next">Bài tiếp theo</a>
<script>
  setInterval(function () {
    fetch("/go").then(function (r) { if (r.ok) document.getElementById("next").click(); });
  }, 100);
</script>"""
PRERENDERED = """<!doctype html><meta charset="utf-8"><title>Bài tiếp theo</title>
<script>
  var sent = [];
  var realFetch = window.fetch;
  window.fetch = function (url) {
    if (String(url).indexOf("/api/v1/hit") >= 0) sent.push(document.prerendering);
    return realFetch.apply(this, arguments);
  };
  function report(what) {
    navigator.sendBeacon("/report", JSON.stringify(
      {what: what, prerendering: document.prerendering, sent: sent}));
  }
</script>
<p>Bài tiếp theo</p>
<script src="{service}/widget.js" data-site="demo"></script>
<script>
  document.addEventListener("DOMContentLoaded", function () {
    report("started");
    document.addEventListener("prerenderingchange", function () { report("shown"); });
  });
</script>"""


def test_a_page_chromium_really_prerenders_counts_its_view_only_once_it_is_shown(
    service: Service, host: tuple[HostSite, Server], tmp_path: Path
) -> None:
    """The test above fakes document.prerendering: Chromium does not prerender a page
    while DevTools (Playwright) is attached. Here Chromium runs on its own."""
    site, server = host
    site.pages["/"] = (PRERENDER_FROM, {})
    site.pages["/next"] = (PRERENDERED.replace("{service}", service.origin), {})
    chromium = subprocess.Popen(
        [
            str(CHROMIUM),
            "--headless",
            *CHROMIUM_ARGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--user-agent={READER_UA}",
            f"{server.origin}/",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        started = eventually(lambda: [r for r in site.reports if r["what"] == "started"], 30)
        assert started == [{"what": "started", "prerendering": True, "sent": []}]
        site.pages["/go"] = ("go", {})
        shown = eventually(lambda: [r for r in site.reports if r["what"] == "shown"], 30)
        assert shown == [{"what": "shown", "prerendering": False, "sent": [False]}]
        service.wait_for_pageviews(1)
    finally:
        os.killpg(chromium.pid, signal.SIGTERM)
        chromium.wait(10)


def test_an_element_with_the_widgets_old_global_name_as_its_id_breaks_nothing(
    service: Service, host: tuple[HostSite, Server], open_page: Callable[..., Watched]
) -> None:
    """A portal that lets people post HTML can hold any id; an element's id is a global
    name in the page (named access on window). The widget keeps its state where no id can
    reach."""
    w = open_page()
    show_page(w, host, host_page(service.origin, body='<div id="__analyticsCounter"></div>'))
    service.wait_for_pageviews(1)
    w.step(2)
    expect(w.page.locator(f"{BOX} dd")).to_have_text(["1", "1", "30.546"])
    assert w.errors == []


def test_host_css_does_not_reach_into_the_box_which_inherits_the_font_and_takes_its_theme(
    service: Service, host: tuple[HostSite, Server], open_page: Callable[..., Watched]
) -> None:
    # host.css turns every dl, dt, dd, section (and .b, .t) inline and red.
    body = """
    <style>body { font-family: Georgia, serif; } #box { --atc-title-bg: #010203; }</style>
    <dl id="host-dl"><dt>host term</dt><dd>host value</dd></dl>
    <div id="box" data-analytics-counter data-site="demo"></div>
    """
    w = open_page()
    show_page(w, host, host_page(service.origin, 'data-track="false"', body))
    style = (
        """([sel, prop]) => getComputedStyle(document.querySelector(sel)).getPropertyValue(prop)"""
    )

    def inner(selector: str, prop: str) -> str:
        return w.page.locator(f"#box {selector}").first.evaluate(
            "(el, prop) => getComputedStyle(el).getPropertyValue(prop)", prop
        )

    assert inner("dd", "display") == "block"
    assert inner("dd", "color") != "rgb(255, 0, 0)"
    assert "Georgia" in inner("dt", "font-family")
    assert inner(".t", "background-color") == "rgb(1, 2, 3)"
    # The box's own rules (dl { margin: 0 }) do not leak out to the host's lists.
    assert w.page.evaluate(style, ["#host-dl", "margin-top"]) == "16px"


def test_a_sidebars_inherited_text_styles_stop_at_the_box_but_the_boxs_own_rules_apply(
    service: Service, host: tuple[HostSite, Server], open_page: Callable[..., Watched]
) -> None:
    # Inherited properties cross a shadow root: a portal's sidebar that capitalises, spaces
    # out, indents or italicises its text did all of that to the box's labels and numbers.
    body = """
    <style>
      aside { font-family: Georgia, serif; font-size: 15px; text-transform: uppercase;
              letter-spacing: 6px; word-spacing: 9px; text-indent: 40px; font-style: italic;
              font-weight: 700; white-space: pre; text-shadow: 1px 1px red; }
      #hidden { visibility: hidden; }
      #owned { letter-spacing: 2px; }
    </style>
    <aside><div id="box" data-analytics-counter data-site="demo"></div></aside>
    <aside><div id="owned" data-analytics-counter data-site="demo"></div></aside>
    <div id="hidden"><div id="unseen" data-analytics-counter data-site="demo"></div></div>
    """
    w = open_page()
    show_page(w, host, host_page(service.origin, 'data-track="false"', body))
    expect(w.page.locator("#box dd")).to_have_text(["0", "0", "30.545"])

    def inner(box: str, selector: str, prop: str) -> str:
        return w.page.locator(f"{box} {selector}").first.evaluate(
            "(el, prop) => getComputedStyle(el).getPropertyValue(prop)", prop
        )

    reset = {
        "text-transform": "none",
        "letter-spacing": "normal",
        "word-spacing": "0px",
        "text-indent": "0px",
        "font-style": "normal",
        "white-space": "normal",
        "text-shadow": "none",
    }
    assert {prop: inner("#box", "dt", prop) for prop in reset} == reset
    assert inner("#box", "dt", "font-weight") == "400"
    # What the box is meant to take from the page, it still takes.
    assert "Georgia" in inner("#box", "dt", "font-family")
    assert inner("#box", "dt", "font-size") == "15px"
    # A rule the page gives the box's own element is the owner's choice: it applies.
    assert inner("#owned", "dt", "letter-spacing") == "2px"
    # A box in a part of the page that is hidden stays hidden.
    assert inner("#unseen", "dd", "visibility") == "hidden"


def test_service_stopping_keeps_the_last_numbers_without_error_or_layout_jump(
    service: Service, host: tuple[HostSite, Server], open_page: Callable[..., Watched]
) -> None:
    w = open_page()
    show_page(w, host, host_page(service.origin, 'data-site="demo" data-track="false"'))
    expect(w.page.locator(f"{BOX} dd")).to_have_text(["0", "0", "30.545"])
    box, after = w.page.locator(BOX).bounding_box(), w.page.locator("#after").bounding_box()
    service.server.stop()
    w.step(30)
    assert len(w.step_to_next_read(6)) == 3  # the first retry comes 4 to 6 seconds later
    expect(w.page.locator(f"{BOX} dd")).to_have_text(["0", "0", "30.545"])
    assert (w.page.locator(BOX).bounding_box(), w.page.locator("#after").bounding_box()) == (
        box,
        after,
    )
    assert w.errors == []


@pytest.mark.parametrize("font_px", [12, 14, 16])
def test_the_readmes_height_for_a_box_keeps_the_page_from_moving_when_it_is_drawn(
    service: Service, host: tuple[HostSite, Server], open_page: Callable[..., Watched], font_px: int
) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    [rule] = re.findall(r"`(\[data-analytics-counter\] \{ min-height: [^`]+ \})`", readme)
    html = f"""<!doctype html><html lang="vi"><head><meta charset="utf-8">
<style>body {{ font: {font_px}px sans-serif }} aside {{ width: 200px }} {rule}</style></head>
<body><aside><div data-analytics-counter data-site="demo"></div><p id="after">…</p></aside>
</body></html>"""
    w = open_page()
    host[0].pages["/"] = (html, {})
    w.page.goto(f"{host[1].origin}/")
    before = w.page.locator("#after").bounding_box()
    w.page.evaluate(
        """origin => { const tag = document.createElement('script');
        tag.src = origin + '/widget.js'; tag.dataset.site = 'demo'; document.head.append(tag); }""",
        service.origin,
    )
    w.settle(at_least=1)
    expect(w.page.locator(f"{BOX} dd")).to_have_count(3)
    assert w.page.locator("#after").bounding_box() == before


def test_a_page_whose_widget_script_cannot_load_still_loads_without_error(
    host: tuple[HostSite, Server], open_page: Callable[..., Watched]
) -> None:
    stopped = Server(lambda environ, start_response: [])
    stopped.stop()  # nothing listens on its port any more
    w = open_page()
    site, server = host
    site.pages["/"] = (host_page(stopped.origin), {})
    w.page.goto(f"{server.origin}/")
    expect(w.page.locator("#after")).to_be_visible()
    assert w.errors == []


def test_errors_bad_json_and_timeouts_leave_a_dash_retry_with_backoff_and_never_throw(
    service: Service,
    host: tuple[HostSite, Server],
    silent: SilentServer,
    open_page: Callable[..., Watched],
) -> None:
    w = open_page()
    answers = [
        lambda route: route.fulfill(status=500, json={"error": {"code": "x", "message": "x"}}),
        lambda route: route.fulfill(status=200, body="not json", content_type="application/json"),
        lambda route: route.fulfill(status=200, json={"online": "<b>", "today": None}),
        lambda route: route.abort("connectionrefused"),
        # Sent to a server that never answers: the widget's own timeout must end it.
        lambda route: route.continue_(url=f"{silent.origin}/counter"),
    ]

    def failing(route: Route) -> None:
        answers.pop(0)(route) if answers else route.continue_()

    w.page.route("**/api/v1/sites/demo/counter", failing)
    show_page(w, host, host_page(service.origin, 'data-site="demo" data-track="false"'))
    dash = ["\u2013"] * 3
    expect(w.page.locator(f"{BOX} dd")).to_have_text(dash)
    box = w.page.locator(BOX).bounding_box()
    # Each retry waits twice as long as the one before: 5, 10, 20 s (+-20 % jitter).
    for attempt, delay in enumerate([5, 10, 20], start=2):
        reads = w.step_to_next_read(delay * 1.2)
        assert len(reads) == attempt
        waited = (reads[-1]["at"] - reads[-2]["doneAt"]) / 1000
        assert delay * 0.8 <= waited <= delay * 1.2
        expect(w.page.locator(f"{BOX} dd")).to_have_text(dash)
    # The fifth read, 40 s later, goes to a server that never answers...
    assert len(w.step_to_next_read(40 * 1.2, settle=False)) == 5
    # ...and the widget's own timeout ends it after 8 s.
    reads = w.step(8)
    assert reads[-1]["doneAt"] - reads[-1]["at"] == 8000
    reads = w.step_to_next_read(80 * 1.2)
    assert len(reads) == 6
    expect(w.page.locator(f"{BOX} dd")).to_have_text(["0", "0", "30.545"])
    # Dashes and numbers take the same room: no layout jump when the numbers arrive.
    assert w.page.locator(BOX).bounding_box() == box
    assert w.errors == []


@pytest.mark.parametrize("failure", ["502", "503", "unreachable", "answer lost"])
def test_a_view_the_service_could_not_take_is_sent_again_with_its_id_and_counted_once(
    service: Service,
    host: tuple[HostSite, Server],
    open_page: Callable[..., Watched],
    failure: str,
) -> None:
    """A worker restarting behind the proxy answers 502, a Redis away past the worker's
    buffer 503: the view was lost. It is sent again (1 s, then 5 s later) with the same id,
    so it counts once, also when it had been counted and only the answer was lost."""
    w = open_page()
    sent: list[str] = []

    def first_fails(route: Route) -> None:
        sent.append(route.request.post_data or "")
        if len(sent) > 1:
            route.continue_()
        elif failure == "unreachable":
            route.abort("connectionrefused")
        else:
            if failure == "answer lost":
                route.fetch()  # the service counts it; the reader's answer goes astray
            status = 503 if failure == "503" else 502
            route.fulfill(status=status, json={"error": {"code": "x", "message": "x"}})

    w.page.route("**/api/v1/hit", first_fails)
    show_page(w, host, host_page(service.origin))
    # The resend is due 1 s after the failed answer reached the page, which may be after
    # a first step of the page's clock (the "answer lost" case fetches it first).
    deadline = time.monotonic() + 10
    while len(sent) < 2:
        assert time.monotonic() < deadline, "the view was never sent again"
        w.step(1)
    # The service answers a hit once it is written (counting_app): once it has answered
    # every copy that reached it, the count is final.
    reached = 2 if failure == "answer lost" else 1
    eventually(lambda: sum(s.path == "/api/v1/hit" for s in service.recorder.seen) == reached)
    assert service.counter()["today"]["pageviews"] == 1
    assert len(sent) == 2
    assert json.loads(sent[0])["id"] == json.loads(sent[1])["id"]
    w.step(5)
    assert len(sent) == 2  # a view that went through is not sent again
    assert w.errors == []


def test_box_renders_under_a_strict_csp_without_any_violation(
    service: Service, host: tuple[HostSite, Server], open_page: Callable[..., Watched]
) -> None:
    csp = (
        f"default-src 'none'; script-src {service.origin}; connect-src {service.origin}; "
        "style-src 'self'"
    )
    w = open_page()
    show_page(w, host, host_page(service.origin), {"Content-Security-Policy": csp})
    service.wait_for_pageviews(1)  # the page view passed connect-src
    w.step(2)
    expect(w.page.locator(f"{BOX} dd")).to_have_text(["1", "1", "30.546"])
    title_bg = w.page.locator(f"{BOX} .t").evaluate("el => getComputedStyle(el).backgroundColor")
    assert title_bg == "rgb(28, 90, 158)"  # the widget's stylesheet applied
    assert w.violations() == []
    assert [m for m in w.console if "Content Security Policy" in m] == []
    assert w.errors == []


def test_under_a_strict_dynamic_csp_the_tag_needs_the_pages_nonce_as_the_readme_says(
    service: Service, host: tuple[HostSite, Server], open_page: Callable[..., Watched]
) -> None:
    """The "strict CSP" web.dev recommends is nonce-based: 'strict-dynamic' makes the
    browser ignore the service's host in script-src, which alone then loads nothing."""
    csp = (
        f"script-src 'nonce-r4nd0m' 'strict-dynamic' {service.origin}; "
        f"connect-src {service.origin}; object-src 'none'; base-uri 'none'"
    )
    blocked = open_page()
    host[0].pages["/"] = (host_page(service.origin), {"Content-Security-Policy": csp})
    blocked.page.goto(f"{host[1].origin}/")
    eventually(lambda: any("script-src" in v for v in blocked.violations()))
    assert blocked.page.locator(BOX).count() == 0
    w = open_page()
    show_page(
        w,
        host,
        host_page(service.origin, 'nonce="r4nd0m" data-site="demo"'),
        {"Content-Security-Policy": csp},
    )
    service.wait_for_pageviews(1)  # the blocked page sent none
    w.step(2)
    expect(w.page.locator(f"{BOX} dd")).to_have_text(["1", "1", "30.546"])
    assert w.violations() == []
    assert w.errors == []


def test_markup_in_a_label_is_shown_as_text_and_runs_nothing(
    service: Service, host: tuple[HostSite, Server], open_page: Callable[..., Watched]
) -> None:
    evil = '<img src=x onerror="window.__pwned = 1">'
    attrs = f"data-site=\"demo\" data-label-online='{evil}' data-title='<b>bold</b>'"
    w = open_page()
    show_page(w, host, host_page(service.origin, attrs))
    w.step(2)
    expect(w.page.locator(f"{BOX} dt").first).to_have_text(evil)
    expect(w.page.locator(f"{BOX} .t")).to_have_text("<b>bold</b>")
    assert w.page.locator(f"{BOX} img, {BOX} b").count() == 0
    assert w.page.evaluate("window.__pwned") is None
    assert "/x" not in host[0].requested
    assert w.errors == []


def test_demo_page_counts_the_visit_shows_live_numbers_and_is_saved_as_a_screenshot(
    service: Service, open_page: Callable[..., Watched]
) -> None:
    w = open_page()
    w.page.goto(f"{service.origin}/")
    w.settle(at_least=1)
    service.wait_for_pageviews(1)
    w.step(2)
    expect(w.page.locator(f"{BOX} dd")).to_have_text(["1", "1", "30.546"])
    expect(w.page.get_by_text("Liên kết website")).to_be_visible()
    TEST_OUTPUT.mkdir(exist_ok=True)
    w.page.screenshot(path=TEST_OUTPUT / "demo-page.png", full_page=True)
    assert (TEST_OUTPUT / "demo-page.png").stat().st_size > 0
    assert w.violations() == []
    assert w.errors == []


def test_the_demo_pages_small_grey_text_is_readable(
    service: Service, open_page: Callable[..., Watched]
) -> None:
    """WCAG 1.4.3: 4.5:1 for text, the articles' small grey date lines included."""
    w = open_page()
    w.page.goto(f"{service.origin}/")
    expect(w.page.locator(".news .meta")).to_have_count(4)
    for meta in w.page.locator(".news .meta").all():
        assert contrast(meta) >= 4.5


def readme_noscript(service_origin: str) -> str:
    """The README's block for pages without JavaScript, pointed at this service."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    [block] = re.findall(r"^    <noscript>\n(?:^      .*\n)+^    </noscript>\n", readme, re.M)
    return block.replace("https://STATS-HOST", service_origin)


def visit_without_javascript(browser: Browser, service: Service, url: str) -> None:
    """A reader with JavaScript off opens `url`: its one pixel is counted (202)."""
    context = browser.new_context(user_agent=READER_UA, java_script_enabled=False)
    try:
        context.new_page().goto(url)
        service.wait_for_pageviews(1)
    finally:
        context.close()
    assert [s.status for s in service.recorder.seen if s.path == "/api/v1/hit.gif"] == [202]


def test_a_page_without_javascript_counts_its_view_under_its_own_path(
    service: Service,
    host: tuple[HostSite, Server],
    browser: Browser,
    rdb: redis.Redis,
    clock: FrozenClock,
) -> None:
    """The README's pixel, on a portal page of another origin with JavaScript off. The
    browser's default referrer policy sends another origin's image only the page's origin,
    so without the snippet's own policy every such view was counted as `/`."""
    site, server = host
    site.pages["/tin-tuc/bai-viet"] = (
        f"<!doctype html><title>Tin</title><p>Bài viết</p>{readme_noscript(service.origin)}",
        {},
    )
    visit_without_javascript(browser, service, f"{server.origin}/tin-tuc/bai-viet?trang=2")
    day = local_date(clock(), ZoneInfo("Asia/Ho_Chi_Minh"))
    paths = rdb.hgetall(SiteKeys("demo").paths(day))
    assert paths == {b"/tin-tuc/bai-viet": b"1"}


def test_the_readmes_images_load_on_a_page_that_requires_corp(
    service: Service, host: tuple[HostSite, Server], browser: Browser
) -> None:
    """A portal served with `Cross-Origin-Embedder-Policy: require-corp` loads another
    origin's image only if it says `Cross-Origin-Resource-Policy`: the view was counted
    all the same, but the pixel failed to load, an error in the page's console."""
    site, server = host
    site.pages["/"] = (
        f"<!doctype html><title>Tin</title>{readme_noscript(service.origin)}",
        {"Cross-Origin-Embedder-Policy": "require-corp"},
    )
    context = browser.new_context(user_agent=READER_UA, java_script_enabled=False)
    try:
        page = context.new_page()
        failed: list[str] = []
        page.on("requestfailed", lambda r: failed.append(f"{r.url}: {r.failure}"))
        page.goto(f"{server.origin}/", wait_until="load")
        service.wait_for_pageviews(1)
    finally:
        context.close()
    assert failed == []


def test_the_demo_page_without_javascript_counts_its_view(
    service: Service, browser: Browser
) -> None:
    """The demo page's own <noscript> pixel: the page sends no referrer (its policy), so the
    pixel needs a policy of its own, as the README's does, or it is refused (400)."""
    visit_without_javascript(browser, service, f"{service.origin}/")


# -- pages with named elements, several tags, frames (a review of 2026-12-05) ------------


def test_two_script_tags_each_show_a_box_where_they_stand(
    service: Service, host: tuple[HostSite, Server], open_page: Callable[..., Watched]
) -> None:
    """A template with the tag in two columns, one in English: each tag gets its own box,
    with its own labels, and the page view is recorded once."""
    html = f"""<!doctype html><meta charset="utf-8">
    <div id="left"><script src="{service.origin}/widget.js" data-site="demo"></script></div>
    <div id="right"><script src="{service.origin}/widget.js" data-site="demo" data-lang="en">
    </script></div>"""
    w = open_page()
    show_page(w, host, html)
    expect(w.page.locator(f"#left {BOX} dt")).to_have_text(
        ["Đang online", "Hôm nay", "Đã truy cập"]
    )
    expect(w.page.locator(f"#right {BOX} dt")).to_have_text(["Online now", "Today", "Total visits"])
    service.wait_for_pageviews(1)
    w.step(3)
    assert service.counter()["today"]["pageviews"] == 1


def test_two_services_tags_for_sites_of_one_name_each_count_the_view_and_show_their_own(
    service: Service,
    other_service: Service,
    host: tuple[HostSite, Server],
    open_page: Callable[..., Watched],
) -> None:
    """A portal moving to another service shows both tags for a while, and both services
    call its site `demo`: the second copy of the script took the view for one it had sent
    already, and the new service never counted the page."""
    html = f"""<!doctype html><meta charset="utf-8">
    <div id="old"><script src="{service.origin}/widget.js" data-site="demo"></script></div>
    <div id="new"><script src="{other_service.origin}/widget.js" data-site="demo"></script>
    </div>"""
    w = open_page()
    show_page(w, host, html)
    service.wait_for_pageviews(1)
    other_service.wait_for_pageviews(1)
    w.step(3)  # each box's second read, after its view
    expect(w.page.locator(f"#old {BOX} dd")).to_have_text(["1", "1", "30.546"])
    expect(w.page.locator(f"#new {BOX} dd")).to_have_text(["1", "1", "5.001"])
    w.page.evaluate("dispatchEvent(new PageTransitionEvent('pageshow', {persisted: true}))")
    service.wait_for_pageviews(2)  # a restored page: again once at each
    other_service.wait_for_pageviews(2)
    assert w.errors == []


def test_the_page_s_boxes_are_read_from_the_service_whose_tag_names_their_site(
    service: Service,
    other_service: Service,
    host: tuple[HostSite, Server],
    open_page: Callable[..., Watched],
    clock: FrozenClock,
) -> None:
    """Boxes of the page's own for two services' sites, the tags in <head>: the copy that
    ran first drew both and read both from its own service (a 404 for the other's site,
    a box of dashes for ever), and the other service counted nothing."""
    beta = _another_site(other_service, host, clock, "beta")
    html = f"""<!doctype html><html lang="vi"><head><meta charset="utf-8">
    <script async src="{service.origin}/widget.js" data-site="demo"></script>
    <script async src="{other_service.origin}/widget.js" data-site="beta"></script></head>
    <body><div id="demo" data-analytics-counter data-site="demo"></div>
    <div id="beta" data-analytics-counter data-site="beta"></div></body></html>"""
    w = open_page()
    show_page(w, host, html)
    service.wait_for_pageviews(1)
    eventually(lambda: beta() == 1)
    w.step(3)
    expect(w.page.locator("#demo dd")).to_have_text(["1", "1", "30.546"])
    expect(w.page.locator("#beta dd")).to_have_text(["1", "1", "1"])
    expect(w.page.locator(BOX)).to_have_count(2)  # no box drawn at a tag
    assert not [s for s in other_service.recorder.seen if "/sites/demo/" in s.path]
    assert not [s for s in service.recorder.seen if "/sites/beta/" in s.path]
    assert w.errors == []
    assert not [line for line in w.console if "Visitor counter" in line]  # nothing refused


def test_images_named_like_documents_properties_neither_freeze_nor_redirect_the_box(
    service: Service, host: tuple[HostSite, Server], open_page: Callable[..., Watched]
) -> None:
    """Posted HTML with <img name="hidden"> would make document.hidden an element (the tab
    "always hidden": no reads), and <img name="currentScript" src=elsewhere> would make the
    script take the image for itself and send the views to the image's host."""
    body = (
        '<p><img name="hidden" alt=""><img name="readyState" alt="">'
        '<img name="currentScript" src="http://127.0.0.1:9/evil/x.gif" alt=""></p>'
    )
    w = open_page()
    show_page(w, host, host_page(service.origin, body=body))
    service.wait_for_pageviews(1)
    reads = w.reads()
    assert reads and all(r["url"].startswith(service.origin) for r in reads), reads
    expect(w.page.locator(f"{BOX} dd").first).not_to_have_text("\u2013")


def _another_site(
    service: Service, host: tuple[HostSite, Server], clock: FrozenClock, site_id: str
) -> Callable[[], int]:
    """Create `site_id` on `service` for the host's pages; returns a reader of its
    pageviews today."""
    engine = db.create_engine(service.database_url)
    SiteRepository(engine).create(
        build_site(site_id, name=site_id, origins=[host[1].origin]), clock()
    )
    engine.dispose()
    url = f"{service.origin}/api/v1/sites/{site_id}/counter"

    def pageviews() -> int:
        with urllib.request.urlopen(url) as response:
            return json.load(response)["today"]["pageviews"]

    return pageviews


def test_a_site_called_constructor_counts_its_page_views(
    service: Service,
    host: tuple[HostSite, Server],
    open_page: Callable[..., Watched],
    clock: FrozenClock,
) -> None:
    """A valid site id that is also a property of every plain object."""
    pageviews = _another_site(service, host, clock, "constructor")
    w = open_page()
    show_page(w, host, host_page(service.origin, script_attrs='data-site="constructor"'))
    eventually(lambda: pageviews() == 1)


def test_a_box_on_an_element_that_cannot_hold_it_still_counts_its_sites_view(
    service: Service,
    host: tuple[HostSite, Server],
    open_page: Callable[..., Watched],
    clock: FrozenClock,
) -> None:
    """A list item cannot hold a shadow root: no box is drawn there, but the page view of
    the site it names is recorded all the same (beside a box that is drawn)."""
    pageviews = _another_site(service, host, clock, "other")
    w = open_page()
    body = """
    <ul><li data-analytics-counter data-site="other"></li></ul>
    <div data-analytics-counter data-site="demo"></div>
    """
    show_page(w, host, host_page(service.origin, body=body))
    eventually(lambda: pageviews() == 1)
    assert w.errors == []


def test_a_box_in_a_srcdoc_frame_counts_the_view_of_the_page_around_it(
    service: Service, host: tuple[HostSite, Server], open_page: Callable[..., Watched]
) -> None:
    """A frame written by its page is at about:srcdoc, whose origin reads "null": the view
    is the embedding page's (its base URL), not a refused "nullsrcdoc"."""
    inner = f'<div><script src="{service.origin}/widget.js" data-site="demo"></script></div>'
    w = open_page()
    host[0].pages["/framed"] = (f"<!doctype html><iframe srcdoc='{inner}'></iframe>", {})
    w.page.goto(f"{host[1].origin}/framed")
    service.wait_for_pageviews(1)
    assert w.console == [], w.console


def test_a_box_in_a_srcdoc_frame_records_the_page_around_it_once_with_its_path_and_referrer(
    service: Service, host: tuple[HostSite, Server], open_page: Callable[..., Watched]
) -> None:
    """A portal that shows a block of HTML in a frame it writes (srcdoc), with the tag in it
    as well as in its own sidebar. The frame's copy took the frame's base URL for the page:
    under the page's <base href> the view was counted under /static/ instead of the
    article's path; its referrer was the page itself, so the visit's source (a search
    engine) was lost; and the page's own copy recorded the same view a second time."""
    inner = f'<div><script src="{service.origin}/widget.js" data-site="demo"></script></div>'
    page = host_page(
        service.origin,
        body=f"<base href='/static/'><iframe id='block' srcdoc='{inner}'></iframe>",
    )
    host[0].pages["/tin-tuc/bai-1"] = (page, {})
    sent: list[dict] = []

    def note(route: Route) -> None:
        sent.append(json.loads(route.request.post_data or "{}"))
        route.continue_()

    w = open_page()
    w.page.route("**/api/v1/hit", note)
    w.page.goto(f"{host[1].origin}/tin-tuc/bai-1", referer="https://www.google.com/search")
    frame = w.page.frame_locator("#block")
    # Both copies have run (each sends its view before it reads) and read the counter.
    expect(w.page.locator(f"body > {BOX} dd")).not_to_have_text(["\u2013"] * 3)
    expect(frame.locator(f"{BOX} dd")).not_to_have_text(["\u2013"] * 3)
    eventually(lambda: service.counter()["today"]["pageviews"] >= 1)
    w.page.wait_for_load_state("networkidle")
    assert [(urllib.parse.urlsplit(h["url"]).path, h["referrer"]) for h in sent] == [
        ("/tin-tuc/bai-1", "https://www.google.com")
    ]
    assert service.counter()["today"]["pageviews"] == 1
    assert w.errors == []


def test_the_box_stays_readable_on_a_dark_page(
    service: Service, host: tuple[HostSite, Server], open_page: Callable[..., Watched]
) -> None:
    """The box has a white background of its own, so its text must not take the page's
    (light) text colour."""
    body = "<style>body{background:#111;color:#eee}</style>"
    w = open_page()
    show_page(w, host, host_page(service.origin, body=body))
    colour = w.page.locator(f"{BOX} dd").first.evaluate("e => getComputedStyle(e).color")
    assert colour == "rgb(34, 34, 34)", colour


def test_the_counter_image_keeps_its_largest_numbers_clear_of_their_labels(
    settings: Settings,
    service: Service,
    host: tuple[HostSite, Server],
    browser: Browser,
    clock: FrozenClock,
) -> None:
    """Drawn by Chromium: with a total of 15 digits, each number's box ends inside the
    image and starts after its label's (a fixed 200 px ran them together from 10^13 on)."""
    engine = db.create_engine(settings.effective_database_url)
    SiteRepository(engine).create(
        build_site("big", name="big", origins=[host[1].origin], baseline_visits=10**15 - 1),
        clock(),
    )
    engine.dispose()
    page = browser.new_page()
    try:
        for lang in ("vi", "en"):
            page.goto(f"{service.origin}/api/v1/sites/big/counter.svg?lang={lang}")
            boxes = page.evaluate(
                """() => [...document.querySelectorAll("g[fill] text")].map(t => {
                    const b = t.getBBox(); return [b.x, b.x + b.width]; })"""
            )
            width = page.evaluate("document.documentElement.width.baseVal.value")
            assert len(boxes) == 6  # three labels, three numbers
            for (_, label_end), (number_start, number_end) in zip(
                boxes[::2], boxes[1::2], strict=True
            ):
                assert label_end < number_start and number_end <= width, (lang, boxes, width)
    finally:
        page.close()
