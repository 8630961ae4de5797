"""A web request behind a lock another database session holds (a long `site delete`, an
import, a migration, a `LOCK TABLE` in psql): answered 503 once ANALYTICS_DATABASE_LOCK_TIMEOUT
has passed, changing nothing, on SQLite and on PostgreSQL, with a real lock held by a second
connection. The scheduler's and the commands' sessions wait as they did."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from werkzeug.test import TestResponse

from analytics_service import db
from analytics_service.config import Settings
from analytics_service.services import Services

from .conftest import FrozenClock, HistoryEnv, counting_app

LOCK_WAIT_SECONDS = 0.5
# Tells a request that gives up on its own from one that waits as long as the lock is held
# (PostgreSQL, before the bound: for ever); it measures no speed.
HANG_SECONDS = 30


@pytest.fixture
def env(
    any_database_url: str, redis_url: str, tmp_path: Path, clock: FrozenClock
) -> Iterator[HistoryEnv]:
    settings = Settings(
        data_dir=tmp_path,
        redis_url=redis_url,
        database_url=any_database_url,
        database_lock_timeout=LOCK_WAIT_SECONDS,
    )
    app = counting_app(settings, clock)
    env = HistoryEnv(app, app.test_client(), "")
    env.token = env.add_site("demo", "Asia/Ho_Chi_Minh", clock())
    yield env
    env.services.close()


def _url(env: HistoryEnv) -> str:
    return env.services.settings.effective_database_url


@contextmanager
def held(url: str, *, sqlite: str, postgresql: str) -> Iterator[None]:
    """A second session, holding the lock its statement takes until the block ends."""
    if url.startswith("sqlite"):
        lite = sqlite3.connect(sa.engine.make_url(url).database or "", isolation_level=None)
        try:
            lite.execute(sqlite)
            yield
        finally:
            lite.close()  # rolls back
        return
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(postgresql))
            yield
            conn.rollback()
    finally:
        engine.dispose()


def answered_behind(
    lock: AbstractContextManager[None], send: Callable[[], TestResponse]
) -> TestResponse:
    """The answer to `send()` sent while `lock` is held; the lock goes once it is answered
    (or after HANG_SECONDS, and then the request waited on it without a limit)."""
    answers: list[TestResponse] = []
    thread = threading.Thread(target=lambda: answers.append(send()))
    with lock:
        thread.start()
        thread.join(HANG_SECONDS)
        waiting = thread.is_alive()
    thread.join()
    assert not waiting, f"the request still waited on the lock after {HANG_SECONDS} s"
    return answers[0]


def assert_busy(response: TestResponse, caplog: pytest.LogCaptureFixture) -> None:
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.headers["Retry-After"] == "5"
    assert response.headers["Cache-Control"] == "no-store"
    error = response.get_json()["error"]
    assert error["code"] == "database_unavailable"  # what clients retry on, as for a database down
    assert error["message"] == (
        "the history database is busy: another session (a site delete, an import, a "
        "migration) held a lock this request needed for more than 0.5 s, and the request "
        "changed nothing; retry shortly"
    )
    assert "ANALYTICS_DATABASE_LOCK_TIMEOUT" in caplog.text


def _admin(env: HistoryEnv) -> dict[str, str]:
    return {"Authorization": f"Bearer {env.token}"}


def test_statistics_behind_a_table_lock_are_answered_503_once_the_bound_has_passed(
    env: HistoryEnv, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL: a migration's ALTER TABLE, or `LOCK TABLE` in psql, held the request
    until the lock went; SQLite: a writer committing, for its 15 s busy timeout."""
    caplog.set_level(logging.WARNING)
    lock = held(
        _url(env),
        sqlite="BEGIN EXCLUSIVE",
        postgresql="LOCK TABLE daily_totals IN ACCESS EXCLUSIVE MODE",
    )
    stats = answered_behind(
        lock, lambda: env.client.get("/api/v1/sites/demo/stats", headers=_admin(env))
    )
    assert_busy(stats, caplog)
    assert env.client.get("/api/v1/sites/demo/stats", headers=_admin(env)).status_code == 200


def test_a_baseline_behind_a_lock_on_its_site_is_refused_and_changes_nothing(
    env: HistoryEnv, caplog: pytest.LogCaptureFixture
) -> None:
    """The lock a `site delete` holds on the site's row while it deletes its history."""
    caplog.set_level(logging.WARNING)
    lock = held(
        _url(env),
        sqlite="BEGIN IMMEDIATE",
        postgresql="SELECT id FROM sites WHERE id = 'demo' FOR UPDATE",
    )
    put = answered_behind(
        lock,
        lambda: env.client.put(
            "/api/v1/sites/demo/baseline", json={"visits": 30545}, headers=_admin(env)
        ),
    )
    assert_busy(put, caplog)
    site = env.client.get("/api/v1/sites/demo", headers=_admin(env)).get_json()
    assert site["baseline"] == {"visits": 0, "pageviews": 0}


def test_an_import_behind_a_lock_on_one_of_its_days_writes_none_of_them(
    env: HistoryEnv, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    imported = env.client.post(
        "/api/v1/sites/demo/import",
        data=b"2025-01-02,5,6,5\n",
        headers={**_admin(env), "Content-Type": "text/csv"},
    )
    assert imported.status_code == 200, imported.get_json()
    # 2025-01-01 goes in first (days are written in date order), then 2025-01-02 waits.
    lock = held(
        _url(env),
        sqlite="BEGIN IMMEDIATE",
        postgresql="SELECT 1 FROM daily_totals WHERE day = '2025-01-02' FOR UPDATE",
    )
    again = answered_behind(
        lock,
        lambda: env.client.post(
            "/api/v1/sites/demo/import",
            data=b"2025-01-01,7,9,6\n2025-01-02,8,9,7\n",
            headers={**_admin(env), "Content-Type": "text/csv"},
        ),
    )
    assert_busy(again, caplog)
    stats = env.client.get(
        "/api/v1/sites/demo/stats",
        query_string={"from": "2025-01-01", "to": "2025-01-02"},
        headers=_admin(env),
    ).get_json()
    assert [(r["visits"], r["pageviews"]) for r in stats["series"]] == [(0, 0), (5, 6)]


def _lock_wait_of(engine: sa.engine.Engine) -> str:
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            return f"{conn.execute(sa.text('PRAGMA busy_timeout')).scalar_one()}ms"
        return str(conn.execute(sa.text("SHOW lock_timeout")).scalar_one())


def test_only_the_web_apps_sessions_bound_their_wait_for_a_lock(
    env: HistoryEnv, clock: FrozenClock
) -> None:
    """The scheduler's jobs and the commands (`site delete`, `db upgrade`) wait for a lock
    as before: no one's request waits on them, and a job given up on would only fail and
    do the same work again at its next run."""
    assert _lock_wait_of(env.services.engine) == "500ms"
    with Services.open(env.services.settings, clock) as scheduler:  # as `scheduler` opens it
        waited = _lock_wait_of(scheduler.engine)
    sqlite = env.services.engine.dialect.name == "sqlite"
    assert waited == (f"{db.SQLITE_BUSY_SECONDS * 1000}ms" if sqlite else "0")
