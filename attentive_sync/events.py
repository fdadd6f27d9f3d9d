"""The plain custom-event value attentive_sync forwards, and its Attentive JSON body.

attentive_sync knows nothing of Sparkfly: callers (``sparkfly_sync/events.py``) build these
values; ``forward()`` records and delivers them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

# Attentive: "type" must not contain these (case-sensitive name, used to pick journeys).
FORBIDDEN_TYPE_CHARACTERS = frozenset("\"'(){}[]\\|,")
# Attentive: property keys must not contain these.
FORBIDDEN_PROPERTY_KEY_CHARACTERS = frozenset('"{}[]\\|')
E164 = re.compile(r"^\+[1-9]\d{1,14}$")


class InvalidEvent(ValueError):
    """A custom event Attentive would refuse; the message says what is wrong."""


@dataclass(frozen=True)
class EventUser:
    """Who the event is about: at least one of phone (E.164), email or an external identifier."""

    phone: str = ""
    email: str = ""
    client_user_id: str = ""
    custom_identifiers: tuple[tuple[str, str], ...] = ()

    def to_payload(self) -> dict:
        user: dict[str, Any] = {}
        if self.phone:
            user["phone"] = self.phone
        if self.email:
            user["email"] = self.email
        external: dict[str, Any] = {}
        if self.client_user_id:
            external["clientUserId"] = self.client_user_id
        if self.custom_identifiers:
            # Attentive's schema types the value as a string (seed 000 sends a number).
            external["customIdentifiers"] = [{"name": name, "value": str(value)} for name, value in self.custom_identifiers]
        if external:
            user["externalIdentifiers"] = external
        return user


@dataclass(frozen=True)
class CustomEvent:
    """One Attentive custom event; ``external_event_id`` is its idempotency key everywhere."""

    type: str
    user: EventUser
    occurred_at: datetime
    external_event_id: str
    properties: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = validation_problems(self)
        if problems:
            raise InvalidEvent("; ".join(problems))

    def to_payload(self) -> dict:
        """The ``POST /v1/events/custom`` body, keys in seed 000's order."""
        return {
            "type": self.type,
            "properties": self.properties,
            "occurredAt": rfc3339(self.occurred_at),
            "user": self.user.to_payload(),
            "externalEventId": self.external_event_id,
        }


def rfc3339(moment: datetime) -> str:
    """RFC 3339 in UTC with an explicit offset, as Attentive requires (``…T14:38:29+00:00``)."""
    if moment.tzinfo is None:
        raise InvalidEvent("occurred_at must be timezone-aware")
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds")


def validation_problems(event: CustomEvent) -> list[str]:
    problems = []
    if not event.type or not event.type.strip():
        problems.append("type is required")
    elif bad := sorted(FORBIDDEN_TYPE_CHARACTERS & set(event.type)):
        problems.append(f"type {event.type!r} contains characters Attentive forbids: {' '.join(bad)}")
    if not isinstance(event.properties, dict):
        problems.append("properties must be an object")
    elif "\\u0000" in json.dumps(event.properties):
        problems.append("properties contain a NUL character, which cannot be stored or sent")
    else:
        for key in event.properties:
            if bad := sorted(FORBIDDEN_PROPERTY_KEY_CHARACTERS & set(str(key))):
                problems.append(f"property key {key!r} contains characters Attentive forbids: {' '.join(bad)}")
    user = event.user
    if not (user.phone or user.email or user.client_user_id or user.custom_identifiers):
        problems.append("user needs a phone, an email or an external identifier")
    if user.phone and not E164.match(user.phone):
        problems.append(f"user phone {user.phone!r} is not E.164 (like +13115552368)")
    if not event.external_event_id:
        problems.append("external_event_id is required (it is the idempotency key)")
    elif len(event.external_event_id) > 255:
        problems.append("external_event_id is longer than 255 characters")
    if event.occurred_at.tzinfo is None:
        problems.append("occurred_at must be timezone-aware")
    return problems
