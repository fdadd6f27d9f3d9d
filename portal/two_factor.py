"""Optional TOTP two-factor login for staff (django-otp).

Off by default. With ``REQUIRE_STAFF_2FA=true`` the admin admits only staff verified by an
authenticator app: its login form asks for the 6-digit code too. Staff enroll on the portal's
"Two-factor" page (log in to the portal with the password, scan the QR code, confirm one code);
a lost phone is reset with ``manage.py two_factor_reset USERNAME``, after which that person enrolls
again. Devices are not shown in the admin: their secret would be visible to anyone who may view it.
"""

from __future__ import annotations

import base64

import qrcode
import qrcode.image.svg
from django.conf import settings
from django.contrib import messages
from django.contrib.admin import AdminSite
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect, render
from django_otp import login as otp_login
from django_otp.admin import OTPAdminSite
from django_otp.plugins.otp_totp.models import TOTPDevice

DEVICE_NAME = "authenticator"


class PortalAdminSite(OTPAdminSite):
    """The admin site; two-factor is enforced only while ``REQUIRE_STAFF_2FA`` is on."""

    def has_permission(self, request):
        if settings.REQUIRE_STAFF_2FA:
            return super().has_permission(request)
        return AdminSite.has_permission(self, request)

    @property
    def login_form(self):
        return OTPAdminSite.login_form if settings.REQUIRE_STAFF_2FA else AdminAuthenticationForm

    @property
    def login_template(self):
        return OTPAdminSite.login_template if settings.REQUIRE_STAFF_2FA else None


def reset_devices(*, user) -> int:
    deleted, _ = TOTPDevice.objects.filter(user=user).delete()
    return deleted


@login_required
def setup(request):
    """Enroll an authenticator: an unconfirmed device until one code from it is entered."""
    if not request.user.is_staff:
        raise PermissionDenied("Two-factor login is for staff.")
    confirmed = TOTPDevice.objects.filter(user=request.user, confirmed=True).first()
    if confirmed is not None:
        return render(request, "two_factor/setup.html", {"confirmed": confirmed})
    device, _ = TOTPDevice.objects.get_or_create(user=request.user, name=DEVICE_NAME, confirmed=False)
    error = ""
    if request.method == "POST":
        if device.verify_token(request.POST.get("token", "").strip()):
            device.confirmed = True
            device.save(update_fields=["confirmed"])
            otp_login(request, device)
            messages.success(request, "Two-factor login is set up: the admin will ask for a code from this app.")
            return redirect("two-factor")
        error = "That code did not match. Enter the code your app shows now."
    svg = qrcode.make(device.config_url, image_factory=qrcode.image.svg.SvgPathImage).to_string()
    return render(
        request,
        "two_factor/setup.html",
        {
            "qr_data_uri": "data:image/svg+xml;base64," + base64.b64encode(svg).decode(),
            "secret": base64.b32encode(device.bin_key).decode(),
            "error": error,
        },
    )
