"""The outbox when its database connection is lost while a job is deferred (issue 7, item 5's
review): procrastinate's ConnectorException must meet the same handling as any lost connection.
Real PostgreSQL, the Attentive sandbox over loopback, the session ended by the database itself
(tests/lost_connection.py)."""

from __future__ import annotations

import pytest
from procrastinate.contrib.django.models import ProcrastinateJob

from attentive_sync.delivery import deliver
from attentive_sync.models import AttentiveSettings, Delivery, DeliveryAttempt
from tests.attentive_sync.test_delivery import API_KEY, NO_WAIT, recorded
from tests.lost_connection import connection_lost_on_insert, matching_inserts

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_batch_whose_retry_requeue_loses_the_connection_keeps_its_results_not_sent_again(attentive_sandbox_factory):
    """Attentive answers 503 to the whole batch; recording it queues each delivery's retry, and
    that defer loses the connection. The batch's results were thrown away (ConnectorException
    was no OperationalError): after the lease the same events would go out again, a second
    send outside at-least-once's one allowed case. They are written once the database answers."""
    # Answers slow enough that every send is out before the first is written: the write that
    # loses its connection is then the one after the releasing (not caught by its guard).
    server = attentive_sandbox_factory(api_key=API_KEY)
    server.sandbox.inject_fault("/v1/events/custom", status=503, times=3, delay=0.3)
    settings = AttentiveSettings.load()
    settings.api_key, settings.api_url, settings.enabled = API_KEY, server.base_url, True
    settings.rate_limit_per_second = 1000
    settings.save()
    deliveries = [recorded(f"evt-{n}") for n in range(3)]
    ProcrastinateJob.objects.all().delete()  # forward()'s own jobs: only the retries' count here

    with connection_lost_on_insert("procrastinate_jobs", when="NEW.task_name = 'attentive_sync.deliver_event'"):
        deliver(deliveries[0].pk, policy=NO_WAIT, sleep=lambda seconds: None)
        assert matching_inserts() == 1 + 3  # the lost one, then the three retries written again

    for delivery in deliveries:
        delivery.refresh_from_db()
        assert (delivery.status, delivery.attempts, delivery.leased_until) == ("failed", 1, None)
        assert delivery.next_attempt_at is not None
    assert DeliveryAttempt.objects.filter(outcome="retry").count() == 3
    # One retry job waits for each delivery; each event reached Attentive once.
    waiting = ProcrastinateJob.objects.filter(task_name="attentive_sync.deliver_event", status="todo")
    assert sorted(job.args["delivery_id"] for job in waiting) == sorted(d.pk for d in deliveries)
    assert server.sandbox.count_requests("/v1/events/custom") == 3
    assert Delivery.objects.filter(status="failed").count() == 3
