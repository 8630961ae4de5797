"""Alembic environment: runs on the connection that analytics_service.db.upgrade hands in."""

from alembic import context

from analytics_service.db import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
