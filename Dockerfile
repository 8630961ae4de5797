# The analytics service under gunicorn. Build: docker build -t analytics-service .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin app

# Dependencies come from the project's own pyproject.toml, at the versions constraints.txt
# pins (the ones the tests passed with); the package is installed, not run from a source
# checkout, so the image holds only what `pip install .` puts there (no `embedded` extra).
COPY pyproject.toml README.md constraints.txt ./
COPY analytics_service ./analytics_service
RUN pip install -c constraints.txt . && rm -rf build analytics_service.egg-info
COPY gunicorn.conf.py ./

USER app
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"
CMD ["gunicorn", "-c", "gunicorn.conf.py", "analytics_service.wsgi:app"]
