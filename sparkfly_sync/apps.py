from django.apps import AppConfig


class SparkflySyncConfig(AppConfig):
    name = "sparkfly_sync"
    verbose_name = "Sparkfly"

    def ready(self) -> None:
        from attentive_sync.registry import register_event_type
        from sparkfly_sync import checks  # noqa: F401  (registers the settings checks)
        from sparkfly_sync.events import EVENT_TYPES

        # One on/off switch per forwarded event type in the Attentive settings.
        for event_type, label in EVENT_TYPES.items():
            register_event_type(event_type, label)
