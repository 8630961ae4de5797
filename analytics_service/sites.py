"""Sites: the portals that embed the counter. Stored in SQL, cached in each worker.

A site's settings are read on every hit, so each worker keeps them in memory for
`ANALYTICS_SITE_CACHE_SECONDS` (30 s by default): a change made with `site update` reaches
every worker within that time, and the hit path queries SQL once per site and period at
most. While the database cannot be reached, a site's settings as last read stay in use.

Origins are stored as browsers send them: an internationalised domain name
(`https://liênhiệphội.vn`) in its ASCII form (`https://xn--linhiphi-l1a7657ezfa.vn`),
which is what a browser puts in `Origin` and in `location.href`. People are shown the
Unicode form (`display_origin`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
import secrets
import threading
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from urllib.parse import SplitResult, urlsplit
from zoneinfo import ZoneInfo

import idna
import sqlalchemy as sa
from cachetools import TTLCache
from sqlalchemy.engine import Engine

from . import db
from .keys import SiteKeys
from .logs import CONTROL, db_reason
from .sitetime import UnloadableZone, parse_timezone, stored_timezone

SITE_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
DEFAULT_TIMEZONE = "Asia/Ho_Chi_Minh"
DEFAULT_ONLINE_WINDOW = 300
# The 30-minute visit rule needs a visitor's last hit for at least this long.
VISIT_IDLE_SECONDS = 1800
MAX_ONLINE_WINDOW = 86400
MAX_BASELINE = 10**15
# New visits a minute from one client address: generous for a school or an office behind
# one NAT, small next to what a client rotating its User-Agent could add (README).
DEFAULT_ADDRESS_VISIT_LIMIT = 120
MAX_ADDRESS_VISIT_LIMIT = 1_000_000
DEFAULT_PORTS = {"http": 80, "https": 443}
HEX = frozenset("0123456789abcdef")
NOT_IN_A_NAME = re.compile(f"{CONTROL.pattern}|[\ud800-\udfff]")
# A port as browsers serialise it: no leading zeros, no port 0.
CANONICAL_PORT = re.compile(r"[1-9][0-9]{0,4}")
# An ASCII host a browser sends unchanged (lowercased): labels of letters, digits, '-' and
# '_' (not valid in DNS names, but intranet hosts have them and browsers accept them).
ASCII_HOST = re.compile(r"(?:[a-z0-9_-]+\.)*[a-z0-9_-]+\.?")
# Distinct non-ASCII or punycode hosts remembered: a site has a handful of origins, and a
# flood of made-up ones only costs the IDNA work again.
IDNA_CACHE_SIZE = 4096

log = logging.getLogger(__name__)


class SiteError(ValueError):
    """Input a user gave that cannot make a valid site. Nothing was changed."""


class SiteNotFound(LookupError):
    pass


@dataclass(frozen=True)
class Site:
    id: str
    name: str
    timezone: str
    origins: tuple[str, ...] = ()
    online_window: int = DEFAULT_ONLINE_WINDOW
    baseline_visits: int = 0
    baseline_pageviews: int = 0
    address_visit_limit: int = DEFAULT_ADDRESS_VISIT_LIMIT
    # When it was created (unix time; 0 until it is stored): a site removed and created
    # again under its id is another site (site_removal.py).
    created: float = field(default=0.0, compare=False)
    # Derived once when the site is loaded, so the hit path does no parsing.
    tz: ZoneInfo = field(init=False, repr=False, compare=False)
    allowed_origins: frozenset[str] = field(init=False, repr=False, compare=False)
    # Its origins' hosts without a leading "www.": to its referrers, www.portal.example
    # and portal.example are the site itself (one usually redirects to the other).
    own_hosts: frozenset[str] = field(init=False, repr=False, compare=False)
    keys: SiteKeys = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Names given for a new site or a change are checked by build_site (parse_timezone);
        # a stored one only has to load (sitetime.stored_timezone).
        object.__setattr__(self, "tz", stored_timezone(self.timezone))
        # Origins are stored normalised, as ingest.url_origin builds a hit URL's origin.
        object.__setattr__(self, "allowed_origins", frozenset(self.origins))
        object.__setattr__(
            self,
            "own_hosts",
            frozenset(without_www(urlsplit(o).hostname or "") for o in self.origins),
        )
        object.__setattr__(self, "keys", SiteKeys(self.id))

    @property
    def seen_horizon(self) -> int:
        return max(VISIT_IDLE_SECONDS, self.online_window)

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "timezone": self.timezone,
            "origins": list(self.origins),
            "online_window": self.online_window,
            "baseline_visits": self.baseline_visits,
            "baseline_pageviews": self.baseline_pageviews,
            "address_visit_limit": self.address_visit_limit,
        }


def validate_id(site_id: str) -> str:
    if not SITE_ID.fullmatch(site_id):
        raise SiteError(
            f"invalid site id {site_id!r}: use 1 to 63 characters a-z, 0-9 and '-', "
            "starting with a letter or digit"
        )
    return site_id


@lru_cache(maxsize=IDNA_CACHE_SIZE)
def _idna_ascii(host: str) -> str:
    try:
        # UTS 46 mapping (case folding, NFC, width), non-transitional as browsers do it
        # (faß.de stays faß, not fass), then the IDNA 2008 checks of every label.
        return idna.encode(host, uts46=True).decode("ascii")
    except UnicodeError as exc:  # idna.IDNAError is one
        raise SiteError(f"invalid host {host!r}: {exc}") from None


def without_www(host: str) -> str:
    """`host` without a leading "www.", as referrers are compared with the site's own."""
    return host.removeprefix("www.")


def ascii_host(host: str) -> str:
    """The host as a browser sends it in `Origin` and in the page's URL: lowercase ASCII,
    an internationalised name in its punycode form (IDNA 2008 with the UTS 46 mapping:
    `liênhiệphội.vn` and `LIÊNHIỆPHỘI.VN` -> `xn--linhiphi-l1a7657ezfa.vn`), an IPv6
    address compressed, without brackets. SiteError (a ValueError) for a host that cannot
    be one. Cheap for a plain ASCII host: the hit path calls it."""
    lowered = host.lower()
    if ":" in lowered:
        # Not with a zone id (fe80::1%eth0): it names an interface of the reader's own
        # machine, never a site, and may hold any text.
        try:
            if "%" in lowered:
                raise ValueError("zone id")
            return ipaddress.IPv6Address(lowered).compressed
        except ValueError:
            raise SiteError(f"invalid host {host!r}") from None
    if lowered.isascii() and "xn--" not in lowered:
        if not ASCII_HOST.fullmatch(lowered):
            raise SiteError(f"invalid host {host!r}")
        return lowered
    return _idna_ascii(lowered)


# Scripts one label may mix and still be shown in Unicode, as browsers allow them (Unicode's
# "highly restrictive" profile, which Chromium applies): Latin with Japanese, Chinese or
# Korean writing. Any other mix (Latin with Cyrillic or Greek: a Cyrillic o in "google")
# is a disguise.
_MIXABLE_SCRIPTS = (
    frozenset({"LATIN", "CJK", "HIRAGANA", "KATAKANA", "KATAKANA-HIRAGANA"}),
    frozenset({"LATIN", "CJK", "BOPOMOFO"}),
    frozenset({"LATIN", "CJK", "HANGUL"}),
)


def _one_script(label: str) -> bool:
    """Whether a label's letters are of one script (or an allowed mix): a letter's script is
    the first word of its Unicode name (LATIN, CYRILLIC, CJK...)."""
    scripts = {
        unicodedata.name(ch, "?").split(" ", 1)[0]
        for ch in label
        if unicodedata.category(ch).startswith("L")
    }
    return len(scripts) <= 1 or any(scripts <= allowed for allowed in _MIXABLE_SCRIPTS)


# Cyrillic letters that pass for Latin ones (Chromium's list): a label of them alone reads
# as a Latin name (paypal spelt in Cyrillic), unless the name is under a Cyrillic TLD.
_LATIN_ALIKE_CYRILLIC = frozenset(
    "\u0430\u0441\u0501\u0435\u04bb\u0456\u0458\u04cf\u043e\u0440\u051b"
    "\u0455\u051d\u0445\u0443\u044a\u044c\u04bd\u043f\u0433\u0475\u0461"
)


def _passes_for_latin(label: str) -> bool:
    letters = [ch for ch in label if unicodedata.category(ch).startswith("L")]
    return bool(letters) and all(ch in _LATIN_ALIKE_CYRILLIC for ch in letters)


def _disguised(labels: list[str]) -> bool:
    """Whether a decoded host would read as another: a label mixing scripts, or one of
    Cyrillic look-alikes of Latin letters under a TLD that is not Cyrillic."""
    if not all(_one_script(label) for label in labels):
        return True
    cyrillic_tld = any(unicodedata.name(ch, "").startswith("CYRILLIC") for ch in labels[-1])
    return not cyrillic_tld and any(_passes_for_latin(label) for label in labels)


def unicode_host(host: str) -> str:
    """The host as people read it: punycode labels shown in Unicode, unless that would
    disguise it as another (a referrer is anyone's to send, and "google.com" with a Cyrillic
    o (U+043E) would read as google.com): then the whole host is shown as sent, as browsers
    show it."""
    if "xn--" not in host:
        return host
    try:
        shown = idna.decode(host)
    except UnicodeError:
        return host
    return host if _disguised(shown.split(".")) else shown


def display_origin(origin: str) -> str:
    """`https://xn--linhiphi-l1a7657ezfa.vn` -> `https://liênhiệphội.vn`, for people."""
    parts = urlsplit(origin)
    if not parts.hostname:
        return origin
    return f"{parts.scheme}://{netloc(unicode_host(parts.hostname), parts.port)}"


def netloc(host: str, port: int | None) -> str:
    """host[:port] as origins are stored: IPv6 in brackets (callers drop default ports)."""
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}" if port else shown


def origin_port(parts: SplitResult) -> int | None:
    """The port an origin of `parts` holds: None for none or the scheme's default;
    ValueError for one no browser writes (0, leading zeros, out of range)."""
    host_port = parts.netloc.rpartition("@")[2].rpartition("]")[2]
    _, colon, raw = host_port.partition(":")
    if colon and not CANONICAL_PORT.fullmatch(raw):
        raise ValueError("port")
    port = parts.port
    return None if port == DEFAULT_PORTS.get(parts.scheme) else port


def normalise_origin(origin: str) -> str:
    """`https://Example.org/` -> `https://example.org`, `https://liênhiệphội.vn` ->
    `https://xn--linhiphi-l1a7657ezfa.vn`; SiteError for anything else."""
    try:
        parts = urlsplit(origin.strip())
    except ValueError:  # e.g. a Unicode netloc whose NFKC form holds '/' or '@'
        raise SiteError(f"invalid origin {origin!r}") from None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username
        or parts.password
    ):
        raise SiteError(
            f"invalid origin {origin!r}: expected scheme://host[:port], e.g. https://example.org"
        )
    try:
        port = origin_port(parts)  # browsers never send a default port in Origin
    except ValueError:
        raise SiteError(f"invalid origin {origin!r}: bad port") from None
    try:
        host = ascii_host(parts.hostname)
    except SiteError as exc:
        raise SiteError(f"invalid origin {origin!r}: {exc}") from None
    if _ends_in_a_number(host):
        # Browsers read such a host as an IPv4 address and write it as four decimal parts
        # (1.2.3 as 1.2.0.3), or refuse it (256.1.1.1): any other spelling never matches.
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise SiteError(
                f"invalid origin {origin!r}: an IPv4 address is written a.b.c.d, each 0-255"
            ) from None
    return f"{parts.scheme}://{netloc(host, port)}"


def _ends_in_a_number(host: str) -> bool:
    """The URL standard's test for a host to be parsed as IPv4."""
    last = host.removesuffix(".").rpartition(".")[2]
    return last.isdigit() or (last.startswith("0x") and all(c in HEX for c in last[2:]))


def _check_int(name: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise SiteError(f"{name} must be between {low} and {high}, got {value}")
    return value


def build_site(
    site_id: str,
    *,
    name: str,
    timezone: str = DEFAULT_TIMEZONE,
    origins: Iterable[str] = (),
    online_window: int = DEFAULT_ONLINE_WINDOW,
    baseline_visits: int = 0,
    baseline_pageviews: int = 0,
    address_visit_limit: int = DEFAULT_ADDRESS_VISIT_LIMIT,
) -> Site:
    """A validated Site, or SiteError naming what is wrong."""
    validate_id(site_id)
    if not name.strip() or len(name) > 200:
        raise SiteError("name must be 1 to 200 characters")
    if NOT_IN_A_NAME.search(name):
        # A tab or a line break would split `site list`'s lines; a lone surrogate (bytes
        # that were not UTF-8 on the command line) cannot be stored.
        raise SiteError("name must not hold control characters")
    try:
        parse_timezone(timezone)
    except ValueError as exc:
        raise SiteError(str(exc)) from None
    clean_origins = tuple(dict.fromkeys(normalise_origin(o) for o in origins))
    return Site(
        id=site_id,
        name=name.strip(),
        timezone=timezone,
        origins=clean_origins,
        online_window=_check_int("online window", online_window, 10, MAX_ONLINE_WINDOW),
        baseline_visits=_check_int("baseline visits", baseline_visits, 0, MAX_BASELINE),
        baseline_pageviews=_check_int("baseline pageviews", baseline_pageviews, 0, MAX_BASELINE),
        address_visit_limit=_check_int(
            "address visit limit", address_visit_limit, 1, MAX_ADDRESS_VISIT_LIMIT
        ),
    )


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    # Tokens are 256-bit random strings, so a plain SHA-256 is enough: there is no
    # low-entropy secret to protect with a slow hash.
    return hashlib.sha256(token.encode()).hexdigest()


def _stored_origin(site_id: str, origin: str) -> str:
    """A stored origin in today's form: rows written before origins were kept in their
    ASCII form may hold a Unicode host, which no browser would ever send."""
    try:
        return normalise_origin(origin)
    except SiteError as exc:
        log.warning("site %r keeps a stored origin that is not valid: %s", site_id, exc)
        return origin


def _row_to_site(row: sa.Row) -> Site:
    return Site(
        id=row.id,
        name=row.name,
        timezone=row.timezone,
        origins=tuple(dict.fromkeys(_stored_origin(row.id, o) for o in row.origins)),
        online_window=row.online_window,
        baseline_visits=row.baseline_visits,
        baseline_pageviews=row.baseline_pageviews,
        address_visit_limit=row.address_visit_limit,
        created=row.created_at.timestamp(),
    )


class SiteRepository:
    """Durable storage of sites."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(self, site: Site, now: datetime) -> str:
        """Store a new site and return its admin token (the only time it is visible)."""
        token = new_token()
        values = {**site.as_dict(), "token_hash": hash_token(token)}
        with self.engine.begin() as conn:
            if conn.execute(sa.select(db.sites.c.id).where(db.sites.c.id == site.id)).first():
                raise SiteError(f"site {site.id!r} already exists")
            deleted = db.deleted_sites
            began = conn.execute(
                sa.select(deleted.c.deleted_at).where(deleted.c.id == site.id)
            ).scalar_one_or_none()
            if began is not None:
                raise SiteError(
                    f"site {site.id!r} is being deleted (since {began:%Y-%m-%d %H:%M} UTC) and "
                    "can be created again once that has finished; if the delete was cut "
                    f"short, `analytics-service site delete {site.id} --yes` finishes it"
                )
            conn.execute(db.sites.insert().values(**values, created_at=now, updated_at=now))
        return token

    def update(self, site: Site, now: datetime, fields: Iterable[str] | None = None) -> None:
        """Store `site`'s settings, or only those named in `fields`: the others as they
        stand now, not as the caller read them (a baseline set meanwhile stays)."""
        values = site.as_dict()
        if fields is not None:
            values = {k: values[k] for k in fields}
        with self.engine.begin() as conn:
            result = conn.execute(
                db.sites.update().where(db.sites.c.id == site.id).values(**values, updated_at=now)
            )
        if result.rowcount == 0:
            raise SiteNotFound(site.id)

    def repair_timezone(self, site_id: str, timezone: str, now: datetime) -> Site:
        """Give a site whose stored zone this host cannot load (UnloadableZone) a zone it
        can, and nothing else: its other settings cannot be read as a Site meanwhile."""
        try:
            parse_timezone(timezone)
        except ValueError as exc:
            raise SiteError(str(exc)) from None
        t = db.sites
        with self.engine.begin() as conn:
            result = conn.execute(
                t.update().where(t.c.id == site_id).values(timezone=timezone, updated_at=now)
            )
        if result.rowcount == 0:
            raise SiteNotFound(site_id)
        return self.require(site_id)

    def set_baseline(
        self, site_id: str, now: datetime, *, visits: int | None, pageviews: int | None
    ) -> tuple[int, int]:
        """Set what an old counter had reached (the numbers given; None keeps one) and
        nothing else: a `site update` that committed after the caller read the site stands.
        Returns both numbers as stored."""
        t = db.sites
        given = {"baseline_visits": visits, "baseline_pageviews": pageviews}
        values = {k: v for k, v in given.items() if v is not None}
        with self.engine.begin() as conn:
            result = conn.execute(
                t.update().where(t.c.id == site_id).values(**values, updated_at=now)
            )
            if result.rowcount == 0:
                raise SiteNotFound(site_id)
            row = conn.execute(
                sa.select(t.c.baseline_visits, t.c.baseline_pageviews).where(t.c.id == site_id)
            ).one()
        return row.baseline_visits, row.baseline_pageviews

    def rotate_token(self, site_id: str, now: datetime) -> str:
        """Replace the site's admin token and return the new one (shown this once). The
        old one stops working at once in every worker: tokens are looked up in SQL on each
        admin request, never cached."""
        token = new_token()
        with self.engine.begin() as conn:
            result = conn.execute(
                db.sites.update()
                .where(db.sites.c.id == site_id)
                .values(token_hash=hash_token(token), updated_at=now)
            )
        if result.rowcount == 0:
            raise SiteNotFound(site_id)
        return token

    def identity(self, site_id: str) -> tuple[str, float] | None:
        """The site's name and creation time (unix), read without loading it as a Site:
        what removing it needs, also when this host cannot load its time zone."""
        t = db.sites
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t.c.name, t.c.created_at).where(t.c.id == site_id)).first()
        return None if row is None else (row.name, row.created_at.timestamp())

    def get(self, site_id: str) -> Site | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(db.sites).where(db.sites.c.id == site_id)).first()
        return _row_to_site(row) if row else None

    def require(self, site_id: str) -> Site:
        site = self.get(site_id)
        if site is None:
            raise SiteNotFound(site_id)
        return site

    def list(self) -> Sequence[Site]:
        """Every site that can be loaded. One whose time zone this host cannot load at all
        is left out with an error naming it: the others' hits, jobs and statistics go on
        (it made every list fail, and with it every worker's start and every job run)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(db.sites).order_by(db.sites.c.id)).all()
        sites = []
        for row in rows:
            try:
                sites.append(_row_to_site(row))
            except UnloadableZone as exc:
                log.error("site %r is left out: %s", row.id, exc)
        return sites


# How long a request for a site this worker never read waits for another thread's read of
# a site (`SiteCache`). A read takes milliseconds while the database answers, more on a
# busy machine or behind a SQLite writer (50 ms refused a browser's first hit of a new
# site); one that takes a second, the database stalls.
FIRST_READ_WAIT_SECONDS = 1.0


class SiteLookupBusy(sa.exc.TimeoutError):
    """A site never read by this worker, while its one database read of a site is taking
    long (the database stalls): a 503 the client retries, as for a database that is down."""


class SiteCache:
    """Per-worker cache in front of SiteRepository, unknown ids included: repeated hits for a
    site that does not exist cost one SQL query per id and expiry, not one per hit. Ids that
    are not valid site ids reach neither SQL nor the cache (a hit's `site` can be kilobytes
    of anything). Known limit: a flood of *distinct* valid-looking ids costs one query each
    and, past `maxsize`, can evict real sites from the cache.

    One thread of a worker reads a site from the database at a time. While the database
    stalls, a read waits for its timeouts (5 s or more): every request whose site's copy had
    expired (each site every `ttl_seconds`), or that named an id never read (which any
    client can make up), held a thread that long, and with every thread held, the worker's
    other hits waited behind them until the proxy gave up (504). Meanwhile a site read
    before is used as last read, and one never read waits FIRST_READ_WAIT_SECONDS for the
    read under way, then is refused (SiteLookupBusy)."""

    def __init__(
        self,
        repo: SiteRepository,
        ttl_seconds: float,
        timer: Callable[[], float] | None = None,
        maxsize: int = 10_000,
    ) -> None:
        self.repo = repo
        kwargs = {"timer": timer} if timer else {}
        self._cache: TTLCache[str, Site | None] = TTLCache(maxsize, ttl_seconds, **kwargs)
        # Each site as last read, kept past its expiry: while the database cannot be
        # reached, hits go on being counted under it (Redis is all they need).
        self._last: dict[str, Site] = {}
        self._reading = threading.Lock()  # held by the thread reading a site from SQL
        # cachetools caches are not thread-safe, and gthread workers serve hits in threads.
        self._lock = threading.Lock()

    def get(self, site_id: str) -> Site | None:
        """The site, None for an id no site has; SiteLookupBusy (class docstring)."""
        with self._lock:
            try:
                return self._cache[site_id]
            except KeyError:
                pass
            last = self._last.get(site_id)
        if last is None and not SITE_ID.fullmatch(site_id):
            return None
        if not self._reading.acquire(timeout=0 if last is not None else FIRST_READ_WAIT_SECONDS):
            if last is not None:
                return last
            raise SiteLookupBusy(f"site {site_id!r}: another read of a site is taking long")
        try:
            with self._lock:  # read meanwhile by the thread this one waited for
                try:  # (not `in`, then `[]`: the entry may expire between the two)
                    return self._cache[site_id]
                except KeyError:
                    pass
            site = self._read(site_id, last)
            self._keep([site_id], [site])
            return site
        finally:
            self._reading.release()

    def _read(self, site_id: str, last: Site | None) -> Site | None:
        """The site from the database or, while it cannot be reached, as last read."""
        try:
            return self.repo.get(site_id)
        except db.UNAVAILABLE_ERRORS as exc:
            if last is None:
                raise
            log.warning(
                "site %s: the database is unavailable (%s); its settings as last read stay in use",
                site_id,
                db_reason(exc),
            )
            return last
        except UnloadableZone as exc:
            # Left out, as `list` leaves it out, and remembered so: every counter read and
            # hit of it queried SQL again, answered 500 and logged a traceback.
            log.error("site %r is left out: %s", site_id, exc)
            return None

    def _keep(self, ids: Sequence[str], sites: Sequence[Site | None]) -> None:
        with self._lock:
            for site_id, site in zip(ids, sites, strict=True):
                self._cache[site_id] = site
                if site is None:
                    self._last.pop(site_id, None)
                else:
                    self._last[site_id] = site

    def known(self) -> list[Site]:
        """Every site this worker has read (as last read)."""
        with self._lock:
            return list(self._last.values())

    def preload(self) -> list[Site]:
        """Every site (as many as the cache holds), read in one query and cached, so that a
        fresh worker's first hits find their site without SQL."""
        sites = list(self.repo.list())[: int(self._cache.maxsize)]
        self._keep([site.id for site in sites], sites)
        return sites

    def forget(self, site_id: str) -> None:
        with self._lock:
            self._cache.pop(site_id, None)
