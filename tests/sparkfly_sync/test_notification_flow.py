"""Signed event notifications end to end, over real HTTP: the Sparkfly sandbox signs and posts
each subscribed event to the portal (a live server), a real worker acts on it — refreshing the
mirror, or forwarding a points redemption to the Attentive sandbox once."""

from __future__ import annotations

import pytest
import requests
from django.urls import reverse

from attentive_sync.models import AttentiveSettings
from sparkfly_sync import events
from sparkfly_sync.client import EVENT_CALLBACKS_PATH, EVENT_SUBSCRIPTIONS_PATH, client_from_settings
from sparkfly_sync.models import InboundRequest, LoyaltyEnrollment, Member, Notification, NotificationEndpoint
from sparkfly_sync.serializers import HANDLED_EVENTS
from sparkfly_sync.sync import sync_all
from tests.conftest import run_worker_until_idle

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def subscribed(sparkfly_sandbox, attentive_sandbox, live_server, settings):
    """The portal registered for every event it handles (as `sparkfly_callbacks --apply` does)."""
    settings.SPARKFLY_API_URL = sparkfly_sandbox.base_url
    settings.SPARKFLY_IDENTITY = settings.SPARKFLY_KEY = "sandbox"
    client = client_from_settings()
    endpoint = NotificationEndpoint.objects.create(external_id="portal")
    url = live_server.url + reverse("sparkfly-notifications", kwargs={"endpoint_uuid": str(endpoint.uuid)})
    callback = client.request(
        "POST", EVENT_CALLBACKS_PATH, json_body={"callback": {"url": url, "external_id": "portal"}}, idempotent=False
    )["callback"]
    endpoint.secret = callback["signing_key"]
    endpoint.sparkfly_callback_id = callback["id"]
    endpoint.save()
    for event in HANDLED_EVENTS:
        body = {"subscription": {"callback_id": callback["id"], "external_id": f"portal:{event}", "event": event}}
        client.request("POST", EVENT_SUBSCRIPTIONS_PATH, json_body=body, idempotent=False)
    attentive_settings = AttentiveSettings.load()
    attentive_settings.api_url = attentive_sandbox.base_url
    attentive_settings.api_key = "sandbox"
    attentive_settings.enabled = True
    attentive_settings.save()
    sync_all(client=client, resources=["members", "loyalty_programs", "loyalty_enrollments"])
    return client


def test_a_points_redemption_reaches_attentive_once_in_the_seed_000_shape(subscribed, sparkfly_sandbox, attentive_sandbox):
    enrollment = LoyaltyEnrollment.objects.filter(point_balance__gte=10).first()
    member = Member.objects.get(sparkfly_id=enrollment.member_id)

    reward_state = sparkfly_sandbox.sandbox.redeem_points(enrollment.sparkfly_id, 10)

    [delivered] = [entry for entry in sparkfly_sandbox.sandbox.notifications if entry["event_name"] == "loyalty.enrollment.points.redeemed"]
    assert delivered["status"] == 202
    run_worker_until_idle()
    notification = Notification.objects.get(event_name="loyalty.enrollment.points.redeemed")
    assert notification.state == "forwarded", notification.failure
    [event] = [entry["body"] for entry in attentive_sandbox.sandbox.received()["events"]]
    assert event["type"] == events.POINTS_REDEEMED
    assert event["externalEventId"] == events.points_redemption_event_id(reward_state_id=reward_state["id"])
    assert event["properties"]["points_debit"] == 10
    assert event["properties"]["enrollment"] == {"id": enrollment.sparkfly_id, "enrollment_external_id": enrollment.external_id}
    assert event["properties"]["reward_state"]["id"] == reward_state["id"]
    assert event["properties"]["reward_state"]["credential_identifier"] == reward_state["credential_identifier"]
    assert event["user"]["externalIdentifiers"]["clientUserId"] == member.identifier
    # The enrollment was refreshed: its balance is Sparkfly's new one.
    assert LoyaltyEnrollment.objects.get(pk=enrollment.pk).point_balance == enrollment.point_balance - 10

    # Sparkfly delivering it again changes nothing.
    again = requests.post(
        delivered["url"], data=delivered["body"].encode(), timeout=10,
        headers={"Content-Type": "application/json", "x-hmac-sha256-signature": _signature(subscribed, delivered["body"])},
    )
    run_worker_until_idle()
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert len(attentive_sandbox.sandbox.received()["events"]) == 1


def _signature(client, body: str) -> str:
    import base64
    import hashlib
    import hmac

    key = NotificationEndpoint.objects.get().secret
    return base64.b64encode(hmac.new(key.encode(), body.encode(), hashlib.sha256).digest()).decode()


def test_awarded_points_refresh_the_mirrored_enrollment_and_forward_nothing(subscribed, sparkfly_sandbox, attentive_sandbox):
    enrollment = LoyaltyEnrollment.objects.first()

    sparkfly_sandbox.sandbox.award_points(enrollment.sparkfly_id, 250)
    run_worker_until_idle()

    assert Notification.objects.get(event_name="loyalty.enrollment.points.awarded").state == "processed"
    refreshed = LoyaltyEnrollment.objects.get(pk=enrollment.pk)
    assert refreshed.point_balance == (enrollment.point_balance or 0) + 250
    assert attentive_sandbox.sandbox.received()["events"] == []


def test_a_member_update_refreshes_the_mirrored_member(subscribed, sparkfly_sandbox):
    member = Member.objects.first()
    subscribed.request("PUT", f"/v1.0/members/{member.sparkfly_id}", json_body={"member": {"identifier": "renamed-1"}})

    run_worker_until_idle()

    assert Notification.objects.get(event_name="sf.member.updated").state == "processed"
    assert Member.objects.get(pk=member.pk).identifier == "renamed-1"


def test_a_tampered_delivery_is_refused_and_nothing_happens(subscribed, sparkfly_sandbox, attentive_sandbox):
    enrollment = LoyaltyEnrollment.objects.filter(point_balance__gte=10).first()
    sparkfly_sandbox.sandbox.redeem_points(enrollment.sparkfly_id, 10)
    [delivered] = [entry for entry in sparkfly_sandbox.sandbox.notifications if entry["event_name"].endswith("redeemed")]
    Notification.objects.all().delete()

    tampered = delivered["body"].replace('"points_redeemed":10', '"points_redeemed":1')
    assert tampered != delivered["body"]
    answer = requests.post(
        delivered["url"], data=tampered.encode(), timeout=10,
        headers={"Content-Type": "application/json", "x-hmac-sha256-signature": _signature(subscribed, delivered["body"])},
    )

    assert answer.status_code == 401
    assert Notification.objects.count() == 0
    assert InboundRequest.objects.filter(status_code=401).count() == 1
