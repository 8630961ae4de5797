"""Recovery: when Redis comes back empty, put each site's history back into it.

The total hash carries a marker (keys.RESTORED). Whoever reads Redis in order to show or
store numbers (the counter, the admin API, the rollup) sees when it is missing and calls
`Recovery.restore`: one SQL read, then restore.lua, which sets the marker first so that only
one caller adds the history. What it adds: the sum of every day counted here (closed days
and the checkpoints of open ones) to the total, and each open day's last checkpoint to that
day's keys. Hits counted between the wipe and the restore are kept (the script adds).

The hit path never checks: it only adds, and adding is right whether the history is put
back before or after. So it stays one round trip with no SQL.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime

from redis.commands.core import Script

from . import keys
from .history import History
from .sites import Site
from .sitetime import day_end

log = logging.getLogger(__name__)


class Recovery:
    def __init__(self, history: History, script: Script) -> None:
        self.history = history
        self.script = script

    def restore(self, site: Site, now: datetime) -> bool:
        """Put the site's history into Redis unless already there; True if this call did."""
        plan = self.history.restore_plan(site.id)
        days, hlls, payload_days = [], [], []
        for snap in plan.open_days:
            ttl = int((day_end(snap.day, site.tz) - now).total_seconds())
            ttl += keys.DAY_KEY_GRACE_SECONDS
            if ttl <= 0:
                continue  # its keys would already have expired; the rollup closes it from SQL
            days.append(snap.day)
            hlls.append(snap.hll or b"")
            counts = snap.counts.as_dict()
            del counts["visitors"]  # the HyperLogLog carries them
            payload_days.append(
                {
                    "ttl": str(ttl),
                    "counts": {k: str(v) for k, v in counts.items()},
                    "paths": {k: str(v) for k, v in snap.paths.items()},
                    "refs": {k: str(v) for k, v in snap.refs.items()},
                }
            )
        payload = {
            "visits": str(plan.total_visits),
            "pageviews": str(plan.total_pageviews),
            "days": payload_days,
        }
        restored = bool(
            self.script(
                keys=site.keys.restore_script_keys(days),
                args=[keys.RESTORED, json.dumps(payload), *hlls],
            )
        )
        if restored:
            # A new site (nothing to add) is routine; history put back means Redis lost data.
            log.log(
                logging.WARNING
                if plan.total_visits or plan.total_pageviews or days
                else logging.INFO,
                "site %s: Redis had no history marker; restored total +%d visits +%d pageviews "
                "and %d open day(s) from SQL",
                site.id,
                plan.total_visits,
                plan.total_pageviews,
                len(days),
            )
        return restored
