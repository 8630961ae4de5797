"""Site-local calendar arithmetic: which day a moment belongs to, and where days begin.

Every count is keyed by the site-local date of the hit (never by resetting a counter at
midnight), so days of 23 or 25 hours and midnights that do not exist need no special case
in the counting code: they are handled here, once, by zoneinfo.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones


def parse_timezone(name: str) -> ZoneInfo:
    """The IANA zone called `name`; ValueError with a readable message if there is none."""
    if name not in _known_zones():
        raise ValueError(f"unknown time zone {name!r}: use an IANA name such as Asia/Ho_Chi_Minh")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}") from None


class UnloadableZone(ValueError):
    """A stored site's zone that this host's time zone database does not have."""


def stored_timezone(name: str) -> ZoneInfo:
    """The zone a stored site names, as this host's tz database (or the `tzdata` package)
    has it. More lenient than parse_timezone, which checks a name given for a new site or a
    change: a site stored under a name that was taken then (a release before 'Factory' and
    'localtime' were refused, a host whose tz database still had the legacy links such as
    US/Eastern that Ubuntu 24.04 and Debian 13 moved to tzdata-legacy) must still load, or
    every list of sites (the workers' warm-up, the jobs, the CLI) fails with it.
    UnloadableZone when no zone data of that name can be found at all."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise UnloadableZone(
            f"unknown time zone {name!r}: this host's time zone database has no zone of that "
            "name (install the `tzdata` package from PyPI, or Debian's tzdata-legacy, or set "
            "the site's time zone to its current IANA name)"
        ) from None


# Files of the system's tz database that are no zone: "localtime" links to the host's
# /etc/localtime (a site's days would follow whichever host reads them), "Factory" is a
# placeholder. Browsers refuse both, so the dashboard could not show such a site's times.
NOT_ZONES = frozenset({"localtime", "Factory"})


@cache
def _known_zones() -> frozenset[str]:
    # available_timezones() walks the tz database on disk: do it once per process.
    return frozenset(available_timezones()) - NOT_ZONES


def local_date(now: datetime, tz: ZoneInfo) -> date:
    """The calendar date at `now` (aware) on the site's wall clock."""
    return now.astimezone(tz).date()


def day_start(day: date, tz: ZoneInfo) -> datetime:
    """The first instant (UTC) whose local date is `day`.

    When local midnight does not exist (a DST jump at 00:00, e.g. America/Santiago on
    2026-09-06), zoneinfo maps the missing 00:00 with the pre-transition offset, which
    lands on the first real instant of the day (01:00 local).
    """
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


def day_end(day: date, tz: ZoneInfo) -> datetime:
    """The first instant (UTC) of the following local day."""
    return day_start(day + timedelta(days=1), tz)
