"""The production WSGI entry point: `gunicorn analytics_service.wsgi:app`.

Reads its configuration from the environment; ANALYTICS_REDIS_URL must be set (the
embedded Redis is for `analytics-service run` only, never one per gunicorn worker).
"""

from datetime import UTC, datetime

from .app import create_app, warm_up

app = create_app()
warm_up(app, datetime.now(UTC))
