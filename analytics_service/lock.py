"""A Redis lock with a token: the second guard around each job run.

The first guard is that every rollup write is idempotent: a paused process can outlive its
lock, so the lock only saves duplicate work, it never protects correctness.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from redis.commands.core import Script

from . import keys

# Longer than any run should take; if a run dies, the next one waits at most this long.
LOCK_SECONDS = 900


@contextmanager
def held(client: redis.Redis, unlock: Script, name: str) -> Iterator[bool]:
    """Yields True when this run holds the lock `name`, False when another run does."""
    key = keys.lock(name)
    token = secrets.token_hex(16)
    acquired = bool(client.set(key, token, nx=True, px=LOCK_SECONDS * 1000))
    try:
        yield acquired
    finally:
        if acquired:
            unlock(keys=[key], args=[token])
