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

``push_attributes(user=…, properties=…)`` records a set of custom attributes the same way (a
``Delivery`` of kind "attributes", sent to ``POST /v1/attributes/custom`` under that endpoint's
own rate limit, with the same retries; its age counts from the push), unless it is the set
last pushed for that clientUserId (``AttributeSnapshot``).

Every try, retry and replay sends the same ``externalEventId``. A delivery is locked
(``SELECT … FOR UPDATE SKIP LOCKED``) while it is being sent, so two workers never send it
at once, and one queueing lock per delivery keeps at most one job waiting for it.
"""

from __future__ import annotations

import contextvars
import copy
import hashlib
import json
import logging
import math
import random
import uuid
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings as django_settings
from django.db import DatabaseError, IntegrityError, InterfaceError, OperationalError, connection, transaction
from django.db.models import Case, F, Q, When
from django.utils import timezone

from attentive_sync import ratelimit
from attentive_sync.client import CUSTOM_ATTRIBUTES_PATH, CUSTOM_EVENTS_PATH, AttentiveClient
from attentive_sync.errors import (
    AttentiveAPIError,
    AttentiveAuthError,
    AttentiveConnectionError,
    AttentiveError,
    AttentiveRedirect,
)
from attentive_sync.events import E164, CustomEvent, EventUser, InvalidEvent
from attentive_sync.jobs import queue_once
from attentive_sync.models import AttentiveSettings, AttributeSnapshot, Delivery, DeliveryAttempt

logger = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
MAX_STORED_RESPONSE = 2000
# A waiting delivery whose try is this late has lost its job (a worker died mid-send, or it
# was held while sending was off): the sweeper queues it again.
OVERDUE_AFTER = timedelta(seconds=django_settings.ATTENTIVE_SEND_LEASE_SECONDS)
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


# The ``event_type`` of attribute deliveries (for the admin's lists; not an Attentive event type).
ATTRIBUTES_EVENT_TYPE = "custom attributes"
# Each kind of delivery goes to its own endpoint, under its own rate limit (Attentive limits per endpoint).
KIND_PATHS = {Delivery.Kind.EVENT: CUSTOM_EVENTS_PATH, Delivery.Kind.ATTRIBUTES: CUSTOM_ATTRIBUTES_PATH}
ATTRIBUTE_NAME_MAX_LENGTH = 200  # ref §4
_ATTRIBUTES_NAMESPACE = uuid.UUID("6f0b6a8e-2c1d-5b8e-9a57-3f2d8c1e4a10")


def attributes_digest(properties: dict) -> str:
    """SHA-256 of the properties as canonical JSON: equal values, equal digest."""
    canonical = json.dumps(properties, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def attribute_problems(user: EventUser, properties: dict) -> list[str]:
    """What Attentive (or the change detection) would refuse in this push."""
    problems = []
    if not user.client_user_id:
        problems.append("user needs a clientUserId (the attributes last pushed are kept per clientUserId)")
    if not isinstance(properties, dict) or not properties:
        return problems + ["properties must be a non-empty object"]
    for name, value in properties.items():
        if not isinstance(name, str) or not name.strip() or len(name) > ATTRIBUTE_NAME_MAX_LENGTH:
            problems.append(f"attribute name {name!r} must be 1-{ATTRIBUTE_NAME_MAX_LENGTH} characters")
        # Attentive fixes an attribute's type by its first value and refuses arrays: only strings
        # and numbers (not booleans, objects, lists or null) are pushed.
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            problems.append(f"attribute {name!r} is {type(value).__name__}; only strings and numbers are pushed")
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append(f"attribute {name!r} is not a finite number")
        elif isinstance(value, str) and "\x00" in value:
            problems.append(f"attribute {name!r} contains a NUL character")
    if user.phone and not E164.match(user.phone):
        problems.append(f"user phone {user.phone!r} is not E.164 (like +13115552368)")
    return problems


def push_attributes(*, user: EventUser, properties: dict, dedup_key: str = "") -> ForwardResult | None:
    """Record ``properties`` as the custom attributes of ``user`` and queue their push,
    atomically with the caller's transaction, unless they equal the set last pushed for the
    user's clientUserId (returns None then).

    The set last pushed is remembered at once (``AttributeSnapshot``), so the same values are
    recorded once however often they are offered; a push that ends expired is not counted (the
    same values are pushed again next time), one Attentive refused (dead) is (pushing it again
    would be refused again). A waiting push a newer one replaced is never sent (``_claim``
    expires it as superseded), so a late retry cannot overwrite newer values. The dedup key
    defaults to uuid5(clientUserId, digest, push number): the number keeps A → B → A a third push. A caller's ``dedup_key`` replaces it; one already
    recorded is not queued again (``created=False``). Raises ``InvalidEvent`` for what
    Attentive would refuse."""
    if problems := attribute_problems(user, properties):
        raise InvalidEvent("; ".join(problems))
    user_payload = user.to_payload()
    digest = attributes_digest(properties)
    client_user_id = user.client_user_id
    with transaction.atomic():
        now = timezone.now()
        AttributeSnapshot.objects.get_or_create(client_user_id=client_user_id, defaults={"digest": "", "pushed_at": now})
        snapshot = (
            AttributeSnapshot.objects.select_for_update(of=("self",)).select_related("delivery")
            .get(client_user_id=client_user_id)
        )
        pushed = snapshot.delivery
        if snapshot.digest == digest and pushed is not None and pushed.status != Delivery.Status.EXPIRED:
            return None
        key = dedup_key or str(uuid.uuid5(_ATTRIBUTES_NAMESPACE, f"{client_user_id}\x1f{digest}\x1f{snapshot.pushes + 1}"))
        try:
            with transaction.atomic():  # a savepoint: a duplicate must not poison the caller
                delivery = Delivery.objects.create(
                    kind=Delivery.Kind.ATTRIBUTES,
                    external_event_id=key,
                    event_type=ATTRIBUTES_EVENT_TYPE,
                    payload={"user": user_payload, "properties": properties},
                    occurred_at=now,
                )
        except IntegrityError:
            return ForwardResult(Delivery.objects.get(external_event_id=key), created=False)
        snapshot.digest, snapshot.pushed_at, snapshot.delivery = digest, now, delivery
        snapshot.pushes += 1
        snapshot.save(update_fields=["digest", "pushed_at", "delivery", "pushes"])
        _queue(delivery)
    return ForwardResult(delivery, created=True)


def _job_lock(delivery_pk: int) -> str:
    return f"delivery:{delivery_pk}"


def _drop_waiting_jobs(delivery_pks: list[int]) -> None:
    """Delete the waiting jobs of deliveries a batch has taken over (as procrastinate's own
    cancel does for a job not started). Left in the queue they would run as no-ops, and a
    backlog of them slows every worker's job fetching."""
    with connection.cursor() as cursor:
        # procrastinate's Django models are read-only, hence SQL on its jobs table.
        cursor.execute(
            "DELETE FROM procrastinate_jobs WHERE status = 'todo' AND queueing_lock = ANY(%s)",
            [[_job_lock(pk) for pk in delivery_pks]],
        )


def _queue(delivery: Delivery, *, at: datetime | None = None) -> None:
    """Make the delivery's one waiting job run at ``at`` (default now), on the current
    transaction, so "retry now" means now and a retry keeps its backoff."""
    from attentive_sync.tasks import deliver_event

    queue_once(deliver_event, queueing_lock=_job_lock(delivery.pk), at=at, delivery_id=delivery.pk)


# --- sending ---------------------------------------------------------------------------------

# A job sends its own delivery and, while more are due, other waiting ones in batches: the
# queue's per-job overhead (a no-op job costs ~3 ms here) would otherwise cap delivery below
# Attentive's rate. Jobs whose delivery a batch already sent end after two queries.
BATCH_SIZE = 50
SEND_THREADS = 16
# How long one job keeps draining a backlog before it lets the worker take other jobs.
DRAIN_SECONDS = 10.0
# A claimed batch is the claiming worker's for this long (sending it takes seconds at most:
# the rate limit's wait plus one ATTENTIVE_TIMEOUT_SECONDS per request; 2 minutes by default).
SEND_LEASE = timedelta(seconds=django_settings.ATTENTIVE_SEND_LEASE_SECONDS)
# How late a send may leave after its rate-limit slot before the slot counts as missed (at
# any rate r, sends then stay under r x 1.01 + 1 in any second).
SLOT_TOLERANCE = 0.01
# No send leaves in the last part of its batch's lease (a send can take the whole timeout).
LEASE_MARGIN = timedelta(seconds=2 * django_settings.ATTENTIVE_TIMEOUT_SECONDS)
# Shorter waits are not worth a sleep (the OS wakes us a millisecond late anyway).
MIN_SLEEP = 0.001

_send_pool = ThreadPoolExecutor(max_workers=SEND_THREADS, thread_name_prefix="attentive-send")
# A send is released only when a pool thread is free to start it at once: a send queued
# behind busy threads would start late, together with the ones after it.
_free_send_threads = threading.BoundedSemaphore(SEND_THREADS)
_thread_clients = threading.local()


@dataclass
class _Try:
    """What one HTTP try of one delivery gave."""

    started_at: datetime
    duration_ms: float
    status_code: int | None = None
    body: str = ""
    failure: AttentiveError | None = None


def deliver(
    delivery_id: int,
    *,
    policy: RetryPolicy | None = None,
    client_factory: Callable[[AttentiveSettings], AttentiveClient] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    batch_size: int = BATCH_SIZE,
) -> Delivery | None:
    """The job's body: one try at this delivery, then at other due ones while a backlog lasts.

    Returns the delivery as it ended up (None if it no longer exists)."""
    settings = AttentiveSettings.load()
    delivery = Delivery.objects.filter(pk=delivery_id).first()
    if delivery is None:
        return None
    if not delivery.is_final:
        if _too_old(delivery, settings, timezone.now()):
            _expire(delivery_id, settings)
        elif blocker := settings.sending_blocker():
            return _hold(delivery_id, blocker)
    if settings.sending_blocker():
        return Delivery.objects.filter(pk=delivery_id).first()
    policy = policy or RetryPolicy.from_settings()
    factory = client_factory or _client_for
    first: int | None = delivery_id
    stop_at = time.monotonic() + DRAIN_SECONDS
    while True:
        claimed = _send_batch(first, settings, policy, factory, sleep, batch_size)
        first = None
        if claimed < batch_size or time.monotonic() >= stop_at:
            break
    return Delivery.objects.filter(pk=delivery_id).first()


def _send_batch(first: int | None, settings, policy, factory, sleep, batch_size: int) -> int:
    """Claim up to ``batch_size`` due deliveries (``first`` before the others), send them
    concurrently within the shared rate limit, record every try; return how many were claimed."""
    claimed, lease = _claim(first, settings, batch_size)
    if claimed:
        recorded: set[int] = set()

        def record(deliveries: list[Delivery], tries: list[_Try | None]) -> None:
            _record_within_lease(deliveries, tries, settings, policy, lease, sleep)
            recorded.update(delivery.pk for delivery in deliveries)

        # Each kind to its own endpoint under its own limiter (events first); tries in claim order.
        by_pk: dict[int, _Try | None] = {}
        for kind in KIND_PATHS:
            if group := [delivery for delivery in claimed if delivery.kind == kind]:
                tries = _send_all(group, settings, factory, lease, kind=kind, record=record)
                by_pk.update(zip((d.pk for d in group), tries))
        rest = [delivery for delivery in claimed if delivery.pk not in recorded]
        if rest:
            record(rest, [by_pk.get(delivery.pk) for delivery in rest])
    return len(claimed)


# Waits between tries to record a batch while the database is unreachable (then every 4 s).
RECORD_RETRY_WAITS = (0.5, 1.0, 2.0)


def _record_within_lease(claimed, tries, settings, policy, lease: datetime, sleep) -> None:
    """Record the batch, trying again while the database is unreachable (a restart, a
    failover) and the lease is still the batch's. Results given up would send those events
    to Attentive again once the lease lapses: an outage longer than the lease still does."""
    waits = iter(RECORD_RETRY_WAITS)
    while True:
        try:
            with transaction.atomic():
                # Copies: ``_record`` counts the try on each delivery it is given, and a try
                # whose transaction was lost (at the retries' defer, say) must not count twice.
                _record([copy.copy(delivery) for delivery in claimed], tries, settings, policy, lease)
            return
        except (OperationalError, InterfaceError) as exc:
            wait = next(waits, 4.0)
            if timezone.now() + timedelta(seconds=wait) >= lease:
                raise
            logger.warning(
                "could not record the tries of %d deliveries (%s); trying again in %g s",
                len(claimed), str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__, wait,
            )
            try:
                connection.close()  # the broken connection; the next query opens a new one
            except DatabaseError:
                pass
            sleep(wait)


def _claim(first: int | None, settings, batch_size: int) -> tuple[list[Delivery], datetime]:
    """Lease due deliveries to this worker (``leased_until``): no other worker, retry or replay
    takes them while they are sent outside any transaction, and their own waiting jobs are
    dropped. A worker that dies mid-send lets the lease run out; the sweeper then queues them
    again (same externalEventId)."""
    with transaction.atomic():
        now = timezone.now()
        lease = now + SEND_LEASE
        due = (
            Q(status__in=[Delivery.Status.PENDING, Delivery.Status.FAILED])
            & (Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
            & (Q(leased_until__isnull=True) | Q(leased_until__lte=now))
        )
        wanted = (Q(pk=first) & due) | due if first else due
        batch = list(
            Delivery.objects.filter(wanted)
            .select_for_update(skip_locked=True)
            .annotate(is_first=Case(When(pk=first or 0, then=0), default=1))
            .order_by("is_first", "occurred_at")[:batch_size]
        )
        _note_lapsed_leases([delivery for delivery in batch if delivery.leased_until is not None], now)
        claimed = []
        newer = _newer_attributes(batch)
        for delivery in batch:
            if _too_old(delivery, settings, now):
                _mark_expired(delivery, settings)
            elif delivery.pk in newer:
                _mark_expired(
                    delivery, settings, reason=f"superseded by a newer set of attributes (delivery {newer[delivery.pk]})",
                    lost=False,
                )
            else:
                claimed.append(delivery)
        Delivery.objects.filter(pk__in=[d.pk for d in claimed]).update(leased_until=lease)
        _drop_waiting_jobs([d.pk for d in claimed])
    return claimed, lease


LAPSED_LEASE_ERROR = (
    "the worker sending this stopped before writing Attentive's answer (killed, or its database gone longer "
    "than the lease): Attentive may have received it; sent again under the same externalEventId"
)


def _note_lapsed_leases(deliveries: list[Delivery], now: datetime) -> None:
    """Record a try with an unknown answer for each delivery whose lease lapsed unwritten (a
    written result clears the lease): the one way at-least-once can send an event twice, so the
    attempt log says so where it may have happened, and counts it as a try."""
    if not deliveries:
        return
    DeliveryAttempt.objects.bulk_create(
        DeliveryAttempt(
            delivery=delivery,
            started_at=delivery.leased_until - SEND_LEASE,  # when its batch was claimed
            duration_ms=(now - (delivery.leased_until - SEND_LEASE)).total_seconds() * 1000,
            error=LAPSED_LEASE_ERROR,
            outcome=DeliveryAttempt.Outcome.UNKNOWN,
        )
        for delivery in deliveries
    )
    Delivery.objects.filter(pk__in=[d.pk for d in deliveries]).update(attempts=F("attempts") + 1)
    for delivery in deliveries:
        delivery.attempts += 1
        delivery.leased_until = None  # noted once: whoever saves the row next clears it (or leases it anew)
        logger.warning(
            "delivery %s (%s): its lease lapsed unwritten; sending again", delivery.pk, delivery.external_event_id,
            extra={"delivery_id": delivery.pk},
        )


def _newer_attributes(deliveries: list[Delivery]) -> dict[int, int]:
    """Attribute deliveries that a later push for the same clientUserId replaced (pk → the
    newer one's pk): sent late (a retry, a replay, or in the same batch) they would overwrite
    newer values at Attentive, so they are not sent at all."""
    by_user = {
        d.pk: (d.payload.get("user") or {}).get("externalIdentifiers", {}).get("clientUserId")
        for d in deliveries
        if d.kind == Delivery.Kind.ATTRIBUTES
    }
    if not by_user:
        return {}
    latest = dict(
        AttributeSnapshot.objects.filter(client_user_id__in=set(by_user.values()), delivery__isnull=False)
        .values_list("client_user_id", "delivery_id")
    )
    return {pk: latest[user] for pk, user in by_user.items() if latest.get(user, pk) != pk}


# Each try is written as soon as its answer arrives while the releasing thread has time before
# its next slot (the thread wakes for it), not only at the batch's end: a worker killed
# mid-batch (SIGKILL, a lost machine) leaves unwritten — so sent again once the lease lapses,
# the one case at-least-once allows — only the sends whose answer had arrived but was not yet
# committed (one write, a few ms), plus those still at Attentive. (Written at the batch's end:
# 12 events twice after one SIGKILL in the chaos run; every 0.1 s: 3 to 4 per run of three.)
# A write never makes a send miss its slot: it waits for a gap of twice the last write's
# duration, or, when slots leave no such gap (the limiter opened up), for the next release
# RECORD_AT_LEAST_EVERY after the last write.
RECORD_AT_LEAST_EVERY = 0.1


def _send_all(
    deliveries: list[Delivery], settings, factory, lease: datetime, *, kind: str = Delivery.Kind.EVENT,
    record: Callable[[list[Delivery], list[_Try]], None] | None = None,
) -> list[_Try | None]:
    """POST each delivery's payload, each within ``SLOT_TOLERANCE`` of its own reserved slot;
    return each one's try, or None for one not sent (the lease or its age ran out first, or
    the batch stopped on an error): those are handed back, never lost.

    This thread releases each send at its slot to a free pool thread (pool threads never
    wait: a send queued behind busy threads would leave late, bunched with the next ones). A
    releaser that has fallen behind (a busy CPU) does not catch up in a burst over slots
    other workers now use: it skips the slots it missed, and reserves fresh ones only when
    all it holds have passed."""
    path = KIND_PATHS[kind]
    key = ratelimit.limiter_key(settings.key, path)
    # Stop releasing well before the lease ends: after it, another worker may claim the rows.
    send_until = lease - LEASE_MARGIN

    def send(delivery: Delivery) -> _Try:
        started_at, clock = timezone.now(), time.perf_counter()
        try:
            client = _thread_client(settings, factory)
            if path == CUSTOM_EVENTS_PATH:
                response = client.post_custom_event(delivery.payload)
            else:
                response = client.request("POST", path, json_body=delivery.payload)
        except AttentiveError as exc:
            return _Try(started_at, (time.perf_counter() - clock) * 1000, exc.status, exc.body, exc)
        except Exception as exc:  # a bug must cost a retry, not the whole batch's results
            logger.exception("sending delivery %s failed unexpectedly", delivery.pk, extra={"delivery_id": delivery.pk})
            failure = AttentiveConnectionError(f"the send failed unexpectedly ({exc.__class__.__name__})")
            return _Try(started_at, (time.perf_counter() - clock) * 1000, failure=failure)
        finally:
            _free_send_threads.release()
        return _Try(started_at, (time.perf_counter() - clock) * 1000, response.status_code, response.text)

    futures: list = [None] * len(deliveries)
    slots: list[float] = []
    written: set[int] = set()
    # Set by each send's future once it is done (a done-callback runs after the result is set).
    completed = threading.Event()
    # When the last write ended and how long one took (a write is given room only where it fits).
    last_write_ended, write_seconds = time.monotonic(), 0.005

    def write_completed() -> None:
        nonlocal last_write_ended, write_seconds
        started = time.monotonic()
        completed.clear()  # before looking, so a send completing meanwhile wakes us again
        done = [i for i, future in enumerate(futures) if future is not None and i not in written and future.done()]
        if record is not None and done:
            record([deliveries[i] for i in done], [futures[i].result() for i in done])
            written.update(done)
            write_seconds = time.monotonic() - started
        last_write_ended = time.monotonic()

    def wait_writing(until: float) -> None:
        """Wait for a slot, writing the tries that complete meanwhile if there is room."""
        while (room := until - time.monotonic() - 2 * write_seconds) > MIN_SLEEP:
            if not completed.wait(room):
                break
            write_completed()
        if (remaining := until - time.monotonic()) > MIN_SLEEP:
            time.sleep(remaining)

    try:
        for index, delivery in enumerate(deliveries):
            while True:
                if completed.is_set() and time.monotonic() - last_write_ended >= RECORD_AT_LEAST_EVERY:
                    write_completed()
                if not slots:
                    slots = [time.monotonic() + wait for wait in ratelimit.reserve_many(
                        key, len(deliveries) - index, per_second=settings.rate_limit_per_second
                    )]
                slot = slots.pop(0)
                wait_writing(slot)
                now = timezone.now()
                if now >= send_until or _too_old(delivery, settings, now):
                    break  # not sent: handed back (or expired) when the batch is recorded
                _free_send_threads.acquire()
                if time.monotonic() <= slot + SLOT_TOLERANCE:
                    # In this job's log context (job id; ``send`` names its own delivery).
                    futures[index] = _send_pool.submit(contextvars.copy_context().run, send, delivery)
                    futures[index].add_done_callback(lambda _: completed.set())
                    break
                # Missed this slot (a busy CPU): skip it, never send late into the next one's time.
                _free_send_threads.release()
                while slots and slots[0] + SLOT_TOLERANCE < time.monotonic():
                    slots.pop(0)
    except Exception:
        # Whatever stopped the releasing (the limiter's database gone, say): what was sent is
        # still recorded below, the rest handed back.
        logger.exception("a delivery batch stopped releasing sends")
    pending = {future for future in futures if future is not None}
    while pending:
        _, pending = wait_for_futures(pending, return_when=FIRST_COMPLETED)
        try:
            write_completed()
        except (OperationalError, InterfaceError):
            logger.exception("the tries of a delivery batch could not be written as they completed")
            break
    return [future.result() if future is not None and i not in written else None for i, future in enumerate(futures)]


def _thread_client(settings: AttentiveSettings, factory) -> AttentiveClient:
    """One client per send thread and settings, so connections are reused between batches."""
    wanted = (factory, settings.key, settings.api_url)
    if getattr(_thread_clients, "wanted", None) != wanted:
        _thread_clients.wanted, _thread_clients.client = wanted, factory(settings)
    return _thread_clients.client


def _client_for(settings: AttentiveSettings) -> AttentiveClient:
    return AttentiveClient(
        api_key=settings.key, base_url=settings.api_url, total_timeout=django_settings.ATTENTIVE_TIMEOUT_SECONDS
    )


def _record(deliveries: list[Delivery], tries: list[_Try | None], settings, policy: RetryPolicy, lease) -> None:
    """Apply each try's outcome: delivered, a retry scheduled, dead or expired; one attempt row
    each. Deliveries not sent are handed back (or expired). Only rows still under this
    batch's lease are written: a batch that outlived its lease cannot overwrite another's."""
    # Locked (in pk order: no two writers wait on each other in a cycle): another worker that claimed a row after the
    # lease ran out must either be seen here or wait for this write, never be overwritten by it.
    still_ours = set(
        Delivery.objects.select_for_update().filter(pk__in=[d.pk for d in deliveries], leased_until=lease)
        .order_by("pk").values_list("pk", flat=True)
    )
    attempts, retries, handed_back, written = [], [], [], []
    now = timezone.now()
    for delivery, attempt in zip(deliveries, tries):
        if delivery.pk not in still_ours:
            logger.warning(
                "delivery %s outlived its lease; its result is not recorded", delivery.pk, extra={"delivery_id": delivery.pk}
            )
            continue
        delivery.leased_until = None
        written.append(delivery)
        if attempt is None:
            if _too_old(delivery, settings, now):
                delivery.status, delivery.next_attempt_at = Delivery.Status.EXPIRED, None
                delivery.last_error = f"not sent: older than the maximum event age ({settings.max_event_age})"
            else:
                delivery.next_attempt_at = now
                handed_back.append(delivery)
            continue
        delivery.attempts += 1
        failure = attempt.failure
        # PostgreSQL text cannot hold NUL characters, and an answer may contain them.
        error = str(failure).replace("\x00", "") if failure else ""
        if failure is None:
            outcome = DeliveryAttempt.Outcome.DELIVERED
            # When Attentive accepted it, not when the batch was recorded.
            accepted_at = attempt.started_at + timedelta(milliseconds=attempt.duration_ms)
            delivery.status, delivery.delivered_at, delivery.next_attempt_at = Delivery.Status.DELIVERED, accepted_at, None
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
                retries.append(delivery)
        else:
            outcome = DeliveryAttempt.Outcome.DEAD
            delivery.status, delivery.next_attempt_at, delivery.last_error = Delivery.Status.DEAD, None, error
        attempts.append(
            DeliveryAttempt(
                delivery=delivery,
                started_at=attempt.started_at,
                duration_ms=attempt.duration_ms,
                status_code=attempt.status_code,
                response_body=(attempt.body or "").replace("\x00", "")[:MAX_STORED_RESPONSE],
                error=error,
                outcome=outcome,
            )
        )
        if outcome != DeliveryAttempt.Outcome.DELIVERED:
            logger.warning(
                "delivery %s (%s): %s → %s", delivery.pk, delivery.external_event_id, error, outcome,
                extra={"delivery_id": delivery.pk},
            )
    _save_outcomes(written)
    DeliveryAttempt.objects.bulk_create(attempts)
    for delivery in retries:
        _queue(delivery, at=delivery.next_attempt_at)
    for delivery in handed_back:
        _queue(delivery)


_SAVE_OUTCOMES = f"""
UPDATE {Delivery._meta.db_table} AS delivery
SET attempts = outcome.attempts, status = outcome.status, delivered_at = outcome.delivered_at,
    next_attempt_at = outcome.next_attempt_at, last_error = outcome.last_error, leased_until = NULL,
    dead_letter_at = CASE WHEN outcome.status IN ('dead', 'expired') THEN statement_timestamp() END
FROM unnest(%s::bigint[], %s::integer[], %s::text[], %s::timestamptz[], %s::timestamptz[], %s::text[])
    AS outcome (id, attempts, status, delivered_at, next_attempt_at, last_error)
WHERE delivery.id = outcome.id
"""


def _save_outcomes(deliveries: list[Delivery]) -> None:
    """One UPDATE for a whole batch (Django's bulk_update builds a CASE per row and field:
    measured at 2 ms of CPU per delivery, half the worker's cost)."""
    if not deliveries:
        return
    columns = zip(
        *((d.pk, d.attempts, d.status, d.delivered_at, d.next_attempt_at, d.last_error) for d in deliveries)
    )
    with connection.cursor() as cursor:
        cursor.execute(_SAVE_OUTCOMES, [list(column) for column in columns])


def _deadline(delivery: Delivery, settings: AttentiveSettings) -> datetime:
    return delivery.occurred_at + settings.max_event_age


def _too_old(delivery: Delivery, settings: AttentiveSettings, now: datetime) -> bool:
    return now >= _deadline(delivery, settings)


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
        _note_lapsed_leases([delivery] if delivery.leased_until is not None else [], timezone.now())
        return _mark_expired(delivery, settings)


def _mark_expired(delivery: Delivery, settings: AttentiveSettings, *, reason: str = "", lost: bool = True) -> Delivery:
    """Expire it unsent; ``lost`` (a dead letter) unless newer values went instead."""
    delivery.status, delivery.next_attempt_at, delivery.leased_until = Delivery.Status.EXPIRED, None, None
    delivery.dead_letter_at = timezone.now() if lost else None
    reason = reason or f"older than the maximum event age ({settings.max_event_age})"
    delivery.last_error = (delivery.last_error + "; " if delivery.last_error else "") + f"not sent: {reason}"
    delivery.save(update_fields=["status", "next_attempt_at", "leased_until", "dead_letter_at", "last_error"])
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
        dead_letter_at=now,
        last_error=f"not sent: older than the maximum event age ({settings.max_event_age})",
    )
    if settings.sending_blocker():
        return SweepResult(expired=expired)
    overdue = waiting.filter(
        Q(next_attempt_at__lte=now - OVERDUE_AFTER) | Q(next_attempt_at__isnull=True, created_at__lte=now - OVERDUE_AFTER)
    ).exclude(leased_until__gt=now).order_by("occurred_at")[:SWEEP_BATCH]
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
        in_flight = Q(leased_until__gt=timezone.now())  # being sent right now: it will be recorded
        for delivery in deliveries.select_for_update().exclude(status__in=Delivery.FINAL).exclude(in_flight):
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
        for delivery in deliveries.select_for_update().exclude(leased_until__gt=now):
            if _too_old(delivery, settings, now):
                continue
            delivery.status, delivery.next_attempt_at, delivery.delivered_at = Delivery.Status.PENDING, now, None
            delivery.dead_letter_at = None
            delivery.save(update_fields=["status", "next_attempt_at", "delivered_at", "dead_letter_at"])
            _queue(delivery)
            replayed += 1
    return replayed
