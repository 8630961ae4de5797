"""The spool's files (spool.py): what a stopping worker keeps for the next one."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from analytics_service import spool

FIELDS = {"hit": ("ts", "day"), "site": ("id",)}
BATCH = spool.Spooled("w1", 3, True, {"id": "demo"}, [[1.5, "2026-11-28"]])


def test_a_file_is_taken_by_one_process_at_a_time_and_gone_once_written(tmp_path: Path) -> None:
    path = spool.save(tmp_path, FIELDS, [BATCH])
    [taken] = spool.claim(tmp_path, FIELDS)
    assert taken.batches == [BATCH]
    assert spool.claim(tmp_path, FIELDS) == []  # held: another worker leaves it
    taken.release(written=False)  # this one stopped before writing it: the next takes it
    [again] = spool.claim(tmp_path, FIELDS)
    again.release(written=True)
    assert not path.exists()
    assert spool.claim(tmp_path, FIELDS) == []


def test_a_file_of_another_releases_fields_is_left_where_it_is_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Read with other fields, a hit's path could be taken for its referrer."""
    path = spool.save(tmp_path, {"hit": ("ts", "path", "day"), "site": ("id",)}, [BATCH])
    (tmp_path / "torn.hits").write_bytes(b"\x93\x01")
    with caplog.at_level(logging.ERROR):
        assert spool.claim(tmp_path, FIELDS) == []
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
    [taken] = spool.claim(tmp_path, FIELDS)
    assert (taken.done, taken.sent) == (frozenset(), frozenset())
    taken.sending(0)
    taken.answered(0)
    taken.sending(1)
    taken.release(written=False)
    with path.with_name(path.name + spool.DONE_SUFFIX).open("ab") as record:
        record.write(b"s2\n1")  # the last line torn by a crash of the machine
    [again] = spool.claim(tmp_path, FIELDS)
    assert (again.done, again.sent) == ({0}, {0, 1, 2})
    again.release(written=True)
    assert list(tmp_path.iterdir()) == []
