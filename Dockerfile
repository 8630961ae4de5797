# The analytics service under gunicorn. Build: docker build -t analytics-service .
# tests/test_image.py builds the same thing without Docker: it copies exactly the COPY lines'
# paths, runs the `pip install` of the RUN lines into a fresh venv and starts the CMD.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin app

# Dependencies come from the project's own pyproject.toml, at the versions constraints.txt
# pins (the ones the tests passed with), without the `embedded` extra. The source is built
# into a wheel and installed, then deleted: the service runs from site-packages, and /app,
# where it starts, holds only its gunicorn configuration. setup.py copies the widget script
# (widget/widget.js) into the package.
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md constraints.txt ./
COPY analytics_service ./analytics_service
COPY widget ./widget
RUN pip install -c constraints.txt . && rm -rf /src

WORKDIR /app
COPY gunicorn.conf.py ./

# The spool folder (docker-compose.yml mounts a volume there), the app user's: a new volume
# takes the folder's owner from the image. Set here, not only in compose: the image run
# alone would look for ./var/spool under /app, which its user cannot create.
RUN mkdir -p /var/lib/analytics/spool && chown app /var/lib/analytics/spool
ENV ANALYTICS_SPOOL_DIR=/var/lib/analytics/spool
USER app
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=2)"
CMD ["gunicorn", "-c", "gunicorn.conf.py", "analytics_service.wsgi:app"]
