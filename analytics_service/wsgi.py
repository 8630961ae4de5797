"""The production WSGI entry point: `gunicorn analytics_service.wsgi:app`.

Reads its configuration from the environment; ANALYTICS_REDIS_URL must be set (the
embedded Redis is for `analytics-service run` only, never one per gunicorn worker).
"""

from .app import create_app

app = create_app()
