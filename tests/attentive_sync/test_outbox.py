"""forward(): a delivery and its job are recorded if and only if the caller's transaction commits."""

from datetime import datetime, timezone

import pytest
from django.db import connection, transaction
from procrastinate.contrib.django import app as procrastinate_app
from procrastinate.contrib.django.models import ProcrastinateJob

from attentive_sync.delivery import forward
from attentive_sync.events import CustomEvent, EventUser
from attentive_sync.models import AttentiveSettings, Delivery
from tests.conftest import run_worker_until_idle

pytestmark = pytest.mark.django_db(transaction=True)


def an_event(external_event_id="evt-1", type_="loyalty.points_redeemed"):
    return CustomEvent(
        type=type_,
        user=EventUser(client_user_id="member-1"),
        occurred_at=datetime.now(timezone.utc),
        external_event_id=external_event_id,
        properties={"points_debit": 150},
    )


def delivery_jobs():
    return ProcrastinateJob.objects.filter(task_name="attentive_sync.deliver_event")


def test_a_committed_forward_records_one_delivery_and_one_job():
    with transaction.atomic():
        result = forward(an_event())
    assert result.created
    delivery = Delivery.objects.get()
    assert delivery.status == "pending" and delivery.payload["externalEventId"] == "evt-1"
    assert list(delivery_jobs().values_list("args", "status")) == [({"delivery_id": delivery.pk}, "todo")]


def test_a_rolled_back_transaction_leaves_no_delivery_and_no_job():
    class Boom(Exception):
        pass

    with pytest.raises(Boom), transaction.atomic():
        forward(an_event())
        raise Boom
    assert Delivery.objects.count() == 0
    assert delivery_jobs().count() == 0


@procrastinate_app.task(name="tests.forward_then_roll_back", queue="tests")
def forward_then_roll_back() -> None:
    with transaction.atomic():
        forward(an_event("evt-in-worker"))
        raise RuntimeError("rolled back on purpose")


def test_inside_a_worker_too_a_rolled_back_forward_leaves_no_job():
    # The worker swaps procrastinate's connector for its own pool; a job deferred through it
    # would commit on another connection, whatever became of the task's transaction.
    forward_then_roll_back.defer()

    run_worker_until_idle(queues=["tests"])

    assert Delivery.objects.count() == 0
    assert delivery_jobs().count() == 0


def test_the_same_event_forwarded_twice_is_recorded_and_queued_once():
    first = forward(an_event())
    with transaction.atomic():
        second = forward(an_event())
        # The duplicate must not have poisoned the caller's transaction.
        Delivery.objects.count()
    assert second.created is False and second.delivery.pk == first.delivery.pk
    assert Delivery.objects.count() == 1 and delivery_jobs().count() == 1


def test_an_event_type_switched_off_is_not_forwarded():
    settings = AttentiveSettings.load()
    settings.disabled_event_types = ["loyalty.points_redeemed"]
    settings.save()
    assert forward(an_event()) is None
    assert forward(an_event("evt-2", type_="loyalty.tier_changed")).created
    assert list(Delivery.objects.values_list("event_type", flat=True)) == ["loyalty.tier_changed"]


def test_saving_the_settings_never_double_encrypts_a_key_it_cannot_read(salts):
    stored = AttentiveSettings.load()
    stored.api_key = "sk_live_ORIGINAL_9999"
    stored.save()
    with connection.cursor() as cursor:
        cursor.execute("SELECT api_key FROM attentive_sync_attentivesettings")
        (ciphertext,) = cursor.fetchone()
    salts(["a-new-salt"])  # the deployment lost its keys: the stored key reads back as ciphertext
    unreadable = AttentiveSettings.load()
    unreadable.enabled = True
    assert unreadable.api_key_unreadable and "cannot be decrypted" in unreadable.sending_blocker()
    unreadable.save()
    with connection.cursor() as cursor:
        cursor.execute("SELECT api_key, enabled FROM attentive_sync_attentivesettings")
        assert cursor.fetchone() == (ciphertext, True)
    salts(["sparkfly-attentive-portal"])  # the old salt is back: the key was never lost
    assert AttentiveSettings.load().key == "sk_live_ORIGINAL_9999"
