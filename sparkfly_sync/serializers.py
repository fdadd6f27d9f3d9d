"""Validation of what Sparkfly's servers send the webhooks (DRF serializers).

Conversion callbacks carry the values of the channel's ``conversion_callback_url`` template
(seed 001 "Channel Callback"): strings substituted into the URL, so every value arrives as
text and a value Sparkfly could not resolve arrives blank. Blank optional values are treated
as absent. Any key beyond the named ones is a ``conv_ids`` annotation of the credential.

Event notifications are JSON ``{"event_name", <metadata>, "data"}`` (developers.sparkfly.com
guides/events). Only the types the portal acts on have their ``data`` checked here.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from rest_framework import serializers

# Far enough ahead for any clock skew between Sparkfly and us; a later time is a bad value,
# and forwarding it would give Attentive an event from the future.
MAX_CLOCK_SKEW = timedelta(minutes=5)
EARLIEST_PLAUSIBLE = datetime(2000, 1, 1, tzinfo=timezone.utc)
MAX_SPARKFLY_ID = 2**63 - 1  # BIGINT
MAX_CONV_IDS = 50
MAX_CONV_ID_KEY = 100
MAX_CONV_ID_VALUE = 1000

# "2024-05-01T12:00:00 00:00": an unencoded "+" in a query string decodes to a space.
_SPACE_FOR_PLUS = re.compile(r"(\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}(?::?\d{2})?)$")


def parse_sparkfly_time(text: str) -> datetime:
    """An instant as Sparkfly may write it: RFC 3339 / ISO 8601 (``Z``, ``+00:00``, ``+0000``),
    Rails' ``2024-05-01 12:00:00 UTC``, or either with its "+" turned into a space by URL
    decoding. A time without an offset is UTC (Sparkfly's API times are UTC)."""
    value = text.strip().upper()  # RFC 3339 allows a lower-case "t" and "z"
    if value.endswith(" UTC"):
        value = value[: -len(" UTC")] + "+00:00"
    value = _SPACE_FOR_PLUS.sub(r"\1+\2", value)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{text!r} is not a date and time (expected RFC 3339, like 2024-05-01T12:00:00Z)") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


class SparkflyTimeField(serializers.Field):
    default_error_messages = {
        "invalid": "{reason}",
        "future": "{value} is in the future; Sparkfly reports events after they happen",
        "past": "{value} is before 2000; not a real event time",
    }

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid", reason="must be a date and time written as text")
        try:
            moment = parse_sparkfly_time(data)
        except ValueError as exc:
            self.fail("invalid", reason=str(exc))
        now = self.context.get("now") or datetime.now(timezone.utc)
        if moment > now + MAX_CLOCK_SKEW:
            self.fail("future", value=data)
        if moment < EARLIEST_PLAUSIBLE:
            self.fail("past", value=data)
        return moment

    def to_representation(self, value):
        return value.isoformat()


class SparkflyIdField(serializers.Field):
    """A Sparkfly id: a positive whole number, given as digits or as a JSON integer."""

    default_error_messages = {"invalid": "must be a positive whole number (a Sparkfly id), got {value!r}"}

    minimum = 1

    def to_internal_value(self, data):
        if isinstance(data, bool):
            self.fail("invalid", value=data)
        text = data.strip() if isinstance(data, str) else None
        # 19 digits hold any BIGINT; longer text is refused before int() (which refuses
        # over 4,300 digits with an error of its own).
        if text is not None and text.isascii() and text.isdigit() and len(text) <= 19:
            data = int(text)
        if not isinstance(data, int) or not self.minimum <= data <= MAX_SPARKFLY_ID:
            self.fail("invalid", value=_short(data))
        return data

    def to_representation(self, value):
        return value


class PointsField(SparkflyIdField):
    """A quantity of points: a whole number, zero included (a free reward costs none)."""

    default_error_messages = {"invalid": "must be a whole number of points (0 or more), got {value!r}"}
    minimum = 0


class SparkflyIdListField(serializers.Field):
    """``offer_ids``: Sparkfly substitutes the list comma-separated; JSON may send an array."""

    default_error_messages = {"invalid": "must be Sparkfly ids separated by commas, got {value!r}"}

    def to_internal_value(self, data):
        parts = data.split(",") if isinstance(data, str) else data
        if not isinstance(parts, list):
            self.fail("invalid", value=_short(data))
        id_field = SparkflyIdField()
        ids = []
        for part in parts:
            if isinstance(part, str) and not part.strip():
                continue
            try:
                ids.append(id_field.to_internal_value(part))
            except serializers.ValidationError:
                self.fail("invalid", value=_short(data))
        return ids

    def to_representation(self, value):
        return ",".join(map(str, value))


def _short(value, limit: int = 60):
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _extra_key_errors(extra: dict) -> dict[str, list[str]]:
    """Each bad ``conv_ids`` key or value, named (the values are kept as text)."""
    errors: dict[str, list[str]] = {}
    if len(extra) > MAX_CONV_IDS:
        errors["conv_ids"] = [f"at most {MAX_CONV_IDS} extra keys are accepted, got {len(extra)}"]
    long_keys = [key for key in extra if len(key) > MAX_CONV_ID_KEY]
    if long_keys:
        errors.setdefault("conv_ids", []).append(
            f"keys are at most {MAX_CONV_ID_KEY} characters: {_short(long_keys[0])}"
        )
    if "" in extra:
        errors.setdefault("conv_ids", []).append("a key must not be empty")
    for key, value in extra.items():
        if not key or len(key) > MAX_CONV_ID_KEY:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            errors[key] = ["must be a single value (text or a number)"]
        elif len(str(value)) > MAX_CONV_ID_VALUE:
            errors[key] = [f"is longer than {MAX_CONV_ID_VALUE} characters"]
    return errors


class ConversionSerializer(serializers.Serializer):
    """The values of one conversion callback (seed 001's field list)."""

    NAMED = ("credential_id", "xid", "offer_id", "offer_ids", "store_id", "redeemed_at", "status", "sf_uid", "sf_ac")

    credential_id = SparkflyIdField(help_text="The Sparkfly id of the credential redeemed.")
    offer_id = SparkflyIdField(required=False, help_text="The offer redeemed (required unless offer_ids names one).")
    offer_ids = SparkflyIdListField(required=False, help_text="All offers of the credential, comma-separated.")
    xid = serializers.CharField(required=False, max_length=100, help_text="The offer's XID on the channel.")
    store_id = SparkflyIdField(required=False, help_text="The store where it was redeemed.")
    redeemed_at = SparkflyTimeField(help_text="When it was redeemed (RFC 3339; no offset means UTC).")
    status = serializers.CharField(required=False, max_length=50, help_text="The credential's status.")
    sf_uid = serializers.CharField(required=False, max_length=255, help_text="The member's external id.")
    sf_ac = serializers.CharField(required=False, max_length=255, help_text="The creative's name.")
    conv_ids = serializers.DictField(
        child=serializers.CharField(max_length=MAX_CONV_ID_VALUE, allow_blank=True),
        required=False,
        help_text="Any other key: the credential's annotations['conv_ids'] values.",
    )

    def to_internal_value(self, data):
        # Blank means "Sparkfly could not resolve it": absent, not an empty value.
        named = {key: data[key] for key in self.NAMED if key in data and data[key] not in ("", None)}
        extra = {key: value for key, value in data.items() if key not in self.NAMED}
        errors = _extra_key_errors(extra)
        if "offer_id" not in named and "offer_ids" not in named:
            errors["offer_id"] = ["is required"]
        if extra and not errors:
            named["conv_ids"] = {key: str(value) for key, value in extra.items()}
        try:
            attrs = super().to_internal_value(named)
        except serializers.ValidationError as exc:
            raise serializers.ValidationError({**exc.detail, **errors}) from None
        if errors:  # every bad field is named at once, not the first kind only
            raise serializers.ValidationError(errors)
        return attrs

    def validate(self, attrs):
        if "offer_id" not in attrs:
            offer_ids = attrs.get("offer_ids") or []
            if len(offer_ids) != 1:
                raise serializers.ValidationError(
                    {"offer_id": ["is required" + (" (offer_ids names several offers)" if offer_ids else "")]}
                )
            attrs["offer_id"] = offer_ids[0]
        return attrs


# --- event notifications --------------------------------------------------------------------------

MEMBER_EVENTS = ("sf.member.created", "sf.member.updated")
ENROLLMENT_CREATED = "loyalty.enrollment.created"
POINTS_AWARDED = "loyalty.enrollment.points.awarded"
POINTS_REDEEMED = "loyalty.enrollment.points.redeemed"
# The events the portal subscribes to and acts on; any other is recorded and acknowledged.
HANDLED_EVENTS = (*MEMBER_EVENTS, ENROLLMENT_CREATED, POINTS_AWARDED, POINTS_REDEEMED)

# ASSUMPTION: Sparkfly documents "standard event metadata fields" beside event_name without
# naming them. The event's own id and time are looked for under these names, in this order;
# an event with no id is identified by the SHA-256 of its body (a redelivery repeats it).
EVENT_ID_KEYS = ("id", "event_id", "uuid")
EVENT_TIME_KEYS = ("created_at", "occurred_at", "timestamp")


class NotificationEnvelopeSerializer(serializers.Serializer):
    event_name = serializers.CharField(max_length=100)
    # An object for the events the portal acts on (their serializers check it); anything for others.
    data = serializers.JSONField(required=False, allow_null=True)


class _IdObject(serializers.Serializer):
    id = SparkflyIdField()


class _MemberRef(_IdObject):
    identifier = serializers.CharField(required=False, allow_blank=True, allow_null=True, max_length=255)


class MemberEventData(serializers.Serializer):
    member = _IdObject()


class EnrollmentCreatedData(serializers.Serializer):
    class _Enrollment(_IdObject):
        member = _MemberRef(required=False)

    enrollment = _Enrollment()


class PointsAwardedData(serializers.Serializer):
    class _Member(_MemberRef):
        enrollment = _IdObject()

    member = _Member()


class RewardStateSerializer(serializers.Serializer):
    id = SparkflyIdField()
    offer_state_id = SparkflyIdField(required=False, allow_null=True)
    credential_identifier = serializers.CharField(required=False, allow_blank=True, allow_null=True, max_length=255)
    issued_point_value = PointsField(required=False, allow_null=True)
    created_at = SparkflyTimeField(required=False, allow_null=True)


class PointsRedeemedData(serializers.Serializer):
    class _Member(_MemberRef):
        enrollment = _IdObject()

    points_redeemed = PointsField()
    member = _Member()
    reward_state = RewardStateSerializer()


DATA_SERIALIZERS: dict[str, type[serializers.Serializer]] = {
    **{name: MemberEventData for name in MEMBER_EVENTS},
    ENROLLMENT_CREATED: EnrollmentCreatedData,
    POINTS_AWARDED: PointsAwardedData,
    POINTS_REDEEMED: PointsRedeemedData,
}


# --- answers (documented in the OpenAPI schema) -----------------------------------------------


class RedemptionAnswerSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    external_event_id = serializers.UUIDField(source="dedup_key")
    state = serializers.CharField()
    credential_id = serializers.IntegerField()
    offer_id = serializers.IntegerField()
    redeemed_at = serializers.DateTimeField()
    received_at = serializers.DateTimeField()


class ConversionAnswerSerializer(serializers.Serializer):
    duplicate = serializers.BooleanField(help_text="True when this redemption was already recorded.")
    redemption = RedemptionAnswerSerializer()


class NotificationRecordSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    event_id = serializers.CharField()
    event_name = serializers.CharField()
    state = serializers.CharField()
    received_at = serializers.DateTimeField()


class NotificationAnswerSerializer(serializers.Serializer):
    duplicate = serializers.BooleanField()
    notification = NotificationRecordSerializer()


class RejectionSerializer(serializers.Serializer):
    detail = serializers.CharField(help_text="What was wrong, for a person.")
    errors = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="Each bad field and why.",
    )
