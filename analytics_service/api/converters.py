"""URL converters: a path segment that cannot be a site id matches no route (404), so no
query ever sees it (a NUL in an id made PostgreSQL fail where SQLite found nothing)."""

from __future__ import annotations

from werkzeug.routing import BaseConverter

from ..sites import SITE_ID


class SiteIdConverter(BaseConverter):
    regex = SITE_ID.pattern
