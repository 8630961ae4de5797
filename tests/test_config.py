"""Configuration is read from the environment and documented in the README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from analytics_service.config import Settings

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
    assert s.effective_database_url.startswith("sqlite:///")


@pytest.mark.parametrize(
    "env", [{"ANALYTICS_TRUSTED_PROXIES": "-1"}, {"ANALYTICS_REDIS_SOCKET_TIMEOUT": "soon"}]
)
def test_bad_settings_are_refused_with_the_variable_named(env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="ANALYTICS_"):
        Settings.from_env(env)
