"""The event types callers forward, each with a label for the settings page.

attentive_sync knows nothing of who sends events: the app that builds them registers their
types from its ``AppConfig.ready()``, and the settings page shows one switch per type.
"""

from __future__ import annotations

_REGISTERED: dict[str, str] = {}


def register_event_type(event_type: str, label: str) -> None:
    """Make ``event_type`` switchable in the Attentive settings, shown as ``label``."""
    _REGISTERED[event_type] = label


def event_types() -> dict[str, str]:
    """Every registered event type and its label, in registration order."""
    return dict(_REGISTERED)
