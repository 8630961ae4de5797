"""The live store: everything the service keeps in Redis, behind one class.

`LiveStore` is the only code that runs the Lua scripts (`lua/*.lua`) or reads and writes
the keys that `keys.py` names. One is built per process (web worker, scheduler, CLI,
bench, tests) on one Redis server or a Redis Cluster, and it owns:

- how each script is called: its KEYS and ARGV are built here, in the order its header
  documents, and nowhere else;
- which days Redis holds (a day's keys live until the day's end + DAY_KEY_GRACE_SECONDS)
  and the TTLs that follow from it;
- the clamp of estimates: a day never shows more visitors than visits.

Every key of a site carries the site's hash tag, so every script call goes, in one round
trip, to the one node that owns the site's slot; MOVED and ASK (a slot that moved) are
followed by redis-py's cluster client. A script missing from a node's cache (a restart, a
promoted replica) is loaded again: by redis-py's `Script` for the reads and jobs, and for
hits.lua, which the writer sends as raw EVALSHA, by `_send` itself (`_load_hits`: through
the writer's own connection on one server, on the masters that answered NOSCRIPT on a
cluster), and the batches refused for it are sent again.

The client is connected on first use, not at start: a worker can start while Redis is
still coming up, and learns then whether it is a cluster.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import os
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from importlib.resources import files
from pathlib import Path
from typing import NamedTuple

import msgpack
import redis
from redis.commands.core import Script
from redis.exceptions import (
    ClusterDownError,
    ClusterError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)

from . import keys, metrics, redis_store, spool
from .buffer import TAKE_HITS, Transient, WriteBehind
from .clock import Clock, system_clock
from .config import Settings
from .history import DayCounts, DaySnapshot, RestorePlan
from .logs import reason
from .paths import stored_path
from .sites import VISIT_IDLE_SECONDS, Site
from .sitetime import day_end

# Error replies Redis gives, before a command or a script that may write runs, while it
# takes no writes for a while: too few replicas (min-replicas-to-write), a failed save
# (stop-writes-on-bgsave-error), another script running past its time limit. redis-py has
# no class of its own for them; nothing ran, so the call may be made again.
REFUSED_FOR_NOW = frozenset({"NOREPLICAS", "MISCONF", "BUSY"})


def new_salt() -> bytes:
    """A day's salt, for the first process that asks for one: 32 random bytes."""
    return secrets.token_bytes(32)


class WritesRefused(redis.ResponseError):
    """One of REFUSED_FOR_NOW, met by a call outside the writer (a day's salt, a restore)."""


# Down, unreachable, too slow, loading, taking no writes, or (on a cluster) between owners
# of a slot: the client may retry. Other Redis errors (a script error) are bugs.
# ClusterError covers a cluster that is down and redis-py giving up on redirections
# (TRYAGAIN while a slot moves); RedisClusterException a slot without an owner and a client
# that reaches no node to map the cluster again (redis_store.REDIS_ERRORS). It is also what
# the cluster client raises for a command it cannot route, which only a bug of ours sends.
UNAVAILABLE: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    ClusterError,
    TryAgainError,
    RedisClusterException,
    ReadOnlyError,
    WritesRefused,
)
FULL = OutOfMemoryError
STORAGE_ERRORS = (*UNAVAILABLE, FULL)

# Day keys live this many days past their day: no older day can still be read from Redis.
DAYS_HELD = keys.DAY_KEY_GRACE_SECONDS // 86400 + 1
PAGEVIEWS_PER_VISITOR_MINUTE = 60
# A job lock's lifetime, renewed every 10 s while its run lives (HeldLock.renew, jobs.py): a
# run killed with kill -9 keeps the next one out for at most this long.
LOCK_SECONDS = 60
# Counter reads /metrics sends in one pipelined round trip (LiveStore.counts_of).
COUNTS_PER_ROUND_TRIP = 500
# How often a caller that waits for a lock tries it again.
LOCK_POLL_SECONDS = 0.5
# `site delete` removes a site's keys this many at a time.
DELETE_BATCH = 500
# The write-behind buffer (buffer.py): a worker's hits are written when this many are
# waiting or this long after the first arrived, whichever comes first. 25 ms rather than
# 5: Redis and the writer wake a fifth as often, and at a fixed rate the hit's p99 came
# closer to the bare endpoint's (docs/benchmarks.md); a reader cannot tell beside the
# counter's own second of reuse, and a worker killed with kill -9 loses at most this
# long's hits (a batch at most).
BATCH_HITS = 64
FLUSH_SECONDS = 0.025
# Most hits in one script call: keeps a backlog's calls a few milliseconds long each, and
# each command's arguments far below what Lua's unpack() takes (8,000).
SCRIPT_HITS = 256
# How many of a writer's last batches per site hits.lua remembers the answer of. A batch is
# only ever sent again while the batches prepared with it are still being sent (buffer.py
# takes no more hits until they are through), and those are at most TAKE_HITS/SCRIPT_HITS
# for one site; twice that leaves room.
REPLAY_BATCHES = 2 * -(-TAKE_HITS // SCRIPT_HITS)
# Spool files a worker takes at once (each is held open, and in memory: a few thousand at
# once passed the open-file limit); it takes another as it writes each.
SPOOL_FILES_AT_ONCE = 8
# How often a running worker looks for spool files no worker holds (buffer.py): a batch a
# bug set aside must be written back within WRITER_KEY_SECONDS to count once, and a worker
# that started no other after it (a scale-down) leaves its file to no one.
SPOOL_SWEEP_SECONDS = 60.0
# A file whose write met a bug is taken again by the same worker only this much later: the
# oldest, it was taken at every sweep, and the files behind it never.
SPOOL_RETRY_SECONDS = 600.0
# A writer's record of its last batch per site outlives any retry of that batch.
WRITER_KEY_SECONDS = 86400
# A worker marks its spool files with the deployment id it last read from Redis (spool.py):
# at its start, then at each sweep and after each file it writes, so at most a sweep (and a
# retry's back-off) after Redis gave a new one, and by a clock up to LATE_MARGIN_SECONDS
# off the one that noted when Redis got it. A file written this long after that holds the
# new id if it is the deployment's: one with another id is another deployment's.
SPOOL_MARK_SECONDS = 2 * SPOOL_SWEEP_SECONDS + 60
# A spool file with a batch Redis may have counted (sent before, not answered) first sent
# longer ago than this is held for the operator (spool.py): Redis may have forgotten the
# batch, and would count it again. An hour short of the record's life: the clocks of the
# host that sent it and of the one that takes the file differ, and a send outlives its
# start by the Redis timeout.
SPOOL_HOLD_SECONDS = WRITER_KEY_SECONDS - 3600
# A spool file's write cut short (spool.clear_abandoned) is one left unchanged this long:
# a spill takes seconds (a stop waits 30 s at most for it: buffer.SPILL_WAIT_SECONDS).
SPOOL_ABANDONED_SECONDS = 3600
# On a stop, how long the buffer may take to drain (within gunicorn's graceful timeout).
DRAIN_SECONDS = 10.0
# A day a batch writes to once its midnight plus the rollup's grace, less this margin for
# the writer's and the scheduler's clocks, has passed may already be closed into the SQL
# history: hits.lua marks it late, and the next finalise closes it again.
LATE_MARGIN_SECONDS = 60
# A day's keys go DAY_KEY_GRACE_SECONDS after its end, and the finalise that closes it again
# with a late hit needs them: a hit written later than this after its day ended is dropped
# (hits.lua's "o"), logged and counted lost. Written anyway, it made new keys of its day
# alone, which the finalise took for a Redis behind the history and failed on at every run
# until they went, and the hit was in the site's total but in none of its days.
EXPIRED_SECONDS = keys.DAY_KEY_GRACE_SECONDS - 86400
# A reader whose first hit of a day comes this soon after its midnight is noted in the
# day's `carried` even when nothing of theirs was in `seen` (keys.py): hits of theirs of
# before midnight that two workers' buffers put out of order find them there. A bound,
# not a guarantee: while Redis is down, workers hold hits minutes apart and may write them
# in either order. It keeps the key about as small as the readers online across midnight.
CARRY_NEW_READERS_SECONDS = 60
# Where hits.lua's ARGV 13 (the batch's late days), 16 (sent before) and 21 (the expired
# days) are in _HitBatch.args (0-based).
LATE_DAYS_ARG = 12
RESENT_ARG = 15
EXPIRED_DAYS_ARG = 20
# hits.lua's answer to a batch sent again to a site whose history is not in Redis.
UNRESTORED_REPLY = b"!"

log = logging.getLogger(__name__)


class DropReason(StrEnum):
    """Why an accepted hit is not counted, as X-Analytics-Dropped says it: only a robot is
    known at once; a duplicate or a flood is decided when the buffer is written (Letter)."""

    BOT = "bot"


@dataclass(frozen=True, slots=True)
class Outcome:
    dropped: DropReason | None


class HistoryNotBack(Exception):
    """hits.lua's answer to a batch sent again to a site whose history is not in Redis
    (wiped since the batch was first sent): the batch waits until it is put back."""

    def __init__(self, site: Site) -> None:
        super().__init__(f"site {site.id}: batch sent again before the history is back")
        self.site = site


class BufferFull(Exception):
    """The worker's write-behind buffer is full: Redis has been unavailable for a while.
    `cause` is why the writer's last attempt failed (FULL: Redis out of memory)."""

    def __init__(self, cause: BaseException | None) -> None:
        super().__init__(repr(cause))
        self.cause = cause


class Letter(StrEnum):
    """hits.lua's answer for each hit of a batch."""

    VISIT = "v"  # counted, began a visit
    PAGEVIEW = "p"  # counted
    BOT = "b"
    DUPLICATE = "d"
    RATE_LIMITED = "r"
    # Applied before Redis lost its data, and given back by the restore: counted then.
    APPLIED_BEFORE = "a"
    # Came before its site was removed (site_removal.py): dropped.
    REMOVED = "x"
    # Its day ended more than EXPIRED_SECONDS before it was written: dropped.
    EXPIRED = "o"


ACCEPTED = Outcome(dropped=None)
BOT = Outcome(dropped=DropReason.BOT)


class CheckedHit(NamedTuple):
    """A hit that passed every check (ingest.py), with everything that depends on its time
    worked out when it arrived. What the store needs to count it, and nothing more."""

    site: Site
    ts: float  # unix time of its arrival, seconds
    day: date  # its site-local date
    day_start: float  # unix time of the local midnight that began `day`
    day_end: float  # unix time of the local midnight that ends it
    path: str
    ref_host: str  # "" when none
    bot: bool
    visitor: bytes = b""  # visitor id; empty for a robot
    address: bytes = b""  # address id; empty for a robot
    # Shortly after midnight, this reader's ids under yesterday's salt, 8 bytes each: the
    # visitor's, the address's and, when the hit has an id, its hash (else empty).
    previous: bytes = b""
    dedup: bytes = b""  # the client's hit id hashed with the visitor, or empty


@dataclass(frozen=True, slots=True)
class LiveCounts:
    """The numbers of the box as Redis holds them (the site's baseline not included)."""

    online: int
    today: DayCounts
    total_visits: int
    total_pageviews: int
    # The token of the restore that put the site's history into Redis; b"" when Redis
    # lacks it (came back empty, or a new site).
    history_mark: bytes


@dataclass(frozen=True, slots=True)
class HeldDay:
    """One site-local day as Redis holds it, read atomically with the site's total."""

    # False when Redis lacks the site's history: its numbers must not be taken for any.
    intact: bool
    snap: DaySnapshot | None  # None when Redis has nothing for the day
    total_visits: int
    total_pageviews: int


def _counter_call(site: Site, day: date, now: datetime) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """counter.lua's keys and arguments for `site`'s counter on `day` at `now`."""
    k = site.keys
    return (
        (k.seen, k.day(day), k.uv(day), k.total),
        (f"{now.timestamp() - site.online_window:.3f}", keys.RESTORED),
    )


def _live_counts(reply: object) -> LiveCounts:
    online, visits, pageviews, visitors, total_visits, total_pageviews, mark = reply  # type: ignore[misc]
    return LiveCounts(
        online=online,
        today=_day_counts({"visits": visits, "pageviews": pageviews}, visitors),
        total_visits=total_visits,
        total_pageviews=total_pageviews,
        history_mark=mark,
    )


def _refused_for_now(exc: object) -> bool:
    return isinstance(exc, redis.ResponseError) and str(exc).split(" ", 1)[0] in REFUSED_FOR_NOW


def _as_unavailable(exc: redis.ResponseError) -> redis.ResponseError:
    """A refusal to write (REFUSED_FOR_NOW) as WritesRefused, a 503 the client may retry
    rather than our bug's 500; any other error as it is."""
    if not _refused_for_now(exc):
        return exc
    refused = WritesRefused(str(exc))
    refused.__cause__ = exc
    return refused


def _unavailable(reply: object) -> bool:
    """Whether a batch answered with `reply` is to be sent again. (NOSCRIPT even after
    the script was loaded: the server was replaced again in between.)"""
    return isinstance(reply, (*STORAGE_ERRORS, NoScriptError, HistoryNotBack)) or (
        _refused_for_now(reply)
    )


def _answer(batch: _HitBatch, reply: object) -> object:
    """A batch's reply, with hits.lua's "not yet" as HistoryNotBack."""
    return HistoryNotBack(batch.site) if reply == UNRESTORED_REPLY else reply


def _rounds(batches: Sequence[_HitBatch]) -> list[list[int]]:
    """The indices of `batches` in rounds: each site's n-th batch in the n-th round."""
    rounds: list[list[int]] = []
    sent: dict[str, int] = {}
    for i, batch in enumerate(batches):
        n = sent.get(batch.site.id, 0)
        sent[batch.site.id] = n + 1
        if n == len(rounds):
            rounds.append([])
        rounds[n].append(i)
    return rounds


def _failure_scope(reply: object, node: str) -> str | None:
    """What else a failed call shows to be failing: its node (no answer; a slot it does not
    serve; CLUSTERDOWN), or nothing beyond the batch (None). CLUSTERDOWN is the node's own
    view: a master cut off from the majority, or just restarted, says it while the others
    serve; when every master says it, a send costs one call per master, not per site."""
    if isinstance(
        reply, (redis.ConnectionError, redis.TimeoutError, ClusterDownError, SlotNotCoveredError)
    ):
        return node
    return None


def _node_name(client: redis_store.Client, batch: _HitBatch) -> str:
    """The cluster master that owns `batch`'s site in the client's map ("" if none does)."""
    try:
        return client.get_node_from_key(batch.keys[0]).name  # type: ignore[union-attr]
    except redis_store.REDIS_ERRORS:  # SlotNotCoveredError: the call will say so
        return ""


class HeldLock:
    """What `LiveStore.lock` yields: true when this run holds the lock. A run renews it
    after each unit of its work (a site), so that it lives as long as the run does and a
    run that died stops holding it within LOCK_SECONDS."""

    NOT_HELD: HeldLock

    def __init__(self, store: LiveStore | None, name: str, key: str, token: str) -> None:
        self._store = store
        self._name, self._key, self._token = name, key, token

    def __bool__(self) -> bool:
        return self._store is not None

    def renew(self) -> None:
        """Give the lock its full lifetime again (nothing when it is not held)."""
        if self._store is not None:
            self._store._renew(self._name, self._key, self._token)


HeldLock.NOT_HELD = HeldLock(None, "", "", "")


def _take_lock(client: redis_store.Client, key: str, token: str) -> bool:
    """SET NX, or a lock that already holds `token` (set by an earlier call whose answer
    was lost)."""
    if client.set(key, token, nx=True, px=LOCK_SECONDS * 1000):
        return True
    return client.get(key) == token.encode()


def _delete(client: redis_store.Client, keys_: Sequence[bytes]) -> int:
    """DEL `keys_`, keys of one site: one command on one server. On a cluster one DEL per
    key, pipelined: while a reshard moves the site's slot, its keys are on two masters and a
    DEL of several answered TRYAGAIN until the last had moved (`site delete` failed for as
    long as the migration lasted), where a DEL of one is sent on (ASK) to where its key is."""
    if isinstance(client, redis.Redis):
        return client.delete(*keys_)  # type: ignore[return-value]
    pipe = client.pipeline(transaction=False)
    for key in keys_:
        pipe.delete(key)
    return sum(pipe.execute())


def _source(name: str) -> str:
    return files("analytics_service").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


SCRIPTS = ("hits", "counter", "snapshot", "restore", "unlock", "renew")


@dataclass(frozen=True)
class _Connection:
    client: redis_store.Client
    scripts: dict[str, Script]
    # The writer's own connection to a single server (None on a cluster).
    pipe: redis_store.Pipe | None


def _ints(raw: Sequence[bytes]) -> dict[str, int]:
    """A flat HGETALL reply from a script ([field, value, ...]) as field -> int."""
    return {raw[i].decode(): int(raw[i + 1]) for i in range(0, len(raw), 2)}


def _created(created: float) -> str:
    """A site's creation time as hits.lua and its `removed` key compare it."""
    return f"{created:.6f}"


def _paths(raw: Sequence[bytes]) -> dict[str, int]:
    """A day's paths (`_ints`), each under the spelling paths.py stores: a day an earlier
    release counted may hold one page under two (/tin-tức and /tin-t%E1%BB%A9c)."""
    paths: dict[str, int] = {}
    for path, n in _ints(raw).items():
        stored = stored_path(path)
        paths[stored] = paths.get(stored, 0) + n
    return paths


def _day_counts(fields: dict[str, int], visitors: int) -> DayCounts:
    visits = fields.get("visits", 0)
    return DayCounts(
        visits=visits,
        pageviews=fields.get("pageviews", 0),
        # The HyperLogLog is an estimate; a day cannot have more visitors than visits.
        visitors=min(visitors, visits),
        bots=fields.get("bots", 0),
        rate_limited=fields.get("rate_limited", 0),
        duplicates=fields.get("duplicates", 0),
    )


class _HitBatch:
    """One hits.lua call: the KEYS and ARGV for some hits of one site, in the order the
    script's header documents. The hits travel as one MessagePack argument (Redis's Lua
    reads it with cmsgpack), which costs the writer far less than ARGV of a dozen values a
    hit; each refers by index to the keys of its day, minute and dedup bucket."""

    __slots__ = (
        "answered",
        "args",
        "day_at",
        "day_ends",
        "first_sent",
        "hits",
        "keys",
        "sending",
        "sent",
        "seq",
        "site",
        "size",
        "writer_id",
    )

    def __init__(self, hits: Sequence[CheckedHit], writer_id: str, seq: int) -> None:
        site = hits[-1].site  # the latest settings, should they have changed meanwhile
        k = site.keys
        self.site = site
        self.size = len(hits)
        # What a spill at a stop keeps (spool.py), to be made into this same batch again.
        self.hits, self.writer_id, self.seq = hits, writer_id, seq
        self.keys = [k.seen, k.total, k.writer(writer_id), k.late, k.removed]
        day_at: dict[date, int] = {}
        for d in sorted({hit.day for hit in hits}):
            day_at[d] = len(self.keys) + 1  # KEYS is 1-based
            self.keys += (k.day(d), k.uv(d), k.paths(d), k.refs(d), k.batches(d))
            self.keys += (k.carried(d), k.carried(d + timedelta(days=1)))
        self.day_ends = {hit.day.isoformat(): hit.day_end for hit in hits}
        self.day_at = {d.isoformat(): index for d, index in day_at.items()}
        # Each guard reads the period of the hit and the one before it: the keys run without
        # a gap from the one before the batch's first period to its last.
        stamps = [round(hit.ts, 3) for hit in hits]
        people = [t for hit, t in zip(hits, stamps, strict=True) if not hit.bot]
        rate_at = self._periods(people, 60, k.rate)
        # The dedup also reads the bucket after a hit's: a resend written before the send
        # it repeats may have fallen in the next one.
        ids_at = self._periods(people, keys.DEDUP_SECONDS, k.ids, after=1)
        records = [
            (
                t,
                hit.visitor,
                hit.address,
                hit.previous[: keys.ID_BYTES],
                hit.dedup,
                hit.path,
                hit.ref_host,
                day_at[hit.day],
                hit.day_start,
                int(hit.day_end - t) + keys.DAY_KEY_GRACE_SECONDS,
                0 if hit.bot else rate_at(t),
                0 if hit.bot else ids_at(t),
                hit.previous[keys.ID_BYTES : 2 * keys.ID_BYTES],
                hit.previous[2 * keys.ID_BYTES :],
            )
            for hit, t in zip(hits, stamps, strict=True)
        ]
        self.args = [
            seq,
            WRITER_KEY_SECONDS,
            REPLAY_BATCHES,
            site.seen_horizon,
            PAGEVIEWS_PER_VISITOR_MINUTE,
            site.address_visit_limit,
            keys.PATH_CAP,
            VISIT_IDLE_SECONDS,
            keys.OTHER,
            keys.RATE_KEY_SECONDS,
            keys.IDS_KEY_SECONDS,
            # Not the bin type: Redis 7.0's cmsgpack reads only the older raw strings.
            msgpack.packb(records, use_bin_type=False),
            "",  # the late days: ready() sets them before each send
            keys.DAY_KEY_GRACE_SECONDS,
            writer_id,
            "0",  # sent before: ready() sets it
            keys.RESTORED,
            keys.BATCHES_KEY_SECONDS,
            CARRY_NEW_READERS_SECONDS,
            _created(site.created),
            "",  # the expired days: ready() sets them before each send
        ]
        self.sent = False
        # Unix time of its first send (a spool file's, for one sent before it was kept):
        # Redis remembers it for WRITER_KEY_SECONDS from when it may have counted it.
        self.first_sent: float | None = None
        # Called before the batch is first sent, and once Redis answered it (a spooled one
        # notes both in its file's record).
        self.sending: Callable[[], None] | None = None
        self.answered: Callable[[], None] | None = None

    def ready(self, closable_before: float, expired_before: float) -> None:
        """Set what changes between sends: the batch's days that ended before
        `closable_before` (finalise may have closed them already) as late, worked out anew
        each time (a 23:59 hit still being retried when its day is closed must mark it),
        but those that ended before `expired_before`, whose hits are dropped; and whether
        the batch was sent before."""
        expired = [day for day, end in self.day_ends.items() if end < expired_before]
        late = sorted(
            day
            for day, end in self.day_ends.items()
            if end < closable_before and day not in expired
        )
        self.args[LATE_DAYS_ARG] = ",".join(late)
        self.args[EXPIRED_DAYS_ARG] = ",".join(str(self.day_at[day]) for day in expired)
        self.args[RESENT_ARG] = "1" if self.sent else "0"
        if not self.sent and self.sending is not None:
            self.sending()
        self.sent = True

    def _periods(
        self, stamps: list[float], seconds: int, key: Callable[[int], str], after: int = 0
    ) -> Callable[[float], int]:
        """Add the keys of the periods `stamps` fall in (and the period before the first,
        and `after` periods after the last); return the KEYS index of a time's period."""
        if not stamps:
            return lambda _: 0
        first = int(min(stamps) // seconds) - 1
        base = len(self.keys) + 1 - first
        last = int(max(stamps) // seconds) + after
        self.keys += [key(p) for p in range(first, last + 1)]
        return lambda t: base + int(t // seconds)

    def __len__(self) -> int:
        return self.size


def _batch(hits: list[CheckedHit], writer_id: str, seq: int) -> _HitBatch | None:
    """The batch of `hits`. Should a hit make it fail (our bug: text MessagePack cannot
    take, such as a lone surrogate the checks let through, or a field out of shape), that
    hit is lost, logged with the error, not the others of its batch: each is tried alone."""
    try:
        return _HitBatch(hits, writer_id, seq)
    except Exception:
        good = [hit for hit in hits if _builds(hit)]
        try:
            batch = _HitBatch(good, writer_id, seq) if good else None
        except Exception:  # each builds alone, not all together: lost, but not the others'
            good, batch = [], None
        log.exception(
            "site %s: %d hit(s) of a batch of %d cannot be written and are lost",
            hits[0].site.id,
            len(hits) - len(good),
            len(hits),
        )
        metrics.hits_lost(len(hits) - len(good))
        return batch


# What a spool file holds of a hit (all but its site) and of a site (what builds one).
SITE_FIELDS = tuple(f.name for f in dataclasses.fields(Site) if f.init)
SPOOL_FIELDS = {"hit": CheckedHit._fields[1:], "site": SITE_FIELDS}


def _spooled(batch: _HitBatch) -> spool.Spooled:
    site = {name: getattr(batch.site, name) for name in SITE_FIELDS}
    site["origins"] = list(batch.site.origins)
    hits = [[*hit[1:]] for hit in batch.hits]
    for hit in hits:
        hit[1] = hit[1].isoformat()  # the day
    return spool.Spooled(batch.writer_id, batch.seq, batch.sent, site, hits)


def _unspooled(spooled: spool.Spooled) -> _HitBatch:
    """The batch as its writer prepared it: same writer id and number, so that hits.lua
    does not apply again a batch it applied before the stop."""
    site = Site(**{**spooled.site, "origins": tuple(spooled.site["origins"])})
    hits = [CheckedHit(site, hit[0], date.fromisoformat(hit[1]), *hit[2:]) for hit in spooled.hits]
    batch = _HitBatch(hits, spooled.writer_id, spooled.seq)
    batch.sent = spooled.sent
    return batch


def _expired(batch: _HitBatch, dropped: int) -> None:
    if dropped:
        log.error(
            "site %s: %d hit(s) of a batch of %d were dropped: their day ended more than %d "
            "days before they reached Redis (a spool file or a buffer held that long), and "
            "its closed row is final",
            batch.site.id,
            dropped,
            len(batch),
            EXPIRED_SECONDS // 86400,
        )
        metrics.hits_lost(dropped)


def _builds(hit: CheckedHit) -> bool:
    try:
        _HitBatch([hit], "", 0)
    except Exception:
        return False
    return True


def _per_site(sites: Sequence[Site], replies: Sequence[object]) -> list[object]:
    """The replies of one command a site, as they are, but an error: raised when Redis is
    unavailable (the others would fail alike), else named after its site and left in
    place, for the caller to log or raise while the other sites' replies stand."""
    out = []
    for site, reply in zip(sites, replies, strict=True):
        if isinstance(reply, redis.ResponseError):
            reply = _as_unavailable(reply)
        if isinstance(reply, STORAGE_ERRORS):
            raise reply
        if isinstance(reply, redis.RedisError):
            reply.args = (f"site {site.id}: {reply.args[0]}", *reply.args[1:])
        out.append(reply)
    return out


def _restore_call(
    site: Site, plan: RestorePlan, now: datetime, top_up: bool
) -> tuple[list[str], tuple[object, ...], int]:
    """restore.lua's keys and arguments for `plan`, and how many days it gives back."""
    script_keys, hlls, days = [site.keys.total], [], []
    for snap in plan.days:
        ttl = LiveStore.day_ttl(site, snap.day, now)
        if ttl <= 0:
            continue  # its keys would have expired (the rollup closes an open one from SQL)
        k = site.keys
        day = snap.day
        script_keys += [
            k.day(day),
            k.uv(day),
            k.paths(day),
            k.refs(day),
            k.restore(day),
            k.batches(day),
        ]
        hlls.append(snap.hll or b"")
        counts = snap.counts.as_dict()
        del counts["visitors"]  # the HyperLogLog carries them
        days.append(
            {
                "ttl": str(ttl),
                "counts": {f: str(n) for f, n in counts.items()},
                "paths": {p: str(n) for p, n in snap.paths.items()},
                "refs": {h: str(n) for h, n in snap.refs.items()},
                "batches": list(snap.batches),
                # As long as a writer's own record (WRITER_KEY_SECONDS), which the wipe
                # took: with an hour's, a spool file written two hours after the restore
                # counted the batches its worker had sent without an answer twice.
                "batches_ttl": str(min(ttl, WRITER_KEY_SECONDS)),
            }
        )
    payload = {
        # Each restore's own marker value: a worker that reads a new one knows Redis
        # lost its data, even where another process put the history back.
        "mark": secrets.token_hex(8),
        "top_up": top_up,
        "visits": str(plan.total_visits),
        "pageviews": str(plan.total_pageviews),
        "days": days,
    }
    return script_keys, (keys.RESTORED, json.dumps(payload), *hlls), len(days)


class LiveStore:
    def __init__(self, settings: Settings, clock: Clock = system_clock) -> None:
        if not settings.redis_url:
            raise RuntimeError(
                "ANALYTICS_REDIS_URL is not set: use `analytics-service run`, which starts the "
                "embedded Redis, or point ANALYTICS_REDIS_URL at a server"
            )
        self.settings = settings
        self._clock = clock
        self._closing_seconds = settings.rollup_grace_seconds - LATE_MARGIN_SECONDS
        self._connection: _Connection | None = None
        self._lock = threading.Lock()
        # Job name -> the token of a lock SET that failed without an answer (lock()).
        self._unsure_locks: dict[str, str] = {}
        self._new_writer()
        # Spool files whose write met a bug here, and when this worker may take them again.
        self._retry_at: dict[Path, float] = {}
        self._listeners: list[Callable[[str], None]] = []
        self._restorers: list[Callable[[Site], None]] = []
        # The deployment's sites (spool files are told by them: spool.Owner).
        self._sites: Callable[[str], Site | None] = lambda site_id: None
        # The deployment id this Redis holds, and when it got it, as last read (None: not
        # yet): what a spill marks its file with, Redis being away then.
        self._deployment: tuple[str, float] | None = None
        self._buffer: WriteBehind[CheckedHit, _HitBatch] = WriteBehind(
            self._prepare,
            self._send,
            max_hits=settings.buffer_max_hits,
            batch_hits=BATCH_HITS,
            flush_seconds=FLUSH_SECONDS,
            loud=(FULL,),
            spill=self._spill,
            sweep=self._sweep,
            sweep_seconds=SPOOL_SWEEP_SECONDS,
        )

    # -- the connection ------------------------------------------------------------------

    def _connected(self) -> _Connection:
        connection = self._connection
        if connection is None:
            with self._lock:
                if self._connection is None:
                    client = redis_store.connect(self.settings.redis_url or "", self.settings)
                    redis_store.check_server(client)
                    scripts = {name: client.register_script(_source(name)) for name in SCRIPTS}
                    pipe = redis_store.Pipe(client) if isinstance(client, redis.Redis) else None
                    self._connection = _Connection(client, scripts, pipe)
                connection = self._connection
        return connection

    @property
    def client(self) -> redis_store.Client:
        """The Redis client itself, for the few callers that need a raw command (tests)."""
        return self._connected().client

    def _run(self, script: str, keys_: Sequence[str], args: Sequence[object]) -> object:
        try:
            return self._connected().scripts[script](keys=keys_, args=args)
        except redis.ResponseError as exc:
            raise _as_unavailable(exc)  # noqa: B904 (chained in there)

    def warm(self) -> None:
        """SCRIPT LOAD every script (on a cluster, on every master), so that the first call
        of each is not a NOSCRIPT answer and a second round trip; and open the writer's
        connection, so that its first batch does not wait for a connect and a handshake."""
        connection = self._connected()
        for name in SCRIPTS:
            connection.client.script_load(_source(name))
        if connection.pipe is not None:
            connection.pipe.connect()
        self._read_deployment()

    def _read_deployment(self) -> tuple[str, float] | None:
        """The id of the deployment this Redis serves and when Redis got it (keys.DEPLOYMENT),
        set now when it has none (a new or emptied Redis); None while Redis does not answer.
        Kept in Redis, not derived from its address: it follows the data through a
        failover or a move, and a server that took another's address has another."""
        try:
            client = self._connected().client
            if client.get(keys.DEPLOYMENT) is None:
                mark = f"{secrets.token_hex(8)} {self._clock().timestamp():.0f}"
                client.set(keys.DEPLOYMENT, mark, nx=True)
            held = client.get(keys.DEPLOYMENT)
        except redis_store.REDIS_ERRORS:
            return None  # the caller waits, or marks with the id read before
        if held is None:  # emptied between the two calls: the next call sets it
            return None
        deployment, _, since = held.decode().partition(" ")  # type: ignore[union-attr]
        # A mark without its time (set by hand): Redis is taken to have had it always.
        self._deployment = (deployment, float(since) if since.isdigit() else 0.0)
        return self._deployment

    def ping(self) -> None:
        self._connected().client.ping()

    def server_time(self) -> datetime:
        """Redis's clock (TIME; on a cluster, one node's)."""
        seconds, micros = self._connected().client.time()  # type: ignore[misc]
        return datetime.fromtimestamp(seconds + micros / 1e6, UTC)

    def clock_skew(self, now: datetime) -> float:
        """Seconds `now` (this host's clock) is ahead of Redis's (negative: behind)."""
        return (now - self.server_time()).total_seconds()

    def memory(self) -> dict[str, dict[str, object]]:
        """INFO memory of each server: {"redis": {...}} for one, {"host:port": {...}} per master
        of a cluster (used_memory against maxmemory, for /metrics)."""
        client = self._connected().client
        return redis_store.per_server(client, functools.partial(client.info, "memory"))

    def close(self, drain_seconds: float = DRAIN_SECONDS) -> int:
        """Write what the buffer holds (for at most `drain_seconds`), then disconnect;
        returns how many buffered hits could not be written."""
        lost = self._buffer.close(drain_seconds)
        if self._connection is not None:
            if self._connection.pipe is not None:
                self._connection.pipe.close()
            self._connection.client.close()
        return lost

    def give_up(self) -> None:
        """End a `close` under way now, or the next one at once, logging the hits it leaves
        (buffer.give_up)."""
        self._buffer.give_up()

    # -- what Redis holds -----------------------------------------------------------------

    @staticmethod
    def day_ttl(site: Site, day: date, now: datetime) -> int:
        """Seconds a key of `day` lives from `now`: until the day's end plus the grace in
        which a rollup missed while the service was down can still read it."""
        return int((day_end(day, site.tz) - now).total_seconds()) + keys.DAY_KEY_GRACE_SECONDS

    # -- hits -----------------------------------------------------------------------------

    def submit(self, hit: CheckedHit) -> None:
        """Buffer a checked hit for the writer; BufferFull when the buffer is full."""
        if not self._buffer.put(hit):
            raise BufferFull(self._buffer.last_error)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every hit submitted so far is written (or refused by the script)."""
        self._buffer.flush(timeout)

    @property
    def buffer_full(self) -> bool:
        """Whether this worker refuses hits now (its buffer is at its bound)."""
        return self._buffer.full

    @property
    def writer_error(self) -> BaseException | None:
        """Why the writer's last attempt failed, while it is failing (None once it writes)."""
        return self._buffer.last_error

    def on_written(self, listener: Callable[[str], None]) -> None:
        """Call `listener` from the writer thread with each batch's outcomes as written: one
        Letter per hit, in the order of the hits."""
        self._listeners.append(listener)

    def on_history_missing(self, restore: Callable[[Site], None]) -> None:
        """Call `restore` from the writer thread for a site whose history must be back in
        Redis before a batch sent again can be applied (recovery.Recovery.restore)."""
        self._restorers.append(restore)

    def know_sites(self, get: Callable[[str], Site | None]) -> None:
        """Look the deployment's sites up with `get` (sites.SiteCache.get), which tells a
        spool file of an older release, or of a Redis that lost its data since, as this
        deployment's (spool.Owner)."""
        self._sites = get

    def _site_created(self, site_id: str) -> float | None:
        site = self._sites(site_id)
        return None if site is None else site.created

    def _owner(self) -> spool.Owner:
        """This deployment as spool files are told by (spool.Owner), as Redis says now."""
        read = self._read_deployment()
        if read is None:
            return spool.Owner(None, float("inf"), self._site_created)
        deployment, since = read
        return spool.Owner(deployment, since + SPOOL_MARK_SECONDS, self._site_created)

    def _restore_history(self, site: Site) -> None:
        for restore in self._restorers:
            try:
                restore(site)
            except Exception:
                # The batch waits and is sent again; so is this, on its next attempt.
                log.exception("site %s: history not put back for a batch sent again", site.id)

    def _spill(self, batches: list[_HitBatch]) -> bool:
        """Keep batches this worker could not write (at a stop; one that met a bug) in the
        spool folder, for the next worker (spool.py); False, logged, when it cannot."""
        folder = self.settings.effective_spool_dir
        try:
            sent = [batch.first_sent for batch in batches if batch.sent and batch.first_sent]
            kept = [_spooled(batch) for batch in batches]
            deployment = None if self._deployment is None else self._deployment[0]
            now = self._clock().timestamp()
            path = spool.save(folder, SPOOL_FIELDS, kept, min(sent, default=None), deployment, now)
        except OSError as exc:
            log.error("spool: cannot keep the hits in %s: %s", folder, reason(exc))
            return False
        log.info("spool: %d batch(es) kept in %s", len(batches), path)
        # Redis may have run them: hits.lua recognises them only among their writer's latest
        # REPLAY_BATCHES of a site, so this worker writes on (after a bug) under a new id.
        self._new_writer()
        return True

    def resume_spooled(self, most: int = SPOOL_FILES_AT_ONCE) -> int:
        """Write the batches stopped workers (or a bug) left in the spool folder before this
        worker's own hits, from up to `most` files no process holds, and from one more as
        each is written; how many hits the first ones hold. The files' hits are held on top
        of the worker's own bound, up to a bound's worth (`room`): a worker that took 8
        files of a full bound each held 8 bounds, and refused its own hits until they were
        written. A larger file only when it holds none: one from a worker with a larger
        bound would wait for ever, and the files behind it too. Called as a worker starts,
        and by its writer's sweep. Each file is removed once its batches are written;
        should this worker be stopped first, it stays for the next (spool.py)."""
        self._buffer.start()
        folder = self.settings.effective_spool_dir
        now = self._clock().timestamp()
        owner = self._owner()
        try:
            spool.clear_abandoned(folder, now - SPOOL_ABANDONED_SECONDS)
            claimed = spool.claim(
                folder,
                SPOOL_FIELDS,
                most,
                self._to_retry_later,
                now - SPOOL_HOLD_SECONDS,
                now,
                owner,
            )
        except OSError as exc:
            log.error("spool: cannot read %s; its hits wait there: %s", folder, reason(exc))
            return 0
        held, room = 0, self._buffer.room
        holds_none = room == self._buffer.max_hits
        for taken in claimed:
            pieces = self._pieces(taken)
            if pieces is None:
                continue
            hits = sum(len(batch) for piece in pieces for batch in piece)
            if held + hits > room and not (holds_none and held == 0):
                log.info("spool: %s (%d hit(s)) left for a worker with room", taken.path, hits)
                taken.release(written=False)
                continue
            held += hits
            self._buffer.resume(pieces, functools.partial(self._resumed, taken), taken.noting)
            log.warning("spool: %d hit(s) kept on disk in %s are being written", hits, taken.path)
        return held

    def _sweep(self) -> None:
        self.resume_spooled(most=1)

    def _to_retry_later(self, path: Path) -> bool:
        return self._retry_at.get(path, 0.0) > time.monotonic()

    @staticmethod
    def _pieces(taken: spool.Claimed) -> list[list[_HitBatch]] | None:
        """The batches of a file not yet answered, in pieces of REPLAY_BATCHES (the write
        of a resumed file stops after a piece that may have run: buffer.py); None, logged,
        when the file holds a value this release cannot take."""
        batches = []
        try:
            for index, spooled in enumerate(taken.batches):
                if index in taken.done:  # a worker killed while writing the file wrote it
                    continue
                batch = _unspooled(spooled)
                batch.sent = batch.sent or index in taken.sent
                batch.first_sent = taken.sent_since if batch.sent else None
                batch.sending = functools.partial(taken.sending, index)
                batch.answered = functools.partial(taken.answered, index)
                batches.append(batch)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            # A damaged file: raised from here, it stopped the worker from booting, and
            # gunicorn with it.
            log.error(
                "spool: %s cannot be read by this release and is left where it is: %s",
                taken.path,
                reason(exc),
            )
            taken.unreadable()
            return None
        return [batches[n : n + REPLAY_BATCHES] for n in range(0, len(batches), REPLAY_BATCHES)]

    def _resumed(self, taken: spool.Claimed, written: bool) -> None:
        """A file's batches are written: the file goes, and another is taken. Or this worker
        stops before they are, or they met a bug: the file stays for the next worker, its
        record noting those Redis answered."""
        if not written:
            log.warning(
                "spool: %s stays for the next worker, with the hits not written", taken.path
            )
        taken.release(written=written)
        if taken.path.exists():  # not written, or it could not be removed (logged)
            self._retry_at[taken.path] = time.monotonic() + SPOOL_RETRY_SECONDS
        else:
            self._retry_at.pop(taken.path, None)
        if written:
            self.resume_spooled(most=1)

    def _new_writer(self) -> None:
        """This process's writer: its batches are numbered per site, from 1, under an id
        of its own."""
        self._writer_id = secrets.token_hex(8)
        self._writer_pid = os.getpid()
        self._seq: defaultdict[str, Iterator[int]] = defaultdict(lambda: itertools.count(1))

    def _prepare(self, hits: list[CheckedHit]) -> list[_HitBatch]:
        """hits.lua calls for `hits`: one per site (in their order), at most SCRIPT_HITS
        hits each, each numbered once so that a call sent again is recognised."""
        if self._writer_pid != os.getpid():
            # A worker forked from the process that built the store (gunicorn --preload):
            # under its parent's id, its batches would be taken for replays of a sibling's
            # batches of the same numbers, and not counted.
            self._new_writer()
        # A site removed and created again under its id is another site: its own batches.
        by_site: dict[tuple[str, float], list[CheckedHit]] = defaultdict(list)
        for hit in hits:
            by_site[hit.site.id, hit.site.created].append(hit)
        batches = []
        for (site_id, _), site_hits in by_site.items():
            for start in range(0, len(site_hits), SCRIPT_HITS):
                seq = next(self._seq[site_id])
                chunk = site_hits[start : start + SCRIPT_HITS]
                batch = _batch(chunk, self._writer_id, seq)
                if batch is not None:
                    batches.append(batch)
        return batches

    def _send(self, batches: list[_HitBatch]) -> None:
        """Write batches in one pipelined round trip (on a cluster, one per node). Raises
        Transient with the batches to send again; a batch refused for another reason is a
        bug, logged with its site, and not sent again."""
        now = self._clock().timestamp()
        for batch in batches:
            if not batch.sent:
                batch.first_sent = now
            batch.ready(now - self._closing_seconds, now - EXPIRED_SECONDS)
        try:
            connection = self._connected()
            replies = self._pipelined(connection, batches)
        except STORAGE_ERRORS as exc:
            raise Transient(batches, exc) from exc
        missing = [b for b, r in zip(batches, replies, strict=True) if isinstance(r, NoScriptError)]
        if missing:  # a restarted or promoted server: load the script, send those again
            try:
                self._load_hits(connection, missing)
                sent_again = self._pipelined(connection, missing)
            except STORAGE_ERRORS as exc:
                # Only those: the others' replies stand. Sent again, a batch Redis ran is
                # recognised only among its site's last REPLAY_BATCHES.
                sent_again = [exc] * len(missing)
            for batch, reply in zip(missing, sent_again, strict=True):
                replies[batches.index(batch)] = reply
        again, cause, restored = [], None, set()
        for batch, reply in zip(batches, replies, strict=True):
            if _unavailable(reply):
                again.append(batch)
                cause = reply
                if isinstance(reply, HistoryNotBack) and reply.site.id not in restored:
                    restored.add(reply.site.id)
                    self._restore_history(reply.site)
            elif isinstance(reply, Exception):
                log.error(
                    "site %s: a batch of %d hit(s) was refused and is lost: %s",
                    batch.site.id,
                    len(batch),
                    reason(reply),
                )
                metrics.hits_lost(len(batch))
            else:
                letters = reply.decode()  # type: ignore[attr-defined]
                _expired(batch, letters.count(Letter.EXPIRED))
                for listener in self._listeners:
                    listener(letters)
            if batch.answered is not None and not _unavailable(reply):
                batch.answered()
        if again:
            if connection.pipe is not None and any(isinstance(r, ReadOnlyError) for r in replies):
                # The server is a replica now (a failover). A name or address that has
                # moved to the new primary is reached by a new connection only.
                connection.pipe.close()
            # On a cluster each batch failed on its own: the writer may send others meanwhile.
            raise Transient(again, cause or RuntimeError("retry"), partial=connection.pipe is None)

    @staticmethod
    def _load_hits(connection: _Connection, missing: Sequence[_HitBatch]) -> None:
        """SCRIPT LOAD hits.lua where the `missing` batches go: through the writer's own
        connection (after a failover behind one address, the client's pool may still reach
        the old server), or on the masters of a cluster that answered NOSCRIPT (another
        may be the one not answering at all)."""
        if connection.pipe is not None:
            connection.pipe.execute([("SCRIPT", "LOAD", _source("hits"))])
            return
        client = connection.client
        nodes = {client.get_node_from_key(batch.keys[0]) for batch in missing}  # type: ignore[union-attr]
        client.execute_command("SCRIPT", "LOAD", _source("hits"), target_nodes=list(nodes))

    @staticmethod
    def _pipelined(connection: _Connection, batches: Sequence[_HitBatch]) -> list[object]:
        """Each batch's reply, or the error it met. A site's later batches are not sent
        while an earlier one is to be sent again: they get its reply, or the visit rule and
        the flood guards would see its hits out of order. On a single server, one pipelined
        round trip per round, the n-th round holding each site's n-th batch (one round
        unless a site has more than SCRIPT_HITS hits in the send: a backlog). On a cluster
        (whose client pipelines no scripts) one call per batch, each sent to the node that
        owns its site's slot, MOVED, ASK and TRYAGAIN followed."""
        if connection.pipe is not None:
            return LiveStore._in_rounds(connection.pipe, connection.scripts["hits"].sha, batches)
        sha = connection.scripts["hits"].sha
        client = connection.client
        replies: list[object] = []
        # Why a batch is to be sent again, by its site (its later batches wait for it), and
        # by node, when the failure is the node's: a call for any other site of it would
        # only wait out the same timeout, or redis-py's 0.25 s pause after CLUSTERDOWN
        # (hundreds of sites: minutes per attempt, while the other masters' sites wait).
        held: dict[str, object] = {}
        down: dict[str, object] = {}
        for batch in batches:
            node = _node_name(client, batch)
            reply = held.get(batch.site.id) or down.get(node)
            if reply is None:
                try:
                    reply = _answer(
                        batch, client.evalsha(sha, len(batch.keys), *batch.keys, *batch.args)
                    )
                except redis_store.REDIS_ERRORS as exc:  # another node may answer for its own
                    reply = exc
                scope = _failure_scope(reply, node)
                if scope is not None:
                    down[scope] = reply
            if _unavailable(reply):
                held.setdefault(batch.site.id, reply)
            replies.append(reply)
        return replies

    @staticmethod
    def _in_rounds(pipe: redis_store.Pipe, sha: str, batches: Sequence[_HitBatch]) -> list[object]:
        """_pipelined on a single server. In one pipeline a site's second batch could be
        applied while its first is refused on its own (NOSCRIPT just before another
        worker's SCRIPT LOAD, OOM just before keys expire, "not restored" just before a
        counter read restores the site), and the first would then be applied after it."""
        replies: list[object] = [None] * len(batches)
        held: dict[str, object] = {}
        for indices in _rounds(batches):
            sending = []
            for i in indices:
                reply = held.get(batches[i].site.id)
                if reply is None:
                    sending.append(i)
                else:
                    replies[i] = reply
            commands = [
                ("EVALSHA", sha, len(batches[i].keys), *batches[i].keys, *batches[i].args)
                for i in sending
            ]
            try:
                sent = pipe.execute(commands) if commands else []
            except STORAGE_ERRORS as exc:  # the earlier rounds' replies stand
                sent = [exc] * len(sending)
            for i, reply in zip(sending, sent, strict=True):
                replies[i] = _answer(batches[i], reply)
                if _unavailable(replies[i]):
                    held[batches[i].site.id] = replies[i]
        return replies

    # -- reading ------------------------------------------------------------------------

    def counts(self, site: Site, day: date, now: datetime) -> LiveCounts:
        """Online at `now`, `day`'s numbers and the totals: counter.lua, one round trip."""
        return _live_counts(self._run("counter", *_counter_call(site, day, now)))

    def counts_of(self, reads: Sequence[tuple[Site, date]], now: datetime) -> list[LiveCounts]:
        """`counts` of each (site, day), for /metrics' sums over every site: on a single
        server COUNTS_PER_ROUND_TRIP in one pipelined round trip (one round trip a site
        made a scrape of 20,000 sites take 6 s; docs/scaling.md); on a cluster, whose
        client pipelines no scripts, one call each. The first error raises, as `counts`."""
        connection = self._connected()
        if connection.pipe is None:
            return [self.counts(site, day, now) for site, day in reads]
        script = connection.scripts["counter"]
        replies: list[object] = []
        for start in range(0, len(reads), COUNTS_PER_ROUND_TRIP):
            # The client's own pipeline (a connection of its pool, not the writer's): it
            # loads the script first when the server lacks it (NOSCRIPT after a restart).
            chunk = reads[start : start + COUNTS_PER_ROUND_TRIP]
            with connection.client.pipeline(transaction=False) as pipe:
                for site, day in chunk:
                    script(*_counter_call(site, day, now), client=pipe)
                sent = pipe.execute(raise_on_error=False)
            for (site, _), reply in zip(chunk, sent, strict=True):
                if isinstance(reply, redis.ResponseError):
                    # Named, as the error of a site's own call is by its caller's log line.
                    reply.args = (f"site {site.id}: {reply.args[0]}", *reply.args[1:])
                    raise _as_unavailable(reply)
                replies.append(reply)
        return [_live_counts(reply) for reply in replies]

    def snapshot(self, site: Site, day: date) -> HeldDay:
        """The day as Redis holds it, with the site's total and whether Redis has the
        site's history, in one atomic read."""
        k = site.keys
        day_keys = (k.total, k.day(day), k.uv(day), k.paths(day), k.refs(day), k.batches(day))
        reply = self._run("snapshot", day_keys, (keys.RESTORED,))
        intact, counts, visitors, hll, paths, refs, batches, total = reply  # type: ignore[misc]
        total_visits, total_pageviews = (int(n or 0) for n in total)
        if not counts and hll is None:
            return HeldDay(bool(intact), None, total_visits, total_pageviews)
        snap = DaySnapshot(
            site.id,
            day,
            _day_counts(_ints(counts), visitors),
            hll,
            _paths(paths),
            _ints(refs),
            tuple(sorted(b.decode() for b in batches)),
        )
        return HeldDay(bool(intact), snap, total_visits, total_pageviews)

    def late_days(self, site: Site) -> set[date]:
        """Days a batch wrote to after they may have been closed into the SQL history, and
        days whose closing again began and did not end (`closing_late`)."""
        [found] = self.late_days_of([site])
        if isinstance(found, Exception):
            raise found
        return found

    def late_days_of(self, sites: Sequence[Site]) -> list[set[date] | redis.RedisError]:
        """`late_days` of each site in one pipelined round trip (on a cluster, one per
        master): finalise asks it of every site at every run. A site whose keys cannot be
        read (a key of the wrong type) gets its error, named; Redis unavailable raises."""
        with self._connected().client.pipeline(transaction=False) as pipe:
            for site in sites:
                # Not SUNION: redis-py's cluster pipeline refuses it.
                pipe.smembers(site.keys.late)
                pipe.smembers(site.keys.closing)
            replies = pipe.execute(raise_on_error=False)
        found: list[set[date] | redis.RedisError] = []
        for site, *sets in zip(sites, replies[::2], replies[1::2], strict=True):
            late, closing = _per_site([site, site], sets)
            errors = [r for r in (late, closing) if isinstance(r, redis.RedisError)]
            found.append(
                errors[0] if errors else {date.fromisoformat(m.decode()) for m in late | closing}  # type: ignore[operator]
            )
        return found

    def closing_late(self, site: Site, day: date) -> None:
        """Before `day` is closed again: its mark moves from `late` to `closing`, so that a
        batch written from now on marks it late anew, and a close that fails leaves it
        marked for the next finalise."""
        k, client = site.keys, self._connected().client
        # Two calls: redis-py's cluster pipeline refuses SMOVE.
        client.smove(k.late, k.closing, day.isoformat())
        client.expire(k.closing, keys.DAY_KEY_GRACE_SECONDS)

    def closed_late(self, site: Site, day: date) -> None:
        """`day` is closed again, with every batch written before `closing_late`."""
        self._connected().client.srem(site.keys.closing, day.isoformat())

    def days_held(self, site: Site, days: Iterable[date], today: date) -> set[date]:
        """Which of `days` Redis has counts for (days Redis can still hold, only)."""
        recent = [d for d in days if (today - d).days <= DAYS_HELD]
        return self.days_held_of([(site, recent)])[0] if recent else set()

    def days_held_of(self, wanted: Sequence[tuple[Site, Sequence[date]]]) -> list[set[date]]:
        """Which of its days Redis has counts for, of each (site, days), in one pipelined
        round trip (finalise looks at every site's due days at once)."""
        pairs = [(site, day) for site, days in wanted for day in days]
        with self._connected().client.pipeline(transaction=False) as pipe:
            for site, day in pairs:
                pipe.exists(site.keys.day(day), site.keys.uv(day))
            found = iter(pipe.execute())
        return [{day for day in days if next(found)} for _, days in wanted]

    # -- recovery -----------------------------------------------------------------------

    def restore(
        self, site: Site, plan: RestorePlan, now: datetime, *, top_up: bool = False
    ) -> tuple[bool, int]:
        """Put a site's history back into a Redis that lost it, unless already there:
        (whether this call did, how many days it gave back). restore.lua sets the
        marker first, so only one caller adds the history, and it adds rather than sets.
        `top_up`: Redis holds the marker but is behind the history; raise every amount to
        at least the history's."""
        script_keys, args, days = _restore_call(site, plan, now, top_up)
        return bool(self._run("restore", script_keys, args)), days

    def restore_all(
        self, plans: Sequence[tuple[Site, RestorePlan]], now: datetime
    ) -> list[tuple[bool, int] | redis.RedisError]:
        """`restore` of each (site, plan), on a single server in one pipelined round trip
        (on a cluster, whose client pipelines no scripts, one call each): a Redis that lost
        its data needs every site's history back. A site whose restore fails (a key of the
        wrong type) gets its error, named; Redis unavailable raises."""
        calls = [_restore_call(site, plan, now, False) for site, plan in plans]
        connection = self._connected()
        script = connection.scripts["restore"]
        if connection.pipe is None:
            replies: list[object] = []
            for script_keys, args, _ in calls:
                try:
                    replies.append(script(script_keys, args))
                except redis.RedisError as exc:
                    replies.append(exc)
        else:
            with connection.client.pipeline(transaction=False) as pipe:
                for script_keys, args, _ in calls:
                    script(script_keys, args, client=pipe)
                replies = pipe.execute(raise_on_error=False)
        sites = [site for site, _ in plans]
        return [
            reply if isinstance(reply, redis.RedisError) else (bool(reply), days)
            for reply, (_, _, days) in zip(_per_site(sites, replies), calls, strict=True)
        ]

    # -- salts, locks, sites --------------------------------------------------------------

    def salt(self, day: date, ttl_seconds: int, known: bytes | None = None) -> bytes:
        """The salt of `day`, chosen by whichever process asks first (SET NX GET). `known`,
        the salt the caller already uses, is what it offers: should Redis have lost the
        salt (a wipe), it is put back rather than replaced by a new one."""
        fresh = known or new_salt()
        key = keys.salt(day)
        client = self._connected().client
        try:
            existing = client.set(key, fresh, nx=True, ex=ttl_seconds, get=True)
        except redis.ResponseError as exc:
            refused = _as_unavailable(exc)
            # A Redis that takes no writes (out of memory, a replica, short of replicas)
            # refuses the whole SET, though the salt may be there and nothing would be
            # written: a worker started then answered every hit 503 while the others
            # buffered theirs. Read it; only a salt no process has set yet must wait.
            taking_no_writes = isinstance(refused, (FULL, ReadOnlyError, WritesRefused))
            existing = client.get(key) if taking_no_writes else None
            if existing is None:
                raise refused  # noqa: B904 (chained in there)
        return existing if existing is not None else fresh  # type: ignore[return-value]

    @contextmanager
    def lock(
        self, name: str, wait_seconds: float = 0, sleep: Callable[[float], None] = time.sleep
    ) -> Iterator[HeldLock]:
        """Yields a HeldLock, true when this run holds the lock `name`, false when another
        run does (and still did after `wait_seconds`). The token makes sure only the run
        that set the lock renews or deletes it (renew.lua, unlock.lua)."""
        key = keys.lock(name)
        unsure = self._unsure_locks.pop(name, None)
        token = unsure or secrets.token_hex(16)
        client = self._connected().client
        deadline = time.monotonic() + wait_seconds
        try:
            acquired = _take_lock(client, key, token)
            while not acquired and time.monotonic() < deadline:
                sleep(LOCK_POLL_SECONDS)
                acquired = _take_lock(client, key, token)
        except UNAVAILABLE:
            # Redis may have set the lock after the client gave up on its answer: the next
            # run of this process asks with the same token and finds the lock its own,
            # instead of skipping every run for LOCK_SECONDS.
            self._unsure_locks[name] = token
            raise
        held = HeldLock(self, name, key, token) if acquired else HeldLock.NOT_HELD
        if unsure:  # a lock taken back may have seconds of its lifetime left
            held.renew()
        try:
            yield held
        finally:
            if acquired:
                self._unlock(name, key, token)

    def _renew(self, name: str, key: str, token: str) -> None:
        try:
            renewed = self._run("renew", (key,), (token, LOCK_SECONDS * 1000))
        except UNAVAILABLE as exc:
            # The run's next step needs Redis too and will fail on its own if it is gone.
            log.warning("lock %s not renewed (%s); the run goes on", name, reason(exc))
            return
        if not renewed:
            log.error(
                "lock %s expired or was taken while this run held it (a pause of over %d s): "
                "another run may be at work beside it; its writes are idempotent",
                name,
                LOCK_SECONDS,
            )

    def _unlock(self, name: str, key: str, token: str) -> None:
        try:
            self._run("unlock", (key,), (token,))
        except UNAVAILABLE as exc:
            # The run's work is done; only the release failed (Redis restarted or stalled
            # at that moment). The next run of this process takes the lock back with the
            # same token instead of skipping every run until it expires.
            self._unsure_locks[name] = token
            log.warning(
                "lock %s not released (%s): this process takes it back at its next run, "
                "others wait for it to expire (at most %d s)",
                name,
                reason(exc),
                LOCK_SECONDS,
            )

    def _site_keys(self, site_id: str) -> Iterator[bytes]:
        """Every key of the site (SCAN by its hash tag) but the mark of its removal, which
        is no data of the site's."""
        k = keys.SiteKeys(site_id)
        removed = k.removed.encode()
        client = self._connected().client
        for key in client.scan_iter(match=k.pattern, count=DELETE_BATCH):
            if key != removed:
                yield key

    def count_site_keys(self, site_id: str) -> int:
        """How many keys the site has: what delete_site would go through."""
        return sum(1 for _ in self._site_keys(site_id))

    def mark_removed(self, site_id: str, created: float) -> None:
        """Before the site of `site_id` created at `created` is removed: hits.lua drops the
        hits checked for it that are still to be written (a worker that cannot write now
        writes them whenever it can)."""
        self._connected().client.set(keys.SiteKeys(site_id).removed, _created(created))

    def delete_site(self, site_id: str) -> int:
        """Delete every key of a site (in batches); how many."""
        client = self._connected().client
        deleted, batch = 0, []
        for key in self._site_keys(site_id):
            batch.append(key)
            if len(batch) == DELETE_BATCH:
                deleted += _delete(client, batch)
                batch = []
        if batch:
            deleted += _delete(client, batch)
        return deleted
