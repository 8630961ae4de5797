"""bench/openloop.c, the light open-loop generator of bench/tails.py, against a real HTTP
server on a socket: it sends the requests `make bench`'s hits are, at the rate asked, keeps
sending on new connections while the server stalls (so the stall shows in the latencies,
as it would for readers), and counts error statuses."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
try:
    from fixed_rate import run_openloop
finally:
    sys.path.pop(0)


@dataclass
class Server:
    port: int = 0
    status: int = 200
    stall_after: int | None = None  # requests answered before the stall
    stall_seconds: float = 0.3
    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)


async def _serve(
    server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while True:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, path, _ = head[0].split(" ")
            fields = (line.split(": ", 1) for line in head[1:] if line)
            headers = {name.lower(): value for name, value in fields}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            server.requests.append((method, path, headers, body))
            if len(server.requests) == server.stall_after:
                # Blocks the event loop: every connection waits, as behind a stuck worker.
                time.sleep(server.stall_seconds)
            writer.write(f"HTTP/1.1 {server.status} X\r\nContent-Length: 2\r\n\r\nok".encode())
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server()
    ready = threading.Event()
    stop: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def serve() -> None:
        stopped = asyncio.Event()
        listener = await asyncio.start_server(
            lambda r, w: _serve(state, r, w), "127.0.0.1", 0, backlog=1024
        )
        state.port = listener.sockets[0].getsockname()[1]
        stop.append((asyncio.get_running_loop(), stopped))
        ready.set()
        async with listener:
            await stopped.wait()
        # asyncio.run then cancels the connections' handlers still waiting for a request.

    thread = threading.Thread(target=asyncio.run, args=(serve(),))
    thread.start()
    assert ready.wait(10)
    yield state
    loop, stopped = stop[0]
    loop.call_soon_threadsafe(stopped.set)
    thread.join(10)


PARAMS: dict[str, str | int] = {"SITE": "tsite", "VISITORS": 50, "PATHS": 7, "IP_PREFIX": 77}


def test_it_sends_the_benchs_hits_at_the_rate_asked(server: Server) -> None:
    result = run_openloop(server.port, "hit", 500, 1, PARAMS)
    assert result["requests"] == len(server.requests) == 500
    assert result["errors"] == result["dropped"] == result["unanswered"] == 0
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
    addresses, paths = set(), set()
    for method, path, headers, body in server.requests:
        assert (method, path, headers["content-type"]) == ("POST", "/api/v1/hit", "text/plain")
        hit = json.loads(body)
        assert hit["site"] == "tsite" and hit["url"].startswith("https://bench.example/p/")
        assert headers["user-agent"].startswith("Mozilla/5.0")
        addresses.add(headers["x-forwarded-for"])
        paths.add(hit["url"])
    assert len(addresses) == 50 and all(a.startswith("77.0.0.") for a in addresses)
    assert len(paths) == 7


def test_a_server_stall_shows_in_the_latencies_of_the_requests_sent_during_it(
    server: Server,
) -> None:
    # A closed-loop generator would wait for the stalled answer before sending more: one
    # slow request, a p90 of a millisecond. Open loop, the 120 requests due during the
    # 300 ms stall go out on time, on new connections, and each waits out the rest of it.
    server.stall_after = 100
    result = run_openloop(server.port, "hit", 400, 1, PARAMS)
    assert result["requests"] == 400 and result["errors"] == 0
    assert result["connections"] > 1
    assert result["p90_ms"] >= 100
    assert result["max_ms"] >= 250


def test_error_statuses_are_counted(server: Server) -> None:
    server.status = 404
    result = run_openloop(server.port, "/missing", 200, 1, PARAMS)
    assert result["requests"] == result["errors"] == 200
    assert {(m, p) for m, p, _, _ in server.requests} == {("GET", "/missing")}
