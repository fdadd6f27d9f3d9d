"""Loyalty attributes: each enrolled member's set, pushed through the outbox only when changed."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from procrastinate.contrib.django.models import ProcrastinateJob

from attentive_sync.models import AttentiveSettings, Delivery
from sparkfly_sync import loyalty_attributes
from sparkfly_sync.models import LoyaltyEnrollment, LoyaltyProgram, Member
from tests.conftest import run_worker_until_idle
from tests.sparkfly_sync.test_notification_flow import subscribed  # noqa: F401 (a fixture: synced, subscribed)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def attentive(attentive_sandbox):
    settings = AttentiveSettings.load()
    settings.api_key, settings.api_url, settings.enabled = "sandbox", attentive_sandbox.base_url, True
    settings.push_loyalty_attributes = True
    settings.rate_limit_per_second = 1000
    settings.save()
    return attentive_sandbox


@pytest.fixture
def member():
    now = timezone.now()
    LoyaltyProgram.objects.create(sparkfly_id=100, name="Coffee Club", synced_at=now)
    LoyaltyProgram.objects.create(sparkfly_id=200, name="Tea Club", synced_at=now)
    return Member.objects.create(sparkfly_id=1, identifier="member-1", phone="+13115552368", email="ada@example.com", synced_at=now)


def enroll(sparkfly_id, *, program=100, status="active", balance=120, created_days_ago=0, tier=3):
    now = timezone.now()
    return LoyaltyEnrollment.objects.create(
        sparkfly_id=sparkfly_id, member_id=1, program_id=program, status=status, point_balance=balance,
        historical_points=None if balance is None else balance + 500, tier_id=tier, synced_at=now,
        sparkfly_created_at=now - timedelta(days=created_days_ago),
    )


def pushed(sandbox) -> list[dict]:
    return [entry["body"]["properties"] for entry in sandbox.sandbox.received()["attributes"]]


def attribute_jobs():
    return ProcrastinateJob.objects.filter(task_name__startswith="sparkfly_sync.push_")


def test_a_members_set_reaches_attentive_and_unchanged_values_are_not_pushed_again(attentive, member):
    enrollment = enroll(10)
    assert loyalty_attributes.enrollment_changed(enrollment.sparkfly_id)
    assert Delivery.objects.count() == 0  # the hook only queued a job
    run_worker_until_idle()
    assert pushed(attentive) == [{
        "Loyalty points balance": 120, "Loyalty lifetime points": 620, "Loyalty tier": "3",
        "Loyalty status": "active", "Loyalty program": "Coffee Club",
    }]
    [body] = [entry["body"] for entry in attentive.sandbox.received()["attributes"]]
    assert body["user"] == {"phone": "+13115552368", "email": "ada@example.com", "externalIdentifiers": {"clientUserId": "member-1"}}

    loyalty_attributes.enrollment_changed(enrollment.sparkfly_id)  # same values
    run_worker_until_idle()
    assert len(pushed(attentive)) == 1

    LoyaltyEnrollment.objects.filter(pk=enrollment.pk).update(point_balance=90)
    loyalty_attributes.enrollment_changed(enrollment.sparkfly_id)
    run_worker_until_idle()
    assert [p["Loyalty points balance"] for p in pushed(attentive)] == [120, 90]
    assert attentive.sandbox.events() == []


def test_the_most_recent_active_enrollment_is_the_one_described(member):
    enroll(10, program=100, created_days_ago=30)
    enroll(11, program=200, created_days_ago=1, status="suspended")
    enroll(12, program=200, created_days_ago=5)
    assert loyalty_attributes.chosen_enrollment(1).sparkfly_id == 12
    LoyaltyEnrollment.objects.filter(status="active").update(status="archived")
    assert loyalty_attributes.chosen_enrollment(1).sparkfly_id == 11  # none active: the most recent


def test_unknown_values_are_left_out_and_members_attentive_cannot_know_are_skipped(attentive, member):
    enrollment = enroll(10, balance=None, tier=None)
    assert loyalty_attributes.properties_for(enrollment) == {"Loyalty status": "active", "Loyalty program": "Coffee Club"}
    Member.objects.filter(pk=member.pk).update(phone="", email="")
    assert loyalty_attributes.push_member(1) is False
    assert Delivery.objects.count() == 0


def test_an_enrollments_sync_queues_one_job_for_what_it_changed(attentive, member, sparkfly_sandbox):
    from sparkfly_sync.client import SparkflyClient
    from sparkfly_sync.sync import sync_resource

    client = SparkflyClient(base_url=sparkfly_sandbox.base_url, identity="sandbox", key="sandbox")
    for name in ("members", "loyalty_programs"):
        sync_resource(name, client=client)
    run = sync_resource("loyalty_enrollments", client=client)
    assert run.status == "succeeded"
    assert Delivery.objects.filter(kind="attributes").count() == 0  # queued, not pushed, by the sync
    assert list(attribute_jobs().values_list("task_name", flat=True)) == ["sparkfly_sync.push_synced_loyalty_attributes"]
    run_worker_until_idle()
    enrolled_with_contacts = (
        Member.objects.filter(sparkfly_id__in=LoyaltyEnrollment.objects.values("member_id"))
        .exclude(identifier="").exclude(phone="", email="").count()
    )
    assert enrolled_with_contacts and len(pushed(attentive)) == enrolled_with_contacts
    # A second sync changes nothing: nothing more is pushed.
    sync_resource("loyalty_enrollments", client=client)
    run_worker_until_idle()
    assert len(pushed(attentive)) == enrolled_with_contacts


def test_nothing_is_queued_until_switched_on_with_a_key(member, attentive_sandbox):
    enroll(10)
    settings = AttentiveSettings.load()
    settings.push_loyalty_attributes = True  # but no API key
    settings.save()
    assert loyalty_attributes.enrollment_changed(10) is False
    settings.api_key, settings.api_url, settings.enabled = "sandbox", attentive_sandbox.base_url, True
    settings.push_loyalty_attributes = False  # a key, but switched off (the default)
    settings.save()
    assert loyalty_attributes.enrollment_changed(10) is False
    assert loyalty_attributes.enrollments_synced(changed_since=timezone.now()) is False
    assert attribute_jobs().count() == 0


@pytest.fixture
def switched_on():
    settings = AttentiveSettings.load()
    settings.push_loyalty_attributes = True
    settings.save()


def test_awarded_points_end_to_end_push_the_new_balance(switched_on, subscribed, sparkfly_sandbox, attentive_sandbox):
    run_worker_until_idle()  # the sync's own attribute pushes
    enrollment = (
        LoyaltyEnrollment.objects.filter(member_id__in=Member.objects.exclude(phone="", email="").exclude(identifier="")
                                         .values("sparkfly_id"), status="active")
        .order_by("sparkfly_id").first()
    )
    member = Member.objects.get(sparkfly_id=enrollment.member_id)
    assert loyalty_attributes.chosen_enrollment(member.sparkfly_id).pk == enrollment.pk or pytest.skip("member has another active enrollment")
    before = len(attentive_sandbox.sandbox.received()["attributes"])

    sparkfly_sandbox.sandbox.award_points(enrollment.sparkfly_id, 250)
    run_worker_until_idle()

    received = attentive_sandbox.sandbox.received()["attributes"][before:]
    [body] = [entry["body"] for entry in received]
    assert body["user"]["externalIdentifiers"]["clientUserId"] == member.identifier
    assert body["properties"]["Loyalty points balance"] == LoyaltyEnrollment.objects.get(pk=enrollment.pk).point_balance
    assert attentive_sandbox.sandbox.received()["events"] == []
