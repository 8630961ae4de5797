"""The Lua scripts, loaded from `lua/*.lua` once per process.

redis-py's `Script` sends EVALSHA and, after a Redis restart or failover has emptied the
script cache (NOSCRIPT), loads the source and runs it again by itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files

import redis
from redis.commands.core import Script


def _source(name: str) -> str:
    return files("analytics_service").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


@dataclass(frozen=True)
class Scripts:
    hit: Script
    counter: Script
    restore: Script
    unlock: Script

    @classmethod
    def register(cls, client: redis.Redis) -> Scripts:
        return cls(
            hit=client.register_script(_source("hit")),
            counter=client.register_script(_source("counter")),
            restore=client.register_script(_source("restore")),
            unlock=client.register_script(_source("unlock")),
        )
