from django.apps import AppConfig


class AttentiveSyncConfig(AppConfig):
    name = "attentive_sync"
    verbose_name = "Attentive"
