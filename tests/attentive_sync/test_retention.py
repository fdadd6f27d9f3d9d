"""Retention of deliveries: batches of short transactions, and what is never deleted."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from attentive_sync.models import AttributeSnapshot, Delivery, DeliveryAttempt
from attentive_sync.retention import delete_in_batches, deliveries_prune
from sparkfly_sync.models import Redemption

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def windows(settings):
    settings.RETENTION_DAYS = 30
    settings.RETENTION_FAILED_DAYS = 90


def delivery(status: str, *, days_ago: float, attempts: int = 1) -> Delivery:
    created = timezone.now() - timedelta(days=days_ago)
    record = Delivery.objects.create(
        external_event_id=str(uuid.uuid4()), event_type="sparkfly.member.offer_state_redeemed", payload={},
        status=status, occurred_at=created,
    )
    Delivery.objects.filter(pk=record.pk).update(created_at=created)  # auto_now_add on create
    for _ in range(attempts):
        DeliveryAttempt.objects.create(delivery=record, started_at=created, duration_ms=5, outcome="delivered")
    return record


def remaining() -> set[int]:
    return set(Delivery.objects.values_list("pk", flat=True))


def test_delivered_deliveries_past_the_window_go_with_their_attempts_in_batches():
    old = [delivery(Delivery.Status.DELIVERED, days_ago=31, attempts=2) for _ in range(12)]
    recent = delivery(Delivery.Status.DELIVERED, days_ago=29)

    delivered, given_up = deliveries_prune(batch=5)

    assert (delivered.rows, delivered.batches) == (12, 3)  # 5 + 5 + 2, each its own statement
    assert given_up.rows == 0
    assert remaining() == {recent.pk}
    assert not DeliveryAttempt.objects.filter(delivery_id__in=[d.pk for d in old]).exists()
    assert DeliveryAttempt.objects.filter(delivery=recent).count() == 1


def test_pending_and_failed_deliveries_are_never_deleted_and_dead_ones_wait_for_their_longer_window():
    kept = {
        delivery(Delivery.Status.PENDING, days_ago=400).pk,
        delivery(Delivery.Status.FAILED, days_ago=400).pk,
        delivery(Delivery.Status.DEAD, days_ago=89).pk,
        delivery(Delivery.Status.EXPIRED, days_ago=89).pk,
    }
    dead = delivery(Delivery.Status.DEAD, days_ago=91)
    expired = delivery(Delivery.Status.EXPIRED, days_ago=91)

    delivered, given_up = deliveries_prune()

    assert (delivered.rows, given_up.rows) == (0, 2)
    assert remaining() == kept
    assert not Delivery.objects.filter(pk__in=[dead.pk, expired.pk]).exists()


def test_a_retention_of_zero_days_keeps_everything(settings):
    settings.RETENTION_DAYS = 0
    old = delivery(Delivery.Status.DELIVERED, days_ago=1000)

    assert deliveries_prune() == []
    assert remaining() == {old.pk}


def test_the_attributes_push_a_snapshot_names_is_kept_however_old():
    # push_attributes reads it to know these values were pushed: without it they would go again.
    pushed = delivery(Delivery.Status.DELIVERED, days_ago=100)
    AttributeSnapshot.objects.create(client_user_id="m-1", digest="d" * 64, pushes=1, pushed_at=pushed.created_at,
                                     delivery=pushed)

    deliveries_prune()

    assert remaining() == {pushed.pk}


def test_a_redemption_whose_delivery_was_pruned_keeps_its_dedup_key_and_loses_only_the_link():
    pruned = delivery(Delivery.Status.DELIVERED, days_ago=31)
    redemption = Redemption.objects.create(
        dedup_key=uuid.uuid4(), credential_id=1, offer_id=2, redeemed_at=pruned.created_at,
        received_at=pruned.created_at, state="forwarded", delivery=pruned,
    )

    deliveries_prune()

    redemption.refresh_from_db()
    assert (redemption.delivery_id, redemption.state) == (None, "forwarded")


@pytest.mark.django_db(transaction=True)
def test_a_row_another_transaction_holds_is_skipped_not_waited_for_and_others_insert_meanwhile():
    held = delivery(Delivery.Status.DELIVERED, days_ago=31)
    others = [delivery(Delivery.Status.DELIVERED, days_ago=31) for _ in range(3)]
    locked, release, inserted = threading.Event(), threading.Event(), []

    def holder():
        try:
            with transaction.atomic():
                Delivery.objects.select_for_update().get(pk=held.pk)  # a worker sending it, say
                locked.set()
                release.wait(30)
        finally:
            connection.close()

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert locked.wait(10)
        delivered, _ = deliveries_prune(batch=2)
        # A writer's insert while the prune's rows are gone: no table lock left behind.
        inserted.append(delivery(Delivery.Status.PENDING, days_ago=0).pk)
    finally:
        release.set()
        thread.join()

    assert delivered.rows == 3
    assert remaining() == {held.pk, *inserted}
    assert not Delivery.objects.filter(pk__in=[d.pk for d in others]).exists()
    assert deliveries_prune()[0].rows == 1  # the next night takes it


def test_a_relation_that_is_neither_cascade_nor_set_null_is_refused_rather_than_broken():
    # An issuance request PROTECTs its batch: such a relation must be thought through first.
    from sparkfly_sync.models import IssuanceBatch

    with pytest.raises(ValueError, match="IssuanceRequest.batch is PROTECT"):
        delete_in_batches(IssuanceBatch.objects.all(), what="issuance batches")
