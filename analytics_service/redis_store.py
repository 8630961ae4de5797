"""The Redis connection: one server or a Redis Cluster, timeouts, no blind retries, and a
start-up check of the server.

`ANALYTICS_REDIS_URL` names one server (`redis://host:6379/0`) or seed nodes of a cluster
(`redis://h1:7000,h2:7001`: the first URL's scheme, credentials and query apply to every
host). Whether it is a cluster is asked of the server (`INFO cluster`, `cluster_enabled:1`),
so pointing the URL at any node of a cluster is enough. `rediss://` is TLS, to one server
or to every node of a cluster, with the URL's `ssl_*` options as redis-py reads them
(`rediss://h:6380?ssl_ca_certs=/etc/ca.pem&ssl_certfile=...&ssl_keyfile=...`).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import PRIMARY, REDIS_ALLOWED_KEYS, ClusterNode, RedisCluster
from redis.connection import ConnectionInterface, SSLConnection, parse_url
from redis.exceptions import ReadOnlyError, RedisClusterException
from redis.retry import Retry

from .config import Settings
from .logs import shown_url

log = logging.getLogger(__name__)

Client = redis.Redis | RedisCluster

# What each eviction policy may delete under memory pressure. Only noeviction keeps counts
# exact: the day's hashes, its salt and the writer's record of its last batches (which
# stops a batch sent again from counting twice) all have a TTL.
_EVICTS = {
    "allkeys-lru": "any key, the running totals included",
    "allkeys-lfu": "any key, the running totals included",
    "allkeys-random": "any key, the running totals included",
    "volatile-lru": "keys with a TTL",
    "volatile-lfu": "keys with a TTL",
    "volatile-random": "keys with a TTL",
    "volatile-ttl": "keys with a TTL",
}


@dataclass(frozen=True)
class Target:
    """Where ANALYTICS_REDIS_URL points: one URL per seed node."""

    urls: tuple[str, ...]

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        hosts = parts.netloc.rpartition("@")[2].split(",")
        credentials = parts.netloc.rpartition("@")[0]
        prefix = f"{credentials}@" if credentials else ""
        return cls(
            tuple(
                urlunsplit(parts._replace(netloc=prefix + host.strip()))
                for host in hosts
                if host.strip()
            )
        )

    @property
    def nodes(self) -> list[ClusterNode]:
        return [
            ClusterNode(urlsplit(u).hostname or "localhost", urlsplit(u).port or 6379)
            for u in self.urls
        ]


def _options(settings: Settings) -> dict[str, object]:
    # No retries by redis-py: it would send a timed-out call again at once, whatever it
    # was. The writer retries its batches itself, with back-off, each batch numbered so
    # that one Redis already ran counts once (buffer.py, live.py); a read fails as a 503.
    # On a cluster, MOVED and ASK are still followed: a redirected command never ran.
    return {
        "socket_connect_timeout": settings.redis_connect_timeout,
        "socket_timeout": settings.redis_socket_timeout,
        "retry": Retry(NoBackoff(), 0),
    }


# Every failure a Redis call can raise. redis-py's cluster client raises
# RedisClusterException, which is no RedisError, when it cannot map the cluster again: every
# node down, or no node that knows who owns every slot.
REDIS_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, RedisClusterException)


def connect(url: str, settings: Settings) -> Client:
    """A client whose commands fail fast instead of hanging a worker: a RedisCluster when
    the first reachable seed says it is a cluster node, else a plain client. Raises
    redis.ConnectionError or redis.TimeoutError when no seed answers (the caller tries
    again later)."""
    target = Target.parse(url)
    error: redis.RedisError | None = None
    for seed in target.urls:
        probe = redis.Redis.from_url(seed, **_options(settings))  # type: ignore[arg-type]
        # Asked in database 0: a cluster node refuses SELECT, which only told "DB index is
        # out of range" or "SELECT is not allowed in cluster mode" for every hit (500) and
        # read. The URL's database is checked once a node says it is a cluster (_cluster).
        probe.connection_pool.connection_kwargs["db"] = 0
        try:
            clustered = probe.info("cluster").get("cluster_enabled") == 1
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # The next seed: a host that is off (a connect that times out) or a node that
            # stalls is what a list of seeds is for. (TimeoutError is no ConnectionError:
            # such a first seed failed every connect, however many others answered.)
            error = exc
            continue
        finally:
            probe.close()
        if not clustered:
            if len(target.urls) > 1:
                log.warning(
                    "ANALYTICS_REDIS_URL lists several hosts but %s is no cluster", shown_url(seed)
                )
            # READONLY: the server became a replica (a failover). Treated as a connection
            # error (with no retry: the call still fails), so the connection is dropped and
            # the next one reaches whatever the address leads to now, the new primary.
            return redis.Redis.from_url(
                seed,
                health_check_interval=0,
                retry_on_error=[ReadOnlyError],
                **_options(settings),  # type: ignore[arg-type]
            )
        log.info("Redis at %s is a cluster node: using a cluster client", shown_url(seed))
        if len(target.urls) == 1:
            # Running processes learn every node from it and ride out its loss; one started
            # while it is down (a deploy, a worker recycled after max_requests) finds no node:
            # its worker refused every hit while the cluster, failed over, served the rest.
            log.warning(
                "ANALYTICS_REDIS_URL names one node of the Redis Cluster (%s): a process "
                "started while it is down cannot find the others, and refuses every hit; "
                "list a node of each shard (redis://h1:7000,h2:7001,h3:7002)",
                shown_url(seed),
            )
        return _cluster(seed, target, settings)
    raise error or redis.ConnectionError("ANALYTICS_REDIS_URL names no host")


class _RedisCluster(RedisCluster):
    """redis-py's cluster client, able to follow an ASK to a master it has not mapped.

    A master just added to the cluster (`valkey-cli --cluster add-node`) owns no slot, so
    CLUSTER SLOTS, from which the client maps the cluster, does not name it. When a slot
    is resharded to it, the old owner answers ASK with its address to a command whose keys
    have moved, and redis-py looked the address up in its map only (`get_node(node_name=
    ...)`, None) and raised AttributeError. On the writer that was no Redis error to send
    again: the batch's hits, answered 202, were lost; a counter read answered 500
    (redis-py #4015, tests/test_cluster.py)."""

    def get_node(
        self, host: str | None = None, port: int | None = None, node_name: str | None = None
    ) -> ClusterNode | None:
        node = super().get_node(host, port, node_name)
        if node is not None or node_name is None or host is not None or port is not None:
            return node
        # A name alone is how redis-py looks up an ASK's target: a master taking a slot.
        # (Its pub/sub and set_default_node do too, to tell whether a node is still mapped;
        # the service uses neither.) Mapped as a master, so that its connections are made
        # with the client's options (TLS, credentials) and closed with the client, until
        # the client maps the cluster again.
        node_host, _, node_port = node_name.rpartition(":")
        with self.nodes_manager._lock:
            return self.nodes_manager.nodes_cache.setdefault(
                node_name, ClusterNode(node_host, int(node_port), PRIMARY)
            )


def _cluster(seed: str, target: Target, settings: Settings) -> RedisCluster:
    """A cluster client that reaches every node as redis.Redis.from_url(seed) reaches one
    server: with the URL's credentials and, for rediss://, TLS with its ssl_* options."""
    # The URL read by the function the single-server client uses: credentials unquoted,
    # ssl_check_hostname and the like parsed into their types.
    options = parse_url(seed)
    database = int(options.get("db") or 0)
    if database:
        raise ValueError(
            f"ANALYTICS_REDIS_URL selects database {database}, and a Redis Cluster has "
            f"database 0 only: remove it from the URL (redis://host:port, not "
            f"redis://host:port/{database})"
        )
    tls: dict[str, object] = {}
    if options.get("connection_class") is SSLConnection:
        tls = {"ssl": True, **{k: v for k, v in options.items() if k.startswith("ssl_")}}
    # RedisCluster silently hands its nodes only the options it knows: a TLS setting it
    # would drop (ssl_min_version, ssl_ciphers) would leave the nodes' TLS weaker than asked.
    dropped = sorted(k for k in tls if k != "ssl" and k not in REDIS_ALLOWED_KEYS)
    if dropped:
        raise ValueError(
            f"ANALYTICS_REDIS_URL sets {', '.join(dropped)}, which redis-py's cluster client "
            "does not pass on to the nodes of a cluster: remove it, or set it on the servers"
        )
    try:
        return _RedisCluster(
            startup_nodes=target.nodes,
            username=options.get("username"),
            password=options.get("password"),
            **tls,  # type: ignore[arg-type]
            **_options(settings),  # type: ignore[arg-type]
        )
    except RedisClusterException as exc:
        # A cluster being formed or failing over (slots without an owner, no node that
        # answers): unavailable for now, like a server that is down, and tried again later.
        raise redis.ConnectionError(
            f"the Redis Cluster at {shown_url(seed)} is not ready: {exc}"
        ) from exc


T = TypeVar("T")


def per_server(client: Client, command: Callable[..., T]) -> dict[str, T]:
    """`command`'s reply from each server: {"redis": reply} for one, {"host:port": reply}
    for each master of a cluster. (A cluster client sends a server command such as INFO or
    CONFIG GET to one node of its choice, and says nothing of the others.)"""
    if isinstance(client, RedisCluster):
        return {node.name: command(target_nodes=node) for node in client.get_primaries()}
    return {"redis": command()}


def check_server(client: Client) -> None:
    """Warn loudly about server settings that silently lose counts (on a cluster, of each
    master). Never raises: the service must be able to start while Redis is still coming
    up."""
    try:
        replies = per_server(client, functools.partial(client.config_get, "maxmemory-policy"))
    except REDIS_ERRORS as exc:
        log.warning("could not read Redis maxmemory-policy (%s); continuing", exc)
        return
    for server, reply in sorted(replies.items()):
        policy = reply.get("maxmemory-policy")
        if policy in _EVICTS:
            log.error(
                "Redis maxmemory-policy is %s (%s): under memory pressure Redis will delete "
                "%s: today's counts, the day's salt (its readers counted again as new "
                "visitors) and the writer's record that stops a batch sent again from "
                "counting twice. Use noeviction: a full Redis then holds hits in the "
                "workers' buffers and refuses them past that, and loses none it accepted.",
                policy,
                server,
                _EVICTS[policy],
            )


class Pipe:
    """Commands to one server, sent in one round trip on a connection that stays with the
    Pipe: made by the client's pool, as its own connections are, but never handed back.

    For a thread that sends a batch every few milliseconds, the write-behind writer. A
    redis-py Pipeline takes a connection from the pool and returns it on every call, with
    the pool's lock and its check of the socket for stale data (a system call); with the
    Pipeline object that made, that was about a quarter of the writer's CPU per batch
    under gunicorn (docs/benchmarks.md, "The writer's connection")."""

    def __init__(self, client: redis.Redis) -> None:
        self._pool = client.connection_pool
        self._connection: ConnectionInterface | None = None
        self._lock = threading.Lock()  # the writer's, and a test's that calls it directly

    def execute(self, commands: Sequence[Sequence[object]]) -> list[object]:
        """Each command's reply, or the error Redis answered it with (ResponseError: a
        script's error, NOSCRIPT, OOM, READONLY). A connection error or a timeout raises,
        and the connection is dropped, so that no late reply is read as the answer to the
        next commands; the next call connects again."""
        with self._lock:
            connection = self._own()
            try:
                connection.send_packed_command(connection.pack_commands(commands))
                return [_reply(connection) for _ in commands]
            except BaseException:
                connection.disconnect()
                raise

    def connect(self) -> None:
        """Connect now (a worker's warm-up), not when the first batch is sent."""
        with self._lock:
            self._own().connect()

    def _own(self) -> ConnectionInterface:
        connection = self._connection
        if connection is None or connection.pid != os.getpid():
            # None yet, or the parent's socket in a forked child: a connection of our own.
            connection = self._connection = self._pool.make_connection()
        return connection

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.disconnect()
                self._connection = None


def _reply(connection: ConnectionInterface) -> object:
    try:
        return connection.read_response()
    except redis.ResponseError as exc:
        return exc
