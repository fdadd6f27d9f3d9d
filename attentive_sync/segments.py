"""Pushing members into an Attentive v2 segment through the bulk segment-members API.

* A ``SegmentPush`` records one push: the segment's externalId, where its members come from
  (``source``, the dotted path of a function of the caller's app, and ``criteria``, plain JSON
  handed to it), the total, and per batch Attentive's bulk job id. attentive_sync knows nothing
  of members: the source turns the criteria into pages of ``(key, {email, phone, clientUserId})``
  after a key, so a push that stopped resumes after the last batch Attentive accepted.
* One background job sends the batches, at most ``SEGMENT_MEMBERS_MAX`` (10,000) members each,
  each request on the shared limiter (per key and endpoint, Attentive's 100 a second). A job
  whose worker died is put back by the stalled-job retry; a push whose job gave up (an outage
  past its retries) is marked failed with the reason; either can be resumed from the admin
  (``segment_push_resume``), after the last accepted batch.
* Attentive processes each batch later; its job's status is read when someone looks
  (``job_statuses``), not stored: it changes at Attentive.

The model lives here, not in models.py, so this feature is one module; ``attentive_sync.admin``
and ``attentive_sync.tasks`` import it at start-up, which registers it with the app.
"""

from __future__ import annotations

import time

from django.db import IntegrityError, models, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from attentive_sync import ratelimit
from attentive_sync.client import SEGMENT_MEMBERS_MAX, SEGMENT_MEMBERS_PATH, AttentiveClient
from attentive_sync.errors import AttentiveError
from attentive_sync.identity import retryable

SEGMENT_RATE_PER_SECOND = 100  # v2 spec: "Default Rate Limit: 100 requests per second"
STATUSES_SHOWN = 20  # job statuses asked of Attentive when a push's page is opened


class SegmentPush(models.Model):
    class State(models.TextChoices):
        QUEUED = "queued"
        SENDING = "sending"
        SENT = "sent", "sent (Attentive processes the batches)"
        FAILED = "failed"

    segment_external_id = models.CharField("segment externalId", max_length=255)
    source = models.CharField(max_length=200, help_text="Where the members come from (a function's dotted path).")
    criteria = models.JSONField(default=dict, blank=True, help_text="The filters the members were chosen by.")
    total = models.PositiveIntegerField(default=0, help_text="Members matching when the push was requested.")
    batch_size = models.PositiveIntegerField(default=SEGMENT_MEMBERS_MAX)
    batches_sent = models.PositiveIntegerField(default=0)
    members_sent = models.PositiveIntegerField(default=0)
    last_key = models.BigIntegerField(default=0, help_text="The last member sent (a resumed push starts after it).")
    job_ids = models.JSONField("Attentive bulk job ids", default=list, blank=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED)
    errors = models.JSONField(default=list, blank=True)
    requested_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The admin form's key: a double submit (or a resubmitted page) records one push.
    idempotency_key = models.UUIDField("idempotency key", null=True, blank=True, unique=True, editable=False)

    class Meta:
        app_label = "attentive_sync"
        ordering = ["-requested_at"]

    def __str__(self) -> str:
        return f"Segment push {self.pk} to {self.segment_external_id}"


def segment_push_create(*, segment_external_id: str, source: str, criteria: dict, total: int,
                        batch_size: int = SEGMENT_MEMBERS_MAX, idempotency_key=None) -> SegmentPush:
    """Record the push and queue its job, in one transaction. A push already recorded with
    ``idempotency_key`` is returned instead, nothing queued."""
    if not 1 <= batch_size <= SEGMENT_MEMBERS_MAX:
        raise ValueError(f"batch_size must be 1 to {SEGMENT_MEMBERS_MAX:,}")
    import_string(source)  # a wrong source fails here, in front of the admin, not in the worker
    if idempotency_key and (existing := segment_push_by_key(idempotency_key)):
        return existing
    try:
        with transaction.atomic():
            push = SegmentPush.objects.create(
                segment_external_id=segment_external_id, source=source, criteria=criteria, total=total,
                batch_size=batch_size, idempotency_key=idempotency_key,
            )
            _queue_push(push)
    except IntegrityError:  # the same key submitted at the same moment: that push is this one
        if idempotency_key and (existing := segment_push_by_key(idempotency_key)):
            return existing
        raise
    return push


def segment_push_by_key(idempotency_key) -> SegmentPush | None:
    """The push recorded with this form key, if any (a selector)."""
    return SegmentPush.objects.filter(idempotency_key=idempotency_key).first()


def _job_lock(push: SegmentPush) -> str:
    return f"segment-push-{push.pk}"


def _queue_push(push: SegmentPush) -> None:
    """The push's one job, on the caller's transaction; two never run at once."""
    from attentive_sync import tasks
    from attentive_sync.jobs import queue_once

    queue_once(tasks.push_segment, queueing_lock=_job_lock(push), exclusive=True, push_id=push.pk)


def segment_push_resume(*, push: SegmentPush) -> bool:
    """Queue a push again from after the last batch Attentive accepted: one that failed (an
    outage that outlasted its job's retries, a refusal whose cause was fixed), or one left
    queued or sending by a job that is gone (a killed worker's job is put back). False when it
    was sent, or its job still waits or runs."""
    from attentive_sync.jobs import job_of, retry_stalled

    with transaction.atomic():
        locked = SegmentPush.objects.select_for_update().get(pk=push.pk)
        job, job_id = job_of(_job_lock(locked))
        if locked.state == SegmentPush.State.SENT or job in ("waiting", "running"):
            return False
        locked.state, locked.finished_at = SegmentPush.State.QUEUED, None
        locked.save(update_fields=["state", "finished_at"])
        if job == "stalled":
            retry_stalled(job_id)  # a second job could not start while the dead one holds the lock
        else:
            _queue_push(locked)
    return True


def segment_push_give_up(push_id: int, *, reason: str) -> SegmentPush:
    """Mark a push that cannot go on failed, with the reason (it can be resumed later)."""
    with transaction.atomic():
        push = SegmentPush.objects.select_for_update().get(pk=push_id)
        if push.state != SegmentPush.State.SENT:
            push.state, push.finished_at, push.errors = SegmentPush.State.FAILED, timezone.now(), [*push.errors, reason]
            push.save(update_fields=["state", "finished_at", "errors"])
    return push


def segment_push_send(push_id: int, *, client: AttentiveClient) -> SegmentPush:
    """Send the push's remaining batches, each once the shared limiter allows; record each
    accepted batch at once. An Attentive refusal stops the push as failed with Attentive's words."""
    push = SegmentPush.objects.get(pk=push_id)
    if push.state in (SegmentPush.State.SENT, SegmentPush.State.FAILED):
        return push
    source = import_string(push.source)
    limiter = ratelimit.limiter_key(client.api_key, f"POST {SEGMENT_MEMBERS_PATH}")
    push.state = SegmentPush.State.SENDING
    push.save(update_fields=["state"])
    while page := source(push.criteria, after=push.last_key, limit=push.batch_size):
        [wait] = ratelimit.reserve_many(limiter, 1, per_second=SEGMENT_RATE_PER_SECOND)
        if wait > 0:
            time.sleep(wait)
        try:
            answer = client.add_segment_members(
                external_id=push.segment_external_id, members=[member for _, member in page]
            )
        except AttentiveError as exc:
            push.errors = [*push.errors, f"batch {push.batches_sent + 1}: {exc}"]
            if retryable(exc):  # an outage: the job is tried again and resumes here
                push.save(update_fields=["errors"])
                raise
            push.state = SegmentPush.State.FAILED
            push.finished_at = timezone.now()
            push.save(update_fields=["errors", "state", "finished_at"])
            return push
        push.batches_sent += 1
        push.members_sent += len(page)
        push.last_key = page[-1][0]
        push.job_ids = [*push.job_ids, answer.get("batchJobId", "")]
        push.save(update_fields=["batches_sent", "members_sent", "last_key", "job_ids"])
    push.state = SegmentPush.State.SENT
    push.finished_at = timezone.now()
    push.save(update_fields=["state", "finished_at"])
    return push


def job_statuses(push: SegmentPush, *, client: AttentiveClient, limit: int = STATUSES_SHOWN) -> list[dict]:
    """Attentive's status of the push's newest ``limit`` bulk jobs (``GET /v2/bulk/job/{id}``);
    a job Attentive could not answer for carries its error instead."""
    statuses = []
    for job_id in push.job_ids[-limit:]:
        try:
            statuses.append(client.bulk_job(job_id))
        except AttentiveError as exc:
            statuses.append({"bulkJobId": job_id, "status": "unknown", "error": str(exc)})
    return statuses
