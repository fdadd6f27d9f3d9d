"""Sparkfly payloads → mirror rows, validating what arrives.

Each ``*_row`` function takes one unwrapped item (``{"id": 7, "identifier": …}``) and returns
the column values of its mirror row, or raises ``PayloadError`` saying why the item cannot be
mirrored (no usable id). Anything else that is malformed (an unparsable date, an invalid phone)
is stored as empty and stays visible in ``raw``: one bad field never loses a whole member.
"""

from __future__ import annotations

from datetime import date, datetime
from functools import lru_cache
from typing import Any

import phonenumbers
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.utils.dateparse import parse_date, parse_datetime

from sparkfly_sync.redaction import callback_fingerprint, redact
from sparkfly_sync.serializers import MAX_SPARKFLY_ID


class PayloadError(ValueError):
    """An item Sparkfly sent that cannot be mirrored; the message says why."""


def sparkfly_id(payload: Any, key: str = "id") -> int:
    if not isinstance(payload, dict):
        raise PayloadError(f"expected an object, got {type(payload).__name__}")
    value = payload.get(key)
    if isinstance(value, bool) or value is None:
        raise PayloadError(f"missing {key!r}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise PayloadError(f"{key!r} is not an integer: {value!r}") from None
    if not 0 < number <= MAX_SPARKFLY_ID:  # stored in bigint columns
        raise PayloadError(f"{key!r} must be a positive 64-bit integer, got {number}")
    return number


def _optional_id(payload: dict, key: str) -> int | None:
    try:
        return sparkfly_id(payload, key)
    except PayloadError:
        return None


def _text(payload: dict, key: str, max_length: int) -> str:
    value = payload.get(key)
    if value is None or isinstance(value, dict | list):
        return ""
    return str(value).strip()[:max_length]


def _integer(payload: dict, key: str) -> int | None:
    value = payload.get(key)
    if isinstance(value, bool) or value is None or value == "":
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    # Outside PostgreSQL's integer range is garbage, not a redemption limit.
    return number if -(2**31) <= number < 2**31 else None


def _boolean(payload: dict, key: str) -> bool | None:
    value = payload.get(key)
    return value if isinstance(value, bool) else None


def _datetime(payload: dict, key: str) -> datetime | None:
    value = payload.get(key)
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = parse_datetime(value)
    except ValueError:
        return None
    if parsed is not None and parsed.tzinfo is None:
        return None  # Sparkfly always sends an offset; a naive time would be a guess
    return parsed


def _date(payload: dict, key: str) -> date | None:
    value = payload.get(key)
    if not isinstance(value, str):
        return None
    try:
        return parse_date(value[:10])
    except ValueError:
        return None


def _mirror_columns(payload: dict) -> dict:
    return {
        "sparkfly_id": sparkfly_id(payload),
        "raw": payload,
        "sparkfly_created_at": _datetime(payload, "created_at"),
        "sparkfly_updated_at": _datetime(payload, "updated_at"),
    }


@lru_cache(maxsize=65536)
def normalize_phone(value: str, region: str) -> str:
    """E.164 (``+14155550134``) or ``""`` when the number is not a valid phone number."""
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return ""
    if not phonenumbers.is_valid_number(number):
        return ""
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize_email(value: str) -> str:
    value = value.strip()
    try:
        validate_email(value)
    except ValidationError:
        return ""
    # Lowercased whole: mailbox providers treat local parts case-insensitively in practice, and
    # one spelling per address is what lookups, dedup and Attentive's matching need.
    return value.lower()


def member_row(payload: dict) -> dict:
    row = _mirror_columns(payload)
    # ASSUMPTION: contact details arrive in a "member_profile" object (the shape of Sparkfly's
    # POST /members/register); a plain v1.0 member has none and mirrors with empty contacts.
    profile = payload.get("member_profile")
    profile = profile if isinstance(profile, dict) else {}
    phone = _text(profile, "phone", 64)
    email = _text(profile, "email", 254)
    row.update(
        identifier=_text(payload, "identifier", 255),
        notification_mode=_text(payload, "notification_mode", 50),
        first_name=_text(profile, "first_name", 150),
        last_name=_text(profile, "last_name", 150),
        phone=normalize_phone(phone, settings.MEMBER_PHONE_REGION) if phone else "",
        email=normalize_email(email) if email else "",
    )
    return row


def merchant_row(payload: dict) -> dict:
    row = _mirror_columns(payload)
    row.update(name=_text(payload, "name", 255), is_active=_boolean(payload, "is_active"))
    return row


def store_row(payload: dict) -> dict:
    row = _mirror_columns(payload)
    location = payload.get("location") if isinstance(payload.get("location"), dict) else {}
    row.update(
        merchant_id=_optional_id(payload, "merchant_id"),
        name=_text(payload, "name", 255),
        number=_text(payload, "number", 100),
        is_active=_boolean(payload, "is_active"),
        city=_text(location, "city", 150),
        state=_text(location, "state", 100),
    )
    return row


def channel_row(payload: dict) -> dict:
    """The callback URL is mirrored masked, with a keyed fingerprint of the real one: it holds
    the portal endpoint's secret, which must not sit in the database in clear."""
    url = _text(payload, "conversion_callback_url", 2000)
    if url:
        payload = {**payload, "conversion_callback_url": redact(url)}
    row = _mirror_columns(payload)
    row.update(
        name=_text(payload, "name", 255),
        conversion_callback_url=redact(url),
        conversion_callback_fingerprint=callback_fingerprint(url),
        allow_sms_keyword=_boolean(payload, "allow_sms_keyword"),
        allow_hmac=_boolean(payload, "allow_hmac"),
    )
    return row


def offer_row(payload: dict) -> dict:
    row = _mirror_columns(payload)
    row.update(
        merchant_id=_optional_id(payload, "merchant_id"),
        name=_text(payload, "name", 255),
        status=_text(payload, "status", 30),
        activates_at=_datetime(payload, "activates_at"),
        expires_at=_datetime(payload, "expires_at"),
        stop_offering_at=_datetime(payload, "stop_offering_at"),
        max_redemptions=_integer(payload, "max_redemptions"),
        max_redemptions_per_member=_integer(payload, "max_redemptions_per_member"),
        max_redemptions_per_member_per_day=_integer(payload, "max_redemptions_per_member_per_day"),
        points_required_value=_integer(payload, "points_required_value"),
    )
    return row


def offer_channel_rows(offer_payload: dict) -> list[dict] | None:
    """The offer↔channel links of a full offer (``"channels": [{"channel": {id, xid, …}}]``),
    or None when the payload does not say (no ``channels`` key): then the links are unknown,
    which is not the same as "none"."""
    offer_id = sparkfly_id(offer_payload)
    if "channels" not in offer_payload:
        return None
    channels = offer_payload["channels"]
    if not isinstance(channels, list):
        raise PayloadError(f"offer {offer_id} has 'channels' that is not a list")
    rows = {}
    for position, entry in enumerate(channels):
        link = entry.get("channel") if isinstance(entry, dict) else None
        channel_id = _optional_id(link, "id") if isinstance(link, dict) else None
        if channel_id is None:
            # Say where, not what: a link can carry its security_key.
            raise PayloadError(f"offer {offer_id} lists a channel without an id (entry {position})")
        rows[channel_id] = {"offer_id": offer_id, "channel_id": channel_id, "xid": _text(link, "xid", 100), "raw": link}
    return list(rows.values())


def credential_row(payload: dict) -> dict:
    row = _mirror_columns(payload)
    raw_offer_ids = payload.get("offer_ids")
    offer_ids = []
    if isinstance(raw_offer_ids, list):
        offer_ids = sorted(
            {i for i in raw_offer_ids if isinstance(i, int) and not isinstance(i, bool) and 0 < i <= MAX_SPARKFLY_ID}
        )
    annotations = payload.get("annotations")
    identifier = payload.get("identifier")
    row.update(
        identifier=str(identifier)[:255] if identifier not in (None, "") else None,
        status=_text(payload, "status", 30),
        member_id=_optional_id(payload, "member_id"),
        channel_id=_optional_id(payload, "channel_id"),
        store_id=_optional_id(payload, "store_id"),
        offer_ids=offer_ids,
        annotations=annotations if isinstance(annotations, dict) else {},
        redeemed_at=_datetime(payload, "redeemed_at"),
        voided_at=_datetime(payload, "voided_at"),
    )
    return row


def loyalty_program_row(payload: dict) -> dict:
    row = _mirror_columns(payload)
    row.update(
        name=_text(payload, "name", 255),
        status=_text(payload, "status", 30),
        description=_text(payload, "description", 10000),
    )
    return row


def loyalty_enrollment_row(payload: dict) -> dict:
    row = _mirror_columns(payload)
    row.update(
        member_id=_optional_id(payload, "member_id"),
        program_id=_optional_id(payload, "program_id"),
        external_id=_text(payload, "external_id", 255),
        source=_text(payload, "source", 100),
        status=_text(payload, "status", 30),
        point_balance=_integer(payload, "point_balance"),
        historical_points=_integer(payload, "historical_points"),
        tier_term_start_time=_datetime(payload, "tier_term_start_time"),
        tier_term_end_date=_date(payload, "tier_term_end_date"),
        fraud_risk_level=_text(payload, "fraud_risk_level", 10),
    )
    # Sparkfly's enrollment list omits tier_id (seed 004); leaving the column out of the row
    # keeps the tier a single-enrollment fetch mirrored, instead of erasing it.
    if "tier_id" in payload:
        row["tier_id"] = _optional_id(payload, "tier_id")
    return row
