from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

from portal import health

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("admin/", admin.site.urls),
    # Until the program-manager pages exist (issue 6), the admin is the portal's front door.
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False)),
]
