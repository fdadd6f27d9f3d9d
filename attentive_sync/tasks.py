"""Background jobs of the Attentive side (procrastinate). Thin: they call services by id."""

from __future__ import annotations

import logging

from procrastinate import RetryStrategy
from procrastinate.contrib.django import app

from attentive_sync.errors import (
    AttentiveAuthError,
    AttentiveConnectionError,
    AttentiveRateLimited,
    AttentiveServerError,
)
from attentive_sync.jobs import MAINTENANCE_CRON

# Registers SegmentPush (it lives with its services, not in models.py) wherever jobs run.
from attentive_sync.segments import SegmentPush  # noqa: E402,F401

logger = logging.getLogger(__name__)


@app.task(name="attentive_sync.deliver_event", queue="deliveries")
def deliver_event(delivery_id: int) -> None:
    """One try at one delivery; the service schedules any retry itself."""
    from attentive_sync.delivery import deliver

    deliver(delivery_id)


@app.periodic(cron=MAINTENANCE_CRON, periodic_id="attentive-delivery-sweep")
@app.task(name="attentive_sync.sweep_deliveries", queue="deliveries")
def sweep_deliveries(timestamp: int) -> None:
    """Every minute: expire deliveries past the maximum age, requeue those that lost their job."""
    from attentive_sync.delivery import sweep

    sweep()


# --- subscriptions and identity: plain values in, since this app knows nothing of members -------

# Worth another try later; any other Attentive error is recorded on the person and final.
_TRANSIENT_RETRY = RetryStrategy(
    max_attempts=5,
    exponential_wait=4,
    retry_exceptions={AttentiveConnectionError, AttentiveServerError, AttentiveRateLimited, AttentiveAuthError},
)


@app.task(name="attentive_sync.subscribe_contact", queue="contacts", retry=_TRANSIENT_RETRY)
def subscribe_contact(client_user_id: str, phone: str, email: str, channels: list[str], automatic: bool = False) -> None:
    """Subscribe one person (checking eligibility first); ``automatic``: no person asked."""
    from attentive_sync import subscriptions

    _run_subscription_job(
        "subscribe", client_user_id, phone, email, automatic,
        lambda contact, client: subscriptions.subscribe(contact, client=client, channels=channels, automatic=automatic),
    )


@app.task(name="attentive_sync.check_contact_eligibility", queue="contacts", retry=_TRANSIENT_RETRY)
def check_contact_eligibility(client_user_id: str, phone: str, email: str, channels: list[str]) -> None:
    from attentive_sync import subscriptions

    _run_subscription_job(
        "eligibility check", client_user_id, phone, email, False,
        lambda contact, client: subscriptions.check_eligibility(contact, client=client, channels=channels),
    )


@app.task(name="attentive_sync.unsubscribe_contact", queue="contacts", retry=_TRANSIENT_RETRY)
def unsubscribe_contact(client_user_id: str, phone: str, email: str, channels: list[str]) -> None:
    from attentive_sync import subscriptions

    _run_subscription_job(
        "unsubscribe", client_user_id, phone, email, False,
        lambda contact, client: subscriptions.unsubscribe(contact, client=client, channels=channels),
    )


def _run_subscription_job(what: str, client_user_id: str, phone: str, email: str, automatic: bool, service) -> None:
    """Refusals and Attentive's refusals are recorded or logged and final; outages raise, so
    procrastinate tries again (``_TRANSIENT_RETRY``)."""
    from attentive_sync import subscriptions
    from attentive_sync.errors import AttentiveError
    from attentive_sync.identity import retryable

    try:
        contact = subscriptions.Contact(client_user_id, phone=phone, email=email)
        client = subscriptions.client_from_settings(automatic=automatic)
        results = service(contact, client)
    except (subscriptions.ContactRefused, subscriptions.NotConfigured) as exc:
        logger.warning("Attentive %s of %s not done: %s", what, client_user_id, exc)
        return
    except AttentiveError as exc:
        if retryable(exc):
            raise
        logger.warning("Attentive %s of %s refused: %s", what, client_user_id, exc)
        return
    logger.info("Attentive %s of %s: %s", what, client_user_id, "; ".join(map(str, results)))


@app.periodic(cron="* * * * *", periodic_id="attentive-identity-links")
@app.task(
    name="attentive_sync.link_identities", queue="contacts", lock="attentive-identity-links",
    queueing_lock="attentive-identity-links",
)
def link_identities(timestamp: int | None = None) -> None:
    """Link pending clientUserId ↔ phone/email sets for about a minute; queue the next run at
    once while some are left (every minute anyway, for those held while sending was off)."""
    from attentive_sync import identity

    run = identity.link_pending()
    if run.linked or run.failed or run.stopped:
        logger.info(
            "identity links: %d linked, %d unchanged, %d failed%s", run.linked, run.unchanged, run.failed,
            f"; stopped: {run.stopped}" if run.stopped else "",
        )
    if run.more:
        identity.queue_link_job()


@app.task(name="attentive_sync.push_segment", queue="contacts", retry=_TRANSIENT_RETRY, pass_context=True)
def push_segment(context, push_id: int) -> None:
    """Send a segment push's remaining batches; an outage raises, so procrastinate tries again
    and the push resumes after the last batch Attentive accepted. After the last try the push
    is marked failed, not left "sending" with no job to finish it."""
    from attentive_sync.segments import segment_push_give_up, segment_push_send

    from attentive_sync import subscriptions

    try:
        client = subscriptions.client_from_settings()
    except subscriptions.NotConfigured as exc:  # recorded on the push, final
        segment_push_give_up(push_id, reason=str(exc))
        return
    try:
        push = segment_push_send(push_id, client=client)
    except tuple(_TRANSIENT_RETRY.retry_exceptions) as exc:
        if context.job.attempts >= _TRANSIENT_RETRY.max_attempts:  # procrastinate will not try again
            segment_push_give_up(push_id, reason=(
                f"Attentive still failing after {context.job.attempts + 1} tries ({exc}); resume the push once it answers."
            ))
        raise
    logger.info("%s: %s, %d batches sent", push, push.state, push.batches_sent)
