"""Background jobs, run by a real procrastinate worker against the real PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from procrastinate.contrib.django.models import ProcrastinateJob

from tests.conftest import run_worker_until_idle
from sparkfly_sync.models import Channel, Member, SyncRun
from sparkfly_sync.sync import RESOURCES
from sparkfly_sync.tasks import queue_mirror_sync, schedule_mirror_sync

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def no_periodic_sync(settings):
    # The worker also runs the per-minute scheduler; tests of other jobs turn it off.
    settings.SPARKFLY_SYNC_INTERVAL_MINUTES = 0


def mirror_jobs():
    return ProcrastinateJob.objects.filter(task_name="sparkfly_sync.sync_mirror")


def test_the_worker_runs_a_queued_mirror_sync(sparkfly_settings):
    assert queue_mirror_sync(["channels", "members"]) is True
    run_worker_until_idle()
    assert Member.objects.count() == 50 and Channel.objects.count() == 3
    assert mirror_jobs().get().status == "succeeded"
    assert set(SyncRun.objects.values_list("resource", "status")) == {("channels", "succeeded"), ("members", "succeeded")}


def test_a_second_sync_is_not_queued_while_one_waits(sparkfly_settings):
    assert queue_mirror_sync() is True
    assert queue_mirror_sync() is False
    assert mirror_jobs().count() == 1


def test_a_failing_sync_job_records_the_failed_run_and_the_job_still_ends(sparkfly_settings, sparkfly_sandbox):
    sparkfly_sandbox.sandbox.inject_fault("/v1.0/channels", status=403, body='{"error":"forbidden"}')
    queue_mirror_sync(["channels"])
    run_worker_until_idle()
    run = SyncRun.objects.get(resource="channels")
    assert run.status == "failed" and "forbidden" in run.failure
    assert mirror_jobs().get().status == "succeeded"  # the failure lives on the run, ready to resume


def test_the_scheduler_queues_a_sync_when_due_and_only_then(sparkfly_settings):
    sparkfly_settings.SPARKFLY_SYNC_INTERVAL_MINUTES = 60
    schedule_mirror_sync(timestamp=0)  # never synced: due
    assert mirror_jobs().count() == 1
    mirror_jobs().delete()
    for resource in RESOURCES:
        SyncRun.objects.create(resource=resource, status="succeeded")
    schedule_mirror_sync(timestamp=0)  # everything synced a moment ago: not due
    assert mirror_jobs().count() == 0
    SyncRun.objects.filter(resource="offers").update(updated_at=timezone.now() - timedelta(minutes=61))
    schedule_mirror_sync(timestamp=0)  # offers went stale: due
    assert mirror_jobs().count() == 1


def test_a_failing_resource_is_retried_an_interval_after_its_last_try_not_every_minute(sparkfly_settings):
    sparkfly_settings.SPARKFLY_SYNC_INTERVAL_MINUTES = 60
    for resource in RESOURCES:
        SyncRun.objects.create(resource=resource, status="succeeded")
    # A run started long ago and resumed since, which failed again a moment ago.
    SyncRun.objects.create(resource="members", status="failed", checkpoint={"stream": "all", "page": 3})
    SyncRun.objects.filter(resource="members", status="failed").update(started_at=timezone.now() - timedelta(hours=5))
    schedule_mirror_sync(timestamp=0)
    assert mirror_jobs().count() == 0


def test_a_partial_manual_sync_does_not_postpone_the_others(sparkfly_settings):
    sparkfly_settings.SPARKFLY_SYNC_INTERVAL_MINUTES = 60
    SyncRun.objects.create(resource="members", status="succeeded")
    schedule_mirror_sync(timestamp=0)
    assert mirror_jobs().count() == 1


def test_the_scheduler_does_nothing_when_turned_off(sparkfly_settings):
    sparkfly_settings.SPARKFLY_SYNC_INTERVAL_MINUTES = 0
    schedule_mirror_sync(timestamp=0)
    assert mirror_jobs().count() == 0
