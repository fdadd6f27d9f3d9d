"""Sparkfly records → Attentive custom events: seed 000's payloads, Attentive's schema, ids.

Golden payloads live in tests/fixtures/attentive_events/: ``<kind>.seed000.json`` is seed 000's
example verbatim (pretty-printed, keys in the seed's order) and ``<kind>.json`` is what the
builder sends for mirror records carrying the seed's values, so
``diff <kind>.seed000.json <kind>.json`` shows every deviation; DEVIATIONS below names each with
its reason, and a test proves there are no others.

Payloads are validated with openapi-core against ``postCustomEvents.openapi.json``: the
postCustomEvents operation and the components it references, copied verbatim from Attentive's
published v1 spec (vendored in tests/fixtures/openapi/attentive-v1.json).
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from django.utils import timezone as django_timezone
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest
from openapi_core.validation.request.exceptions import InvalidRequestBody

from attentive_sync.events import InvalidEvent
from sparkfly_sync import events
from sparkfly_sync.models import (
    Channel,
    Credential,
    LoyaltyEnrollment,
    LoyaltyProgram,
    Member,
    Offer,
    OfferChannel,
    Store,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "attentive_events"
SPEC_PATH = FIXTURES / "postCustomEvents.openapi.json"
# Vendored verbatim from the project's shared reference, so the tests need nothing outside the repo.
REFERENCE_SPEC = Path(__file__).resolve().parents[1] / "fixtures" / "openapi" / "attentive-v1.json"
SEED_000 = Path(__file__).resolve().parents[1] / "fixtures" / "seeds" / "000_f49704ce0ce3266d.txt"
KINDS = ("offer_state_redeemed", "offer_state_created", "points_redeemed")
UTC = timezone.utc

# Every place where a golden payload differs from seed 000's example, and why. Paths are JSON
# paths of leaves (a key present on one side only counts as a difference at that key).
SCHEMA_TIMESTAMP = "Attentive's schema: RFC 3339 with a UTC offset (the seed's +0000 is not RFC 3339)"
ONE_TIMESTAMP_FORMAT = "every timestamp goes out through rfc3339(), +00:00 (the seed's Z is RFC 3339 too)"
EXTERNAL_EVENT_ID = "added: the idempotency key of every retry and replay"
CAMPAIGN_NOT_MIRRORED = "Sparkfly's campaign is not mirrored: its external id is unknown, sent as \"\""
DEVIATIONS = {
    "offer_state_redeemed": {
        "properties.campaign.external_id": CAMPAIGN_NOT_MIRRORED,
        "occurredAt": SCHEMA_TIMESTAMP,
        "externalEventId": EXTERNAL_EVENT_ID,
    },
    "offer_state_created": {
        "properties.offer_state.expiration": ONE_TIMESTAMP_FORMAT,
        "properties.offer_state.campaign.name": (
            "Sparkfly's campaign is not mirrored: campaign.name is the offer's name"
        ),
        "occurredAt": "added: the issuance time, so Attentive's 12-hour journey rule counts from it",
        "externalEventId": EXTERNAL_EVENT_ID,
    },
    "points_redeemed": {
        "properties.reward_state.created_at": SCHEMA_TIMESTAMP,
        "occurredAt": SCHEMA_TIMESTAMP,
        "user.externalIdentifiers.customIdentifiers.0.value": (
            "Attentive's schema: a string; and it is the enrollment id, as the identifier's name says "
            "(the seed's example shows 123 here but 1 as enrollment.id)"
        ),
        "externalEventId": EXTERNAL_EVENT_ID,
    },
}

# The spec's only security scheme for this operation is OAuth 2, which openapi-core does not
# check (it warns instead); these tests are about the request body.
pytestmark = pytest.mark.filterwarnings("ignore:Unsupported scheme type:UserWarning")


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture(scope="module")
def attentive_spec() -> OpenAPI:
    return OpenAPI.from_file_path(str(SPEC_PATH))


def schema_errors(spec: OpenAPI, payload: dict) -> list[str]:
    """What Attentive's request schema says is wrong with ``payload`` as a postCustomEvents body."""
    request = MockRequest(
        "https://api.attentivemobile.com",
        "post",
        "/v1/events/custom",
        headers={"Authorization": "Bearer test-key"},
        data=json.dumps(payload).encode(),
        content_type="application/json",
    )
    try:
        spec.validate_request(request)
    except InvalidRequestBody as error:
        return [schema_error.message for schema_error in error.__cause__.schema_errors]
    return []


def leaf_differences(left, right, path: str = "") -> set[str]:
    if isinstance(left, dict) and isinstance(right, dict):
        found = set()
        for key in left.keys() | right.keys():
            where = f"{path}.{key}" if path else str(key)
            if key not in left or key not in right:
                found.add(where)
            else:
                found |= leaf_differences(left[key], right[key], where)
        return found
    if isinstance(left, list) and isinstance(right, list) and len(left) == len(right):
        return set().union(*(leaf_differences(a, b, f"{path}.{i}") for i, (a, b) in enumerate(zip(left, right))))
    # 123 == 123.0 and True == 1 in Python, never in JSON: compare types too.
    return set() if (type(left), left) == (type(right), right) else {path}


# --- mirror records carrying seed 000's values ----------------------------------------------------


def mirror(model, **fields):
    """A mirror row as the sync writes it, read back from PostgreSQL."""
    row = model.objects.create(synced_at=django_timezone.now(), **fields)
    return model.objects.get(pk=row.pk)


def member_row(sparkfly_id: int, identifier: str, **contacts) -> Member:
    raw = {"id": sparkfly_id, "identifier": identifier}
    return mirror(Member, sparkfly_id=sparkfly_id, identifier=identifier, raw=raw, **contacts)


@pytest.fixture
def redemption(db) -> dict:
    """Seed 000's Offer State Redemption: code abc123 of offer 1 on channel 123 (XID A1B2C3)."""
    member = member_row(501, "test-number-1")
    offer = mirror(Offer, sparkfly_id=1, name="Sample Data 10% off Birthday", status="approved",
                   raw={"id": 1, "name": "Sample Data 10% off Birthday", "description": None})
    mirror(Channel, sparkfly_id=123, name="Email", raw={"id": 123, "name": "Email"})
    offer_channel = mirror(OfferChannel, offer_id=1, channel_id=123, xid="A1B2C3",
                           raw={"id": 123, "xid": "A1B2C3", "name": "Email", "offer_id": 1})
    store = mirror(Store, sparkfly_id=31, number="1", name="Main Street", raw={"id": 31, "number": "1"})
    credential = mirror(Credential, sparkfly_id=1001, identifier="abc123", status="redeemed", member_id=501,
                        channel_id=123, store_id=31, offer_ids=[1], raw={"id": 1001, "identifier": "abc123"})
    return {
        "credential": credential,
        "member": member,
        "offer": offer,
        "offer_channel": offer_channel,
        "store": store,
        "redeemed_at": datetime(2021, 3, 30, 14, 38, 29, tzinfo=UTC),
        "offer_state_id": 123,
        "external_event_id": events.redemption_event_id(
            credential_id=1001, offer_id=1, redeemed_at=datetime(2021, 3, 30, 14, 38, 29, tzinfo=UTC)
        ),
    }


@pytest.fixture
def issuance(db) -> dict:
    """Seed 000's Offer State Issuance: code CJYA of offer 1 "DefaultReusable" (XID XID_REUSABLE)."""
    member = member_row(504, "test-number-4")
    offer = mirror(Offer, sparkfly_id=1, name="DefaultReusable", status="approved",
                   raw={"id": 1, "name": "DefaultReusable", "description": ""})
    offer_channel = mirror(OfferChannel, offer_id=1, channel_id=5, xid="XID_REUSABLE",
                           raw={"id": 5, "xid": "XID_REUSABLE"})
    credential = mirror(Credential, sparkfly_id=1004, identifier="CJYA", status="open", member_id=504,
                        channel_id=5, offer_ids=[1], raw={"id": 1004, "identifier": "CJYA"})
    return {
        "credential": credential,
        "member": member,
        "offer": offer,
        "offer_channel": offer_channel,
        "issued_at": datetime(2023, 4, 3, 13, 26, tzinfo=UTC),
        "offer_state_id": 66,
        "expires_at": datetime(2023, 4, 10, 13, 26, tzinfo=UTC),
        "external_event_id": events.issuance_event_id(credential_id=1004, offer_id=1),
    }


@pytest.fixture
def points(db) -> dict:
    """Seed 000's Points Exchange: 150 points of enrollment 1 (external id "1") for reward state 1."""
    member = member_row(501, "test-number-1")
    mirror(LoyaltyProgram, sparkfly_id=9, name="Rewards", raw={"id": 9})
    enrollment = mirror(LoyaltyEnrollment, sparkfly_id=1, member_id=501, program_id=9, external_id="1",
                        status="active", raw={"id": 1, "member_id": 501, "external_id": "1"})
    return {
        "member": member,
        "enrollment": enrollment,
        "reward_state": events.RewardState(
            id=1, offer_state_id=1, credential_identifier="abc123", issued_point_value=100,
            created_at=datetime(2023, 11, 15, 16, 53, 40, tzinfo=UTC),
        ),
        "points_debit": 150,
        "redeemed_at": datetime(2024, 3, 15, 14, 38, 29, tzinfo=UTC),
        "external_event_id": events.points_redemption_event_id(reward_state_id=1),
    }


BUILDERS = {
    "offer_state_redeemed": ("redemption", events.offer_state_redeemed),
    "offer_state_created": ("issuance", events.offer_state_created),
    "points_redeemed": ("points", events.points_redeemed),
}


@pytest.fixture(params=KINDS)
def kind_and_inputs(request):
    fixture_name, builder = BUILDERS[request.param]
    return request.param, builder, request.getfixturevalue(fixture_name)


# --- golden payloads -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_golden_payload_is_built_from_mirror_records_with_seed_000_values(kind, request):
    fixture_name, builder = BUILDERS[kind]
    assert builder(**request.getfixturevalue(fixture_name)).to_payload() == load(f"{kind}.json")


@pytest.mark.parametrize("kind", KINDS)
def test_golden_payload_differs_from_seed_000_only_where_documented(kind):
    assert leaf_differences(load(f"{kind}.seed000.json"), load(f"{kind}.json")) == set(DEVIATIONS[kind])


@pytest.mark.parametrize("kind", KINDS)
def test_seed_000_fixture_is_the_seed_verbatim(kind):
    examples = [json.loads(line) for line in SEED_000.read_text().splitlines() if line.startswith('{ "type"')]
    fixture = load(f"{kind}.seed000.json")
    assert [example for example in examples if example["type"] == fixture["type"]] == [fixture]


def test_builders_read_no_database(kind_and_inputs, django_assert_num_queries):
    _, builder, inputs = kind_and_inputs
    with django_assert_num_queries(0):
        builder(**inputs)


# --- Attentive's published schema --------------------------------------------------------------------


def test_every_built_payload_validates_against_attentives_request_schema(kind_and_inputs, attentive_spec):
    kind, builder, inputs = kind_and_inputs
    member = inputs["member"]
    member.phone, member.email = "+13115552368", "member@example.com"
    payload = builder(**inputs).to_payload()
    assert payload["type"] == load(f"{kind}.json")["type"]
    assert schema_errors(attentive_spec, payload) == []
    assert schema_errors(attentive_spec, load(f"{kind}.json")) == []


def test_seed_000_numeric_custom_identifier_fails_attentives_schema(attentive_spec):
    seed = load("points_redeemed.seed000.json")
    seed["occurredAt"] = "2024-03-15T14:38:29+00:00"  # only the identifier's value left as the seed has it
    assert schema_errors(attentive_spec, seed) == ["123 is not of type 'string'"]
    seed["user"]["externalIdentifiers"]["customIdentifiers"][0]["value"] = "123"
    assert schema_errors(attentive_spec, seed) == []


@pytest.mark.parametrize("kind", ["offer_state_redeemed", "points_redeemed"])
def test_seed_000_occurred_at_without_colon_in_the_offset_fails_attentives_schema(kind, attentive_spec):
    seed = load(f"{kind}.seed000.json")
    seed["user"]["externalIdentifiers"].pop("customIdentifiers", None)
    assert schema_errors(attentive_spec, seed) == [f"'{seed['occurredAt']}' is not a 'date-time'"]


def test_spec_excerpt_is_verbatim_from_attentives_published_spec():
    published = json.loads(REFERENCE_SPEC.read_text())
    excerpt = json.loads(SPEC_PATH.read_text())
    assert excerpt["paths"]["/events/custom"]["post"] == published["paths"]["/events/custom"]["post"]
    assert excerpt["servers"] == published["servers"]
    for section, components in excerpt["components"].items():
        for name, component in components.items():
            assert component == published["components"][section][name], f"{section}/{name}"


# --- the user -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phone", "email", "expected_contacts"),
    [
        ("+13115552368", "member@example.com", {"phone": "+13115552368", "email": "member@example.com"}),
        ("+13115552368", "", {"phone": "+13115552368"}),
        ("", "member@example.com", {"email": "member@example.com"}),
        ("", "", {}),
    ],
)
def test_phone_and_email_are_sent_exactly_when_the_member_has_them(
    kind_and_inputs, attentive_spec, phone, email, expected_contacts
):
    kind, builder, inputs = kind_and_inputs
    inputs["member"].phone, inputs["member"].email = phone, email
    payload = builder(**inputs).to_payload()
    identifiers = load(f"{kind}.json")["user"]["externalIdentifiers"]
    assert payload["user"] == {**expected_contacts, "externalIdentifiers": identifiers}
    assert schema_errors(attentive_spec, payload) == []


def test_member_without_identifier_is_named_by_phone_alone(redemption, attentive_spec):
    redemption["member"].identifier, redemption["member"].phone = "", "+13115552368"
    payload = events.offer_state_redeemed(**redemption).to_payload()
    assert payload["user"] == {"phone": "+13115552368"}
    assert schema_errors(attentive_spec, payload) == []


def test_member_without_identifier_phone_or_email_is_refused(kind_and_inputs):
    _, builder, inputs = kind_and_inputs
    inputs["member"].identifier = ""
    with pytest.raises(InvalidEvent, match="member 50[14] has no identifier, phone or email"):
        builder(**inputs)


def test_points_user_carries_the_enrollment_id_as_a_string_custom_identifier(points):
    points["enrollment"].sparkfly_id = 123
    user = events.points_redeemed(**points).to_payload()["user"]
    assert user["externalIdentifiers"]["customIdentifiers"] == [{"name": "sparkfly_enrollment_id", "value": "123"}]


# --- unknown values and timestamps ------------------------------------------------------------------


def test_unknown_redemption_values_keep_their_keys_empty(redemption, attentive_spec):
    redemption.update(store=None, offer_state_id=None)
    redemption["offer_channel"].xid = ""
    payload = events.offer_state_redeemed(**redemption).to_payload()
    assert payload["properties"]["store_number"] == ""
    assert payload["properties"]["offer_state_id"] is None
    assert payload["properties"]["campaign"]["xid"] == ""
    assert schema_errors(attentive_spec, payload) == []


def test_issuance_expiration_falls_back_to_the_offers_expiry_then_to_empty(issuance):
    issuance["expires_at"] = None
    issuance["offer"].expires_at = datetime(2023, 5, 1, tzinfo=UTC)
    assert events.offer_state_created(**issuance).properties["offer_state"]["expiration"] == "2023-05-01T00:00:00+00:00"
    issuance["offer"].expires_at = None
    assert events.offer_state_created(**issuance).properties["offer_state"]["expiration"] == ""


def test_issuance_offer_description_comes_from_the_raw_offer_and_null_becomes_empty(issuance):
    issuance["offer"].raw = {"id": 1, "description": "Any drink, any size"}
    offer = events.offer_state_created(**issuance).properties["offer_state"]["campaign"]["offer"]
    assert offer["description"] == "Any drink, any size"
    issuance["offer"].raw = {"id": 1, "description": None}
    assert events.offer_state_created(**issuance).properties["offer_state"]["campaign"]["offer"]["description"] == ""


def test_unknown_reward_state_values_keep_their_keys_empty(points, attentive_spec):
    points["reward_state"] = events.RewardState(id=1)
    payload = events.points_redeemed(**points).to_payload()
    assert payload["properties"]["reward_state"] == {
        "id": 1, "offer_state_id": None, "credential_identifier": "", "issued_point_value": None, "created_at": ""
    }
    assert schema_errors(attentive_spec, payload) == []


def test_timestamps_in_other_offsets_go_out_as_the_same_instant_in_utc(issuance):
    eastern = timezone(timedelta(hours=-4))
    issuance["issued_at"] = datetime(2023, 4, 3, 9, 26, tzinfo=eastern)
    issuance["expires_at"] = datetime(2023, 4, 10, 9, 26, tzinfo=eastern)
    payload = events.offer_state_created(**issuance).to_payload()
    assert payload["occurredAt"] == "2023-04-03T13:26:00+00:00"
    assert payload["properties"]["offer_state"]["expiration"] == "2023-04-10T13:26:00+00:00"


# --- externalEventId -------------------------------------------------------------------------------


def test_same_redemption_gets_the_same_id_whatever_offset_it_is_written_in():
    at = datetime(2021, 3, 30, 14, 38, 29, tzinfo=UTC)
    same_instant = at.astimezone(timezone(timedelta(hours=-4)))
    first = events.redemption_event_id(credential_id=1001, offer_id=1, redeemed_at=at)
    assert events.redemption_event_id(credential_id=1001, offer_id=1, redeemed_at=same_instant) == first
    assert uuid.UUID(first).version == 5


@pytest.mark.parametrize(
    "other",
    [
        {"credential_id": 1002, "offer_id": 1, "redeemed_at": datetime(2021, 3, 30, 14, 38, 29, tzinfo=UTC)},
        {"credential_id": 1001, "offer_id": 2, "redeemed_at": datetime(2021, 3, 30, 14, 38, 29, tzinfo=UTC)},
        {"credential_id": 1001, "offer_id": 1, "redeemed_at": datetime(2021, 3, 30, 14, 38, 30, tzinfo=UTC)},
        {"credential_id": 1001, "offer_id": 1, "redeemed_at": datetime(2021, 3, 30, 14, 38, 29, 1, tzinfo=UTC)},
    ],
    ids=["other credential", "other offer", "a second later", "a microsecond later"],
)
def test_a_different_redemption_gets_a_different_id(other):
    at = datetime(2021, 3, 30, 14, 38, 29, tzinfo=UTC)
    reference = events.redemption_event_id(credential_id=1001, offer_id=1, redeemed_at=at)
    assert events.redemption_event_id(**other) != reference


def test_issuance_id_is_stable_per_credential_and_offer():
    first = events.issuance_event_id(credential_id=1004, offer_id=1)
    assert events.issuance_event_id(credential_id=1004, offer_id=1) == first
    assert events.issuance_event_id(credential_id=1005, offer_id=1) != first
    assert events.issuance_event_id(credential_id=1004, offer_id=2) != first


def test_points_redemption_id_is_stable_per_reward_state():
    first = events.points_redemption_event_id(reward_state_id=1)
    assert events.points_redemption_event_id(reward_state_id=1) == first
    assert events.points_redemption_event_id(reward_state_id=2) != first


def test_different_kinds_of_occurrence_never_share_an_id():
    at = datetime(2021, 3, 30, 14, 38, 29, tzinfo=UTC)
    ids = {
        events.redemption_event_id(credential_id=1, offer_id=1, redeemed_at=at),
        events.issuance_event_id(credential_id=1, offer_id=1),
        events.points_redemption_event_id(reward_state_id=1),
    }
    assert len(ids) == 3


@pytest.mark.parametrize(
    ("helper", "arguments", "message"),
    [
        (events.redemption_event_id, {"credential_id": 1, "offer_id": 1, "redeemed_at": datetime(2021, 3, 30)},
         "redeemed_at must be a timezone-aware datetime"),
        (events.issuance_event_id, {"credential_id": "1", "offer_id": 1},
         "credential id must be a positive whole number"),
        (events.issuance_event_id, {"credential_id": 1, "offer_id": 0}, "offer id must be a positive whole number"),
        (events.points_redemption_event_id, {"reward_state_id": None},
         "reward state id must be a positive whole number"),
    ],
)
def test_event_id_helpers_refuse_inputs_that_would_not_identify_an_occurrence(helper, arguments, message):
    with pytest.raises(InvalidEvent, match=message):
        helper(**arguments)


# --- inputs that do not make an event ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "break_inputs", "message"),
    [
        ("offer_state_redeemed", lambda i: setattr(i["credential"], "member_id", 999),
         "credential 1001 belongs to member 999, not to member 501"),
        ("offer_state_created", lambda i: setattr(i["credential"], "offer_ids", [2, 3]),
         r"credential 1004 is for offers \[2, 3\], not for offer 1"),
        ("offer_state_redeemed", lambda i: setattr(i["offer_channel"], "offer_id", 2), "is not of offer 1"),
        ("offer_state_created", lambda i: setattr(i["credential"], "channel_id", 6),
         "credential 1004 was issued on channel 6, but the campaign .* is on channel 5"),
        ("offer_state_redeemed", lambda i: setattr(i["credential"], "identifier", None),
         "credential 1001 has no code"),
        ("offer_state_created", lambda i: setattr(i["credential"], "identifier", ""), "credential 1004 has no code"),
        ("offer_state_redeemed", lambda i: i.update(redeemed_at=datetime(2021, 3, 30, 14, 38, 29)),
         "redeemed_at must be a timezone-aware datetime"),
        ("offer_state_created", lambda i: i.update(issued_at="2023-04-03T13:26:00Z"),
         "issued_at must be a timezone-aware datetime"),
        ("offer_state_created", lambda i: i.update(expires_at=datetime(2023, 4, 10)),
         "expires_at must be a timezone-aware datetime"),
        ("offer_state_redeemed", lambda i: i.update(offer_state_id="123"),
         "offer_state_id must be a positive whole number"),
        ("offer_state_redeemed", lambda i: i.update(external_event_id=""), "external_event_id is required"),
        ("points_redeemed", lambda i: setattr(i["enrollment"], "member_id", 999),
         "enrollment 1 belongs to member 999, not to member 501"),
        ("points_redeemed", lambda i: i.update(points_debit=0), "points_debit must be a positive whole number"),
        ("points_redeemed", lambda i: i.update(points_debit=True), "points_debit must be a positive whole number"),
        ("points_redeemed", lambda i: i.update(reward_state=events.RewardState(id=0)),
         "reward state id must be a positive whole number"),
        ("points_redeemed", lambda i: setattr(i["member"], "phone", "311-555-2368"), "is not E.164"),
    ],
)
def test_inputs_that_cannot_make_a_valid_event_are_refused_with_the_reason(kind, break_inputs, message, request):
    fixture_name, builder = BUILDERS[kind]
    inputs = request.getfixturevalue(fixture_name)
    builder(**inputs)  # the unbroken inputs build
    break_inputs(inputs)
    with pytest.raises(InvalidEvent, match=message):
        builder(**inputs)


def test_credential_not_yet_linked_to_member_or_channel_is_accepted(redemption):
    redemption["credential"].member_id = None
    redemption["credential"].channel_id = None
    redemption["credential"].offer_ids = []
    assert events.offer_state_redeemed(**redemption).to_payload() == load("offer_state_redeemed.json")


# --- the registry --------------------------------------------------------------------------------------


def test_registry_has_one_labelled_switch_per_type_the_builders_send(kind_and_inputs):
    _, builder, inputs = kind_and_inputs
    assert builder(**inputs).type in events.EVENT_TYPES
    assert events.EVENT_TYPES == {
        "sparkfly.member.offer_state_redeemed": "Offer State Redemption",
        "sparkfly.member.offer_state_created": "Offer State Issuance",
        "sparkfly.member.enrollment.points_redeemed": "Points Exchange",
    }
