"""Configuration: every ANALYTICS_* environment variable, parsed once at start.

The README's configuration table describes each one (tests/test_config.py checks that it
lists every variable read here).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .logs import FORMATS

# The longest Redis timeouts: a request waiting longer than gunicorn's worker timeout (30 s)
# is killed with its worker anyway, and 1e20 stopped every command with an OverflowError
# from the socket, naming nothing.
REDIS_TIMEOUT_MOST = 60.0


def _env_float(
    env: Mapping[str, str],
    name: str,
    default: float,
    *,
    positive: bool = False,
    most: float = math.inf,
) -> float:
    """A number of 0 or more (more than 0 if `positive`), at most `most`: a timeout of 0 or
    a negative max-age is accepted by the libraries and breaks the service in ways that
    name nothing."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    least = "more than 0" if positive else "0 or more"
    bound = f"{least} and at most {most:g}" if math.isfinite(most) else least
    if not math.isfinite(value) or value < 0 or (positive and value == 0) or value > most:
        raise ValueError(f"{name} must be a number of {bound}, got {raw!r}")
    return value


def env_int(
    env: Mapping[str, str],
    name: str,
    default: int,
    *,
    positive: bool = False,
    most: float = math.inf,
) -> int:
    """A whole number (`1.7` is refused, not cut to 1), bounded as `_env_float`'s; also
    what gunicorn.conf.py reads its GUNICORN_* numbers with."""
    value = _env_float(env, name, default, positive=positive, most=most)
    if not float(value).is_integer():
        raise ValueError(f"{name} must be a whole number, got {env.get(name)!r}")
    return int(value)


def _env_token(env: Mapping[str, str], name: str) -> str | None:
    """A secret as a client can send it: a header's value loses its surrounding spaces, so a
    token read with a trailing newline (an env file, a mounted secret) could never match.
    Only printable ASCII: a browser will not send anything else in a header, and other
    clients' bytes reach the app as Latin-1 text, so such a token could never match either.
    The message leaves the value out: it is a secret."""
    token = (env.get(name) or "").strip()
    if not all(" " <= ch <= "~" for ch in token):
        raise ValueError(
            f"{name} must be printable ASCII (letters, digits, punctuation), as a header "
            "carries it: no client can send this token"
        )
    return token or None


def _env_url(env: Mapping[str, str], name: str) -> str | None:
    raw = (env.get(name) or "").strip().rstrip("/")
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
        raise ValueError(f"{name} must be an http(s) URL like https://stats.example, got {raw!r}")
    return raw


def _env_redis_url(env: Mapping[str, str], name: str) -> str | None:
    """redis:// or rediss:// with a host. Anything else failed only at the first call, in
    every worker and job, with a traceback; the message leaves out the URL's password."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("redis", "rediss") or not parts.netloc.rpartition("@")[2]:
        raise ValueError(
            f"{name} must be a redis:// or rediss:// URL with a host, like "
            f"redis://redis:6379/0; got one with the scheme {parts.scheme!r}"
            if parts.scheme not in ("redis", "rediss")
            else f"{name} must name a host, like redis://redis:6379/0"
        )
    for host in parts.netloc.rpartition("@")[2].split(","):
        if not _port_is_valid(host.strip()):
            raise ValueError(
                f"{name} must name each host as host:port with a port from 1 to 65535, like "
                f"redis://redis:6379/0; got {host.strip()!r}"
            )
    return raw


def _port_is_valid(host: str) -> bool:
    """`host` (host or host:port) has no port, or one from 1 to 65535."""
    try:
        port = urlsplit(f"//{host}").port
    except ValueError:  # not a number, or past 65535
        return False
    return port != 0


# The most the checkpoint interval and the rollup's grace may be. A grace of days would
# close days after Redis had let them go (keys.DAY_KEY_GRACE_SECONDS), and a checkpoint
# rarer than daily protects nothing; larger values overflowed dates deep in the jobs.
DAY_SECONDS = 86400.0

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _env_log_level(env: Mapping[str, str], name: str) -> str:
    raw = (env.get(name) or "INFO").strip()
    if raw.upper() not in LOG_LEVELS:
        raise ValueError(f"{name} must be one of {', '.join(LOG_LEVELS)}, got {raw!r}")
    return raw.upper()


def _env_flag(env: Mapping[str, str], name: str) -> bool:
    raw = (env.get(name) or "0").strip().lower()
    if raw not in ("0", "1", "true", "false", "yes", "no"):
        raise ValueError(f"{name} must be 1 or 0, got {raw!r}")
    return raw in ("1", "true", "yes")


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """One of `choices`, the first being the default."""
    raw = env.get(name) or choices[0]
    if raw not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


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
    # Off unless configured (from_env turns it on): tests read the counter right after a
    # hit at the same frozen instant and must see it.
    counter_cache_seconds: float = 0.0
    admin_token: str | None = None
    log_level: str = "INFO"
    log_format: str = "text"
    # Bearer token of GET /metrics; unset: /metrics answers 404.
    metrics_token: str | None = None
    # How long a web request waits for a lock another database session holds (db.py
    # `bound_lock_waits`) before it is answered 503.
    database_lock_timeout: float = 5.0
    checkpoint_seconds: float = 300.0
    rollup_grace_seconds: float = 600.0
    buffer_max_hits: int = 100_000
    # Where a stopping worker keeps the hits Redis did not take (spool.py); None: under
    # data_dir.
    spool_dir: Path | None = None
    # The service's address as readers reach it, for the snippet the demo page shows (never
    # taken from the request's Host header). `analytics-service run` defaults it to its own.
    public_url: str | None = None
    # `/` shows the demo portal page (for `make run`); off, it is a landing page that links
    # to the dashboard, since in production no `demo` site exists.
    demo_page: bool = False

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'analytics.db'}"

    @property
    def effective_spool_dir(self) -> Path:
        return self.spool_dir or self.data_dir.resolve() / "spool"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            data_dir=Path(env.get("ANALYTICS_DATA_DIR") or "var"),
            redis_url=_env_redis_url(env, "ANALYTICS_REDIS_URL"),
            database_url=env.get("ANALYTICS_DATABASE_URL") or None,
            trusted_proxies=env_int(env, "ANALYTICS_TRUSTED_PROXIES", 0),
            # `site delete` waits this long before its last sweep: 1e300 stopped it half
            # done with an OverflowError traceback, and a longer wait than a day helps no one.
            site_cache_seconds=_env_float(
                env, "ANALYTICS_SITE_CACHE_SECONDS", 30.0, most=DAY_SECONDS
            ),
            redis_connect_timeout=_env_float(
                env, "ANALYTICS_REDIS_CONNECT_TIMEOUT", 0.5, positive=True, most=REDIS_TIMEOUT_MOST
            ),
            redis_socket_timeout=_env_float(
                env, "ANALYTICS_REDIS_SOCKET_TIMEOUT", 0.5, positive=True, most=REDIS_TIMEOUT_MOST
            ),
            # A day at most: 1e30 was sent as a 31-digit max-age.
            counter_max_age=env_int(env, "ANALYTICS_COUNTER_MAX_AGE", 5, most=DAY_SECONDS),
            # A day at most: a worker reuses a read this long, so a larger value froze every
            # box (and its "today") at the first read.
            counter_cache_seconds=_env_float(
                env, "ANALYTICS_COUNTER_CACHE_SECONDS", 1.0, most=DAY_SECONDS
            ),
            admin_token=_env_token(env, "ANALYTICS_ADMIN_TOKEN"),
            log_level=_env_log_level(env, "ANALYTICS_LOG_LEVEL"),
            log_format=_choice(env, "ANALYTICS_LOG_FORMAT", FORMATS),
            metrics_token=_env_token(env, "ANALYTICS_METRICS_TOKEN"),
            # 0 would mean "no limit" to PostgreSQL and "do not wait" to SQLite; a minute is
            # far past the 10 s after which nginx gives up on the request.
            database_lock_timeout=_env_float(
                env,
                "ANALYTICS_DATABASE_LOCK_TIMEOUT",
                5.0,
                positive=True,
                most=REDIS_TIMEOUT_MOST,
            ),
            checkpoint_seconds=_env_float(
                env, "ANALYTICS_CHECKPOINT_SECONDS", 300.0, positive=True, most=DAY_SECONDS
            ),
            rollup_grace_seconds=_env_float(
                env, "ANALYTICS_ROLLUP_GRACE_SECONDS", 600.0, most=DAY_SECONDS
            ),
            buffer_max_hits=env_int(env, "ANALYTICS_BUFFER_MAX_HITS", 100_000, positive=True),
            spool_dir=Path(env["ANALYTICS_SPOOL_DIR"]) if env.get("ANALYTICS_SPOOL_DIR") else None,
            public_url=_env_url(env, "ANALYTICS_PUBLIC_URL"),
            demo_page=_env_flag(env, "ANALYTICS_DEMO_PAGE"),
        )
