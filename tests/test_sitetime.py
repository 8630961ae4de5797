"""Site-local days: where they start and how long they last, DST included."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from analytics_service.sitetime import day_end, day_start, local_date, parse_timezone

NEW_YORK = ZoneInfo("America/New_York")


def test_a_hanoi_day_starts_at_17_utc_the_day_before() -> None:
    hanoi = ZoneInfo("Asia/Ho_Chi_Minh")
    assert day_start(date(2026, 11, 28), hanoi) == datetime(2026, 11, 27, 17, tzinfo=UTC)
    assert local_date(datetime(2026, 11, 27, 16, 59, 59, tzinfo=UTC), hanoi) == date(2026, 11, 27)
    assert local_date(datetime(2026, 11, 27, 17, 0, tzinfo=UTC), hanoi) == date(2026, 11, 28)


@pytest.mark.parametrize(
    ("day", "hours"),
    [(date(2026, 3, 8), 23), (date(2026, 11, 1), 25), (date(2026, 7, 1), 24)],
)
def test_new_york_days_last_23_24_or_25_hours(day: date, hours: int) -> None:
    assert day_end(day, NEW_YORK) - day_start(day, NEW_YORK) == timedelta(hours=hours)


def test_a_midnight_that_does_not_exist_starts_the_day_at_its_first_real_instant() -> None:
    santiago = ZoneInfo("America/Santiago")
    start = day_start(date(2026, 9, 6), santiago)
    # Clocks jump from 00:00 to 01:00 (-04 to -03): the day begins at 01:00 local = 04:00 UTC.
    assert start == datetime(2026, 9, 6, 4, tzinfo=UTC)
    assert local_date(start, santiago) == date(2026, 9, 6)
    assert local_date(start - timedelta(microseconds=1), santiago) == date(2026, 9, 5)


@pytest.mark.parametrize(
    "name", ["Mars/Olympus", "", "../etc/passwd", "asia/ho_chi_minh", "localtime", "Factory"]
)
def test_unknown_time_zones_are_refused_with_a_message(name: str) -> None:
    with pytest.raises(ValueError, match="unknown time zone"):
        parse_timezone(name)
