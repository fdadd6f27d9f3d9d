from django.apps import AppConfig, apps
from django.db.models.signals import post_migrate


def _sync_roles(sender, using="default", **kwargs):
    # post_migrate is sent once per app, and each app's permissions are created by its own
    # signal: wait for the last app's, so every model's permissions exist (also after a flush).
    if sender is not list(apps.get_app_configs())[-1]:
        return
    from portal.roles import sync_role_permissions

    sync_role_permissions(using=using)


class PortalConfig(AppConfig):
    name = "portal"
    verbose_name = "Portal"

    def ready(self):
        post_migrate.connect(_sync_roles, dispatch_uid="portal.sync_roles")
