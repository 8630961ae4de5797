"""The production configuration: docker-compose.yml, the Dockerfile and gunicorn.conf.py.

No Docker engine runs on the development machines, so the compose file's structure is
checked by parsing it; what it runs is run for real elsewhere, on loopback: the image in
tests/test_image.py, nginx -> gunicorn -> Redis, SQL and the scheduler in tests/stack.py
(tests/test_proxy.py, tests/test_slow_clients.py). gunicorn.conf.py is loaded here and run.
"""

from __future__ import annotations

import ast
import gc
import http.client
import os
import re
import shlex
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import pytest
import sqlalchemy as sa
import yaml
from gunicorn.config import Config

from analytics_service import db
from analytics_service.cli import main as cli_main
from analytics_service.config import Settings

from .conftest import PORTAL, _fresh_postgres, eventually, free_port
from .redis_cluster import LocalCluster
from .stack import BIN, GUNICORN_CONF, NGINX_TEMPLATE, NGINX_VARIABLES, gunicorn, service_env

ROOT = Path(__file__).resolve().parent.parent
# Services the project builds itself (the others are stock nginx, redis, postgres images).
OWN_SERVICES = ("migrate", "web", "scheduler")
# Running for as long as the stack is up, as opposed to a one-shot job like `migrate`.
LONG_RUNNING = ("proxy", "redis", "postgres", "web", "scheduler")
ALL_SERVICES = {*LONG_RUNNING, "migrate"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def load_gunicorn_conf(env: dict[str, str]) -> dict[str, Any]:
    """The settings gunicorn.conf.py defines under `env`, validated by gunicorn itself."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        namespace: dict[str, Any] = {}
        exec(compile(GUNICORN_CONF.read_text(), str(GUNICORN_CONF), "exec"), namespace)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    cfg = Config()
    settings = {k: v for k, v in namespace.items() if k in cfg.settings}
    for name, value in settings.items():
        cfg.set(name, value)  # raises on a value gunicorn would refuse
    return settings


def _assert_cli_command_exists(argv: list[str]) -> None:
    command: click.Command = cli_main
    ctx = click.Context(cli_main)
    for word in argv:
        if word.startswith("-"):
            break
        if not isinstance(command, click.Group):
            break
        sub = command.get_command(ctx, word)
        assert sub is not None, f"`analytics-service {' '.join(argv)}`: no command {word!r}"
        command = sub


def _assert_gunicorn_command_is_the_project_entry_point(argv: list[str]) -> None:
    config = argv[argv.index("-c") + 1]
    assert (ROOT / config).is_file(), config
    module, _, attribute = argv[-1].partition(":")
    source = ROOT / Path(*module.split(".")).with_suffix(".py")
    tree = ast.parse(source.read_text())
    assigned = {
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    assert attribute in assigned, f"{source} defines no {attribute!r}"


@pytest.mark.parametrize("name", ["migrate", "web", "scheduler"])
def test_every_service_built_from_the_project_runs_a_command_the_project_has(
    compose: dict[str, Any], name: str
) -> None:
    argv = _command(compose["services"][name])
    if argv[0] == "gunicorn":
        _assert_gunicorn_command_is_the_project_entry_point(argv)
    else:
        assert argv[0] == "analytics-service", argv
        _assert_cli_command_exists(argv[1:])


def test_web_runs_gunicorn_with_the_production_config(compose: dict[str, Any]) -> None:
    assert _command(compose["services"]["web"]) == [
        "gunicorn",
        "-c",
        "gunicorn.conf.py",
        "analytics_service.wsgi:app",
    ]


def test_the_sysctl_for_reuse_port_sockets_is_an_optional_override(
    compose: dict[str, Any],
) -> None:
    """net.ipv4.tcp_migrate_req does not exist before Linux 5.14, and a container asking for
    it would not start there."""
    assert "sysctls" not in compose["services"]["web"]
    override = yaml.safe_load((ROOT / "deploy" / "compose.tcp-migrate.yml").read_text())
    assert override["services"]["web"]["sysctls"] == {"net.ipv4.tcp_migrate_req": 1}
    assert set(override["services"]) <= set(compose["services"])


def test_only_the_proxy_publishes_a_port_and_gunicorn_is_on_the_internal_network_only(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert set(services) == ALL_SERVICES
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"proxy"}
    internal = {name for name, net in compose["networks"].items() if (net or {}).get("internal")}
    for name in ALL_SERVICES - {"proxy"}:
        assert set(services[name]["networks"]) <= internal, name
    assert set(services["proxy"]["networks"]) & internal, "the proxy must reach gunicorn"
    assert services["proxy"]["environment"]["ANALYTICS_UPSTREAM"] == "web:8000"
    assert services["web"]["environment"]["GUNICORN_BIND"].endswith(":8000")


def test_the_proxy_runs_the_repositorys_nginx_template(compose: dict[str, Any]) -> None:
    proxy = compose["services"]["proxy"]
    assert proxy["image"].startswith("nginx:")
    mounts = {v.split(":")[1]: v.split(":")[0] for v in proxy["volumes"]}
    # The official image renders /etc/nginx/templates/X.template into its output dir.
    assert mounts["/etc/nginx/templates/nginx.conf.template"] == "./deploy/nginx.conf.template"
    assert proxy["environment"]["NGINX_ENVSUBST_OUTPUT_DIR"] == "/etc/nginx"
    # Every ${...} in the template is set here, and nothing else would be substituted:
    # nginx's own $variables are lowercase, the environment's are not.
    used = set(re.findall(r"\$\{(\w+)\}", NGINX_TEMPLATE.read_text()))
    assert used == set(NGINX_VARIABLES) <= set(proxy["environment"])
    assert not re.findall(r"\$[A-Z_]+\b", NGINX_TEMPLATE.read_text())
    listen = proxy["environment"]["NGINX_LISTEN"]
    assert any(p.endswith(f":{listen}") for p in proxy["ports"])


def test_behind_the_proxy_the_service_trusts_exactly_one_hop(compose: dict[str, Any]) -> None:
    for name in OWN_SERVICES:
        assert compose["services"][name]["environment"]["ANALYTICS_TRUSTED_PROXIES"] == "1"


def test_every_service_restarts_by_policy_and_starts_after_what_it_needs(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for name in LONG_RUNNING:
        assert services[name]["restart"] == "unless-stopped", name
    # The one-shot migration is not restarted: web and scheduler wait for its success.
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["proxy"]["depends_on"]["web"]["condition"] == "service_healthy"


def test_secrets_come_only_from_the_environment_and_the_password_is_required(
    compose: dict[str, Any],
) -> None:
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search("PASSWORD|TOKEN|SECRET", key):
                assert re.fullmatch(r"\$\{\w+:?[-?][^}]*\}", str(value)), (name, key, value)
    password = compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert password.startswith("${POSTGRES_PASSWORD:?")
    url = compose["services"]["web"]["environment"]["ANALYTICS_DATABASE_URL"]
    assert ":${POSTGRES_PASSWORD:?" in url


def test_web_scheduler_and_migrate_see_the_same_redis_and_database(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    seen = {
        (
            services[name]["environment"]["ANALYTICS_REDIS_URL"],
            services[name]["environment"]["ANALYTICS_DATABASE_URL"],
        )
        for name in OWN_SERVICES
    }
    assert len(seen) == 1, seen
    redis_url, database_url = seen.pop()
    assert re.fullmatch(r"redis://redis:6379/\d+", redis_url)
    assert database_url.startswith("postgresql+psycopg://")
    assert "@postgres:5432/" in database_url


def test_every_long_running_service_has_a_health_check(compose: dict[str, Any]) -> None:
    for name in LONG_RUNNING:
        check = compose["services"][name].get("healthcheck")
        assert check and check.get("test"), f"{name} has no health check"


def _scheduler_health(compose: dict[str, Any], env: dict[str, str]) -> subprocess.CompletedProcess:
    """The scheduler's health check as compose runs it in the image (where the project's
    commands are on PATH: here, the virtualenv's)."""
    test = compose["services"]["scheduler"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    argv = [str(BIN / test[1]) if (BIN / test[1]).exists() else test[1], *test[2:]]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


def test_the_schedulers_health_check_reaches_one_redis_a_clusters_seeds_and_the_database(
    compose: dict[str, Any], settings: Settings, redis_cluster: LocalCluster
) -> None:
    """It once read ANALYTICS_REDIS_URL with redis-py's from_url, which takes no list of
    seeds: with the README's `redis://h1:7000,h2:7001` the scheduler was never healthy."""
    for url in (settings.redis_url or "", redis_cluster.seeds_url):
        done = _scheduler_health(compose, service_env(settings, ANALYTICS_REDIS_URL=url))
        assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("down", ["redis", "database"])
def test_the_schedulers_health_check_fails_in_one_line_naming_what_does_not_answer(
    compose: dict[str, Any], settings: Settings, down: str
) -> None:
    closed = free_port()
    env = (
        service_env(settings, ANALYTICS_REDIS_URL=f"redis://127.0.0.1:{closed}/0")
        if down == "redis"
        else service_env(
            settings, ANALYTICS_DATABASE_URL=f"postgresql+psycopg://u@127.0.0.1:{closed}/db"
        )
    )
    done = _scheduler_health(compose, env)
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(
        "Error: Redis at" if down == "redis" else "Error: cannot open the database"
    )
    if down == "database":
        # A database server that does not answer: no advice about the folder of a SQLite
        # file, which this database is not.
        assert "project folder" not in line and "analytics.db" not in line, line
        assert "ANALYTICS_DATABASE_URL" in line, line


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgres ql://analytics@postgres/analytics", "is not a database URL"),
        ("mysql://analytics@db/analytics", "names a database this install has no driver"),
    ],
    ids=["unparsable", "no-driver"],
)
def test_the_schedulers_health_check_names_a_database_url_it_cannot_use_in_one_line(
    compose: dict[str, Any], settings: Settings, url: str, says: str
) -> None:
    """As every other command does (`_repo`): it printed a 30-line traceback."""
    done = _scheduler_health(compose, service_env(settings, ANALYTICS_DATABASE_URL=url))
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"Error: ANALYTICS_DATABASE_URL {says}"), line


def test_web_and_scheduler_start_only_after_their_stores_are_healthy(
    compose: dict[str, Any],
) -> None:
    for name in ("web", "scheduler"):
        needs = compose["services"][name]["depends_on"]
        assert needs["redis"]["condition"] == "service_healthy"
        assert needs["postgres"]["condition"] == "service_healthy"
        assert needs["migrate"]["condition"] == "service_completed_successfully"


def test_redis_appends_every_second_to_a_volume_has_a_memory_bound_and_never_evicts(
    compose: dict[str, Any],
) -> None:
    redis_service = compose["services"]["redis"]
    args = " ".join(_command(redis_service))
    assert "--appendonly yes" in args
    assert "--appendfsync everysec" in args
    assert "--maxmemory-policy noeviction" in args
    assert re.search(r"--maxmemory \S+", args)
    assert any(v.endswith(":/data") for v in redis_service["volumes"])
    assert any(
        v.endswith(":/var/lib/postgresql/data") for v in compose["services"]["postgres"]["volumes"]
    )
    assert {"redis-data", "postgres-data"} <= set(compose["volumes"])


def test_a_stop_waits_longer_than_gunicorns_graceful_shutdown(compose: dict[str, Any]) -> None:
    grace = int(compose["services"]["web"]["stop_grace_period"].removesuffix("s"))
    assert grace > load_gunicorn_conf({})["graceful_timeout"]


def test_the_image_is_slim_and_runs_as_a_user() -> None:
    """What it holds and that it serves: tests/test_image.py."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.1\d+-slim\b", dockerfile, flags=re.M)
    users = re.findall(r"^USER (\S+)", dockerfile, flags=re.M)
    assert users and users[-1] not in ("root", "0")
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def test_the_gunicorn_master_migrates_the_database_before_workers_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    monkeypatch.setenv("ANALYTICS_DATABASE_URL", url)
    # on_starting also empties the metrics folder: this test's own.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))
    namespace: dict[str, Any] = {}
    exec(compile(GUNICORN_CONF.read_text(), str(GUNICORN_CONF), "exec"), namespace)
    assert "on_starting" in Config().settings
    namespace["on_starting"](SimpleNamespace(cfg=Config()))  # the arbiter: its settings
    engine = db.create_engine(url)
    try:
        assert {t.name for t in db.metadata.sorted_tables} <= set(
            sa.inspect(engine).get_table_names()
        )
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "kind", ["migrated by a newer release", "no driver", "not answering", "no such folder"]
)
def test_gunicorn_refuses_a_database_it_cannot_use_in_one_line_and_leaves_no_folder(
    tmp_path: Path, kind: str
) -> None:
    """A database that does not answer (a PostgreSQL down as the web container restarts)
    printed a 120-line traceback, outside the JSON log format."""
    if kind == "no driver":
        url = "mysql://u:s3cret@127.0.0.1/x"
    elif kind == "not answering":
        url = f"postgresql+psycopg://u:s3cret@127.0.0.1:{free_port()}/x"
    elif kind == "no such folder":
        url = f"sqlite:///{tmp_path / 'not-there' / 'analytics.db'}"
    else:
        url = f"sqlite:///{tmp_path / 'newer.db'}"
        engine = db.create_engine(url)
        db.upgrade(engine)
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = 'f00dfeed'"))
        engine.dispose()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANALYTICS_", "PROM"))}
    env |= {
        "ANALYTICS_DATABASE_URL": url,
        "ANALYTICS_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "GUNICORN_BIND": f"127.0.0.1:{free_port()}",
        "TMPDIR": str(tmp_path),  # where the master makes its metrics folder
    }
    cmd = [str(BIN / "gunicorn"), "-c", str(GUNICORN_CONF), "analytics_service.wsgi:app"]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Traceback" not in output, output
    [line] = [x for x in output.splitlines() if "gunicorn.conf.py: " in x]
    assert line.startswith("gunicorn.conf.py: ANALYTICS_DATABASE_URL: ")
    if kind in ("not answering", "no such folder"):
        assert line.startswith("gunicorn.conf.py: ANALYTICS_DATABASE_URL: cannot open the ")
    assert "s3cret" not in output
    assert not list(tmp_path.glob("analytics-metrics-*"))


def test_each_worker_freezes_what_it_loaded_so_collections_skip_it() -> None:
    namespace: dict[str, Any] = {}
    exec(compile(GUNICORN_CONF.read_text(), str(GUNICORN_CONF), "exec"), namespace)
    assert "post_worker_init" in Config().settings
    assert gc.get_freeze_count() == 0
    try:
        namespace["post_worker_init"](None)
        # Everything alive now (this test process's modules) sits in the permanent
        # generation, which no collection walks.
        assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()


def test_gunicorn_conf_has_sane_defaults() -> None:
    conf = load_gunicorn_conf({})
    assert conf["workers"] >= 2
    assert conf["worker_class"] in ("sync", "gthread", "gevent")
    assert conf["threads"] >= 1
    assert 0 < conf["keepalive"] <= 75
    assert 0 < conf["graceful_timeout"] < conf["timeout"] <= 120
    assert conf["bind"] == "0.0.0.0:8000"
    assert conf["reuse_port"] is True


def test_gunicorn_conf_takes_its_values_from_the_environment() -> None:
    conf = load_gunicorn_conf(
        {
            "GUNICORN_BIND": "127.0.0.1:9001",
            "GUNICORN_WORKERS": "7",
            "GUNICORN_WORKER_CLASS": "sync",
            "GUNICORN_THREADS": "1",
            "GUNICORN_TIMEOUT": "11",
            "GUNICORN_ACCESSLOG": "off",
            "GUNICORN_REUSE_PORT": "0",
        }
    )
    assert (conf["bind"], conf["workers"], conf["worker_class"]) == ("127.0.0.1:9001", 7, "sync")
    assert (conf["threads"], conf["timeout"], conf["accesslog"]) == (1, 11, None)
    assert conf["reuse_port"] is False


def test_the_access_log_format_names_no_client_address_user_agent_or_query() -> None:
    log_format = load_gunicorn_conf({})["access_log_format"]
    for atom in ("%(h)s", "%(a)s", "%(q)s", "%(r)s", "%(U)s?", "%({x-forwarded-for}i)s"):
        assert atom not in log_format
    assert not re.search(r"%\(\{[^}]*\}[ie]\)s", log_format), "no request headers or environ"


def test_gunicorn_serves_the_app_and_its_access_log_holds_no_ip_or_user_agent(
    settings: Settings, site_token: str, tmp_path: Path
) -> None:
    log_path = tmp_path / "gunicorn.log"
    with gunicorn(settings, log_path, ANALYTICS_TRUSTED_PROXIES="1", GUNICORN_WORKERS="1") as port:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v1/hit?secret=query",
            data=f'{{"site": "demo", "url": "{PORTAL}/tin-tuc"}}'.encode(),
            headers={
                "User-Agent": "Mozilla/5.0 TellTaleAgent/1.0",
                "X-Forwarded-For": "198.51.100.77",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 202
    logged = log_path.read_text()
    # Method, path, protocol, status, body bytes, milliseconds: gunicorn.conf.py's format.
    assert re.search(r'"POST /api/v1/hit HTTP/1\.1" 202 0 \d+ms', logged), logged
    for secret in ("198.51.100.77", "127.0.0.1 -", "TellTaleAgent", "secret=query"):
        assert secret not in logged


def test_the_masters_own_metrics_folder_goes_when_it_exits(
    settings: Settings, site_token: str, tmp_path: Path
) -> None:
    """One folder per start, left behind, would fill a host's /tmp over deploys (the test
    suite alone left some 250 a run)."""
    log_path = tmp_path / "gunicorn.log"
    with gunicorn(settings, log_path, GUNICORN_WORKERS="1") as port:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).close()
        listening = re.search(r"Listening at: \S+ \((\d+)\)", log_path.read_text())
        assert listening, log_path.read_text()
        folder = Path(tempfile.gettempdir()) / f"analytics-metrics-{listening[1]}"
        assert any(folder.glob("*.db"))
    assert not folder.exists()


def test_a_master_that_cannot_migrate_exits_and_leaves_no_metrics_folder(
    settings: Settings, tmp_path: Path
) -> None:
    """gunicorn calls on_exit only for a master that started: each failed start (the
    database not up yet, under a restart policy) once left its folder behind."""
    env = service_env(
        settings,
        ANALYTICS_DATABASE_URL=f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none",
        GUNICORN_BIND=f"127.0.0.1:{free_port()}",
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    cmd = [str(BIN / "gunicorn"), "-c", str(GUNICORN_CONF), "analytics_service.wsgi:app"]
    master = subprocess.Popen(cmd, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    _, stderr = master.communicate(timeout=60)
    assert master.returncode != 0
    assert "Connection refused" in stderr or "connection failed" in stderr, stderr[-2000:]
    assert not (Path(tempfile.gettempdir()) / f"analytics-metrics-{master.pid}").exists()


@pytest.mark.parametrize(
    "cmd",
    [
        [str(BIN / "gunicorn"), "-c", str(GUNICORN_CONF), "analytics_service.wsgi:app"],
        [str(BIN / "analytics-service"), "site", "list"],
    ],
    ids=["gunicorn", "cli"],
)
def test_a_bad_setting_stops_the_service_and_the_cli_with_one_line_naming_it(
    settings: Settings, tmp_path: Path, cmd: list[str]
) -> None:
    env = service_env(settings, ANALYTICS_BUFFER_MAX_HITS="0.5")
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "ANALYTICS_BUFFER_MAX_HITS must be a whole number, got '0.5'" in line


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        # 0 workers listened and answered nobody; 0 threads died in each worker's traceback.
        ("GUNICORN_WORKERS", "0", "must be a number of more than 0, got '0'"),
        ("GUNICORN_THREADS", "0", "must be a number of more than 0, got '0'"),
        # A file was created and left empty: the lines went to stderr all the same.
        ("GUNICORN_ACCESSLOG", "/tmp/access.log", "must be - (on, to stderr"),
        # A gthread worker (the default) accepts no connection at all: it answered nobody.
        ("GUNICORN_WORKER_CONNECTIONS", "0", "must be a number of more than 0, got '0'"),
    ],
)
def test_a_gunicorn_setting_it_cannot_honour_stops_it_with_one_line_naming_it(
    settings: Settings, tmp_path: Path, name: str, raw: str, message: str
) -> None:
    cmd = [str(BIN / "gunicorn"), "-c", str(GUNICORN_CONF), "analytics_service.wsgi:app"]
    env = service_env(settings, **{name: raw})
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    [line] = done.stderr.strip().splitlines()
    assert f"{name} {message}" in line


def test_an_access_log_format_naming_headers_gets_them_from_gunicorns_logger(
    settings: Settings, tmp_path: Path
) -> None:
    """gunicorn.conf.py's logger builds only the plain atoms of its own format; an operator's
    format that names a request header or an environ entry still gets those."""
    log_path = tmp_path / "gunicorn.log"
    own_format = shlex.quote("probe=%({x-probe}i)s method=%({request_method}e)s %(s)s")
    with gunicorn(
        settings,
        log_path,
        GUNICORN_WORKERS="1",
        GUNICORN_CMD_ARGS=f"--access-logformat {own_format}",
    ) as port:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/healthz", headers={"X-Probe": "seen"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
    assert "probe=seen method=GET 200" in log_path.read_text()


def test_gunicorn_logs_where_it_listens_and_opens_no_control_socket(
    settings: Settings, tmp_path: Path
) -> None:
    """gunicorn >= 25 opens `~/.gunicorn/gunicorn.ctl` (or one in $XDG_RUNTIME_DIR), the
    same path for every instance a user runs; with reuse_port its own start-up line names no
    address."""
    home, runtime = tmp_path / "home", tmp_path / "runtime"
    home.mkdir()
    runtime.mkdir()
    log_path = tmp_path / "gunicorn.log"
    with gunicorn(
        settings, log_path, HOME=str(home), XDG_RUNTIME_DIR=str(runtime), GUNICORN_WORKERS="2"
    ) as port:
        assert list(home.iterdir()) == [] and list(runtime.iterdir()) == []
    assert re.search(rf"Listening at: http://127\.0\.0\.1:{port} \(\d+\)", log_path.read_text())


def test_each_gunicorn_worker_listens_on_a_socket_of_its_own(
    settings: Settings, site_token: str, tmp_path: Path
) -> None:
    """SO_REUSEPORT: the kernel, not whichever worker is idle, spreads new connections."""
    with gunicorn(
        settings, tmp_path / "gunicorn.log", GUNICORN_WORKERS="3", GUNICORN_ACCESSLOG="off"
    ) as port:
        for _ in range(50):  # workers bind as they boot
            if _listening_sockets(port) == 3:
                break
            time.sleep(0.1)
        assert _listening_sockets(port) == 3


def _listening_sockets(port: int) -> int:
    """IPv4 sockets in LISTEN state (0A) on 127.0.0.1:port, from the kernel's table."""
    local = f"0100007F:{port:04X}"
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for row in rows if row.split()[1] == local and row.split()[3] == "0A")


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_migrations_run_at_once_on_an_empty_database_all_succeed(
    kind: str, tmp_path: Path, postgres_url: str | None
) -> None:
    """Two web hosts starting together, or compose's migrate beside a gunicorn master: on
    PostgreSQL two of four such processes failed in half the rounds (duplicate key in
    pg_type: both created the same table)."""
    if kind == "postgresql" and postgres_url is None:
        pytest.skip("TEST_DATABASE_URL is not set")
    for round_ in range(3):
        if kind == "sqlite":
            url = f"sqlite:///{tmp_path / f'round-{round_}.db'}"
        else:
            url = _fresh_postgres(postgres_url)  # type: ignore[arg-type]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANALYTICS_")}
        env["ANALYTICS_DATABASE_URL"] = url
        upgrades = [
            subprocess.Popen(
                [str(BIN / "analytics-service"), "db", "upgrade"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(4)
        ]
        results = [(p.wait(timeout=60), p.communicate()[0]) for p in upgrades]
        assert [rc for rc, _ in results] == [0, 0, 0, 0], results
        engine = db.create_engine(url)
        try:
            tables = set(sa.inspect(engine).get_table_names())
        finally:
            engine.dispose()
        assert {t.name for t in db.metadata.sorted_tables} <= tables


def test_the_sync_worker_class_the_readme_offers_runs_sync_workers(
    settings: Settings, site_token: str, tmp_path: Path
) -> None:
    """README: GUNICORN_WORKER_CLASS `sync` (no keep-alive) is one of the three. gunicorn
    runs a `sync` worker with more than one thread as `gthread`, and GUNICORN_THREADS is 4
    unless set."""
    log_path = tmp_path / "gunicorn.log"
    with gunicorn(settings, log_path, GUNICORN_WORKERS="1", GUNICORN_WORKER_CLASS="sync") as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        try:
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            response.read()
            # A sync worker closes every connection after its answer.
            assert response.getheader("Connection") == "close", response.getheaders()
        finally:
            conn.close()
    assert re.search(r"Using worker: sync\b", log_path.read_text()), log_path.read_text()


def test_a_sync_worker_with_threads_is_refused_in_one_line(
    settings: Settings, tmp_path: Path
) -> None:
    """gunicorn would run it as gthread, with keep-alive, whatever GUNICORN_WORKER_CLASS says."""
    cmd = [str(BIN / "gunicorn"), "-c", str(GUNICORN_CONF), "analytics_service.wsgi:app"]
    env = service_env(settings, GUNICORN_WORKER_CLASS="sync", GUNICORN_THREADS="2")
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    [line] = done.stderr.strip().splitlines()
    assert "GUNICORN_THREADS must be 1 with GUNICORN_WORKER_CLASS=sync" in line


def test_a_reuse_port_other_than_1_or_0_is_refused_in_one_line(
    settings: Settings, tmp_path: Path
) -> None:
    """README: `1` a socket per worker, `0` one shared socket. `2` was taken as 0."""
    cmd = [str(BIN / "gunicorn"), "-c", str(GUNICORN_CONF), "analytics_service.wsgi:app"]
    env = service_env(settings, GUNICORN_REUSE_PORT="2", GUNICORN_BIND="127.0.0.1:1")
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    [line] = done.stderr.strip().splitlines()
    assert "GUNICORN_REUSE_PORT must be 1 or 0, got 2" in line


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("GUNICORN_WORKER_CLASS", "bogus", "GUNICORN_WORKER_CLASS 'bogus' cannot be loaded: "),
        (
            "GUNICORN_WORKER_CLASS",
            "gevent",  # the gevent package is not installed
            "GUNICORN_WORKER_CLASS 'gevent' cannot be loaded: RuntimeError: gevent worker "
            "requires gevent",
        ),
        ("GUNICORN_LOGLEVEL", "loud", "GUNICORN_LOGLEVEL must be one of "),
    ],
)
def test_a_worker_class_or_log_level_gunicorn_has_not_is_refused_in_one_line(
    settings: Settings, tmp_path: Path, name: str, value: str, said: str
) -> None:
    """gunicorn refused them with a traceback of its own, naming no variable."""
    cmd = [str(BIN / "gunicorn"), "-c", str(GUNICORN_CONF), "analytics_service.wsgi:app"]
    env = service_env(settings, **{name: value})
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"gunicorn.conf.py: {said}"), line


@pytest.mark.parametrize(
    ("port", "said"),
    [
        ("0", "a number of more than 0 and at most 65535"),
        ("65536", "a number of more than 0 and at most 65535"),
        # gunicorn listened on 1000 while the image's health check asked for port "1e3".
        ("1e3", "written in digits"),
        (" 8000", "written in digits"),
    ],
)
def test_a_port_that_no_client_can_reach_is_refused_in_one_line(
    settings: Settings, tmp_path: Path, port: str, said: str
) -> None:
    """PORT=0 listened on a port the kernel chose, which nothing pointed at."""
    cmd = [str(BIN / "gunicorn"), "-c", str(GUNICORN_CONF), "analytics_service.wsgi:app"]
    env = service_env(settings, PORT=port)
    env.pop("GUNICORN_BIND", None)
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    [line] = done.stderr.strip().splitlines()
    assert f"PORT must be {said}, got {port!r}" in line


@pytest.mark.parametrize("port", ["0", "65536"])
def test_port_is_not_read_when_gunicorn_bind_is_set(
    settings: Settings, tmp_path: Path, port: str
) -> None:
    """README: PORT is gunicorn's port when GUNICORN_BIND is unset; with it set, a PORT
    out of range (another program's setting of the host) stopped the start."""
    with gunicorn(settings, tmp_path / "gunicorn.log", GUNICORN_WORKERS="1", PORT=port) as bound:
        conn = http.client.HTTPConnection("127.0.0.1", bound, timeout=15)
        try:
            conn.request("GET", "/healthz")
            assert conn.getresponse().status == 200
        finally:
            conn.close()


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=5)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self.path))


def _status_over_unix_socket(path: Path) -> int | None:
    conn = _UnixHTTPConnection(path)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def test_gunicorn_serves_on_a_unix_socket(settings: Settings, tmp_path: Path) -> None:
    """GUNICORN_BIND=unix:/path, as nginx on the same host reaches a service: a unix socket
    takes no SO_REUSEPORT, and with the default GUNICORN_REUSE_PORT=1 every worker failed to
    bind it and was replaced by another that failed too, for ever."""
    path = tmp_path / "gunicorn.sock"
    log_path = tmp_path / "gunicorn.log"
    env = service_env(
        settings,
        GUNICORN_BIND=f"unix:{path}",
        GUNICORN_WORKERS="2",
        ANALYTICS_SPOOL_DIR=str(tmp_path / "spool"),
    )
    cmd = [str(BIN / "gunicorn"), "-c", str(GUNICORN_CONF), "analytics_service.wsgi:app"]
    with open(log_path, "ab") as log:
        master = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        served = eventually(
            lambda: master.poll() is not None or _status_over_unix_socket(path), timeout=30
        )
        assert served == 200, log_path.read_text()[-3000:]
    finally:
        master.terminate()
        master.wait(timeout=30)
    assert "failed: [Errno" not in log_path.read_text()


@pytest.mark.parametrize("shared", [False, True], ids=["another program", "another gunicorn"])
def test_a_port_another_program_listens_on_stops_gunicorn_in_one_line(
    settings: Settings, tmp_path: Path, shared: bool
) -> None:
    """With reuse_port the master binds nothing and each worker binds its own socket: a
    worker that could not exited with status 1 and gunicorn started another, for ever,
    having logged "Listening at". Without reuse_port gunicorn stops at once. A socket that
    sets SO_REUSEPORT itself, as a gunicorn of this service does (an old one still
    running), let the second start, and the two split the connections."""
    with socket.socket() as taken:
        if shared:
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cmd = [str(BIN / "gunicorn"), "-c", str(GUNICORN_CONF), "analytics_service.wsgi:app"]
        env = service_env(settings, GUNICORN_BIND=f"127.0.0.1:{port}")
        done = subprocess.run(
            cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    [line] = [x for x in done.stderr.splitlines() if "gunicorn.conf.py: " in x]
    assert line.startswith(f"gunicorn.conf.py: GUNICORN_BIND: cannot listen on 127.0.0.1:{port}")
    assert "Booting worker" not in done.stderr
