"""The Redis key schema. Every key the service reads or writes is built here and nowhere else.

All of a site's keys carry the hash tag ``{site}``, so the Lua scripts that touch several of
them at once run unchanged on Redis Cluster (one slot per site). Day keys carry the
site-local date; they are never reset, they expire. Only live.py (the LiveStore) reads or
writes them, through the scripts named below.

Written and read by these scripts and LiveStore methods (live.py):

==================  ======  ===================================  ===========  ==============
key                 type    TTL                                  written by   read by
==================  ======  ===================================  ===========  ==============
an:{S}:seen         ZSET    members older than `seen_horizon` s  hits.lua     hits.lua,
                            trimmed on write; key expires after               counter.lua
                            that much idle time
an:{S}:carried:D    ZSET    WRITER_KEY_SECONDS (1 day) after     hits.lua     hits.lua
                            local day D began
an:{S}:day:D        HASH    until local day D ends + 8 days      hits.lua,    counter.lua,
                                                                 restore.lua  snapshot.lua,
                                                                              days_held
an:{S}:uv:D         HLL     as the day hash                      hits.lua,    counter.lua,
                                                                 restore.lua  snapshot.lua
an:{S}:paths:D      HASH    as the day hash                      hits.lua,    snapshot.lua
                                                                 restore.lua
an:{S}:refs:D       HASH    as the day hash                      hits.lua,    snapshot.lua
                                                                 restore.lua
an:{S}:batches:D    HASH    BATCHES_KEY_SECONDS (1 h) after its  hits.lua,    hits.lua,
                            last batch; WRITER_KEY_SECONDS (1    restore.lua  snapshot.lua
                            day) after a restore
an:{S}:total        HASH    none: one per site, three fields     hits.lua,    counter.lua,
                                                                 restore.lua  snapshot.lua
an:{S}:restore:D    STRING  60 s; deleted by the script that     restore.lua  restore.lua
                            made it
an:{S}:rate:M       HASH    RATE_KEY_SECONDS (120 s)             hits.lua     hits.lua
an:{S}:ids:B        HASH    IDS_KEY_SECONDS (600 s)              hits.lua     hits.lua
an:{S}:writer:W     HASH    WRITER_KEY_SECONDS (1 day) after     hits.lua     hits.lua
                            the writer's last batch
an:{S}:late         SET     DAY_KEY_GRACE_SECONDS after its      hits.lua,    late_days
                            last addition                        closing_late
an:{S}:closing      SET     DAY_KEY_GRACE_SECONDS after its      closing_late late_days
                            last addition                        closed_late
an:{S}:removed      STRING  none: one per removed site id        mark_removed hits.lua
an:salt:D           STRING  until 12:00 UTC two days after D     salt         salt
an:lock:N           STRING  LOCK_SECONDS (60 s), renewed by      lock,        lock,
                            renew.lua every 10 s of a run,       renew.lua    renew.lua,
                            deleted by unlock.lua at its end                  unlock.lua
an:deployment       STRING  none: one per Redis dataset          deployment   deployment
==================  ======  ===================================  ===========  ==============

`delete_site` removes every key of a site (SCAN by `SiteKeys.pattern`) but `removed`.

restore.lua adds to the day keys when a Redis that came back empty is given its history
again (recovery.py).

S is the site id, D a site-local ISO date (2026-11-28), M the minute number (unix time // 60),
B the dedup bucket number (unix time // DEDUP_SECONDS), W a writer (one per worker process,
random), N a job name.

Field meanings:
- seen: member = visitor id (8 raw bytes), score = unix time of that visitor's last hit.
  "Online" is the number of members with a score in the last `online_window` seconds; the
  same set tells the hit script whether a visit is still going (30-minute rule).
- carried: the readers carried into day D: those online across its midnight, whose
  first hit of D took their id under the day before's salt out of `seen`, and those whose
  first hit of D came within live.CARRY_NEW_READERS_SECONDS of it. Member = that id,
  score = its last hit (0 when none was in `seen`). A hit of the day before that is
  written after it (another worker's buffer, a resend) goes on with that time instead of
  starting a second visit, and does not put the reader into `seen` twice. About 110 B a
  reader (Redis 7.0, 60,000 readers), for a day.
- day: ``visits``, ``pageviews``, ``bots`` (hits dropped as robots), ``rate_limited``,
  ``duplicates`` (resends of a hit id).
- uv: the day's distinct visitor ids (HyperLogLog, standard error 0.81 %).
- paths: URL path -> pageviews, at most PATH_CAP fields plus ``(other)``.
- refs: external referrer host -> visits, at most PATH_CAP fields plus ``(other)``.
- batches: "writer id:batch number" -> "1", for each writer's last REPLAY_BATCHES
  batches that counted hits of day D. The rollup copies it to SQL with the day's counts
  (one snapshot.lua call, so the two always agree) and a restore puts it back: after a
  wipe, a batch sent again finds there whether the restored day already holds it.
- total: ``visits`` and ``pageviews`` counted since the site began (its baseline is in SQL),
  and the marker ``restored``: present once the site's history has been put back into
  Redis (recovery.py), its value the random token of the restore that put it there (a
  worker that reads a token it has not seen offers its salts again). A total without it
  is a Redis that came back empty, or a new site.
- rate: the flood guards' counts in that minute: visitor id -> counted pageviews (at most
  60 a minute), and "@" + address id -> visits started from that address (the site's
  `address_visit_limit`, 120 by default). Each guard weighs this minute and the one before
  it into a sliding minute.
- ids: the hit ids counted in that bucket, each as 8 bytes hashed with its visitor's id
  (visitor.dedup_id). A resend of an id found in this bucket or the one before is not
  counted, so an id is remembered for at least DEDUP_SECONDS (at most twice that); nor is
  a send found in the bucket after its own (its resend, written first).
- writer: batch number -> the script's answer, for the last REPLAY_BATCHES batches this
  writer applied for the site (live.py). A batch sent again after a lost reply (a timeout
  after Redis ran it) finds its number there and is not counted again (buffer.py); an
  older batch's entry is dropped as each new one is added, so the hash stays small. A
  wipe takes it; `batches` then answers for the days the restore gave back.
- late: site-local dates (ISO) that a batch wrote to after the day could have been closed
  into the SQL history (its midnight plus the rollup's grace, less a margin for clocks).
  The next finalise closes each of them again (rollup.py): it moves the date to `closing`
  first, so that a batch written during the close marks it late anew.
- closing: the dates of `late` whose closing again has begun; each is removed once its
  close has been written, so a close that fails (Redis or the database down) is tried
  again by the next finalise instead of losing the late hits.
- removed: when the last site of the id that `site delete` removed was created (unix time,
  six decimals). hits.lua drops the batches of that site and of any site of the id
  created before it ("x"): a worker that could not write while the site was removed writes
  them later, and they must neither bring its keys back nor count for a new site of the
  same id (created later).
- deployment: "ID TIME": a random id of the deployment this Redis serves, set by the first
  process that finds none (SET NX), and the unix time it set it. A spool file names it, so
  that only this deployment's workers write it (spool.py); a Redis that lost its data gets
  another.
- restore: a day's HyperLogLog from SQL, held only while restore.lua merges it into uv.
- lock: a random token; only the run that set it renews or deletes it (renew.lua and
  unlock.lua compare first).
- salt: 32 random bytes keying the visitor hash for date D; gone after two days, so visitor
  ids cannot be linked across days or reversed once the salt is deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

PREFIX = "an"
# Bytes of every id a hit is written with (visitor, address, hit id's hash: visitor.py);
# the fields of `seen`, `rate` and `ids` are these ids.
ID_BYTES = 8
# A day's keys outlive the day by this much so that a rollup missed while the service was
# down can still catch up from Redis.
DAY_KEY_GRACE_SECONDS = 8 * 86400
DEDUP_SECONDS = 300
# Each hash must outlive its own period and the next, in which it is the "previous" one.
RATE_KEY_SECONDS = 120
IDS_KEY_SECONDS = 2 * DEDUP_SECONDS
# A day's record of batches needs to outlive only the checkpoint that copies it to SQL
# and the resends of a batch that may be in flight: an hour, not the day's 8 days (each
# writer and site-day holds up to 16 batches, about 520 bytes). Put back by a restore, it
# is the only record of the batches the wipe took, and lives as long as a writer's
# (live.WRITER_KEY_SECONDS): a spool file is written whenever a worker takes it.
BATCHES_KEY_SECONDS = 3600
PATH_CAP = 5000
OTHER = "(other)"
# The field of the total hash that says the site's history is in Redis (see recovery.py).
RESTORED = "restored"


def salt(day: date) -> str:
    return f"{PREFIX}:salt:{day.isoformat()}"


def lock(name: str) -> str:
    return f"{PREFIX}:lock:{name}"


DEPLOYMENT = f"{PREFIX}:deployment"


@dataclass(frozen=True, slots=True)
class SiteKeys:
    """The keys of one site. Day keys take the site-local date."""

    site_id: str

    @property
    def tag(self) -> str:
        return f"{PREFIX}:{{{self.site_id}}}"

    @property
    def pattern(self) -> str:
        """A SCAN pattern matching every key of the site (and no other site's)."""
        return f"{self.tag}:*"

    @property
    def seen(self) -> str:
        return f"{self.tag}:seen"

    def carried(self, d: date) -> str:
        return f"{self.tag}:carried:{d.isoformat()}"

    @property
    def total(self) -> str:
        return f"{self.tag}:total"

    def day(self, d: date) -> str:
        return f"{self.tag}:day:{d.isoformat()}"

    def uv(self, d: date) -> str:
        return f"{self.tag}:uv:{d.isoformat()}"

    def paths(self, d: date) -> str:
        return f"{self.tag}:paths:{d.isoformat()}"

    def refs(self, d: date) -> str:
        return f"{self.tag}:refs:{d.isoformat()}"

    def batches(self, d: date) -> str:
        return f"{self.tag}:batches:{d.isoformat()}"

    def restore(self, d: date) -> str:
        return f"{self.tag}:restore:{d.isoformat()}"

    def rate(self, minute: int) -> str:
        return f"{self.tag}:rate:{minute}"

    def ids(self, bucket: int) -> str:
        return f"{self.tag}:ids:{bucket}"

    def writer(self, writer_id: str) -> str:
        return f"{self.tag}:writer:{writer_id}"

    @property
    def late(self) -> str:
        return f"{self.tag}:late"

    @property
    def removed(self) -> str:
        return f"{self.tag}:removed"

    @property
    def closing(self) -> str:
        return f"{self.tag}:closing"
