"""The Lua scripts, loaded from `lua/*.lua` once per process, and how they are called.

On a plain Redis server the scripts are called through `PackedScript`, which writes the
EVALSHA command itself onto a pooled connection: the hit path is the service's hot loop,
and redis-py's general command path (argument encoding, retry wrapper, response callbacks)
costs more client CPU than the Redis work itself. On Redis Cluster, redis-py's `Script`
routes by key slot. Both send EVALSHA and, after a Redis restart or failover has emptied
the script cache (NOSCRIPT), load the source and run it again by themselves.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, Protocol

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError


def _source(name: str) -> str:
    return files("analytics_service").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


Arg = str | bytes | int | float


class ScriptCall(Protocol):
    def __call__(self, keys: Sequence[str], args: Sequence[Arg]) -> Any: ...


def _bulk(value: Arg) -> bytes:
    raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")
    return b"$%d\r\n%b\r\n" % (len(raw), raw)


class PackedScript:
    """EVALSHA of one script over `client`'s connection pool, packed by hand.

    Same guarantees as redis-py's own path: a connection that fails or times out is
    disconnected (redis.ConnectionError / redis.TimeoutError reach the caller, never a
    retry: a counting script must not run twice), and NOSCRIPT loads the script and
    sends the call once more.
    """

    def __init__(self, client: redis.Redis, source: str) -> None:
        self.client = client
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self._head = _bulk("EVALSHA") + _bulk(self.sha)
        self._pid = os.getpid()
        self._free: list[Any] = []
        self._keys_memo: tuple[object, bytes] = (None, b"")

    def pack(self, keys: Sequence[str], args: Sequence[Arg]) -> bytes:
        # Callers pass the same keys object for as long as their keys do not change (the
        # hit path: per site and minute), so their encoding is kept, in one atomic slot.
        memo_keys, packed_keys = self._keys_memo
        if keys is not memo_keys:
            packed_keys = _bulk(len(keys)) + b"".join(map(_bulk, keys))
            self._keys_memo = (keys, packed_keys)
        parts = [b"*%d\r\n" % (3 + len(keys) + len(args)), self._head, packed_keys]
        parts.extend(map(_bulk, args))
        return b"".join(parts)

    def __call__(self, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        command = self.pack(keys, args)
        try:
            return self._send(command)
        except NoScriptError:
            self.client.script_load(self.source)
            return self._send(command)

    def _send(self, command: bytes) -> Any:
        # A connection taken from the pool's free list for the duration of one call; the
        # list only ever holds as many as there were concurrent calls (the worker's threads).
        idle = self._idle
        try:
            conn = idle.pop()
        except IndexError:
            conn = self._new_connection()
        try:
            conn.send_packed_command([command], check_health=False)
            return conn.read_response()
        finally:
            idle.append(conn)

    @property
    def _idle(self) -> list[Any]:
        if self._pid != os.getpid():
            # A forked child must not share its parent's sockets.
            self._pid = os.getpid()
            self._free = []
        return self._free

    def _new_connection(self) -> Any:
        # Checked out of redis-py's pool for good: the pool still owns it, so closing the
        # client (or its pool) closes this socket too, and a failed connection that redis-py
        # disconnected reconnects on its next use.
        return self.client.connection_pool.get_connection()


@dataclass(frozen=True)
class Scripts:
    hit: ScriptCall
    counter: ScriptCall
    # Rare calls (a restore after Redis lost its data, a job's lock): redis-py's Script.
    restore: Script
    unlock: Script

    @staticmethod
    def load(client: redis.Redis | redis.RedisCluster) -> None:
        """SCRIPT LOAD every script, so that the first call of each after a Redis restart
        is not a NOSCRIPT answer and a second round trip."""
        for name in ("hit", "counter", "restore", "unlock"):
            client.script_load(_source(name))

    @classmethod
    def register(cls, client: redis.Redis | redis.RedisCluster) -> Scripts:
        if isinstance(client, redis.Redis):
            return cls(
                hit=PackedScript(client, _source("hit")),
                counter=PackedScript(client, _source("counter")),
                restore=client.register_script(_source("restore")),
                unlock=client.register_script(_source("unlock")),
            )
        return cls(
            hit=client.register_script(_source("hit")),
            counter=client.register_script(_source("counter")),
            restore=client.register_script(_source("restore")),
            unlock=client.register_script(_source("unlock")),
        )
