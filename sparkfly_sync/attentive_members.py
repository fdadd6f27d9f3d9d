"""Members in Attentive: the Sparkfly side of subscriptions and identity links.

To Attentive a member is a person whose clientUserId is their Sparkfly identifier (what the
custom events carry, seed 000), with their mirrored phone (E.164) and email. attentive_sync
does the work with those plain values; this module turns members into them, for the admin
(``act`` now, ``queue`` as jobs) and for three hooks:

* ``member_mirrored``, after a member event refreshed a member, and ``link_changed_members``,
  after a members sync: their contact sets are requested for an identity link. Only a set that
  differs from the one last linked becomes pending, and the link job sends it: nothing here
  calls Attentive.
* ``enrollment_created``, after a new loyalty enrollment was mirrored: with the Attentive
  setting "subscribe members when they enroll" on, the member's subscribe is queued as an
  automatic one (it leaves alone someone who unsubscribed).

The hooks do nothing until an Attentive API key is set.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from attentive_sync import identity, subscriptions
from attentive_sync.client import AttentiveClient
from attentive_sync.errors import AttentiveError
from attentive_sync.models import AttentiveSettings
from attentive_sync.subscriptions import CHANNELS, CONTACT_NAMES, Contact, ContactRefused, Result
from sparkfly_sync.models import LoyaltyEnrollment, Member

logger = logging.getLogger(__name__)

SUBSCRIBE = subscriptions.Action.SUBSCRIBE.value
ELIGIBILITY = subscriptions.Action.ELIGIBILITY.value
UNSUBSCRIBE = subscriptions.Action.UNSUBSCRIBE.value
LINK_IDENTITY = "link_identity"
ACTIONS = (SUBSCRIBE, ELIGIBILITY, UNSUBSCRIBE, LINK_IDENTITY)


def contact_for(member: Member) -> Contact:
    """The member as Attentive knows them; ``ContactRefused`` says why they cannot be."""
    if not member.identifier.strip():
        raise ContactRefused(
            f"member {member.sparkfly_id} has no Sparkfly identifier, which Attentive would know them by (clientUserId)"
        )
    return Contact(member.identifier, phone=member.phone, email=member.email)


@dataclass
class MemberOutcome:
    """What one member's action came to: Attentive's results, or why nothing (or not all) was done."""

    member: Member
    results: list[Result] = field(default_factory=list)
    note: str = ""
    refused: str = ""
    error: str = ""

    def __str__(self) -> str:
        if self.refused:  # its message names the member already
            return self.refused
        return f"{self.member}: " + (self.error or "; ".join(map(str, self.results)) or self.note)


def act(action: str, members: Iterable[Member], *, client: AttentiveClient, channels: Iterable[str] = CHANNELS) -> list[MemberOutcome]:
    """Run ``action`` for each member now, one after another (each waits for its slot on the
    shared limiter). Raises ``NotConfigured`` when the action cannot run for anyone."""
    channels = list(channels)
    outcomes = []
    for member in members:
        outcome = MemberOutcome(member)
        outcomes.append(outcome)
        try:
            contact = contact_for(member)
            if action == LINK_IDENTITY:
                sent = identity.link_identity(contact, client=client)
                outcome.note = "identity linked" if sent else "identity already linked with these contacts; nothing sent"
            else:
                outcome.results = _service(action)(contact, client=client, channels=channels)
        except ContactRefused as exc:
            outcome.refused = str(exc)
        except AttentiveError as exc:
            outcome.error = str(exc)
    return outcomes


def queue(action: str, members: Iterable[Member], *, channels: Iterable[str] = CHANNELS) -> tuple[int, list[str]]:
    """Queue ``action`` for each member as a job; returns how many were queued and why the
    others were not (no identifier, no contact on the chosen channels)."""
    channels = list(channels)
    contacts, refused = [], []
    for member in members:
        try:
            contact = contact_for(member)
        except ContactRefused as exc:
            refused.append(str(exc))
            continue
        if action != LINK_IDENTITY and not any(contact.address(channel) for channel in channels):
            missing = " or ".join(CONTACT_NAMES[channel] for channel in channels)
            refused.append(f"{member} has no {missing}")
            continue
        contacts.append(contact)
    if action == LINK_IDENTITY:
        if identity.request_links(contacts):
            identity.queue_link_job()
        return len(contacts), refused
    return subscriptions.queue(action, contacts, channels=channels), refused


def _service(action: str):
    return {
        SUBSCRIBE: subscriptions.subscribe,
        ELIGIBILITY: subscriptions.check_eligibility,
        UNSUBSCRIBE: subscriptions.unsubscribe,
    }[action]


# --- hooks ---------------------------------------------------------------------------------------


def member_mirrored(sparkfly_id: int) -> bool:
    """A member event refreshed this member: request an identity link of their contacts.
    True when a link job was needed."""
    if not AttentiveSettings.load().key:
        return False
    member = Member.objects.filter(sparkfly_id=sparkfly_id).first()
    if member is None:
        return False
    try:
        contact = contact_for(member)
    except ContactRefused:
        return False
    if identity.request_links([contact]):
        identity.queue_link_job(delay=identity.HOOK_DELAY)
        return True
    return False


def link_changed_members(*, changed_since: datetime) -> int:
    """After a members sync: request identity links for the members whose row changed since
    ``changed_since`` (``synced_at`` moves only when content changed) and who have a phone or
    email. Returns how many sets became pending. Never fails the sync: an error is logged."""
    try:
        if not AttentiveSettings.load().key:
            return 0
        pending = identity.request_links(_contacts_changed_since(changed_since))
        if pending:
            identity.queue_link_job(delay=identity.HOOK_DELAY)
        return pending
    except Exception:
        logger.exception("identity links of the members changed since %s were not requested", changed_since)
        return 0


def _contacts_changed_since(moment: datetime) -> Iterator[Contact]:
    rows = (
        Member.objects.filter(synced_at__gte=moment)
        .exclude(identifier="")
        .exclude(phone="", email="")
        .order_by()
        .values_list("identifier", "phone", "email")
        .iterator(chunk_size=2000)
    )
    for identifier, phone, email in rows:
        try:
            yield Contact(identifier, phone=phone, email=email)
        except ContactRefused:
            continue


def enrollment_created(enrollment_id: int, mirror) -> bool:
    """A new loyalty enrollment was mirrored: with "subscribe members when they enroll" on,
    queue the member's automatic subscribe. ``mirror`` (``forwarding.Mirror``) fetches the
    member from Sparkfly when the mirror lacks them. True when a subscribe was queued."""
    settings = AttentiveSettings.load()
    if not settings.auto_subscribe_on_enrollment:
        return False
    blocker = settings.sending_blocker() or ("" if settings.sign_up_source_id.strip() else "no sign-up source id is set")
    if blocker:
        logger.warning("enrollment %s: the member is not subscribed in Attentive: %s", enrollment_id, blocker)
        return False
    enrollment = LoyaltyEnrollment.objects.filter(sparkfly_id=enrollment_id).first()
    if enrollment is None or enrollment.member_id is None:
        return False
    member = mirror.get(Member, enrollment.member_id)
    try:
        contact = contact_for(member)
    except ContactRefused as exc:
        logger.info("enrollment %s: the member is not subscribed in Attentive: %s", enrollment_id, exc)
        return False
    return subscriptions.queue(SUBSCRIBE, [contact], automatic=True) == 1
