"""The portal's two roles, as Django groups, and the permissions each one holds.

*Program managers* read everything: the portal pages, every model in the admin (view only) and
the redemptions export. *Administrators* may also change things: settings and keys, issuing
credentials, retrying and replaying deliveries. The groups are created by a migration
(``portal/migrations/0002_roles.py``); their permissions are brought up to date after every
``migrate`` (``portal.apps``), so a model added later is covered without another migration.
Views and admin actions check permissions, never group names.
"""

from __future__ import annotations

from django.contrib.auth.models import Group, Permission
from django.db import transaction
from django.db.models import Q

PROGRAM_MANAGERS = "Program managers"
ADMINISTRATORS = "Administrators"
ROLES = {"program-manager": PROGRAM_MANAGERS, "administrator": ADMINISTRATORS}

# The apps whose models the roles cover (Django's own sessions and content types are not data
# anyone manages from the portal). axes: login attempts and lockouts, which administrators lift;
# not program managers' to read (addresses, and the usernames people typed — sometimes a
# password typed in the wrong box).
_APPS = ("portal", "sparkfly_sync", "attentive_sync", "procrastinate", "axes", "auth")
_READ_ONLY_APPS = ("portal", "sparkfly_sync", "attentive_sync", "procrastinate")
_PROGRAM_MANAGER_EXTRAS = ("view_portal", "export_redemptions")


def _role_permissions(using: str) -> dict[str, object]:
    permissions = Permission.objects.using(using)
    views = Q(content_type__app_label__in=_READ_ONLY_APPS, codename__startswith="view_")
    extras = Q(content_type__app_label="portal", codename__in=_PROGRAM_MANAGER_EXTRAS)
    return {
        PROGRAM_MANAGERS: permissions.filter(views | extras),
        ADMINISTRATORS: permissions.filter(content_type__app_label__in=_APPS),
    }


def sync_role_permissions(*, using: str = "default") -> None:
    """Create the two groups if missing and give each exactly its role's permissions."""
    with transaction.atomic(using=using):
        for name, permissions in _role_permissions(using).items():
            group, _ = Group.objects.using(using).get_or_create(name=name)
            group.permissions.set(permissions)


@transaction.atomic
def user_assign_role(*, user, role: str) -> None:
    """Make ``user`` a member of exactly one role's group; staff, so the admin lets them in
    (what they may do there is still only what the group's permissions allow)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    user.groups.remove(*Group.objects.filter(name__in=ROLES.values()))
    user.groups.add(Group.objects.get(name=ROLES[role]))
    if not user.is_staff:
        user.is_staff = True
        user.save(update_fields=["is_staff"])
