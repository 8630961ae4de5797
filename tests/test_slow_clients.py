"""Slow and idle clients against the production stack (nginx -> gunicorn -> Redis, SQL, and
the scheduler; tests/stack.py), with the issue's numbers.

Without the proxy, 32 sockets trickling a byte a second made every /healthz probe of
gunicorn time out, and 50 idle connections made 4 of 5 fail: gthread workers hold a thread
per connection. Here 64 slow-header, 64 slow-body and 2,000 idle connections are held for
30 s (each one the proxy closes is opened again at once), while /healthz is probed through
the proxy. The one timing figure, "every probe answered within 1 s", is the issue's own.

A body that keeps trickling a byte a second is the one the proxy does not close: nginx's
client_body_timeout counts between two reads, and nginx has no minimum rate. It holds such
a connection for the cost of an idle one (limit_conn caps one address at 100 of them, and
client_max_body_size ends it after 8 KB); gunicorn never sees it, since nginx reads a body
whole before passing it on. The test holds 32 of them too and shows exactly that.
"""

from __future__ import annotations

import errno
import resource
import selectors
import socket
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from analytics_service.config import Settings

from .stack import Stack, stack

HOLD_SECONDS = 30
IDLE, SLOW_HEADER, SLOW_BODY, TRICKLING = "idle", "slow header", "slow body", "trickling body"
# 32 trickling bodies: every socket here and the probe share one address, and limit_conn
# lets one address have 100 requests in progress (a header read, its body not yet).
COUNTS = {IDLE: 2000, SLOW_HEADER: 64, SLOW_BODY: 64, TRICKLING: 32}
# What each kind sends on connecting, then one byte of its trickle per second. A slow
# header never ends; a slow body trickles 8 of its 100 bytes, then stops, as a client that
# went away would; a trickling body goes on for the whole test.
OPENING = {
    IDLE: b"",
    SLOW_HEADER: b"GET /slow-header HTTP/1.1\r\nHost: stats.example\r\nX-Slow: ",
    SLOW_BODY: b"POST /slow-body HTTP/1.1\r\nHost: stats.example\r\nContent-Length: 100\r\n\r\n",
    TRICKLING: b"POST /slow-trickle HTTP/1.1\r\nHost: stats.example\r\nContent-Length: 100\r\n\r\n",
}
TRICKLE_BYTES = {IDLE: 0, SLOW_HEADER: 10**6, SLOW_BODY: 8, TRICKLING: 100}
# The proxy's client_header_timeout and client_body_timeout (deploy/nginx.conf.template).
PROXY_TIMEOUT = 5.0


@dataclass
class Conn:
    kind: str
    sock: socket.socket
    opened: float
    connected: bool = False
    last_byte: float = 0.0
    trickled: int = 0


@dataclass
class Tally:
    """What happened to the connections of one kind."""

    closed_by_proxy: int = 0
    answered: int = 0
    # The shortest silence before a close: from the connection's start (idle, slow header:
    # the header timeout counts from there) or from the last byte sent (slow body).
    shortest_wait: float = float("inf")
    opened: int = 0


@dataclass
class Attack:
    port: int
    selector: selectors.DefaultSelector = field(default_factory=selectors.DefaultSelector)
    conns: dict[int, Conn] = field(default_factory=dict)
    tally: dict[str, Tally] = field(default_factory=lambda: {k: Tally() for k in COUNTS})
    most_connected: int = 0

    def open(self, kind: str, now: float) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", self.port))
        conn = Conn(kind, sock, opened=now, last_byte=now)
        self.conns[sock.fileno()] = conn
        self.selector.register(sock, selectors.EVENT_WRITE, conn)
        self.tally[kind].opened += 1

    def _connected(self, conn: Conn) -> None:
        conn.connected = True
        if OPENING[conn.kind]:
            conn.sock.send(OPENING[conn.kind])
        self.selector.modify(conn.sock, selectors.EVENT_READ, conn)

    def _closed(self, conn: Conn, now: float, answered: bool) -> None:
        tally = self.tally[conn.kind]
        if answered:
            tally.answered += 1
        else:
            tally.closed_by_proxy += 1
            start = conn.last_byte if conn.kind == SLOW_BODY else conn.opened
            tally.shortest_wait = min(tally.shortest_wait, now - start)
        self.selector.unregister(conn.sock)
        del self.conns[conn.sock.fileno()]
        conn.sock.close()
        self.open(conn.kind, now)

    def _readable(self, conn: Conn, now: float) -> None:
        try:
            data = conn.sock.recv(4096)
        except ConnectionResetError:
            data = b""
        except BlockingIOError:
            return
        self._closed(conn, now, answered=bool(data))

    def _trickle(self, now: float) -> None:
        for conn in list(self.conns.values()):
            if (
                conn.connected
                and conn.trickled < TRICKLE_BYTES[conn.kind]
                and now - conn.last_byte >= 1
            ):
                try:
                    conn.sock.send(b"a")
                except OSError as exc:
                    assert exc.errno in (errno.EPIPE, errno.ECONNRESET), exc
                    continue  # closed by the proxy; the read event reports it
                conn.trickled += 1
                conn.last_byte = now

    def run(self, seconds: float) -> None:
        now = time.monotonic()
        for kind, count in COUNTS.items():
            for _ in range(count):
                self.open(kind, now)
        deadline = now + seconds
        while (now := time.monotonic()) < deadline:
            for key, events in self.selector.select(timeout=0.1):
                conn: Conn = key.data
                if conn.sock.fileno() not in self.conns:
                    continue
                if events & selectors.EVENT_WRITE:
                    error = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    assert error == 0, f"connecting to the proxy failed: {errno.errorcode[error]}"
                    self._connected(conn)
                else:
                    self._readable(conn, now)
            self._trickle(now)
            self.most_connected = max(
                self.most_connected, sum(c.connected for c in self.conns.values())
            )
        for conn in self.conns.values():
            conn.sock.close()
        self.selector.close()


@dataclass
class Probes:
    url: str
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            start = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=1) as response:
                    assert response.status == 200
                self.latencies.append(time.monotonic() - start)
            except Exception as exc:
                self.failures.append(f"{time.monotonic() - start:.2f}s: {exc!r}")
            self.stop.wait(0.25)


def _raise_open_file_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= wanted, "raise `ulimit -n`"


def test_slow_and_idle_clients_held_for_30_s_never_delay_a_probe_and_the_proxy_closes_them(
    settings: Settings, tmp_path: Path
) -> None:
    _raise_open_file_limit(sum(COUNTS.values()) + 500)
    running: Stack
    with stack(settings, tmp_path) as running:
        attack = Attack(running.proxy_port)
        probes = Probes(f"{running.proxy}/healthz")
        prober = threading.Thread(target=probes.run)
        prober.start()
        try:
            attack.run(HOLD_SECONDS)
        finally:
            probes.stop.set()
            prober.join()
        gunicorn_log = running.log("gunicorn")

    assert probes.failures == [], probes.failures
    assert len(probes.latencies) >= HOLD_SECONDS * 2
    assert max(probes.latencies) < 1.0, max(probes.latencies)
    # Every connection was really held at once.
    assert attack.most_connected >= sum(COUNTS.values()) * 0.95, attack.most_connected
    trickling = attack.tally.pop(TRICKLING)
    assert (trickling.answered, trickling.closed_by_proxy) == (0, 0), trickling
    for kind, tally in attack.tally.items():
        # None got an answer: the proxy closed (reset) each one on its timeout, and every
        # socket was closed at least once in 30 s, then opened again.
        assert tally.answered == 0, (kind, tally)
        assert tally.closed_by_proxy >= COUNTS[kind], (kind, tally)
        assert tally.shortest_wait >= PROXY_TIMEOUT - 0.5, (kind, tally)
    # gunicorn never saw any of them: nginx reads each request whole before passing it on.
    assert "/slow-" not in gunicorn_log
