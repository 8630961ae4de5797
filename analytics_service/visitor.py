"""Cookieless visitor identity.

A visitor id is BLAKE2b keyed with a random salt for the site-local date, over the site id,
the client IP and the User-Agent, cut to 8 bytes. The raw IP and User-Agent go no further
than this function: they are not stored in Redis, SQL or logs. Salts live in Redis (so all
workers agree) and are deleted two days after their date, after which a visitor id can no
longer be linked to anyone.
"""

from __future__ import annotations

import hashlib
import threading
from datetime import UTC, date, datetime, time, timedelta

from cachetools import TTLCache

from .live import LiveStore

VISITOR_ID_BYTES = 8


def visitor_id(salt: bytes, site_id: str, ip: str, user_agent: str) -> bytes:
    material = f"{site_id}\x00{ip}\x00{user_agent}".encode("utf-8", "surrogateescape")
    return hashlib.blake2b(material, key=salt, digest_size=VISITOR_ID_BYTES).digest()


def address_id(salt: bytes, site_id: str, ip: str) -> bytes:
    """The client address alone, hashed like a visitor id (the per-address flood guard):
    never the address itself, and unlinkable once the day's salt is gone."""
    material = f"{site_id}\x00{ip}\x00address".encode("utf-8", "surrogateescape")
    return hashlib.blake2b(material, key=salt, digest_size=VISITOR_ID_BYTES).digest()


def dedup_id(visitor: bytes, hit_id: str) -> bytes:
    """A client's hit id as the dedup hash stores it: scoped to its visitor (one client
    cannot suppress another's hits by sending their id) and 8 bytes whatever the id's
    length, so that remembering an id costs the same small hash field every time."""
    return hashlib.blake2b(hit_id.encode(), key=visitor, digest_size=VISITOR_ID_BYTES).digest()


def salt_expiry(day: date) -> datetime:
    """00:00 UTC two days after `day`: late enough for the last time zone (UTC-12) to have
    finished `day`, early enough that no salt outlives two days by much."""
    return datetime.combine(day + timedelta(days=2), time(0), tzinfo=UTC)


class SaltStore:
    """The per-date salts, shared through Redis (all workers agree) and cached in the worker.

    The first hit of a date in each worker fetches the salt (one extra round trip, once);
    the worker then re-reads it every `refresh_seconds`, so that if Redis loses the salt
    (a flush) every worker converges on the new one within that time.
    """

    def __init__(self, store: LiveStore, refresh_seconds: float = 300) -> None:
        self.store = store
        self._cache: TTLCache[date, bytes] = TTLCache(maxsize=8, ttl=refresh_seconds)
        self._lock = threading.Lock()

    def get(self, day: date, now: datetime) -> bytes:
        with self._lock:
            salt = self._cache.get(day)
        if salt is None:
            ttl = max(60, int((salt_expiry(day) - now).total_seconds()))
            salt = self.store.salt(day, ttl)
            with self._lock:
                self._cache[day] = salt
        return salt
