"""Ingestion: where a hit goes.

A hit passes these steps in order; each either hands it on or stops it:

1. `parse_payload`      body -> fields (no duplicate keys)       (400 malformed)
2. `hit_request`        field shapes; the User-Agent cut to MAX_USER_AGENT_CHARS
3. `Ingestor._site`     the site, from the worker's cache        (404 unknown site)
4. `check_origin`       Origin header among the site's origins   (403)
5. `page_path`          url's origin is one of the site's; path  (400 / 403)
6. `external_referrer`  referrer host, unless it is the site itself or not a host name
7. `is_bot`             robots are tallied, not counted          (dropped: bot)
8. `visitor_id`         keyed hash of salt, site, IP, User-Agent; `address_id` of the IP
   -> a CheckedHit, handed to the store (live.py), which buffers it (buffer.py) and
   answers at once; its writer thread then counts it, in a batch of the site's hits:
9. hits.lua             one call per site and batch: the flood guards, dedup, the visit
                        rule, counters (dropped: rate_limited, duplicate; tallied per day)

Steps 1-6 only read the request and the cached site, so a refused hit changes nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import NamedTuple
from urllib.parse import SplitResult, urlsplit

from crawlerdetect.providers.crawlers import data as CRAWLER_PATTERNS
from crawlerdetect.providers.exclusions import data as EXCLUDED_PATTERNS

from . import keys
from .errors import ApiError
from .live import ACCEPTED, BOT, CheckedHit, LiveStore, Outcome
from .paths import MAX_PATH_CHARS, stored_path
from .sites import (
    DEFAULT_PORTS,
    Site,
    SiteCache,
    ascii_host,
    netloc,
    origin_port,
    without_www,
)
from .sitetime import day_end, day_start, local_date
from .visitor import SaltStore, address_id, dedup_id, visitor_id

MAX_BODY_BYTES = 8 * 1024
MAX_URL_CHARS = 4096
# Real browsers send a few hundred characters; the crawler patterns run over the whole
# string, and the visitor hash and bot cache hold it, so what a client sends is cut here.
MAX_USER_AGENT_CHARS = 512
HIT_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
# Control characters (NUL cannot go into PostgreSQL text) and lone surrogates (not UTF-8):
# a path or host holding one could be counted in Redis but never rolled up into SQL.
UNSTORABLE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
# A DNS name is at most 253 characters; longer "hosts" are not worth an IDNA check.
MAX_HOST_CHARS = 253
MAX_ORIGIN_CHARS = 300


class HitRequest(NamedTuple):
    # NamedTuples, this and CheckedHit, rather than frozen dataclasses: every hit makes one
    # of each, and a frozen dataclass sets each field through object.__setattr__ (1.5 µs
    # against 0.6 for twelve fields here); a tuple is as immutable.
    site: str
    url: str
    referrer: str | None
    hit_id: str | None
    ip: str
    user_agent: str
    origin: str | None


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # Parsers disagree on which of two equal keys wins; a body that has them is refused.
    data = dict(pairs)
    if len(data) != len(pairs):
        raise _DuplicateKey
    return data


# Made once: json.loads with a hook builds a new decoder on every call.
_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)


def parse_payload(body: bytes) -> dict[str, object]:
    """The JSON object of a POSTed body (a hit, sent as application/json or text/plain)."""
    try:
        # What json.loads does with bytes: UTF-8, -16 or -32, told by the first bytes.
        data = _DECODER.decode(body.decode(json.detect_encoding(body), "surrogatepass"))
    except _DuplicateKey:
        raise ApiError(400, "invalid_json", "the body holds a key twice") from None
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        raise ApiError(400, "invalid_json", "the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    return data


def _optional_str(fields: Mapping[str, object], name: str) -> str | None:
    value = fields.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ApiError(400, "invalid_field", f"'{name}' must be a string")
    return value


def hit_request(
    fields: Mapping[str, object], *, ip: str, user_agent: str, origin: str | None
) -> HitRequest:
    """Check the fields' shapes: site and url are required strings, referrer and id optional."""
    site = _optional_str(fields, "site")
    url = _optional_str(fields, "url")
    if site is None:
        raise ApiError(400, "missing_field", "'site' is required")
    if url is None:
        raise ApiError(400, "missing_field", "'url' is required")
    if len(url) > MAX_URL_CHARS:
        raise ApiError(400, "invalid_field", f"'url' is longer than {MAX_URL_CHARS} characters")
    # An id, when given, is an id: empty or null is not taken for "none" (the document
    # says 8 to 64 characters, and a client sending "" meant something else).
    raw_id = fields.get("id")
    hit_id = raw_id if isinstance(raw_id, str) and HIT_ID.fullmatch(raw_id) else None
    if "id" in fields and hit_id is None:
        raise ApiError(400, "invalid_field", "'id' must be 8 to 64 characters A-Z a-z 0-9 _ -")
    return HitRequest(
        site=site,
        url=url,
        referrer=_optional_str(fields, "referrer"),
        hit_id=hit_id,
        ip=ip,
        user_agent=user_agent[:MAX_USER_AGENT_CHARS],
        origin=origin,
    )


def url_origin(parts: SplitResult) -> str:
    """`scheme://host[:port]` of a URL as a site's origins are stored (ASCII host, default
    port dropped); ValueError for user info, a host that cannot be one, or a port no
    browser would write."""
    if parts.username is not None or parts.password is not None:
        raise ValueError("user info")
    port = origin_port(parts)
    host = ascii_host(parts.hostname) if parts.hostname else ""
    return f"{parts.scheme}://{netloc(host, port)}"


@lru_cache(maxsize=1024)
def _header_origin(value: str) -> str:
    try:
        return url_origin(urlsplit(value))
    except ValueError:
        return value  # not a URL: it matches no site


def check_origin(site: Site, origin: str | None) -> None:
    """The page that sent the hit must be one of the site's: its Origin header, or for the
    pixel (images carry no Origin) its Referer. Either is compared by its origin."""
    if origin is None or not site.origins:
        return
    # Only the scheme and authority matter, and only they are remembered: a handful of
    # distinct values a day in real traffic.
    head = "/".join(origin.split("/", 3)[:3])
    if len(head) > MAX_ORIGIN_CHARS or _header_origin(head) not in site.allowed_origins:
        raise ApiError(403, "origin_not_allowed", f"origin {origin!r} is not allowed for this site")


@lru_cache(maxsize=4096)
def _authority(scheme: str, authority: str) -> tuple[str, str]:
    """(origin, ASCII host) of a URL's scheme and authority, worked out once: a site's
    pages share a handful of them, and this is the costly part of a page URL."""
    parts = SplitResult(scheme, authority, "", "", "")
    return url_origin(parts), ascii_host(parts.hostname) if parts.hostname else ""


@dataclass(frozen=True, slots=True)
class _Page:
    scheme: str
    origin: str
    host: str
    path: str
    storable: bool


@lru_cache(maxsize=4096)
def _page(url: str) -> _Page:
    """What page_path needs of a URL, whichever site it is for; ValueError when it is not a
    URL. Remembered: a site's hits name the same pages again and again, and urlsplit's own
    cache holds 128 URLs, fewer than a portal has pages (a miss costs about 8 µs)."""
    parts = urlsplit(url)
    # Longer than any host name: not worth remembering (nor likely to be valid).
    work = _authority if len(parts.netloc) <= MAX_ORIGIN_CHARS else _authority.__wrapped__
    origin, host = work(parts.scheme, parts.netloc)
    return _Page(
        scheme=parts.scheme,
        origin=origin,
        host=host,
        path=stored_path(parts.path or "/"),
        storable=UNSTORABLE.search(url) is None,
    )


def page_path(site: Site, url: str) -> tuple[str, str]:
    """(host, path) of the page; the query string and fragment are dropped."""
    try:
        # Only URLs of a usual length are remembered: at most about 6 MB a worker (4,096
        # URLs of 512 characters), well under 1 MB with real URLs.
        page = _page(url) if len(url) <= MAX_PATH_CHARS else _page.__wrapped__(url)
    except ValueError:
        raise ApiError(400, "invalid_url", "'url' is not a valid URL") from None
    if page.scheme not in DEFAULT_PORTS or not page.host:
        raise ApiError(403, "url_not_allowed", "'url' must be an http(s) URL")
    if not page.storable:
        raise ApiError(400, "invalid_url", "'url' holds control characters or invalid text")
    if site.origins and page.origin not in site.allowed_origins:
        raise ApiError(403, "url_not_allowed", f"{page.origin!r} is not one of the site's origins")
    return page.host, page.path


@lru_cache(maxsize=4096)
def _host_name(host: str) -> str:
    """`host` in ASCII if it is a host name or an IP address, else "" (referrers are stored
    and shown to people: no markup or other junk passes for a host)."""
    try:
        return ascii_host(host)
    except ValueError:
        return ""


def external_referrer(site: Site, page_host: str, referrer: str | None) -> str:
    """The referrer's host when it is another site; "" for none, the site itself, or junk."""
    if not referrer:
        return ""
    try:
        parts = urlsplit(referrer)
        # A fully qualified name's final dot (portal.example.) names the same host.
        host = (parts.hostname or "").lower().removesuffix(".")
    except ValueError:
        return ""
    if parts.scheme not in DEFAULT_PORTS or not host or len(host) > MAX_HOST_CHARS:
        return ""
    # Again once mapped: an ideographic or full-width full stop (portal.example\u3002) is a
    # final dot only in the ASCII form.
    host = _host_name(host).removesuffix(".")
    bare = without_www(host)
    return "" if bare == without_www(page_host) or bare in site.own_hosts else host


@dataclass(frozen=True, slots=True)
class _SiteDay:
    """A site's current local day, worked out once per site and minute rather than on
    every hit (zoneinfo arithmetic is not free)."""

    timezone: str
    day: date
    start: float  # unix time of the local midnight that began `day`
    end: float  # unix time of the local midnight that ends it
    minute: int


# Distinct User-Agents seen recently; real traffic repeats a few hundred of them. At most
# MAX_USER_AGENT_CHARS each, so the cache holds under 3 MB per worker.
_BOT_CACHE_SIZE = 4096
# crawlerdetect's catch-all pattern starts with a greedy run of name characters before
# `(bot|crawl|...)`. In a search that run may be empty, so it changes no answer, but from
# each starting position the engine runs it to the end of the run and backs off one
# character at a time: quadratic in the User-Agent's length. 512 letters cost 20-40 ms
# (one client sending distinct ones took a worker's hits from ~900/s to ~40/s); without the
# prefix, the same check is linear, as for every other pattern.
_GREEDY_PREFIX = r"[a-z0-9\-_]*"


@lru_cache(maxsize=1)
def crawler_patterns() -> tuple[re.Pattern[str], re.Pattern[str]]:
    """(exclusions, crawlers): crawlerdetect's two lists, compiled as crawlerdetect compiles
    them, the catch-all's redundant greedy prefix dropped (above)."""
    exclusions = re.compile(f"({'|'.join(EXCLUDED_PATTERNS)})", re.IGNORECASE)
    crawlers = "|".join(p.removeprefix(_GREEDY_PREFIX) for p in CRAWLER_PATTERNS)
    return exclusions, re.compile(f"({crawlers})", re.IGNORECASE)


def is_crawler(user_agent: str) -> bool:
    """crawlerdetect's answer (CrawlerDetect.is_crawler): the User-Agent without the
    parts every browser sends (Mozilla/5.0, AppleWebKit/...) names a robot."""
    exclusions, crawlers = crawler_patterns()
    agent = exclusions.sub("", user_agent.strip())
    return bool(agent) and crawlers.search(agent) is not None


class Ingestor:
    """Runs the steps above for one hit and hands it to the store. One instance per app,
    shared by its threads."""

    def __init__(self, sites: SiteCache, salts: SaltStore, store: LiveStore) -> None:
        self.sites = sites
        self.salts = salts
        self.store = store
        self._is_crawler = lru_cache(maxsize=_BOT_CACHE_SIZE)(is_crawler)
        self._days: dict[str, _SiteDay] = {}

    def warm(self, sites: Iterable[Site], now: datetime) -> None:
        """What a worker's first hits would otherwise pay for while others queue behind
        them: the crawler patterns are compiled on first use (45 ms on the bench machine),
        and each salt is one Redis round trip."""
        crawler_patterns()
        for day in sorted({day for site in sites for day in self._salt_days(site, now)}):
            self.salts.get(day, now)

    def salted(self, now: datetime) -> bool:
        """Whether this worker holds the salts its sites' hits need at `now`, so that it
        takes them while Redis is down; False before it has read a site."""
        sites = self.sites.known()
        return bool(sites) and all(
            self.salts.holds(day) for site in sites for day in self._salt_days(site, now)
        )

    @staticmethod
    def _salt_days(site: Site, now: datetime) -> tuple[date, ...]:
        """The dates whose salts a hit of `site` at `now` needs (`check`): the day's and,
        in the day's first `seen_horizon` seconds, the day before's (a worker started then
        without it refused every hit with 503 while Redis was away)."""
        day = local_date(now, site.tz)
        if now.timestamp() - day_start(day, site.tz).timestamp() < site.seen_horizon:
            return (day - timedelta(days=1), day)
        return (day,)

    def is_bot(self, user_agent: str) -> bool:
        return not user_agent.strip() or self._is_crawler(user_agent)

    def _site(self, site_id: str) -> Site:
        site = self.sites.get(site_id)
        if site is None:
            raise ApiError(404, "unknown_site", f"no site {site_id!r}")
        return site

    def _site_day(self, site: Site, now: datetime, ts: float) -> _SiteDay:
        minute = int(ts // 60)
        cached = self._days.get(site.id)
        if (
            cached is not None
            and cached.minute == minute
            and cached.timezone == site.timezone
            and cached.start <= ts < cached.end
        ):
            return cached
        day = local_date(now, site.tz)
        fresh = _SiteDay(
            timezone=site.timezone,
            day=day,
            start=day_start(day, site.tz).timestamp(),
            end=day_end(day, site.tz).timestamp(),
            minute=minute,
        )
        self._days[site.id] = fresh
        return fresh

    def check(self, hit: HitRequest, now: datetime) -> CheckedHit:
        """Every step but the counting: what the store needs, or an ApiError."""
        site = self._site(hit.site)
        check_origin(site, hit.origin)
        page_host, path = page_path(site, hit.url)
        ref_host = external_referrer(site, page_host, hit.referrer)
        ts = now.timestamp()
        current = self._site_day(site, now, ts)
        bot = self.is_bot(hit.user_agent)
        vid = address = previous = dedup = b""
        if not bot:
            salt = self.salts.get(current.day, now)
            vid = visitor_id(salt, site.id, hit.ip, hit.user_agent)
            address = address_id(salt, site.id, hit.ip)
            if hit.hit_id is not None:
                dedup = dedup_id(vid, hit.hit_id)
            if ts - current.start < site.seen_horizon:
                # Ids change with the daily salt; yesterday's id lets the script replace
                # this reader's pre-midnight entry in the online set instead of adding one.
                # Its address id and its hit id's hash under yesterday's salt too: the flood
                # guards and the dedup look across midnight as well (live.CheckedHit).
                yesterday = self.salts.get(current.day - timedelta(days=1), now)
                previous = visitor_id(yesterday, site.id, hit.ip, hit.user_agent)
                previous += address_id(yesterday, site.id, hit.ip)
                if hit.hit_id is not None:
                    previous += dedup_id(previous[: keys.ID_BYTES], hit.hit_id)
        return CheckedHit(
            site=site,
            ts=ts,
            day=current.day,
            day_start=current.start,
            day_end=current.end,
            path=path,
            ref_host=ref_host,
            bot=bot,
            visitor=vid,
            address=address,
            previous=previous,
            dedup=dedup,
        )

    def ingest(self, hit: HitRequest, now: datetime) -> Outcome:
        """Check the hit and hand it to the store's buffer. Only a robot is known to be
        dropped at once; the flood guards and the dedup decide when the buffer is written.
        BufferFull when the buffer is full."""
        checked = self.check(hit, now)
        self.store.submit(checked)
        return BOT if checked.bot else ACCEPTED
