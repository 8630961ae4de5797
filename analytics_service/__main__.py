"""The `analytics-service` command (cli.py), also as `python -m analytics_service`.

Its processes (the scheduler, `check` as a health check, the site commands) record no
metric a scrape reads: the scheduler's jobs go to SQL, read by the web's /metrics. With
PROMETHEUS_MULTIPROC_DIR set for every process of a host (one environment file for the
web and the scheduler), each of them left its metric files in the web's folder, never
folded into the archive (metrics_files.py): a health check every 30 s made thousands a
day, each read by every scrape. So the variable is dropped before prometheus-client,
which reads it as it is imported, is.
"""

from __future__ import annotations

import os


def main() -> None:
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    from .cli import main as command

    command()


if __name__ == "__main__":
    main()
