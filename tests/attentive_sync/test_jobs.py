"""attentive_sync.jobs: deferring on Django's connection, with Django's database errors."""

from __future__ import annotations

import psycopg
import pytest
from django.db import InternalError, connection, transaction
from procrastinate.contrib.django.models import ProcrastinateJob

from attentive_sync.jobs import in_transaction, queue_once, retry_stalled
from attentive_sync.tasks import deliver_event

pytestmark = pytest.mark.django_db


def test_a_defer_the_database_refuses_raises_djangos_error_not_procrastinates():
    """What every caller's database handling catches (procrastinate's ConnectorException is no
    DatabaseError): here a read-only server's, from psycopg's own."""
    with connection.cursor() as cursor:
        cursor.execute("SET TRANSACTION READ ONLY")

    with pytest.raises(InternalError) as raised, transaction.atomic():
        in_transaction(deliver_event.configure()).defer(delivery_id=1)

    assert isinstance(raised.value.__cause__, psycopg.errors.ReadOnlySqlTransaction)


def test_a_second_job_of_a_queueing_lock_still_moves_the_waiting_one():
    """procrastinate's UniqueViolation is not turned into Django's IntegrityError: queue_once
    still recognises the waiting job (AlreadyEnqueued) and moves it instead."""
    from datetime import datetime, timezone

    later = datetime(2030, 1, 1, tzinfo=timezone.utc)
    queue_once(deliver_event, queueing_lock="delivery:1", delivery_id=1)
    queue_once(deliver_event, queueing_lock="delivery:1", at=later, delivery_id=1)

    assert list(ProcrastinateJob.objects.values_list("scheduled_at", flat=True)) == [later]


def test_retrying_a_job_no_longer_running_leaves_the_callers_transaction_be():
    """procrastinate refuses to retry a job that is not "doing" (another retry came first): a
    database error in retry_stalled's savepoint, passed over; it escaped as a ConnectorException."""
    with transaction.atomic():
        queue_once(deliver_event, queueing_lock="delivery:1", delivery_id=1)
        job = ProcrastinateJob.objects.get(queueing_lock="delivery:1")  # waiting: not "doing"
        retry_stalled(job.id)
        assert ProcrastinateJob.objects.get(pk=job.id).status == "todo"  # the transaction still answers


@pytest.mark.django_db(transaction=True)
def test_a_connection_lost_while_retrying_a_stalled_job_is_raised_not_taken_for_already_retried():
    """The caller's outage handling must see it (the job stays for the stalled-job retry)."""
    from django.db import OperationalError

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    params = {k: v for k, v in connection.get_connection_params().items() if k not in ("cursor_factory", "context")}
    with psycopg.connect(**params, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [backend])

    with pytest.raises(OperationalError):
        retry_stalled(1)
    connection.close()
