"""Attentive subscriptions of one person: check eligibility, subscribe, unsubscribe.

Plain values in: a ``Contact`` holds the caller's clientUserId for the person and their phone
and email; attentive_sync knows nothing of where people come from. What Attentive answers is
recorded per channel and type in ``SubscriptionState`` (ref = reference/attentive-api.md):

* ``GET /v1/subscriptions`` lists the person's subscriptions with ``isEligible`` (subscribed
  and reachable); a contact Attentive does not know has none (ASSUMPTION, as the sandbox).
* ``POST /v1/subscriptions`` subscribes through the settings' sign-up source and sends
  ``externalIdentifiers.clientUserId``, so later custom events that name only the clientUserId
  reach the subscriber. Attentive answers NEWLY_CREATED or PREVIOUSLY_CREATED per channel.
* ``POST /v1/subscriptions/unsubscribe`` with the phone (TEXT) and/or the email (EMAIL): a phone
  only reaches TEXT subscriptions and an email only EMAIL ones (ref §3), so the contact fields
  sent choose the channels, every type on them included.

Subscribe asks first. Attentive records a subscribe of someone already subscribed again and,
for TEXT, texts them that they already are (ref §3: not side-effect idempotent). So a channel on
which the person is already eligible is not subscribed again; the record says so. Calls for
one person run one at a time (``one_call_per_person``), inline or in jobs, so a second asks
only once the first has been answered.

Rate limits (ref §5, per token and endpoint): Subscribe 10/s, Unsubscribe 5/s. Every request
first takes a slot on the shared limiter (``ratelimit.py``) under its endpoint's key, at
``RATE_MARGIN`` of Attentive's limit: a slot exactly at the limit turns into a 429 as soon as
one request is a few milliseconds late. ASSUMPTION: the eligibility GET shares the subscribe
budget (same path; Attentive does not say whether its limit is per path or per operation).
``reserve_many`` must run outside a transaction, so these services must too.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import phonenumbers
from django.conf import settings as django_settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import connection, transaction
from procrastinate import exceptions as procrastinate_exceptions

from attentive_sync import ratelimit
from attentive_sync.client import IDENTITY_PATH, SUBSCRIPTIONS_PATH, UNSUBSCRIBE_PATH, AttentiveClient
from attentive_sync.errors import AttentiveError, AttentiveRateLimited
from attentive_sync.jobs import in_transaction
from attentive_sync.models import AttentiveSettings, SubscriptionState

logger = logging.getLogger(__name__)

TEXT = SubscriptionState.Channel.TEXT.value
EMAIL = SubscriptionState.Channel.EMAIL.value
CHANNELS = (TEXT, EMAIL)
CONTACT_FIELDS = {TEXT: "phone", EMAIL: "email"}
CONTACT_NAMES = {TEXT: "phone number", EMAIL: "email address"}
# ASSUMPTION: a sign-up source subscribes to MARKETING (seed 003's answers, and the sandbox's
# assumption). Its real type is set in Attentive's UI, which the API does not show.
SIGN_UP_SOURCE_TYPE = "MARKETING"
# Attentive's identifiers (clientUserId included) are at most 100 characters (ref §4).
IDENTIFIER_MAX_LENGTH = 100

# ref §5: the endpoints with limits below the usual 150/s, per token and endpoint.
ATTENTIVE_LIMITS = {SUBSCRIPTIONS_PATH: 10, UNSUBSCRIBE_PATH: 5, IDENTITY_PATH: 10}
RATE_MARGIN = 0.9
# A 429 despite the limiter (another system using the same key) is tried again at a new slot.
RATE_LIMITED_TRIES = 3

ALREADY_SUBSCRIBED = "already subscribed — not resubscribed, which would text them again"
OPTED_OUT = (
    "unsubscribed earlier — not resubscribed automatically; subscribe them from the portal if they asked to be"
)

Status = SubscriptionState.Status
Action = SubscriptionState.Action


class NotConfigured(Exception):
    """Attentive cannot be asked: no key, a key that cannot be read, sending switched off…"""


class ContactRefused(ValueError):
    """A person the portal will not send to Attentive as given; the message says why."""


def e164(phone: str, region: str | None = None) -> str:
    """``phone`` in E.164 (``+14155550134``), or ``""`` when it is not a valid number. A number
    without a country code is read in ``region`` (default: the MEMBER_PHONE_REGION setting)."""
    try:
        number = phonenumbers.parse(phone, region or django_settings.MEMBER_PHONE_REGION)
    except phonenumbers.NumberParseException:
        return ""
    if not phonenumbers.is_valid_number(number):
        return ""
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


@dataclass(frozen=True)
class Contact:
    """One person as Attentive knows them: the caller's id for them (sent as clientUserId), and
    a phone (normalised to E.164) and/or an email. Refuses (``ContactRefused``) a person it
    cannot send: no id, an invalid phone or email, or neither a phone nor an email."""

    client_user_id: str
    phone: str = ""
    email: str = ""
    region: str | None = None

    def __post_init__(self) -> None:
        client_user_id = (self.client_user_id or "").strip()
        if not client_user_id:
            raise ContactRefused("no clientUserId was given: Attentive's records of this person could not be told apart")
        if len(client_user_id) > IDENTIFIER_MAX_LENGTH:
            raise ContactRefused(
                f"the clientUserId {client_user_id[:20]!r}… is {len(client_user_id)} characters; Attentive takes "
                f"at most {IDENTIFIER_MAX_LENGTH}"
            )
        phone = (self.phone or "").strip()
        if phone:
            normalised = e164(phone, self.region)
            if not normalised:
                region = self.region or django_settings.MEMBER_PHONE_REGION
                raise ContactRefused(
                    f"{client_user_id}: {phone!r} is not a valid phone number (read with the default region "
                    f"{region}); correct it, or give it with its country code like +14155550134"
                )
            phone = normalised
        email = (self.email or "").strip()
        if email:
            try:
                validate_email(email)
            except ValidationError:
                raise ContactRefused(f"{client_user_id}: {email!r} is not a valid email address") from None
            email = email.lower()  # one spelling per address, as the mirror stores them
        if not phone and not email:
            raise ContactRefused(
                f"{client_user_id} has neither a phone number nor an email address: Attentive knows subscribers "
                "only by those. Add one, then try again."
            )
        object.__setattr__(self, "client_user_id", client_user_id)
        object.__setattr__(self, "phone", phone)
        object.__setattr__(self, "email", email)

    def address(self, channel: str) -> str:
        """The phone (TEXT) or email (EMAIL), ``""`` when the person has none."""
        return getattr(self, CONTACT_FIELDS[channel])

    def as_job_arguments(self) -> dict:
        return {"client_user_id": self.client_user_id, "phone": self.phone, "email": self.email}


@dataclass(frozen=True)
class Result:
    """What one channel (and type, once Attentive named it) came to."""

    channel: str
    subscription_type: str
    status: str
    attentive_status: str = ""
    note: str = ""

    def __str__(self) -> str:
        text = f"{' '.join(filter(None, (self.channel, self.subscription_type)))}: {Status(self.status).label}"
        if self.attentive_status:
            text += f" ({self.attentive_status})"
        return f"{text} — {self.note}" if self.note else text


def client_from_settings(settings: AttentiveSettings | None = None, *, automatic: bool = False) -> AttentiveClient:
    """A client with the settings' key and URL. ``automatic`` work (not a person's click) also
    stops while sending to Attentive is switched off."""
    settings = settings or AttentiveSettings.load()
    if automatic:
        blocker = settings.sending_blocker()
    elif not settings.key:
        blocker = "no Attentive API key is set (Attentive settings)"
    elif settings.api_key_unreadable:
        blocker = "the stored Attentive API key cannot be decrypted with this deployment's keys: enter it again"
    else:
        blocker = ""
    if blocker:
        raise NotConfigured(blocker)
    return AttentiveClient(api_key=settings.key, base_url=settings.api_url)


def rate_limited_call(client: AttentiveClient, path: str, send: Callable[[], object]):
    """``send()`` once its slot on the shared limiter for ``path`` has come; a 429 (someone
    else spending the same key's budget) is tried again at a new slot, a few times."""
    key = ratelimit.limiter_key(client.api_key, path)
    per_second = min(ATTENTIVE_LIMITS[path] * RATE_MARGIN, AttentiveSettings.load().rate_limit_per_second)
    for attempt in range(1, RATE_LIMITED_TRIES + 1):
        [wait] = ratelimit.reserve_many(key, 1, per_second=per_second)
        if wait > 0:
            time.sleep(wait)
        try:
            return send()
        except AttentiveRateLimited:
            if attempt == RATE_LIMITED_TRIES:
                raise
            logger.warning("Attentive rate-limited %s despite the shared limiter; trying again", path)
    raise AssertionError("unreachable")


# --- the services ---------------------------------------------------------------------------------

# The advisory-lock space of one person's subscription calls (PostgreSQL's two-key form, apart
# from the single-key locks taken elsewhere); the second key is the clientUserId's hash.
PERSON_LOCK_SPACE = 0x41545453


@contextmanager
def one_call_per_person(client_user_id: str) -> Iterator[None]:
    """Hold the person's lock (waiting for it) while Attentive is asked and answered: without
    it, a double click's two subscribes would both see "not subscribed" and both send (and
    Attentive would text the person twice). Held on the connection, not in a transaction, as
    these services run outside one; a process that dies releases it with its connection."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", [PERSON_LOCK_SPACE, client_user_id])
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", [PERSON_LOCK_SPACE, client_user_id])


def _one_person_at_a_time(service):
    """Run ``service(contact, …)`` under the person's lock: the second of two calls starts
    from what the first one recorded and Attentive answered."""

    @functools.wraps(service)
    def serialized(contact: Contact, **options):
        with one_call_per_person(contact.client_user_id):
            return service(contact, **options)

    return serialized



@_one_person_at_a_time
def check_eligibility(contact: Contact, *, client: AttentiveClient, channels: Iterable[str] = CHANNELS) -> list[Result]:
    """Ask Attentive which subscriptions the person has on ``channels`` and whether each is
    eligible; record every channel and type."""
    wanted = _reachable(contact, channels)
    answer = _eligibility(contact, wanted, client, action=Action.ELIGIBILITY)
    with transaction.atomic():
        return _record_eligibility(contact, wanted, answer, action=Action.ELIGIBILITY)


@_one_person_at_a_time
def subscribe(
    contact: Contact,
    *,
    client: AttentiveClient,
    channels: Iterable[str] = CHANNELS,
    automatic: bool = False,
) -> list[Result]:
    """Subscribe the person through the settings' sign-up source on each of ``channels`` they
    have a contact for, except where Attentive says they are already subscribed. With
    ``automatic`` (no person asked for it), someone who unsubscribed is left alone too."""
    source = AttentiveSettings.load().sign_up_source_id.strip()
    if not source:
        raise NotConfigured("no sign-up source id is set in the Attentive settings: Attentive needs one to subscribe")
    wanted = _reachable(contact, channels)
    answer = _eligibility(contact, wanted, client, action=Action.SUBSCRIBE)
    results, to_send = [], []
    with transaction.atomic():
        for result in _record_eligibility(contact, wanted, answer, action=Action.ELIGIBILITY):
            if result.subscription_type != SIGN_UP_SOURCE_TYPE:
                continue
            if result.status == Status.SUBSCRIBED:
                results.append(_save(contact, result.channel, result.subscription_type, Status.SUBSCRIBED,
                                     Action.SUBSCRIBE, result.attentive_status, ALREADY_SUBSCRIBED, answer))
            elif automatic:
                results.append(_save(contact, result.channel, result.subscription_type, Status.REFUSED,
                                     Action.SUBSCRIBE, result.attentive_status, OPTED_OUT, answer))
        decided = {result.channel for result in results}
        to_send = [channel for channel in wanted if channel not in decided]
    if not to_send:
        return results
    user = {CONTACT_FIELDS[channel]: contact.address(channel) for channel in to_send}
    try:
        answer = rate_limited_call(client, SUBSCRIPTIONS_PATH, lambda: client.subscribe(
            user=user, sign_up_source_id=source, external_identifiers={"clientUserId": contact.client_user_id}
        ))
    except AttentiveError as exc:
        _record_failure(contact, to_send, Action.SUBSCRIBE, exc)
        raise
    with transaction.atomic():
        for channel, sub_type, word in _statuses(answer, "subscriptionCreationStatus", to_send):
            note = "Attentive already had it and recorded it again" if word == "PREVIOUSLY_CREATED" else ""
            results.append(_save(contact, channel, sub_type, Status.SUBSCRIBED, Action.SUBSCRIBE, word, note, answer))
            _clear_untyped(contact, channel)
    return results


@_one_person_at_a_time
def unsubscribe(contact: Contact, *, client: AttentiveClient, channels: Iterable[str]) -> list[Result]:
    """Unsubscribe the person from every subscription on ``channels`` (TEXT: by phone, EMAIL:
    by email). Attentive sends its usual confirmation (for TEXT, a text)."""
    wanted = _reachable(contact, channels)
    user = {CONTACT_FIELDS[channel]: contact.address(channel) for channel in wanted}
    try:
        answer = rate_limited_call(client, UNSUBSCRIBE_PATH, lambda: client.unsubscribe(user=user))
    except AttentiveError as exc:
        _record_failure(contact, wanted, Action.UNSUBSCRIBE, exc)
        raise
    results = []
    with transaction.atomic():
        answered = set()
        for channel, sub_type, word in _statuses(answer, "subscriptionUnsubscribeStatus", wanted):
            answered.add(channel)
            results.append(_save(contact, channel, sub_type, Status.UNSUBSCRIBED, Action.UNSUBSCRIBE, word, "", answer))
            _clear_untyped(contact, channel)
        for channel in wanted:
            if channel not in answered:
                note = f"Attentive has no subscription for {contact.address(channel)} to unsubscribe"
                results.append(_save(contact, channel, "", Status.NOT_ELIGIBLE, Action.UNSUBSCRIBE, "", note, answer))
    return results


def states_of(client_user_id: str) -> list[SubscriptionState]:
    """Everything recorded for one person, by channel and type (a selector)."""
    return list(SubscriptionState.objects.filter(client_user_id=client_user_id).order_by("channel", "subscription_type"))


# --- jobs -----------------------------------------------------------------------------------------

# Every subscription job runs alone (one lock): each waits on the same 10/s budget anyway, so
# running several at once would only hold more workers, and one at a time, two jobs can never
# both see "not subscribed" and both subscribe someone.
JOB_LOCK = "attentive-subscriptions"
JOB_BATCH = 1000


def queue(action: str, contacts: list[Contact], *, channels: Iterable[str] = CHANNELS, automatic: bool = False) -> int:
    """Queue one job per contact for ``action`` ("subscribe", "eligibility", "unsubscribe");
    returns how many were queued. One automatic subscribe per person waits at a time."""
    from attentive_sync import tasks

    task = {
        Action.SUBSCRIBE: tasks.subscribe_contact,
        Action.ELIGIBILITY: tasks.check_contact_eligibility,
        Action.UNSUBSCRIBE: tasks.unsubscribe_contact,
    }[Action(action)]
    extra = {"channels": list(channels)}
    if action == Action.SUBSCRIBE:
        extra["automatic"] = automatic
    if automatic:
        queued = 0
        for contact in contacts:
            try:
                with transaction.atomic():  # a savepoint: a refused duplicate must not poison the caller
                    in_transaction(task.configure(
                        lock=JOB_LOCK, queueing_lock=f"attentive-subscribe:{contact.client_user_id}"
                    )).defer(**contact.as_job_arguments(), **extra)
                queued += 1
            except procrastinate_exceptions.AlreadyEnqueued:
                pass
        return queued
    for start in range(0, len(contacts), JOB_BATCH):
        batch = contacts[start : start + JOB_BATCH]
        in_transaction(task.configure(lock=JOB_LOCK)).batch_defer(
            *({**contact.as_job_arguments(), **extra} for contact in batch)
        )
    return len(contacts)


# --- recording ------------------------------------------------------------------------------------


def _reachable(contact: Contact, channels: Iterable[str]) -> list[str]:
    """The asked-for channels the person has a contact for; refused when there is none."""
    asked = [channel for channel in CHANNELS if channel in set(channels)]
    if not asked:
        raise ValueError(f"no channel asked for; choose among {', '.join(CHANNELS)}")
    wanted = [channel for channel in asked if contact.address(channel)]
    if not wanted:
        missing = " or ".join(CONTACT_NAMES[channel] for channel in asked)
        raise ContactRefused(f"{contact.client_user_id} has no {missing}, so nothing was sent to Attentive")
    return wanted


def _eligibility(contact: Contact, channels: list[str], client: AttentiveClient, *, action: str) -> dict:
    query = {CONTACT_FIELDS[channel]: contact.address(channel) for channel in channels}
    try:
        return rate_limited_call(client, SUBSCRIPTIONS_PATH, lambda: client.subscription_eligibility(**query))
    except AttentiveError as exc:
        _record_failure(contact, channels, action, exc)
        raise


def _record_eligibility(contact: Contact, channels: list[str], answer: dict, *, action: str) -> list[Result]:
    results, listed = [], {channel: set() for channel in channels}
    for item in _items(answer, "subscriptionEligibilities"):
        channel, sub_type = _subscription(item)
        eligibility = item.get("eligibility")
        if channel not in listed or not sub_type or not isinstance(eligibility, dict):
            continue
        eligible = eligibility.get("isEligible") is True
        status = Status.SUBSCRIBED if eligible else Status.NOT_ELIGIBLE
        word = f"isEligible={str(eligible).lower()}"
        listed[channel].add(sub_type)
        results.append(_save(contact, channel, sub_type, status, action, word, "", answer))
    for channel, types in listed.items():
        if types:
            _clear_untyped(contact, channel)
        else:
            note = f"Attentive lists no subscription for {contact.address(channel)}"
            results.append(_save(contact, channel, "", Status.NOT_ELIGIBLE, action, "", note, answer))
        # What was recorded before but Attentive no longer lists is not eligible any more.
        gone = SubscriptionState.objects.filter(client_user_id=contact.client_user_id, channel=channel).exclude(
            subscription_type__in=[*types, ""]
        )
        for state in gone:
            note = f"Attentive no longer lists this subscription for {contact.address(channel)}"
            results.append(_save(contact, channel, state.subscription_type, Status.NOT_ELIGIBLE, action, "", note, answer))
    return results


def _statuses(answer: dict, field: str, channels: list[str]) -> list[tuple[str, str, str]]:
    """(channel, type, Attentive's status word) of each subscription response on ``channels``."""
    found = []
    for item in _items(answer, "subscriptionResponses"):
        channel, sub_type = _subscription(item)
        word = item.get(field)
        if channel in channels and sub_type and isinstance(word, str):
            found.append((channel, sub_type, word))
    return found


def _items(answer, field: str) -> list[dict]:
    items = answer.get(field) if isinstance(answer, dict) else None
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


def _subscription(item: dict) -> tuple[str, str]:
    subscription = item.get("subscription")
    if not isinstance(subscription, dict):
        return "", ""
    channel, sub_type = subscription.get("channel"), subscription.get("type")
    return (channel if isinstance(channel, str) else "", sub_type if isinstance(sub_type, str) else "")


def _save(contact: Contact, channel: str, sub_type: str, status: str, action: str, word: str, note: str, answer) -> Result:
    SubscriptionState.objects.update_or_create(
        client_user_id=contact.client_user_id,
        channel=channel,
        subscription_type=sub_type,
        defaults={
            "address": contact.address(channel),
            "status": status,
            "last_action": action,
            "attentive_status": word,
            "note": note,
            "response": answer if isinstance(answer, dict | list) else {},
        },
    )
    return Result(channel, sub_type, status, word, note)


def _clear_untyped(contact: Contact, channel: str) -> None:
    """Drop the portal's own row for a channel once Attentive has named its types: it said
    "no subscription" or held an error that the newer answer supersedes."""
    SubscriptionState.objects.filter(client_user_id=contact.client_user_id, channel=channel, subscription_type="").delete()


def _record_failure(contact: Contact, channels: list[str], action: str, exc: AttentiveError) -> None:
    """An Attentive error, in its words, on each channel's own row (the typed rows keep what
    Attentive said last)."""
    answer = {"status": exc.status, "message": exc.attentive_message or "", "body": exc.body[:2000]}
    with transaction.atomic():
        for channel in channels:
            _save(contact, channel, "", Status.FAILED, action, "", str(exc), answer)
