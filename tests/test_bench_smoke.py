"""`make bench` works: its script runs end to end (in tiny sizes) and writes its JSON.

The figures of a smoke run mean nothing (1-second phases on a busy machine); only the
round-trip counts, which do not depend on speed, are checked.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    output = tmp_path_factory.mktemp("bench") / "latest.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "POST /api/v1/hit" in run.stdout, "the table is printed"
    return json.loads(output.read_text())


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
    assert load["hit"]["errors"] == 0 and load["counter"]["errors"] == 0
    assert load["hit"]["counted_pageviews"] > 0 and load["hit"]["dropped"] == 0


def test_per_site_day_memory_does_not_grow_with_hits(smoke_results: dict) -> None:
    first, second = smoke_results["details"]["memory"]["site_day_bytes"]
    assert second["pageviews"] > first["pageviews"]
    assert second["bytes"] == first["bytes"]


def test_the_open_loop_runs_send_hits_and_the_control_at_half_and_a_quarter_of_the_maximum(
    smoke_results: dict,
) -> None:
    half, quarter = smoke_results["details"]["latency_by_rate"]
    assert quarter["rate"] == pytest.approx(half["rate"] / 2)
    assert half["rate"] == pytest.approx(smoke_results["hit_rps"] / 2, rel=0.01)
    for point in (half, quarter):
        for run in (point["hit"], point["ceiling"]):
            assert run["requests"] > 0 and run["errors"] == 0
            assert 0 < run["p50_ms"] <= run["p99_ms"] <= run["max_ms"]
