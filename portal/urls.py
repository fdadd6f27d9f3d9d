from csp.constants import UNSAFE_INLINE
from csp.decorators import csp_update
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView

from portal import metrics, two_factor
from sparkfly_sync import webhooks

urlpatterns = [
    # /healthz is answered by portal.health.HealthCheckMiddleware, before Host validation.
    path("metrics", metrics.metrics, name="metrics"),  # Prometheus; loopback or METRICS_TOKEN (portal/metrics.py)
    path("admin/", admin.site.urls),
    path("account/two-factor/", two_factor.setup, name="two-factor"),
    # Sparkfly's servers call these (see sparkfly_sync/webhooks.py); the URL of a conversion
    # callback carries its endpoint's secret, and the logs never show it (portal/logs.py).
    path(
        "hooks/sparkfly/channels/<str:endpoint_uuid>/<str:secret>/conversions",
        webhooks.ConversionCallbackView.as_view(),
        name="sparkfly-conversion-callback",
    ),
    path(
        "hooks/sparkfly/notifications/<str:endpoint_uuid>",
        webhooks.NotificationView.as_view(),
        name="sparkfly-notifications",
    ),
    path("api/schema", SpectacularAPIView.as_view(), name="api-schema"),
    # Redoc starts from an inline script, styles itself inline and parses in a blob: worker:
    # the content-security policy allows those on this page only.
    path(
        "api/docs",
        csp_update({"script-src": [UNSAFE_INLINE], "style-src": [UNSAFE_INLINE], "worker-src": ["blob:"]})(
            SpectacularRedocView.as_view(url_name="api-schema")
        ),
        name="api-docs",
    ),
    path("", include("portal.pages.urls")),
]
