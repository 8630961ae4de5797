"""Logging: one line format for the web workers, gunicorn itself, the scheduler and the CLI.

Every line holds a UTC timestamp, the level, the logger, the request id and the message.
The request id is the `X-Request-ID` the proxy sent (nginx sets one for every request) or
one generated here; it is returned on every response and written on every line logged
while the request is handled ("-" outside a request). `ANALYTICS_LOG_FORMAT=json` writes
the same fields as one JSON object per line (python-json-logger); the default is text:

    2026-11-28T03:00:00.123Z WARNING analytics_service.api.errors 5f2c... Redis unavailable ...

Nothing that identifies a reader is logged: no client address, User-Agent or token. The
service's own messages never include them; gunicorn's one message that does ("Invalid
request from ip=...") is rewritten without it (GunicornErrorFilter), and its access log
format names none (gunicorn.conf.py).
"""

from __future__ import annotations

import logging
import logging.config
import random
import re
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlsplit

REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="-")
# What a request id from outside may look like (nginx's $request_id: 32 hex digits);
# anything else is replaced, so a client cannot write what it likes into the logs.
VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(request_id)s %(message)s"
JSON_FIELDS = ("asctime", "levelname", "name", "request_id", "message")
JSON_NAMES = {"asctime": "time", "levelname": "level", "name": "logger"}
# The response header gunicorn's access log reads the request id from, and its atom.
ACCESS_LOG_ID_HEADER = "x-request-id"
ACCESS_LOG_ID_ATOM = f"{{{ACCESS_LOG_ID_HEADER}}}o"


def reason(exc: BaseException) -> str:
    """An error as a log line needs it: its type and its message. Not repr(): redis-py's
    errors show only their kind there (`network:ConnectionError`), without the address,
    the server's reply (WRONGTYPE, NOAUTH...) or the script's message."""
    return f"{type(exc).__name__}: {exc}"


# A password a URL passes as a query parameter: redis-py takes `?password=`, libpq (through
# SQLAlchemy) `?password=` and `?sslpassword=`.
QUERY_PASSWORD = re.compile(r"([?&][^=&#]*password=)[^&#]*", re.IGNORECASE)


def shown_url(url: str) -> str:
    """A Redis or database URL as a message may show it: the password of its user info and
    of its query replaced by `***` (what a log line or a one-line error names)."""
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    if colon:  # else left as written: geturl() drops the empty host of sqlite:////path
        url = parts._replace(netloc=f"{user}:***@{hosts}").geturl()
    return QUERY_PASSWORD.sub(r"\1***", url)


def db_reason(exc: BaseException) -> str:
    """A database error as people need it: the driver's own first line (sqlite3's,
    psycopg's), without SQLAlchemy's statement, parameters and link."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig else exc).strip()  # no driver error: the pool's own, say
    return text.splitlines()[0] if text else type(exc).__name__


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every record (gunicorn's access log lines are
    written after the request, so they take it from the response's header)."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = REQUEST_ID.get()
        if request_id == "-" and isinstance(record.args, dict):  # gunicorn's access atoms
            request_id = record.args.get(ACCESS_LOG_ID_ATOM) or "-"
        record.request_id = request_id
        return True


class GunicornErrorFilter(logging.Filter):
    """gunicorn's own error log. Its warning about a malformed request names the client's
    address and quotes what it could not parse (a header line may hold a User-Agent or a
    token): both are withheld, the kind of error stays. And with a socket per worker
    (reuse_port) the master's "Listening at:  (pid)" names nothing; gunicorn.conf.py logs
    the address instead."""

    INVALID_REQUEST = re.compile(r"^Invalid request from ip=\S*?: ")
    QUOTED = re.compile(r"b?'[^']*'|b?\"[^\"]*\"")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "Listening at: %s (%s)" and record.args and not record.args[0]:  # type: ignore[index]
            return False
        if isinstance(record.msg, str) and self.INVALID_REQUEST.match(record.msg):
            detail = self.INVALID_REQUEST.sub("", record.msg)
            record.msg = "Invalid request: " + self.QUOTED.sub("[withheld]", detail)
        return True


# Control characters (C0, DEL, C1) in a message: shown as \xNN.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class UtcFormatter(logging.Formatter):
    converter = time.gmtime
    default_time_format = "%Y-%m-%dT%H:%M:%S"
    default_msec_format = "%s.%03dZ"

    def formatMessage(self, record: logging.LogRecord) -> str:
        # One record, one line: a message quoting a request's path (decoded: %0A is a line
        # break, %1B a terminal escape) cannot forge a line of its own. JSON escapes them.
        record.message = CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", record.message)
        return super().formatMessage(record)


def _json_formatter() -> logging.Formatter:
    from pythonjsonlogger.json import JsonFormatter

    class UtcJsonFormatter(JsonFormatter):
        converter = time.gmtime
        default_time_format = UtcFormatter.default_time_format
        default_msec_format = UtcFormatter.default_msec_format

    return UtcJsonFormatter(list(JSON_FIELDS), rename_fields=JSON_NAMES)


def formatter(fmt: str) -> logging.Formatter:
    """The line format: "text" or "json" (FORMATS; config.py checks ANALYTICS_LOG_FORMAT)."""
    return _json_formatter() if fmt == "json" else UtcFormatter(TEXT_FORMAT)


def dict_config(
    level: str = "INFO",
    fmt: str = "text",
    *,
    verbose: bool = False,
    gunicorn_level: str | None = None,
    access_log: bool = True,
) -> dict[str, Any]:
    """The logging configuration (logging.config.dictConfig) of every process: one handler
    on the root logger (stderr), which every other logger's lines reach. gunicorn.conf.py
    hands it to gunicorn (`logconfig_dict`), with the gunicorn.* levels set."""
    loggers: dict[str, Any] = {
        # Alembic says "Context impl ...", "Will assume ..." on every start: only with -v.
        "alembic": {"level": "INFO" if verbose else "WARNING"},
    }
    if gunicorn_level is not None:
        loggers["gunicorn.error"] = {
            "level": gunicorn_level.upper(),
            "filters": ["gunicorn_error"],
            "propagate": True,
        }
        loggers["gunicorn.access"] = {
            "level": "INFO" if access_log else "CRITICAL",
            "propagate": True,
        }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "request_id": {"()": RequestIdFilter},
            "gunicorn_error": {"()": GunicornErrorFilter},
        },
        "formatters": {"line": {"()": formatter, "fmt": fmt}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "line",
                "filters": ["request_id"],
            }
        },
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": loggers,
    }


def configure(level: str = "INFO", fmt: str = "text", *, verbose: bool = False) -> None:
    """Set up this process's logging (the CLI and its commands, the app), unless it has been
    set up already: by gunicorn from gunicorn.conf.py, or by a test's log capture. (Like
    logging.basicConfig, which it replaces.)"""
    if not logging.root.handlers:
        logging.config.dictConfig(dict_config(level, fmt, verbose=verbose))


StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def _new_request_id() -> str:
    # Unique, not secret: the Mersenne Twister is seeded from the OS and reseeded in each
    # forked worker. os.urandom was a syscall on every request that also let go of the GIL,
    # handing it to the writer thread (buffer.py) in the middle of a hit (docs/benchmarks.md).
    return f"{random.getrandbits(128):032x}"


class RequestIdMiddleware:
    """Gives each request its id (the proxy's X-Request-ID, or a new one), for the log
    lines written while it is handled, and returns it in the response's X-Request-ID."""

    def __init__(self, app: WsgiApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        sent = environ.get("HTTP_X_REQUEST_ID", "")
        request_id = sent if VALID_REQUEST_ID.fullmatch(sent) else _new_request_id()
        token = REQUEST_ID.set(request_id)

        def start_with_id(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            headers.append(("X-Request-ID", request_id))
            return start_response(status, headers, *exc_info)

        try:
            return self.app(environ, start_with_id)
        finally:
            REQUEST_ID.reset(token)
