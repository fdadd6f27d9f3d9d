"""Retention: deleting old rows in short batches, and which deliveries are old enough to go.

``delete_in_batches`` deletes the rows of a queryset a batch at a time, each batch one
statement in its own short transaction: ``DELETE … WHERE id IN (SELECT id … LIMIT n FOR
UPDATE SKIP LOCKED)``. Only the batch's rows are locked, and only until it commits, so writers
of other rows never wait, and a row some worker holds (a delivery being sent) is skipped, not
waited for. One DELETE of a month of rows would hold its locks for minutes and write the WAL
of all of them in one go. The rows that point at a deleted one go in the same statement, as
Django's ``on_delete`` says (these relations exist in Python only: PostgreSQL's foreign keys
have no action of their own): CASCADE deletes them, SET_NULL clears the reference.

The generic part lives in this app because the Sparkfly side uses it too (the dependency goes
that way); ``deliveries_prune`` is the Attentive side's own retention.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, models, transaction
from django.utils import timezone

from attentive_sync.models import AttributeSnapshot, Delivery

BATCH = 5000


@dataclass
class Pruned:
    """What one pruning deleted: rows of its own table (rows cascaded not counted), and how long
    each batch's transaction took (the longest any other writer could wait on one of its rows)."""

    what: str
    rows: int = 0
    batch_seconds: list[float] = field(default_factory=list)

    @property
    def batches(self) -> int:
        return len(self.batch_seconds)

    def __str__(self) -> str:
        longest = f", longest batch {max(self.batch_seconds) * 1000:.0f} ms" if self.batch_seconds else ""
        return f"{self.what}: {self.rows} rows in {self.batches} batches{longest}"


def delete_in_batches(queryset: models.QuerySet, *, what: str, batch: int = BATCH) -> Pruned:
    """Delete every row of ``queryset``, ``batch`` rows per statement and transaction."""
    model = queryset.model
    table, pk = model._meta.db_table, model._meta.pk.column
    pruned = Pruned(what)
    while True:
        started = time.perf_counter()
        with transaction.atomic():
            doomed = queryset.order_by().select_for_update(skip_locked=True, of=("self",)).values("pk")[:batch]
            select, params = doomed.query.sql_with_params()
            dependents = _dependents(model)
            with connection.cursor() as cursor:
                cursor.execute(
                    f'WITH doomed AS ({select}){"".join(dependents)} '
                    f'DELETE FROM "{table}" WHERE "{pk}" IN (SELECT * FROM doomed)',
                    params,
                )
                deleted = cursor.rowcount
        if not deleted:
            return pruned
        pruned.rows += deleted
        pruned.batch_seconds.append(time.perf_counter() - started)


def _dependents(model: type[models.Model]) -> list[str]:
    """The CTEs that delete (CASCADE) or detach (SET_NULL) the rows referring to the doomed ones."""
    statements = []
    # include_hidden: a relation named "+" (a redemption's delivery) points here all the same.
    relations = [f for f in model._meta.get_fields(include_hidden=True) if f.auto_created and not f.concrete]
    for number, relation in enumerate(relations):
        if relation.many_to_many:
            continue
        related, column = relation.related_model, relation.field.column
        table = related._meta.db_table
        if relation.on_delete is models.CASCADE:
            if any(f.auto_created and not f.concrete for f in related._meta.get_fields(include_hidden=True)):
                # Its own dependents would need the same treatment, one level further down.
                raise ValueError(f"{related.__name__} cascades from {model.__name__} and has dependents of its own")
            statement = f'DELETE FROM "{table}" WHERE "{column}" IN (SELECT * FROM doomed)'
        elif relation.on_delete is models.SET_NULL:
            statement = f'UPDATE "{table}" SET "{column}" = NULL WHERE "{column}" IN (SELECT * FROM doomed)'
        else:
            # PROTECT, DO_NOTHING, …: a new relation must be thought through before its rows are pruned.
            raise ValueError(f"{related.__name__}.{relation.field.name} is {relation.on_delete.__name__}")
        statements.append(f", dependent_{number} AS ({statement})")
    return statements


# --- deliveries ------------------------------------------------------------------------------


def deliveries_prune(*, now: datetime | None = None, batch: int = BATCH) -> list[Pruned]:
    """Delete delivered deliveries (and their attempts) created more than RETENTION_DAYS ago,
    dead and expired ones after RETENTION_FAILED_DAYS. Pending and failed ones are never
    deleted: they are still on their way.

    Kept however old: the delivery an ``AttributeSnapshot`` names (one per person), because
    ``push_attributes`` reads it to tell values already pushed from values to push again.
    A delivered event's redemption or notification keeps its dedup key and its state
    (forwarded), so nothing sends it again (see the README, "Retention").
    """
    now = now or timezone.now()
    if settings.RETENTION_DAYS <= 0:
        return []
    named = AttributeSnapshot.objects.filter(delivery__isnull=False).values("delivery_id")
    old = Delivery.objects.exclude(pk__in=named)
    delivered = old.filter(
        status=Delivery.Status.DELIVERED, created_at__lt=now - timedelta(days=settings.RETENTION_DAYS)
    )
    given_up = old.filter(
        status__in=(Delivery.Status.DEAD, Delivery.Status.EXPIRED),
        created_at__lt=now - timedelta(days=settings.RETENTION_FAILED_DAYS),
    )
    return [
        delete_in_batches(delivered, what="delivered deliveries", batch=batch),
        delete_in_batches(given_up, what="dead and expired deliveries", batch=batch),
    ]
