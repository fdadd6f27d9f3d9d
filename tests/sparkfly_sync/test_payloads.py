"""Sparkfly payloads → mirror rows: what is kept, normalised, or refused with a reason."""

import pytest

from sparkfly_sync import payloads


def member(**overrides):
    base = {
        "id": 42,
        "identifier": "member-000042",
        "notification_mode": "app",
        "created_at": "2025-01-02T03:04:05Z",
        "updated_at": "2025-01-03T03:04:05+0000",
        "member_profile": {"first_name": "Ada", "last_name": "Lovelace", "email": "Ada@Example.COM", "phone": "(415) 555-0134"},
    }
    base.update(overrides)
    return base


def test_member_row_normalises_phone_to_e164_and_lowercases_email():
    row = payloads.member_row(member())
    assert row["sparkfly_id"] == 42
    assert row["phone"] == "+14155550134"
    assert row["email"] == "ada@example.com"
    assert row["first_name"] == "Ada"
    assert row["sparkfly_updated_at"].isoformat() == "2025-01-03T03:04:05+00:00"


@pytest.mark.parametrize("phone", ["+14155550134", "415-555-0134", "415.555.0134", "(415) 555-0134"])
def test_every_us_phone_format_sparkfly_sends_becomes_the_same_e164(phone):
    assert payloads.member_row(member(member_profile={"phone": phone}))["phone"] == "+14155550134"


def test_invalid_contacts_are_left_empty_but_kept_in_raw():
    payload = member(member_profile={"phone": "12", "email": "not-an-email"})
    row = payloads.member_row(payload)
    assert row["phone"] == "" and row["email"] == ""
    assert row["raw"]["member_profile"]["phone"] == "12"


def test_member_without_profile_mirrors_with_empty_contacts():
    payload = member()
    del payload["member_profile"]
    row = payloads.member_row(payload)
    assert (row["phone"], row["email"], row["first_name"]) == ("", "", "")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"identifier": "x"}, "missing 'id'"),
        ({"id": "abc"}, "not an integer"),
        ({"id": True}, "missing 'id'"),
        ({"id": -3}, "must be a positive 64-bit integer"),
        ({"id": 2**63}, "must be a positive 64-bit integer"),
        (["not", "an", "object"], "expected an object"),
    ],
)
def test_item_without_a_usable_id_is_refused_with_the_reason(payload, reason):
    with pytest.raises(payloads.PayloadError, match=reason):
        payloads.member_row(payload)


def test_the_largest_bigint_is_a_usable_id_and_one_more_is_not():
    assert payloads.member_row({"id": 2**63 - 1})["sparkfly_id"] == 2**63 - 1
    row = payloads.credential_row({"id": 1, "offer_ids": [2**63 - 1, 2**63]})
    assert row["offer_ids"] == [2**63 - 1]


def test_unparsable_dates_become_empty_instead_of_failing_the_item():
    row = payloads.offer_row({"id": 1, "activates_at": "yesterday", "expires_at": "2030-12-31T00:00:00", "name": "X"})
    assert row["activates_at"] is None
    assert row["expires_at"] is None  # no offset: a guess, so not stored


def test_offer_channel_links_carry_the_xid_and_refuse_a_channel_without_id():
    offer = {"id": 9, "channels": [{"channel": {"id": 5, "xid": "Z7nnWs6", "name": "Web"}}]}
    assert payloads.offer_channel_rows(offer) == [
        {"offer_id": 9, "channel_id": 5, "xid": "Z7nnWs6", "raw": {"id": 5, "xid": "Z7nnWs6", "name": "Web"}}
    ]
    with pytest.raises(payloads.PayloadError, match="without an id"):
        payloads.offer_channel_rows({"id": 9, "channels": [{"channel": {"xid": "Q"}}]})


def test_credential_row_keeps_offer_ids_annotations_and_null_identifier():
    row = payloads.credential_row(
        {"id": 1009, "identifier": None, "member_id": 123, "channel_id": 456, "offer_ids": [1116, 1011, "x"], "annotations": {"conv_ids": {"a": 1}}}
    )
    assert row["identifier"] is None
    assert row["offer_ids"] == [1011, 1116]
    assert row["annotations"] == {"conv_ids": {"a": 1}}
    assert (row["member_id"], row["channel_id"], row["store_id"]) == (123, 456, None)


def test_enrollment_row_keeps_every_seed_004_field_and_leaves_out_tier_when_absent():
    payload = {
        "id": 7,
        "member_id": 3,
        "program_id": 1,
        "external_id": "ext-7",
        "source": "app",
        "status": "active",
        "point_balance": 150,
        "historical_points": 900,
        "tier_term_start_time": "2026-01-01T00:00:00Z",
        "tier_term_end_date": "2026-12-31",
        "fraud_risk_level": "low",
        "created_at": "2025-05-01T00:00:00Z",
        "updated_at": "2025-06-01T00:00:00Z",
    }
    row = payloads.loyalty_enrollment_row(payload)
    assert "tier_id" not in row
    assert row["point_balance"] == 150 and row["historical_points"] == 900
    assert str(row["tier_term_end_date"]) == "2026-12-31"
    assert payloads.loyalty_enrollment_row({**payload, "tier_id": 4})["tier_id"] == 4
