"""The nightly retention: what goes, what stays, the dedup guarantee after it, the dashboard's
figures across it, and the periodic jobs that run it."""

from __future__ import annotations

from datetime import datetime, timedelta
from urllib.parse import urlencode

import pytest
from django.db import connection
from django.urls import reverse
from django.utils import timezone
from procrastinate.contrib.django.models import ProcrastinateJob

from attentive_sync.models import Delivery
from portal.retention import records_prune
from portal.rollups import rollups_refresh
from portal.tasks import prune_old_records, remove_old_jobs
from sparkfly_sync import events, forwarding
from sparkfly_sync.models import ConversionEndpoint, InboundRequest, Redemption, SyncRun
from sparkfly_sync.sync import sync_runs_prune
from tests.conftest import run_worker_until_idle
from tests.portal import activity
from tests.portal.activity import delivery_table, direct_delivery_counts, rollup_table

pytestmark = pytest.mark.django_db

REDEEMED_AT = "2026-01-05T12:00:00Z"


@pytest.fixture(autouse=True)
def windows(settings):
    settings.RETENTION_DAYS = 30
    settings.RETENTION_FAILED_DAYS = 90
    settings.RETENTION_SYNC_RUNS = 2


def days_ago(days: float) -> datetime:
    return timezone.now() - timedelta(days=days)


def callback(client, endpoint: ConversionEndpoint, **values):
    path = reverse(
        "sparkfly-conversion-callback", kwargs={"endpoint_uuid": str(endpoint.uuid), "secret": endpoint.secret}
    )
    return client.get(path + "?" + urlencode(values))


def forward_jobs() -> int:
    return ProcrastinateJob.objects.filter(task_name="sparkfly_sync.forward_redemption").count()


def test_after_pruning_a_late_duplicate_or_a_retry_never_sends_the_event_again(client):
    """Sparkfly retries a callback after its request record and its delivery were pruned: the
    redemption (kept for good) still recognises it, and nothing forwards it again."""
    endpoint = ConversionEndpoint.objects.create(channel_id=11)
    values = {"credential_id": "501", "offer_id": "7", "redeemed_at": REDEEMED_AT}
    assert callback(client, endpoint, **values).status_code == 202
    redemption = Redemption.objects.get()
    # The externalEventId is a function of the callback's values, the same however often it comes.
    assert str(redemption.dedup_key) == events.redemption_event_id(
        credential_id=501, offer_id=7, redeemed_at=datetime.fromisoformat(REDEEMED_AT)
    )
    # Forwarded and delivered long ago (what the workers do, written directly).
    sent = activity.delivery(1, Delivery.Status.DELIVERED, created_at=days_ago(40), delay=timedelta(seconds=1))
    Delivery.objects.filter(pk=sent.pk).update(external_event_id=str(redemption.dedup_key))
    Redemption.objects.filter(pk=redemption.pk).update(state="forwarded", delivery=sent)
    InboundRequest.objects.update(received_at=days_ago(40))

    records_prune()

    assert not Delivery.objects.exists() and not InboundRequest.objects.exists()  # pruned, so this can fail
    redemption.refresh_from_db()
    assert (redemption.state, redemption.delivery_id) == ("forwarded", None)
    answer = callback(client, endpoint, **values)
    assert answer.status_code == 200 and answer.json()["duplicate"] is True
    assert Redemption.objects.count() == 1 and forward_jobs() == 1  # the first callback's job only
    assert forwarding.forward_redemption(redemption.pk).state == "forwarded"  # a stray job: a no-op
    assert forwarding.requeue(Redemption.objects.all()) == 0  # the admin's retry leaves it alone
    assert not Delivery.objects.exists()


def test_the_dashboards_figures_are_the_same_after_a_prune_and_the_nightly_rebuild():
    activity.program(7, "Gold")
    activity.member(1, 7)
    activity.credential(11, 1)
    for age in (45, 40, 20):
        activity.redemption(11, 501, days_ago(age), store_id=901, received_at=days_ago(age))
    for n, (status, age) in enumerate([
        (Delivery.Status.DELIVERED, 45), (Delivery.Status.DELIVERED, 40), (Delivery.Status.DEAD, 40),
        (Delivery.Status.DELIVERED, 95), (Delivery.Status.DELIVERED, 20), (Delivery.Status.FAILED, 45),
    ]):
        activity.delivery(n, status, created_at=days_ago(age), delay=timedelta(seconds=1))
    rollups_refresh()
    deliveries_before, activity_before = delivery_table(), rollup_table()
    assert deliveries_before == direct_delivery_counts()

    records_prune()
    assert Delivery.objects.count() == 3  # the recent delivered one, the failed one, the dead one (< 90 days)
    rollups_refresh(everything=True)

    assert delivery_table() == deliveries_before
    assert rollup_table() == activity_before
    # The rebuild still recomputes the days inside the window.
    recent = Delivery.objects.get(status=Delivery.Status.DELIVERED)
    Delivery.objects.filter(pk=recent.pk).update(status=Delivery.Status.DEAD)
    rollups_refresh(everything=True)
    day = timezone.localdate(recent.created_at)
    assert delivery_table()[(day, "dead")] == 1 and (day, "delivered") not in delivery_table()


def test_sync_runs_beyond_the_newest_few_per_resource_go_but_never_a_running_one():
    def run(resource: str, hours_ago: int, status: str = SyncRun.Status.SUCCEEDED) -> SyncRun:
        created = SyncRun.objects.create(resource=resource, status=status)
        SyncRun.objects.filter(pk=created.pk).update(started_at=timezone.now() - timedelta(hours=hours_ago))
        return created

    stuck = run("offers", 100, SyncRun.Status.RUNNING)
    offers = [run("offers", hours) for hours in (1, 2, 3, 4)]
    members = [run("members", hours, SyncRun.Status.FAILED) for hours in (1, 2, 3)]

    pruned = sync_runs_prune()

    assert pruned.rows == 3
    assert set(SyncRun.objects.values_list("pk", flat=True)) == {
        stuck.pk, offers[0].pk, offers[1].pk, members[0].pk, members[1].pk
    }


def _old_job(status: str, days: float) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO procrastinate_jobs (queue_name, task_name, args, status) "
            "VALUES ('inbound', 'sparkfly_sync.forward_redemption', '{}', %s) RETURNING id",
            [status],
        )
        job_id = cursor.fetchone()[0]
        if status != "todo":  # a job inserted finished gets no event of procrastinate's triggers
            cursor.execute("INSERT INTO procrastinate_events (job_id, type) VALUES (%s, %s)", [job_id, status])
        # remove_old_jobs dates a job by its latest event.
        cursor.execute("UPDATE procrastinate_events SET at = %s WHERE job_id = %s", [days_ago(days), job_id])
    return job_id


@pytest.mark.django_db(transaction=True)
def test_the_periodic_jobs_prune_records_and_finished_jobs():
    old_request = InboundRequest.objects.create(
        kind="conversion", received_at=days_ago(31), method="GET", status_code=202, outcome="accepted"
    )
    gone = [_old_job("succeeded", 31), _old_job("failed", 91)]
    kept = [_old_job("succeeded", 29), _old_job("failed", 31), _old_job("todo", 400)]

    prune_old_records.defer(timestamp=0)
    remove_old_jobs.defer(timestamp=0)
    run_worker_until_idle(queues=["maintenance"])

    assert not InboundRequest.objects.filter(pk=old_request.pk).exists()
    remaining = set(ProcrastinateJob.objects.values_list("id", flat=True))
    assert set(kept) <= remaining and not set(gone) & remaining
    assert set(
        ProcrastinateJob.objects.filter(task_name__startswith="portal.").values_list("status", flat=True)
    ) == {"succeeded"}
