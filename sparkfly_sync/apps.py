from django.apps import AppConfig


class SparkflySyncConfig(AppConfig):
    name = "sparkfly_sync"
    verbose_name = "Sparkfly"
