"""Contract test: the sandbox agrees with Attentive's published v1 spec, both ways.

1. Accepted: for every operation the sandbox serves, realistic requests (every user shape, every
   optional field) are made over HTTP; each must be accepted, and openapi-core must find both
   the request and the response (status, content type, body schema where the spec gives one)
   valid against the spec.
2. Refused: bodies the spec's schemas forbid (missing required fields, wrong types, unknown user
   fields, values outside an enum, a non-RFC 3339 ``occurredAt``...). The spec must reject each,
   so the case really is forbidden, and the sandbox must answer 400: it is no more lenient than
   the spec. The narrative rules the schemas cannot express (E.164, forbidden characters,
   100-character identifiers, "signUpSourceId or locale and subscriptionType") are covered by
   test_sandbox.py.
3. Errors: the sandbox's 400, 401 and 429 are statuses the spec lists for the operation.

The fixtures also check, after every test of this package, that each body a sandbox accepted
validates against the spec (conftest.py); the spec errata are there too.
"""

from __future__ import annotations

import re

import pytest
import requests

from attentive_sync.client import (
    BULK_JOB_PATH,
    CUSTOM_ATTRIBUTES_PATH,
    CUSTOM_EVENTS_PATH,
    IDENTITY_PATH,
    ME_PATH,
    SEGMENT_MEMBERS_PATH,
    SEGMENTS_PATH,
    SUBSCRIPTIONS_PATH,
    TEXT_SEND_PATH,
    UNSUBSCRIBE_PATH,
)
from attentive_sync.sandbox import AttentiveSandbox, serve_in_thread

AUTH = {"Authorization": "Bearer sandbox"}
PHONE = "+13115552368"
EMAIL = "ava@example.com"
CUSTOM_IDENTIFIERS = [{"name": "enrollment_id", "value": "700001"}]
LOCALE = {"language": "en", "country": "US"}

# (method, path, query, body): made in this order on one sandbox, so the subscription reads and
# unsubscribes find the subscriptions made before them.
ACCEPTED = {
    "me": ("GET", ME_PATH, None, None),
    "event-minimal": ("POST", CUSTOM_EVENTS_PATH, None, {"type": "Offer Redeemed", "user": {"phone": PHONE}}),
    "event-everything": ("POST", CUSTOM_EVENTS_PATH, None, {
        "type": "Offer Redeemed",
        "properties": {"mediaUrl": "https://cdn.example.com/fries.jpg", "offer": {"id": 1701}, "codes": ["A1", "B2"], "it's (ok)": True},
        "externalEventId": "37fb97a9-6cfd-4983-bd65-68d104d53b70",
        "occurredAt": "2021-03-30T14:38:29.000Z",
        "user": {"phone": PHONE, "email": EMAIL, "externalIdentifiers": {"clientUserId": "member-1", "customIdentifiers": CUSTOM_IDENTIFIERS}},
    }),
    "event-email-offset": ("POST", CUSTOM_EVENTS_PATH, None, {"type": "Points Earned", "user": {"email": EMAIL}, "occurredAt": "2021-03-30T09:38:29-05:00"}),
    "event-client-user-id": ("POST", CUSTOM_EVENTS_PATH, None, {"type": "Tier Changed", "user": {"externalIdentifiers": {"clientUserId": "member-1"}}}),
    "event-custom-identifier": ("POST", CUSTOM_EVENTS_PATH, None, {"type": "Tier Changed", "user": {"externalIdentifiers": {"customIdentifiers": CUSTOM_IDENTIFIERS}}}),
    "event-unknown-top-level-key": ("POST", CUSTOM_EVENTS_PATH, None, {"type": "Tier Changed", "user": {"phone": PHONE}, "occuredAt": "2021-03-30"}),
    "attributes-phone": ("POST", CUSTOM_ATTRIBUTES_PATH, None, {"properties": {"VIP": "TRUE", "Gift card balance": "50.89"}, "user": {"phone": PHONE}}),
    "attributes-nested": ("POST", CUSTOM_ATTRIBUTES_PATH, None, {"properties": {"address": {"city": "Austin"}, "age": 24}, "user": {"email": EMAIL}}),
    "subscribe-locale": ("POST", SUBSCRIPTIONS_PATH, None, {"user": {"phone": PHONE}, "locale": LOCALE, "subscriptionType": "MARKETING"}),
    "subscribe-sign-up-source": ("POST", SUBSCRIPTIONS_PATH, None, {"user": {"email": EMAIL}, "signUpSourceId": "12345"}),
    "subscribe-everything": ("POST", SUBSCRIPTIONS_PATH, None, {
        "user": {"phone": PHONE, "email": EMAIL},
        "locale": LOCALE,
        "subscriptionType": "TRANSACTIONAL",
        "singleOptIn": True,
        "externalIdentifiers": {"clientUserId": "member-1", "shopifyId": "123456789000", "klaviyoId": "01ABC", "customIdentifiers": CUSTOM_IDENTIFIERS},
    }),
    "eligibility-phone": ("GET", SUBSCRIPTIONS_PATH, {"phone": PHONE}, None),
    "eligibility-email": ("GET", SUBSCRIPTIONS_PATH, {"email": EMAIL}, None),
    "eligibility-unknown": ("GET", SUBSCRIPTIONS_PATH, {"email": "nobody@example.com"}, None),
    "unsubscribe-some": ("POST", UNSUBSCRIBE_PATH, None, {
        "user": {"phone": PHONE},
        "subscriptions": [{"type": "MARKETING", "channel": "TEXT"}],
        "notification": {"language": "en-US", "disabled": True},
    }),
    "unsubscribe-all": ("POST", UNSUBSCRIBE_PATH, None, {"user": {"phone": PHONE, "email": EMAIL}}),
    "identify-client-user-id": ("POST", IDENTITY_PATH, None, {"clientUserId": "member-1", "phone": PHONE}),
    "identify-everything": ("POST", IDENTITY_PATH, None, {
        "phone": PHONE, "email": EMAIL, "shopifyId": "123456789000", "klaviyoId": "01ABC",
        "clientUserId": "member-1", "customIdentifiers": CUSTOM_IDENTIFIERS,
    }),
}

EVENT = {"type": "Offer Redeemed", "user": {"phone": PHONE}}
ATTRIBUTES = {"properties": {"VIP": "TRUE"}, "user": {"phone": PHONE}}
SUBSCRIBE = {"user": {"phone": PHONE}, "locale": LOCALE, "subscriptionType": "MARKETING"}
UNSUBSCRIBE = {"user": {"phone": PHONE}}
IDENTIFY = {"clientUserId": "member-1", "phone": PHONE}
# (path, body): each a valid body with one thing the spec's schema forbids.
REFUSED = {
    "event-no-type": (CUSTOM_EVENTS_PATH, {"user": {"phone": PHONE}}),
    "event-no-user": (CUSTOM_EVENTS_PATH, {"type": "Offer Redeemed"}),
    "event-type-number": (CUSTOM_EVENTS_PATH, {**EVENT, "type": 5}),
    "event-empty-user": (CUSTOM_EVENTS_PATH, {**EVENT, "user": {}}),
    "event-user-unknown-field": (CUSTOM_EVENTS_PATH, {**EVENT, "user": {"phone": PHONE, "firstName": "Ava"}}),
    "event-user-shopify-id": (CUSTOM_EVENTS_PATH, {**EVENT, "user": {"phone": PHONE, "shopifyId": "1"}}),
    "event-phone-number": (CUSTOM_EVENTS_PATH, {**EVENT, "user": {"phone": 13115552368}}),
    "event-email-null": (CUSTOM_EVENTS_PATH, {**EVENT, "user": {"email": None}}),
    "event-external-ids-string": (CUSTOM_EVENTS_PATH, {**EVENT, "user": {"externalIdentifiers": "member-1"}}),
    "event-client-user-id-number": (CUSTOM_EVENTS_PATH, {**EVENT, "user": {"externalIdentifiers": {"clientUserId": 1}}}),
    "event-custom-ids-map": (CUSTOM_EVENTS_PATH, {**EVENT, "user": {"externalIdentifiers": {"customIdentifiers": {"enrollment_id": "1"}}}}),
    "event-custom-id-value-number": (CUSTOM_EVENTS_PATH, {**EVENT, "user": {"externalIdentifiers": {"customIdentifiers": [{"name": "id", "value": 1}]}}}),
    "event-properties-list": (CUSTOM_EVENTS_PATH, {**EVENT, "properties": ["a"]}),
    "event-occurred-at-no-colon": (CUSTOM_EVENTS_PATH, {**EVENT, "occurredAt": "2021-03-30T14:38:29+0000"}),
    "event-occurred-at-no-offset": (CUSTOM_EVENTS_PATH, {**EVENT, "occurredAt": "2021-03-30T14:38:29"}),
    "event-occurred-at-date": (CUSTOM_EVENTS_PATH, {**EVENT, "occurredAt": "2021-03-30"}),
    "event-external-event-id-number": (CUSTOM_EVENTS_PATH, {**EVENT, "externalEventId": 17}),
    "attributes-no-properties": (CUSTOM_ATTRIBUTES_PATH, {"user": {"phone": PHONE}}),
    "attributes-no-user": (CUSTOM_ATTRIBUTES_PATH, {"properties": {"VIP": "TRUE"}}),
    "attributes-properties-string": (CUSTOM_ATTRIBUTES_PATH, {**ATTRIBUTES, "properties": "VIP"}),
    "attributes-user-unknown-field": (CUSTOM_ATTRIBUTES_PATH, {**ATTRIBUTES, "user": {"phone": PHONE, "id": 1}}),
    "subscribe-no-user": (SUBSCRIPTIONS_PATH, {"locale": LOCALE, "subscriptionType": "MARKETING"}),
    "subscribe-user-string": (SUBSCRIPTIONS_PATH, {**SUBSCRIBE, "user": PHONE}),
    "subscribe-phone-number": (SUBSCRIPTIONS_PATH, {**SUBSCRIBE, "user": {"phone": 13115552368}}),
    "subscribe-checkout-abandoned": (SUBSCRIPTIONS_PATH, {**SUBSCRIBE, "subscriptionType": "CHECKOUT_ABANDONED"}),
    "subscribe-sign-up-source-number": (SUBSCRIPTIONS_PATH, {"user": {"phone": PHONE}, "signUpSourceId": 12345}),
    "subscribe-locale-string": (SUBSCRIPTIONS_PATH, {**SUBSCRIBE, "locale": "en-US"}),
    "subscribe-single-opt-in-string": (SUBSCRIPTIONS_PATH, {**SUBSCRIBE, "singleOptIn": "true"}),
    "subscribe-shopify-id-number": (SUBSCRIPTIONS_PATH, {**SUBSCRIBE, "externalIdentifiers": {"shopifyId": 123456789000}}),
    "subscribe-custom-id-value-number": (SUBSCRIPTIONS_PATH, {**SUBSCRIBE, "externalIdentifiers": {"customIdentifiers": [{"name": "id", "value": 1}]}}),
    "unsubscribe-no-user": (UNSUBSCRIBE_PATH, {"subscriptions": [{"type": "MARKETING", "channel": "TEXT"}]}),
    "unsubscribe-subscriptions-object": (UNSUBSCRIBE_PATH, {**UNSUBSCRIBE, "subscriptions": {"type": "MARKETING"}}),
    "unsubscribe-bad-type": (UNSUBSCRIBE_PATH, {**UNSUBSCRIBE, "subscriptions": [{"type": "WEEKLY", "channel": "TEXT"}]}),
    "unsubscribe-bad-channel": (UNSUBSCRIBE_PATH, {**UNSUBSCRIBE, "subscriptions": [{"type": "MARKETING", "channel": "PUSH"}]}),
    "unsubscribe-notification-string": (UNSUBSCRIBE_PATH, {**UNSUBSCRIBE, "notification": "off"}),
    "unsubscribe-disabled-string": (UNSUBSCRIBE_PATH, {**UNSUBSCRIBE, "notification": {"disabled": "true"}}),
    "identify-email-number": (IDENTITY_PATH, {**IDENTIFY, "email": 5}),
    "identify-custom-ids-string": (IDENTITY_PATH, {**IDENTIFY, "customIdentifiers": "enrollment_id=1"}),
    "identify-custom-id-without-value": (IDENTITY_PATH, {**IDENTIFY, "customIdentifiers": [{"name": "enrollment_id"}]}),
    "identify-custom-id-without-name": (IDENTITY_PATH, {**IDENTIFY, "customIdentifiers": [{"value": "1"}]}),
}


@pytest.fixture(scope="module")
def server():
    """One sandbox for the module, unlimited so the cases never meet a 429."""
    running = serve_in_thread(AttentiveSandbox(rate_limit=0))
    yield running
    running.shutdown()


def _send(base_url: str, method: str, path: str, *, query: dict | None = None, body=None, headers=AUTH) -> requests.Response:
    return requests.request(method, base_url + path, params=query, json=body, headers=headers, timeout=10)


@pytest.mark.parametrize("case", ACCEPTED)
def test_accepted_requests_and_their_answers_validate_against_the_spec(attentive_spec, server, case):
    method, path, query, body = ACCEPTED[case]

    response = _send(server.base_url, method, path, query=query, body=body)

    assert response.status_code in (200, 202), response.text
    assert attentive_spec.sent_request_problem(response) is None
    assert attentive_spec.response_problem(response) is None


# Served, but not operations of the published v1 spec: the v2 segment operations (v2 spec) and
# /v1/text/send (documented only on Attentive's pages, ref §1); tests/attentive_sync/test_segments.py
# covers them.
OUTSIDE_THE_V1_SPEC = {
    ("POST", SEGMENTS_PATH), ("POST", SEGMENT_MEMBERS_PATH), ("GET", BULK_JOB_PATH.replace("{bulk_job_id}", "<bulk_job_id>")),
    ("POST", TEXT_SEND_PATH),
}


def test_every_operation_the_sandbox_serves_is_in_the_spec_and_has_accepted_cases(attentive_spec, server):
    served = {
        (method, rule.rule)
        for rule in server.sandbox.url_map.iter_rules()
        for method in rule.methods - {"HEAD", "OPTIONS"}
    } - OUTSIDE_THE_V1_SPEC
    in_spec = {(method.upper(), "/v1" + path) for path, operations in attentive_spec.spec["paths"].items() for method in operations}
    covered = {(method, path) for method, path, _, _ in ACCEPTED.values()}

    assert served <= in_spec
    assert covered == served


@pytest.mark.parametrize("case", REFUSED)
def test_bodies_the_spec_forbids_are_refused_with_400(attentive_spec, server, case):
    path, body = REFUSED[case]

    response = _send(server.base_url, "POST", path, body=body)

    assert attentive_spec.body_problem("post", path, body) is not None, "the spec allows this body: not a contract case"
    assert response.status_code == 400, response.text
    assert attentive_spec.response_problem(response) is None


@pytest.mark.parametrize("case", ["me", "event-minimal", "subscribe-locale", "eligibility-phone", "unsubscribe-all", "identify-client-user-id"])
def test_401_and_429_are_statuses_the_spec_lists(attentive_spec, case):
    method, path, query, body = ACCEPTED[case]
    # Identity's limit is 10/s and unsubscribe's 5/s, whatever the default; 1 for the others.
    running = serve_in_thread(AttentiveSandbox(rate_limit=1))
    try:
        unauthorized = _send(running.base_url, method, path, query=query, body=body, headers={"Authorization": "Bearer wrong"})
        answers = [_send(running.base_url, method, path, query=query, body=body) for _ in range(11)]
    finally:
        running.shutdown()
    limited = answers[-1]

    assert unauthorized.status_code == 401 and attentive_spec.response_problem(unauthorized) is None
    assert limited.status_code == 429 and attentive_spec.response_problem(limited) is None
    assert re.fullmatch(r"\d+", limited.headers["x-ratelimit-limit"]) and limited.headers["x-ratelimit-remaining"] == "0"
