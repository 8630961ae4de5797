"""Cookieless visitor identity.

A visitor id is BLAKE2b keyed with a random salt for the site-local date, over the site id,
the client IP and the User-Agent, cut to 8 bytes. The raw IP and User-Agent go no further
than this function: they are not stored in Redis, SQL or logs. Salts live in Redis (so all
workers agree) and are deleted at 12:00 UTC two days after their date, after which a
visitor id can no longer be linked to anyone.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import os
import threading
import time
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from functools import lru_cache

from .keys import ID_BYTES
from .live import STORAGE_ERRORS, LiveStore
from .logs import reason
from .sites import MAX_ONLINE_WINDOW, VISIT_IDLE_SECONDS

log = logging.getLogger(__name__)


def visitor_id(salt: bytes, site_id: str, ip: str, user_agent: str) -> bytes:
    material = f"{site_id}\x00{ip}\x00{user_agent}".encode("utf-8", "surrogateescape")
    return hashlib.blake2b(material, key=salt, digest_size=ID_BYTES).digest()


def address_id(salt: bytes, site_id: str, ip: str) -> bytes:
    """The client address alone, hashed like a visitor id (the per-address flood guard):
    never the address itself, and unlinkable once the day's salt is gone."""
    material = f"{site_id}\x00{_guarded_network(ip)}\x00address".encode("utf-8", "surrogateescape")
    return hashlib.blake2b(material, key=salt, digest_size=ID_BYTES).digest()


@lru_cache(maxsize=4096)
def client_address(raw: str) -> str:
    """The client's address in one spelling, whatever the proxy or the socket wrote:
    without the port or brackets some proxies add to X-Forwarded-For (`203.0.113.7:51234`,
    `[2001:db8::1]:443`: a new port per connection made a new visitor, and a new address to
    the guard), an IPv6 address in its short lower-case form (`2001:DB8:0::1` is
    `2001:db8::1`), and an IPv4 client of a dual-stack listener (`::ffff:203.0.113.7`) as
    its IPv4 address, as a node bound to `0.0.0.0` sees it. Anything that is not an
    address is kept as it is."""
    if ":" not in raw and "[" not in raw:
        return raw  # an IPv4 address, the usual case
    host = raw
    if raw.startswith("["):
        host = raw[1:].partition("]")[0]
    elif raw.count(":") == 1:
        host = raw.partition(":")[0]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return raw
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


@lru_cache(maxsize=4096)
def _guarded_network(ip: str) -> str:
    """What the address guard counts as one address: an IPv6 address by its /64, the
    smallest block a network gives one subscriber (one client holds 2^64 addresses in it;
    one given a /48 holds 65,536 such blocks, README); anything else as it is
    (client_address has already made an IPv4-mapped address IPv4)."""
    if ":" not in ip:
        return ip
    try:
        address = ipaddress.IPv6Address(ip)
    except ValueError:
        return ip
    return f"{address.packed[:8].hex()}/64"


def dedup_id(visitor: bytes, hit_id: str) -> bytes:
    """A client's hit id as the dedup hash stores it: scoped to its visitor (one client
    cannot suppress another's hits by sending their id) and 8 bytes whatever the id's
    length, so that remembering an id costs the same small hash field every time."""
    return hashlib.blake2b(hit_id.encode(), key=visitor, digest_size=ID_BYTES).digest()


# The last time zone's (UTC-12) midnight that ends a date: 12:00 UTC the day after it.
LAST_MIDNIGHT_AFTER = timedelta(days=1, hours=12)
# How long into the next day a reader of a date can still be online and is looked up under
# their id of that date (Ingestor.check: the site's `seen_horizon`, at most this).
LONGEST_SEEN_HORIZON = timedelta(seconds=max(VISIT_IDLE_SECONDS, MAX_ONLINE_WINDOW))


def salt_expiry(day: date) -> datetime:
    """12:00 UTC two days after `day`: late enough for the last time zone (UTC-12) to have
    finished `day` and then the longest seen horizon, early enough that no salt outlives
    two days by much. At 00:00 UTC, a site west of UTC with a long online window (over 12
    hours in UTC-12, 19 in New York) lost the salt while its readers of `day` were still
    online: their first hit of the next day could not find them, and they counted twice."""
    return (
        datetime.combine(day, clock_time(0), tzinfo=UTC)
        + LAST_MIDNIGHT_AFTER
        + LONGEST_SEEN_HORIZON
    )


class SaltStore:
    """The per-date salts, shared through Redis (all workers agree) and kept by the worker.

    The first hit of a date in each worker fetches the salt (two round trips, once: the
    date's and the next date's), so that midnight finds it here; from then on the
    background thread fetches each next date's ahead. After that no request waits on
    Redis for a salt: one older than `refresh_seconds` is still used while the thread
    reads it again. That read offers the salt the worker holds, so a Redis that lost it
    (a wipe) gets it back and readers keep their ids; only a worker that never held it
    (started after the wipe) can set a new one first, and then every worker converges on
    that within about `refresh_seconds`. A salt past its expiry is dropped, never offered
    again: Redis deleted it so that ids of its date can no longer be linked to anyone.
    While Redis is unavailable the thread keeps trying (at most every RETRY_SECONDS) and
    hits go on being counted (buffer.py) under the salt every worker agreed on.
    """

    # How long the refresh thread waits after a failed read before it tries again.
    RETRY_SECONDS = 5.0

    def __init__(self, store: LiveStore, refresh_seconds: float = 300) -> None:
        self.store = store
        self.refresh_seconds = refresh_seconds
        self._salts: dict[date, tuple[bytes, float]] = {}  # date -> (salt, read at)
        self._offers = 0  # calls of offer_again so far
        self._lock = threading.Lock()
        self._stale = threading.Event()
        self._stale_at: datetime | None = None  # the `now` of the use that found one stale
        self._ahead: date | None = None  # the next date's salt, to be fetched by the thread
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def get(self, day: date, now: datetime) -> bytes:
        """`day`'s salt; a storage error (live.STORAGE_ERRORS) only for a date this worker
        has not read yet while Redis cannot be reached, or holds no salt of it and takes no
        writes."""
        with self._lock:
            known = self._salts.get(day)
        if known is None:
            salt = self._fetch(day, now)
            try:
                self._fetch(day + timedelta(days=1), now)
            # Fetched at midnight instead, or by the refresh. Out of memory too: Redis then
            # cannot set it, and raised, that refused a hit whose day's salt was read.
            except STORAGE_ERRORS as exc:
                log.warning(
                    "salt of %s not fetched ahead: %s", day + timedelta(days=1), reason(exc)
                )
            return salt
        ahead = day + timedelta(days=1)
        if ahead not in self._salts:  # midnight must find it here, Redis up or not
            self._ahead = ahead
            self._refresh_soon(now)
        elif time.monotonic() - known[1] >= self.refresh_seconds:
            self._refresh_soon(now)
        return known[0]

    def holds(self, day: date) -> bool:
        """Whether `day`'s salt is held: its hits need no Redis to be told apart."""
        with self._lock:
            return day in self._salts

    def _fetch(self, day: date, now: datetime) -> bytes:
        ttl = max(60, int((salt_expiry(day) - now).total_seconds()))
        with self._lock:
            known = self._salts.get(day)
            offers = self._offers
        salt = self.store.salt(day, ttl, known[0] if known else None)
        # Kept until its expiry (`_due` drops it then), not by its distance from `day`: a
        # worker whose sites are a day apart (UTC+14, UTC-12) uses three dates at once. A
        # wipe found while this read was on its way back (offer_again) leaves the salt due
        # to be offered again: this read may have come before the wipe.
        with self._lock:
            read_at = time.monotonic() if offers == self._offers else -math.inf
            self._salts[day] = (salt, read_at)
        return salt

    def offer_again(self, now: datetime) -> None:
        """Have the refresh thread offer every salt held, now rather than when it is next
        due: Redis was found without a site's history (a wipe), and the sooner the salts
        are back, the smaller the chance that a worker that never held them sets new ones."""
        with self._lock:
            self._offers += 1
            self._salts = {day: (salt, -math.inf) for day, (salt, _) in self._salts.items()}
            if not self._salts:
                return
        self._refresh_soon(now)

    # -- the refresh thread ---------------------------------------------------------------

    def _refresh_soon(self, now: datetime) -> None:
        self._stale_at = now
        if self._thread is None or self._pid != os.getpid():  # none yet, or a forked child
            self._pid = os.getpid()
            self._thread = threading.Thread(
                target=self._refresh, name="analytics-salt-refresh", daemon=True
            )
            self._thread.start()
        self._stale.set()

    def _due(self, now: datetime) -> list[date]:
        """The dates whose salt the thread is to read: those read `refresh_seconds` ago or
        more, and the next date's if it is not held yet. Salts past their expiry are
        dropped instead: offering one again would put it back into Redis."""
        with self._lock:
            for day in [d for d in self._salts if salt_expiry(d) <= now]:
                del self._salts[day]
            due = [
                d
                for d, (_, read_at) in self._salts.items()
                if time.monotonic() - read_at >= self.refresh_seconds
            ]
            if self._ahead is not None and self._ahead not in self._salts:
                due.append(self._ahead)
        return due

    def _refresh(self) -> None:
        while True:
            self._stale.wait()
            self._stale.clear()
            now = self._stale_at
            assert now is not None  # set before the event
            try:
                for day in self._due(now):
                    self._fetch(day, now)
            except STORAGE_ERRORS as exc:  # out of memory too: no bug of ours to trace
                log.warning("salts not re-read (%s); the known ones stay in use", reason(exc))
                time.sleep(self.RETRY_SECONDS)
            except Exception:
                # Our bug: the thread must live on, and the known salts stay in use.
                log.exception("salts not re-read")
                time.sleep(self.RETRY_SECONDS)
