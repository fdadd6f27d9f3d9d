"""Deferring a job inside the caller's transaction, wherever the caller runs.

procrastinate's Django connector defers on Django's own connection, so "write a row + defer
its job" commits atomically (ARCHITECTURE: record first). But inside `manage.py procrastinate
worker`, procrastinate swaps the app's connector for its own connection pool: a job deferred
by a task would commit on another connection at once, and could run before the row it is
about exists (measured: a third of deliveries deferred by a task waited for a later batch).
``in_transaction`` defers on Django's connection everywhere. Both apps use it; it lives here,
in the app the other depends on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from django.conf import settings
from procrastinate import exceptions, jobs, manager
from procrastinate.contrib.django.django_connector import DjangoConnector


class _DjangoErrors(DjangoConnector):
    """procrastinate's Django connector, raising the database errors Django raises.

    procrastinate turns Django's error back into psycopg's and wraps that in its own
    ``ConnectorException``: a connection lost while a job was deferred (a restart, a failover)
    was then no ``OperationalError``, and every caller's "database unreachable" handling missed
    it (the webhook answered 500; a delivery batch threw away its results, whose events went
    out again after the lease). Re-raised through Django's own wrapper, it is the error Django
    would have raised for that query (``OperationalError`` for a lost connection,
    ``InternalError`` for a read-only server, …), from psycopg's. procrastinate's
    ``UniqueViolation`` is left as it is: it makes the queueing lock's ``AlreadyEnqueued``."""

    @contextlib.contextmanager
    def _as_django_errors(self) -> Iterator[None]:
        try:
            yield
        except exceptions.UniqueViolation:
            raise
        except exceptions.ConnectorException as exc:
            if not isinstance(exc.__cause__, self.connection.Database.Error):
                raise
            with self.connection.wrap_database_errors:
                raise exc.__cause__ from None

    def execute_query(self, query, **arguments):
        with self._as_django_errors():
            return super().execute_query(query, **arguments)

    def execute_query_one(self, query, **arguments):
        with self._as_django_errors():
            return super().execute_query_one(query, **arguments)

    def execute_query_all(self, query, **arguments):
        with self._as_django_errors():
            return super().execute_query_all(query, **arguments)


_on_django_connection = manager.JobManager(_DjangoErrors())


def in_transaction(deferrer) -> jobs.JobDeferrer:
    """``task.configure(...)`` (or a task) deferred on Django's connection, in the current
    transaction: ``in_transaction(task.configure(lock=…)).defer(id=…)``."""
    if not isinstance(deferrer, jobs.JobDeferrer):
        deferrer = deferrer.configure()
    return jobs.JobDeferrer(job_manager=_on_django_connection, job=deferrer.job)


def queue_once(task, *, queueing_lock: str, at=None, exclusive: bool = False, **task_kwargs) -> None:
    """Make the one waiting job of ``queueing_lock`` run at ``at`` (default now), in the current
    transaction: defer it, or — when one already waits (the queueing lock refuses a second) —
    move that job to ``at``. ``exclusive`` also takes procrastinate's ``lock``, so two jobs of
    the same lock never run at once (a waiting one starts when the running one ends)."""
    from django.db import connection, transaction

    options = {"queueing_lock": queueing_lock, "schedule_at": at}
    if exclusive:
        options["lock"] = queueing_lock
    try:
        with transaction.atomic():  # a savepoint: the refused INSERT must not end the caller's transaction
            in_transaction(task.configure(**options)).defer(**task_kwargs)
    except exceptions.AlreadyEnqueued:
        with connection.cursor() as cursor:
            # procrastinate's Django models are read-only, hence SQL on its jobs table.
            cursor.execute(
                "UPDATE procrastinate_jobs SET scheduled_at = %s WHERE queueing_lock = %s AND status = 'todo'",
                [at, queueing_lock],
            )


# A worker that sent no heartbeat for this long is dead (60 s by default; portal.worker beats
# every sixth of it); portal.tasks.retry_stalled_jobs uses the same.
STALLED_AFTER_SECONDS = settings.WORKER_STALLED_AFTER_SECONDS
# When the maintenance jobs run (the stalled-job retry, the delivery sweep): each minute by
# default, every MAINTENANCE_INTERVAL_SECONDS in tests (croniter's sixth field is seconds).
MAINTENANCE_CRON = (
    "* * * * *" if settings.MAINTENANCE_INTERVAL_SECONDS >= 60 else f"* * * * * */{settings.MAINTENANCE_INTERVAL_SECONDS}"
)


def job_of(queueing_lock: str) -> tuple[str, int | None]:
    """The live job of ``queueing_lock``: ``("waiting", id)`` (todo), ``("running", id)``
    (doing, on a worker that still beats), ``("stalled", id)`` (doing, on a worker that died:
    procrastinate would leave it so until retried), or ``("", None)`` when there is none."""
    from datetime import timedelta

    from django.db.models import Q
    from django.utils import timezone
    from procrastinate.contrib.django.models import ProcrastinateJob

    job = ProcrastinateJob.objects.filter(queueing_lock=queueing_lock, status__in=("todo", "doing")).order_by("-id").first()
    if job is None:
        return "", None
    if job.status == "todo":
        return "waiting", job.id
    beating = Q(worker__last_heartbeat__gte=timezone.now() - timedelta(seconds=STALLED_AFTER_SECONDS))
    alive = ProcrastinateJob.objects.filter(pk=job.id, worker__isnull=False).filter(beating).exists()
    return ("running" if alive else "stalled"), job.id


def retry_stalled(job_id: int) -> None:
    """Put a dead worker's job back in the queue, in the current transaction (what
    ``retry_stalled_jobs`` does every minute, now); a job already retried meanwhile is left be."""
    from django.db import DatabaseError, InterfaceError, OperationalError, transaction
    from django.utils import timezone

    try:
        with transaction.atomic():  # a savepoint: a job no longer "doing" must not end the caller's transaction
            _on_django_connection.retry_job_by_id(job_id, retry_at=timezone.now())
    except (OperationalError, InterfaceError):
        raise  # the database is gone: the caller's outage handling, not "already retried"
    except DatabaseError:
        pass  # procrastinate refused: the job is no longer "doing" (retried or finished meanwhile)
