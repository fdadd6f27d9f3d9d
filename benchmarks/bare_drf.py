"""The reference endpoint of ``benchmarks/ingest.py``: bare DRF, one INSERT per request.

Served as ``bare_drf:application`` by the same gunicorn configuration as the portal, with the
portal's own settings and middleware; only the URLconf is this module's. One ``APIView``: no
authentication, no parsing, no serializer, no transaction beyond the INSERT's own (autocommit),
then 202 with a small JSON answer. What a request costs the framework and the database when the
endpoint does nothing else: the figure the conversion endpoint is compared with.

``benchmarks/ingest.py`` creates the table (``TABLE``) in its scratch database.
"""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

from django.conf import settings  # noqa: E402

settings.ROOT_URLCONF = __name__  # the portal's settings and middleware, this URLconf

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()  # django.setup() before DRF is imported

from django.contrib import admin  # noqa: E402
from django.db import connection  # noqa: E402
from django.urls import path  # noqa: E402
from rest_framework.response import Response  # noqa: E402
from rest_framework.views import APIView  # noqa: E402

TABLE = "bench_bare_insert"
PATH = "bare/conversions"


class BareInsertView(APIView):
    authentication_classes: list = []
    permission_classes: list = []
    parser_classes: list = []

    def get(self, request):
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {TABLE} (received_at, query) VALUES (now(), %s) RETURNING id",
                [request.META.get("QUERY_STRING", "")],
            )
            (row_id,) = cursor.fetchone()
        return Response({"id": row_id}, status=202)


urlpatterns = [
    path(PATH, BareInsertView.as_view()),
    # Never requested: the portal's CSP middleware reverses "admin:index" on every response.
    path("admin/", admin.site.urls),
]
