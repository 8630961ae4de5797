"""The README's curl examples, and the ones `analytics-service run` prints, work as pasted
against the service on a port of the reader's choosing (not 8000)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import free_port

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_blocks_with_port() -> list[str]:
    """Every indented code block of the README that uses $PORT, in order."""
    blocks = re.findall(r"(?:^    .*\n)+", README.read_text(), flags=re.M)
    return [textwrap.dedent(b) for b in blocks if "$PORT" in b]


class Running:
    """`analytics-service run` on a free port; its output collected as it comes."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANALYTICS_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "analytics_service.cli", "run", "--port", str(self.port)],
            env={**env, "ANALYTICS_DATA_DIR": str(data_dir)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def printed(self, pattern: str) -> list[str]:
        """Waits (bounded) for the start-up lines, then returns those matching."""
        deadline = time.monotonic() + 60
        while not any(line.startswith("  curl http") for line in self.lines):
            assert self.proc.poll() is None, "\n".join(self.lines)
            assert time.monotonic() < deadline, "\n".join(self.lines)
            time.sleep(0.1)
        return [line for line in self.lines if re.search(pattern, line)]

    def wait_for_pageviews(self, expected: int) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/sites/demo/counter"
        deadline = time.monotonic() + 10
        while True:
            with urllib.request.urlopen(url, timeout=5) as response:
                counter = json.load(response)
            if counter["today"]["pageviews"] == expected:
                return counter
            assert time.monotonic() < deadline, counter
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        self._reader.join(timeout=10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    service = Running(tmp_path / "var")
    yield service
    service.stop()


def shell(script: str, cwd: Path) -> str:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_readme_and_the_printed_commands_work_as_pasted_on_another_port(
    running: Running, tmp_path: Path
) -> None:
    [token_line] = running.printed(r"token of the site 'demo'")
    token = re.search(r": (\S+)  \(shown only now", token_line).group(1)
    hit_block, admin_block = readme_blocks_with_port()
    with_port = re.compile(r"^PORT=.*$", flags=re.M)

    # The hit is answered before the worker's writer has put it in Redis: the counter the
    # block reads next may not show it yet, so the count is waited for (bounded).
    shell(with_port.sub(f"PORT={running.port}", hit_block), tmp_path)
    running.wait_for_pageviews(1)

    (tmp_path / "old-counter.csv").write_text(
        "date,visits,pageviews,visitors\n2025-01-01,120,310,97\n"
    )
    script = with_port.sub(f"PORT={running.port}", admin_block)
    script = re.sub(r"^TOKEN=.*$", f"TOKEN={token}", script, flags=re.M)
    answers = [json.loads(line) for line in shell(script, tmp_path).splitlines()]
    stats, pages, imported, baseline = answers
    assert (stats["interval"], stats["totals"]["visits"]) == ("week", 1)
    assert pages["pages"] == [{"path": "/tin-tuc", "pageviews": 1}]
    assert imported == {"site": "demo", "imported": 1, "from": "2025-01-01", "to": "2025-01-01"}
    assert baseline["baseline"]["visits"] == 30545
    assert (tmp_path / "demo.csv").read_text().startswith("date,visits,pageviews,visitors,bots,")

    printed = running.printed(r"^  curl ")
    assert len(printed) == 2 and all(f":{running.port}/" in line for line in printed)
    shell("\n".join(printed), tmp_path)
    counter = running.wait_for_pageviews(2)
    assert counter["total"]["visits"] == 30545 + 1  # the same visitor: one visit, two views
