"""The Redis connection: timeouts, no blind retries, and a start-up check of the server."""

from __future__ import annotations

import logging

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .config import Settings

log = logging.getLogger(__name__)

# Policies under which Redis may delete a key that has no TTL, i.e. the running totals.
_UNSAFE_EVICTION = {"allkeys-lru", "allkeys-lfu", "allkeys-random"}


def connect(url: str, settings: Settings) -> redis.Redis:
    """A client whose commands fail fast instead of hanging a worker.

    No retries: the hit script is not idempotent without a hit id, and a retry after a
    timeout (when the server already ran the script) would count the hit twice. A failed
    call surfaces as a 503 and the client may resend with the same hit id.
    """
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=settings.redis_connect_timeout,
        socket_timeout=settings.redis_socket_timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


def check_server(client: redis.Redis) -> None:
    """Warn loudly about server settings that silently lose counts. Never raises: the
    service must be able to start while Redis is still coming up."""
    try:
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
    except redis.RedisError as exc:
        log.warning("could not read Redis maxmemory-policy (%s); continuing", exc)
        return
    if policy in _UNSAFE_EVICTION:
        log.error(
            "Redis maxmemory-policy is %s: under memory pressure Redis will delete the "
            "running totals. Use noeviction or volatile-* for this service.",
            policy,
        )
