"""Importing an old counter's daily history: a CSV of `date,visits,pageviews,visitors`
(or this service's own export, whose header names its three more columns), sent as the
request body or as the file part of a multipart form (`curl -F file=@days.csv`,
the dashboard's form). Columns are separated by ',' or, as spreadsheets save CSV where ','
is the decimal mark (Vietnamese settings among them), by ';', or by tabs (a copy from a
spreadsheet pasted into a file). Dates and counts may be written as a spreadsheet shows them
under its settings (31/01/2025, 30.545): a file saved again from Excel keeps them so.

The file is checked as a whole before anything is written; every bad line is reported with
its number, and then nothing is written. Importing the same date again replaces it (an
import is idempotent per date). Dates this service has counted itself, and days not closed
yet (today, and yesterday in the rollup's grace period after midnight, when a worker may
still write its late hits) are refused: those numbers are the service's own.

Imported days show in the statistics but are never added to the running total: the old
counter's total is the site's baseline (PUT .../baseline).
"""

from __future__ import annotations

import csv
import io
import re
from datetime import date

from werkzeug.formparser import FormDataParser

from .errors import ApiError
from .history import DayCounts
from .params import DATE, FIRST_DATE, LAST_DATE
from .stats import FIELDS

HEADER = ["date", "visits", "pageviews", "visitors"]
# The export's columns (stats.export_csv): a site's history moves to another instance whole.
EXPORT_HEADER = ["date", *FIELDS]
MAX_ROWS = 50_000
# Lines, blank ones included, are counted before any parsing: a file of blank lines must
# cost as little as a short one.
MAX_LINES = MAX_ROWS + 1_000
MAX_ERRORS_SHOWN = 10
# Every bad line is listed in the error's `details`, up to this many.
MAX_DETAILS = 1000
# At most 15 digits: the count limit is a pattern the OpenAPI document can carry too.
WHOLE = re.compile(r"[0-9]{1,15}")
# A count as a spreadsheet shows it with digit grouping, which a re-saved file keeps:
# 30.545 (Vietnamese settings), "30,545" (English, quoted in a comma-separated file),
# 30 545 (French, with a no-break space). Counts are whole, so a group of three digits
# after the mark is never a fraction. At most 15 digits, as WHOLE.
GROUPED = re.compile(r"[0-9]{1,3}(?P<mark>[.,' \u00a0\u202f])[0-9]{3}(?:(?P=mark)[0-9]{3}){0,3}")
# Dates as spreadsheets write them under settings other than ISO's: year first (2025/01/31),
# or year last with the day and the month in an order only the whole file can tell
# (31/01/2025 as Vietnamese settings write it, 01/31/2025 as American ones do).
YEAR_FIRST = re.compile(
    r"(?P<year>[0-9]{4})(?P<mark>[/.])(?P<a>[0-9]{1,2})(?P=mark)(?P<b>[0-9]{1,2})"
)
YEAR_LAST = re.compile(
    r"(?P<a>[0-9]{1,2})(?P<mark>[/.-])(?P<b>[0-9]{1,2})(?P=mark)(?P<year>[0-9]{4})"
)
DAY_FIRST, MONTH_FIRST = "day first", "month first"
DELIMITERS = (",", ";", "\t")
LINE_BREAK = re.compile(rb"[\r\n]")
# A date as a row begins with, in the bytes of a body (lines run together keep theirs).
DATE_BYTES = re.compile(DATE.pattern.encode())
SEND_INSTEAD = (
    "send the file as the body (curl --data-binary @days.csv -H 'Content-Type: text/csv') "
    "or as one file part (curl -F file=@days.csv)"
)


class ImportRejected(ApiError):
    def __init__(self, errors: list[str]) -> None:
        shown = "; ".join(errors[:MAX_ERRORS_SHOWN])
        more = len(errors) - MAX_ERRORS_SHOWN
        suffix = f"; and {more} more" if more > 0 else ""
        details = errors[:MAX_DETAILS]
        if len(errors) > MAX_DETAILS:
            details.append(f"and {len(errors) - MAX_DETAILS} more")
        super().__init__(400, "invalid_csv", f"nothing imported: {shown}{suffix}", details)


def csv_body(body: bytes, mimetype: str, options: dict[str, str]) -> bytes:
    """The CSV of an import request: in a multipart form, its one file part (`curl -F
    file=@days.csv`, the dashboard's form) or else its field `file`; otherwise the body."""
    if mimetype == "multipart/form-data":
        _, form, files = FormDataParser().parse(io.BytesIO(body), mimetype, len(body), options)
        # Every part, not one per field name: two files under one name are two files.
        parts = [part for _, part in files.items(multi=True)]
        # `curl -F 'file=<days.csv'` sends the file as a text field: two of them are two
        # files too, not the first one and the other dropped.
        texts = form.getlist("file")
        try:
            if len(parts) == 1:
                return parts[0].read()
            if not parts and len(texts) == 1:
                # Werkzeug decodes a text field as UTF-8, bytes that are not as U+FFFD.
                if "\ufffd" in texts[0]:
                    raise ImportRejected([_not_utf8(b"")])
                return texts[0].encode()
            found = f"the form holds {len(parts) + len(texts)} files, not one"
            raise ImportRejected([f"{found}: {SEND_INSTEAD}"])
        finally:
            for part in parts:
                part.close()
    if mimetype == "application/x-www-form-urlencoded" and _lines_glued(body):
        # What `curl -d @days.csv` sends: the file with its line breaks removed. (With
        # --data-binary and no Content-Type, curl labels the file the same way, but keeps
        # its line breaks: that body is the file.)
        raise ImportRejected([f"a form-encoded body loses the file's line breaks: {SEND_INSTEAD}"])
    return body


def _lines_glued(body: bytes) -> bool:
    """Whether a body without line breaks is several lines run together (a header and a
    row, or two rows), not a file of one line: a file of one day that ends without a line
    break loses nothing to `curl -d`, and `--data-binary` sends it as it is."""
    if LINE_BREAK.search(body):
        return False
    first = body.removeprefix(b"\xef\xbb\xbf").lstrip()
    return first[:4].lower() == b"date" or len(DATE_BYTES.findall(body)) > 1


def _delimiter(text: str) -> str:
    """The separator the first line uses most: ',' unless ';' or a tab is more frequent."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    return max(DELIMITERS, key=first.count)


def _row(
    cells: list[str], line: int, newest: date, columns: list[str], order: str | None
) -> tuple[date, DayCounts]:
    if len(cells) != len(columns):
        raise ValueError(
            f"line {line}: expected {len(columns)} columns {','.join(columns)} separated by "
            f"',', ';' or tabs, got {len(cells)}"
        )
    raw_day, *raw_counts = (c.strip() for c in cells)
    day = _day(raw_day, line, order)
    numbers = {}
    for name, raw in zip(columns[1:], raw_counts, strict=True):
        numbers[name] = _count(raw, name, line)
    counts = DayCounts(**numbers)
    # An export's rows of zeros reach past today when asked to; parse_csv leaves them out.
    if day > newest and not (columns == EXPORT_HEADER and counts == DayCounts()):
        raise ValueError(
            f"line {line}: {day} is not closed yet: an import takes days up to {newest} (site time)"
        )
    _check_consistent(counts, line, columns)
    return day, counts


def _day(raw: str, line: int, order: str | None) -> date:
    """A date as ISO writes it, or as a spreadsheet does; `order` is the file's (_order)."""
    try:
        if DATE.fullmatch(raw):
            return date.fromisoformat(raw)
        if found := YEAR_FIRST.fullmatch(raw):
            return _bounded(int(found["year"]), int(found["a"]), int(found["b"]))
        if found := YEAR_LAST.fullmatch(raw):
            first, second = int(found["a"]), int(found["b"])
            month, day = (first, second) if order == MONTH_FIRST else (second, first)
            return _bounded(int(found["year"]), month, day)
    except ValueError:
        pass
    raise ValueError(
        f"line {line}: date {raw[:40]!r} is not a date YYYY-MM-DD (or DD/MM/YYYY, MM/DD/YYYY) "
        f"from {FIRST_DATE}"
    )


def _bounded(year: int, month: int, day: int) -> date:
    found = date(year, month, day)
    if not FIRST_DATE <= found <= LAST_DATE:
        raise ValueError
    return found


def _count(raw: str, name: str, line: int) -> int:
    if WHOLE.fullmatch(raw):
        return int(raw)
    if grouped := GROUPED.fullmatch(raw):
        return int(raw.replace(grouped["mark"], ""))
    raise ValueError(f"line {line}: {name} {raw[:40]!r} is not a whole number >= 0")


def _order(rows: list[tuple[int, list[str]]]) -> str | None:
    """Whether the file's year-last dates put the day or the month first, as its dates tell
    (31/01/2025 can only be day first): None when none needs telling (no such dates, or
    each reads the same both ways). A file that says both, or neither while it needs to, is
    refused: a guess would move every day of it to another month, without a word."""
    day_first = month_first = needs = None
    for line, cells in rows:
        found = YEAR_LAST.fullmatch(cells[0].strip())
        if not found:
            continue
        first, second = int(found["a"]), int(found["b"])
        if first > 12 >= second:
            day_first = day_first or (line, found[0])
        elif second > 12 >= first:
            month_first = month_first or (line, found[0])
        elif first != second:
            needs = needs or (line, found[0])
    if day_first and month_first:
        raise ImportRejected(
            [
                f"line {day_first[0]} writes the day first ({day_first[1]}), line "
                f"{month_first[0]} the month first ({month_first[1]}): write every date one "
                "way, best YYYY-MM-DD"
            ]
        )
    if day_first or month_first:
        return DAY_FIRST if day_first else MONTH_FIRST
    if needs:
        raise ImportRejected(
            [
                f"line {needs[0]}: {needs[1]!r} may put the day or the month first, and no date "
                "of the file tells which (none has a day after the 12th): write the dates "
                "as YYYY-MM-DD"
            ]
        )
    return None


def _check_consistent(counts: DayCounts, line: int, columns: list[str]) -> None:
    """Counts no day can have, most often columns in another order than the header's. A
    count of 0 is taken as not known (a counter of visits only, or of pageviews and
    visitors only)."""
    order = ",".join(columns)
    if 0 < counts.visits < counts.visitors:
        raise ValueError(
            f"line {line}: {counts.visitors} visitors but {counts.visits} visits (each visitor "
            f"makes a visit at least): are the columns in the order {order}?"
        )
    if 0 < counts.pageviews < counts.visits:
        raise ValueError(
            f"line {line}: {counts.pageviews} pageviews but {counts.visits} visits (each visit "
            f"has a page view at least): are the columns in the order {order}?"
        )


def _not_utf8(body: bytes) -> str:
    """What to do with a file that is not UTF-8: how spreadsheets save one that is."""
    # Excel's "Unicode Text" (.txt) is UTF-16 with a byte-order mark.
    kind = "UTF-16 text" if body[:2] in (b"\xff\xfe", b"\xfe\xff") else "not UTF-8 text"
    return f'the file is {kind}: save it as "CSV UTF-8" and import that'


def parse_csv(body: bytes, newest: date) -> dict[date, tuple[int, DayCounts]]:
    """date -> (line number, counts); ImportRejected listing every bad line. `newest` is
    the last closed day (rollup.last_due_day): later ones are still counted here."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ImportRejected([_not_utf8(body)]) from None
    # Line breaks as spreadsheets write them: CRLF, LF, or a lone CR (Excel for Mac's "CSV
    # (Macintosh)"), which the csv module would take for a break inside a field.
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if text.count("\n") > MAX_LINES:
        raise ImportRejected([f"more than {MAX_LINES} lines in one file"])
    reader = csv.reader(io.StringIO(text), delimiter=_delimiter(text))
    days: dict[date, tuple[int, DayCounts]] = {}
    errors: list[str] = []
    rows = []
    begins = 1  # the line a record begins on: a quoted field may run over several
    try:
        for cells in reader:
            rows.append((begins, cells))
            begins = reader.line_num + 1
    except csv.Error as exc:
        raise ImportRejected([f"line {reader.line_num}: {exc}"]) from None
    rows = [(line, cells) for line, cells in rows if any(c.strip() for c in cells)]
    columns = HEADER
    if rows and rows[0][1][0].strip().lower() == "date":
        line, cells = rows.pop(0)
        named = [c.strip().lower() for c in cells]
        if named in (HEADER, EXPORT_HEADER):
            columns = named
        else:
            errors.append(
                f"line {line}: the header must be {','.join(HEADER)} "
                f"(or the export's {','.join(EXPORT_HEADER)})"
            )
    order = _order(rows)
    for line, cells in rows:
        try:
            day, counts = _row(cells, line, newest, columns, order)
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
    if columns == EXPORT_HEADER:
        # The export writes a row of zeros for every day without data. Such a row holds
        # nothing to import, and must neither replace a day imported before (an old
        # counter's history on the site the export moves to) nor clash with a day counted
        # here.
        days = {day: row for day, row in days.items() if row[1] != DayCounts()}
        if not days:
            raise ImportRejected(["every row of the export is zero: nothing to import"])
    return days
