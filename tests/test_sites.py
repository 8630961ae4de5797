"""Sites in SQL (SQLite, and PostgreSQL when TEST_DATABASE_URL is set), the CLI, the cache."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from analytics_service import db
from analytics_service.auth import token_site
from analytics_service.cli import main
from analytics_service.errors import ApiError
from analytics_service.history import DayCounts, DaySnapshot, History
from analytics_service.sites import SiteCache, SiteRepository, build_site, hash_token
from analytics_service.sitetime import local_date

from .conftest import FrozenClock

RepoFactory = Callable[[str], SiteRepository]


@pytest.fixture
def open_repo() -> Iterator[RepoFactory]:
    engines = []

    def factory(url: str) -> SiteRepository:
        engines.append(db.create_engine(url))
        return SiteRepository(engines[-1])

    yield factory
    for engine in engines:
        engine.dispose()


def cli(database_url: str, *args: str):
    return CliRunner().invoke(main, list(args), env={"ANALYTICS_DATABASE_URL": database_url})


def test_create_prints_the_token_once_and_stores_only_its_hash(
    any_database_url: str, open_repo: RepoFactory
) -> None:
    result = cli(
        any_database_url,
        "site", "create", "lhh-thanh-hoa",
        "--name", "Liên hiệp hội Thanh Hóa",
        "--origin", "https://LHH.example/",
        "--origin", "http://localhost:8000",
        "--timezone", "Asia/Ho_Chi_Minh",
        "--online-window", "180",
        "--baseline-visits", "30545",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    token = re.search(r"admin token\s+(\S+)", result.output).group(1)
    repo = open_repo(any_database_url)
    site = repo.require("lhh-thanh-hoa")
    assert site.origins == ("https://lhh.example", "http://localhost:8000")
    assert (site.online_window, site.baseline_visits, site.name) == (
        180,
        30545,
        "Liên hiệp hội Thanh Hóa",
    )
    assert token_site(repo.engine, None, f"Bearer {token}") == "lhh-thanh-hoa"
    with pytest.raises(ApiError) as wrong:
        token_site(repo.engine, None, f"Bearer {token}x")
    assert wrong.value.status == 401
    with repo.engine.connect() as conn:
        stored = conn.execute(sa.select(db.sites.c.token_hash)).scalar()
    assert stored == hash_token(token) != token

    shown = cli(any_database_url, "site", "show", "lhh-thanh-hoa")
    assert shown.exit_code == 0
    assert token not in shown.output
    assert "30545" in shown.output
    listed = cli(any_database_url, "site", "list")
    assert listed.output.startswith("lhh-thanh-hoa\tAsia/Ho_Chi_Minh")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["Bad_Id", "--name", "x"], "invalid site id"),
        (["--name", "x", "--", "-leading"], "invalid site id"),
        (["a" * 64, "--name", "x"], "invalid site id"),
        (["ok", "--name", "x", "--timezone", "Asia/Hanoi_City"], "unknown time zone"),
        (["ok", "--name", "x", "--origin", "portal.example"], "invalid origin"),
        (["ok", "--name", "x", "--origin", "https://p.example/path"], "invalid origin"),
        (["ok", "--name", "x", "--origin", "ftp://p.example"], "invalid origin"),
        (["ok", "--name", "x", "--online-window", "0"], "online window"),
        (["ok", "--name", "x", "--baseline-visits", "-5"], "baseline visits"),
    ],
)
def test_bad_site_input_gets_a_clear_error_and_creates_nothing(
    any_database_url: str, open_repo: RepoFactory, args: list[str], message: str
) -> None:
    result = cli(any_database_url, "site", "create", *args)
    assert result.exit_code == 2
    assert message in result.output
    assert open_repo(any_database_url).list() == []


def test_a_site_id_is_created_once(any_database_url: str, open_repo: RepoFactory) -> None:
    assert cli(any_database_url, "site", "create", "demo", "--name", "A").exit_code == 0
    again = cli(any_database_url, "site", "create", "demo", "--name", "B")
    assert again.exit_code == 2
    assert "already exists" in again.output
    assert open_repo(any_database_url).require("demo").name == "A"


def test_update_changes_only_what_it_is_given_and_refuses_bad_values(
    any_database_url: str,
    open_repo: RepoFactory,
) -> None:
    cli(any_database_url, "site", "create", "demo", "--name", "A", "--origin", "https://a.example")
    ok = cli(any_database_url, "site", "update", "demo", "--baseline-visits", "100")
    assert ok.exit_code == 0, ok.output
    bad = cli(any_database_url, "site", "update", "demo", "--timezone", "Nowhere/City")
    assert bad.exit_code == 2
    # Restrict to one origin, or open to all? Not guessed: "all" once won silently.
    both = ("--origin", "https://b.example", "--clear-origins")
    contradictory = cli(any_database_url, "site", "update", "demo", *both)
    assert contradictory.exit_code == 2
    assert "--origin and --clear-origins contradict each other" in contradictory.output
    site = open_repo(any_database_url).require("demo")
    assert (site.name, site.origins, site.baseline_visits, site.timezone) == (
        "A",
        ("https://a.example",),
        100,
        "Asia/Ho_Chi_Minh",
    )
    missing = cli(any_database_url, "site", "update", "nope", "--name", "x")
    assert missing.exit_code == 2


def test_a_time_zone_that_would_make_today_a_closed_day_is_refused(
    any_database_url: str, open_repo: RepoFactory
) -> None:
    """Moved west, a site can find itself on a date it already closed: its hits would be
    counted in Redis and never reach the history. The CLI refuses, says when it can be
    done, and changes nothing."""
    cli(any_database_url, "site", "create", "demo", "--name", "A")  # Asia/Ho_Chi_Minh
    history = History(open_repo(any_database_url).engine)
    west = ZoneInfo("America/Los_Angeles")
    today_there = local_date(datetime.now(UTC), west)
    closed = DaySnapshot("demo", today_there, DayCounts(visits=1, pageviews=1))
    history.write_day(closed, final=True, now=datetime.now(UTC))
    refused = cli(any_database_url, "site", "update", "demo", "--timezone", west.key)
    assert refused.exit_code == 2
    assert f"{today_there} is already closed" in refused.output
    assert open_repo(any_database_url).require("demo").timezone == "Asia/Ho_Chi_Minh"

    with open_repo(any_database_url).engine.begin() as conn:
        conn.execute(sa.delete(db.daily_totals))
    earlier = DaySnapshot("demo", today_there - timedelta(days=1), DayCounts(visits=1))
    history.write_day(earlier, final=True, now=datetime.now(UTC))
    moved = cli(any_database_url, "site", "update", "demo", "--timezone", west.key)
    assert moved.exit_code == 0, moved.output
    assert open_repo(any_database_url).require("demo").timezone == west.key


def test_the_site_cache_serves_from_memory_until_it_expires(
    any_database_url: str, open_repo: RepoFactory, clock: FrozenClock
) -> None:
    repo = open_repo(any_database_url)
    repo.create(build_site("demo", name="Before"), clock())
    seconds = [0.0]
    cache = SiteCache(repo, ttl_seconds=30, timer=lambda: seconds[0])
    assert cache.get("demo").name == "Before"
    assert cache.get("ghost") is None
    repo.update(build_site("demo", name="After"), clock())
    repo.create(build_site("ghost", name="Ghost"), clock())
    seconds[0] = 29
    assert cache.get("demo").name == "Before"
    assert cache.get("ghost") is None
    seconds[0] = 31
    assert cache.get("demo").name == "After"
    assert cache.get("ghost").name == "Ghost"


def test_ids_that_cannot_be_site_ids_take_no_room_in_the_site_cache(
    any_database_url: str, open_repo: RepoFactory, clock: FrozenClock
) -> None:
    repo = open_repo(any_database_url)
    repo.create(build_site("demo", name="Before"), clock())
    cache = SiteCache(repo, ttl_seconds=30, maxsize=10)
    assert cache.get("demo").name == "Before"
    repo.update(build_site("demo", name="After"), clock())
    for n in range(20):
        assert cache.get(f"<junk {n}>" + "x" * 8000) is None
    # Still the cached copy: the junk evicted nothing.
    assert cache.get("demo").name == "Before"


def test_the_migrated_schema_matches_the_table_definitions(any_database_url: str) -> None:
    engine = db.create_engine(any_database_url)
    inspector = sa.inspect(engine)
    for table in db.metadata.sorted_tables:
        migrated = {c["name"] for c in inspector.get_columns(table.name)}
        assert migrated == {c.name for c in table.columns}, table.name
    engine.dispose()
