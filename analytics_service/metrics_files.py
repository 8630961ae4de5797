"""The folder of prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR): how a
scrape reads it, and how the gunicorn master folds in the files of a worker that exited.

Each worker writes its counters and histograms to files of its own (`counter_PID.db`,
`histogram_PID.db`), and prometheus-client keeps them after the worker is gone so that
counters never go back. Left alone, every worker the master ever ran (each recycled by
GUNICORN_MAX_REQUESTS, each restarted after a crash) added two files that every scrape
read: a review measured 0.26 s a scrape with 3,000 of them. So when a worker exits, the
master adds its values to one archive file per kind (`counter_archive.db`) and deletes its
files: a scrape reads the live workers' files and the archive, whatever the master's age.

A scrape must not see a worker's counts twice (in the archive and in its own file) or not
at all (in neither): either would read to Prometheus as a counter reset, and `rate()` would
show a burst. So the master folds a worker in under an exclusive lock on a file in the
folder, and a scrape reads under a shared one.

The master imports this module without the app's metrics (metrics.py would create files of
the master's own), so it holds no metric.
"""

from __future__ import annotations

import fcntl
import glob
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client import multiprocess
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key

# The kinds whose files outlive their worker. Gauges are not: the service's are `livesum`,
# whose files prometheus-client deletes when the worker is marked dead.
ARCHIVED_KINDS = ("counter", "histogram")
ARCHIVE = "archive"  # in place of a pid in the archive's file name
LOCK_FILE = ".lock"  # not *.db: the collector reads every *.db file in the folder


@contextmanager
def _locked(folder: Path, kind: int) -> Iterator[None]:
    with open(folder / LOCK_FILE, "a+b") as lock:
        fcntl.flock(lock, kind)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def recorded(folder: Path) -> list[Metric]:
    """Every worker's counts, live and exited, summed as a scrape shows them."""
    with _locked(folder, fcntl.LOCK_SH):
        files = glob.glob(os.path.join(folder, "*.db"))
        return list(multiprocess.MultiProcessCollector.merge(files, accumulate=True))


def archive_exited_worker(folder: Path, pid: int) -> None:
    """In the master, once worker `pid` has exited: its live gauges leave the sum, and its
    counters and histograms move into the archive. The new archive is written beside the
    old one and renamed over it, so a master killed halfway leaves one or the other whole
    (and the worker's own files, still counted once)."""
    multiprocess.mark_process_dead(pid, str(folder))  # type: ignore[no-untyped-call]
    with _locked(folder, fcntl.LOCK_EX):
        for kind in ARCHIVED_KINDS:
            exited = folder / f"{kind}_{pid}.db"
            if not exited.exists():
                continue
            archive = folder / f"{kind}_{ARCHIVE}.db"
            sources = [str(path) for path in (archive, exited) if path.exists()]
            _write(folder / f"{kind}_{ARCHIVE}.new", _merged(sources))
            os.replace(folder / f"{kind}_{ARCHIVE}.new", archive)
            exited.unlink()


def _merged(files: list[str]) -> list[Metric]:
    # Histogram buckets as each file stores them (not summed into `le` order): the archive
    # is a file the collector reads like a worker's.
    return list(multiprocess.MultiProcessCollector.merge(files, accumulate=False))


def _write(path: Path, metrics: list[Metric]) -> None:
    path.unlink(missing_ok=True)
    values = MmapedDict(str(path))
    try:
        for metric in metrics:
            for sample in metric.samples:
                key = mmap_key(
                    metric.name,
                    sample.name,
                    list(sample.labels),
                    list(sample.labels.values()),
                    metric.documentation,
                )
                values.write_value(key, sample.value, 0.0)
    finally:
        values.close()
