"""The SQL database: engine, table definitions, and Alembic migrations.

SQLite by default, PostgreSQL in production. The schema is changed only by the migrations
in `migrations/versions`; the tables below mirror them for queries (a test checks that
the migrated database and these definitions agree).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine

metadata = sa.MetaData()

sites = sa.Table(
    "sites",
    metadata,
    sa.Column("id", sa.String(63), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("timezone", sa.String(64), nullable=False),
    sa.Column("origins", sa.JSON, nullable=False),
    sa.Column("online_window", sa.Integer, nullable=False),
    sa.Column("baseline_visits", sa.BigInteger, nullable=False),
    sa.Column("baseline_pageviews", sa.BigInteger, nullable=False),
    # sha256 of the admin token; the token itself is shown once and never stored.
    sa.Column("token_hash", sa.String(64), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


def create_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        # Several threads of the dev server share the file; wait for a lock rather than fail.
        return sa.create_engine(url, connect_args={"timeout": 15})
    return sa.create_engine(url, pool_pre_ping=True)


def upgrade(engine: Engine) -> None:
    """Apply every migration not yet applied (what `analytics-service db upgrade` runs)."""
    cfg = Config()
    cfg.set_main_option("script_location", "analytics_service:migrations")
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
