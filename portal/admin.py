"""What the portal changes in other apps' admins so that the roles hold everywhere."""

from __future__ import annotations

from axes import admin as axes_admin
from axes.models import AccessAttempt
from django.contrib import admin
from django_otp.plugins.otp_totp.models import TOTPDevice
from procrastinate.contrib.django import admin as procrastinate_admin
from procrastinate.contrib.django.models import ProcrastinateJob

from portal.two_factor import PortalAdminSite


class ProcrastinateJobAdmin(procrastinate_admin.ProcrastinateJobAdmin):
    """procrastinate offers retry, cancel and abort to anyone who may view jobs; here they need
    the change permission (administrators), so a program manager can look but not touch."""

    def get_actions(self, request):
        # Not has_change_permission(): procrastinate answers False there for everyone, to keep
        # the job form read-only.
        if not request.user.has_perm("procrastinate.change_procrastinatejob"):
            return {}
        return super().get_actions(request)


admin.site.unregister(ProcrastinateJob)
admin.site.register(ProcrastinateJob, ProcrastinateJobAdmin)


class AccessAttemptAdmin(axes_admin.AccessAttemptAdmin):
    """django-axes offers "Clean up expired attempts" to anyone who may view login attempts; here
    it needs the delete permission (administrators, who also lift lockouts by deleting attempts)."""

    def get_actions(self, request):
        if not self.has_delete_permission(request):
            return {}
        return super().get_actions(request)


admin.site.unregister(AccessAttempt)
admin.site.register(AccessAttempt, AccessAttemptAdmin)


# Two-factor is enforced by the admin site itself while REQUIRE_STAFF_2FA is on (portal/two_factor.py).
admin.site.__class__ = PortalAdminSite
# A device's page shows its secret to anyone who may view it: staff enroll on the portal's page
# and `manage.py two_factor_reset` removes a lost one.
admin.site.unregister(TOTPDevice)
