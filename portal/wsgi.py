import os

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
application = get_wsgi_application()
# The URLconf and every view module imported here, not on each new worker's first request:
# gunicorn preloads this module in its master (gunicorn.conf.py), so a recycled worker forks
# with them. Importing them opens no database connection (tests/deploy/test_gunicorn_config.py).
get_resolver().url_patterns  # noqa: B018 (loading them is the point)
