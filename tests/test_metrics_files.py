"""The multiprocess metrics folder (metrics_files.py) with real prometheus-client files:
worker processes record counters and a histogram as the service's workers do, exit, and
are folded into the archive one by one while the scrape is read between folds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from analytics_service import metrics_files

# A worker as the service's: hits by outcome, request durations by route (float sums).
WORKER = """
import os, random, sys
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
registry = CollectorRegistry()
random.seed(int(sys.argv[1]))
hits = Counter("analytics_hits", "Hits", ["outcome", "code"], registry=registry)
seconds = Histogram("analytics_http_request_duration_seconds", "Time", ["route", "status"],
                    buckets=(0.001, 0.01, 0.1, 1.0), registry=registry)
Gauge("in_progress", "In progress", multiprocess_mode="livesum", registry=registry).inc()
for _ in range(random.randint(1, 50)):
    hits.labels(random.choice(["visit", "pageview"]), "").inc()
    seconds.labels(random.choice(["/a", "/b"]), "2xx").observe(random.expovariate(20))
print(os.getpid())
"""

Values = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _scrape(folder: Path) -> Values:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for metric in metrics_files.recorded(folder)
        for s in metric.samples
    }


def test_folding_exited_workers_keeps_every_series_and_never_lowers_one(tmp_path: Path) -> None:
    """A histogram's `_sum` is a float: added into the archive and then to the live
    workers', it came out an ulp lower than the scrape before in 8 of 26 folds, which
    Prometheus reads as a reset (a burst in `rate()`)."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    pids = [
        int(
            subprocess.run(
                [sys.executable, "-c", WORKER, str(seed)],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        for seed in range(30)
    ]
    gauge = ("in_progress", frozenset())
    first = shown = _scrape(folder)
    assert first.pop(gauge) == 30
    for pid in pids[:-4]:  # four live workers stay
        metrics_files.archive_exited_worker(folder, pid)
        now = _scrape(folder)
        assert now.pop(gauge) == 30 - pids.index(pid) - 1  # an exited one's leaves the sum
        lower = {key: (shown[key], now[key]) for key in now if now[key] < shown.get(key, 0)}
        assert not lower, lower
        shown = now
    assert shown.keys() == first.keys()
    for key, value in first.items():
        assert abs(shown[key] - value) <= 1e-9 * value, key  # the same counts, to rounding
    files = sorted(path.name for path in folder.glob("*.db"))
    assert files == sorted(
        [f"{kind}_{pid}.db" for kind in ("counter", "histogram") for pid in pids[-4:]]
        + ["counter_archive.db", "histogram_archive.db"]
        + [f"gauge_livesum_{pid}.db" for pid in pids[-4:]]
    )
