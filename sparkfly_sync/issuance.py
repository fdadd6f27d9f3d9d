"""Credential issuance: the portal asks Sparkfly for a credential (a member's redeemable code)
for a channel and one or more offers, mirrors it, and tells Attentive.

The steps are the ones Sparkfly's credentials guide shows (seed 001, "Associating Multiple
Offers"):

1. check what the mirror knows (``local_refusal``; a channel, member or offer it lacks is
   fetched from Sparkfly first, so only Sparkfly's 404 refuses it), phrased exactly as
   Sparkfly phrases the same refusal (seed 001 "Validations and Errors"; the sandbox's
   ``_credential_errors``), so a person learns why before anything is created at Sparkfly;
2. ``POST /v1.0/credentials?member_id=…&channel_id=…`` creates the credential, still without a
   code; its id is recorded at once;
3. ``PUT /v1.0/credentials/{id}?channel_id=…&offer_ids=1,2`` attaches the offers, and Sparkfly
   generates the code;
4. one transaction mirrors the credential and marks the request issued, its events pending;
   a second forwards one ``sparkfly.member.offer_state_created`` per offer through the outbox
   (``attentive_sync.delivery.forward``) and marks them forwarded. Events not forwarded then
   are retried by the inbound sweep (``queue_pending_events``).

Never twice. Each issuance is an ``IssuanceRequest`` keyed by an idempotency key (the admin
form's hidden field, or one derived from the batch and the member):

* a key already issued or refused returns that result and calls nobody;
* a key being issued right now by another process (a PostgreSQL advisory lock on the key,
  held on the connection, not in a transaction, so the credential id commits the moment
  Sparkfly answers the POST) is returned pending;
* a key that failed (Sparkfly unreachable or failing) is tried again: from the PUT when the
  credential exists (once a GET of it shows the offers are not attached already), and after
  a POST whose answer was lost, only once Sparkfly's list of the member's credentials shows
  that the POST created nothing.

Refused (Sparkfly's 4xx, or the mirror's checks) is final and carries Sparkfly's own words;
failed (connection errors, 5xx, 429, a rejected key, an unreadable answer) carries the error as
the client reports it, Sparkfly's message included.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import CharField, F
from django.db.models.functions import Coalesce
from django.utils import timezone

from attentive_sync.delivery import forward
from attentive_sync.events import CustomEvent, InvalidEvent
from attentive_sync.jobs import job_of, queue_once, retry_stalled
from attentive_sync.models import AttentiveSettings
from sparkfly_sync import events, payloads
from sparkfly_sync.client import CREDENTIALS_PATH, SparkflyClient, client_from_settings
from sparkfly_sync.errors import (
    SparkflyAuthError,
    SparkflyConnectionError,
    SparkflyError,
    SparkflyNotFound,
    SparkflyRateLimited,
    SparkflyResponseError,
    SparkflyServerError,
    SparkflyValidationError,
    parse_error_body,
)
from sparkfly_sync.forwarding import CannotForward, Mirror
from sparkfly_sync.models import (
    Channel,
    Credential,
    IssuanceBatch,
    IssuanceRequest,
    LoyaltyEnrollment,
    Member,
    Offer,
    OfferChannel,
    Redemption,
)
from sparkfly_sync.sync import refresh_row, resource_for_model

logger = logging.getLogger(__name__)

# ASSUMPTION: client.py names no single-credential path (only the redeem and void ones below it);
# this is the one seed 001's PUT example uses, and the one the sandbox serves.
CREDENTIAL_PATH = f"{CREDENTIALS_PATH}/{{credential_id}}"

# Sparkfly's wording of each refusal the mirror can foresee (seed 001 "Validations and
# Errors", as the sandbox's _credential_errors and _offer_problem send them).
CHANNEL_BLANK = "Channel can't be blank and must be associated with your account and offer"
MEMBER_BLANK = "Member can't be blank"
OFFERS_NOT_ON_CHANNEL = "Offer not found or not eligible by channel, with id: {ids}"
OFFER_NOT_APPROVED = "offer {name} must be approved to generate a credential"
OFFER_NOT_ACTIVE = "Offer with ID {id} is no longer active"
MEMBER_NOT_ELIGIBLE = "Member must be eligible for offer: {name}"

APPROVED = Offer.Status.APPROVED
SETTLED = (IssuanceRequest.State.ISSUED, IssuanceRequest.State.REFUSED)
# Errors that say nothing about the request itself: the same request may succeed later.
RETRYABLE_ERRORS = (
    SparkflyConnectionError,
    SparkflyServerError,
    SparkflyRateLimited,
    SparkflyAuthError,
    SparkflyResponseError,
)
# After these, Sparkfly may have created the credential without our hearing of it.
UNANSWERED_ERRORS = (SparkflyConnectionError, SparkflyServerError, SparkflyResponseError)
# How far Sparkfly's clock may lag ours when a lost POST's credential is looked for.
CLOCK_SKEW = timedelta(minutes=5)
# A batch stops after this many members in a row failed: Sparkfly is down, and every further
# member would only wait out its own timeout. "Retry" picks up where it stopped.
MAX_FAILURES_IN_A_ROW = 10
# Fixed for ever: batch keys derived from it must stay the same across restarts.
BATCH_KEY_NAMESPACE = uuid.UUID("0d7c8f1e-4a52-4f0e-9d0c-1f3a0b6b2e71")


class IdempotencyKeyReused(ValueError):
    """An idempotency key sent again with another member, channel or offers."""


# --- the mirror's checks --------------------------------------------------------------------------


def mirrored_offers(offer_ids: Iterable[int]) -> dict[int, Offer | None]:
    """Each requested offer id with its mirrored offer (None when the mirror lacks it), in order."""
    offer_ids = list(offer_ids)
    found = Offer.objects.in_bulk(offer_ids, field_name="sparkfly_id")
    return {offer_id: found.get(offer_id) for offer_id in offer_ids}


def local_refusal(
    *, member: Member | None, channel_id: int, offers: Mapping[int, Offer | None], now: datetime
) -> str | None:
    """Why Sparkfly would refuse this issuance, as far as the mirror knows, in Sparkfly's words;
    None when the mirror sees no reason. ``member`` is the mirrored member (None when not
    mirrored); ``offers`` maps each requested offer id to its mirrored offer or None.

    Checked in Sparkfly's order, first failure wins: the channel, the member, every offer
    published on the channel, then each offer approved, active and within its limits."""
    if not Channel.objects.filter(sparkfly_id=channel_id).exists():
        return CHANNEL_BLANK
    if member is None:
        return MEMBER_BLANK
    published = set(
        OfferChannel.objects.filter(channel_id=channel_id, offer_id__in=list(offers)).values_list("offer_id", flat=True)
    )
    unusable = [offer_id for offer_id, offer in offers.items() if offer is None or offer_id not in published]
    if unusable:
        return OFFERS_NOT_ON_CHANNEL.format(ids=", ".join(map(str, unusable)))
    for offer in offers.values():
        if offer.status != APPROVED:
            return OFFER_NOT_APPROVED.format(name=offer.name)
        # ASSUMPTION: past stop_offering_at Sparkfly stops issuing the offer; it documents no
        # message of its own for it, so the one for an offer outside its dates is used.
        ended = [moment for moment in (offer.expires_at, offer.stop_offering_at) if moment is not None]
        if (offer.activates_at and offer.activates_at > now) or any(moment <= now for moment in ended):
            return OFFER_NOT_ACTIVE.format(id=offer.sparkfly_id)
        if not _within_redemption_limits(offer, member.sparkfly_id, now):
            return MEMBER_NOT_ELIGIBLE.format(name=offer.name)
    return None


def _within_redemption_limits(offer: Offer, member_id: int, now: datetime) -> bool:
    """The offer's redemption limits against the redemptions the portal was told of (its
    channels' conversion callbacks): a lower bound of Sparkfly's count, so this never refuses
    what Sparkfly would allow."""
    limits = (offer.max_redemptions, offer.max_redemptions_per_member, offer.max_redemptions_per_member_per_day)
    if all(limit is None for limit in limits):
        return True
    redemptions = Redemption.objects.filter(offer_id=offer.sparkfly_id)
    by_member = redemptions.filter(credential_id__in=Credential.objects.filter(member_id=member_id).values("sparkfly_id"))
    # Sparkfly's day is the UTC day.
    day_start = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    usage = (
        (redemptions, offer.max_redemptions),
        (by_member, offer.max_redemptions_per_member),
        (by_member.filter(redeemed_at__gte=day_start, redeemed_at__lt=day_start + timedelta(days=1)),
         offer.max_redemptions_per_member_per_day),
    )
    return all(limit is None or queryset[:limit].count() < limit for queryset, limit in usage)


# --- one issuance ----------------------------------------------------------------------------------


def issue_credential(
    *,
    member_id: int,
    channel_id: int,
    offer_ids: Sequence[int],
    idempotency_key: uuid.UUID | str,
    client: SparkflyClient,
    requested_by=None,
    batch: IssuanceBatch | None = None,
    now: datetime | None = None,
) -> IssuanceRequest:
    """Issue a credential for ``offer_ids`` on ``channel_id`` to ``member_id`` (Sparkfly ids),
    once per ``idempotency_key``. Returns the request: issued (``code``), refused or failed
    (``reason``), or pending while another process is issuing the same key.

    Call it outside any transaction: each step commits as it happens (the credential id the
    moment Sparkfly answers the POST), which an enclosing transaction would hold back."""
    member_id, channel_id = _sparkfly_id(member_id, "member id"), _sparkfly_id(channel_id, "channel id")
    offer_ids = _offer_id_list(offer_ids)
    request = _request_for(
        key=uuid.UUID(str(idempotency_key)), member_id=member_id, channel_id=channel_id, offer_ids=offer_ids,
        requested_by=requested_by, batch=batch,
    )
    if request.state in SETTLED:
        return request
    with _exclusively(request.idempotency_key) as ours:
        request.refresh_from_db()
        if not ours or request.state in SETTLED:
            return request
        if request.state == IssuanceRequest.State.FAILED:
            _reopen(request)
        return _issue(request, client=client, now=now or timezone.now())


def _request_for(*, key, member_id, channel_id, offer_ids, requested_by, batch) -> IssuanceRequest:
    request, created = IssuanceRequest.objects.get_or_create(
        idempotency_key=key,
        defaults={
            "member_id": member_id, "channel_id": channel_id, "offer_ids": offer_ids, "batch": batch,
            "requested_by": requested_by,
        },
    )
    if not created and (request.member_id, request.channel_id, sorted(request.offer_ids)) != (member_id, channel_id, sorted(offer_ids)):
        raise IdempotencyKeyReused(
            f"The idempotency key {key} was already used to issue offers {_ids(request.offer_ids)} on channel "
            f"{request.channel_id} to member {request.member_id}; another issuance needs a new key."
        )
    return request


@contextmanager
def _exclusively(key: uuid.UUID) -> Iterator[bool]:
    """Whether this connection holds the key's advisory lock (it is released with the
    connection, so a process that dies mid-issuance leaves the key free for a retry)."""
    lock_id = int.from_bytes(key.bytes[:8], "big", signed=True)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [lock_id])
        (acquired,) = cursor.fetchone()
    try:
        yield acquired
    finally:
        if acquired:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [lock_id])


def _issue(request: IssuanceRequest, *, client: SparkflyClient, now: datetime) -> IssuanceRequest:
    if request.credential_id is None:
        try:
            _mirror_missing_rows(request, client)
        except (SparkflyError, payloads.PayloadError) as exc:
            return _settle(
                request, IssuanceRequest.State.FAILED,
                reason=f"What the mirror lacks for this issuance could not be fetched from Sparkfly: {exc}",
            )
        refusal = local_refusal(
            member=Member.objects.filter(sparkfly_id=request.member_id).first(),
            channel_id=request.channel_id,
            offers=mirrored_offers(request.offer_ids),
            now=now,
        )
        if refusal:
            return _settle(request, IssuanceRequest.State.REFUSED, reason=refusal)
    resuming = request.credential_id is not None  # a try before this one reached the PUT
    _record(request, attempts=request.attempts + 1)
    try:
        if request.credential_id is None and request.awaiting_creation:
            _record(request, credential_id=_credential_created_unheard(request, client))
        if request.credential_id is None:
            _record(request, awaiting_creation=True)
            try:
                created = _credential_in(
                    client.request(
                        "POST", CREDENTIALS_PATH,
                        params={"member_id": request.member_id, "channel_id": request.channel_id}, idempotent=False,
                    )
                )
            except SparkflyError as exc:
                if not isinstance(exc, UNANSWERED_ERRORS):
                    _record(request, awaiting_creation=False)
                raise
            _record(request, credential_id=payloads.sparkfly_id(created), awaiting_creation=False)
        # A PUT tried before may have attached the offers without our hearing the answer: sent
        # again, Sparkfly would count the member against the offers' limits a second time (or
        # refuse it), so the credential is looked at first.
        credential = _credential_attached(request, client) if resuming else None
        if credential is None:
            credential = _credential_in(
                client.request(
                    "PUT", CREDENTIAL_PATH.format(credential_id=request.credential_id),
                    params={"channel_id": request.channel_id, "offer_ids": ",".join(map(str, request.offer_ids))},
                )
            )
    except SparkflyError as exc:
        retryable = isinstance(exc, RETRYABLE_ERRORS)
        state = IssuanceRequest.State.FAILED if retryable else IssuanceRequest.State.REFUSED
        reason = str(exc) if retryable or not exc.sparkfly_message else exc.sparkfly_message
        return _settle(request, state, reason=reason)
    except payloads.PayloadError as exc:
        return _settle(request, IssuanceRequest.State.FAILED, reason=f"Sparkfly's answer could not be read: {exc}")
    return _issued(request, credential, client=client, now=now)


def _mirror_missing_rows(request: IssuanceRequest, client: SparkflyClient) -> None:
    """Fetch into the mirror the rows ``local_refusal`` would miss (the channel, the member,
    each offer with its channel links), so that it refuses only for a row Sparkfly itself does
    not have (a 404), never for a mirror that is merely behind. Any other error from Sparkfly
    is raised: the issuance then fails, to be tried again, rather than being refused."""
    if not Channel.objects.filter(sparkfly_id=request.channel_id).exists() and not _fetched(
        Channel(sparkfly_id=request.channel_id), client
    ):
        return  # refused: the channel comes first in Sparkfly's checks
    if not Member.objects.filter(sparkfly_id=request.member_id).exists() and not _fetched(
        Member(sparkfly_id=request.member_id), client
    ):
        return
    published = set(
        OfferChannel.objects.filter(channel_id=request.channel_id, offer_id__in=request.offer_ids).values_list(
            "offer_id", flat=True
        )
    )
    for offer_id, offer in mirrored_offers(request.offer_ids).items():
        if offer is None or offer_id not in published:
            _fetched(offer or Offer(sparkfly_id=offer_id), client)  # the full offer lists its channels


def _fetched(row, client: SparkflyClient) -> bool:
    """Whether Sparkfly has the row (now mirrored); False on its 404."""
    try:
        errors = refresh_row(row, client=client)
    except SparkflyNotFound:
        return False
    if errors:
        raise payloads.PayloadError("; ".join(errors))
    return True


def _credential_attached(request: IssuanceRequest, client: SparkflyClient) -> dict | None:
    """The request's credential as Sparkfly has it, when it already holds a code and every
    requested offer (a PUT whose answer was lost); None when the PUT is still to be sent."""
    credential = _credential_in(client.get(CREDENTIAL_PATH.format(credential_id=request.credential_id)))
    attached = credential.get("offer_ids") if isinstance(credential.get("offer_ids"), list) else []
    if credential.get("identifier") and all(offer_id in attached for offer_id in request.offer_ids):
        return credential
    return None


def _credential_in(body: dict) -> dict:
    """The credential of an answer; an ``errors`` map that is not empty is a refusal, whatever
    the status (seed 001: "the "errors" field on the returned object should be blank")."""
    message, field_errors, _ = parse_error_body({"errors": body.get("errors")})
    if field_errors:
        raise SparkflyValidationError(f"Sparkfly refused the credential: {message}", sparkfly_message=message, errors=field_errors)
    credential = body.get("credential")
    if not isinstance(credential, dict):
        raise SparkflyResponseError(f"Sparkfly's answer has no credential object (keys: {sorted(body)[:10]})")
    return credential


def _credential_created_unheard(request: IssuanceRequest, client: SparkflyClient) -> int | None:
    """The credential a POST whose answer never came created, if it did: one of the member's
    on the request's channel, without offers, created since the request, and no other
    request's. Raises SparkflyError when Sparkfly cannot be asked (the POST must then wait)."""
    since = request.created_at - CLOCK_SKEW
    taken = set(
        IssuanceRequest.objects.filter(member_id=request.member_id, credential__isnull=False).values_list(
            "credential_id", flat=True
        )
    )
    candidates = []
    for page in client.iter_pages(
        CREDENTIALS_PATH, collection="credentials", item="credential", per_page=settings.SPARKFLY_PAGE_SIZE,
        params={"member_id": request.member_id},
    ):
        for item in page.items:
            try:
                row = payloads.credential_row(item)
            except payloads.PayloadError:
                continue
            if (
                row["member_id"] == request.member_id
                and row["channel_id"] == request.channel_id
                and not row["offer_ids"]
                and row["sparkfly_id"] not in taken
                and (row["sparkfly_created_at"] is None or row["sparkfly_created_at"] >= since)
            ):
                candidates.append(row["sparkfly_id"])
    return min(candidates) if candidates else None


def _issued(request: IssuanceRequest, payload: dict, *, client: SparkflyClient, now: datetime) -> IssuanceRequest:
    code = payload.get("identifier")
    attached = payload.get("offer_ids") if isinstance(payload.get("offer_ids"), list) else []
    missing = [offer_id for offer_id in request.offer_ids if offer_id not in attached]
    if not code or missing:
        return _settle(
            request,
            IssuanceRequest.State.FAILED,
            reason=f"Sparkfly accepted credential {request.credential_id} but "
            + (f"did not attach offers {_ids(missing)}" if missing else "gave it no code")
            + "; submit again to retry.",
        )
    # Issued is committed first, with its events pending: whatever then goes wrong telling
    # Attentive (an outage, a bug, a killed process), the credential is not issued again, and
    # the inbound sweep forwards the events later (``queue_pending_events``).
    with transaction.atomic():
        resource_for_model(Credential).write_items([payload], f"credential {request.credential_id}")
        _record(request, events=IssuanceRequest.Events.PENDING)
        _settle(request, IssuanceRequest.State.ISSUED, code=str(code))
    forward_issuance_events(request.pk, client_factory=lambda: client, now=now)
    request.refresh_from_db()
    return request


# --- telling Attentive ---------------------------------------------------------------------------


NOT_TOLD = f"Issued, but Attentive was not told ({events.OFFER_STATE_CREATED}): {{problem}}"
NOT_TOLD_YET = (
    f"Issued; Attentive not told yet ({events.OFFER_STATE_CREATED}), tried again every minute until "
    "{deadline:%Y-%m-%d %H:%M} UTC: {problem}"
)


def forward_issuance_events(
    request_id: int, *, client_factory: Callable[[], SparkflyClient] = client_from_settings, now: datetime | None = None
) -> str:
    """Forward an issued request's ``offer_state_created`` events (one per offer) through the
    outbox, and record on the request, in the same transaction, that they were. Returns the
    request's ``events`` state afterwards.

    The mirror rows the events need are fetched from Sparkfly first when missing, outside the
    transaction (which must not stay open across HTTP). A problem a person must fix (no
    contact, an offer no longer on the channel), an event type switched off, or an issuance
    older than the Attentive settings' maximum event age gives up with the reason; anything
    else (Sparkfly unreachable, an error of ours) leaves the events pending for the sweep."""
    request = IssuanceRequest.objects.get(pk=request_id)
    if request.state != IssuanceRequest.State.ISSUED or request.events != IssuanceRequest.Events.PENDING:
        return request.events
    now = now or timezone.now()
    issued_at = _issued_at(request)
    deadline = issued_at + AttentiveSettings.load().max_event_age
    if now >= deadline:
        return _events_settled(
            request, IssuanceRequest.Events.NOT_FORWARDED,
            reason=NOT_TOLD.format(problem=f"still not forwarded when older than the maximum event age "
                                   f"({deadline - issued_at}), too old for Attentive journeys"),
        )
    try:
        credential, member, campaigns = _event_rows(request, Mirror(client_factory))
        issuance_events = [
            events.offer_state_created(
                credential=credential, member=member, offer=offer, offer_channel=link,
                issued_at=_issued_at(request, credential),
                external_event_id=events.issuance_event_id(credential_id=credential.sparkfly_id, offer_id=offer.sparkfly_id),
            )
            for offer, link in campaigns
        ]
        with transaction.atomic():
            # Locked and checked again: the sweep's job and the issuing process may both try.
            if not IssuanceRequest.objects.select_for_update().filter(
                pk=request.pk, events=IssuanceRequest.Events.PENDING
            ).exists():
                request.refresh_from_db()
                return request.events
            if any(forward(event) is None for event in issuance_events):
                return _events_settled(
                    request, IssuanceRequest.Events.NOT_FORWARDED,
                    reason=NOT_TOLD.format(problem="the event type is switched off in the Attentive settings"),
                )
            return _events_settled(request, IssuanceRequest.Events.FORWARDED, reason="")
    except (CannotForward, InvalidEvent, payloads.PayloadError) as exc:
        return _events_settled(request, IssuanceRequest.Events.NOT_FORWARDED, reason=NOT_TOLD.format(problem=exc))
    except Exception as exc:  # noqa: BLE001 — an issued credential's events are never dropped by an outage or a bug
        if not isinstance(exc, SparkflyError):
            logger.exception("issuance %s: its events could not be forwarded; the sweep tries again", request.idempotency_key)
        return _events_settled(
            request, IssuanceRequest.Events.PENDING, reason=NOT_TOLD_YET.format(deadline=deadline, problem=exc)
        )


def _issued_at(request: IssuanceRequest, credential: Credential | None = None) -> datetime:
    """When the credential was issued: the event's ``occurredAt``, which its age is counted from."""
    credential = credential or Credential.objects.filter(sparkfly_id=request.credential_id).first()
    moments = (credential.sparkfly_updated_at, credential.sparkfly_created_at) if credential else ()
    return next((moment for moment in moments if moment is not None), None) or request.finished_at or timezone.now()


def _events_settled(request: IssuanceRequest, events_state: str, *, reason: str) -> str:
    _record(request, events=events_state, reason=reason)
    if reason:
        logger.warning("issuance %s: %s", request.idempotency_key, reason)
    return events_state


def _event_rows(
    request: IssuanceRequest, mirror: Mirror
) -> tuple[Credential, Member, list[tuple[Offer, OfferChannel]]]:
    credential = mirror.get(Credential, request.credential_id, complete=lambda row: bool(row.identifier))
    member = mirror.get(Member, request.member_id)
    campaigns = []
    for offer_id in request.offer_ids:
        offer = mirror.get(Offer, offer_id)
        link = OfferChannel.objects.filter(offer_id=offer_id, channel_id=request.channel_id).first()
        if link is None:
            mirror.refresh(offer)  # the full offer lists its channels and their XIDs
            link = OfferChannel.objects.filter(offer_id=offer_id, channel_id=request.channel_id).first()
        if link is None:
            raise CannotForward(f"offer {offer_id} is not published on channel {request.channel_id} at Sparkfly")
        campaigns.append((offer, link))
    return credential, member, campaigns


# A pending request is left this long to the process that issued it before the sweep steps in.
EVENTS_GRACE = timedelta(minutes=1)


def queue_pending_events(*, now: datetime | None = None, limit: int = 500) -> int:
    """Queue a forwarding job for each issued request whose events are still pending and have
    no job waiting (the sweep, every minute). Each job forwards them, or gives up past the
    maximum event age. Returns how many were queued."""
    from django.db.models import Exists, OuterRef, Value
    from django.db.models.functions import Concat
    from procrastinate.contrib.django.models import ProcrastinateJob

    from sparkfly_sync.tasks import queue_issuance_events

    cutoff = (now or timezone.now()) - EVENTS_GRACE
    live_job = ProcrastinateJob.objects.filter(
        queueing_lock=Concat(Value(ISSUANCE_EVENTS_LOCK_PREFIX), OuterRef("pk"), output_field=CharField()),
        status__in=("todo", "doing"),
    )
    pending = (
        IssuanceRequest.objects.filter(
            state=IssuanceRequest.State.ISSUED, events=IssuanceRequest.Events.PENDING, finished_at__lt=cutoff
        )
        .exclude(Exists(live_job))
        .order_by("finished_at")
        .values_list("pk", flat=True)[:limit]
    )
    queued = 0
    for request_id in pending:
        queue_issuance_events(request_id)
        queued += 1
    return queued


ISSUANCE_EVENTS_LOCK_PREFIX = "issuance-events:"


def _record(request: IssuanceRequest, **changes) -> None:
    """Save these fields now: each step of an issuance must survive the process."""
    for name, value in changes.items():
        setattr(request, name, value)
    request.save(update_fields=[name.removesuffix("_id") if name == "credential_id" else name for name in changes])


def _reopen(request: IssuanceRequest) -> None:
    """A failed request being tried again is pending until it settles anew (and no longer
    counts as failed in its batch)."""
    with transaction.atomic():
        _record(request, state=IssuanceRequest.State.PENDING, finished_at=None)
        if request.batch_id is not None:
            IssuanceBatch.objects.filter(pk=request.batch_id).update(failed=F("failed") - 1)


def _settle(request: IssuanceRequest, state: str, *, code: str = "", reason: str = "") -> IssuanceRequest:
    """Settle a pending request and count it in its batch, in one transaction (the batch's
    counter is named after the state)."""
    with transaction.atomic():
        _record(request, state=state, code=code, reason=reason, finished_at=timezone.now())
        if request.batch_id is not None:
            IssuanceBatch.objects.filter(pk=request.batch_id).update(**{state: F(state) + 1})
    if state != IssuanceRequest.State.ISSUED:
        logger.info("issuance %s %s: %s", request.idempotency_key, state, reason)
    return request


def _sparkfly_id(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{what} must be a positive whole number, got {value!r}")
    return value


def _offer_id_list(offer_ids: Sequence[int]) -> list[int]:
    unique = list(dict.fromkeys(_sparkfly_id(offer_id, "offer id") for offer_id in offer_ids))
    if not unique:
        raise ValueError("at least one offer is needed to issue a credential")
    return unique


def _ids(ids: Iterable[int]) -> str:
    return ", ".join(map(str, ids))


# --- many members: a batch ------------------------------------------------------------------------


def issuance_batch_create(
    *,
    member_ids: Iterable[int],
    channel_id: int,
    offer_ids: Sequence[int],
    idempotency_key: uuid.UUID | str | None = None,
    requested_by=None,
    in_background: bool = True,
) -> tuple[IssuanceBatch, bool]:
    """Record an issuance to many members and (``in_background``) queue its job, atomically.
    The same ``idempotency_key`` again returns the first batch (``created`` False)."""
    member_ids = list(dict.fromkeys(_sparkfly_id(member_id, "member id") for member_id in member_ids))
    channel_id, offer_ids = _sparkfly_id(channel_id, "channel id"), _offer_id_list(offer_ids)
    if not member_ids:
        raise ValueError("at least one member is needed")
    key = uuid.UUID(str(idempotency_key)) if idempotency_key else uuid.uuid4()
    with transaction.atomic():
        batch, created = IssuanceBatch.objects.get_or_create(
            idempotency_key=key,
            defaults={"member_ids": member_ids, "channel_id": channel_id, "offer_ids": offer_ids, "requested_by": requested_by},
        )
        if not created and (list(batch.member_ids), batch.channel_id, sorted(batch.offer_ids)) != (
            member_ids, channel_id, sorted(offer_ids)
        ):
            raise IdempotencyKeyReused(
                f"The idempotency key {key} was already used for another issuance (batch {batch.pk}); "
                "another issuance needs a new key."
            )
        if created and in_background:
            _queue_batch(batch)
    return batch, created


def issuance_batch_retry(*, batch: IssuanceBatch, in_background: bool = True) -> bool:
    """Queue a batch again (``in_background``: its job too): its failed members are retried,
    each from where it stopped, and those it never reached are issued. A batch left queued or
    running by a process that died (no process runs it, no job waits for it) is queued again
    too. False when it is still being run, or (``in_background``) its job still waits or runs."""
    with transaction.atomic():
        locked = IssuanceBatch.objects.select_for_update().get(pk=batch.pk)
        job, job_id = job_of(_batch_lock(locked)) if in_background else ("", None)
        if locked.state != IssuanceBatch.State.DONE and (batch_being_run(locked) or job in ("waiting", "running")):
            return False
        locked.state, locked.failure, locked.finished_at = IssuanceBatch.State.QUEUED, "", None
        locked.save(update_fields=["state", "failure", "finished_at"])
        if job == "stalled":
            # Its worker died: that job is put back (a second one could not start while the
            # dead one holds the batch's lock).
            retry_stalled(job_id)
        elif in_background:
            _queue_batch(locked)
    return True


def _batch_lock(batch: IssuanceBatch) -> str:
    return f"issuance-batch:{batch.pk}"


def _queue_batch(batch: IssuanceBatch) -> None:
    """The batch's one job, on the caller's transaction (a job already waiting will do it)."""
    from sparkfly_sync.tasks import issue_credentials_batch

    queue_once(issue_credentials_batch, queueing_lock=_batch_lock(batch), exclusive=True, batch_id=batch.pk)


def _batch_run_key(batch: IssuanceBatch) -> uuid.UUID:
    """The advisory lock a process holds while it runs the batch (the job, or the command)."""
    return uuid.uuid5(BATCH_KEY_NAMESPACE, f"{batch.idempotency_key}/run")


def batch_being_run(batch: IssuanceBatch) -> bool:
    """Whether a live process is running the batch now (its run lock is held: a process that
    died, however, released it with its connection)."""
    with _exclusively(_batch_run_key(batch)) as free:
        return not free


def batch_member_key(batch: IssuanceBatch, member_id: int) -> uuid.UUID:
    """The idempotency key of a batch's issuance to one member: the same on every run of the
    batch, so a restarted or retried job never issues twice."""
    return uuid.uuid5(BATCH_KEY_NAMESPACE, f"{batch.idempotency_key}/{member_id}")


def issue_batch(
    batch_id: int,
    *,
    client: SparkflyClient | None = None,
    on_result: Callable[[IssuanceRequest], None] | None = None,
) -> IssuanceBatch:
    """Issue a batch's credentials member by member (the job, and the command in the
    foreground); members settled by an earlier run are returned as they were, not issued
    again. ``on_result`` sees each member's request as it settles."""
    batch = IssuanceBatch.objects.get(pk=batch_id)
    if batch.state == IssuanceBatch.State.DONE:
        return batch  # a job left over from a run that already finished it
    with _exclusively(_batch_run_key(batch)) as ours:
        if not ours:
            return batch  # another process runs it; this one would only wait on each member's lock
        batch.refresh_from_db()
        if batch.state == IssuanceBatch.State.DONE:
            return batch
        return _run_batch(batch, client=client, on_result=on_result)


def _run_batch(
    batch: IssuanceBatch, *, client: SparkflyClient | None, on_result: Callable[[IssuanceRequest], None] | None
) -> IssuanceBatch:
    """Issue to each member in order: those an earlier run settled (a run killed midway, a
    retry) come back as they were, so a run picks up where the last one left off."""
    IssuanceBatch.objects.filter(pk=batch.pk).update(
        state=IssuanceBatch.State.RUNNING, started_at=Coalesce("started_at", timezone.now())
    )
    failure = ""
    failures_in_a_row = 0
    try:
        client = client or client_from_settings()
        for member_id in batch.member_ids:
            request = issue_credential(
                member_id=member_id, channel_id=batch.channel_id, offer_ids=batch.offer_ids,
                idempotency_key=batch_member_key(batch, member_id), client=client,
                requested_by=batch.requested_by, batch=batch,
            )
            if on_result is not None:
                on_result(request)
            failures_in_a_row = failures_in_a_row + 1 if request.state == IssuanceRequest.State.FAILED else 0
            if failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
                failure = (
                    f"Stopped after {failures_in_a_row} members in a row failed; the last: {request.reason} "
                    "Retry the batch once Sparkfly answers again."
                )
                break
    except BaseException as exc:
        _finish_batch(batch, failure=f"Stopped by an error: {exc.__class__.__name__}: {exc}")
        raise
    return _finish_batch(batch, failure=failure)


def _finish_batch(batch: IssuanceBatch, *, failure: str) -> IssuanceBatch:
    IssuanceBatch.objects.filter(pk=batch.pk).update(
        state=IssuanceBatch.State.DONE, finished_at=timezone.now(), failure=failure
    )
    batch.refresh_from_db()
    if failure:
        logger.warning("issuance batch %s: %s", batch.pk, failure)
    return batch


# --- selectors ------------------------------------------------------------------------------------------


def enrolled_member_ids(*, program_id: int | None = None) -> list[int]:
    """Sparkfly ids of the members with an active loyalty enrollment in the mirror (in
    ``program_id`` only, when given), in id order."""
    enrollments = LoyaltyEnrollment.objects.filter(status=LoyaltyEnrollment.Status.ACTIVE, member__isnull=False)
    if program_id is not None:
        enrollments = enrollments.filter(program_id=program_id)
    return list(enrollments.order_by("member_id").values_list("member_id", flat=True).distinct())
