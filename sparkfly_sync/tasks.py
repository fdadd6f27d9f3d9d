"""Background jobs of the Sparkfly side (procrastinate). Thin: they call services by name/id."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from procrastinate import exceptions as procrastinate_exceptions
from procrastinate.contrib.django import app

from attentive_sync.jobs import in_transaction, queue_once

logger = logging.getLogger(__name__)



@app.task(name="sparkfly_sync.sync_mirror", queue="sync")
def sync_mirror(resources: list[str] | None = None) -> None:
    """Run the mirror sync of the given resources (default: all)."""
    from sparkfly_sync.client import client_from_settings
    from sparkfly_sync.sync import sync_all

    runs = sync_all(client=client_from_settings(), resources=resources)
    failed = [f"{run.resource}: {run.failure}" for run in runs if run.status == "failed"]
    if failed:
        logger.warning("mirror sync finished with failures: %s", "; ".join(failed))


def queue_mirror_sync(resources: list[str] | None = None) -> bool:
    """Queue a mirror sync of ``resources`` (default all); False when the same one already waits.

    procrastinate refuses a second waiting job with the same queueing lock through a failed
    INSERT; the savepoint keeps that failure from aborting the caller's transaction.
    """
    queueing_lock = "sparkfly-mirror-sync:" + (",".join(sorted(resources)) if resources else "all")
    try:
        with transaction.atomic():
            # lock: syncs run one after another, never two at once on two workers.
            in_transaction(sync_mirror.configure(queueing_lock=queueing_lock, lock="sparkfly-mirror-sync")).defer(
                resources=resources
            )
    except procrastinate_exceptions.AlreadyEnqueued:
        return False
    return True


@app.periodic(cron="* * * * *", periodic_id="sparkfly-mirror-schedule")
@app.task(name="sparkfly_sync.schedule_mirror_sync", queue="sync")
def schedule_mirror_sync(timestamp: int) -> None:
    """Every minute: queue a full sync once some resource's latest sync started
    SPARKFLY_SYNC_INTERVAL_MINUTES ago (or it was never synced).

    Checking each minute (rather than a cron built from the interval) lets any interval work
    and lets a changed interval apply without restarting workers.
    """
    from sparkfly_sync.selectors import minutes_since_stalest_sync
    from sparkfly_sync.sync import RESOURCES

    interval = settings.SPARKFLY_SYNC_INTERVAL_MINUTES
    if interval <= 0 or not settings.SPARKFLY_API_URL:
        return
    elapsed = minutes_since_stalest_sync(RESOURCES)
    if (elapsed is None or elapsed >= interval) and queue_mirror_sync():
        logger.info("queued the periodic mirror sync at %s", timezone.now().isoformat())


# --- inbound: what the webhooks recorded ------------------------------------------------------------


@app.task(name="sparkfly_sync.forward_redemption", queue="inbound")
def forward_redemption(redemption_id: int) -> None:
    """Enrich a recorded redemption and forward it to Attentive."""
    from sparkfly_sync import forwarding

    forwarding.forward_redemption(redemption_id)


@app.task(name="sparkfly_sync.process_notification", queue="inbound")
def process_notification(notification_id: int) -> None:
    """Act on a recorded event notification (refresh the mirror, forward a points redemption)."""
    from sparkfly_sync import forwarding

    forwarding.process_notification(notification_id)


def record_lock(record) -> str:
    from sparkfly_sync.models import Redemption

    return f"{'redemption' if isinstance(record, Redemption) else 'notification'}:{record.pk}"


def queue_record(record, *, at=None) -> None:
    """Queue the one job of a redemption or notification (run at ``at``, default now), on the
    caller's transaction. One job waits per record at most, and two never run at once."""
    from sparkfly_sync.models import Redemption

    if isinstance(record, Redemption):
        queue_once(forward_redemption, queueing_lock=record_lock(record), at=at, exclusive=True, redemption_id=record.pk)
    else:
        queue_once(
            process_notification, queueing_lock=record_lock(record), at=at, exclusive=True, notification_id=record.pk
        )


@app.periodic(cron="* * * * *", periodic_id="sparkfly-inbound-sweep")
@app.task(name="sparkfly_sync.sweep_inbound", queue="inbound")
def sweep_inbound(timestamp: int) -> None:
    """Every minute: queue again any redemption or notification left queued without a job (its
    job ended in an error before it could record one), and the events of issued credentials
    that were not forwarded when they were issued."""
    from sparkfly_sync.forwarding import requeue_stuck
    from sparkfly_sync.issuance import queue_pending_events

    requeued = requeue_stuck()
    if requeued:
        logger.warning("requeued %d redemptions/notifications that had lost their job", requeued)
    queued = queue_pending_events()
    if queued:
        logger.warning("queued the Attentive events of %d issued credentials not forwarded yet", queued)


# --- issuance: a credential for each of many members -------------------------------------------------


@app.task(name="sparkfly_sync.issue_credentials_batch", queue="issuance")
def issue_credentials_batch(batch_id: int) -> None:
    """Issue a batch's credentials member by member (``issuance.issue_batch``); queued with a
    lock per batch, so two workers never run the same batch at once."""
    from sparkfly_sync import issuance

    issuance.issue_batch(batch_id)


@app.task(name="sparkfly_sync.forward_issuance_events", queue="inbound")
def forward_issuance_events(request_id: int) -> None:
    """Forward an issued credential's ``offer_state_created`` events, when its issuance could
    not (``issuance.forward_issuance_events``); the sweep queues it again while they are pending."""
    from sparkfly_sync import issuance

    issuance.forward_issuance_events(request_id)


def queue_issuance_events(request_id: int) -> None:
    """Queue the one forwarding job of an issued request's events, on the caller's transaction."""
    from sparkfly_sync.issuance import ISSUANCE_EVENTS_LOCK_PREFIX

    lock = f"{ISSUANCE_EVENTS_LOCK_PREFIX}{request_id}"
    queue_once(forward_issuance_events, queueing_lock=lock, exclusive=True, request_id=request_id)
