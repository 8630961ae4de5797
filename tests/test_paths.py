"""paths.py: the one spelling a page's path is stored under."""

from __future__ import annotations

import pytest

from analytics_service.paths import MAX_PATH_CHARS, stored_path


@pytest.mark.parametrize(
    "path",
    ["/%4%41", "/%%34%31", "/50%-off", "/100%", "/%", "/%7e%", "/a%2f%41", "/%" + "%41" * 300],
)
def test_a_stored_path_is_stored_as_itself(path: str) -> None:
    """Redis's days are respelt as they are read (live.py), the history's by migrations: a
    stored spelling must be its own. A '%' that begins no escape before an escaped digit or
    letter made one (/%4%41 stored as /%4A, read again as /J)."""
    stored = stored_path(path)
    assert stored_path(stored) == stored and len(stored) <= MAX_PATH_CHARS
