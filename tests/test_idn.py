"""Internationalised domain names: origins are stored and compared in the ASCII (punycode)
form browsers send, and shown to people in Unicode."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from flask import Flask

from analytics_service import db
from analytics_service.cli import main
from analytics_service.config import Settings
from analytics_service.sites import (
    SiteError,
    SiteRepository,
    ascii_host,
    build_site,
    display_origin,
    normalise_origin,
    unicode_host,
)

from .conftest import FrozenClock, counting_app

LHH = "liênhiệphội.vn"
LHH_ASCII = "xn--linhiphi-l1a7657ezfa.vn"  # what Chromium sends for it
HOI = "hộinôngdân.vn"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (LHH, LHH_ASCII),
        (LHH.upper(), LHH_ASCII),
        # A keyboard or a copy-paste may give the decomposed form (e + combining marks).
        (unicodedata.normalize("NFD", LHH), LHH_ASCII),
        (LHH_ASCII, LHH_ASCII),
        ("LHH.Example", "lhh.example"),
        ("www." + LHH, "www." + LHH_ASCII),
        ("faß.de", "xn--fa-hia.de"),  # non-transitional, as browsers do (not fass.de)
        ("127.0.0.1", "127.0.0.1"),
        ("intranet_host", "intranet_host"),
        ("0:0::1", "::1"),
    ],
)
def test_ascii_host_gives_the_form_browsers_send(host: str, expected: str) -> None:
    assert ascii_host(host) == expected


@pytest.mark.parametrize(
    "host",
    [
        "",
        "a..vn",
        "ex ample.vn",
        "xn--linhiphi-h7a2bz5c.vn",  # punycode that decodes to disallowed code points
        "liên hiệp.vn",
        "☃.vn",
        "::zz",
    ],
)
def test_ascii_host_refuses_what_cannot_be_a_host(host: str) -> None:
    with pytest.raises(SiteError, match="invalid host"):
        ascii_host(host)
    with pytest.raises(ValueError):  # SiteError is a ValueError: callers may catch either
        ascii_host(host)


def test_unicode_forms_are_shown_to_people() -> None:
    assert unicode_host(LHH_ASCII) == LHH
    assert unicode_host("lhh.example") == "lhh.example"
    # Not valid punycode: shown as it is rather than failing.
    assert unicode_host("xn--linhiphi-h7a2bz5c.vn") == "xn--linhiphi-h7a2bz5c.vn"
    assert display_origin(f"https://{LHH_ASCII}:8443") == f"https://{LHH}:8443"
    assert display_origin("http://[::1]:8000") == "http://[::1]:8000"


def test_an_idn_origin_is_stored_in_ascii_and_its_two_spellings_are_one_origin() -> None:
    assert normalise_origin(f"https://{LHH}/") == f"https://{LHH_ASCII}"
    assert normalise_origin(f"HTTPS://{LHH.upper()}:443") == f"https://{LHH_ASCII}"
    site = build_site("lhh", name="LHH", origins=[f"https://{LHH}", f"https://{LHH_ASCII}"])
    assert site.origins == (f"https://{LHH_ASCII}",)
    assert site.own_hosts == frozenset({LHH_ASCII})
    with pytest.raises(SiteError, match="invalid origin"):
        build_site("bad", name="Bad", origins=["https://liên hiệp.vn"])


def cli(database_url: str, *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, list(args), env={"ANALYTICS_DATABASE_URL": database_url})


def test_the_cli_stores_idn_origins_in_ascii_and_shows_them_in_unicode(
    any_database_url: str,
) -> None:
    created = cli(
        any_database_url, "site", "create", "lhh", "--name", "LHH", "--origin", f"https://{LHH}"
    )
    assert created.exit_code == 0, created.output
    assert f"https://{LHH} (https://{LHH_ASCII})" in created.output
    updated = cli(
        any_database_url,
        "site", "update", "lhh",
        "--origin", f"https://{LHH}", "--origin", f"https://{HOI.upper()}",
    )  # fmt: skip
    assert updated.exit_code == 0, updated.output
    engine = db.create_engine(any_database_url)
    site = SiteRepository(engine).require("lhh")
    engine.dispose()
    assert site.origins == (f"https://{LHH_ASCII}", f"https://{ascii_host(HOI)}")
    listed = cli(any_database_url, "site", "list").output
    assert f"https://{LHH} https://{HOI}" in listed
    assert "xn--" not in listed
    bad = cli(any_database_url, "site", "update", "lhh", "--origin", "https://a..vn")
    assert (bad.exit_code, "invalid origin" in bad.output) == (2, True)


def test_a_row_stored_with_a_unicode_origin_is_read_in_ascii(database_url: str) -> None:
    now = datetime(2026, 11, 28, tzinfo=UTC)
    engine = db.create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(
            db.sites.insert().values(
                id="old",
                name="Old",
                timezone="Asia/Ho_Chi_Minh",
                origins=[f"https://{LHH}", f"https://{LHH_ASCII}"],
                online_window=300,
                baseline_visits=0,
                baseline_pageviews=0,
                token_hash="0" * 64,
                created_at=now,
                updated_at=now,
            )
        )
    assert SiteRepository(engine).require("old").origins == (f"https://{LHH_ASCII}",)
    with engine.connect() as conn:
        assert conn.execute(sa.select(db.sites.c.origins)).scalar() == [
            f"https://{LHH}",
            f"https://{LHH_ASCII}",
        ]
    engine.dispose()


@pytest.fixture
def idn_app(settings: Settings, clock: FrozenClock, repo: SiteRepository) -> Flask:
    repo.create(build_site("lhh", name="LHH", origins=[f"https://{LHH}"]), clock())
    app = counting_app(settings, clock)
    yield app
    app.extensions["analytics"].close()


def test_a_site_created_with_a_unicode_origin_counts_the_hits_a_browser_sends(
    idn_app: Flask,
) -> None:
    # Chromium on https://liênhiệphội.vn/tin-tuc: Origin and location.href in punycode.
    response = idn_app.test_client().post(
        "/api/v1/hit",
        data=f'{{"site": "lhh", "url": "https://{LHH_ASCII}/tin-tuc"}}',
        headers={
            "Content-Type": "text/plain",
            "Origin": f"https://{LHH_ASCII}",
            "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0",
        },
    )
    assert response.status_code == 202, response.get_data(as_text=True)
    assert response.headers["Access-Control-Allow-Origin"] == f"https://{LHH_ASCII}"
    counter = idn_app.test_client().get("/api/v1/sites/lhh/counter").get_json()
    assert counter["today"]["pageviews"] == 1
