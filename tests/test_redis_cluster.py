"""The cluster harness (tests/redis_cluster.py) against the real servers, driven by redis-py's
cluster client as the service will be: three masters serve three sites, a killed master's
replica takes over, a slot moves under writes without losing one."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster

from . import redis_cluster as harness
from .redis_cluster import LocalCluster, Node

# The fixtures live in the harness module; a test module sees fixtures it binds by name.
redis_cluster_session = harness.redis_cluster_session
redis_cluster = harness.redis_cluster

T = TypeVar("T")


def total_key(site: str) -> str:
    return f"an:{{{site}}}:total"


def seed_nodes(seeds_url: str) -> list[ClusterNode]:
    """`redis://h1:p1,h2:p2` as redis-py's startup nodes."""
    addresses = seeds_url.removeprefix("redis://").split(",")
    return [ClusterNode(host, int(port)) for host, port in (a.split(":") for a in addresses)]


def until_it_answers(call: Callable[[], T], timeout: float = 30.0) -> T:
    """Call until the cluster client stops failing on the dead node; it refreshes by itself."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_a_cluster_client_finds_three_sites_on_their_three_masters(
    redis_cluster: LocalCluster,
) -> None:
    sites = redis_cluster.sites_on_distinct_masters()
    owners = [redis_cluster.master_of(total_key(site)) for site in sites]
    assert owners == redis_cluster.masters()
    assert len(set(owners)) == 3
    client = RedisCluster(startup_nodes=seed_nodes(redis_cluster.seeds_url))
    try:
        for number, site in enumerate(sites):
            client.set(total_key(site), number)
        for number, (site, owner) in enumerate(zip(sites, owners, strict=True)):
            assert client.get(total_key(site)) == str(number).encode()
            assert client.get_node_from_key(total_key(site)).port == owner.port
            # The key lives on its owner: asked directly, the owner has it.
            with owner.client() as direct:
                assert direct.get(total_key(site)) == str(number).encode()
    finally:
        client.close()


def test_a_single_url_is_enough_for_the_client_to_find_every_master(
    redis_cluster: LocalCluster,
) -> None:
    client = RedisCluster.from_url(redis_cluster.url)
    try:
        assert {node.port for node in client.get_primaries()} == {
            master.port for master in redis_cluster.masters()
        }
    finally:
        client.close()


def test_flushall_leaves_no_key_on_any_master_or_replica(redis_cluster: LocalCluster) -> None:
    client = RedisCluster.from_url(redis_cluster.url)
    try:
        for site in redis_cluster.sites_on_distinct_masters():
            client.set(total_key(site), 1)
    finally:
        client.close()
    redis_cluster.flushall()
    assert {node.port: node.command("DBSIZE") for node in redis_cluster.live_nodes} == {
        node.port: 0 for node in redis_cluster.nodes
    }


def test_a_killed_master_is_replaced_by_its_replica_and_loses_only_what_it_had_not_sent(
    tmp_path: Path,
) -> None:
    """Its own cluster: the test kills a node, and then checks that stop() frees the ports."""
    with LocalCluster(tmp_path) as cluster:
        sites = cluster.sites_on_distinct_masters()
        victim = sites[1]
        client = RedisCluster.from_url(cluster.url)
        try:
            for site in sites:
                client.set(total_key(site), "replicated")
            cluster.wait_for_replication()
            master = cluster.master_of(total_key(victim))
            assert all(o.max_lag == 0 for o in cluster.replication_offsets())
            with cluster.replication_cut(master):
                # Acknowledged by the master, never sent to its replica.
                client.set(total_key(victim), "lost")
                client.set(f"an:{{{victim}}}:new", "lost")
                killed = cluster.kill_master(owner_of=total_key(victim))
            assert killed.node is master
            failover = cluster.wait_for_failover(killed)
            print(
                f"failover in {failover.seconds:.2f} s "
                f"(cluster-node-timeout {cluster.node_timeout_ms} ms); the dead master's "
                f"stream was at {killed.master_offset}, its replica had "
                f"{failover.replicated_offset}"
            )

            assert failover.promoted in killed.replicas
            assert failover.promoted.role() == "master"
            assert cluster.master_of(total_key(victim)) is failover.promoted
            assert failover.unreplicated_bytes_at_least > 0
            # The client notices the dead node, refreshes its slot map and carries on.
            assert until_it_answers(lambda: client.get(total_key(victim))) == b"replicated"
            assert client.get(f"an:{{{victim}}}:new") is None
            assert client.get_node_from_key(total_key(victim)).port == failover.promoted.port
            for site in sites:
                assert client.get(total_key(site)) == b"replicated"
            client.set(total_key(victim), "after")
            assert client.get(total_key(victim)) == b"after"

            cluster.heal()
            assert killed.node.role() == "slave"
            assert cluster.replicas_of(failover.promoted) == [killed.node]
        finally:
            client.close()
    assert not any(node.alive for node in cluster.nodes)
    assert all(port_is_free(n.port) and port_is_free(n.bus_port) for n in cluster.nodes)


class Writer(threading.Thread):
    """Writes to one site's slot through its own cluster client until stopped, counting
    the writes the server acknowledged; any error ends it and is kept."""

    def __init__(self, url: str, write: Callable[[RedisCluster, int], object]) -> None:
        super().__init__()
        self.url, self.write = url, write
        self.acknowledged = 0
        self.errors: list[BaseException] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        client = RedisCluster.from_url(self.url)
        try:
            while not self.stopping.is_set():
                self.write(client, self.acknowledged)
                self.acknowledged += 1
        except BaseException as error:
            self.errors.append(error)
        finally:
            client.close()

    def stop_after_more_writes(self, count: int = 20) -> None:
        """Let it write on a little (the move's aftermath: MOVED), then stop and join."""
        target = self.acknowledged + count
        deadline = time.monotonic() + 30
        while self.acknowledged < target and self.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        self.stopping.set()
        self.join()


@pytest.fixture
def moving_site(redis_cluster: LocalCluster) -> tuple[str, int, Node, Node]:
    """A site, its slot (holding 300 keys, enough for several MIGRATE batches), the slot's
    master and another master; the other's command statistics reset."""
    site = redis_cluster.sites_on_distinct_masters()[0]
    slot = redis_cluster.slot_of(total_key(site))
    source = redis_cluster.master_of_slot(slot)
    target = next(m for m in redis_cluster.masters() if m is not source)
    with RedisCluster.from_url(redis_cluster.url) as client:
        client.mset({f"an:{{{site}}}:old:{n}": n for n in range(300)})
    target.command("CONFIG", "RESETSTAT")
    return site, slot, source, target


def assert_moved(client: RedisCluster, key: str, source: Node, target: Node) -> None:
    """The old owner answers MOVED to the new one, and the client sends the key there."""
    with source.client() as direct, pytest.raises(redis.exceptions.MovedError) as moved:
        direct.get(key)
    assert (moved.value.slot_id, moved.value.port) == (LocalCluster.slot_of(key), target.port)
    assert client.get_node_from_key(key).port == target.port


def test_a_slot_migrated_under_writes_keeps_every_write_and_ends_on_its_new_master(
    redis_cluster: LocalCluster, moving_site: tuple[str, int, Node, Node]
) -> None:
    site, slot, source, target = moving_site

    def incr_and_add_a_key(client: RedisCluster, n: int) -> None:
        # An existing key (moved in some batch) and a new one (ASK while moving).
        client.incr(total_key(site))
        client.set(f"an:{{{site}}}:hit:{n}", 1)

    during = 0
    client = RedisCluster.from_url(redis_cluster.url)

    def write_during_migration() -> None:
        # A new key while the slot is migrating: the old owner answers ASK.
        nonlocal during
        client.set(f"an:{{{site}}}:during:{during}", 1)
        during += 1

    writer = Writer(redis_cluster.url, incr_and_add_a_key)
    writer.start()
    try:
        moved = redis_cluster.migrate_slot(
            slot, to=target, batch=50, between_batches=write_during_migration
        )
    finally:
        writer.stop_after_more_writes()
    assert writer.errors == []
    print(f"moved {moved} keys; {writer.acknowledged} writes acknowledged, {during} in the hook")

    assert moved >= 300
    assert redis_cluster.master_of_slot(slot) is target
    assert int(client.get(total_key(site)) or 0) == writer.acknowledged
    keys = 300 + 1 + writer.acknowledged + during
    assert target.command("CLUSTER", "COUNTKEYSINSLOT", slot) == keys
    assert source.command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    # Clients were sent to the target with ASK during the move.
    assert target.info("commandstats")["cmdstat_asking"]["calls"] >= during > 0
    assert_moved(client, total_key(site), source, target)
    client.close()


def test_an_atomic_slot_migration_serves_multi_key_scripts_throughout(
    redis_cluster: LocalCluster, moving_site: tuple[str, int, Node, Node]
) -> None:
    site, slot, source, target = moving_site
    # Like the hit script: several keys of the site, one of them new (which, in a classic
    # migration, the servers refuse with TRYAGAIN until the slot has moved).
    script = "redis.call('INCR', KEYS[1]); return redis.call('SET', KEYS[2], 1)"

    def run_script(client: RedisCluster, n: int) -> None:
        client.eval(script, 2, total_key(site), f"an:{{{site}}}:hit:{n}")

    writer = Writer(redis_cluster.url, run_script)
    writer.start()
    try:
        redis_cluster.migrate_slot_atomically(slot, to=target)
    finally:
        writer.stop_after_more_writes()
    assert writer.errors == []

    client = RedisCluster.from_url(redis_cluster.url)
    assert int(client.get(total_key(site)) or 0) == writer.acknowledged
    assert target.command("CLUSTER", "COUNTKEYSINSLOT", slot) == 300 + 1 + writer.acknowledged
    assert "cmdstat_asking" not in target.info("commandstats")
    assert_moved(client, total_key(site), source, target)
    client.close()
