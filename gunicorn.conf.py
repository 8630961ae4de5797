"""Production gunicorn settings: `gunicorn -c gunicorn.conf.py analytics_service.wsgi:app`.

Every value can be changed from the environment (GUNICORN_*); the defaults are the ones
`make bench` measured best on a 2-core machine (docs/benchmarks.md says how and why).
"""

from __future__ import annotations

import errno
import gc
import math
import os
import re
import shutil
import signal
import socket
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from gunicorn import util as gunicorn_util
from gunicorn.glogging import Logger

from analytics_service import logs
from analytics_service.config import Settings, env_int


def _env_int(name: str, default: int, *, positive: bool = False, most: float = math.inf) -> int:
    try:
        return env_int(os.environ, name, default, positive=positive, most=most)
    except ValueError as exc:
        # One line naming the setting (gunicorn prints a config file's errors as tracebacks).
        raise SystemExit(f"gunicorn.conf.py: {exc}") from None


def _env_str(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


def _port() -> int:
    """PORT=0 listened on a port the kernel chose, which nothing pointed at. Digits only:
    the image's health check puts PORT into its URL as written, and `1e3` (listened on as
    port 1000) or ` 8000` made every check fail while gunicorn served."""
    port = _env_int("PORT", 8000, positive=True, most=65535)
    if not re.fullmatch(r"[0-9]+", os.environ.get("PORT") or "8000"):
        raise SystemExit(
            f"gunicorn.conf.py: PORT must be written in digits, got {os.environ['PORT']!r}"
        )
    return port


# PORT is read only when GUNICORN_BIND is unset (README): a PORT another program of the host
# has set, say 0, stopped a gunicorn bound elsewhere.
bind = os.environ.get("GUNICORN_BIND", "").strip() or f"0.0.0.0:{_port()}"
# Pure-Python request handling is CPU bound: one process per core, plus one to cover the
# moments a worker waits on Redis. Threads overlap that wait without another process's memory.
workers = _env_int("GUNICORN_WORKERS", (os.cpu_count() or 1) + 1, positive=True)
worker_class = _env_str("GUNICORN_WORKER_CLASS", "gthread")
try:
    gunicorn_util.load_class(worker_class)
except (RuntimeError, AttributeError) as _exc:
    # gunicorn printed its own traceback for a name it cannot load (`gevent` without the
    # gevent package among them): one line, with the cause, as for the other settings.
    _cause = str(_exc).strip().rstrip("]").splitlines()[-1]
    raise SystemExit(
        f"gunicorn.conf.py: GUNICORN_WORKER_CLASS {worker_class!r} cannot be loaded: {_cause}"
    ) from None
# gunicorn runs a `sync` worker with more than one thread as `gthread` (with keep-alive):
# `sync` gets one thread unless told otherwise, and more is refused, not silently ignored.
_sync = worker_class == "sync" or worker_class.endswith("SyncWorker")
threads = _env_int("GUNICORN_THREADS", 1 if _sync else 4, positive=True)
if _sync and threads > 1:
    raise SystemExit(
        f"gunicorn.conf.py: GUNICORN_THREADS must be 1 with GUNICORN_WORKER_CLASS={worker_class}"
        f" (gunicorn would run gthread workers instead), got {threads}"
    )
# Widgets on one page and a reverse proxy both reuse connections; keep them a little longer
# than a typical proxy's idle pool timeout would close them from our side.
keepalive = _env_int("GUNICORN_KEEPALIVE", 5)
# The most connections a worker holds at once: a gevent worker's greenlets, and also a
# gthread worker's connections (kept-alive ones included; it stops accepting at this many).
# 0 was taken, and a gthread worker then accepted no connection at all.
worker_connections = _env_int("GUNICORN_WORKER_CONNECTIONS", 1000, positive=True)
# One listening socket per worker (SO_REUSEPORT), so the kernel spreads new connections
# evenly. With one shared socket, whichever worker is idle takes the next connection and
# keeps it: under keep-alive, one worker ended up with most of a client's (or a proxy's)
# connections and a single core's worth of Python. Measured with `make bench`: hits/s up
# and steady between rounds, worker CPU per hit down ~25 % (docs/benchmarks.md). The cost: a
# worker that exits drops the connections still queued on its socket, unless the kernel
# migrates them (Linux >= 5.14, sysctl net.ipv4.tcp_migrate_req=1; README, Deploying).
# A unix socket (GUNICORN_BIND=unix:/path) takes no SO_REUSEPORT: off unless asked for, and
# asked for, refused at start (_check_binds).
# Only 1 or 0: `2` was taken as 0, a shared socket, without a word.
_reuse_port = _env_int("GUNICORN_REUSE_PORT", 0 if bind.startswith("unix:") else 1)
if _reuse_port not in (0, 1):
    raise SystemExit(f"gunicorn.conf.py: GUNICORN_REUSE_PORT must be 1 or 0, got {_reuse_port}")
reuse_port = _reuse_port == 1
# A request never needs long: Redis calls time out after 0.5 s. A worker stuck for this many
# seconds is killed and replaced.
timeout = _env_int("GUNICORN_TIMEOUT", 30)
# On SIGTERM, finish the requests in flight for this long before exiting.
graceful_timeout = _env_int("GUNICORN_GRACEFUL_TIMEOUT", 20)
# Recycle workers now and then so a slow leak cannot grow for ever; jitter avoids all
# workers restarting at once. Not while Redis cannot be written to (pre_request below).
max_requests = _env_int("GUNICORN_MAX_REQUESTS", 1_000_000)
max_requests_jitter = max(1, max_requests // 10) if max_requests else 0
# A recycle put off while Redis cannot be written to is tried again after this many more
# requests of the worker.
RECYCLE_RETRY_REQUESTS = 1000

# Request limits at (or near) gunicorn's maximum: nginx in front (deploy/nginx.conf.template)
# refuses long request lines and headers first, with JSON answers; gunicorn's own refusals
# are HTML pages. So every request nginx passes is one gunicorn takes (tests/test_proxy.py
# sends requests at and around nginx's limits). nginx passes at most about 1,000 headers.
limit_request_line = 8190
# Above nginx's 8 KB a line: at 8190, gunicorn took header lines of at most 8,189 bytes,
# fewer than nginx passes.
limit_request_field_size = 16384
limit_request_fields = 2000
# (Not the bytes within a line: a control character in a header value, or a method of one
# or two letters, nginx passes and gunicorn answers with its HTML 400. No browser sends
# either.)
# The scheme only from the header the proxy sets: gunicorn also reads X-Forwarded-Ssl and
# X-Forwarded-Protocol from a proxy on 127.0.0.1, which nginx passes on as the client sent
# them, and answered such a request with its HTML 400 "Contradictory scheme headers".
secure_scheme_headers = {"X-FORWARDED-PROTO": "https"}

# Access log: request line without the query string, status, size, duration (the time and
# the request id are in every line of the log format).
# Deliberately no client address (%(h)s), User-Agent (%(a)s) or query string: this service
# never records who a reader is, and hit.gif carries the page URL in its query.
# Every line goes to stderr in the service's format (logs.dict_config below), access lines
# too: "-" has them, "off" not. A file name was once taken and then silently ignored.
accesslog = _env_str("GUNICORN_ACCESSLOG", "-")
if accesslog not in ("-", "off"):
    raise SystemExit(
        f"gunicorn.conf.py: GUNICORN_ACCESSLOG must be - (on, to stderr with the other lines) "
        f"or off, got {accesslog!r}"
    )
if accesslog == "off":
    accesslog = None
access_log_format = '"%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms'

# The WSGI environ entries that gunicorn's plain atoms (all but {header}i, {header}o and
# {key}e) read.
_PLAIN_ATOM_ENVIRON = (
    "REMOTE_ADDR",
    "HTTP_AUTHORIZATION",
    "REQUEST_METHOD",
    "RAW_URI",
    "SERVER_PROTOCOL",
    "PATH_INFO",
    "QUERY_STRING",
    "HTTP_REFERER",
    "HTTP_USER_AGENT",
)


class AccessLogger(Logger):
    """gunicorn's logger, without the atoms an access line never prints. For every request
    gunicorn makes an atom of each request header, response header and WSGI environ entry
    (about 40 for a hit, more for a browser's request through nginx) and copies them all
    once more to escape quotes, though the format above uses six plain ones and the log
    filter one response header, the request id (logs.py): 7 µs of a worker's CPU per hit
    (docs/benchmarks.md). A format that names a header or environ atom
    (--access-logformat) gets them all, as from gunicorn's own logger."""

    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> Any:
        if "{" in self.cfg.access_log_format:
            return super().atoms(resp, req, environ, request_time)
        plain = {key: environ[key] for key in _PLAIN_ATOM_ENVIRON if key in environ}
        request_id = [(k, v) for k, v in resp.headers if k.lower() == logs.ACCESS_LOG_ID_HEADER]
        bare = SimpleNamespace(status=resp.status, sent=resp.sent, headers=request_id)
        return super().atoms(bare, (), plain, request_time)


logger_class = AccessLogger
errorlog = "-"
loglevel = _env_str("GUNICORN_LOGLEVEL", "info")
if loglevel.lower() not in Logger.LOG_LEVELS:
    raise SystemExit(
        f"gunicorn.conf.py: GUNICORN_LOGLEVEL must be one of {', '.join(Logger.LOG_LEVELS)},"
        f" got {loglevel!r}"
    )
# gunicorn's own lines (its error log, its access log) in the service's format
# (analytics_service/logs.py): timestamp, level, logger, request id, message; text or JSON
# (ANALYTICS_LOG_FORMAT). The access log's request id is the X-Request-ID the app returned.
try:
    _settings = Settings.from_env()
except ValueError as exc:
    # One line naming the setting (gunicorn prints a config file's own errors as tracebacks).
    raise SystemExit(f"gunicorn.conf.py: {exc}") from None
logconfig_dict = logs.dict_config(
    _settings.log_level,
    _settings.log_format,
    gunicorn_level=loglevel,
    access_log=accesslog is not None,
)
# gunicorn >= 25 opens a control socket for `gunicornc` at $XDG_RUNTIME_DIR/gunicorn.ctl or
# ~/.gunicorn/gunicorn.ctl: one path for every instance a user runs, so a second instance
# (a test, a bench run, a blue-green deploy) takes it over from the first. Nothing here
# uses gunicornc; signals (HUP, TTIN, TERM) do the same jobs.
control_socket_disable = True


def when_ready(server: Any) -> None:
    """Say where the service listens. With reuse_port the master binds nothing (each worker
    binds its own socket), so gunicorn's own line reads `Listening at:  (pid)`."""
    addresses = ",".join(f"http://{address}" for address in server.cfg.bind)
    mode = "a socket per worker (SO_REUSEPORT)" if server.cfg.reuse_port else "one shared socket"
    server.log.info("Listening at: %s (%s), %s", addresses, server.pid, mode)


def _default_metrics_dir() -> Path:
    """The master's own metrics folder (called in the master: its pid)."""
    return Path(tempfile.gettempdir()) / f"analytics-metrics-{os.getpid()}"


def _fresh_metrics_dir() -> None:
    """prometheus-client's multiprocess mode (analytics_service/metrics.py): every worker
    writes its metrics to files in PROMETHEUS_MULTIPROC_DIR, and a scrape reads them all.
    The variable must be set before a worker imports the client, and the folder emptied at
    each start: files of a previous run would add their counts to this one's. Default: a
    folder of this master's own (two instances on one host must not share one), which goes
    when the master exits: one left behind per start would fill a host's /tmp over time."""
    path = Path(os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(_default_metrics_dir())))
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()


def on_exit(server: object) -> None:
    """The master, at its end: the metrics folder it made for itself goes with it (one an
    operator named in PROMETHEUS_MULTIPROC_DIR stays)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR") == str(_default_metrics_dir()):
        shutil.rmtree(_default_metrics_dir(), ignore_errors=True)


def _check_binds(server: Any) -> None:
    """With reuse_port the master binds nothing: each worker binds a socket of its own. A
    worker that cannot (a port another program listens on; a unix socket, which takes no
    SO_REUSEPORT) exits with status 1, and gunicorn starts another in its place, for ever,
    after logging "Listening at": it never served and never stopped. So the master binds
    each address once first, and stops with one line if it cannot. Without SO_REUSEPORT,
    unlike a worker: the kernel lets every socket that sets it bind a port its user holds,
    and a second gunicorn of this service on that port (an old one left running) split the
    connections with the first, without a word."""
    if not (server.cfg.reuse_port and hasattr(socket, "SO_REUSEPORT")):
        return  # the master binds the shared socket itself, and stops if it cannot
    for address in server.cfg.address:
        if isinstance(address, tuple):
            family = socket.AF_INET6 if gunicorn_util.is_ipv6(address[0]) else socket.AF_INET
            shown = f"{address[0]}:{address[1]}"
        elif isinstance(address, str):
            family, shown = socket.AF_UNIX, f"unix:{address}"
        else:
            continue  # fd://: a socket handed over, bound already
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_UNIX:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                else:
                    probe.bind(address)
        except OSError as exc:
            why = {
                errno.EADDRINUSE: "another program listens there",
                errno.EOPNOTSUPP: "a unix socket takes no SO_REUSEPORT: set GUNICORN_REUSE_PORT=0",
            }.get(exc.errno or 0, exc.strerror or str(exc))
            raise SystemExit(
                f"gunicorn.conf.py: GUNICORN_BIND: cannot listen on {shown}: {why}"
            ) from None


def on_starting(server: object) -> None:
    """Before any worker forks, in the master: the addresses to listen on, tried; the metrics
    folder, emptied; and pending database migrations, applied once. The service's start
    brings the schema up to date (idempotent, so the compose file's one-shot `migrate`
    before it does no harm), and workers never race each other to migrate."""
    _check_binds(server)
    _fresh_metrics_dir()
    import sqlalchemy as sa

    from analytics_service import db

    try:
        engine = db.create_engine(_settings.effective_database_url)
        try:
            db.upgrade(engine)
        finally:
            engine.dispose()
    except (db.MigrationError, sa.exc.ArgumentError, ImportError) as exc:
        on_exit(server)  # gunicorn calls it only for a master that started
        # One line, as for a bad setting: what the operator must change.
        raise SystemExit(f"gunicorn.conf.py: ANALYTICS_DATABASE_URL: {exc}") from None
    except sa.exc.DBAPIError as exc:
        # A database that does not answer (PostgreSQL down or restarting, a SQLite file in a
        # folder that is not there): one line saying so, as `db upgrade` prints, not a
        # 120-line traceback outside the log format, once per restart of the container.
        on_exit(server)
        shown = sa.engine.make_url(_settings.effective_database_url)
        raise SystemExit(
            f"gunicorn.conf.py: ANALYTICS_DATABASE_URL: cannot open the database "
            f"{logs.shown_url(shown.render_as_string(hide_password=True))}: {logs.db_reason(exc)}"
        ) from None
    except BaseException:
        on_exit(server)
        raise


# The largest body nginx passes on (the CSV import's 4 MiB, deploy/nginx.conf.template).
DRAIN_LIMIT_BYTES = 4 * 1024 * 1024


def _services(worker: Any) -> Any:
    """The worker's app's services (services.Services), once it has loaded the app."""
    return getattr(getattr(worker, "wsgi", None), "extensions", {}).get("analytics")


def pre_request(worker: Any, req: Any) -> None:
    worker.log.debug("%s %s", req.method, req.path)  # gunicorn's own pre_request
    _put_off_recycling(worker)


def post_request(worker: Any, req: Any, environ: dict[str, Any], resp: Any) -> None:
    if not getattr(worker, "aborting", False):
        _drain_body(environ)


def worker_abort(worker: Any) -> None:
    """A worker timeout: gunicorn's SIGABRT handler calls this, then exits the worker,
    through post_request when it was in a request, and worker_exit; the master's SIGKILL
    follows at its next look, a second later. So nothing may wait on a client or on Redis:
    a sync worker stuck on a body that never came read it again in post_request, and its
    drain waited on Redis; the kill then lost the buffer's hits without a line saying so.
    The drain ends at once instead, and what Redis did not take goes to the spool."""
    worker.aborting = True
    services = _services(worker)
    if services is not None:
        services.store.give_up()


def _put_off_recycling(worker: Any) -> None:
    """gunicorn stops a worker once it has served max_requests. While its writer cannot
    write to Redis that would cost hits: the exiting worker gives up on its buffer after
    half the graceful timeout (worker_exit), and the one started in its place cannot read
    the day's salt, so it refuses every hit. Such a recycle waits, unlike a stop (SIGTERM),
    which is someone's choice.

    Decided before the request is counted, never after: gunicorn marks the worker as no
    longer alive as it counts the request that reaches max_requests, before the app runs,
    and gthread's main thread, woken meanwhile by any other connection or request, then
    stops serving for good, whatever the flag says afterwards. Up to `threads` requests
    may be between this hook and their count at once, hence the margin."""
    if getattr(worker, "stopping", False):
        return
    if worker.nr + max(1, worker.cfg.threads) < worker.max_requests:
        return
    services = _services(worker)
    error = services.store.writer_error if services is not None else None
    if error is None:
        return
    worker.max_requests = worker.nr + RECYCLE_RETRY_REQUESTS
    worker.log.warning(
        "recycling this worker waits %d requests: Redis takes no writes (%s)",
        RECYCLE_RETRY_REQUESTS,
        logs.reason(error),
    )


def _drain_body(environ: dict[str, Any]) -> None:
    """Read what is left of a body the app answered without reading (a 401 before a 4 MB
    import, say). gunicorn drains at most 64 KB itself and then closes the connection with
    the rest unread; the kernel answers unread bytes with a reset, which can reach nginx
    before the response does: a 502 instead of the service's own answer."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return
    if not 0 < length <= DRAIN_LIMIT_BYTES:
        return
    try:
        while environ["wsgi.input"].read(64 * 1024):
            pass
    except OSError:  # the client went away: gunicorn closes the connection anyway
        return


def worker_exit(server: Any, worker: Any) -> None:
    """In the worker, once it has stopped serving (SIGTERM, a deploy, max_requests): write
    the hits its buffer still holds before the process ends. Half the graceful timeout, so
    the master's SIGKILL (at graceful_timeout) does not cut the drain short: the one
    gunicorn runs with, which its command line (--graceful-timeout, GUNICORN_CMD_ARGS)
    may have set over this file's."""
    services = _services(worker)
    if services is not None:
        _give_up_on_quit(services)
        services.close(drain_seconds=worker.cfg.graceful_timeout / 2)


def _give_up_on_quit(services: Any) -> None:
    """During the drain, a signal to end at once (SIGQUIT, SIGINT: a quick shutdown, which
    the master follows with SIGKILL 2 s later; SIGABRT: a worker timeout, SIGKILL at the
    master's next look) ends the drain, and the buffer logs the hits it gives up.
    gunicorn's own handlers exit from wherever the worker is: out of the drain, with
    those hits lost and no line saying so."""

    def give_up(signum: int, frame: Any) -> None:
        services.store.give_up()

    for signum in (signal.SIGQUIT, signal.SIGINT, signal.SIGABRT):
        signal.signal(signum, give_up)


def child_exit(server: Any, worker: Any) -> None:
    """A worker's live gauges (requests in progress) leave the sum when it exits; its
    counters and histograms stay counted, in the folder's archive (metrics_files.py)."""
    from analytics_service import metrics_files

    folder = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    try:
        metrics_files.archive_exited_worker(folder, worker.pid)
    except Exception:
        # Raised from this hook, it would end the master's main loop, and with it every
        # worker. The worker's files stay where they are, and are counted once.
        server.log.exception(
            "metrics: the files of exited worker %s could not be added to the archive in %s;"
            " they stay and are still read",
            worker.pid,
            folder,
        )


def post_worker_init(worker: Any) -> None:
    """Take the app's long-lived objects (modules, the Flask app, SQLAlchemy's metadata:
    some hundreds of thousands) out of the garbage collector's reach once the worker has
    loaded them. Otherwise a request now and then pays for a full collection that walks
    them all: measured 110-195 ms per worker on the 2-core bench machine
    (docs/benchmarks.md), against well under 1 ms for the collections that remain."""
    gc.collect()
    gc.freeze()
    _note_stops(worker)
    services = _services(worker)
    if services is not None:
        # Hits a worker stopped during a Redis outage kept on disk: this worker writes them
        # first (spool.py). In the worker, not at import: the master of `--preload` writes
        # nothing.
        services.store.resume_spooled()


def _note_stops(worker: Any) -> None:
    """Mark the worker as stopping on SIGTERM, which gunicorn tells from a recycle only by
    its handler: a recycle put off (pre_request) must never put off a stop."""
    handle_exit = signal.getsignal(signal.SIGTERM)

    def stopping(signum: int, frame: Any) -> None:
        worker.stopping = True
        handle_exit(signum, frame)  # type: ignore[operator]

    signal.signal(signal.SIGTERM, stopping)
    signal.siginterrupt(signal.SIGTERM, False)  # as gunicorn sets it
