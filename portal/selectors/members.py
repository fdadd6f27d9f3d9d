"""Read-only queries of the member pages: the search, and everything known of one member (360).

Every query here is answered from an index at a million members and a million redemptions:

* search: ``sparkfly_id`` (unique), ``phone`` and ``email`` (exact, stored normalised by the
  sync: E.164 and lowercased), ``identifier`` and ``email`` prefixes (``member_*_bytes``:
  the column in the "C" collation, which serves ``LIKE 'abc%'`` and its byte order at once);
* the 360: the member's relations by their indexed Sparkfly id columns, redemptions by
  ``credential_id`` or ``sf_uid``, Attentive's subscription states by clientUserId, and
  deliveries by the clientUserId inside their payload (``delivery_client_user_recent``).

The 360 costs the same number of queries whatever the member holds: each list is one query
with its total counted in the same pass (``COUNT(*) OVER ()``) and the newest rows kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.conf import settings
from django.db.models import Count, Q, Window
from django.db.models.fields.json import KT
from django.db.models.functions import Collate

from attentive_sync.models import Delivery, SubscriptionState
from sparkfly_sync.models import Credential, IssuanceRequest, LoyaltyEnrollment, Member, Offer, Redemption
from sparkfly_sync.payloads import normalize_phone
from sparkfly_sync.serializers import MAX_SPARKFLY_ID

SEARCH_LIMIT = 50
ROWS_SHOWN = 50
# Longer than any identifier (255) or email (254) the mirror holds: nothing could match.
LONGEST_TERM = 255
MEMBER_COLUMNS = ("sparkfly_id", "identifier", "first_name", "last_name", "email", "phone", "synced_at")
# Where Attentive's payloads carry the member: their Sparkfly identifier as clientUserId.
DELIVERY_CLIENT_USER_ID = KT("payload__user__externalIdentifiers__clientUserId")


class SearchRefused(ValueError):
    """A search term that cannot match anyone; the message says why, for the page."""


@dataclass
class SearchResult:
    exact: list[Member]
    prefix: list[Member]
    more: bool  # more than SEARCH_LIMIT matched: only the first are shown

    @property
    def members(self) -> list[Member]:
        return self.exact + self.prefix

    @property
    def rows(self) -> list[tuple[Member, str]]:
        """Each member with how it matched, for the page."""
        return [(member, "exact") for member in self.exact] + [(member, "starts with") for member in self.prefix]


def member_search(*, term: str) -> SearchResult:
    """Members whose Sparkfly id, identifier, phone or email is ``term`` (exact matches first,
    newest first), then those whose identifier or email starts with it (by identifier, in
    code point order), at most ``SEARCH_LIMIT`` in all. Emails match case-insensitively; a
    phone is read in any format, numbers without a country code in MEMBER_PHONE_REGION."""
    term = term.strip()
    if not term:
        raise SearchRefused("Type a Sparkfly identifier, member id, phone number or email.")
    if len(term) > LONGEST_TERM or "\x00" in term:
        raise SearchRefused(
            f"That is {len(term):,} characters long; identifiers and emails are at most {LONGEST_TERM}. "
            "Paste just one identifier, member id, phone number or email."
        )
    email = term.lower()
    exact = Q(identifier=term) | Q(email=email)
    if term.isdecimal() and int(term) <= MAX_SPARKFLY_ID:
        exact |= Q(sparkfly_id=int(term))
    if phone := normalize_phone(term, settings.MEMBER_PHONE_REGION):
        exact |= Q(phone=phone)
    members = Member.objects.only(*MEMBER_COLUMNS)
    exact_matches = list(members.filter(exact).order_by("-sparkfly_id")[: SEARCH_LIMIT + 1])
    seen = {member.sparkfly_id for member in exact_matches}
    # One query per prefix, each reading its byte-ordered index (member_*_bytes) until it has
    # enough rows: an OR of the two, or an order the index does not hold, would gather and sort
    # every match of a one-letter term first.
    wanted = SEARCH_LIMIT + 1 - len(exact_matches)
    prefix_matches: dict[int, Member] = {}
    if wanted > 0:
        for column, prefix in (("identifier", term), ("email", email)):
            matches = (
                members.annotate(key=Collate(column, "C"))
                .filter(key__startswith=prefix)
                .exclude(sparkfly_id__in=seen)
                .order_by("key")[:wanted]
            )
            for member in matches:
                prefix_matches.setdefault(member.sparkfly_id, member)
    prefix = sorted(prefix_matches.values(), key=lambda member: (member.identifier, member.sparkfly_id))
    found = exact_matches + prefix
    shown_exact = exact_matches[:SEARCH_LIMIT]
    return SearchResult(
        exact=shown_exact, prefix=prefix[: SEARCH_LIMIT - len(shown_exact)], more=len(found) > SEARCH_LIMIT
    )


@dataclass
class Rows:
    """The newest rows of a list and how many there are in all."""

    shown: list = field(default_factory=list)
    total: int = 0

    @property
    def more(self) -> bool:
        return self.total > len(self.shown)


@dataclass(frozen=True)
class OfferName:
    """An offer a row names: its Sparkfly id, and the mirrored offer when there is one."""

    sparkfly_id: int
    offer: Offer | None

    def __str__(self) -> str:
        return self.offer.name if self.offer is not None and self.offer.name else f"Offer {self.sparkfly_id}"


@dataclass
class Member360:
    """The member and their rows, newest first; credentials and issuance requests carry
    ``offers_named`` and redemptions ``offer_named`` (``OfferName``), looked up in one query."""

    member: Member
    enrollments: list[LoyaltyEnrollment]
    credentials: Rows
    redemptions: Rows
    issuance_requests: Rows
    subscriptions: list[SubscriptionState]
    deliveries: Rows


def member_360(*, sparkfly_id: int) -> Member360 | None:
    """Everything the portal knows of one member, or None when no such member is mirrored."""
    if not 0 < sparkfly_id <= MAX_SPARKFLY_ID:
        return None
    member = Member.objects.filter(sparkfly_id=sparkfly_id).first()
    if member is None:
        return None
    enrollments = list(member.enrollments.select_related("program").order_by("-sparkfly_id"))
    credentials = _newest(
        member.credentials.select_related("channel", "store").defer("raw", "channel__raw", "store__raw"),
        "-sparkfly_id",
    )
    # Every credential of the member, not only those shown: a redemption of an older one is theirs too.
    credential_ids = list(member.credentials.values_list("sparkfly_id", flat=True))
    redeemed = Q(credential_id__in=credential_ids) if credential_ids else Q(pk__in=[])
    if member.identifier:
        redeemed |= Q(sf_uid=member.identifier)
    redemptions = _newest(Redemption.objects.filter(redeemed).select_related("delivery"), "-redeemed_at", "-pk")
    issuance_requests = _newest(member.issuance_requests.select_related("requested_by"), "-created_at", "-pk")
    if member.identifier:
        subscriptions = list(SubscriptionState.objects.filter(client_user_id=member.identifier))
        deliveries = _newest(
            Delivery.objects.annotate(client_user_id=DELIVERY_CLIENT_USER_ID)
            .filter(client_user_id=member.identifier)
            .defer("payload"),
            "-created_at", "-pk",
        )
    else:  # no clientUserId: Attentive cannot know them (sparkfly_sync.attentive_members.contact_for)
        subscriptions, deliveries = [], Rows()
    offer_ids = {offer_id for credential in credentials.shown for offer_id in credential.offer_ids}
    offer_ids |= {redemption.offer_id for redemption in redemptions.shown}
    offer_ids |= {offer_id for request in issuance_requests.shown for offer_id in request.offer_ids}
    offers = Offer.objects.only("sparkfly_id", "name").in_bulk(offer_ids, field_name="sparkfly_id") if offer_ids else {}
    for row in (*credentials.shown, *issuance_requests.shown):
        row.offers_named = [OfferName(offer_id, offers.get(offer_id)) for offer_id in row.offer_ids]
    for redemption in redemptions.shown:
        redemption.offer_named = OfferName(redemption.offer_id, offers.get(redemption.offer_id))
    return Member360(
        member=member,
        enrollments=enrollments,
        credentials=credentials,
        redemptions=redemptions,
        issuance_requests=issuance_requests,
        subscriptions=subscriptions,
        deliveries=deliveries,
    )


def _newest(queryset, *ordering: str) -> Rows:
    rows = list(queryset.annotate(total_rows=Window(Count("*"))).order_by(*ordering)[:ROWS_SHOWN])
    return Rows(shown=rows, total=rows[0].total_rows if rows else 0)
