"""A worker reuses its last counter read for ANALYTICS_COUNTER_CACHE_SECONDS, no longer."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from analytics_service.config import Settings
from analytics_service.counters import CounterCache

from .conftest import ON_SERVER_AND_CLUSTER, Browser, FrozenClock, counter, counting_app


@pytest.fixture
def cached_app(settings: Settings, clock: FrozenClock, site_token: str) -> Iterator[Flask]:
    app = counting_app(replace(settings, counter_cache_seconds=1.0), clock)
    yield app
    services = app.extensions["analytics"]
    services.close()


def evalsha_calls(rdb: redis.Redis) -> int:
    return int(rdb.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


@ON_SERVER_AND_CLUSTER
def test_a_counter_read_within_the_cache_time_reuses_the_last_read_without_redis(
    cached_app: Flask, clock: FrozenClock, rdb: redis.Redis
) -> None:
    client = cached_app.test_client()
    Browser(client).hit("/")
    first = counter(client)
    calls = evalsha_calls(rdb)
    Browser(client, ip="198.51.100.9").hit("/")
    clock.advance(0.999)
    assert counter(client) == first
    # Only the hit reached Redis; the second counter read did not.
    assert evalsha_calls(rdb) == calls + 1


@ON_SERVER_AND_CLUSTER
def test_a_counter_read_after_the_cache_time_shows_every_hit(
    cached_app: Flask, clock: FrozenClock
) -> None:
    client = cached_app.test_client()
    Browser(client).hit("/")
    assert counter(client)["today"]["pageviews"] == 1
    Browser(client).hit("/next")
    clock.advance(1)
    fresh = counter(client)
    assert fresh["today"]["pageviews"] == 2
    assert fresh["as_of"] == clock().isoformat(timespec="seconds")


@ON_SERVER_AND_CLUSTER
def test_with_the_cache_off_every_counter_read_goes_to_redis(
    client: FlaskClient, reader: Browser
) -> None:
    reader.hit("/")
    assert counter(client)["today"]["pageviews"] == 1
    reader.hit("/next")
    assert counter(client)["today"]["pageviews"] == 2


@ON_SERVER_AND_CLUSTER
def test_a_changed_site_is_read_afresh_at_once(cached_app: Flask, clock: FrozenClock) -> None:
    services = cached_app.extensions["analytics"]
    cache: CounterCache = services.counters
    site = services.sites.get("demo")
    # Restored, so that the cache keeps its reads (it keeps none of a Redis still empty).
    services.recovery.restore(site, clock())
    before = cache.read(site, clock())
    rebased = replace(site, baseline_visits=30545)
    after = cache.read(rebased, clock())
    assert (before.total_visits, after.total_visits) == (0, 30545)


def test_the_cache_is_on_for_one_second_unless_configured() -> None:
    assert Settings.from_env({}).counter_cache_seconds == 1.0
    env = {"ANALYTICS_COUNTER_CACHE_SECONDS": "0"}
    assert Settings.from_env(env).counter_cache_seconds == 0.0


@ON_SERVER_AND_CLUSTER
def test_a_site_created_again_under_its_id_is_read_afresh_at_once(
    cached_app: Flask, clock: FrozenClock, rdb: redis.Redis
) -> None:
    """Sites compare equal without their creation time; a site removed and created again
    with the same settings within the cache time got the removed site's numbers."""
    services = cached_app.extensions["analytics"]
    cache: CounterCache = services.counters
    site = services.sites.get("demo")
    services.recovery.restore(site, clock())
    cache.read(site, clock())
    calls = evalsha_calls(rdb)
    again = replace(site, created=site.created + 60)
    assert cache.read(again, clock()).site.created == again.created
    assert evalsha_calls(rdb) == calls + 1
