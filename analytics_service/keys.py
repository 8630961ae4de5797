"""The Redis key schema. Every key the service reads or writes is built here and nowhere else.

All of a site's keys carry the hash tag ``{site}``, so the Lua scripts that touch several of
them at once run unchanged on Redis Cluster (one slot per site). Day keys carry the
site-local date; they are never reset, they expire.

================  ======  ===================================  ==========  ===============
key               type    TTL                                  written by  read by
================  ======  ===================================  ==========  ===============
an:{S}:seen       ZSET    members older than `seen_horizon` s  hit.lua     counter.lua
                          trimmed on write; key expires after
                          that much idle time
an:{S}:day:D      HASH    until local day D ends + 8 days      hit.lua     counter.lua,
                                                                           rollup
an:{S}:uv:D       HLL     as the day hash                      hit.lua     counter.lua,
                                                                           rollup
an:{S}:paths:D    HASH    as the day hash                      hit.lua     rollup, stats
an:{S}:refs:D     HASH    as the day hash                      hit.lua     rollup, stats
an:{S}:total      HASH    none: one per site, three fields     hit.lua,    counter.lua,
                                                               restore     rollup
an:{S}:restore:D  STRING  60 s; deleted by the script that     restore    restore
                          made it
an:{S}:rate:M     HASH    RATE_KEY_SECONDS (120 s)             hit.lua     hit.lua
an:{S}:hit:ID     STRING  DEDUP_SECONDS (300 s)                hit.lua     hit.lua
an:salt:D         STRING  until 00:00 UTC two days after D     visitor.py  visitor.py
an:lock:N         STRING  LOCK_SECONDS (900 s), or deleted     lock.py     lock.py,
                          by unlock.lua when the run ends                  unlock.lua
================  ======  ===================================  ==========  ===============

Every day key (day, uv, paths, refs) is also added to by restore.lua ("restore") when a
Redis that came back empty is given its history again.

`site delete` removes every key of a site, found by SCAN with `SiteKeys.pattern`
(an:{S}:*, in batches; site_removal.py).

S is the site id, D a site-local ISO date (2026-11-28), M the minute number (unix time // 60),
ID a hit id chosen by the client, N a job name.

Field meanings:
- seen: member = visitor id (8 raw bytes), score = unix time of that visitor's last hit.
  "Online" is the number of members with a score in the last `online_window` seconds; the
  same set tells the hit script whether a visit is still going (30-minute rule).
- day: ``visits``, ``pageviews``, ``bots`` (hits dropped as robots), ``rate_limited``.
- uv: the day's distinct visitor ids (HyperLogLog, standard error 0.81 %).
- paths: URL path -> pageviews, at most PATH_CAP fields plus ``(other)``.
- refs: external referrer host -> visits, at most PATH_CAP fields plus ``(other)``.
- total: ``visits`` and ``pageviews`` counted since the site began (its baseline is in SQL),
  and the marker ``restored``: present once the site's history has been put back into
  Redis (recovery.py). A total without it is a Redis that came back empty, or a new site.
- rate: visitor id -> pageviews in that minute (the 60-a-minute flood guard).
- hit: present while a hit id is in the dedup window; a resend of the same id is not counted.
- restore: a day's HyperLogLog from SQL, held only while restore.lua merges it into uv.
- lock: a random token; only the run that set it deletes it (unlock.lua compares first).
- salt: 32 random bytes keying the visitor hash for date D; gone after two days, so visitor
  ids cannot be linked across days or reversed once the salt is deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

PREFIX = "an"
# A day's keys outlive the day by this much so that a rollup missed while the service was
# down can still catch up from Redis.
DAY_KEY_GRACE_SECONDS = 8 * 86400
DEDUP_SECONDS = 300
RATE_KEY_SECONDS = 120
PATH_CAP = 5000
OTHER = "(other)"
# The field of the total hash that says the site's history is in Redis (see recovery.py).
RESTORED = "restored"


def salt(day: date) -> str:
    return f"{PREFIX}:salt:{day.isoformat()}"


def lock(name: str) -> str:
    return f"{PREFIX}:lock:{name}"


@dataclass(frozen=True, slots=True)
class SiteKeys:
    """The keys of one site. Day keys take the site-local date."""

    site_id: str

    @property
    def tag(self) -> str:
        return f"{PREFIX}:{{{self.site_id}}}"

    @property
    def pattern(self) -> str:
        """SCAN MATCH pattern of every key of this site, and of no other site's: the tag
        ends with '}', and site ids hold no glob characters. Used to delete a site."""
        return f"{self.tag}:*"

    @property
    def seen(self) -> str:
        return f"{self.tag}:seen"

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

    def restore(self, d: date) -> str:
        return f"{self.tag}:restore:{d.isoformat()}"

    def restore_script_keys(self, days: list[date]) -> list[str]:
        """KEYS for restore.lua: the total, then five keys per day."""
        out = [self.total]
        for d in days:
            out += [self.day(d), self.uv(d), self.paths(d), self.refs(d), self.restore(d)]
        return out

    def rate(self, minute: int) -> str:
        return f"{self.tag}:rate:{minute}"

    def hit(self, hit_id: str) -> str:
        return f"{self.tag}:hit:{hit_id}"

    def hit_script_keys(self, d: date, minute: int, hit_id: str | None) -> list[str]:
        """KEYS for hit.lua, in the order its header documents."""
        keys = [
            self.seen,
            self.day(d),
            self.uv(d),
            self.total,
            self.paths(d),
            self.refs(d),
            self.rate(minute),
        ]
        if hit_id is not None:
            keys.append(self.hit(hit_id))
        return keys

    def counter_script_keys(self, d: date) -> list[str]:
        """KEYS for counter.lua, in the order its header documents."""
        return [self.seen, self.day(d), self.uv(d), self.total]
