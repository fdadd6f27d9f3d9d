"""The worker's half of a redemption, and of a notification: enrich, build the event, forward.

A conversion callback names ids only (credential, offer, store); the Attentive event needs the
credential's code, the member's phone/email/identifier, the offer's name and the campaign
XID. They come from the mirror; what the mirror lacks is fetched from Sparkfly here, in the
worker, and upserted into the mirror (never in the request: ARCHITECTURE "Never call Sparkfly
or Attentive inside the request").

Failures are of two kinds:

* Sparkfly unreachable, overloaded or refusing the key (``TRANSIENT_ERRORS``): the work is
  tried again later with backoff, until the event is older than the Attentive settings'
  maximum event age (past it, Attentive would not trigger a journey anyway);
* anything else (a credential Sparkfly does not have, a member with no contact, a payload we
  cannot read): the record is marked failed with the reason; an administrator can fix the
  cause and retry it from the admin.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import models, transaction
from django.utils import timezone

from attentive_sync.delivery import forward
from attentive_sync.events import CustomEvent, InvalidEvent
from attentive_sync.models import AttentiveSettings
from sparkfly_sync import attentive_members, events, loyalty_attributes, payloads
from sparkfly_sync.client import MEMBER_SEARCH_PATH, SparkflyClient, client_from_settings
from sparkfly_sync.errors import SparkflyError, SparkflyNotFound
from sparkfly_sync.models import (
    Credential,
    ForwardingState,
    LoyaltyEnrollment,
    Member,
    Offer,
    OfferChannel,
    Redemption,
    Store,
)
from sparkfly_sync.sync import TRANSIENT_ERRORS, refresh_row, resource_for_model

logger = logging.getLogger(__name__)

RETRY_BASE = timedelta(seconds=5)
RETRY_CAP = timedelta(minutes=10)


class CannotForward(Exception):
    """A reason this record will not become an event until a person fixes something."""


@dataclass(frozen=True)
class Outcome:
    state: str
    retry_at: datetime | None = None


def retry_delay(attempts: int, rng: random.Random | None = None) -> timedelta:
    """Full-jitter exponential backoff: uniform(0, min(cap, base * 2**(attempts-1)))."""
    ceiling = min(RETRY_CAP.total_seconds(), RETRY_BASE.total_seconds() * 2 ** (attempts - 1))
    return timedelta(seconds=(rng or random).uniform(0, ceiling))


class Mirror:
    """Mirrored rows by Sparkfly id, fetched from Sparkfly (once, lazily) when missing."""

    def __init__(self, client_factory: Callable[[], SparkflyClient]) -> None:
        self._client_factory = client_factory
        self._client: SparkflyClient | None = None

    @property
    def client(self) -> SparkflyClient:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def get(self, model: type, sparkfly_id: int, *, complete: Callable[[object], bool] = lambda row: True, **parent):
        """The mirrored row; fetched and upserted first when missing (or not ``complete``)."""
        row = model.objects.filter(sparkfly_id=sparkfly_id).first()
        if row is not None and complete(row):
            return row
        self.refresh(model(sparkfly_id=sparkfly_id, **parent) if row is None else row)
        return model.objects.get(sparkfly_id=sparkfly_id)

    def refresh(self, row) -> None:
        item = resource_for_model(type(row)).item
        try:
            errors = refresh_row(row, client=self.client)
        except SparkflyNotFound:
            raise CannotForward(f"Sparkfly has no {item} {row.sparkfly_id}") from None
        except TRANSIENT_ERRORS:
            raise
        except (SparkflyError, payloads.PayloadError) as exc:
            raise CannotForward(f"{item} {row.sparkfly_id} could not be read from Sparkfly: {exc}") from None
        if errors:
            raise CannotForward("; ".join(errors))

    def member_by_identifier(self, identifier: str) -> Member | None:
        member = Member.objects.filter(identifier=identifier).first()
        if member is not None:
            return member
        try:
            body = self.client.get(MEMBER_SEARCH_PATH, identifier=identifier)
        except SparkflyNotFound:
            return None
        item = body.get("member")
        if not isinstance(item, dict):
            return None
        with transaction.atomic():
            resource_for_model(Member).write_items([item], f"member {identifier!r}")
        return Member.objects.filter(identifier=identifier).first()


# --- redemptions ------------------------------------------------------------------------------------


def forward_redemption(redemption_id: int, *, client_factory: Callable[[], SparkflyClient] = client_from_settings) -> Outcome:
    """Turn a recorded redemption into ``sparkfly.member.offer_state_redeemed`` and forward it."""
    redemption = Redemption.objects.filter(pk=redemption_id).first()
    if redemption is None or redemption.state not in OPEN_STATES:
        return Outcome(redemption.state if redemption else "gone")
    return _attempt(redemption, lambda: _redemption_event(redemption, Mirror(client_factory)))


def _redemption_event(redemption: Redemption, mirror: Mirror) -> CustomEvent:
    credential = mirror.get(Credential, redemption.credential_id, complete=lambda row: bool(row.identifier))
    member = _redeeming_member(credential, redemption, mirror)
    offer = mirror.get(Offer, redemption.offer_id)
    channel_id = credential.channel_id or redemption.channel_id
    offer_channel = OfferChannel.objects.filter(offer_id=offer.sparkfly_id, channel_id=channel_id).first()
    if redemption.xid and (offer_channel is None or offer_channel.xid != redemption.xid):
        # The callback's XID is Sparkfly's word for this redemption; the mirror may be stale.
        offer_channel = OfferChannel(offer_id=offer.sparkfly_id, channel_id=channel_id, xid=redemption.xid)
    if offer_channel is None:
        mirror.refresh(offer)  # the full offer lists its channels and their XIDs
        offer_channel = OfferChannel.objects.filter(offer_id=offer.sparkfly_id, channel_id=channel_id).first()
    if offer_channel is None:
        raise CannotForward(f"offer {offer.sparkfly_id} is not published on channel {channel_id} at Sparkfly")
    return events.offer_state_redeemed(
        credential=credential,
        member=member,
        offer=offer,
        offer_channel=offer_channel,
        store=_store(redemption.store_id or credential.store_id, offer, mirror),
        redeemed_at=redemption.redeemed_at,
        external_event_id=str(redemption.dedup_key),
    )


def _redeeming_member(credential: Credential, redemption: Redemption, mirror: Mirror) -> Member:
    if credential.member_id is not None:
        return mirror.get(Member, credential.member_id)
    if redemption.sf_uid:
        member = mirror.member_by_identifier(redemption.sf_uid)
        if member is not None:
            return member
    raise CannotForward(
        f"credential {credential.sparkfly_id} belongs to no member"
        + (f", and Sparkfly has no member {redemption.sf_uid!r} (sf_uid)" if redemption.sf_uid else "")
        + ": Attentive could not be told who redeemed it"
    )


def _store(store_id: int | None, offer: Offer, mirror: Mirror) -> Store | None:
    """The redemption's store, for its number; a store Sparkfly will not show us only costs
    the event its store number ("" as seed 000 has it for unknown values)."""
    if store_id is None:
        return None
    store = Store.objects.filter(sparkfly_id=store_id).first()
    if store is not None or offer.merchant_id is None:
        return store
    try:
        return mirror.get(Store, store_id, merchant_id=offer.merchant_id)
    except CannotForward as exc:
        logger.info("redemption at store %s forwarded without its number: %s", store_id, exc)
        return None


# --- shared: one attempt, its outcome recorded ----------------------------------------------------------


# What a worker may still act on; the others are done (or failed until a person retries).
OPEN_STATES = (ForwardingState.QUEUED, ForwardingState.FAILED)


def _attempt(record, build: Callable[[], CustomEvent | None]) -> Outcome:
    """Run ``build`` and forward its event; record the outcome on ``record`` (a Redemption or
    a Notification), and schedule the next try of a transient failure. Jobs of one record
    never run at once (procrastinate's lock), so the record is this job's to change."""
    record.attempts += 1
    try:
        event = build()
        if event is None:
            return _finish(record, ForwardingState.PROCESSED)
        with transaction.atomic():
            result = forward(event)
            if result is None:
                return _finish(
                    record, ForwardingState.SKIPPED, failure=f"{event.type} is switched off in the Attentive settings"
                )
            return _finish(record, ForwardingState.FORWARDED, delivery=result.delivery)
    except (CannotForward, InvalidEvent) as exc:
        return _finish(record, ForwardingState.FAILED, failure=str(exc))
    except TRANSIENT_ERRORS as exc:
        return _transient(record, exc)
    except Exception as exc:  # noqa: BLE001 — an accepted event is never dropped by a bug or an outage
        logger.exception("%s: unexpected error; it will be tried again", record)
        return _transient(record, exc)


def _transient(record, exc: Exception) -> Outcome:
    from sparkfly_sync.tasks import queue_record

    age = timezone.now() - (getattr(record, "redeemed_at", None) or record.occurred_at or record.received_at)
    max_age = AttentiveSettings.load().max_event_age
    # Only an event for Attentive goes stale; a mirror refresh is worth doing however late.
    if age >= max_age and _makes_an_event(record):
        return _finish(
            record,
            ForwardingState.FAILED,
            failure=f"Sparkfly could not be reached for {age} ({exc}); the event is now older than the "
            f"maximum event age ({max_age}), too old for Attentive journeys. Retry it from the admin if it still matters.",
        )
    retry_at = timezone.now() + retry_delay(record.attempts)
    with transaction.atomic():
        _finish(record, ForwardingState.QUEUED, failure=f"try {record.attempts}: {exc}; next try at {retry_at:%H:%M:%S}")
        queue_record(record, at=retry_at)
    return Outcome(ForwardingState.QUEUED, retry_at=retry_at)


def _makes_an_event(record) -> bool:
    from sparkfly_sync.serializers import POINTS_REDEEMED

    return isinstance(record, Redemption) or record.event_name == POINTS_REDEEMED


def _finish(record, state: str, *, failure: str = "", delivery=None) -> Outcome:
    record.state = state
    record.failure = failure
    fields = ["state", "failure", "attempts", "updated_at"]
    if delivery is not None:
        record.delivery = delivery
        fields.append("delivery")
    if state in (ForwardingState.FORWARDED, ForwardingState.PROCESSED, ForwardingState.SKIPPED):
        done_field = "forwarded_at" if isinstance(record, Redemption) else "processed_at"
        setattr(record, done_field, timezone.now())
        fields.append(done_field)
    record.save(update_fields=fields)
    if state == ForwardingState.FAILED:
        logger.warning("%s not forwarded: %s", record, failure)
    return Outcome(state)


# --- notifications -----------------------------------------------------------------------------------


def process_notification(notification_id: int, *, client_factory: Callable[[], SparkflyClient] = client_from_settings) -> Outcome:
    """Act on a verified notification: refresh the mirror, and forward a points redemption."""
    from sparkfly_sync.models import Notification

    notification = Notification.objects.filter(pk=notification_id).first()
    if notification is None or notification.state not in (ForwardingState.QUEUED, ForwardingState.FAILED):
        return Outcome(notification.state if notification else "gone")
    return _attempt(notification, lambda: _notification_event(notification, Mirror(client_factory)))


def _notification_event(notification, mirror: Mirror) -> CustomEvent | None:
    from sparkfly_sync import serializers as shapes

    data = notification.payload.get("data") or {}
    name = notification.event_name
    if name in shapes.MEMBER_EVENTS:
        mirror.refresh(Member(sparkfly_id=int(data["member"]["id"])))
        attentive_members.member_mirrored(int(data["member"]["id"]))  # an identity link, queued
        return None
    if name == shapes.ENROLLMENT_CREATED:
        mirror.refresh(LoyaltyEnrollment(sparkfly_id=int(data["enrollment"]["id"])))
        attentive_members.enrollment_created(int(data["enrollment"]["id"]), mirror)  # a subscribe, queued
        loyalty_attributes.enrollment_changed(int(data["enrollment"]["id"]))  # an attributes job, queued
        return None
    if name == shapes.POINTS_AWARDED:
        mirror.refresh(LoyaltyEnrollment(sparkfly_id=int(data["member"]["enrollment"]["id"])))
        loyalty_attributes.enrollment_changed(int(data["member"]["enrollment"]["id"]))  # an attributes job, queued
        return None
    if name == shapes.POINTS_REDEEMED:
        return _points_redeemed_event(notification, data, mirror)
    raise CannotForward(f"the portal does not act on {name} notifications")


def _points_redeemed_event(notification, data: dict, mirror: Mirror) -> CustomEvent:
    from sparkfly_sync.serializers import RewardStateSerializer

    reward = RewardStateSerializer(data=data["reward_state"])
    reward.is_valid(raise_exception=True)  # checked when the notification was accepted
    state = reward.validated_data
    enrollment = LoyaltyEnrollment(sparkfly_id=int(data["member"]["enrollment"]["id"]))
    mirror.refresh(enrollment)  # its balance just changed
    enrollment = LoyaltyEnrollment.objects.get(sparkfly_id=enrollment.sparkfly_id)
    loyalty_attributes.enrollment_changed(enrollment.sparkfly_id)  # an attributes job, queued
    member = mirror.get(Member, enrollment.member_id or int(data["member"]["id"]))
    redeemed_at = notification.occurred_at or state.get("created_at") or notification.received_at
    return events.points_redeemed(
        member=member,
        enrollment=enrollment,
        reward_state=events.RewardState(
            id=state["id"],
            offer_state_id=state.get("offer_state_id"),
            credential_identifier=state.get("credential_identifier") or "",
            issued_point_value=state.get("issued_point_value"),
            created_at=state.get("created_at"),
        ),
        points_debit=int(data["points_redeemed"]),
        redeemed_at=redeemed_at,
        external_event_id=events.points_redemption_event_id(reward_state_id=state["id"]),
    )


# --- the admin's "retry" ---------------------------------------------------------------------------------


def requeue(records) -> int:
    """Queue failed, skipped (or stuck queued) redemptions or notifications for another try,
    now. Returns how many were queued; forwarded and processed ones are left alone (a delivery
    is replayed from the Attentive side, with the same externalEventId)."""
    from sparkfly_sync.tasks import queue_record

    queued = 0
    retryable = (*OPEN_STATES, ForwardingState.SKIPPED)
    for record in records:
        with transaction.atomic():
            # A conditional UPDATE, not a save of a possibly stale instance: a record a job
            # forwarded meanwhile stays forwarded.
            requeued = type(record).objects.filter(pk=record.pk, state__in=retryable)
            if requeued.update(state=ForwardingState.QUEUED, updated_at=timezone.now()):
                queue_record(record)
                queued += 1
    return queued


# A queued record whose last change is older than this, with no job waiting, lost its job.
STUCK_AFTER = timedelta(minutes=2)


def requeue_stuck(*, now: datetime | None = None) -> int:
    """Queue again every queued redemption and notification that has no job waiting or
    running (its job ended in an error before recording anything). Jobs of one record are
    exclusive and idempotent, so queueing one too many costs a no-op."""
    from django.db.models import Exists, OuterRef, Value
    from django.db.models.functions import Concat
    from procrastinate.contrib.django.models import ProcrastinateJob

    from sparkfly_sync.models import Notification

    cutoff = (now or timezone.now()) - STUCK_AFTER
    requeued = 0
    for model, prefix in ((Redemption, "redemption:"), (Notification, "notification:")):
        live_job = ProcrastinateJob.objects.filter(
            queueing_lock=Concat(Value(prefix), OuterRef("pk"), output_field=models.CharField()),
            status__in=("todo", "doing"),
        )
        stuck = model.objects.filter(state=ForwardingState.QUEUED, updated_at__lt=cutoff).exclude(Exists(live_job))
        requeued += requeue(stuck[:1000])
    return requeued
