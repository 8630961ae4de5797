"""How much of the hit's open-loop tail is the load generator's: hits and the bare endpoint
at one fixed rate, through k6 (what `make bench` uses) and through bench/openloop.c (the
same open loop at about a quarter of k6's CPU), in rounds whose order is shuffled, on this
checkout's service as `make bench` runs it (gunicorn.conf.py, its own Redis and SQLite).

The generator shares the two cores with the service: at half the hit's maximum rate k6
keeps a fifth of the machine busy and adds its own pauses to every latency it measures.
Measured on 2026-12-04 (docs/benchmarks.md): both p99s three to four times lower through
openloop.c, their ratio about the same.

    .venv/bin/python bench/tails.py --rate 1650 --rounds 8     # about 6 minutes
    .venv/bin/python bench/tails.py --port 8000 --rate 800     # a service already running

Prints each round's p99s and, per generator, the median of the rounds' hit p99 / control
p99 and its CPU per request (k6's from its process's rusage, its start-up included); the
last line is all of it as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import resource
import statistics
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fixed_rate import run_fixed_rate, run_openloop
from run import (
    ROOT,
    SITE,
    TARGETS,
    Sizes,
    prepare_database,
    redis_server,
    running_service,
    wrk,
)

RUNS = ("k6 hit", "k6 control", "openloop hit", "openloop control")


@contextlib.contextmanager
def service_port(port: int | None) -> Iterator[int]:
    """`port`, or the port of a service of this checkout started (and warmed up) here."""
    if port:
        yield port
        return
    with tempfile.TemporaryDirectory(prefix="analytics-tails-") as tmp_dir:
        tmp = Path(tmp_dir)
        database_url = f"sqlite:///{tmp / 'bench.db'}"
        prepare_database(database_url)
        with (
            redis_server(tmp) as redis_url,
            running_service("current", "current", ROOT, redis_url, database_url, tmp) as s,
        ):
            warm = Sizes(1, 1, 1, 32, 10_000, 500, 0, 0, 0, 0, 0, 0)
            for path, script in TARGETS.values():
                wrk(s.port, path, script, 1, warm)
            yield s.port


def one_run(port: int, name: str, rate: float, seconds: float, prefix: int) -> dict[str, Any]:
    generator, what = name.split()
    target = "hit" if what == "hit" else "/healthz"
    params: dict[str, str | int] = {
        "SITE": SITE,
        "VISITORS": 10_000,
        "PATHS": 500,
        "IP_PREFIX": prefix,
    }
    if generator == "openloop":
        return run_openloop(port, target, rate, seconds, params)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = run_fixed_rate(f"http://127.0.0.1:{port}", target, rate, seconds, params)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {**result, "generator_cpu_us_per_request": cpu * 1e6 / max(1, result["requests"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, required=True, help="requests a second")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--port", type=int, help="a service already running on 127.0.0.1")
    parser.add_argument("--seed", type=int, default=1, help="of the rounds' shuffled order")
    args = parser.parse_args(argv)
    order = random.Random(args.seed)
    p99: dict[str, list[float]] = {name: [] for name in RUNS}
    cpu: dict[str, list[float]] = {name: [] for name in RUNS}
    errors = dict.fromkeys(RUNS, 0)
    with service_port(args.port) as port:
        for round_no in range(args.rounds):
            names = list(RUNS)
            order.shuffle(names)
            line = []
            for i, name in enumerate(names):
                # Visitors of their own per run: none reaches the per-minute limit.
                run = one_run(port, name, args.rate, args.seconds, 20 + round_no * 4 + i)
                if run["errors"] or run["dropped"]:
                    line.append(f"({name}: {run['errors']} errors, {run['dropped']} late)")
                errors[name] += run["errors"]
                p99[name].append(run["p99_ms"])
                cpu[name].append(run["generator_cpu_us_per_request"])
                line.append(f"{name} {run['p99_ms']:.1f}")
            print(f"round {round_no + 1}, p99 ms: " + ", ".join(line), flush=True)
    summary = {}
    for generator in ("k6", "openloop"):
        hit, control = p99[f"{generator} hit"], p99[f"{generator} control"]
        ratios = [h / c for h, c in zip(hit, control, strict=True)]
        summary[generator] = {
            "ratio_median": statistics.median(ratios),
            "ratios": ratios,
            "hit_p99_ms": hit,
            "control_p99_ms": control,
            "errors": errors[f"{generator} hit"] + errors[f"{generator} control"],
            "cpu_us_per_request": statistics.median(
                cpu[f"{generator} hit"] + cpu[f"{generator} control"]
            ),
        }
        print(
            f"{generator}: hit p99 / control p99, median of the rounds "
            f"{statistics.median(ratios):.2f} (each: {' '.join(f'{r:.2f}' for r in ratios)}); "
            f"median p99 hit {statistics.median(hit):.1f} ms, control "
            f"{statistics.median(control):.1f} ms; generator CPU per request "
            f"{summary[generator]['cpu_us_per_request']:.0f} µs"
        )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
