"""The outbox: record a custom event, then deliver it to Attentive exactly once.

``forward(event)`` writes a ``Delivery`` and defers its job on the caller's connection, in the
caller's transaction (procrastinate's Django connector): the event is queued if and only if
that transaction commits. ``deliver(delivery_id)`` (run by the job) makes one try:

* 2xx → delivered;
* connection errors, timeouts, 408, 429 and 5xx → retried with exponential backoff and full
  jitter, by deferring the next job in the same transaction that records the try;
* 401/403 → retried as well: a wrong or revoked key is an operator's problem to fix, not a
  reason to drop every event (the error says so until the key is fixed);
* any other 4xx (and a redirect, which is never followed) → dead, Attentive's message kept;
* nothing is sent once the event is older than the maximum event age → expired.

Every try, retry and replay sends the same ``externalEventId``. A delivery is locked
(``SELECT … FOR UPDATE SKIP LOCKED``) while it is being sent, so two workers never send it
at once, and one queueing lock per delivery keeps at most one job waiting for it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings as django_settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone
from procrastinate import exceptions as procrastinate_exceptions

from attentive_sync import ratelimit
from attentive_sync.client import CUSTOM_EVENTS_PATH, AttentiveClient
from attentive_sync.errors import (
    AttentiveAPIError,
    AttentiveAuthError,
    AttentiveConnectionError,
    AttentiveError,
    AttentiveRedirect,
)
from attentive_sync.events import CustomEvent
from attentive_sync.models import AttentiveSettings, Delivery, DeliveryAttempt

logger = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
MAX_STORED_RESPONSE = 2000
# A waiting delivery whose try is this late has lost its job (a worker died mid-send, or it
# was held while sending was off): the sweeper queues it again.
OVERDUE_AFTER = timedelta(minutes=2)
SWEEP_BATCH = 1000


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: try n waits uniform(0, min(cap, base * 2**(n-1)))."""

    base: timedelta = timedelta(seconds=2)
    cap: timedelta = timedelta(minutes=15)
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def delay_after(self, attempts: int) -> timedelta:
        ceiling = min(self.cap.total_seconds(), self.base.total_seconds() * 2 ** (attempts - 1))
        return timedelta(seconds=self.rng.uniform(0, ceiling))

    @classmethod
    def from_settings(cls) -> RetryPolicy:
        # Settings, not arguments, so tests can compress the schedule in worker processes too.
        return cls(
            base=timedelta(seconds=django_settings.ATTENTIVE_RETRY_BASE_SECONDS),
            cap=timedelta(seconds=django_settings.ATTENTIVE_RETRY_CAP_SECONDS),
        )


@dataclass
class ForwardResult:
    delivery: Delivery
    created: bool


# --- recording -----------------------------------------------------------------------------


def forward(event: CustomEvent) -> ForwardResult | None:
    """Record ``event`` for delivery and queue it, atomically with the caller's transaction.

    Returns None when its event type is switched off in the settings. An event whose
    ``external_event_id`` was already recorded is not queued again (returns ``created=False``).
    """
    settings = AttentiveSettings.load()
    if not settings.forwards(event.type):
        logger.info("not forwarding %s %s: the event type is switched off", event.type, event.external_event_id)
        return None
    with transaction.atomic():
        try:
            with transaction.atomic():  # a savepoint: a duplicate must not poison the caller
                delivery = Delivery.objects.create(
                    external_event_id=event.external_event_id,
                    event_type=event.type,
                    payload=event.to_payload(),
                    occurred_at=event.occurred_at,
                )
        except IntegrityError:
            return ForwardResult(Delivery.objects.get(external_event_id=event.external_event_id), created=False)
        _queue(delivery)
    return ForwardResult(delivery, created=True)


def _queue(delivery: Delivery, *, at: datetime | None = None) -> None:
    """Make the delivery's one waiting job run at ``at`` (default now), on the current
    transaction: defer a job, or — when one already waits (the queueing lock refuses a
    second) — move that job to ``at``, so "retry now" means now and a retry keeps its backoff."""
    from attentive_sync.tasks import deliver_event

    lock = f"delivery:{delivery.pk}"
    try:
        with transaction.atomic():
            deliver_event.configure(queueing_lock=lock, schedule_at=at).defer(delivery_id=delivery.pk)
    except procrastinate_exceptions.AlreadyEnqueued:
        with connection.cursor() as cursor:
            # procrastinate's Django models are read-only, hence SQL on its jobs table.
            cursor.execute(
                "UPDATE procrastinate_jobs SET scheduled_at = %s WHERE queueing_lock = %s AND status = 'todo'",
                [at, lock],
            )


# --- sending ---------------------------------------------------------------------------------


def deliver(
    delivery_id: int,
    *,
    policy: RetryPolicy | None = None,
    client_factory: Callable[[AttentiveSettings], AttentiveClient] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Delivery | None:
    """Make one try at a delivery (the job's body). Returns the delivery, or None if it was
    gone or another worker holds it."""
    settings = AttentiveSettings.load()
    delivery = Delivery.objects.filter(pk=delivery_id).first()
    if delivery is None or delivery.is_final:
        return delivery
    if _too_old(delivery, settings, timezone.now()):
        return _expire(delivery_id, settings)
    blocker = settings.sending_blocker()
    if blocker:
        return _hold(delivery_id, blocker)

    # Wait for our slot outside any transaction, then lock the delivery for the send itself.
    key = ratelimit.limiter_key(settings.key, CUSTOM_EVENTS_PATH)
    sleep(ratelimit.reserve(key, per_second=settings.rate_limit_per_second))
    client = (client_factory or _client_for)(settings)
    with transaction.atomic():
        delivery = Delivery.objects.select_for_update(skip_locked=True).filter(pk=delivery_id).first()
        if delivery is None or delivery.is_final:
            return delivery
        if _too_old(delivery, settings, timezone.now()):
            return _mark_expired(delivery, settings)
        return _send(delivery, client, settings, policy or RetryPolicy.from_settings())


def _client_for(settings: AttentiveSettings) -> AttentiveClient:
    return AttentiveClient(api_key=settings.key, base_url=settings.api_url)


def _deadline(delivery: Delivery, settings: AttentiveSettings) -> datetime:
    return delivery.occurred_at + settings.max_event_age


def _too_old(delivery: Delivery, settings: AttentiveSettings, now: datetime) -> bool:
    return now >= _deadline(delivery, settings)


def _send(delivery: Delivery, client: AttentiveClient, settings: AttentiveSettings, policy: RetryPolicy) -> Delivery:
    started_at = timezone.now()
    clock = time.perf_counter()
    status_code, body, error = None, "", ""
    try:
        response = client.post_custom_event(delivery.payload)
        status_code, body = response.status_code, response.text
    except AttentiveError as exc:
        status_code, body, error = exc.status, exc.body, str(exc)
        failure = exc
    else:
        failure = None
    duration_ms = (time.perf_counter() - clock) * 1000
    delivery.attempts += 1

    if failure is None:
        outcome = DeliveryAttempt.Outcome.DELIVERED
        delivery.status, delivery.delivered_at, delivery.next_attempt_at = Delivery.Status.DELIVERED, timezone.now(), None
        delivery.last_error = ""
    elif _retryable(failure):
        next_at = timezone.now() + policy.delay_after(delivery.attempts)
        if next_at >= _deadline(delivery, settings):
            outcome = DeliveryAttempt.Outcome.EXPIRED
            delivery.status, delivery.next_attempt_at = Delivery.Status.EXPIRED, None
            delivery.last_error = f"{error} — no retry fits before the maximum event age"
        else:
            outcome = DeliveryAttempt.Outcome.RETRY
            delivery.status, delivery.next_attempt_at = Delivery.Status.FAILED, next_at
            delivery.last_error = error + (
                " (check the API key in the Attentive settings)" if isinstance(failure, AttentiveAuthError) else ""
            )
            _queue(delivery, at=next_at)
    else:
        outcome = DeliveryAttempt.Outcome.DEAD
        delivery.status, delivery.next_attempt_at, delivery.last_error = Delivery.Status.DEAD, None, error

    DeliveryAttempt.objects.create(
        delivery=delivery,
        started_at=started_at,
        duration_ms=duration_ms,
        status_code=status_code,
        response_body=(body or "")[:MAX_STORED_RESPONSE],
        error=error,
        outcome=outcome,
    )
    delivery.save(update_fields=["attempts", "status", "delivered_at", "next_attempt_at", "last_error"])
    if outcome != DeliveryAttempt.Outcome.DELIVERED:
        logger.warning("delivery %s (%s): %s → %s", delivery.pk, delivery.external_event_id, error, outcome)
    return delivery


def _retryable(failure: AttentiveError) -> bool:
    if isinstance(failure, AttentiveConnectionError | AttentiveAuthError):
        return True
    if isinstance(failure, AttentiveRedirect):
        return False
    return isinstance(failure, AttentiveAPIError) and failure.status in RETRYABLE_STATUSES


def _hold(delivery_id: int, reason: str) -> Delivery | None:
    """Sending is blocked (switched off, no key): keep the delivery, with no job. Once sending
    can go ahead, ``sweep()`` queues every held delivery again (no job churn meanwhile)."""
    with transaction.atomic():
        delivery = Delivery.objects.select_for_update(skip_locked=True).filter(pk=delivery_id).first()
        if delivery is None or delivery.is_final:
            return delivery
        delivery.next_attempt_at = None
        delivery.last_error = f"held: {reason}"
        delivery.save(update_fields=["next_attempt_at", "last_error"])
    return delivery


def _expire(delivery_id: int, settings: AttentiveSettings) -> Delivery | None:
    with transaction.atomic():
        delivery = Delivery.objects.select_for_update(skip_locked=True).filter(pk=delivery_id).first()
        if delivery is None or delivery.is_final:
            return delivery
        return _mark_expired(delivery, settings)


def _mark_expired(delivery: Delivery, settings: AttentiveSettings) -> Delivery:
    delivery.status, delivery.next_attempt_at = Delivery.Status.EXPIRED, None
    age = settings.max_event_age
    delivery.last_error = (delivery.last_error + "; " if delivery.last_error else "") + (
        f"not sent: older than the maximum event age ({age})"
    )
    delivery.save(update_fields=["status", "next_attempt_at", "last_error"])
    return delivery


# --- housekeeping ----------------------------------------------------------------------------


@dataclass
class SweepResult:
    expired: int = 0
    requeued: int = 0


def sweep(*, now: datetime | None = None) -> SweepResult:
    """Expire what is too old to send, and queue again what lost its job (periodic)."""
    now = now or timezone.now()
    settings = AttentiveSettings.load()
    waiting = Delivery.objects.exclude(status__in=Delivery.FINAL)
    expired = waiting.filter(occurred_at__lte=now - settings.max_event_age).update(
        status=Delivery.Status.EXPIRED,
        next_attempt_at=None,
        last_error=f"not sent: older than the maximum event age ({settings.max_event_age})",
    )
    if settings.sending_blocker():
        return SweepResult(expired=expired)
    overdue = waiting.filter(
        Q(next_attempt_at__lte=now - OVERDUE_AFTER) | Q(next_attempt_at__isnull=True, created_at__lte=now - OVERDUE_AFTER)
    ).order_by("occurred_at")[:SWEEP_BATCH]
    requeued = 0
    with transaction.atomic():
        for delivery in overdue:
            _queue(delivery)
            requeued += 1
    return SweepResult(expired=expired, requeued=requeued)


# --- operators' actions --------------------------------------------------------------------


def retry_now(deliveries) -> int:
    """Queue an immediate try of each delivery that is still waiting (pending or failed)."""
    queued = 0
    with transaction.atomic():
        for delivery in deliveries.select_for_update().exclude(status__in=Delivery.FINAL):
            delivery.next_attempt_at = timezone.now()
            delivery.save(update_fields=["next_attempt_at"])
            _queue(delivery)
            queued += 1
    return queued


def replay(deliveries) -> int:
    """Send deliveries again, whatever their state, under the same ``externalEventId``.

    Replaying a delivered event sends it to Attentive a second time on purpose (an operator
    decided so); the attempt log keeps both sends. An event past its maximum age is not
    replayed: Attentive would not trigger journeys for it anyway.
    """
    settings = AttentiveSettings.load()
    now = timezone.now()
    replayed = 0
    with transaction.atomic():
        for delivery in deliveries.select_for_update():
            if _too_old(delivery, settings, now):
                continue
            delivery.status, delivery.next_attempt_at, delivery.delivered_at = Delivery.Status.PENDING, now, None
            delivery.save(update_fields=["status", "next_attempt_at", "delivered_at"])
            _queue(delivery)
            replayed += 1
    return replayed
