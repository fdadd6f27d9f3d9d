"""Read-only queries of the Sparkfly mirror."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

from django.db.models import Case, CharField, Exists, F, OuterRef, Q, QuerySet, Value, When
from django.utils import timezone

from attentive_sync.models import SubscriptionState
from sparkfly_sync.models import LoyaltyEnrollment, Member, SyncRun


def minutes_since_stalest_sync(resources: Iterable[str]) -> float | None:
    """Minutes since the least recently active of these resources' latest runs last did
    anything (committed a page, finished, failed); None when one was never synced.

    Activity, not start: a failing run is retried an interval after its last failure, not
    every minute, and a run whose process died goes stale and gets resumed."""
    latest = latest_runs()
    touched = [latest[name].updated_at if name in latest else None for name in resources]
    if not touched or None in touched:
        return None
    return (timezone.now() - min(touched)).total_seconds() / 60


def latest_runs() -> dict[str, SyncRun]:
    """The newest run of each resource, keyed by resource name."""
    latest: dict[str, SyncRun] = {}
    for run in SyncRun.objects.order_by("resource", "-started_at").distinct("resource"):
        latest[run.resource] = run
    return latest


# --- segments: the member list narrowed by loyalty and subscription state -------------------

SUBSCRIPTION_FILTERS = {
    "text": "subscribed to text",
    "email": "subscribed to email",
    "any": "subscribed to text or email",
    "none": "not subscribed",
}


@dataclass(frozen=True)
class SegmentCriteria:
    """What narrows the member list for a segment. The enrollment conditions hold for one and the
    same enrollment (gold tier *in* this program with at least 500 points *there*)."""

    program: int | None = None
    tier: int | None = None
    points_min: int | None = None
    points_max: int | None = None
    enrollment_status: str = ""
    subscription: str = ""

    def as_dict(self) -> dict:
        return {name: value for name, value in asdict(self).items() if value not in (None, "")}

    @classmethod
    def from_dict(cls, values: dict) -> SegmentCriteria:
        return cls(**{name: values[name] for name in cls.__dataclass_fields__ if name in values})


def segment_members(criteria: SegmentCriteria, queryset: QuerySet | None = None) -> QuerySet:
    """The members matching ``criteria``, each once (``Exists``, no join that repeats rows)."""
    queryset = Member.objects.all() if queryset is None else queryset
    enrollment = {}
    if criteria.program is not None:
        enrollment["program_id"] = criteria.program
    if criteria.tier is not None:
        enrollment["tier_id"] = criteria.tier
    if criteria.points_min is not None:
        enrollment["point_balance__gte"] = criteria.points_min
    if criteria.points_max is not None:
        enrollment["point_balance__lte"] = criteria.points_max
    if criteria.enrollment_status:
        enrollment["status"] = criteria.enrollment_status
    if enrollment:
        queryset = queryset.filter(
            Exists(LoyaltyEnrollment.objects.filter(member_id=OuterRef("sparkfly_id"), **enrollment))
        )
    if criteria.subscription:
        queryset = _by_subscription(queryset, criteria.subscription)
    return queryset


def _by_subscription(queryset: QuerySet, subscription: str) -> QuerySet:
    # A member's Attentive subscriptions are recorded under their identifier (the clientUserId).
    subscribed = SubscriptionState.objects.filter(
        client_user_id=OuterRef("identifier"), status=SubscriptionState.Status.SUBSCRIBED
    )
    if subscription == "text":
        return queryset.filter(Exists(subscribed.filter(channel=SubscriptionState.Channel.TEXT)))
    if subscription == "email":
        return queryset.filter(Exists(subscribed.filter(channel=SubscriptionState.Channel.EMAIL)))
    if subscription == "any":
        return queryset.filter(Exists(subscribed))
    if subscription == "none":
        return queryset.exclude(Exists(subscribed))
    raise ValueError(f"unknown subscription filter {subscription!r}")


# Attentive documents no column layout for its subscriber upload (reference/attentive-api.md
# has none; seed 003 only says Annex Cloud's exported list "can be uploaded"). ASSUMPTION: the
# identifier columns take the names Attentive's APIs use for the same fields (phone in E.164,
# email, clientUserId) and the names likewise (firstName, lastName, as in v2 user attributes).
ATTENTIVE_UPLOAD_COLUMNS = ("phone", "email", "firstName", "lastName", "clientUserId")
_UPLOAD_FIELDS = ("phone", "email", "first_name", "last_name", "identifier")


def attentive_upload_rows(queryset: QuerySet, *, chunk_size: int = 2000) -> Iterator[tuple]:
    """The rows of Attentive's subscriber upload, from a server-side cursor (PostgreSQL fetches
    ``chunk_size`` at a time), so a million members take the memory of one chunk.

    An upload subscribes the people in it, so someone unsubscribed through the portal must not
    be in it by the channel they left: the phone of a member unsubscribed from text (and not
    subscribed to it again since) is left empty, likewise the email of one unsubscribed from
    email. Members left with neither phone nor email are left out: Attentive cannot subscribe them."""
    rows = (
        queryset.annotate(
            upload_phone=Case(
                When(_unsubscribed_from(SubscriptionState.Channel.TEXT), then=Value("")), default=F("phone"),
                output_field=CharField(),
            ),
            upload_email=Case(
                When(_unsubscribed_from(SubscriptionState.Channel.EMAIL), then=Value("")), default=F("email"),
                output_field=CharField(),
            ),
        )
        .exclude(upload_phone="", upload_email="")
        .order_by("pk")
        .values_list("upload_phone", "upload_email", *_UPLOAD_FIELDS[2:])
        .iterator(chunk_size=chunk_size)
    )
    yield ATTENTIVE_UPLOAD_COLUMNS
    yield from rows


def _unsubscribed_from(channel: str) -> Q:
    """The member (by identifier, the clientUserId) was unsubscribed from ``channel`` and has no
    subscription on it now."""
    on_channel = SubscriptionState.objects.filter(client_user_id=OuterRef("identifier"), channel=channel)
    return Q(Exists(on_channel.filter(status=SubscriptionState.Status.UNSUBSCRIBED))) & ~Q(
        Exists(on_channel.filter(status=SubscriptionState.Status.SUBSCRIBED))
    )


def segment_contacts(criteria: dict, *, after: int, limit: int) -> list[tuple[int, dict]]:
    """The next ``limit`` members matching ``criteria`` after primary key ``after``, as
    (key, Attentive segment member): the member source of a segment push
    (``attentive_sync.segments``), keyset-paged so a resumed push skips what was sent."""
    queryset = segment_members(SegmentCriteria.from_dict(criteria))
    if "members" in criteria:  # ticked rows or a searched list: their keys, not filters
        queryset = queryset.filter(pk__in=criteria["members"])
    queryset = queryset.filter(pk__gt=after).order_by("pk")
    page = []
    for key, phone, email, identifier in queryset.values_list("pk", "phone", "email", "identifier")[:limit]:
        contact = {"phone": phone, "email": email, "clientUserId": identifier[:100]}
        page.append((key, {name: value for name, value in contact.items() if value}))
    return page
