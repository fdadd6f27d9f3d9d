"""The deliveries page's queries: the outbox, failures first, with Attentive's last answer."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from django.db.models import OuterRef, QuerySet, Subquery
from django.db.models.functions import Left

from attentive_sync.models import Delivery, DeliveryAttempt
from portal.rollups import day_bounds

# What "needs attention" means on the page: a try failed and another is scheduled, Attentive
# refused it for good, or it got too old to matter before it got through.
PROBLEM_STATUSES = (Delivery.Status.FAILED, Delivery.Status.DEAD, Delivery.Status.EXPIRED)
# Attentive's answers can be whole HTML error pages; the start says what went wrong.
RESPONSE_EXCERPT_CHARS = 300


@dataclass(frozen=True)
class DeliveryFilters:
    """``statuses`` empty means every status."""

    statuses: tuple[str, ...] = PROBLEM_STATUSES
    event_type: str = ""
    created_from: date | None = None
    created_to: date | None = None  # inclusive
    external_event_id: str = ""


def delivery_list(filters: DeliveryFilters) -> QuerySet[Delivery]:
    """Deliveries matching ``filters``, newest first, each annotated with its last attempt's
    ``last_status_code`` and ``last_response`` (its start): one query for the whole page."""
    deliveries = Delivery.objects.all()
    if filters.statuses:
        deliveries = deliveries.filter(status__in=filters.statuses)
    if filters.event_type:
        deliveries = deliveries.filter(event_type=filters.event_type)
    if filters.created_from:
        deliveries = deliveries.filter(created_at__gte=day_bounds(filters.created_from)[0])
    if filters.created_to:
        deliveries = deliveries.filter(created_at__lt=day_bounds(filters.created_to)[1])
    if filters.external_event_id:
        deliveries = deliveries.filter(external_event_id=filters.external_event_id)
    last_attempt = DeliveryAttempt.objects.filter(delivery=OuterRef("pk")).order_by("-started_at", "-pk")[:1]
    return (
        deliveries.annotate(
            last_status_code=Subquery(last_attempt.values("status_code")),
            last_response=Subquery(last_attempt.values(excerpt=Left("response_body", RESPONSE_EXCERPT_CHARS))),
        )
        .defer("payload")  # the page never shows it; a payload is the row's largest column
        .order_by("-created_at", "-pk")
    )


def delivery_page(filters: DeliveryFilters, *, page: int, per_page: int) -> tuple[list[Delivery], bool]:
    """Page ``page`` (from 1) of ``delivery_list`` and whether another follows. One query: no
    COUNT(*), which over a busy outbox would cost more than the page itself."""
    offset = (page - 1) * per_page
    rows = list(delivery_list(filters)[offset : offset + per_page + 1])
    return rows[:per_page], len(rows) > per_page
