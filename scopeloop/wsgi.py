"""WSGI entry of the ML backend: `gunicorn scopeloop.wsgi:app` or `flask --app scopeloop.wsgi run`.

In the application shell: the settings come from the environment (scopeloop.settings:
SCOPELOOP_HOME, REDIS_URL, ...; the backend's own SCOPELOOP_BACKEND_* variables: see ml_backend.app).
"""
import logging

from ml_backend.app import create_app
from scopeloop.security import apply_umask
from scopeloop.settings import load_settings

apply_umask()   # owner-only files (scopeloop.security)
if not logging.getLogger().handlers:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

app = create_app(load_settings())
