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
import math
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
# Passes that raise the archive's values by what a scrape would show short of the last one
# (an ulp or two of rounding; one pass is nearly always enough) before it goes in as it is.
MAX_RAISES = 8

SampleKey = tuple[str, frozenset[tuple[str, str]]]


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
        return _scraped(_files(folder))


def _files(folder: Path) -> list[str]:
    # In one order: float sums (a histogram's `_sum`) depend on the order they are added in.
    return sorted(glob.glob(os.path.join(folder, "*.db")))


def _scraped(files: list[str]) -> list[Metric]:
    return list(multiprocess.MultiProcessCollector.merge(files, accumulate=True))


def archive_exited_worker(folder: Path, pid: int) -> None:
    """In the master, once worker `pid` has exited: its live gauges leave the sum, and its
    counters and histograms move into the archive."""
    multiprocess.mark_process_dead(pid, str(folder))  # type: ignore[no-untyped-call]
    with _locked(folder, fcntl.LOCK_EX):
        for kind in ARCHIVED_KINDS:
            exited = folder / f"{kind}_{pid}.db"
            if exited.exists():
                _fold(folder, kind, exited)


def _fold(folder: Path, kind: str, exited: Path) -> None:
    """Add `exited`'s values to the kind's archive. The new archive is written beside the
    old one and renamed over it, so a master killed halfway leaves one or the other whole
    (and the worker's own file, still counted once).

    Floating-point addition is not associative: the worker's `_sum` rounded into the
    archive, and the archive then added to the live workers', can come out an ulp below
    the sum the last scrape showed, which Prometheus reads as a counter reset (a burst in
    `rate()`). So each value that would read lower is raised by those ulps before the new
    archive goes in."""
    archive = folder / f"{kind}_{ARCHIVE}.db"
    staged = folder / f"{kind}_{ARCHIVE}.new"
    shown = _values(_scraped(_files(folder)))
    archived = _merged([str(path) for path in (archive, exited) if path.exists()])
    names = sorted({*_files(folder), str(archive)} - {str(exited)})
    after = [str(staged) if name == str(archive) else name for name in names]
    for _ in range(MAX_RAISES):
        _write(staged, archived)
        now = _values(_scraped(after))
        short = {
            key: shown[key] - value for key, value in now.items() if value < shown.get(key, value)
        }
        if not short:
            break
        _raise(archived, short)
    os.replace(staged, archive)
    exited.unlink()


def _values(metrics: list[Metric]) -> dict[SampleKey, float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for metric in metrics
        for sample in metric.samples
    }


def _raise(metrics: list[Metric], short: dict[SampleKey, float]) -> None:
    """Raise each sample by its shortfall, and by an ulp at least (a shortfall smaller than
    the archive's own ulp would otherwise round away)."""
    for metric in metrics:
        samples = []
        for sample in metric.samples:
            by = short.get((sample.name, frozenset(sample.labels.items())))
            if by is not None:
                value = max(sample.value + by, math.nextafter(sample.value, math.inf))
                sample = sample._replace(value=value)
            samples.append(sample)
        metric.samples = samples


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
