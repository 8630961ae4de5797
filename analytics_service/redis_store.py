"""The Redis connection: one server or a Redis Cluster, timeouts, no blind retries, and a
start-up check of the server.

`ANALYTICS_REDIS_URL` names one server (`redis://host:6379/0`) or seed nodes of a cluster
(`redis://h1:7000,h2:7001`: the first URL's scheme and credentials apply to every host).
Whether it is a cluster is asked of the server (`INFO cluster`, `cluster_enabled:1`), so
pointing the URL at any node of a cluster is enough.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

from .config import Settings

log = logging.getLogger(__name__)

Client = redis.Redis | RedisCluster

# Policies under which Redis may delete a key that has no TTL, i.e. the running totals.
_UNSAFE_EVICTION = {"allkeys-lru", "allkeys-lfu", "allkeys-random"}


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
    # No retries: the hit script is not idempotent, and a retry after a timeout (when the
    # server already ran it) would count the hit twice. A failed call surfaces as a 503.
    # On a cluster, MOVED and ASK are still followed: a redirected command never ran.
    return {
        "socket_connect_timeout": settings.redis_connect_timeout,
        "socket_timeout": settings.redis_socket_timeout,
        "retry": Retry(NoBackoff(), 0),
    }


def connect(url: str, settings: Settings) -> Client:
    """A client whose commands fail fast instead of hanging a worker: a RedisCluster when
    the first reachable seed says it is a cluster node, else a plain client. Raises
    redis.ConnectionError when no seed answers (the caller tries again later)."""
    target = Target.parse(url)
    error: redis.RedisError | None = None
    for seed in target.urls:
        probe = redis.Redis.from_url(seed, **_options(settings))  # type: ignore[arg-type]
        try:
            clustered = probe.info("cluster").get("cluster_enabled") == 1
        except redis.ConnectionError as exc:
            error = exc
            continue
        finally:
            probe.close()
        if not clustered:
            if len(target.urls) > 1:
                log.warning("ANALYTICS_REDIS_URL lists several hosts but %s is no cluster", seed)
            return redis.Redis.from_url(seed, health_check_interval=0, **_options(settings))  # type: ignore[arg-type]
        log.info("Redis at %s is a cluster node: using a cluster client", seed)
        parts = urlsplit(seed)
        return RedisCluster(
            startup_nodes=target.nodes,
            username=parts.username,
            password=parts.password,
            **_options(settings),  # type: ignore[arg-type]
        )
    raise error or redis.ConnectionError("ANALYTICS_REDIS_URL names no host")


def check_server(client: Client) -> None:
    """Warn loudly about server settings that silently lose counts. Never raises: the
    service must be able to start while Redis is still coming up."""
    try:
        reply = client.config_get("maxmemory-policy")
    except redis.RedisError as exc:
        log.warning("could not read Redis maxmemory-policy (%s); continuing", exc)
        return
    policy = reply.get("maxmemory-policy")
    if policy in _UNSAFE_EVICTION:
        log.error(
            "Redis maxmemory-policy is %s: under memory pressure Redis will delete the "
            "running totals. Use noeviction or volatile-* for this service.",
            policy,
        )
