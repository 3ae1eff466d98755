"""WSGI entry of the ML backend: `gunicorn ml_backend.wsgi:app` or `flask --app ml_backend.wsgi run`.

Settings come from the environment (scopeloop.settings: SCOPELOOP_HOME, REDIS_URL, ...; the
backend's own SCOPELOOP_BACKEND_* variables: see ml_backend.app).
"""
import logging

from ml_backend.app import create_app

if not logging.getLogger().handlers:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

app = create_app()
