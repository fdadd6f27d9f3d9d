"""Attentive's side of the portal: its settings, the outbox of deliveries, and shared state.

* ``AttentiveSettings`` is a singleton edited in the admin; the API key is encrypted at rest
  (django-fernet-encrypted-fields, keys derived from SECRET_KEY(+_FALLBACKS) and SALT_KEY).
* ``Delivery`` is one custom event on its way to Attentive (after Saleor's EventDelivery), and
  ``DeliveryAttempt`` one HTTP try of it.
* ``RateLimitState`` holds the shared rate limiter's clock, so every worker on every machine
  draws from one budget per token (see ``ratelimit.py``).
* ``SubscriptionState`` is what the portal last learned of one person's subscription per
  channel and type (``subscriptions.py``), and ``IdentityLink`` whether their clientUserId is
  tied to their phone and email at Attentive (``identity.py``). Both are keyed by the
  clientUserId the caller gives: this app knows nothing of who the people are.
"""

from __future__ import annotations

from datetime import timedelta

from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import F, Q
from django.db.models.fields.json import KT
from encrypted_fields.fields import EncryptedCharField

from attentive_sync.client import PRODUCTION_URL, url_refusal

# Attentive ignores events older than 12 hours for journeys; the retry budget must end first.
ATTENTIVE_JOURNEY_CUTOFF = timedelta(hours=12)
DEFAULT_MAX_EVENT_AGE = timedelta(hours=8)
# Attentive allows 150 requests/s per endpoint per token; staying under it avoids 429s.
DEFAULT_RATE_LIMIT = 140
# A Fernet token always starts with this (version byte 0x80, base64): a stored key that still
# looks like one after decryption was encrypted under keys this deployment no longer has.
FERNET_TOKEN_PREFIX = "gAAAAA"


def validate_max_event_age(value: timedelta) -> None:
    if value <= timedelta(0):
        raise ValidationError("The maximum event age must be positive.")
    if value >= ATTENTIVE_JOURNEY_CUTOFF:
        raise ValidationError(
            "The maximum event age must stay under 12 hours: Attentive does not trigger journeys "
            "for events older than that."
        )


def validate_api_url(value: str) -> None:
    """Only a host the key may be sent to (README "Outbound HTTP")."""
    if refused := url_refusal(value):
        raise ValidationError(refused)


class AttentiveSettings(models.Model):
    """The one row of Attentive settings (primary key 1); load it with ``AttentiveSettings.load()``."""

    # The encrypted field stores an empty value as NULL; read it through ``key``.
    api_key = EncryptedCharField(
        "API key", max_length=500, blank=True, null=True, help_text="Write-only: stored encrypted, shown masked."
    )
    api_url = models.URLField(
        "API base URL", default=PRODUCTION_URL, validators=[validate_api_url], help_text=f"Attentive: {PRODUCTION_URL}"
    )
    sign_up_source_id = models.CharField("sign-up source id", max_length=100, blank=True)
    enabled = models.BooleanField(
        default=False,
        help_text="Send events to Attentive. While off, deliveries are recorded and held until "
        "switched on or too old to matter.",
    )
    disabled_event_types = ArrayField(
        models.CharField(max_length=200), default=list, blank=True, help_text="Event types not forwarded at all."
    )
    rate_limit_per_second = models.PositiveIntegerField(
        default=DEFAULT_RATE_LIMIT,
        validators=[MinValueValidator(1), MaxValueValidator(10000)],
        help_text="Requests per second to Attentive, shared by every worker. Attentive allows 150 per token.",
    )
    max_event_age = models.DurationField(
        default=DEFAULT_MAX_EVENT_AGE,
        validators=[validate_max_event_age],
        help_text="Nothing is sent once an event is older than this (under Attentive's 12 h journey cutoff).",
    )
    auto_subscribe_on_enrollment = models.BooleanField(
        "subscribe members when they enroll",
        default=False,
        help_text="When a new loyalty enrollment is reported, subscribe the person in Attentive by phone and "
        "email through the sign-up source above (Attentive texts them to confirm). Someone already "
        "subscribed is not subscribed again, and someone who unsubscribed is left alone.",
    )
    push_loyalty_attributes = models.BooleanField(
        "keep loyalty attributes current",
        default=False,
        help_text="Push each enrolled member's loyalty points balance, lifetime points, tier, status and "
        "program to Attentive as custom attributes, after syncs and loyalty events, when a value changed. "
        "Attentive fixes an attribute's type by its first value: switch on once those names suit the brand.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = verbose_name_plural = "Attentive settings"

    def __str__(self) -> str:
        return "Attentive settings"

    def save(self, *args, **kwargs):
        self.pk = 1  # a singleton
        if self.api_key_unreadable and not kwargs.get("update_fields") and type(self).objects.filter(pk=1).exists():
            # Saving would encrypt the still-encrypted key a second time, and restoring the old
            # SECRET_KEY or salt could then never recover it: leave the stored value alone.
            kwargs["update_fields"] = [
                field.name for field in self._meta.concrete_fields if not field.primary_key and field.name != "api_key"
            ]
        super().save(*args, **kwargs)

    @classmethod
    def load(cls) -> AttentiveSettings:
        settings, _ = cls.objects.get_or_create(pk=1)
        return settings

    @property
    def key(self) -> str:
        """The API key in clear (``""`` when none is set). Never log or display it."""
        return self.api_key or ""

    @property
    def masked_api_key(self) -> str:
        if not self.key:
            return ""
        return "••••" + self.key[-4:] if len(self.key) > 8 else "••••"

    @property
    def api_key_unreadable(self) -> bool:
        """True when the stored key cannot be decrypted with this deployment's keys."""
        return self.key.startswith(FERNET_TOKEN_PREFIX)

    def forwards(self, event_type: str) -> bool:
        """Whether events of this type are forwarded at all (the global switch only pauses)."""
        return event_type not in self.disabled_event_types

    def sending_blocker(self) -> str:
        """Why nothing can be sent right now, or ``""`` when sending can go ahead."""
        if not self.enabled:
            return "forwarding to Attentive is switched off"
        if not self.key:
            return "no Attentive API key is set"
        if self.api_key_unreadable:
            return (
                "the stored Attentive API key cannot be decrypted with the current SECRET_KEY and "
                "FIELD_ENCRYPTION_SALTS (were they changed without keeping the old ones in "
                "SECRET_KEY_FALLBACKS / after the new salt?); restore them, or enter the key again"
            )
        if refused := url_refusal(self.api_url):
            return f"the API base URL is refused: {refused.rstrip('.')}"
        return ""


class Delivery(models.Model):
    """One custom event (or one set of custom attributes) on its way to Attentive, sent under
    one ``external_event_id`` forever (for attributes, only the portal's own dedup key: the
    attributes body has no externalEventId)."""

    class Kind(models.TextChoices):
        EVENT = "event", "custom event"  # POST /v1/events/custom
        ATTRIBUTES = "attributes", "custom attributes"  # POST /v1/attributes/custom

    class Status(models.TextChoices):
        PENDING = "pending", "pending"  # waiting for its first try (or for sending to be switched on)
        FAILED = "failed", "failed, retry scheduled"  # the last try failed; another is scheduled
        DELIVERED = "delivered", "delivered"
        DEAD = "dead", "dead"  # Attentive refused it for good (a 4xx other than auth/408/429)
        EXPIRED = "expired", "expired"  # older than the maximum event age before it got through

    FINAL = (Status.DELIVERED, Status.DEAD, Status.EXPIRED)

    external_event_id = models.CharField("external event id", max_length=255, unique=True)
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.EVENT)
    event_type = models.CharField(max_length=200, db_index=True)
    payload = models.JSONField(help_text="The exact body sent to Attentive on every try.")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING, db_index=True)
    occurred_at = models.DateTimeField(
        help_text="When the event happened (attributes: when they were pushed); its age counts from here."
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # Set while a worker is sending it: no one else claims, retries or replays it meanwhile,
    # and the worker's results are saved only if the lease is still the one it took.
    leased_until = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    # When it became a dead letter: refused for good, or too old to send, tried or not (the
    # alert counts these). Not a set of attributes superseded by a newer one: its values went.
    dead_letter_at = models.DateTimeField("dead letter since", null=True, blank=True)

    class Meta:
        verbose_name_plural = "deliveries"
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "next_attempt_at"], name="delivery_due"),
            # A person's deliveries, newest first (the portal's member page): every payload
            # names its person by the clientUserId the caller gave.
            models.Index(
                KT("payload__user__externalIdentifiers__clientUserId"), F("created_at").desc(),
                name="delivery_client_user_recent",
            ),
            # The ones not getting through, newest first (the deliveries page's default list and
            # the dashboard's last error): a few rows, found without reading the healthy million.
            models.Index(
                F("created_at").desc(), name="delivery_failing_recent",
                condition=Q(status__in=["failed", "dead", "expired"]),
            ),
            # The ones not through yet, per status, oldest first: /metrics' and the alert's backlog
            # (count and oldest age) read this small index alone.
            models.Index(
                fields=["status", "created_at"], name="delivery_waiting",
                condition=Q(status__in=["pending", "failed"]),
            ),
            # The alert's dead letters of the last hour (portal.alerts): a few rows among millions.
            models.Index(
                fields=["dead_letter_at"], name="delivery_dead_letter", condition=Q(dead_letter_at__isnull=False)
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.external_event_id} ({self.status})"

    @property
    def is_final(self) -> bool:
        return self.status in self.FINAL


class DeliveryAttempt(models.Model):
    """One HTTP try of a delivery (after Saleor's EventDeliveryAttempt)."""

    class Outcome(models.TextChoices):
        DELIVERED = "delivered"
        RETRY = "retry"
        DEAD = "dead"
        EXPIRED = "expired"
        # The worker holding the delivery stopped (killed, or lost its database for longer than
        # the lease) before writing a result: Attentive may have received it. Sent again.
        UNKNOWN = "unknown", "answer unknown"

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempt_log")
    started_at = models.DateTimeField()
    duration_ms = models.FloatField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.TextField(blank=True, help_text="The start of Attentive's answer.")
    error = models.TextField(blank=True)
    outcome = models.CharField(max_length=20, choices=Outcome.choices)

    class Meta:
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"attempt at {self.started_at:%Y-%m-%d %H:%M:%S} → {self.status_code or self.error[:40]}"


class RateLimitState(models.Model):
    """The shared rate limiter's "theoretical arrival time" for one token and endpoint."""

    key = models.CharField(max_length=100, primary_key=True)
    theoretical_arrival = models.DateTimeField()

    def __str__(self) -> str:
        return self.key


class SubscriptionState(models.Model):
    """What the portal last learned of one person's subscription for one channel and type:
    from Attentive's answer to a subscribe, an eligibility check or an unsubscribe, or the
    portal's own reason for not asking."""

    class Channel(models.TextChoices):
        TEXT = "TEXT", "text (SMS)"
        EMAIL = "EMAIL", "email"

    class Status(models.TextChoices):
        # Attentive's ``isEligible``: the subscription exists and may be messaged.
        SUBSCRIBED = "subscribed", "subscribed (eligible)"
        NOT_ELIGIBLE = "not_eligible", "not eligible (no subscription, or opted out)"
        UNSUBSCRIBED = "unsubscribed", "unsubscribed"
        REFUSED = "refused", "not sent: the portal declined"
        FAILED = "failed", "failed"

    class Action(models.TextChoices):
        SUBSCRIBE = "subscribe", "subscribe"
        ELIGIBILITY = "eligibility", "eligibility check"
        UNSUBSCRIBE = "unsubscribe", "unsubscribe"

    client_user_id = models.CharField("clientUserId", max_length=255)
    channel = models.CharField(max_length=5, choices=Channel.choices)
    # MARKETING, TRANSACTIONAL or CHECKOUT_ABANDONED as Attentive names it; empty for what the
    # portal recorded before Attentive named a type (an error, a contact it has no subscription for).
    subscription_type = models.CharField("type", max_length=30, blank=True)
    address = models.CharField("phone or email used", max_length=254)
    status = models.CharField(max_length=20, choices=Status.choices)
    last_action = models.CharField(max_length=20, choices=Action.choices)
    attentive_status = models.CharField(
        "Attentive's word", max_length=40, blank=True,
        help_text="NEWLY_CREATED, PREVIOUSLY_CREATED, NEWLY_UNSUBSCRIBED, PREVIOUSLY_UNSUBSCRIBED, isEligible=…",
    )
    note = models.TextField(blank=True, help_text="Why nothing was sent, or Attentive's error.")
    response = models.JSONField("Attentive's answer", default=dict, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["client_user_id", "channel", "subscription_type"]
        constraints = [
            models.UniqueConstraint(
                fields=["client_user_id", "channel", "subscription_type"], name="subscription_state_unique"
            )
        ]

    def __str__(self) -> str:
        kind = f"{self.channel} {self.subscription_type}".strip()
        return f"{self.client_user_id} {kind}: {self.get_status_display()}"


class IdentityLink(models.Model):
    """Whether a clientUserId is tied to its phone and email at Attentive (Identity API).

    ``phone``/``email`` are the contacts to link; ``contacts_digest`` is a keyed digest of the
    set last linked, so an unchanged set is never sent twice and a changed one is.
    """

    client_user_id = models.CharField("clientUserId", max_length=255, unique=True)
    phone = models.CharField("phone (E.164)", max_length=16, blank=True)
    email = models.CharField(max_length=254, blank=True)
    pending = models.BooleanField(default=False, help_text="These contacts still have to be linked.")
    contacts_digest = models.CharField(
        max_length=64, blank=True, help_text="HMAC of the clientUserId, phone and email last linked."
    )
    requested_at = models.DateTimeField(null=True, blank=True)
    linked_at = models.DateTimeField(null=True, blank=True)
    attempted_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["client_user_id"]
        indexes = [
            models.Index(
                fields=["requested_at"], condition=models.Q(pending=True), name="identity_link_pending"
            )
        ]

    def __str__(self) -> str:
        return self.client_user_id


class AttributeSnapshot(models.Model):
    """The custom attributes last pushed for one clientUserId, as a digest, so unchanged
    values are never pushed again (``delivery.push_attributes``). ``delivery`` is that push:
    when it ends expired, the same values are pushed again on the next request."""

    client_user_id = models.CharField("clientUserId", max_length=255, unique=True)
    digest = models.CharField(max_length=64, help_text="SHA-256 of the properties last pushed (canonical JSON).")
    pushes = models.PositiveIntegerField(default=0, help_text="How many sets were pushed (part of the dedup key).")
    pushed_at = models.DateTimeField()
    delivery = models.ForeignKey(Delivery, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["client_user_id"]

    def __str__(self) -> str:
        return self.client_user_id
