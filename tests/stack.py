"""The production processes, started the way docker-compose.yml starts them, on loopback.

nginx (Debian's binary, on the repository's deploy/nginx.conf.template) -> gunicorn
(gunicorn.conf.py, analytics_service.wsgi:app) -> the test Redis and SQL database, plus the
one `analytics-service scheduler`. No Docker engine runs here; these are the same commands
and configuration files, only the addresses differ.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from analytics_service.config import Settings

from .conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
GUNICORN_CONF = ROOT / "gunicorn.conf.py"
NGINX_TEMPLATE = ROOT / "deploy" / "nginx.conf.template"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
BIN = Path(sys.executable).parent
# What the template leaves to its environment (docker-compose.yml sets the same two).
NGINX_VARIABLES = ("NGINX_LISTEN", "ANALYTICS_UPSTREAM")


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment every process of the service shares (compose's x-analytics-env)."""
    return {
        **os.environ,
        "ANALYTICS_REDIS_URL": settings.redis_url or "",
        "ANALYTICS_DATABASE_URL": settings.effective_database_url,
        **extra,
    }


def wait_until_serving(
    port: int, proc: subprocess.Popen[bytes], log_path: Path | None = None, path: str = "/healthz"
) -> None:
    """Poll a starting process until it answers (not a wait for a time window)."""
    for _ in range(300):
        if proc.poll() is not None:
            logged = log_path.read_text() if log_path else ""
            raise AssertionError(f"{proc.args[0]} exited:\n{logged[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{proc.args[0]} did not start")


@contextmanager
def _process(argv: list[str], log_path: Path, **kwargs: object) -> Iterator[subprocess.Popen]:
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, **kwargs)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def gunicorn(settings: Settings, log_path: Path, **env: str) -> Iterator[int]:
    """The production command and config on a free port, serving; stopped on exit."""
    port = free_port()
    # The spool (spool.py) of this test's own, not one under the checkout that the next
    # test's workers would write to their Redis.
    spool = {"ANALYTICS_SPOOL_DIR": str(log_path.parent / "spool")}
    full_env = service_env(settings, GUNICORN_BIND=f"127.0.0.1:{port}", **spool | env)
    cmd = [str(BIN / "gunicorn"), "-c", str(GUNICORN_CONF), "analytics_service.wsgi:app"]
    with _process(cmd, log_path, cwd=ROOT, env=full_env) as proc:
        wait_until_serving(port, proc, log_path)
        yield port


@contextmanager
def scheduler(settings: Settings, log_path: Path, **env: str) -> Iterator[subprocess.Popen]:
    cmd = [str(BIN / "analytics-service"), "scheduler"]
    with _process(cmd, log_path, cwd=ROOT, env=service_env(settings, **env)) as proc:
        yield proc


def render_nginx_conf(listen: str, upstream: str) -> str:
    """The template with its two variables filled in, as the nginx image's envsubst does."""
    values = {"NGINX_LISTEN": listen, "ANALYTICS_UPSTREAM": upstream}
    return re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], NGINX_TEMPLATE.read_text())


@contextmanager
def nginx(upstream_port: int, workdir: Path, log_path: Path) -> Iterator[int]:
    """nginx on a free port in front of 127.0.0.1:upstream_port, until the block ends. It
    answers its own health check before the upstream is reachable."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "nginx.conf"
    conf.write_text(render_nginx_conf(f"127.0.0.1:{port}", f"127.0.0.1:{upstream_port}"))
    # Workers run as this user: as root, nginx would switch them to `nobody`, who cannot
    # enter pytest's private temporary folders. (The nginx image runs them as `nginx`.)
    user = " user root;" if os.geteuid() == 0 else ""
    cmd = [NGINX, "-p", f"{workdir}/", "-c", str(conf), "-g", f"daemon off;{user}"]
    with _process(cmd, log_path) as proc:
        wait_until_serving(port, proc, log_path, "/_proxy/health")
        yield port


@dataclass
class Stack:
    proxy_port: int
    app_port: int
    logs: Path

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text()


@contextmanager
def stack(settings: Settings, tmp: Path, **env: str) -> Iterator[Stack]:
    """nginx -> gunicorn -> Redis and SQL, and the scheduler, as compose runs them."""
    logs = tmp / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    # Behind one proxy that overwrites X-Forwarded-For: compose's setting.
    env = {"ANALYTICS_TRUSTED_PROXIES": "1", "GUNICORN_WORKERS": "2", **env}
    with ExitStack() as running:
        running.enter_context(scheduler(settings, logs / "scheduler.log", **env))
        app_port = running.enter_context(gunicorn(settings, logs / "gunicorn.log", **env))
        proxy_port = running.enter_context(nginx(app_port, tmp / "nginx", logs / "nginx.log"))
        yield Stack(proxy_port, app_port, logs)


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # names lowercased
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


def raw_request(
    port: int, data: bytes, timeout: float = 15, source: str | None = None
) -> RawResponse | None:
    """Send bytes as they are (malformed ones too) and read until the server closes the
    connection; None when it closed or reset it without answering. `source`: the client's
    own address, another one of 127.0.0.0/8, so that a test can look for it in logs."""
    address = ("127.0.0.1", port)
    source_address = (source, 0) if source else None
    with socket.create_connection(address, timeout, source_address) as sock:
        sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    if not received:
        return None
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(int(status_line.split()[1]), headers, body)


def assert_json_error(response: RawResponse | None, status: int) -> dict[str, str]:
    """The service's error shape, {"error": {"code", "message"}}, from whichever layer,
    readable by a script on any page (the widget tells a site owner why a view failed)."""
    assert response is not None, "closed without an answer"
    assert response.status == status, response
    assert response.headers["content-type"].startswith("application/json"), response
    assert response.headers.get("access-control-allow-origin") == "*", response
    error = response.json()["error"]  # type: ignore[index]
    assert set(error) == {"code", "message"} and all(error.values()), error
    return error


def send(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    source: str | None = None,
    **headers: str,
) -> RawResponse:
    """One well-formed request (header names given with underscores for dashes)."""
    conn = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=15, source_address=(source, 0) if source else None
    )
    try:
        conn.request(method, path, body, {k.replace("_", "-"): v for k, v in headers.items()})
        response = conn.getresponse()
        return RawResponse(
            response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        )
    finally:
        conn.close()
