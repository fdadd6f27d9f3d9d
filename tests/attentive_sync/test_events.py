"""The custom-event value: refused when Attentive would refuse it, rendered as Attentive wants."""

from datetime import datetime, timedelta, timezone

import pytest

from attentive_sync.events import CustomEvent, EventUser, InvalidEvent

WHEN = datetime(2026, 3, 30, 14, 38, 29, tzinfo=timezone(timedelta(hours=-4)))


def event(**overrides):
    values = {
        "type": "sparkfly.member.offer_state_redeemed",
        "user": EventUser(client_user_id="test-number-1"),
        "occurred_at": WHEN,
        "external_event_id": "evt-1",
        "properties": {"credential_identifier": "abc123"},
    }
    values.update(overrides)
    return CustomEvent(**values)


def test_payload_has_seed_000_keys_utc_offset_and_string_identifier_values():
    payload = event(
        user=EventUser(phone="+13115552368", email="a@b.co", client_user_id="u1", custom_identifiers=(("sparkfly_enrollment_id", 123),))
    ).to_payload()
    assert list(payload) == ["type", "properties", "occurredAt", "user", "externalEventId"]
    assert payload["occurredAt"] == "2026-03-30T18:38:29+00:00"
    assert payload["user"] == {
        "phone": "+13115552368",
        "email": "a@b.co",
        "externalIdentifiers": {"clientUserId": "u1", "customIdentifiers": [{"name": "sparkfly_enrollment_id", "value": "123"}]},
    }


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"type": ""}, "type is required"),
        ({"type": "offer (redeemed)"}, r"forbids: \( \)"),
        ({"type": "a,b"}, "forbids: ,"),
        ({"properties": {"bad|key": 1}}, "property key 'bad|key'"),
        ({"properties": {"note": "a\x00b"}}, "NUL character"),
        ({"user": EventUser()}, "user needs a phone, an email or an external identifier"),
        ({"user": EventUser(phone="415-555-0134")}, "not E.164"),
        ({"external_event_id": ""}, "external_event_id is required"),
        ({"occurred_at": datetime(2026, 1, 1)}, "timezone-aware"),
    ],
)
def test_an_event_attentive_would_refuse_is_refused_with_the_reason(overrides, message):
    with pytest.raises(InvalidEvent, match=message):
        event(**overrides)
