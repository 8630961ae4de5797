"""Bearer tokens of the admin API.

A site's token (only its SHA-256 is stored, in sites.token_hash) reads that site; the server
token (ANALYTICS_ADMIN_TOKEN) reads every site. Missing or unknown token: 401; another
site's token: 403. Tokens are never logged.
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from . import db
from .errors import ApiError
from .sites import hash_token


def bearer_token(header: str | None) -> str:
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <token>'")
    return token.strip()


def _token_owner(engine: Engine, token: str) -> str | None:
    # Looked up by its hash: an attacker who times this query learns about SHA-256 outputs
    # of the guesses, never about the stored token.
    with engine.connect() as conn:
        return conn.execute(
            sa.select(db.sites.c.id).where(db.sites.c.token_hash == hash_token(token))
        ).scalar()


def _is_server_token(token: str, admin_token: str | None) -> bool:
    # Hash both sides first so that compare_digest sees equal lengths: constant time.
    return bool(admin_token) and secrets.compare_digest(
        hash_token(token), hash_token(admin_token or "")
    )


def token_site(engine: Engine, admin_token: str | None, header: str | None) -> str | None:
    """What the request's token opens: None for the server token (every site), else the id
    of the site whose token it is; 401 for a missing or unknown token."""
    token = bearer_token(header)
    if _is_server_token(token, admin_token):
        return None
    owner = _token_owner(engine, token)
    if owner is None:
        raise ApiError(401, "unauthorized", "unknown token")
    return owner


def authorise(engine: Engine, admin_token: str | None, header: str | None, site_id: str) -> None:
    """Return if the request's token may read `site_id`; raise 401 or 403 otherwise."""
    owner = token_site(engine, admin_token, header)
    if owner is not None and owner != site_id:
        raise ApiError(403, "forbidden", "this token does not give access to this site")


def authorise_server(engine: Engine, admin_token: str | None, header: str | None) -> None:
    """Return if the request carries the server token; 403 for a site's token (it reads
    its own site only), 401 for anything else."""
    if token_site(engine, admin_token, header) is not None:
        raise ApiError(
            403,
            "forbidden",
            "a site's token reads only its own site (/api/v1/sites/{site}/...); "
            "listing sites needs the server token (ANALYTICS_ADMIN_TOKEN)",
        )
