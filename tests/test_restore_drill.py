"""The restore drill of docs/deploy.md, steps 2 to 5: a dump of the SQL history restored
into an empty database, the service started on it with an empty Redis, and the counters
back from history. PostgreSQL with pg_dump / pg_restore when TEST_DATABASE_URL is set (as
in CI); SQLite with its online backup otherwise."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from analytics_service import db
from analytics_service.config import Settings
from analytics_service.history import DayCounts, DaySnapshot, History
from analytics_service.sites import DEFAULT_TIMEZONE
from analytics_service.sitetime import local_date

from .conftest import PORTAL, eventually, start_redis
from .stack import BIN, gunicorn, send, service_env

BASELINE = 30545
READERS = 3
# A finished day the dump holds, closed by an earlier rollup.
CLOSED = DayCounts(visits=7, pageviews=9, visitors=6)


def _libpq(url: str) -> str:
    return sa.engine.make_url(url).set(drivername="postgresql").render_as_string(False)


@contextmanager
def _restored(url: str, dump: Path) -> Iterator[str]:
    """Steps 1-2: a dump of `url`, restored into a new, empty database."""
    if url.startswith("sqlite"):
        restored = dump.with_suffix(".restored.db")
        source = sqlite3.connect(sa.engine.make_url(url).database)
        target = sqlite3.connect(restored)
        with target:
            source.backup(target)
        source.close()
        target.close()
        yield f"sqlite:///{restored}"
        return
    subprocess.run(
        ["pg_dump", "--format=custom", f"--file={dump}", f"--dbname={_libpq(url)}"], check=True
    )
    name = f"analytics_restored_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    restored = sa.engine.make_url(url).set(database=name).render_as_string(False)
    try:
        subprocess.run(
            ["pg_restore", "--no-owner", f"--dbname={_libpq(restored)}", str(dump)], check=True
        )
        yield restored
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def _counter(port: int) -> dict:
    response = send(port, "GET", "/api/v1/sites/drill/counter")
    assert response.status == 200, response
    return json.loads(response.body)


def test_a_restored_dump_and_an_empty_redis_bring_the_counters_back_from_history(
    any_database_url: str, redis_url: str, tmp_path: Path
) -> None:
    live = Settings(data_dir=tmp_path, redis_url=redis_url, database_url=any_database_url)
    created = subprocess.run(
        [str(BIN / "analytics-service"), "site", "create", "drill", "--name", "Drill",
         "--origin", PORTAL, "--baseline-visits", str(BASELINE)],
        env=service_env(live), capture_output=True, text=True, check=True,
    )  # fmt: skip
    token = re.search(r"admin token\s+(\S+)", created.stdout)[1]  # type: ignore[index]
    now = datetime.now(UTC)
    engine = db.create_engine(any_database_url)
    site_today = local_date(now, ZoneInfo(DEFAULT_TIMEZONE))
    yesterday = site_today - timedelta(days=1)
    History(engine).write_day(DaySnapshot("drill", yesterday, CLOSED), final=True, now=now)
    engine.dispose()

    # Production: readers count, the scheduler's checkpoint writes today into SQL.
    with gunicorn(live, tmp_path / "live.log", ANALYTICS_TRUSTED_PROXIES="1") as port:
        for reader in range(READERS):
            body = json.dumps({"site": "drill", "url": f"{PORTAL}/tin-tuc"}).encode()
            hit = send(port, "POST", "/api/v1/hit", body, User_Agent="Mozilla/5.0 Firefox/130",
                       X_Forwarded_For=f"198.51.100.{reader + 1}")  # fmt: skip
            assert hit.status == 202
        # The worker's writer counts each hit a moment after its 202.
        before = eventually(lambda: (c := _counter(port))["today"]["pageviews"] == READERS and c)
    rollup = subprocess.run(
        [str(BIN / "analytics-service"), "rollup"], env=service_env(live), capture_output=True
    )
    assert rollup.returncode == 0, rollup.stderr
    assert before["today"]["visits"] == READERS
    assert before["total"]["visits"] == BASELINE + CLOSED.visits + READERS

    redis_dir = tmp_path / "empty-redis"
    redis_dir.mkdir()
    empty_redis = start_redis(redis_dir)
    try:
        with _restored(any_database_url, tmp_path / "analytics.dump") as restored_url:
            fresh = Settings(
                data_dir=tmp_path,
                redis_url=empty_redis.connection_url,
                database_url=restored_url,
            )
            with gunicorn(fresh, tmp_path / "restored.log", GUNICORN_WORKERS="1") as port:
                after = _counter(port)
                stats = send(
                    port,
                    "GET",
                    f"/api/v1/sites/drill/stats?from={yesterday}&to={site_today}",
                    Authorization=f"Bearer {token}",
                )
    finally:
        empty_redis.stop()
    assert after["total"] == before["total"]
    assert after["today"]["visits"] == before["today"]["visits"]
    assert after["today"]["pageviews"] == before["today"]["pageviews"]
    assert after["online"] == 0  # who was online is not history
    assert stats.status == 200
    series = {row["period"]: row for row in json.loads(stats.body)["series"]}
    assert series[str(yesterday)]["visits"] == CLOSED.visits
    assert series[str(site_today)]["visits"] == READERS
