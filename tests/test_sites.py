"""Sites in SQL (SQLite, and PostgreSQL when TEST_DATABASE_URL is set), the CLI, the cache."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from analytics_service import cli as cli_module
from analytics_service import db
from analytics_service.app import warm_up
from analytics_service.auth import token_site
from analytics_service.cli import main, refuse_a_zone_change
from analytics_service.config import Settings
from analytics_service.errors import ApiError
from analytics_service.history import DayCounts, DaySnapshot, History
from analytics_service.jobs import JOBS, run_job
from analytics_service.live import LiveStore
from analytics_service.rollup import last_due_day
from analytics_service.sites import (
    SiteCache,
    SiteError,
    SiteLookupBusy,
    SiteRepository,
    build_site,
    hash_token,
)
from analytics_service.sitetime import local_date

from .conftest import FrozenClock, HistoryEnv, eventually

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
        # Ports no browser writes in an Origin: stored as the default, they would admit it.
        (["ok", "--name", "x", "--origin", "https://p.example:0"], "bad port"),
        (["ok", "--name", "x", "--origin", "https://p.example:0080"], "bad port"),
        (["ok", "--name", "x", "--origin", "https://p.example:65536"], "bad port"),
        # Hosts a browser reads as IPv4 and writes otherwise (1.2.0.3), or refuses.
        (["ok", "--name", "x", "--origin", "https://1.2.3"], "IPv4 address"),
        (["ok", "--name", "x", "--origin", "https://256.1.1.1"], "IPv4 address"),
        (["ok", "--name", "x", "--origin", "https://portal.0x10"], "IPv4 address"),
        (["ok", "--name", "x", "--online-window", "0"], "online window"),
        (["ok", "--name", "Hội\tKhuyến học"], "control characters"),
        (["ok", "--name", "Hội\nKhuyến học"], "control characters"),
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


@pytest.mark.parametrize(
    ("hanoi_time", "refused"),
    [((21, 0), False), ((22, 5), False), ((22, 9), True), ((23, 59), True)],
)
def test_a_time_zone_to_the_east_that_would_close_today_while_workers_count_on_it_is_refused(
    any_database_url: str, open_repo: RepoFactory, hanoi_time: tuple[int, int], refused: bool
) -> None:
    """Hanoi to Tokyo, two hours east, late in Hanoi's day: in Tokyo the day is over, so
    finalise would close Hanoi's today at once (Tokyo's midnight plus the 10-minute grace,
    22:10 in Hanoi), while workers still holding the old zone (up to 30 s) and their late
    hits (a minute) go on counting on it."""
    repo = open_repo(any_database_url)
    current = build_site("demo", name="A")  # Asia/Ho_Chi_Minh
    moved = build_site("demo", name="A", timezone="Asia/Tokyo")
    now = datetime(2026, 11, 28, *hanoi_time, tzinfo=ZoneInfo("Asia/Ho_Chi_Minh"))

    def change() -> None:
        refuse_a_zone_change(History(repo.engine), current, moved, Settings(), now.astimezone(UTC))

    if not refused:
        change()
        return
    with pytest.raises(SiteError) as refusal:
        change()
    assert str(refusal.value) == (
        "in Asia/Tokyo, 2026-11-28 (today in Asia/Ho_Chi_Minh) would be closed while workers "
        "still count hits on it in the old zone: those would never reach the history. Change "
        "the time zone after 2026-11-28 17:10 UTC."
    )


@pytest.mark.parametrize(("hanoi_minute", "refused"), [(1, True), (9, True), (11, False)])
def test_a_time_zone_to_the_east_is_refused_while_the_old_zones_yesterday_takes_late_hits(
    any_database_url: str, open_repo: RepoFactory, hanoi_minute: int, refused: bool
) -> None:
    """Hanoi to Tokyo just after Hanoi's midnight: in Tokyo, Hanoi's yesterday is long due,
    and finalise would close it at once, inside the grace that Hanoi's late hits have
    (until 00:10 in Hanoi); a late hit written then is not marked late (its day's
    midnight plus the grace has not passed where it was counted) and never reaches the
    history."""
    repo = open_repo(any_database_url)
    current = build_site("demo", name="A")  # Asia/Ho_Chi_Minh
    moved = build_site("demo", name="A", timezone="Asia/Tokyo")
    now = datetime(2026, 11, 29, 0, hanoi_minute, tzinfo=ZoneInfo("Asia/Ho_Chi_Minh"))

    def change() -> None:
        refuse_a_zone_change(History(repo.engine), current, moved, Settings(), now.astimezone(UTC))

    if not refused:
        change()
        return
    with pytest.raises(SiteError) as refusal:
        change()
    assert str(refusal.value) == (
        "in Asia/Tokyo, 2026-11-28 (yesterday, still taking late hits, in Asia/Ho_Chi_Minh) "
        "would be closed while workers still count hits on it in the old zone: those would "
        "never reach the history. Change the time zone after 2026-11-28 17:10 UTC."
    )


def test_the_cli_refuses_a_zone_so_far_east_that_today_would_close_at_once(
    any_database_url: str, open_repo: RepoFactory
) -> None:
    """26 hours apart, the old zone's today is always a finished day in the new one."""
    created = cli(
        any_database_url, "site", "create", "demo", "--name", "A", "--timezone", "Etc/GMT+12"
    )
    assert created.exit_code == 0, created.output
    refused = cli(any_database_url, "site", "update", "demo", "--timezone", "Etc/GMT-14")
    assert refused.exit_code == 2
    assert "would be closed while workers still count hits on it" in refused.output
    assert "are more than a day apart" in refused.output
    assert "change to a zone between them first" in refused.output
    assert open_repo(any_database_url).require("demo").timezone == "Etc/GMT+12"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("Pacific/Kiritimati", "Pacific/Pago_Pago"),  # 25 hours west
        ("Pacific/Pago_Pago", "Pacific/Kiritimati"),  # 25 hours east
        ("Pacific/Kiritimati", "Etc/GMT+12"),
    ],
)
def test_zones_more_than_a_day_apart_are_refused_at_every_hour_and_the_message_says_so(
    any_database_url: str, open_repo: RepoFactory, old: str, new: str
) -> None:
    """Every hour of two days, with finalise closing the old zone's days as it would: the
    message never names a time that would be refused again, but says how to get there."""
    repo, history = open_repo(any_database_url), History(open_repo(any_database_url).engine)
    current = build_site("demo", name="A", timezone=old)
    moved = build_site("demo", name="A", timezone=new)
    repo.create(current, datetime.now(UTC))
    start = datetime(2026, 11, 28, tzinfo=UTC)
    for hour in range(48):
        now = start + timedelta(hours=hour)
        due = last_due_day(current, now, timedelta(seconds=600))
        history.write_day(DaySnapshot("demo", due, DayCounts(visits=1)), final=True, now=now)
        with pytest.raises(SiteError) as refusal:
            refuse_a_zone_change(history, current, moved, Settings(), now)
        assert "more than a day apart" in str(refusal.value), (now, str(refusal.value))
        assert "Change the time zone after" not in str(refusal.value)


def test_a_refused_zone_change_names_a_time_at_which_it_is_allowed(
    any_database_url: str, open_repo: RepoFactory
) -> None:
    """Hanoi to Los Angeles (15 hours west) just after Hanoi's day closed: refused now, and
    allowed at the time the message gives, finalise having closed Hanoi's days meanwhile."""
    repo, history = open_repo(any_database_url), History(open_repo(any_database_url).engine)
    current = build_site("demo", name="A")
    moved = build_site("demo", name="A", timezone="America/Los_Angeles")
    repo.create(current, datetime.now(UTC))
    now = datetime(2026, 11, 28, 0, 20, tzinfo=ZoneInfo("Asia/Ho_Chi_Minh")).astimezone(UTC)
    closed = last_due_day(current, now, timedelta(seconds=600))
    history.write_day(DaySnapshot("demo", closed, DayCounts(visits=1)), final=True, now=now)
    with pytest.raises(SiteError) as refusal:
        refuse_a_zone_change(history, current, moved, Settings(), now)
    after = datetime.strptime(str(refusal.value)[-21:-5], "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
    later = after + timedelta(minutes=1)
    due = last_due_day(current, later, timedelta(seconds=600))
    history.write_day(DaySnapshot("demo", due, DayCounts(visits=1)), final=True, now=later)
    refuse_a_zone_change(history, current, moved, Settings(), later)


def test_a_zone_change_waits_for_a_finalise_run_and_is_refused_while_one_holds_its_lock(
    any_database_url: str,
    open_repo: RepoFactory,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run that read the sites before the change could close the old zone's day after
    the checks passed: the change takes finalise's lock."""
    env = {"ANALYTICS_DATABASE_URL": any_database_url, "ANALYTICS_REDIS_URL": redis_url}
    runner = CliRunner()
    assert runner.invoke(main, ["site", "create", "demo", "--name", "A"], env=env).exit_code == 0
    monkeypatch.setattr(cli_module, "MANUAL_ROLLUP_WAIT_SECONDS", 0.2)
    update = ["site", "update", "demo", "--timezone", "Asia/Bangkok"]  # the same offset
    finalise = LiveStore(Settings(redis_url=redis_url))
    with finalise.lock("finalise") as held:
        assert held
        busy = runner.invoke(main, update, env=env)
    finalise.close()
    assert busy.exit_code == 1
    assert "the scheduler is closing days right now" in busy.output
    assert open_repo(any_database_url).require("demo").timezone == "Asia/Ho_Chi_Minh"
    moved = runner.invoke(main, update, env=env)
    assert moved.exit_code == 0, moved.output
    assert open_repo(any_database_url).require("demo").timezone == "Asia/Bangkok"


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


def test_while_one_request_waits_on_the_database_to_read_a_site_again_the_others_use_it_as_read(
    any_database_url: str, open_repo: RepoFactory, clock: FrozenClock
) -> None:
    """A migration's ALTER TABLE (or a stalled server) blocks a site's read: every request
    for the site whose cached copy had expired waited behind it, so a popular site held
    every thread of the worker, and its other sites' hits with them."""
    if not any_database_url.startswith("postgresql"):
        pytest.skip("a table lock that blocks reads: PostgreSQL")
    repo = open_repo(any_database_url)
    repo.create(build_site("demo", name="Before"), clock())
    seconds = [0.0]
    cache = SiteCache(repo, ttl_seconds=30, timer=lambda: seconds[0])
    assert cache.get("demo").name == "Before"
    repo.update(build_site("demo", name="After"), clock())
    seconds[0] = 31
    locker = sa.create_engine(any_database_url)
    lock = locker.connect()
    lock.execute(sa.text("LOCK TABLE sites IN ACCESS EXCLUSIVE MODE"))
    read: list[str] = []
    first = threading.Thread(target=lambda: read.append(cache.get("demo").name), daemon=True)
    second = threading.Thread(target=lambda: read.append(cache.get("demo").name), daemon=True)
    try:
        first.start()
        eventually(lambda: _waiting_for_a_lock(lock) == 1)
        second.start()
        second.join(30)  # still waiting there after 30 s: waiting behind the lock
        assert not second.is_alive() and read == ["Before"]
    finally:
        lock.rollback()
        lock.close()
        locker.dispose()
    first.join(30)
    assert read == ["Before", "After"]
    assert cache.get("demo").name == "After"


def test_while_the_database_stalls_a_worker_reads_one_site_at_a_time_and_no_other_request_waits(
    any_database_url: str, open_repo: RepoFactory, clock: FrozenClock
) -> None:
    """A read of one site waiting on the database (a table lock here, as on a stalled
    server), the read of another site whose copy had expired waited too, and so did the
    read of an id never read (any client can send one): with every thread of a worker held
    so, its other hits waited behind them until the proxy's 504. Now the other site is
    used as last read, and the unknown id is refused at once (a 503 for the client)."""
    if not any_database_url.startswith("postgresql"):
        pytest.skip("a table lock that blocks reads: PostgreSQL")
    repo = open_repo(any_database_url)
    for site_id in ("demo", "other"):
        repo.create(build_site(site_id, name=site_id.title()), clock())
    seconds = [0.0]
    cache = SiteCache(repo, ttl_seconds=30, timer=lambda: seconds[0])
    assert [cache.get(s).name for s in ("demo", "other")] == ["Demo", "Other"]
    seconds[0] = 31
    locker = sa.create_engine(any_database_url)
    lock = locker.connect()
    lock.execute(sa.text("LOCK TABLE sites IN ACCESS EXCLUSIVE MODE"))
    answers: dict[str, object] = {}

    def ask(site_id: str) -> None:
        try:
            site = cache.get(site_id)
            answers[site_id] = site and site.name
        except SiteLookupBusy as exc:
            answers[site_id] = exc

    first = threading.Thread(target=ask, args=("demo",), daemon=True)
    others = [threading.Thread(target=ask, args=(s,), daemon=True) for s in ("other", "ghost")]
    try:
        first.start()
        eventually(lambda: _waiting_for_a_lock(lock) == 1)
        for thread in others:
            thread.start()
            thread.join(30)  # still waiting after 30 s: behind the lock
        assert answers["other"] == "Other"
        assert isinstance(answers["ghost"], SiteLookupBusy)
        assert "demo" not in answers
    finally:
        lock.rollback()
        lock.close()
        locker.dispose()
    first.join(30)
    assert answers["demo"] == "Demo"
    assert cache.get("ghost") is None  # the database answers again: no such site


def _waiting_for_a_lock(connection: sa.Connection) -> int:
    return connection.execute(
        sa.text(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
    ).scalar_one()


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


def _store_site_as_written_before(engine: sa.engine.Engine, site_id: str, zone: str) -> None:
    """A row as a release before this one wrote it, under a time zone that release, or the
    tz database of the host that ran it, took (the row goes in as SQL: no command takes
    such a zone any more)."""
    now = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(
            db.sites.insert().values(
                id=site_id,
                name=site_id,
                timezone=zone,
                origins=[],
                online_window=300,
                address_visit_limit=120,
                baseline_visits=0,
                baseline_pageviews=0,
                token_hash=hash_token(f"token-of-{site_id}"),
                created_at=now,
                updated_at=now,
            )
        )


def test_a_stored_site_whose_zone_is_refused_now_or_gone_from_the_tz_database_breaks_no_other(
    history_env: HistoryEnv,
) -> None:
    """'Factory' was taken before 2026-12-06 (d6566c1), and a tz database upgrade drops
    names (US/Pacific-New in 2020a; US/Eastern and the other legacy links are gone from
    Ubuntu 24.04's and Debian 13's tzdata): such a row made every list of sites raise, so
    no worker started (warm-up), no job closed any site's day, `site list` and the server
    token's site list failed, and `site update --timezone` could not repair it."""
    env = history_env
    engine = env.services.engine
    _store_site_as_written_before(engine, "legacy", "Factory")
    _store_site_as_written_before(engine, "gone", "US/Pacific-New")
    now = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)

    assert [s.id for s in env.services.repo.list()] == ["demo", "legacy"]
    warm_up(env.app, now)  # a worker starts
    for job in JOBS:
        run_job(job, env.services, now)  # every loadable site is rolled up
    server = {"Authorization": "Bearer server-admin-token-0123456789"}
    listed = env.client.get("/api/v1/sites", headers=server)
    assert listed.status_code == 200, listed.get_data(as_text=True)
    assert [s["id"] for s in listed.get_json()["sites"]] == ["demo", "legacy"]
    assert env.client.get("/api/v1/sites/legacy/stats", headers=server).status_code == 200

    url = env.services.settings.effective_database_url
    shown = cli(url, "site", "list")
    assert shown.exit_code == 0, shown.output
    assert "legacy\tFactory" in shown.output
    repaired = cli(url, "site", "update", "legacy", "--timezone", "UTC")
    assert repaired.exit_code == 0, repaired.output
    assert env.services.repo.require("legacy").timezone == "UTC"


def test_readers_and_hits_of_a_site_whose_zone_cannot_be_loaded_find_it_left_out_once(
    history_env: HistoryEnv, caplog: pytest.LogCaptureFixture
) -> None:
    """The public counter, its image and the pixel answered 500 for such a site, each
    read querying SQL again and logging a traceback: a popular portal's box logged one
    per reader and refresh."""
    _store_site_as_written_before(history_env.services.engine, "gone", "US/Pacific-New")
    client = history_env.client
    paths = [
        "/api/v1/sites/gone/counter",
        "/api/v1/sites/gone/counter.svg",
        "/api/v1/hit.gif?site=gone&url=https://gone.example/",
    ]
    answers = [client.get(path) for path in paths * 2]
    assert [a.status_code for a in answers] == [404] * 6
    assert answers[2].content_type == "image/gif"
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    # Once per worker and site cache time, naming the site and the zone.
    assert len(errors) == 1 and "'gone' is left out" in errors[0], errors
    assert "US/Pacific-New" in errors[0]


def test_a_site_whose_zone_cannot_be_loaded_is_shown_why_and_repaired_by_its_zone_alone(
    history_env: HistoryEnv,
) -> None:
    """The README's remedy, setting the site's time zone to its current name, ended in a
    traceback: `site update` and `site show` loaded the site first."""
    env = history_env
    _store_site_as_written_before(env.services.engine, "gone", "US/Pacific-New")
    url = env.services.settings.effective_database_url

    shown = cli(url, "site", "show", "gone")
    assert shown.exit_code == 1 and "Traceback" not in shown.output, shown.output
    assert "'US/Pacific-New'" in shown.output
    assert "site update SITE --timezone NAME" in shown.output
    # Its other settings cannot be read meanwhile: a change of them waits for a zone.
    both = cli(url, "site", "update", "gone", "--timezone", "Asia/Tokyo", "--name", "Gone")
    assert both.exit_code == 1 and "Traceback" not in both.output, both.output
    refused = cli(url, "site", "update", "gone", "--timezone", "Mars/Olympus")
    assert refused.exit_code == 2 and "unknown time zone 'Mars/Olympus'" in refused.output

    repaired = cli(url, "site", "update", "gone", "--timezone", "America/Los_Angeles")
    assert repaired.exit_code == 0, repaired.output
    assert "America/Los_Angeles" in repaired.output
    assert env.services.repo.require("gone").timezone == "America/Los_Angeles"
    assert [s.id for s in env.services.repo.list()] == ["demo", "gone"]


def test_the_admin_api_and_commands_of_a_site_whose_zone_cannot_be_loaded_say_why_in_a_line(
    history_env: HistoryEnv,
) -> None:
    """Every admin request of such a site (the dashboard's sign-in with its token, the
    server token's statistics, export, import and baseline) answered 500 with a traceback
    logged, and `rollup --site` of it ended in a traceback."""
    env = history_env
    engine = env.services.engine
    _store_site_as_written_before(engine, "gone", "US/Pacific-New")
    days = "date,visits,pageviews,visitors\n2026-11-01,5,9,4\n"
    for token in ("server-admin-token-0123456789", "token-of-gone"):
        headers = {"Authorization": f"Bearer {token}"}
        base = "/api/v1/sites/gone"
        answers = [
            env.client.get(f"{base}{path}", headers=headers)
            for path in ("", "/stats", "/pages", "/referrers", "/export.csv")
        ]
        answers.append(env.client.put(f"{base}/baseline", json={"visits": 7}, headers=headers))
        answers.append(
            env.client.post(f"{base}/import", data=days, content_type="text/csv", headers=headers)
        )
        for answer in answers:
            assert answer.status_code == 404, answer.get_data(as_text=True)
            error = answer.get_json()["error"]
            assert error["code"] == "unknown_site"
            assert "'US/Pacific-New'" in error["message"]
            assert "site update gone --timezone NAME" in error["message"]
    with engine.connect() as conn:
        assert conn.execute(sa.select(db.sites.c.baseline_visits)).scalars().all() == [0, 0]
        assert conn.execute(sa.select(sa.func.count()).select_from(db.daily_totals)).scalar() == 0

    env_vars = {
        "ANALYTICS_DATABASE_URL": env.services.settings.effective_database_url,
        "ANALYTICS_REDIS_URL": env.services.settings.redis_url,
    }
    result = CliRunner().invoke(main, ["rollup", "--site", "gone"], env=env_vars)
    assert result.exit_code == 1, result.output
    assert result.exc_info is None or result.exc_info[0] is SystemExit, result.exc_info
    assert "'US/Pacific-New'" in result.output
    assert "site update SITE --timezone NAME" in result.output


def test_a_site_whose_zone_cannot_be_loaded_is_deleted_as_any_other(
    history_env: HistoryEnv,
) -> None:
    """`site delete` of it stopped with a traceback: its owner could not remove it."""
    env = history_env
    _store_site_as_written_before(env.services.engine, "gone", "US/Pacific-New")
    settings = env.services.settings
    runner = CliRunner()
    env_vars = {
        "ANALYTICS_DATABASE_URL": settings.effective_database_url,
        "ANALYTICS_REDIS_URL": settings.redis_url,
        "ANALYTICS_SITE_CACHE_SECONDS": "0",
    }
    asked = runner.invoke(main, ["site", "delete", "gone"], env=env_vars)
    assert asked.exit_code == 0 and "site 'gone' (gone)" in asked.output, asked.output
    deleted = runner.invoke(main, ["site", "delete", "gone", "--yes"], env=env_vars)
    assert deleted.exit_code == 0, deleted.output
    assert "site 'gone' deleted" in deleted.output
    with env.services.engine.connect() as conn:
        assert conn.execute(sa.select(db.sites.c.id)).scalars().all() == ["demo"]
    removed = env.services.store.client.get("an:{gone}:removed")
    assert float(removed) == datetime(2026, 11, 28, 3, 0, tzinfo=UTC).timestamp()
