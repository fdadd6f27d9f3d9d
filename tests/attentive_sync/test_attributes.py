"""push_attributes(): custom attributes through the outbox, pushed only when a value changed."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from django.db import transaction

from attentive_sync.client import CUSTOM_ATTRIBUTES_PATH, CUSTOM_EVENTS_PATH
from attentive_sync.delivery import RetryPolicy, deliver, forward, push_attributes
from attentive_sync.events import CustomEvent, EventUser, InvalidEvent
from attentive_sync.models import AttentiveSettings, AttributeSnapshot, Delivery, RateLimitState
from attentive_sync.ratelimit import limiter_key
from tests.conftest import run_worker_until_idle

pytestmark = pytest.mark.django_db(transaction=True)

API_KEY = "sk_test_SANDBOX_KEY_1234"
NO_WAIT = RetryPolicy(base=timedelta(0), cap=timedelta(0))
USER = EventUser(client_user_id="member-1", phone="+13115552368", email="ada@example.com")


@pytest.fixture
def sandbox(attentive_sandbox_factory):
    return attentive_sandbox_factory(api_key=API_KEY)


@pytest.fixture
def attentive(sandbox):
    settings = AttentiveSettings.load()
    settings.api_key, settings.api_url, settings.enabled = API_KEY, sandbox.base_url, True
    settings.rate_limit_per_second = 1000
    settings.save()
    return settings


def properties(balance=120):
    return {"Loyalty points balance": balance, "Loyalty tier": "3", "Loyalty program": "Rewards"}


def test_a_push_reaches_attentive_with_the_user_and_properties(attentive, sandbox):
    result = push_attributes(user=USER, properties=properties())
    assert result.created and result.delivery.kind == "attributes"
    run_worker_until_idle(queues=["deliveries"])
    [received] = sandbox.sandbox.received()["attributes"]
    assert received["body"] == {
        "user": {"phone": "+13115552368", "email": "ada@example.com", "externalIdentifiers": {"clientUserId": "member-1"}},
        "properties": properties(),
    }
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.attempts) == ("delivered", 1)
    assert sandbox.sandbox.events() == []  # nothing went to the custom events endpoint


def test_the_same_values_twice_are_pushed_once_and_a_changed_balance_again(attentive, sandbox):
    assert push_attributes(user=USER, properties=properties()).created
    assert push_attributes(user=USER, properties=dict(reversed(properties().items()))) is None  # same values
    run_worker_until_idle(queues=["deliveries"])
    assert push_attributes(user=USER, properties=properties()) is None  # still the same once delivered
    assert push_attributes(user=USER, properties=properties(balance=150)).created
    run_worker_until_idle(queues=["deliveries"])
    balances = [e["body"]["properties"]["Loyalty points balance"] for e in sandbox.sandbox.received()["attributes"]]
    assert balances == [120, 150]
    assert Delivery.objects.count() == 2 and AttributeSnapshot.objects.get().pushes == 2


def test_a_value_changed_back_is_pushed_again_under_a_new_dedup_key(attentive, sandbox):
    keys = []
    for balance in (1, 2, 1):
        keys.append(push_attributes(user=USER, properties=properties(balance)).delivery.external_event_id)
        run_worker_until_idle(queues=["deliveries"])
    assert len(set(keys)) == 3
    assert [e["body"]["properties"]["Loyalty points balance"] for e in sandbox.sandbox.received()["attributes"]] == [1, 2, 1]


def test_a_set_replaced_before_it_was_sent_is_never_sent_after_the_newer_one(attentive, sandbox):
    sandbox.sandbox.inject_fault(CUSTOM_ATTRIBUTES_PATH, status=500)
    old = push_attributes(user=USER, properties=properties(1)).delivery
    deliver(old.pk, policy=NO_WAIT)  # failed: a retry is scheduled
    newer = push_attributes(user=USER, properties=properties(2)).delivery
    deliver(newer.pk, policy=NO_WAIT)
    run_worker_until_idle(queues=["deliveries"])
    old.refresh_from_db()
    newer.refresh_from_db()
    assert newer.status == "delivered"
    assert old.status == "expired" and f"superseded by a newer set of attributes (delivery {newer.pk})" in old.last_error
    assert old.dead_letter_at is None  # not lost (newer values went): no dead-letter alert
    assert [e["body"]["properties"]["Loyalty points balance"] for e in sandbox.sandbox.received()["attributes"]] == [2]


def test_a_rolled_back_push_leaves_nothing_and_is_pushed_next_time(attentive, sandbox):
    with pytest.raises(RuntimeError), transaction.atomic():
        push_attributes(user=USER, properties=properties())
        raise RuntimeError("rolled back")
    assert Delivery.objects.count() == 0 and AttributeSnapshot.objects.count() == 0
    assert push_attributes(user=USER, properties=properties()).created


def test_attributes_are_retried_after_a_500_under_their_own_limiter_key(attentive, sandbox):
    sandbox.sandbox.inject_fault(CUSTOM_ATTRIBUTES_PATH, status=500)
    delivery = push_attributes(user=USER, properties=properties()).delivery
    deliver(delivery.pk, policy=NO_WAIT)
    delivery.refresh_from_db()
    assert delivery.status == "failed" and delivery.next_attempt_at is not None
    deliver(delivery.pk, policy=NO_WAIT)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("delivered", 2)
    assert [a.outcome for a in delivery.attempt_log.order_by("started_at")] == ["retry", "delivered"]
    assert sandbox.sandbox.count_requests(CUSTOM_ATTRIBUTES_PATH) == 2
    assert len(sandbox.sandbox.received()["attributes"]) == 1
    limiter_keys = set(RateLimitState.objects.values_list("key", flat=True))
    assert limiter_keys == {limiter_key(API_KEY, CUSTOM_ATTRIBUTES_PATH)}  # the events endpoint's budget untouched


def test_an_attribute_delivery_never_blocks_or_duplicates_custom_events(attentive, sandbox):
    sandbox.sandbox.inject_fault(CUSTOM_ATTRIBUTES_PATH, status=503, times=1)
    pushed = push_attributes(user=USER, properties=properties()).delivery
    event = forward(
        CustomEvent(
            type="sparkfly.member.offer_state_redeemed", user=USER, occurred_at=datetime.now(timezone.utc),
            external_event_id="evt-1", properties={"credential_identifier": "abc"},
        )
    ).delivery
    deliver(pushed.pk, policy=NO_WAIT)  # one batch claims both: each goes to its own endpoint
    event.refresh_from_db()
    pushed.refresh_from_db()
    assert event.status == "delivered" and pushed.status == "failed"
    deliver(pushed.pk, policy=NO_WAIT)
    pushed.refresh_from_db()
    assert pushed.status == "delivered"
    assert [e["body"]["externalEventId"] for e in sandbox.sandbox.events()] == ["evt-1"]
    assert sandbox.sandbox.count_requests(CUSTOM_EVENTS_PATH) == 1
    assert sandbox.sandbox.duplicate_external_event_ids() == {}
    assert set(RateLimitState.objects.values_list("key", flat=True)) == {
        limiter_key(API_KEY, CUSTOM_EVENTS_PATH), limiter_key(API_KEY, CUSTOM_ATTRIBUTES_PATH)
    }


def test_an_attribute_push_expires_by_its_age_from_the_push_and_is_then_pushed_again(attentive, sandbox):
    delivery = push_attributes(user=USER, properties=properties()).delivery
    assert abs(delivery.occurred_at - datetime.now(timezone.utc)) < timedelta(minutes=1)
    Delivery.objects.filter(pk=delivery.pk).update(occurred_at=delivery.occurred_at - attentive.max_event_age)
    deliver(delivery.pk, policy=NO_WAIT)
    delivery.refresh_from_db()
    assert delivery.status == "expired" and sandbox.sandbox.count_requests(CUSTOM_ATTRIBUTES_PATH) == 0
    again = push_attributes(user=USER, properties=properties())  # the same values never got there
    assert again.created and again.delivery.pk != delivery.pk


@pytest.mark.parametrize(
    "bad",
    [{"Tiers": ["gold"]}, {"Tier": {"id": 3}}, {"VIP": True}, {"Balance": None}, {}, {"x" * 201: "1"}],
    ids=["array", "object", "boolean", "null", "empty", "long-name"],
)
def test_what_attentive_would_refuse_is_refused_before_recording(attentive, bad):
    with pytest.raises(InvalidEvent):
        push_attributes(user=USER, properties=bad)
    with pytest.raises(InvalidEvent, match="clientUserId"):
        push_attributes(user=EventUser(phone="+13115552368"), properties=properties())
    assert Delivery.objects.count() == 0 and AttributeSnapshot.objects.count() == 0
