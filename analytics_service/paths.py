"""How a page's path is stored: the one spelling under which Redis counts it, the SQL
history keeps it and the statistics show it, whichever spelling a client sent."""

from __future__ import annotations

import re
import string
from urllib.parse import quote

MAX_PATH_CHARS = 512
# What a path keeps as it is (RFC 3986's pchar, '/' and '%': escapes already made stay as
# they are); anything else is percent-encoded as UTF-8, as browsers do.
PATH_SAFE = "/%!$&'()*+,;=:@-._~"
ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
# An escape, or a '%' that begins none (/50%-off).
PERCENT = re.compile(r"%(?:[0-9A-Fa-f]{2})?")
# RFC 3986's unreserved characters: one escaped means the same path as one not (6.2.2.2).
UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")


def _respelt(byte: int) -> str:
    return chr(byte) if chr(byte) in UNRESERVED else f"%{byte:02X}"


# Every spelling of every escape (%7e, %7E) -> the stored one: the character it stands for
# when unreserved, else the escape in upper case, as browsers write escapes. A '%' that
# begins no escape is escaped itself: left, /%4%41 would be stored as /%4A, which is /J
# when read again (Redis's days are respelt as they are read: live.py).
RESPELT = {
    f"%{hi}{lo}": _respelt(byte)
    for byte in range(256)
    for hi in {f"{byte:02x}"[0], f"{byte:02X}"[0]}
    for lo in {f"{byte:02x}"[1], f"{byte:02X}"[1]}
} | {"%": "%25"}
TRAILING_ESCAPES = re.compile(f"(?:{ESCAPE.pattern})+$")


def stored_path(path: str) -> str:
    """The path as browsers send it (`location.href`): percent-encoded, so that a client that
    sends /tin-tức counts the same page as the widget's /tin-t%E1%BB%A9c, and every stored
    path is ASCII (a buffered hit's path then takes a byte a character, not up to four);
    an escaped unreserved character as the character (/%41 is the page /A).
    Cut to MAX_PATH_CHARS between characters, never inside the escape of one: the cut is
    made on the encoded text, so both spellings of a long page are cut alike."""
    encoded = quote(path, safe=PATH_SAFE)
    if "%" in encoded:  # a client may write /%7euser for /~user, or escapes in lower case
        encoded = PERCENT.sub(lambda m: RESPELT[m.group()], encoded)
    if len(encoded) <= MAX_PATH_CHARS:
        return encoded
    cut = encoded[:MAX_PATH_CHARS]
    broken = cut.find("%", MAX_PATH_CHARS - 2)  # an escape cut short: %, or %E
    if broken != -1:
        cut = cut[:broken]
    escapes = TRAILING_ESCAPES.search(cut)
    if escapes is None:
        return cut
    raw = bytes.fromhex(escapes.group().replace("%", ""))
    return cut[: escapes.start() + 3 * _whole_characters(raw)]


def _whole_characters(raw: bytes) -> int:
    """How many bytes of `raw` remain without a UTF-8 character cut short at its end."""
    for back in range(1, min(4, len(raw)) + 1):
        lead = raw[-back]
        if lead & 0xC0 != 0x80:  # not a continuation byte: the last character starts here
            length = 1 if lead < 0x80 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
            return len(raw) if back >= length else len(raw) - back
    return len(raw)
