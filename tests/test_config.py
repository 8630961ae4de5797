"""Configuration is read from the environment and documented in the README."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from analytics_service.app import create_app
from analytics_service.config import Settings

from .conftest import FrozenClock

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_documents_every_variable_the_service_reads() -> None:
    read = set()
    for source in (ROOT / "analytics_service").rglob("*.py"):
        read |= set(re.findall(r'"(ANALYTICS_[A-Z_]+)"', source.read_text()))
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `(ANALYTICS_[A-Z_]+)`", readme, flags=re.M))
    assert read
    assert read <= documented, read - documented


def test_settings_come_from_the_environment_with_defaults() -> None:
    s = Settings.from_env({"ANALYTICS_TRUSTED_PROXIES": "2", "ANALYTICS_REDIS_URL": "redis://x"})
    assert (s.trusted_proxies, s.redis_url, s.redis_socket_timeout) == (2, "redis://x", 0.5)
    assert s.database_lock_timeout == 5.0
    lock = Settings.from_env({"ANALYTICS_DATABASE_LOCK_TIMEOUT": "2.5"}).database_lock_timeout
    assert lock == 2.5
    assert s.effective_database_url.startswith("sqlite:///")


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("ANALYTICS_TRUSTED_PROXIES", "-1"),
        # Cut to 1 it would trust one proxy where the operator may have meant two.
        ("ANALYTICS_TRUSTED_PROXIES", "1.7"),
        ("ANALYTICS_TRUSTED_PROXIES", "nan"),
        ("ANALYTICS_TRUSTED_PROXIES", "inf"),
        ("ANALYTICS_REDIS_SOCKET_TIMEOUT", "soon"),
        # 0 made every Redis call fail at once, logged as a connection error: hits buffered,
        # then lost at the stop, while /readyz said ready.
        ("ANALYTICS_REDIS_SOCKET_TIMEOUT", "0"),
        ("ANALYTICS_REDIS_CONNECT_TIMEOUT", "0"),
        # 1e20 stopped every command with an OverflowError traceback from the socket.
        ("ANALYTICS_REDIS_SOCKET_TIMEOUT", "1e20"),
        ("ANALYTICS_REDIS_CONNECT_TIMEOUT", "61"),
        # 0 (or 0.5, cut to 0) answered every hit 503 'storage_unavailable', Redis being fine.
        ("ANALYTICS_BUFFER_MAX_HITS", "0"),
        ("ANALYTICS_BUFFER_MAX_HITS", "0.5"),
        ("ANALYTICS_COUNTER_MAX_AGE", "-5"),  # was sent as `max-age=-5`
        ("ANALYTICS_COUNTER_MAX_AGE", "1e30"),  # was sent as a 31-digit max-age
        ("ANALYTICS_CHECKPOINT_SECONDS", "0"),
        ("ANALYTICS_ROLLUP_GRACE_SECONDS", "-1"),
        # A grace of days closed days after Redis had let them go; 1e12 overflowed a date in
        # every run, 1e20 killed the scheduler at start, with tracebacks naming nothing.
        ("ANALYTICS_ROLLUP_GRACE_SECONDS", "86401"),
        ("ANALYTICS_ROLLUP_GRACE_SECONDS", "1e20"),
        ("ANALYTICS_CHECKPOINT_SECONDS", "1e12"),
        ("ANALYTICS_SITE_CACHE_SECONDS", "-30"),
        # `site delete` waits this long: 1e300 stopped it half done with a traceback.
        ("ANALYTICS_SITE_CACHE_SECONDS", "86401"),
        ("ANALYTICS_SITE_CACHE_SECONDS", "1e300"),
        ("ANALYTICS_COUNTER_CACHE_SECONDS", "never"),
        # Taken, each worker served its first read of a site until the site's settings
        # changed: every box froze, "today" a day long over.
        ("ANALYTICS_COUNTER_CACHE_SECONDS", "86401"),
        ("ANALYTICS_COUNTER_CACHE_SECONDS", "1e300"),
        # logging's dictConfig refused it with a traceback, in every process.
        ("ANALYTICS_LOG_LEVEL", "BOGUS"),
        # 0 is "no limit" to PostgreSQL's lock_timeout and "do not wait" to SQLite.
        ("ANALYTICS_DATABASE_LOCK_TIMEOUT", "0"),
        ("ANALYTICS_DATABASE_LOCK_TIMEOUT", "-5"),
        ("ANALYTICS_DATABASE_LOCK_TIMEOUT", "61"),
        ("ANALYTICS_DATABASE_LOCK_TIMEOUT", "soon"),
    ],
)
def test_bad_settings_are_refused_with_the_variable_named(name: str, raw: str) -> None:
    with pytest.raises(ValueError, match=f"^{name} must be .*, got '{re.escape(raw)}'$"):
        Settings.from_env({name: raw})


def test_tokens_lose_the_spaces_and_newline_a_header_could_not_carry() -> None:
    s = Settings.from_env(
        {"ANALYTICS_ADMIN_TOKEN": " s3cret\n", "ANALYTICS_METRICS_TOKEN": "\tm3trics \r\n"}
    )
    assert (s.admin_token, s.metrics_token) == ("s3cret", "m3trics")
    blank = Settings.from_env({"ANALYTICS_ADMIN_TOKEN": " \n", "ANALYTICS_METRICS_TOKEN": ""})
    assert (blank.admin_token, blank.metrics_token) == (None, None)


@pytest.mark.parametrize(
    "raw", ["redis://h1:7000,h2:7001", "rediss://u:p@[::1]:6380/1", "redis://redis"]
)
def test_redis_urls_with_seeds_ipv6_or_no_port_are_taken(raw: str) -> None:
    assert Settings.from_env({"ANALYTICS_REDIS_URL": raw}).redis_url == raw


def test_the_longest_grace_checkpoint_interval_and_site_cache_are_a_day() -> None:
    s = Settings.from_env(
        {
            "ANALYTICS_ROLLUP_GRACE_SECONDS": "86400",
            "ANALYTICS_CHECKPOINT_SECONDS": "86400",
            "ANALYTICS_SITE_CACHE_SECONDS": "86400",
        }
    )
    assert (s.rollup_grace_seconds, s.checkpoint_seconds, s.site_cache_seconds) == (
        86400,
        86400,
        86400,
    )


def test_whole_number_settings_take_a_whole_number_however_written() -> None:
    s = Settings.from_env({"ANALYTICS_BUFFER_MAX_HITS": "2e4", "ANALYTICS_COUNTER_MAX_AGE": "0"})
    assert (s.buffer_max_hits, s.counter_max_age) == (20_000, 0)


@pytest.mark.parametrize(
    "raw",
    [
        "http://user:s3cret@redis:6379/0",
        "redis://:s3cret@",
        "localhost:6379",
        "redis:6379",
        # Each failed in every worker and job run, with a traceback naming no variable.
        "redis://:s3cret@127.0.0.1:abc/0",
        "redis://:s3cret@redis:99999/0",
        "redis://:s3cret@redis:0/0",
        "redis://:s3cret@h1:7000,h2:70o1",
    ],
)
def test_a_redis_url_that_is_not_one_is_refused_without_its_password(raw: str) -> None:
    """It failed at the first Redis call instead: every gunicorn worker, every job run and
    the CLI's commands with a traceback."""
    with pytest.raises(ValueError, match=r"^ANALYTICS_REDIS_URL must") as refused:
        Settings.from_env({"ANALYTICS_REDIS_URL": raw})
    assert "s3cret" not in str(refused.value)


@pytest.mark.parametrize("name", ["ANALYTICS_ADMIN_TOKEN", "ANALYTICS_METRICS_TOKEN"])
def test_a_token_no_client_can_send_is_refused_at_start_without_echoing_it(
    name: str, settings: Settings, clock: FrozenClock
) -> None:
    """A passphrase typed in Vietnamese is taken as it stands, and can never be used: a
    browser refuses to send it in a header (fetch: TypeError, which the dashboard reports
    as "cannot reach the service"), and curl's UTF-8 bytes reach the app as Latin-1 text,
    whose hash is another. Every request answers 401 "unknown token", and nothing says
    why. It must stop the service at once, as other settings that cannot be right do."""
    token = "mật-khẩu-quản-trị-2026"
    app = create_app(dataclasses.replace(settings, admin_token=token), clock=clock)
    sent_by_curl = "Bearer " + token.encode().decode("latin-1")  # what WSGI hands over
    answer = app.test_client().get("/api/v1/token", headers={"Authorization": sent_by_curl})
    app.extensions["analytics"].close()
    assert answer.status_code == 401  # the service as configured cannot be signed into

    with pytest.raises(ValueError, match=f"^{name} must be ") as refused:
        Settings.from_env({name: token})
    assert token not in str(refused.value)  # a secret is not written to the log
