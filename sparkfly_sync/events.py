"""Sparkfly records → the Attentive custom events Sparkfly's own Attentive integration sends.

Seed 000 (``reference/seeds/000_f49704ce0ce3266d.txt``) gives the three payloads; journeys built
for that integration must keep working, so the keys, nesting and names are reproduced exactly.
The builders are pure: they read the already-loaded mirror records they are given (no query,
no write, no HTTP) and return an ``attentive_sync.events.CustomEvent``; ``forward()`` sends it.

Where seed 000's examples and Attentive's published schema (``POST /v1/events/custom``,
operationId postCustomEvents) disagree, the schema wins:

* ``user.externalIdentifiers.customIdentifiers[].value`` is a string (the seed sends a number);
* ``occurredAt`` and the timestamps inside ``properties`` are RFC 3339 with a UTC offset,
  ``2021-03-30T14:38:29+00:00`` (the seed's ``+0000`` is not RFC 3339; its ``Z`` is, but every
  timestamp goes out one way, through ``attentive_sync.events.rfc3339``);
* ``externalEventId`` is added: the idempotency key of every retry and replay (see the
  ``*_event_id`` helpers below).

Other deviations from seed 000, each because the portal always has the value or the mirror
lacks it:

* ``sparkfly.member.offer_state_created`` carries ``occurredAt`` = the issuance time (the seed's
  example has none, and Attentive would then use the time of the call; a retried event would
  look new, and Attentive's 12-hour journey rule must be measured from the issuance).
* Sparkfly's *campaign* (an offer published on a channel, with its own id, name and external
  id) is not mirrored; the mirror holds the offer and the offer↔channel link with its XID.
  So ``campaign.xid`` is exact, while ``campaign.id`` is the offer's id, ``campaign.name`` the
  offer's name and ``campaign.external_id`` is always ``""``. Journeys that select on the XID
  (the campaign's public id, the landing-page path) are unaffected; one that compares a
  campaign's own name, id or external id with a value that differs from the offer's is not.

Unknown values keep their key, in seed 000's "empty" convention: ``""`` for strings (its
issuance example sends ``"name": ""``, ``"external_id": ""``, ``"description": ""``), and
``null`` for numbers (the seed has no example; ``0`` would be a wrong id).

Field mapping (payload key ← source)
------------------------------------

Common to the three events:

``user.externalIdentifiers.clientUserId``  ← ``Member.identifier`` (omitted when blank)
``user.phone`` / ``user.email``             ← ``Member.phone`` (E.164) / ``Member.email``, only when set
``externalEventId``                         ← the ``external_event_id`` argument

``sparkfly.member.offer_state_redeemed`` (``offer_state_redeemed``):

``occurredAt``                       ← ``redeemed_at`` (the conversion callback's ``redeemed_at``)
``credential_identifier``            ← ``Credential.identifier`` (the code; required)
``offer_state_id``                   ← ``offer_state_id`` argument (the callback carries none; null when unknown)
``store_number``                     ← ``Store.number`` of the redemption store; ``""`` when no store
``campaign.xid``                     ← ``OfferChannel.xid``
``campaign.name``                    ← ``Offer.name``
``campaign.external_id``             ← ``""`` (not mirrored)
``campaign.id``                      ← ``Offer.sparkfly_id``
``campaign.distribution_channel_id`` ← ``OfferChannel.channel_id`` (the Sparkfly channel id)

``sparkfly.member.offer_state_created`` (``offer_state_created``), under ``offer_state``:

``occurredAt``               ← ``issued_at``
``offer_state_id``           ← ``offer_state_id`` argument (null when unknown)
``credential_identifier``    ← ``Credential.identifier`` (required)
``expiration``               ← ``expires_at`` argument (the issued offer state's expiry), else
                               ``Offer.expires_at``, else ``""``
``campaign.id/xid/name/external_id`` ← as for the redemption
``campaign.offer.id``        ← ``Offer.sparkfly_id``
``campaign.offer.name``      ← ``Offer.name``
``campaign.offer.description`` ← ``Offer.raw["description"]`` (no column), ``""`` when null

``sparkfly.member.enrollment.points_redeemed`` (``points_redeemed``), from the signed
``loyalty.enrollment.points.redeemed`` notification (reward states are not mirrored):

``occurredAt``                      ← ``redeemed_at`` (when the points were debited)
``points_debit``                    ← ``points_debit`` argument
``enrollment.id``                   ← ``LoyaltyEnrollment.sparkfly_id``
``enrollment.enrollment_external_id`` ← ``LoyaltyEnrollment.external_id``
``reward_state.*``                  ← the ``RewardState`` argument, field for field
``user.externalIdentifiers.customIdentifiers`` ← ``[{"name": "sparkfly_enrollment_id",
                                      "value": str(LoyaltyEnrollment.sparkfly_id)}]``
                                      (seed 000's example shows 123 there and 1 as
                                      ``enrollment.id``: sample numbers; both are the enrollment id)
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from typing import TYPE_CHECKING

from attentive_sync.events import CustomEvent, EventUser, InvalidEvent, rfc3339

if TYPE_CHECKING:
    from sparkfly_sync.models import Credential, LoyaltyEnrollment, Member, Offer, OfferChannel, Store

OFFER_STATE_REDEEMED = "sparkfly.member.offer_state_redeemed"
OFFER_STATE_CREATED = "sparkfly.member.offer_state_created"
POINTS_REDEEMED = "sparkfly.member.enrollment.points_redeemed"

# One on/off switch per type in the admin; the labels are seed 000's names of the events.
EVENT_TYPES: dict[str, str] = {
    OFFER_STATE_REDEEMED: "Offer State Redemption",
    OFFER_STATE_CREATED: "Offer State Issuance",
    POINTS_REDEEMED: "Points Exchange",
}

ENROLLMENT_IDENTIFIER_NAME = "sparkfly_enrollment_id"

# Fixed for ever: changing it would give every past occurrence a new id, and a replay of an
# old event would then reach Attentive as a new one.
EVENT_ID_NAMESPACE = uuid.UUID("65914613-ec59-4d48-9c72-0ca54be1bbc4")


@dataclass(frozen=True)
class RewardState:
    """The loyalty reward state of a points redemption, as Sparkfly's notification gives it."""

    id: int
    offer_state_id: int | None = None
    credential_identifier: str = ""
    issued_point_value: int | None = None
    created_at: datetime | None = None


# --- externalEventId: one per Sparkfly occurrence ------------------------------------------------


def redemption_event_id(*, credential_id: int, offer_id: int, redeemed_at: datetime) -> str:
    """A redemption is identified by the credential, the offer redeemed and the instant.

    A reusable credential is redeemed many times (so the instant), and a credential carrying
    several offers redeems each as its own offer state (so the offer). The instant is compared in
    UTC to the microsecond: the same moment written with another offset is the same occurrence.
    """
    return _event_id(
        OFFER_STATE_REDEEMED,
        _positive(credential_id, "credential id"),
        _positive(offer_id, "offer id"),
        _utc_instant(redeemed_at, "redeemed_at"),
    )


def issuance_event_id(*, credential_id: int, offer_id: int) -> str:
    """An issuance is identified by the credential and the offer it was issued for: a credential
    is issued once, and holds one offer state per offer."""
    return _event_id(OFFER_STATE_CREATED, _positive(credential_id, "credential id"), _positive(offer_id, "offer id"))


def points_redemption_event_id(*, reward_state_id: int) -> str:
    """A points redemption is identified by the reward state it bought: one debit, one state."""
    return _event_id(POINTS_REDEEMED, _positive(reward_state_id, "reward state id"))


def _event_id(kind: str, *parts: object) -> str:
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, "|".join([kind, *map(str, parts)])))


# --- the three events -----------------------------------------------------------------------------


def offer_state_redeemed(
    *,
    credential: Credential,
    member: Member,
    offer: Offer,
    offer_channel: OfferChannel,
    store: Store | None = None,
    redeemed_at: datetime,
    offer_state_id: int | None = None,
    external_event_id: str,
) -> CustomEvent:
    """``sparkfly.member.offer_state_redeemed``: ``member`` redeemed ``credential`` for ``offer``
    (published as ``offer_channel``) at ``store``. Mapping in the module docstring."""
    _check_credential(credential, member=member, offer=offer, offer_channel=offer_channel)
    return CustomEvent(
        type=OFFER_STATE_REDEEMED,
        properties={
            "credential_identifier": _credential_code(credential),
            "offer_state_id": _optional_positive(offer_state_id, "offer_state_id"),
            "store_number": store.number if store is not None else "",
            "campaign": {
                "xid": offer_channel.xid,
                "name": offer.name,
                "external_id": "",
                "id": offer.sparkfly_id,
                "distribution_channel_id": offer_channel.channel_id,
            },
        },
        occurred_at=_aware(redeemed_at, "redeemed_at"),
        user=member_user(member),
        external_event_id=external_event_id,
    )


def offer_state_created(
    *,
    credential: Credential,
    member: Member,
    offer: Offer,
    offer_channel: OfferChannel,
    issued_at: datetime,
    offer_state_id: int | None = None,
    expires_at: datetime | None = None,
    external_event_id: str,
) -> CustomEvent:
    """``sparkfly.member.offer_state_created``: ``credential`` was issued to ``member`` for
    ``offer`` on ``offer_channel``. ``occurredAt`` = ``issued_at``, which seed 000 leaves out
    (see the module docstring). Mapping in the module docstring."""
    _check_credential(credential, member=member, offer=offer, offer_channel=offer_channel)
    expiration = expires_at if expires_at is not None else offer.expires_at
    description = offer.raw.get("description") if isinstance(offer.raw, dict) else None
    return CustomEvent(
        type=OFFER_STATE_CREATED,
        properties={
            "offer_state": {
                "offer_state_id": _optional_positive(offer_state_id, "offer_state_id"),
                "credential_identifier": _credential_code(credential),
                "expiration": rfc3339(_aware(expiration, "expires_at")) if expiration is not None else "",
                "campaign": {
                    "id": offer.sparkfly_id,
                    "xid": offer_channel.xid,
                    "name": offer.name,
                    "external_id": "",
                    "offer": {
                        "id": offer.sparkfly_id,
                        "name": offer.name,
                        "description": description if isinstance(description, str) else "",
                    },
                },
            }
        },
        occurred_at=_aware(issued_at, "issued_at"),
        user=member_user(member),
        external_event_id=external_event_id,
    )


def points_redeemed(
    *,
    member: Member,
    enrollment: LoyaltyEnrollment,
    reward_state: RewardState,
    points_debit: int,
    redeemed_at: datetime,
    external_event_id: str,
) -> CustomEvent:
    """``sparkfly.member.enrollment.points_redeemed``: ``member`` spent ``points_debit`` points of
    ``enrollment`` on ``reward_state``. Mapping in the module docstring."""
    if enrollment.member_id is not None and enrollment.member_id != member.sparkfly_id:
        raise InvalidEvent(
            f"enrollment {enrollment.sparkfly_id} belongs to member {enrollment.member_id}, "
            f"not to member {member.sparkfly_id}"
        )
    return CustomEvent(
        type=POINTS_REDEEMED,
        properties={
            "points_debit": _positive(points_debit, "points_debit"),
            "enrollment": {"id": enrollment.sparkfly_id, "enrollment_external_id": enrollment.external_id},
            "reward_state": {
                "id": _positive(reward_state.id, "reward state id"),
                "offer_state_id": _optional_positive(reward_state.offer_state_id, "reward state offer_state_id"),
                "credential_identifier": reward_state.credential_identifier,
                "issued_point_value": _optional_positive(reward_state.issued_point_value, "issued_point_value"),
                "created_at": (
                    rfc3339(_aware(reward_state.created_at, "reward state created_at"))
                    if reward_state.created_at is not None
                    else ""
                ),
            },
        },
        occurred_at=_aware(redeemed_at, "redeemed_at"),
        user=member_user(member, custom_identifiers=((ENROLLMENT_IDENTIFIER_NAME, str(enrollment.sparkfly_id)),)),
        external_event_id=external_event_id,
    )


def member_user(member: Member, *, custom_identifiers: tuple[tuple[str, str], ...] = ()) -> EventUser:
    """The event's user: the member's Sparkfly identifier as clientUserId, and its phone and
    email when the mirror has them. A member with none of the three cannot be named to
    Attentive (an enrollment id alone is not enough: Attentive matches custom identifiers only
    once they are tied to a phone or email)."""
    if not (member.identifier or member.phone or member.email):
        raise InvalidEvent(
            f"member {member.sparkfly_id} has no identifier, phone or email, so Attentive could not "
            "tell who the event is about; resync the member from Sparkfly"
        )
    return EventUser(
        phone=member.phone,
        email=member.email,
        client_user_id=member.identifier,
        custom_identifiers=custom_identifiers,
    )


# --- checks ---------------------------------------------------------------------------------------


def _check_credential(credential: Credential, *, member: Member, offer: Offer, offer_channel: OfferChannel) -> None:
    """Refuse records that do not belong together: an event about one member carrying another
    member's code, or a campaign of another offer, would reach the wrong subscriber."""
    if credential.member_id is not None and credential.member_id != member.sparkfly_id:
        raise InvalidEvent(
            f"credential {credential.sparkfly_id} belongs to member {credential.member_id}, "
            f"not to member {member.sparkfly_id}"
        )
    if credential.offer_ids and offer.sparkfly_id not in credential.offer_ids:
        raise InvalidEvent(
            f"credential {credential.sparkfly_id} is for offers {credential.offer_ids}, "
            f"not for offer {offer.sparkfly_id}"
        )
    if offer_channel.offer_id != offer.sparkfly_id:
        raise InvalidEvent(f"the campaign ({offer_channel}) is not of offer {offer.sparkfly_id}")
    if credential.channel_id is not None and credential.channel_id != offer_channel.channel_id:
        raise InvalidEvent(
            f"credential {credential.sparkfly_id} was issued on channel {credential.channel_id}, "
            f"but the campaign ({offer_channel}) is on channel {offer_channel.channel_id}"
        )


def _credential_code(credential: Credential) -> str:
    if not credential.identifier:
        raise InvalidEvent(
            f"credential {credential.sparkfly_id} has no code (identifier) in the mirror; "
            "fetch it from Sparkfly before building the event"
        )
    return credential.identifier


def _positive(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidEvent(f"{what} must be a positive whole number, got {value!r}")
    return value


def _optional_positive(value: object, what: str) -> int | None:
    return None if value is None else _positive(value, what)


def _aware(moment: datetime, what: str) -> datetime:
    if not isinstance(moment, datetime) or moment.tzinfo is None:
        raise InvalidEvent(f"{what} must be a timezone-aware datetime, got {moment!r}")
    return moment


def _utc_instant(moment: datetime, what: str) -> str:
    return _aware(moment, what).astimezone(timezone.utc).isoformat(timespec="microseconds")
