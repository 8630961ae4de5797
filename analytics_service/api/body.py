"""Request bodies, read whole but never past a limit, whatever their framing.

A body sent with `Transfer-Encoding: chunked` has no Content-Length to refuse early, and
Werkzeug's stream limited to `max_content_length` ends quietly at the limit: a handler
reading it would take the first N bytes for the whole body. So every endpoint that reads a
body reads it here, one byte past the limit, and refuses (413) a body that has that byte.
"""

from __future__ import annotations

from typing import IO, Any

from flask import Response, request
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge
from werkzeug.wsgi import get_content_length

DRAIN_STEP_BYTES = 64 * 1024
# Set in the environ once a handler read the body (read_body): there is nothing to drain.
READ = "analytics.body_read"


def read_body(limit: int, too_large: str | None = None) -> bytes:
    """The request body, or 413 when it is longer than `limit` bytes, saying `too_large`
    (by default, the limit): Werkzeug's own words name none."""
    # From the environ: request.content_length looks up Transfer-Encoding through the
    # headers, which raise and catch an exception when it is absent (5 µs a hit).
    environ = request.environ
    length = get_content_length(environ)
    if length is not None:
        return read_sized_body(environ, length, limit, too_large)
    environ[READ] = True
    # Not max_content_length: the stream would stop at the limit without saying so.
    request.max_content_length = None
    stream, parts, size = request.stream, [], 0
    # A raw stream may return less than asked (one chunk of a chunked body): read on.
    while size <= limit:
        part = _read(stream, limit + 1 - size)
        if not part:
            break
        parts.append(part)
        size += len(part)
    if size > limit:
        raise _refused(limit, too_large)
    return b"".join(parts)


def read_sized_body(
    environ: dict[str, Any], length: int, limit: int, too_large: str | None = None
) -> bytes:
    """A body of a known `length` (its Content-Length), read from the server's own stream:
    exactly that much, with no stream wrappers (the hit path's fast way). Needs no Flask
    request: the hit route (hits.HitRoute) reads its bodies here before Flask is called."""
    environ[READ] = True
    if length > limit:
        raise _refused(limit, too_large)
    return _read(environ["wsgi.input"], length)


def drain_unread(response: Response, most: int) -> Response:
    """after_request: read what is left of the body of a request answered with an error
    before its handler read it (an import without a token). gunicorn closes such a
    connection (nginx speaks HTTP/1.0 to it) with the bytes unread, and the kernel then
    resets it: nginx, still sending the body, lost the answer and said 502 instead. A body
    over `most` bytes, the largest any endpoint takes, is not read: it is refused anyway."""
    environ = request.environ
    if response.status_code < 400 or READ in environ:
        return response
    length = get_content_length(environ)
    if length is None or length > most:
        return response
    # Exactly its length: the server's stream may be the bare socket (Werkzeug's server),
    # where a read past the body waits for the client's next request.
    try:
        while length > 0 and (part := _read(environ["wsgi.input"], min(length, DRAIN_STEP_BYTES))):
            length -= len(part)
    except BadRequest:
        pass  # the client's framing broke off: nothing more will come
    return response


def _refused(limit: int, too_large: str | None) -> RequestEntityTooLarge:
    # Built only when refusing: the hit path takes no exception object it does not raise.
    return RequestEntityTooLarge(too_large or f"the body is over {limit // 1024} KB")


def _read(stream: IO[bytes], size: int) -> bytes:
    """A read of the client's body. The server refuses framing it cannot parse while the
    app reads (gunicorn's InvalidChunkSize, a client gone mid-body): the client's error, a
    400, and its message, which quotes the client's bytes, is not logged."""
    try:
        return stream.read(size)
    except Exception:  # whatever the server raises here is about the client's bytes
        raise BadRequest("the request body could not be read: its framing is broken") from None
