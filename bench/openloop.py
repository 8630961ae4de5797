"""A fixed-rate, open-loop HTTP load generator: our stand-in for wrk2 (not in Debian).

Request i is due at `start + i / rate` whether or not earlier ones have been answered, and
its latency is measured from that due time, not from when it was actually sent. A server
(or a generator) that falls behind therefore shows the queueing it caused, which is what
wrk2 corrects for ("coordinated omission"); a closed-loop tool like wrk would hide it.

Connections are HTTP/1.1 keep-alive, opened on demand up to `max_connections`; a request
that finds none free waits for one, and that wait counts in its latency.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Callable
from typing import Any

# Keep-alive connections idle longer than this are not reused: the server (gunicorn's
# keepalive, 5 s by default) may be closing them, and a real client would not reuse them.
MAX_IDLE_SECONDS = 2.0


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.last_used = 0.0

    def reusable(self, now: float) -> bool:
        return not self.reader.at_eof() and now - self.last_used < MAX_IDLE_SECONDS

    async def exchange(self, request: bytes) -> tuple[int, bool]:
        """Send one request; (status, whether the server keeps the connection open)."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = 0
        keep = True
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                keep = False
        if length:
            await self.reader.readexactly(length)
        return status, keep

    def close(self) -> None:
        self.writer.close()


async def _run(
    host: str,
    port: int,
    rate: float,
    duration: float,
    make_request: Callable[[int], bytes],
    max_connections: int,
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    total = int(rate * duration)
    idle: list[_Conn] = []
    slots = asyncio.Semaphore(max_connections)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    start = loop.time() + 0.05

    def error(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    async def connection() -> _Conn:
        while idle:
            conn = idle.pop()
            if conn.reusable(loop.time()):
                return conn
            conn.close()
        return _Conn(*await asyncio.open_connection(host, port))

    async def one(i: int, due: float) -> None:
        async with slots:
            conn = await connection()
            try:
                status, keep = await conn.exchange(make_request(i))
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                error(type(exc).__name__)
                conn.close()
                return
            latencies.append(loop.time() - due)
            if status >= 400:
                error(f"status {status}")
            if keep:
                conn.last_used = loop.time()
                idle.append(conn)
            else:
                conn.close()

    tasks = []
    for i in range(total):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    elapsed = loop.time() - start
    for conn in idle:
        conn.close()
    latencies.sort()
    return {
        "target_rps": rate,
        "achieved_rps": len(latencies) / elapsed if elapsed > 0 else 0.0,
        "requests": total,
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "p50_ms": _percentile(latencies, 50) * 1000,
        "p90_ms": _percentile(latencies, 90) * 1000,
        "p99_ms": _percentile(latencies, 99) * 1000,
        "max_ms": (latencies[-1] if latencies else 0.0) * 1000,
        "mean_ms": (statistics.fmean(latencies) if latencies else 0.0) * 1000,
    }


def _percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, round(pct / 100 * (len(sorted_values) - 1)))
    return sorted_values[index]


def run_fixed_rate(
    host: str,
    port: int,
    rate: float,
    duration: float,
    make_request: Callable[[int], bytes],
    max_connections: int = 64,
) -> dict[str, Any]:
    """Send `rate` requests a second for `duration` seconds; latency percentiles in ms."""
    return asyncio.run(_run(host, port, rate, duration, make_request, max_connections))
