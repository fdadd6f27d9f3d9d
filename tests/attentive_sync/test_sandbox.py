"""Behaviour of the Attentive sandbox, exercised over real loopback HTTP with ``requests``.

No Django database is needed. Sources of the expected behaviour are cited as in
``attentive_sync/sandbox.py`` (ref §N = reference/attentive-api.md, spec = Attentive's v1 OpenAPI).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from django.core.management import CommandError, call_command

from attentive_sync.client import (
    CUSTOM_ATTRIBUTES_PATH,
    CUSTOM_EVENTS_PATH,
    IDENTITY_PATH,
    ME_PATH,
    SUBSCRIPTIONS_PATH,
    UNSUBSCRIBE_PATH,
)
from attentive_sync.events import FORBIDDEN_PROPERTY_KEY_CHARACTERS, FORBIDDEN_TYPE_CHARACTERS
from attentive_sync.sandbox import AttentiveSandbox, LoggedRequest

ROOT = Path(__file__).resolve().parents[2]
PHONE = "+13115552368"
EMAIL = "ava@example.com"
EVENT = {"type": "Offer Redeemed", "user": {"phone": PHONE}}
ATTRIBUTES = {"properties": {"Loyalty tier": "Gold"}, "user": {"email": EMAIL}}
SUBSCRIBE = {"user": {"phone": PHONE}, "locale": {"language": "en", "country": "US"}, "subscriptionType": "MARKETING"}
IDENTIFY = {"clientUserId": "member-000001", "phone": PHONE}
# Every operation with a valid request, for tests that must hold on all of them.
OPERATIONS = {
    "me": ("GET", ME_PATH, None),
    "events": ("POST", CUSTOM_EVENTS_PATH, EVENT),
    "attributes": ("POST", CUSTOM_ATTRIBUTES_PATH, ATTRIBUTES),
    "subscribe": ("POST", SUBSCRIPTIONS_PATH, SUBSCRIBE),
    "eligibility": ("GET", f"{SUBSCRIPTIONS_PATH}?phone=%2B13115552368", None),
    "unsubscribe": ("POST", UNSUBSCRIBE_PATH, {"user": {"phone": PHONE}}),
    "identify": ("POST", IDENTITY_PATH, IDENTIFY),
}


class Api:
    """A ``requests.Session`` sending the Bearer key; paths are relative to the base URL."""

    def __init__(self, base_url: str, key: str = "sandbox") -> None:
        self.base_url = base_url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {key}"

    def request(self, method: str, path: str, body=None, **kwargs) -> requests.Response:
        if body is not None:
            kwargs["json"] = body
        return self.session.request(method, self.base_url + path, timeout=10, **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body=None, **kwargs) -> requests.Response:
        return self.request("POST", path, body, **kwargs)

    def call(self, operation: str) -> requests.Response:
        method, path, body = OPERATIONS[operation]
        return self.request(method, path, body)


@pytest.fixture
def api(attentive_sandbox) -> Api:
    return Api(attentive_sandbox.base_url)


def error_message(response: requests.Response) -> str:
    """The message of the sandbox's error shape, checking the shape on the way."""
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"id", "message"}, body
    assert isinstance(body["error"]["id"], int)
    return body["error"]["message"]


def with_changes(base: dict, **changes) -> dict:
    """``base`` with top-level keys replaced; a value of ``...`` removes the key."""
    return {key: value for key, value in {**base, **changes}.items() if value is not ...}


class FakeClock:
    """A clock the test moves by hand, for exact rate-limit windows."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ================================================================================================
# Auth and transport (ref §1, §5)
# ================================================================================================


def test_me_describes_the_company_and_app_of_the_key(attentive_sandbox_factory):
    server = attentive_sandbox_factory(company_name="Q Burger", application_name="Loyalty Bridge")

    answer = Api(server.base_url).get(ME_PATH)

    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json() == {
        "applicationName": "Loyalty Bridge",
        "attentiveDomainName": "qburger.attn.tv",
        "companyName": "Q Burger",
        "contactEmail": "api@qburger.example.com",
        "companyId": "MDc6Q29tcGFueTI",
    }


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize(
    ("authorization", "message"),
    [(None, "Bearer <API key> is required"), ("Bearer nope", "not valid"), ("Basic sandbox", "Bearer <API key> is required")],
    ids=["missing", "wrong-key", "wrong-scheme"],
)
def test_every_endpoint_refuses_a_missing_or_wrong_key_with_401(attentive_sandbox, operation, authorization, message):
    api = Api(attentive_sandbox.base_url)
    if authorization is None:
        del api.session.headers["Authorization"]
    else:
        api.session.headers["Authorization"] = authorization

    answer = api.call(operation)

    assert answer.status_code == 401
    assert message in error_message(answer)
    assert all(entries == [] for kind, entries in attentive_sandbox.sandbox.received().items() if isinstance(entries, list))


def test_the_api_key_is_configurable(attentive_sandbox_factory):
    server = attentive_sandbox_factory(api_key="s3cret")

    assert Api(server.base_url, key="s3cret").get(ME_PATH).status_code == 200
    assert Api(server.base_url).get(ME_PATH).status_code == 401


def test_unknown_path_is_404_and_wrong_method_is_405_in_the_error_shape(api):
    missing = api.get("/v1/identity")  # ref §4: there is no /v1/identity
    wrong_method = api.get(CUSTOM_EVENTS_PATH)

    assert missing.status_code == 404 and "/v1/identity" in error_message(missing)
    assert wrong_method.status_code == 405 and wrong_method.headers["Allow"] == "POST"
    assert "GET" in error_message(wrong_method)


@pytest.mark.parametrize(
    ("data", "content_type", "status", "message"),
    [
        ('{"type": ', "application/json", 400, "body is not valid JSON"),
        ("[1, 2]", "application/json", 400, "body must be a JSON object, not a list"),
        ("", "application/json", 400, "a JSON object body is required"),
        ('{"type": "x"}', "text/plain", 415, "Content-Type must be application/json (not text/plain)"),
        ('{"type": "x"}', None, 415, "Content-Type must be application/json (none was sent)"),
    ],
    ids=["malformed", "list", "empty", "text-plain", "no-content-type"],
)
def test_a_body_must_be_a_json_object_sent_as_json(api, data, content_type, status, message):
    headers = {"Content-Type": content_type} if content_type else {}

    answer = api.post(CUSTOM_EVENTS_PATH, data=data.encode(), headers=headers)

    assert answer.status_code == status
    assert message in error_message(answer)


# ================================================================================================
# Custom events (ref §2)
# ================================================================================================


def test_a_custom_event_is_answered_200_empty_object_and_recorded(attentive_sandbox_factory):
    clock = FakeClock()
    server = attentive_sandbox_factory(clock=clock)
    event = {
        "type": "Offer Redeemed",
        "properties": {"offer": {"id": 1701, "name": "Free Fries"}, "codes": ["A", "B"], "mediaUrl": "https://x.test/a.png"},
        "occurredAt": "2026-03-30T14:38:29.000Z",
        "user": {"phone": PHONE, "email": EMAIL, "externalIdentifiers": {"clientUserId": "member-1"}},
        "externalEventId": "37fb97a9-6cfd-4983-bd65-68d104d53b70",
    }

    answer = Api(server.base_url).post(CUSTOM_EVENTS_PATH, event, headers={"User-Agent": "portal-test/1"})

    assert answer.status_code == 200 and answer.json() == {}
    (recorded,) = server.sandbox.events()
    assert recorded["body"] == event
    assert recorded["received_at"] == clock.now
    assert recorded["headers"]["User-Agent"] == "portal-test/1"
    assert recorded["headers"]["Content-Type"] == "application/json"
    assert "Authorization" not in recorded["headers"]


@pytest.mark.parametrize(
    "user",
    [
        {"phone": PHONE},
        {"email": EMAIL},
        {"externalIdentifiers": {"clientUserId": "member-1"}},
        {"externalIdentifiers": {"customIdentifiers": [{"name": "enrollment_id", "value": "700001"}]}},
        {"phone": "+442071838750", "email": EMAIL},
    ],
    ids=["phone", "email", "client-user-id", "custom-identifier", "uk-phone-and-email"],
)
def test_a_custom_event_user_is_a_phone_an_email_or_an_external_identifier(api, user):
    assert api.post(CUSTOM_EVENTS_PATH, {"type": "Points Earned", "user": user}).status_code == 200


@pytest.mark.parametrize(
    "occurred_at", ["2021-03-30T14:38:29Z", "2021-03-30T14:38:29.123456+05:30", "2021-03-30T14:38:29-08:00"]
)
def test_rfc3339_timestamps_with_any_offset_are_accepted(api, occurred_at):
    assert api.post(CUSTOM_EVENTS_PATH, {**EVENT, "occurredAt": occurred_at}).status_code == 200


def test_unknown_top_level_keys_are_ignored_like_production(api, attentive_sandbox):
    # RudderStack sends the misspelt "occuredAt" (ref §2); production takes it.
    answer = api.post(CUSTOM_EVENTS_PATH, {**EVENT, "occuredAt": "whenever", "channel": "sms"})

    assert answer.status_code == 200
    assert attentive_sandbox.sandbox.events()[0]["body"]["occuredAt"] == "whenever"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"type": ...}, "type is required"),
        ({"type": 5}, "type must be a string, not a number"),
        ({"type": "  "}, "type must not be empty"),
        ({"type": "Offer (redeemed)"}, "type 'Offer (redeemed)' contains characters Attentive forbids: '(' ')'"),
        ({"user": ...}, "user is required"),
        ({"user": PHONE}, "user must be an object, not a string"),
        ({"user": {}}, "user needs a phone, an email or externalIdentifiers"),
        ({"user": {"phone": PHONE, "name": "Ava"}}, "user has unknown field(s) 'name'; allowed: phone, email, externalIdentifiers"),
        ({"user": {"phone": "+1-555"}}, "user.phone '+1-555' is not E.164, like +13115552368"),
        ({"user": {"phone": "13115552368"}}, "user.phone '13115552368' is not E.164"),
        ({"user": {"phone": 13115552368}}, "user.phone must be a string, not a number"),
        ({"user": {"email": ""}}, "user.email must not be empty"),
        ({"user": {"email": None}}, "user.email must be a string, not null"),
        ({"user": {"externalIdentifiers": "member-1"}}, "user.externalIdentifiers must be an object, not a string"),
        ({"user": {"externalIdentifiers": {}}}, "user needs a phone, an email or externalIdentifiers"),
        ({"user": {"externalIdentifiers": {"clientUserId": 42}}}, "user.externalIdentifiers.clientUserId must be a string, not a number"),
        (
            {"user": {"externalIdentifiers": {"customIdentifiers": {"enrollment_id": "1"}}}},  # Segment's map (ref §2)
            "user.externalIdentifiers.customIdentifiers must be a list of {name, value} objects, not an object",
        ),
        (
            {"user": {"externalIdentifiers": {"customIdentifiers": [{"name": "enrollment_id", "value": 700001}]}}},
            "user.externalIdentifiers.customIdentifiers[0].value must be a string, not a number",
        ),
        (
            {"user": {"externalIdentifiers": {"customIdentifiers": [{"value": "700001"}]}}},
            "user.externalIdentifiers.customIdentifiers[0].name is required",
        ),
        ({"properties": ["a"]}, "properties must be an object, not a list"),
        ({"properties": {"order[id]": 1}}, "properties key 'order[id]' contains characters Attentive forbids: '[' ']'"),
        ({"occurredAt": "2021-03-30T14:38:29"}, "occurredAt '2021-03-30T14:38:29' is not an RFC 3339 timestamp with a UTC offset"),
        ({"occurredAt": "2021-03-30T14:38:29+0000"}, "occurredAt '2021-03-30T14:38:29+0000' is not an RFC 3339"),
        ({"occurredAt": "2021-02-30T14:38:29Z"}, "occurredAt '2021-02-30T14:38:29Z' is not an RFC 3339"),
        ({"occurredAt": 1617115109}, "occurredAt must be a string, not a number"),
        ({"externalEventId": 17}, "externalEventId must be a string, not a number"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_custom_event_validation_names_the_problem(api, attentive_sandbox, changes, message):
    answer = api.post(CUSTOM_EVENTS_PATH, with_changes(EVENT, **changes))

    assert answer.status_code == 400
    assert message in error_message(answer)
    assert attentive_sandbox.sandbox.events() == []


def test_every_forbidden_character_is_refused_in_types_and_property_keys_and_others_pass(api):
    type_answers = {c: api.post(CUSTOM_EVENTS_PATH, {**EVENT, "type": f"Offer{c}Redeemed"}).status_code for c in FORBIDDEN_TYPE_CHARACTERS}
    key_answers = {c: api.post(CUSTOM_EVENTS_PATH, {**EVENT, "properties": {f"a{c}b": 1}}).status_code for c in FORBIDDEN_PROPERTY_KEY_CHARACTERS}
    # The two lists differ: a property key may hold ' ( ) , which a type may not.
    allowed_in_keys = api.post(CUSTOM_EVENTS_PATH, {**EVENT, "properties": {"it's (a, b)": 1}})

    assert set(type_answers.values()) == {400} and len(type_answers) == 11
    assert set(key_answers.values()) == {400} and len(key_answers) == 7
    assert allowed_in_keys.status_code == 200


def test_every_problem_of_a_body_is_named_in_one_message(api):
    answer = api.post(CUSTOM_EVENTS_PATH, {"type": "a|b", "user": {"phone": "555"}, "occurredAt": "now"})

    message = error_message(answer)
    assert "type 'a|b'" in message and "user.phone '555'" in message and "occurredAt 'now'" in message


def test_events_are_not_deduplicated_but_duplicates_are_counted(api, attentive_sandbox):
    once, twice = {**EVENT, "externalEventId": "e-1"}, {**EVENT, "externalEventId": "e-2"}

    answers = [api.post(CUSTOM_EVENTS_PATH, body).status_code for body in (once, twice, twice, twice, EVENT)]

    assert answers == [200] * 5  # ref §2: Attentive documents no dedup on externalEventId
    assert len(attentive_sandbox.sandbox.events()) == 5
    assert attentive_sandbox.sandbox.duplicate_external_event_ids() == {"e-2": 3}


# ================================================================================================
# Custom attributes (ref §4)
# ================================================================================================


def test_custom_attributes_are_answered_200_and_recorded(api, attentive_sandbox):
    body = {"properties": {"Loyalty tier": "Gold", "Points": 1250, "Address": {"city": "Austin"}}, "user": {"phone": PHONE}}

    answer = api.post(CUSTOM_ATTRIBUTES_PATH, body)

    assert answer.status_code == 200 and answer.json() == {}
    assert [entry["body"] for entry in attentive_sandbox.sandbox.received()["attributes"]] == [body]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"properties": ...}, "properties is required"),
        ({"properties": "Gold"}, "properties must be an object, not a string"),
        ({"properties": {"favorite_city": ["chicago", "new york"]}}, "properties.favorite_city is a list; Attentive does not accept arrays"),
        ({"properties": {"address": {"lines": ["1 Main St"]}}}, "properties.address.lines is a list"),
        ({"properties": {"x" * 201: "1"}}, "is 201 characters; the limit is 200"),
        ({"user": ...}, "user is required"),
        ({"user": {"email": EMAIL, "id": 5}}, "user has unknown field(s) 'id'"),
        ({"user": {"phone": "(311) 555-2368"}}, "user.phone '(311) 555-2368' is not E.164"),
    ],
    ids=["no-properties", "properties-string", "array", "nested-array", "long-name", "no-user", "unknown-user-field", "bad-phone"],
)
def test_custom_attributes_validation_names_the_problem(api, attentive_sandbox, changes, message):
    answer = api.post(CUSTOM_ATTRIBUTES_PATH, with_changes(ATTRIBUTES, **changes))

    assert answer.status_code == 400
    assert message in error_message(answer)
    assert attentive_sandbox.sandbox.received()["attributes"] == []


# ================================================================================================
# Subscriptions (ref §3)
# ================================================================================================


def _created(answer: requests.Response) -> list[tuple[str, str, str]]:
    return [(r["subscription"]["type"], r["subscription"]["channel"], r["subscriptionCreationStatus"]) for r in answer.json()["subscriptionResponses"]]


def _unsubscribed(answer: requests.Response) -> list[tuple[str, str, str]]:
    return [(r["subscription"]["type"], r["subscription"]["channel"], r["subscriptionUnsubscribeStatus"]) for r in answer.json()["subscriptionResponses"]]


def _eligibility(api: Api, **query) -> list[tuple[str, str, bool]]:
    answer = api.get(SUBSCRIPTIONS_PATH, params=query)
    assert answer.status_code == 200, answer.text
    return [(e["subscription"]["type"], e["subscription"]["channel"], e["eligibility"]["isEligible"]) for e in answer.json()["subscriptionEligibilities"]]


def _subscribe(api: Api, user: dict, subscription_type: str = "MARKETING", **extra) -> requests.Response:
    body = {"user": user, "locale": {"language": "en", "country": "US"}, "subscriptionType": subscription_type, **extra}
    answer = api.post(SUBSCRIPTIONS_PATH, body)
    assert answer.status_code == 202, answer.text
    return answer


def test_subscribe_creates_per_channel_then_reports_previously_created(api):
    user = {"phone": PHONE, "email": EMAIL}
    external = {"clientUserId": "member-1", "shopifyId": "123456789000"}

    first = _subscribe(api, user, externalIdentifiers=external, singleOptIn=True)
    again = _subscribe(api, user)
    transactional = _subscribe(api, {"phone": PHONE}, "TRANSACTIONAL")

    assert first.json()["user"] == user and first.json()["externalIdentifiers"] == external
    assert _created(first) == [("MARKETING", "TEXT", "NEWLY_CREATED"), ("MARKETING", "EMAIL", "NEWLY_CREATED")]
    assert _created(again) == [("MARKETING", "TEXT", "PREVIOUSLY_CREATED"), ("MARKETING", "EMAIL", "PREVIOUSLY_CREATED")]
    assert "externalIdentifiers" not in again.json()
    assert _created(transactional) == [("TRANSACTIONAL", "TEXT", "NEWLY_CREATED")]


def test_subscribe_with_only_a_sign_up_source_is_a_marketing_subscription(api, attentive_sandbox):
    answer = api.post(SUBSCRIPTIONS_PATH, {"user": {"email": EMAIL}, "signUpSourceId": "12345"})

    assert answer.status_code == 202
    assert _created(answer) == [("MARKETING", "EMAIL", "NEWLY_CREATED")]
    assert attentive_sandbox.sandbox.received()["subscriptions"][0]["body"]["signUpSourceId"] == "12345"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"user": ...}, "user is required"),
        ({"user": {"clientUserId": "member-1"}}, "user needs a phone or an email"),
        ({"user": {"phone": "+1---914---844---0001"}}, "user.phone '+1---914---844---0001' is not E.164"),
        ({"subscriptionType": ...}, "a subscribe needs a signUpSourceId, or both locale and subscriptionType"),
        ({"locale": ...}, "a subscribe needs a signUpSourceId, or both locale and subscriptionType"),
        ({"subscriptionType": "CHECKOUT_ABANDONED"}, "subscriptionType 'CHECKOUT_ABANDONED' is not one of MARKETING, TRANSACTIONAL"),
        ({"locale": {"language": "EN", "country": "US"}}, "locale.language 'EN' is not a two-letter code like 'en'"),
        ({"locale": "en-US"}, "locale must be an object, not a string"),
        ({"signUpSourceId": 12345}, "signUpSourceId must be a string, not a number"),
        ({"singleOptIn": "yes"}, "singleOptIn must be true or false, not a string"),
        ({"externalIdentifiers": {"shopifyId": 123456789000}}, "externalIdentifiers.shopifyId must be a string, not a number"),
    ],
    ids=[
        "no-user", "no-phone-or-email", "bad-phone", "no-type", "no-locale", "checkout-abandoned",
        "uppercase-language", "locale-string", "numeric-source", "opt-in-string", "numeric-shopify-id",
    ],
)
def test_subscribe_validation_names_the_problem(api, attentive_sandbox, changes, message):
    answer = api.post(SUBSCRIPTIONS_PATH, with_changes(SUBSCRIBE, **changes))

    assert answer.status_code == 400
    assert message in error_message(answer)
    assert attentive_sandbox.sandbox.received()["subscriptions"] == []


def test_eligibility_lists_the_contacts_subscriptions_until_unsubscribed(api):
    _subscribe(api, {"phone": PHONE, "email": EMAIL})
    _subscribe(api, {"phone": PHONE}, "TRANSACTIONAL")
    api.post(UNSUBSCRIBE_PATH, {"user": {"phone": PHONE}, "subscriptions": [{"type": "MARKETING", "channel": "TEXT"}]})

    assert _eligibility(api, phone=PHONE) == [("MARKETING", "TEXT", False), ("TRANSACTIONAL", "TEXT", True)]
    assert _eligibility(api, email=EMAIL) == [("MARKETING", "EMAIL", True)]
    assert _eligibility(api, phone=PHONE, email=EMAIL) == [
        ("MARKETING", "TEXT", False), ("TRANSACTIONAL", "TEXT", True), ("MARKETING", "EMAIL", True),
    ]
    assert _eligibility(api, email="nobody@example.com") == []


def test_eligibility_needs_a_phone_or_an_email_and_an_encoded_plus(api):
    nothing = api.get(SUBSCRIPTIONS_PATH)
    raw_plus = api.get(f"{SUBSCRIPTIONS_PATH}?phone={PHONE}")  # "+" decodes to a space (ref §3)

    assert nothing.status_code == 400 and "phone or email is required" in error_message(nothing)
    assert raw_plus.status_code == 400
    assert "phone ' 13115552368' is not E.164" in error_message(raw_plus) and "%2B" in error_message(raw_plus)


def test_unsubscribe_reaches_only_the_channel_of_the_contact_given(api):
    _subscribe(api, {"phone": PHONE, "email": EMAIL})
    _subscribe(api, {"phone": PHONE, "email": EMAIL}, "TRANSACTIONAL")

    by_email = api.post(UNSUBSCRIBE_PATH, {"user": {"email": EMAIL}})
    by_email_again = api.post(UNSUBSCRIBE_PATH, {"user": {"email": EMAIL}})
    one_by_phone = api.post(
        UNSUBSCRIBE_PATH,
        {"user": {"phone": PHONE}, "subscriptions": [{"type": "TRANSACTIONAL", "channel": "TEXT"}], "notification": {"language": "fr-CA", "disabled": True}},
    )

    assert by_email.status_code == 202 and by_email.json()["user"] == {"email": EMAIL}
    assert _unsubscribed(by_email) == [("MARKETING", "EMAIL", "NEWLY_UNSUBSCRIBED"), ("TRANSACTIONAL", "EMAIL", "NEWLY_UNSUBSCRIBED")]
    assert _unsubscribed(by_email_again) == [("MARKETING", "EMAIL", "PREVIOUSLY_UNSUBSCRIBED"), ("TRANSACTIONAL", "EMAIL", "PREVIOUSLY_UNSUBSCRIBED")]
    assert _unsubscribed(one_by_phone) == [("TRANSACTIONAL", "TEXT", "NEWLY_UNSUBSCRIBED")]
    assert _eligibility(api, phone=PHONE) == [("MARKETING", "TEXT", True), ("TRANSACTIONAL", "TEXT", False)]


def test_a_channel_only_selector_unsubscribes_every_type_on_it(api):
    _subscribe(api, {"phone": PHONE})
    _subscribe(api, {"phone": PHONE}, "TRANSACTIONAL")

    answer = api.post(UNSUBSCRIBE_PATH, {"user": {"phone": PHONE}, "subscriptions": [{"channel": "TEXT"}]})

    assert _unsubscribed(answer) == [("MARKETING", "TEXT", "NEWLY_UNSUBSCRIBED"), ("TRANSACTIONAL", "TEXT", "NEWLY_UNSUBSCRIBED")]


def test_subscribing_again_after_unsubscribing_is_previously_created_and_eligible(api):
    _subscribe(api, {"phone": PHONE})
    api.post(UNSUBSCRIBE_PATH, {"user": {"phone": PHONE}})

    again = _subscribe(api, {"phone": PHONE})

    assert _created(again) == [("MARKETING", "TEXT", "PREVIOUSLY_CREATED")]
    assert _eligibility(api, phone=PHONE) == [("MARKETING", "TEXT", True)]


def test_unsubscribing_a_contact_without_subscriptions_lists_nothing(api):
    answer = api.post(UNSUBSCRIBE_PATH, {"user": {"phone": PHONE}})

    assert answer.status_code == 202 and answer.json()["subscriptionResponses"] == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"subscriptions": [{"type": "MARKETING", "channel": "TEXT"}]}, "user is required"),
        ({"user": {"phone": PHONE}, "subscriptions": [{"type": "WEEKLY"}]}, "subscriptions[0].type 'WEEKLY' is not one of MARKETING, TRANSACTIONAL, CHECKOUT_ABANDONED"),
        ({"user": {"phone": PHONE}, "subscriptions": [{"channel": "PUSH"}]}, "subscriptions[0].channel 'PUSH' is not one of TEXT, EMAIL"),
        ({"user": {"phone": PHONE}, "subscriptions": [{}]}, "subscriptions[0] must be an object with a type and/or a channel"),
        ({"user": {"phone": PHONE}, "subscriptions": {"type": "MARKETING"}}, "subscriptions must be a list of {type, channel} objects, not an object"),
        ({"user": {"phone": PHONE}, "notification": {"language": "en"}}, "notification.language 'en' is not one of en-US, fr-CA"),
        ({"user": {"phone": PHONE}, "notification": {"disabled": "yes"}}, "notification.disabled must be true or false, not a string"),
    ],
    ids=["no-user", "bad-type", "bad-channel", "empty-selector", "selector-object", "bad-language", "disabled-string"],
)
def test_unsubscribe_validation_names_the_problem(api, body, message):
    answer = api.post(UNSUBSCRIBE_PATH, body)

    assert answer.status_code == 400
    assert message in error_message(answer)


# ================================================================================================
# Identity (ref §4)
# ================================================================================================


@pytest.mark.parametrize(
    "body",
    [
        IDENTIFY,
        {"email": EMAIL, "customIdentifiers": [{"name": "enrollment_id", "value": "700001"}]},
        {"customIdentifiers": [{"name": "enrollment_id", "value": "700001"}, {"name": "loyalty_id", "value": "L-1"}]},
        {"phone": PHONE, "email": EMAIL, "shopifyId": "123456789000", "klaviyoId": "01ABCDEF", "clientUserId": "member-1"},
    ],
    ids=["client-user-id-and-phone", "custom-and-email", "two-custom", "everything"],
)
def test_identity_associates_a_client_or_custom_identifier_with_another(api, attentive_sandbox, body):
    answer = api.post(IDENTITY_PATH, body)

    assert answer.status_code == 202
    assert [entry["body"] for entry in attentive_sandbox.sandbox.received()["identities"]] == [body]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"clientUserId": "member-1"}, "needs at least one other identifier"),
        ({"customIdentifiers": [{"name": "enrollment_id", "value": "700001"}]}, "needs at least one other identifier"),
        ({"phone": PHONE, "email": EMAIL}, "a clientUserId or customIdentifiers is required"),
        ({"clientUserId": "m" * 101, "phone": PHONE}, "clientUserId is 101 characters long; the limit is 100"),
        ({"clientUserId": "member-1", "email": "a" * 95 + "@x.com"}, "email is 101 characters long; the limit is 100"),
        ({"phone": PHONE, "customIdentifiers": [{"name": "loyalty_id", "value": "v" * 101}]}, "customIdentifiers[0].value is 101 characters long"),
        ({"phone": PHONE, "customIdentifiers": [{"name": "loyalty_id"}]}, "customIdentifiers[0].value is required"),
        ({"clientUserId": "member-1", "phone": "3115552368"}, "phone '3115552368' is not E.164"),
        ({"clientUserId": "member-1", "shopifyId": 123456789000}, "shopifyId must be a string, not a number"),
    ],
    ids=["client-alone", "custom-alone", "nothing-to-associate", "long-client-id", "long-email", "long-custom-value", "custom-without-value", "bad-phone", "numeric-shopify-id"],
)
def test_identity_validation_names_the_problem(api, body, message):
    answer = api.post(IDENTITY_PATH, body)

    assert answer.status_code == 400
    assert message in error_message(answer)


# ================================================================================================
# Rate limits (ref §5)
# ================================================================================================


def _limits(answer: requests.Response) -> tuple[int, int]:
    return int(answer.headers["x-ratelimit-limit"]), int(answer.headers["x-ratelimit-remaining"])


def test_every_answer_carries_the_rate_limit_headers_of_its_endpoint(attentive_sandbox):
    api = Api(attentive_sandbox.base_url)
    stranger = Api(attentive_sandbox.base_url, key="wrong")

    me = [_limits(api.get(ME_PATH)) for _ in range(2)]
    invalid = _limits(api.post(CUSTOM_EVENTS_PATH, {"type": "x"}))  # a 400 counts too
    unauthorized = _limits(stranger.post(CUSTOM_EVENTS_PATH, EVENT))  # a 401 shows the window, uncounted
    event = _limits(api.post(CUSTOM_EVENTS_PATH, EVENT))

    assert me == [(150, 149), (150, 148)]
    assert invalid == (150, 149)  # per endpoint: /v1/me's requests do not count here
    assert unauthorized == (150, 149)
    assert event == (150, 148)


def test_identity_subscribe_and_unsubscribe_have_lower_limits(api):
    limits = {operation: _limits(api.call(operation))[0] for operation in OPERATIONS}

    assert limits == {"me": 150, "events": 150, "attributes": 150, "subscribe": 10, "eligibility": 150, "unsubscribe": 5, "identify": 10}


def test_a_burst_over_the_limit_is_429_until_the_sliding_window_frees_a_slot(attentive_sandbox_factory):
    clock = FakeClock()
    server = attentive_sandbox_factory(rate_limit=3, clock=clock)
    api = Api(server.base_url)

    def send_at(offset: float) -> requests.Response:
        clock.now = 1000.0 + offset
        return api.post(CUSTOM_EVENTS_PATH, EVENT)

    admitted = [send_at(t) for t in (0.0, 0.4, 0.8)]
    refused = send_at(0.9)
    one_freed = [send_at(1.0), send_at(1.0)]  # the request of t=0.0 left the window, only it
    two_freed = send_at(1.4)

    assert [a.status_code for a in admitted] == [200, 200, 200]
    assert [_limits(a) for a in admitted] == [(3, 2), (3, 1), (3, 0)]
    assert refused.status_code == 429 and _limits(refused) == (3, 0)
    assert "rate limit of 3 requests per second exceeded for POST /v1/events/custom" in error_message(refused)
    assert [a.status_code for a in one_freed] == [200, 429]
    assert two_freed.status_code == 200
    assert server.sandbox.rate_limited() == {f"POST {CUSTOM_EVENTS_PATH}": 2}
    assert len(server.sandbox.events()) == 5


def test_the_window_refills_on_the_real_clock(api):
    burst = [api.call("unsubscribe").status_code for _ in range(7)]
    time.sleep(1.05)
    after = api.call("unsubscribe")

    assert burst == [202] * 5 + [429] * 2
    assert after.status_code == 202 and _limits(after) == (5, 4)


def test_the_limit_is_exact_under_concurrent_requests(attentive_sandbox_factory):
    clock = FakeClock()  # frozen: every request falls in one window, however long the burst takes
    server = attentive_sandbox_factory(rate_limit=50, clock=clock)

    def send(n: int) -> int:
        return requests.post(
            server.base_url + CUSTOM_EVENTS_PATH, json={**EVENT, "externalEventId": f"e-{n}"},
            headers={"Authorization": "Bearer sandbox"}, timeout=10,
        ).status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(send, range(160)))

    assert statuses.count(200) == 50 and statuses.count(429) == 110
    assert len(server.sandbox.events()) == 50
    assert server.sandbox.rate_limited() == {f"POST {CUSTOM_EVENTS_PATH}": 110}


def test_rate_limit_zero_switches_limiting_off(attentive_sandbox_factory):
    api = Api(attentive_sandbox_factory(rate_limit=0).base_url)

    answers = [api.call("unsubscribe") for _ in range(8)]

    assert [a.status_code for a in answers] == [202] * 8  # beyond unsubscribe's 5/s
    assert "x-ratelimit-limit" not in answers[0].headers


# ================================================================================================
# Faults, fail_rate, latency
# ================================================================================================


def test_inject_fault_skips_after_then_answers_times_raw(api, attentive_sandbox):
    attentive_sandbox.sandbox.inject_fault(
        CUSTOM_EVENTS_PATH, status=503, body="<html>down</html>", content_type="text/html", times=2, after=1
    )

    answers = [api.post(CUSTOM_EVENTS_PATH, EVENT) for _ in range(4)]
    attentive_sandbox.sandbox.inject_fault(ME_PATH, status=200, body='{"companyName": ')
    broken = api.get(ME_PATH)

    assert [a.status_code for a in answers] == [200, 503, 503, 200]
    assert answers[1].text == "<html>down</html>" and "x-ratelimit-limit" not in answers[1].headers
    assert len(attentive_sandbox.sandbox.events()) == 2  # a faulted request never reaches the API
    assert broken.status_code == 200 and broken.text == '{"companyName": '


def test_a_dropped_connection_is_a_connection_error_for_the_client(api, attentive_sandbox):
    attentive_sandbox.sandbox.inject_fault(CUSTOM_EVENTS_PATH, drop=True, delay=0.2)

    started = time.perf_counter()
    with pytest.raises(requests.ConnectionError):
        api.post(CUSTOM_EVENTS_PATH, EVENT)
    elapsed = time.perf_counter() - started
    after = api.post(CUSTOM_EVENTS_PATH, EVENT)

    assert elapsed >= 0.2
    assert after.status_code == 200
    assert attentive_sandbox.sandbox.requests_log[0] == LoggedRequest("POST", CUSTOM_EVENTS_PATH, "", None)
    assert len(attentive_sandbox.sandbox.events()) == 1


def test_a_delayed_fault_answers_late_without_stalling_other_requests(api, attentive_sandbox):
    attentive_sandbox.sandbox.inject_fault(CUSTOM_EVENTS_PATH, status=504, body="{}", delay=0.5)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1) as pool:
        slow = pool.submit(api.post, CUSTOM_EVENTS_PATH, EVENT)
        time.sleep(0.05)
        quick = api.get(ME_PATH)
        quick_done = time.perf_counter() - started
        assert slow.result().status_code == 504
    assert quick.status_code == 200 and quick_done < 0.4
    assert time.perf_counter() - started >= 0.5


def test_faults_over_http_inject_drop_and_clear(api, attentive_sandbox):
    base = attentive_sandbox.base_url
    injected = requests.post(f"{base}/_sandbox/faults", json={"path_prefix": "/v1/", "status": 502, "body": "bad gateway", "times": 5})

    faulted = api.get(ME_PATH)
    requests.delete(f"{base}/_sandbox/faults")
    cleared = api.get(ME_PATH)
    requests.post(f"{base}/_sandbox/faults", json={"path_prefix": ME_PATH, "drop": True})
    with pytest.raises(requests.ConnectionError):
        api.get(ME_PATH)

    assert injected.status_code == 201 and injected.json()["fault"]["times"] == 5
    assert (faulted.status_code, faulted.text) == (502, "bad gateway")
    assert cleared.status_code == 200


@pytest.mark.parametrize(
    "fault",
    [{"path_prefix": "/v1", "colour": "red"}, {"path_prefix": "/v1", "drop": "yes"}, {"path_prefix": "/v1", "delay": -1}, {"path_prefix": "/v1", "status": 99}],
    ids=["unknown-field", "drop-string", "negative-delay", "bad-status"],
)
def test_bad_faults_are_refused_over_http_and_in_python(attentive_sandbox, fault):
    answer = requests.post(f"{attentive_sandbox.base_url}/_sandbox/faults", json=fault)

    assert answer.status_code == 400 and "bad fault" in error_message(answer)
    with pytest.raises(TypeError):
        attentive_sandbox.sandbox.inject_fault(**fault)


def _statuses_with_fail_rate(factory, seed: int, count: int = 60) -> list[int]:
    api = Api(factory(fail_rate=0.3, seed=seed, rate_limit=0).base_url)
    return [api.post(CUSTOM_EVENTS_PATH, EVENT).status_code for _ in range(count)]


def test_fail_rate_fails_the_same_requests_for_the_same_seed(attentive_sandbox_factory):
    first, again, other = (_statuses_with_fail_rate(attentive_sandbox_factory, seed) for seed in (7, 7, 8))

    assert first == again and first != other
    assert set(first) == {200, 500}
    assert 0.1 < first.count(500) / len(first) < 0.5


def test_fail_rate_fails_only_requests_that_would_succeed_and_records_nothing(attentive_sandbox_factory):
    server = attentive_sandbox_factory(fail_rate=1.0)
    api = Api(server.base_url)

    valid = api.post(CUSTOM_EVENTS_PATH, EVENT)
    invalid = api.post(CUSTOM_EVENTS_PATH, {"type": "x"})
    unauthorized = Api(server.base_url, key="wrong").post(CUSTOM_EVENTS_PATH, EVENT)

    assert valid.status_code == 500 and "fail_rate" in error_message(valid)
    assert (invalid.status_code, unauthorized.status_code) == (400, 401)
    assert server.sandbox.events() == []


def test_fail_with_mixes_500s_429s_and_timeouts_and_records_none_of_them(attentive_sandbox_factory):
    server = attentive_sandbox_factory(fail_rate=0.5, fail_with=("500", "429", "timeout"), timeout_seconds=0.2, rate_limit=0, seed=3)
    api = Api(server.base_url)
    outcomes = []
    for _ in range(60):
        try:
            outcomes.append(api.post(CUSTOM_EVENTS_PATH, EVENT).status_code)
        except requests.ConnectionError:
            outcomes.append("timeout")
    received = requests.get(f"{server.base_url}/_sandbox/received").json()

    assert set(outcomes) == {200, 500, 429, "timeout"}
    assert received["injected"] == {kind: outcomes.count(int(kind) if kind != "timeout" else kind) for kind in ("500", "429", "timeout")}
    assert len(received["events"]) == outcomes.count(200)  # a failed request is never processed
    assert received["rate_limited"] == {"POST /v1/events/custom": outcomes.count(429)}


def test_fail_with_refuses_an_unknown_kind(attentive_sandbox_factory):
    with pytest.raises(ValueError, match="fail_with"):
        attentive_sandbox_factory(fail_rate=0.5, fail_with=("503",))


def test_latency_delays_each_answer_but_concurrent_requests_overlap(attentive_sandbox_factory):
    server = attentive_sandbox_factory(latency_ms=100, rate_limit=0)
    api = Api(server.base_url)

    def timed(_: int) -> float:
        started = time.perf_counter()
        assert api.post(CUSTOM_EVENTS_PATH, EVENT).status_code == 200
        return time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=10) as pool:
        each = list(pool.map(timed, range(20)))
    total = time.perf_counter() - started

    assert min(each) >= 0.1
    assert total < 1.0  # one after another it would take at least 2 s


# ================================================================================================
# Inspection and control over HTTP
# ================================================================================================


def test_received_lists_what_was_accepted_with_a_type_filter_and_429_counts(attentive_sandbox_factory):
    clock = FakeClock()
    server = attentive_sandbox_factory(clock=clock)
    api = Api(server.base_url)
    api.post(CUSTOM_EVENTS_PATH, {**EVENT, "type": "Points Earned", "externalEventId": "e-1"})
    api.post(CUSTOM_EVENTS_PATH, {**EVENT, "externalEventId": "e-1"})
    api.post(CUSTOM_ATTRIBUTES_PATH, ATTRIBUTES)
    api.post(SUBSCRIPTIONS_PATH, SUBSCRIBE)
    api.post(UNSUBSCRIBE_PATH, {"user": {"phone": PHONE}})
    api.post(IDENTITY_PATH, IDENTIFY)
    statuses = [api.call("unsubscribe").status_code for _ in range(5)]

    everything = requests.get(f"{server.base_url}/_sandbox/received").json()
    redeemed = requests.get(f"{server.base_url}/_sandbox/received", params={"type": "Offer Redeemed"}).json()

    assert statuses == [202] * 4 + [429]
    assert everything == server.sandbox.received()
    assert [e["body"]["type"] for e in everything["events"]] == ["Points Earned", "Offer Redeemed"]
    assert [e["body"]["type"] for e in redeemed["events"]] == ["Offer Redeemed"]
    assert [len(everything[kind]) for kind in ("attributes", "subscriptions", "unsubscriptions", "identities")] == [1, 1, 5, 1]
    assert everything["rate_limited"] == {f"POST {UNSUBSCRIBE_PATH}": 1}
    assert everything["duplicate_external_event_ids"] == {"e-1": 2}
    entry = everything["attributes"][0]
    assert entry["received_at"] == clock.now and "Authorization" not in entry["headers"]


def test_reset_over_http_forgets_everything(api, attentive_sandbox):
    _subscribe(api, {"phone": PHONE})
    api.post(CUSTOM_EVENTS_PATH, EVENT)
    attentive_sandbox.sandbox.inject_fault(ME_PATH)

    reset = requests.post(f"{attentive_sandbox.base_url}/_sandbox/reset")

    received = attentive_sandbox.sandbox.received()
    assert reset.status_code == 200
    assert all(received[kind] == [] for kind in ("events", "subscriptions")) and received["rate_limited"] == {}
    assert attentive_sandbox.sandbox.requests_log == []
    assert _limits(api.get(ME_PATH)) == (150, 149)  # the fault is gone and the window is fresh
    assert _created(_subscribe(api, {"phone": PHONE})) == [("MARKETING", "TEXT", "NEWLY_CREATED")]


def test_request_log_records_method_path_query_and_status(attentive_sandbox):
    sandbox = attentive_sandbox.sandbox
    api = Api(attentive_sandbox.base_url)
    api.get(SUBSCRIPTIONS_PATH, params={"email": EMAIL})
    Api(attentive_sandbox.base_url, key="wrong").get(ME_PATH)
    requests.get(f"{attentive_sandbox.base_url}/_sandbox/received")

    assert sandbox.requests_log == [
        LoggedRequest("GET", SUBSCRIPTIONS_PATH, "email=ava%40example.com", 200),
        LoggedRequest("GET", ME_PATH, "", 401),
    ]
    assert sandbox.count_requests(ME_PATH) == 1 and sandbox.count_requests(ME_PATH, method="post") == 0


def test_an_unknown_control_endpoint_is_404(attentive_sandbox):
    answer = requests.get(f"{attentive_sandbox.base_url}/_sandbox/nothing")

    assert answer.status_code == 404 and "control endpoint" in error_message(answer)


@pytest.mark.parametrize(
    "kwargs", [{"rate_limit": -1}, {"rate_limit": 1.5}, {"fail_rate": 1.5}, {"latency_ms": -5}, {"api_key": ""}]
)
def test_bad_constructor_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        AttentiveSandbox(**kwargs)


# ================================================================================================
# The management command
# ================================================================================================


def _interruptible() -> None:
    """Ctrl-C reaches the child as in a terminal: a child inherits an ignored or blocked SIGINT,
    and in the whole suite an earlier in-process worker can leave this process so (seen: the
    command, alone fine, never stopped after the full suite's worker tests)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_the_command_serves_until_ctrl_c():
    command = [
        sys.executable, str(ROOT / "manage.py"), "attentive_sandbox", "--port", "0",
        "--api-key", "k3y", "--rate-limit", "7", "--latency-ms", "1", "--seed", "3",
    ]
    process = subprocess.Popen(
        command, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=_interruptible,
    )
    try:
        # Both announcement lines come once the port is bound (communicate() below would miss
        # lines already buffered by readline()).
        announced = [process.stdout.readline(), process.stdout.readline()]
        base_url = announced[0].split(" on ")[1].split()[0]
        answer = Api(base_url, key="k3y").get(ME_PATH)
    finally:
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=30)  # generous: a loaded machine is slow to stop a process

    assert announced[0].startswith("Attentive sandbox on http://127.0.0.1:") and "(API key: k3y)" in announced[0]
    assert announced[1].startswith("rate limit 7/s (identity and subscribe 10/s, unsubscribe 5/s), fail rate 0, latency 1 ms, seed 3.")
    assert answer.status_code == 200 and _limits(answer) == (7, 6)
    assert process.returncode == 0 and "Attentive sandbox stopped." in rest
    assert "GET /v1/me" not in rest  # the access log is -v 2's


def test_the_command_refuses_bad_arguments():
    with pytest.raises(CommandError, match="fail_rate must be between 0 and 1"):
        call_command("attentive_sandbox", "--fail-rate", "2")
