"""The portal's own tables: what the program-manager pages need beyond the two apps' records."""

from __future__ import annotations

from django.db import models


class PortalAccess(models.Model):
    """No table: the holder of the portal pages' own permissions (a permission needs a model).

    The two roles (``portal.roles``) are groups holding these plus the apps' model permissions.
    """

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [
            ("view_portal", "Can see the portal's pages (dashboard, members, offers, deliveries)"),
            ("export_redemptions", "Can export redemptions as CSV"),
        ]
