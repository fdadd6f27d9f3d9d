"""Who may see a page: every page view inherits ``PortalPage`` (or a subclass asking more)."""

from __future__ import annotations

from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.mixins import LoginRequiredMixin, PermissionRequiredMixin
from django.shortcuts import redirect
from django.urls import reverse
from django_otp.plugins.otp_totp.models import TOTPDevice


class PortalPage(LoginRequiredMixin, PermissionRequiredMixin):
    """Anonymous visitors go to the login page; a signed-in user without the permission gets
    403 (the page says why), never a redirect loop through the login page. With
    ``REQUIRE_STAFF_2FA`` on, staff signed in by password alone are sent for their code first:
    the portal's pages show what the admin shows, and administrators retry and replay here."""

    permission_required = "portal.view_portal"
    raise_exception = False  # anonymous → login; signed in without permission → 403 (AccessMixin)

    def dispatch(self, request, *args, **kwargs):
        user = request.user
        if settings.REQUIRE_STAFF_2FA and user.is_authenticated and user.is_staff and not user.is_verified():
            if not TOTPDevice.objects.filter(user=user, confirmed=True).exists():
                messages.info(request, "Set up two-factor login to use the portal: staff need a code from an app.")
                return redirect("two-factor")
            # The admin's login form asks for the code (portal/two_factor.py), then comes back here.
            return redirect(f"{reverse('admin:login')}?{urlencode({'next': request.get_full_path()})}")
        return super().dispatch(request, *args, **kwargs)
