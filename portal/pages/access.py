"""Who may see a page: every page view inherits ``PortalPage`` (or a subclass asking more)."""

from __future__ import annotations

from django.contrib.auth.mixins import LoginRequiredMixin, PermissionRequiredMixin


class PortalPage(LoginRequiredMixin, PermissionRequiredMixin):
    """Anonymous visitors go to the login page; a signed-in user without the permission gets
    403 (the page says why), never a redirect loop through the login page."""

    permission_required = "portal.view_portal"
    raise_exception = False  # anonymous → login; signed in without permission → 403 (AccessMixin)
