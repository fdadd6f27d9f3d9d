"""Loyalty attributes in Attentive: each enrolled member's points, tier, status and program.

Every enrolled member with a Sparkfly identifier and a phone or email gets these Attentive
custom attributes (numbers stay numbers: Attentive fixes an attribute's type by its first value):

* "Loyalty points balance" (number), "Loyalty lifetime points" (number),
* "Loyalty tier" (the tier id, as text), "Loyalty status" (active, suspended, archived),
* "Loyalty program" (the program's name).

One set per member, though a member may hold several enrollments: the set describes **the
most recent active enrollment** (newest at Sparkfly, then highest id); with no active one, the
most recent enrollment of any status, so a suspension shows. A value the mirror lacks (a
balance Sparkfly did not give, no tier) is left out rather than sent as something it is not.

Nothing happens until the Attentive setting "keep loyalty attributes current" is on and an API
key is set (Attentive fixes each attribute's type by its first value, so a brand opts in). The
hooks only queue work, never call Attentive:

* ``enrollment_changed`` after a points.awarded, points.redeemed or enrollment.created
  notification refreshed an enrollment: one job for its member;
* ``enrollments_synced`` after an enrollments sync: one job for the members whose enrollment
  changed in it (``synced_at`` moves only when content changed).

The jobs compute the sets and hand them to ``attentive_sync.delivery.push_attributes``, which
records (and later sends, with the outbox's retries and rate limit) only a set that differs from
the one last pushed for that member.
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.db.models import Case, F, IntegerField, Value, When
from procrastinate.contrib.django import app

from attentive_sync.delivery import push_attributes
from attentive_sync.events import EventUser, InvalidEvent
from attentive_sync.jobs import queue_once
from attentive_sync.models import AttentiveSettings
from sparkfly_sync.models import LoyaltyEnrollment, LoyaltyProgram, Member

logger = logging.getLogger(__name__)

POINTS_BALANCE = "Loyalty points balance"
LIFETIME_POINTS = "Loyalty lifetime points"
TIER = "Loyalty tier"
STATUS = "Loyalty status"
PROGRAM = "Loyalty program"

MEMBER_JOB_LOCK = "loyalty-attributes:member:"
SYNC_JOB_LOCK = "loyalty-attributes:sync"


# --- what is pushed ----------------------------------------------------------------------------


def chosen_enrollment(member_id: int) -> LoyaltyEnrollment | None:
    """The enrollment a member's attributes describe: the most recent active one, else the most
    recent of any status."""
    return (
        LoyaltyEnrollment.objects.filter(member_id=member_id)
        .annotate(inactive=Case(When(status=LoyaltyEnrollment.Status.ACTIVE, then=Value(0)), default=Value(1), output_field=IntegerField()))
        .order_by("inactive", F("sparkfly_created_at").desc(nulls_last=True), "-sparkfly_id")
        .first()
    )


def properties_for(enrollment: LoyaltyEnrollment) -> dict:
    program = LoyaltyProgram.objects.filter(sparkfly_id=enrollment.program_id).first() if enrollment.program_id else None
    properties = {
        POINTS_BALANCE: enrollment.point_balance,
        LIFETIME_POINTS: enrollment.historical_points,
        TIER: str(enrollment.tier_id) if enrollment.tier_id is not None else None,
        STATUS: enrollment.status or None,
        PROGRAM: (program.name if program else "") or None,
    }
    return {name: value for name, value in properties.items() if value is not None}


def user_for(member: Member) -> EventUser | None:
    """The member as Attentive knows them, or None when they cannot be (no identifier, or no
    phone or email to tie it to)."""
    if not member.identifier.strip() or not (member.phone or member.email):
        return None
    return EventUser(phone=member.phone, email=member.email, client_user_id=member.identifier)


def switched_on() -> bool:
    settings = AttentiveSettings.load()
    return bool(settings.push_loyalty_attributes and settings.key)


def push_member(member_id: int) -> bool:
    """Record the member's loyalty attributes for pushing unless unchanged; True when recorded."""
    member = Member.objects.filter(sparkfly_id=member_id).first()
    enrollment = chosen_enrollment(member_id) if member else None
    user = user_for(member) if member else None
    if enrollment is None or user is None:
        return False
    properties = properties_for(enrollment)
    if not properties:
        return False
    try:
        result = push_attributes(user=user, properties=properties)
    except InvalidEvent as exc:
        logger.warning("loyalty attributes of member %s not pushed: %s", member_id, exc)
        return False
    return result is not None and result.created


# --- jobs --------------------------------------------------------------------------------------


@app.task(name="sparkfly_sync.push_loyalty_attributes", queue="contacts", retry=3)
def push_loyalty_attributes(member_id: int) -> None:
    if switched_on():
        push_member(member_id)


@app.task(name="sparkfly_sync.push_synced_loyalty_attributes", queue="contacts", retry=3)
def push_synced_loyalty_attributes(changed_since: str) -> None:
    """The members whose enrollment a sync changed since ``changed_since`` (ISO 8601)."""
    if not switched_on():
        return
    moment = datetime.fromisoformat(changed_since)
    member_ids = (
        LoyaltyEnrollment.objects.filter(synced_at__gte=moment, member_id__isnull=False)
        .order_by().values_list("member_id", flat=True).distinct()
    )
    pushed = sum(push_member(member_id) for member_id in member_ids.iterator(chunk_size=2000))
    if pushed:
        logger.info("loyalty attributes: %d members' changed sets recorded for pushing", pushed)


# --- hooks (queue only) ------------------------------------------------------------------------


def enrollment_changed(enrollment_id: int) -> bool:
    """A notification refreshed this enrollment: queue its member's attributes job."""
    if not switched_on():
        return False
    member_id = LoyaltyEnrollment.objects.filter(sparkfly_id=enrollment_id).values_list("member_id", flat=True).first()
    if member_id is None:
        return False
    queue_once(push_loyalty_attributes, queueing_lock=f"{MEMBER_JOB_LOCK}{member_id}", exclusive=True, member_id=member_id)
    return True


def enrollments_synced(*, changed_since: datetime) -> bool:
    """After an enrollments sync: queue the job for the members it changed. Never fails the sync."""
    try:
        if not switched_on():
            return False
        queue_once(
            push_synced_loyalty_attributes, queueing_lock=SYNC_JOB_LOCK, exclusive=True,
            changed_since=changed_since.isoformat(),
        )
        return True
    except Exception:
        logger.exception("loyalty attributes of the enrollments changed since %s were not queued", changed_since)
        return False
