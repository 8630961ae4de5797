"""Errors a client can cause, carried to the HTTP layer as `{"error": {code, message}}`
(and `details`, a list of messages, when there are several problems)."""

from __future__ import annotations


class ApiError(Exception):
    """A request we refuse. Raised before anything is written, so nothing changes."""

    def __init__(
        self, status: int, code: str, message: str, details: list[str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        # One message per problem when there are several (every bad line of an import).
        self.details = details
