"""Errors a client can cause, carried to the HTTP layer as `{"error": {code, message}}`."""

from __future__ import annotations


class ApiError(Exception):
    """A request we refuse. Raised before anything is written, so nothing changes."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
