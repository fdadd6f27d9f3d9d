"""The worker's half of a redemption: what happens when the mirror, Sparkfly or the settings
stand in the way (the Sparkfly sandbox over loopback HTTP, real PostgreSQL)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from procrastinate.contrib.django.models import ProcrastinateJob

from attentive_sync.models import AttentiveSettings, Delivery
from sparkfly_sync import events, forwarding
from sparkfly_sync.models import Credential, Member, Offer, OfferChannel, Redemption
from sparkfly_sync.sync import sync_all

pytestmark = pytest.mark.django_db


@pytest.fixture
def mirrored(sparkfly_client):
    sync_all(client=sparkfly_client, resources=["merchants", "stores", "channels", "offers", "members"])
    return sparkfly_client


def make_redemption(*, credential: Credential, offer_id: int, redeemed_at=None, **fields) -> Redemption:
    redeemed_at = redeemed_at or datetime.now(timezone.utc)
    return Redemption.objects.create(
        dedup_key=events.redemption_event_id(credential_id=credential.sparkfly_id, offer_id=offer_id, redeemed_at=redeemed_at),
        credential_id=credential.sparkfly_id,
        offer_id=offer_id,
        channel_id=credential.channel_id,
        redeemed_at=redeemed_at,
        received_at=datetime.now(timezone.utc),
        **fields,
    )


def mirrored_credential(*, member: Member | None, identifier: str = "CODE-1", **fields) -> tuple[Credential, OfferChannel]:
    link = OfferChannel.objects.first()
    credential = Credential.objects.create(
        sparkfly_id=900001, identifier=identifier, member_id=member.sparkfly_id if member else None,
        channel_id=link.channel_id, offer_ids=[link.offer_id], synced_at=datetime.now(timezone.utc), **fields,
    )
    return credential, link


def forward(redemption: Redemption, client) -> forwarding.Outcome:
    return forwarding.forward_redemption(redemption.pk, client_factory=lambda: client)


def test_a_redemption_found_in_the_mirror_is_forwarded_without_calling_sparkfly(mirrored, sparkfly_sandbox):
    credential, link = mirrored_credential(member=Member.objects.first())
    redemption = make_redemption(credential=credential, offer_id=link.offer_id, xid=link.xid)
    calls_before = len(sparkfly_sandbox.sandbox.requests_log)

    assert forward(redemption, mirrored).state == "forwarded"

    assert len(sparkfly_sandbox.sandbox.requests_log) == calls_before
    delivery = Delivery.objects.get()
    redemption.refresh_from_db()
    assert redemption.delivery == delivery and redemption.forwarded_at is not None
    assert delivery.payload["properties"]["credential_identifier"] == "CODE-1"
    assert delivery.payload["properties"]["campaign"]["xid"] == link.xid
    assert delivery.external_event_id == str(redemption.dedup_key)


def test_a_credential_sparkfly_does_not_have_fails_with_the_reason(mirrored):
    credential = Credential(sparkfly_id=424242, channel_id=1)
    redemption = make_redemption(credential=credential, offer_id=Offer.objects.first().sparkfly_id)

    assert forward(redemption, mirrored).state == "failed"

    redemption.refresh_from_db()
    assert redemption.failure == "Sparkfly has no credential 424242"
    assert Delivery.objects.count() == 0


def test_a_member_attentive_cannot_identify_fails_with_what_to_do(mirrored):
    member = Member.objects.first()
    Member.objects.filter(pk=member.pk).update(identifier="", phone="", email="")
    credential, link = mirrored_credential(member=member)

    outcome = forward(make_redemption(credential=credential, offer_id=link.offer_id), mirrored)

    assert outcome.state == "failed"
    assert "no identifier, phone or email" in Redemption.objects.get().failure


def test_a_credential_without_a_member_is_matched_by_sf_uid(mirrored):
    member = Member.objects.first()
    credential, link = mirrored_credential(member=None)

    redemption = make_redemption(credential=credential, offer_id=link.offer_id, sf_uid=member.identifier)

    assert forward(redemption, mirrored).state == "forwarded"
    assert Delivery.objects.get().payload["user"]["externalIdentifiers"]["clientUserId"] == member.identifier


def test_a_switched_off_event_type_is_skipped_and_says_so(mirrored):
    settings = AttentiveSettings.load()
    settings.disabled_event_types = [events.OFFER_STATE_REDEEMED]
    settings.save()
    credential, link = mirrored_credential(member=Member.objects.first())

    assert forward(make_redemption(credential=credential, offer_id=link.offer_id), mirrored).state == "skipped"
    assert "switched off" in Redemption.objects.get().failure
    assert Delivery.objects.count() == 0


def test_sparkfly_down_past_the_maximum_event_age_fails_instead_of_retrying(mirrored, sparkfly_sandbox):
    credential = Credential(sparkfly_id=515151, channel_id=1)
    old = datetime.now(timezone.utc) - AttentiveSettings.load().max_event_age - timedelta(minutes=1)
    redemption = make_redemption(credential=credential, offer_id=1, redeemed_at=old)
    sparkfly_sandbox.sandbox.inject_fault("/v1.0/credentials", status=503, times=100)

    assert forward(redemption, mirrored).state == "failed"
    assert "older than the maximum event age" in Redemption.objects.get().failure
    assert not ProcrastinateJob.objects.filter(task_name="sparkfly_sync.forward_redemption").exists()


def test_requeue_queues_failed_ones_and_leaves_forwarded_ones(mirrored):
    credential, link = mirrored_credential(member=Member.objects.first())
    failed = make_redemption(credential=credential, offer_id=link.offer_id, state="failed", failure="x")
    done = Redemption.objects.create(
        dedup_key=uuid.uuid4(), credential_id=1, offer_id=1, redeemed_at=failed.redeemed_at,
        received_at=failed.received_at, state="forwarded",
    )

    assert forwarding.requeue(Redemption.objects.filter(pk__in=[failed.pk, done.pk])) == 1

    assert Redemption.objects.get(pk=failed.pk).state == "queued"
    assert list(ProcrastinateJob.objects.values_list("args", flat=True)) == [{"redemption_id": failed.pk}]


def test_a_forwarded_redemption_is_not_forwarded_twice(mirrored):
    credential, link = mirrored_credential(member=Member.objects.first())
    redemption = make_redemption(credential=credential, offer_id=link.offer_id)
    forward(redemption, mirrored)

    assert forward(redemption, mirrored).state == "forwarded"
    assert Delivery.objects.count() == 1 and Redemption.objects.get().attempts == 1


def test_an_unexpected_error_is_tried_again_later_not_dropped(mirrored):
    credential = Credential(sparkfly_id=616161, channel_id=1)  # not mirrored: the client is needed
    redemption = make_redemption(credential=credential, offer_id=1)

    def broken_client():
        raise RuntimeError("a bug in the client setup")

    outcome = forwarding.forward_redemption(redemption.pk, client_factory=broken_client)

    redemption.refresh_from_db()
    assert outcome.state == "queued" and outcome.retry_at is not None
    assert "a bug in the client setup" in redemption.failure
    assert ProcrastinateJob.objects.get(task_name="sparkfly_sync.forward_redemption").scheduled_at == outcome.retry_at


def test_a_queued_redemption_that_lost_its_job_is_queued_again(mirrored):
    credential, link = mirrored_credential(member=Member.objects.first())
    lost = make_redemption(credential=credential, offer_id=link.offer_id)
    Redemption.objects.filter(pk=lost.pk).update(updated_at=datetime.now(timezone.utc) - timedelta(minutes=5))
    recent = make_redemption(credential=credential, offer_id=link.offer_id, redeemed_at=lost.redeemed_at - timedelta(hours=1))

    assert forwarding.requeue_stuck() == 1
    assert forwarding.requeue_stuck() == 0  # it has a job now

    assert list(ProcrastinateJob.objects.values_list("args", flat=True)) == [{"redemption_id": lost.pk}]
    assert recent.pk != lost.pk


def test_requeue_never_reopens_a_redemption_forwarded_meanwhile(mirrored):
    credential, link = mirrored_credential(member=Member.objects.first())
    redemption = make_redemption(credential=credential, offer_id=link.offer_id, state="failed")
    stale = Redemption.objects.get(pk=redemption.pk)
    Redemption.objects.filter(pk=redemption.pk).update(state="forwarded")

    assert forwarding.requeue([stale]) == 0
    assert Redemption.objects.get(pk=redemption.pk).state == "forwarded"
