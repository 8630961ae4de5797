"""The box as an SVG image, for pages without JavaScript: same three lines as the widget.

Every caller-supplied value is validated before it reaches the markup (colours are hex only,
the language one of a fixed set) and every text is XML-escaped, so a query string cannot
inject elements or attributes into the image.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

from .counters import Counter
from .errors import ApiError

# The widget's labels (widget/widget.js): title, online, today, total.
LABELS = {
    "vi": ("Thống kê truy cập", "Đang online", "Hôm nay", "Đã truy cập"),
    "en": ("Visitor statistics", "Online now", "Today", "Total visits"),
}
HEX_COLOUR = re.compile(r"#?([0-9a-fA-F]{3}|[0-9a-fA-F]{6})")
# Query parameter -> default colour (the widget's defaults).
DEFAULT_COLOURS = {
    "bg": "ffffff",
    "fg": "222222",
    "title_bg": "1c5a9e",
    "title_fg": "ffffff",
    "border": "c5d2e3",
}
# The narrowest box, as the widget's; wider when its text needs it (a total of 10^13).
MIN_WIDTH = 200
TITLE_HEIGHT = 28
ROW_HEIGHT = 22
PADDING = 10
FONT = "Arial, Helvetica, sans-serif"
# Room a character of 13 px Arial takes at most, bold (an image has no text measuring):
# punctuation and spaces, and any other character. Over rather than under: a wider box
# only leaves more room.
NARROW_CHARS, NARROW, WIDE = frozenset(" .,:;'!|iIlíìjf"), 4.0, 8.0
GAP = 12  # between a label and its number


def _text_width(text: str) -> float:
    return sum(NARROW if ch in NARROW_CHARS else WIDE for ch in text)


def _width(title: str, rows: list[tuple[str, str]]) -> int:
    needed = max(
        [_text_width(title)] + [_text_width(label) + GAP + _text_width(n) for label, n in rows]
    )
    return max(MIN_WIDTH, math.ceil(needed) + 2 * PADDING)


@dataclass(frozen=True, slots=True)
class SvgStyle:
    lang: str
    colours: Mapping[str, str]

    @classmethod
    def from_query(cls, args: Mapping[str, str]) -> SvgStyle:
        """Refuses (400) anything but a known language and 3- or 6-digit hex colours."""
        lang = args.get("lang", "vi")
        if lang not in LABELS:
            raise ApiError(400, "bad_lang", f"lang must be one of {', '.join(LABELS)}")
        colours = {}
        for name, default in DEFAULT_COLOURS.items():
            raw = args.get(name, default)
            match = HEX_COLOUR.fullmatch(raw)
            if match is None:
                raise ApiError(
                    400, "bad_colour", f"{name} must be a hex colour such as 1c5a9e or fff"
                )
            colours[name] = "#" + match.group(1).lower()
        return cls(lang=lang, colours=colours)


def format_number(value: int, lang: str) -> str:
    """As Intl.NumberFormat does in the widget: vi 30.545, en 30,545."""
    grouped = f"{value:,}"
    return grouped.replace(",", ".") if lang == "vi" else grouped


def render(counter: Counter, style: SvgStyle) -> str:
    title, *labels = LABELS[style.lang]
    numbers = (counter.online, counter.today_visits, counter.total_visits)
    c = style.colours
    height = TITLE_HEIGHT + len(numbers) * ROW_HEIGHT + PADDING
    shown = [
        (f"{label}:", format_number(n, style.lang))
        for label, n in zip(labels, numbers, strict=True)
    ]
    width = _width(title, shown)
    summary = f"{title}: " + ", ".join(
        f"{label} {format_number(n, style.lang)}" for label, n in zip(labels, numbers, strict=True)
    )
    rows = []
    for i, (label, number) in enumerate(shown):
        y = TITLE_HEIGHT + PADDING // 2 + ROW_HEIGHT * i + 15
        rows.append(
            f'<text x="{PADDING}" y="{y}">{escape(label)}</text>'
            f'<text x="{width - PADDING}" y="{y}" text-anchor="end" font-weight="bold">'
            f"{number}</text>"
        )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label={quoteattr(summary)}>'
        f"<title>{escape(summary)}</title>"
        f'<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" rx="4" '
        f'fill="{c["bg"]}" stroke="{c["border"]}"/>'
        f'<path d="M0.5 {TITLE_HEIGHT}V4.5a4 4 0 0 1 4-4h{width - 9}a4 4 0 0 1 4 4'
        f'V{TITLE_HEIGHT}z" fill="{c["title_bg"]}"/>'
        f'<g font-family="{FONT}" font-size="13">'
        f'<text x="{PADDING}" y="19" font-weight="bold" fill="{c["title_fg"]}">'
        f"{escape(title)}</text>"
        f'<g fill="{c["fg"]}">{"".join(rows)}</g></g></svg>'
    )
