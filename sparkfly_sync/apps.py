from django.apps import AppConfig


class SparkflySyncConfig(AppConfig):
    name = "sparkfly_sync"
    verbose_name = "Sparkfly"

    def ready(self) -> None:
        from sparkfly_sync import checks  # noqa: F401  (registers the settings checks)
