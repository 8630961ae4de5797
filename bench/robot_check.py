"""The robot check's cost per User-Agent it has not seen, by length and kind, against
crawlerdetect's own check: CPU ms per call, median of distinct agents (no cache helps).

    .venv/bin/python bench/robot_check.py          # a few seconds
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import string
import time

from crawlerdetect import CrawlerDetect

from analytics_service.ingest import crawler_patterns, is_crawler

KINDS = {
    "letters": string.ascii_lowercase,
    "slashes": "/",
    "browser-like": string.ascii_letters + string.digits + " ;/().,_-",
}


def cost_ms(check, agents: list[str]) -> float:  # type: ignore[no-untyped-def]
    times = []
    for agent in agents:
        start = time.process_time()
        check(agent)
        times.append(time.process_time() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=15, help="distinct agents a figure")
    args = parser.parse_args()
    rng = random.Random(1)
    figures: dict[str, dict[str, list[float]]] = {}
    reference = CrawlerDetect()
    reference.is_crawler("warm-up")
    crawler_patterns()
    print(f"{'kind':<14}{'chars':>6}{'crawlerdetect ms':>18}{'service ms':>12}")
    for kind, alphabet in KINDS.items():
        for length in (128, 256, 512):
            agents = [
                f"{i:04d}" + "".join(rng.choices(alphabet, k=length - 4))
                for i in range(args.agents)
            ]
            # The reference keeps an LRU cache of its answers: every agent is new to it.
            theirs = cost_ms(reference.is_crawler, agents)
            ours = cost_ms(is_crawler, agents)
            print(f"{kind:<14}{length:>6}{theirs:>18.2f}{ours:>12.2f}")
            figures.setdefault(kind, {})[str(length)] = [theirs, ours]
    print(json.dumps({"ms_crawlerdetect_and_service": figures}))


if __name__ == "__main__":
    main()
