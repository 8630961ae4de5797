"""A worker loads sites, salts and the crawler patterns before its first request
(`app.warm_up`, called by `wsgi.py` and `analytics-service run`), so no live hit pays for
them while others queue behind it."""

from __future__ import annotations

from datetime import timedelta

import pytest
import redis
import sqlalchemy as sa
from flask import Flask

from analytics_service.app import warm_up
from analytics_service.ingest import crawler_patterns
from analytics_service.live import LATE_MARGIN_SECONDS

from .conftest import Browser, FrozenClock


def _first_hit(app: Flask, rdb: redis.Redis) -> tuple[list[str], dict[str, int]]:
    """SQL statements and Redis commands (by name) that one hit caused."""
    engine = app.extensions["analytics"].engine
    statements: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:
        statements.append(statement)

    before = _calls(rdb)
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        Browser(app.test_client()).hit("/")
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    after = _calls(rdb)
    return statements, {k: n for k, v in after.items() if (n := v - before.get(k, 0))}


def _calls(rdb: redis.Redis) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in rdb.info("commandstats").items()}


def test_a_warmed_up_worker_serves_its_first_hit_without_sql_or_a_salt_read(
    app: Flask, clock: FrozenClock, rdb: redis.Redis
) -> None:
    # The crawler patterns are compiled once per process, on first use.
    crawler_patterns.cache_clear()
    warm_up(app, clock())
    assert crawler_patterns.cache_info().currsize == 1
    statements, commands = _first_hit(app, rdb)
    assert statements == []
    assert commands.get("evalsha") == 1 and "script|load" not in commands
    # The salt is read with SET NX GET; the hit script runs no SET, and one GET (of the
    # mark of a removed site: keys.py `removed`).
    assert "set" not in commands and commands.get("get") == 1
    # The writer's connection was opened by the warm-up: no handshake on the first batch.
    assert "hello" not in commands


def test_without_warm_up_the_first_hit_reads_the_site_and_the_salt(
    app: Flask, rdb: redis.Redis
) -> None:
    """The control: what warm_up spares a worker's first hit."""
    statements, commands = _first_hit(app, rdb)
    assert any("FROM sites" in s for s in statements)
    # Today's salt and, ahead of midnight, tomorrow's: SET NX GET, one round trip each.
    assert commands.get("set") == 2
    # Connections: the probe that asks whether it is a cluster, the reads', the writer's.
    assert commands.get("hello") == 3


def test_a_worker_whose_clock_is_off_redis_says_so_at_warm_up(
    app: Flask, clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Its clock decides which days its hits mark late; off by more than the margin, hits
    around midnight could miss their day's close, and nothing else would tell."""
    store = app.extensions["analytics"].store
    warm_up(app, store.server_time())
    assert "off Redis's" not in caplog.text
    warm_up(app, store.server_time() + timedelta(seconds=LATE_MARGIN_SECONDS + 30))
    assert f"this host's clock is +{LATE_MARGIN_SECONDS + 30} s off Redis's" in caplog.text
