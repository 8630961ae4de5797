"""Importing an old counter's daily history: a CSV of `date,visits,pageviews,visitors`.

The file is checked as a whole before anything is written; every bad line is reported with
its number, and then nothing is written. Importing the same date again replaces it (an
import is idempotent per date). Dates this service has counted itself, today and the future
are refused: those numbers are the service's own.

Imported days show in the statistics but are never added to the running total: the old
counter's total is the site's baseline (PUT .../baseline).
"""

from __future__ import annotations

import csv
import io
import re
from datetime import date

from .errors import ApiError
from .history import DayCounts
from .params import DATE, FIRST_DATE

HEADER = ["date", "visits", "pageviews", "visitors"]
MAX_ROWS = 50_000
# Lines, blank ones included, are counted before any parsing: a file of blank lines must
# cost as little as a short one.
MAX_LINES = MAX_ROWS + 1_000
MAX_ERRORS_SHOWN = 10
# At most 15 digits: the count limit is a pattern the OpenAPI document can carry too.
WHOLE = re.compile(r"[0-9]{1,15}")


class ImportRejected(ApiError):
    def __init__(self, errors: list[str]) -> None:
        shown = "; ".join(errors[:MAX_ERRORS_SHOWN])
        more = len(errors) - MAX_ERRORS_SHOWN
        suffix = f"; and {more} more" if more > 0 else ""
        super().__init__(400, "invalid_csv", f"nothing imported: {shown}{suffix}")


def _row(cells: list[str], line: int, today: date) -> tuple[date, DayCounts]:
    if len(cells) != len(HEADER):
        raise ValueError(f"line {line}: expected 4 columns {','.join(HEADER)}, got {len(cells)}")
    raw_day, *raw_counts = (c.strip() for c in cells)
    try:
        if not DATE.fullmatch(raw_day):
            raise ValueError
        day = date.fromisoformat(raw_day)
    except ValueError:
        raise ValueError(
            f"line {line}: date {raw_day[:40]!r} is not a date YYYY-MM-DD from {FIRST_DATE}"
        ) from None
    if day >= today:
        raise ValueError(f"line {line}: {day} is not before today ({today}, site time)")
    counts = []
    for name, raw in zip(HEADER[1:], raw_counts, strict=True):
        if not WHOLE.fullmatch(raw):
            raise ValueError(f"line {line}: {name} {raw[:40]!r} is not a whole number >= 0")
        counts.append(int(raw))
    visits, pageviews, visitors = counts
    return day, DayCounts(visits=visits, pageviews=pageviews, visitors=visitors)


def parse_csv(body: bytes, today: date) -> dict[date, tuple[int, DayCounts]]:
    """date -> (line number, counts); ImportRejected listing every bad line."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ImportRejected(["the file is not UTF-8 text"]) from None
    if max(text.count("\n"), text.count("\r")) > MAX_LINES:
        raise ImportRejected([f"more than {MAX_LINES} lines in one file"])
    reader = csv.reader(io.StringIO(text))
    days: dict[date, tuple[int, DayCounts]] = {}
    errors: list[str] = []
    rows = []
    try:
        for cells in reader:
            rows.append((reader.line_num, cells))
    except csv.Error as exc:
        raise ImportRejected([f"line {reader.line_num}: {exc}"]) from None
    for line, cells in rows:
        if not any(c.strip() for c in cells):
            continue
        if line == 1 and cells[0].strip().lower() == "date":
            if [c.strip().lower() for c in cells] != HEADER:
                errors.append(f"line 1: the header must be {','.join(HEADER)}")
            continue
        try:
            day, counts = _row(cells, line, today)
        except ValueError as exc:
            errors.append(str(exc))
            continue
        if day in days:
            errors.append(f"line {line}: {day} also on line {days[day][0]}")
        days[day] = (line, counts)
        if len(days) > MAX_ROWS:
            raise ImportRejected([f"more than {MAX_ROWS} days in one file"])
    if errors:
        raise ImportRejected(errors)
    if not days:
        raise ImportRejected(["the file has no rows"])
    return days
