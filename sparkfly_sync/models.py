"""The mirror of a brand's Sparkfly account, and the record of every sync run.

Conventions (after dj-stripe):

* Every mirrored row has a local primary key, Sparkfly's id in a unique ``sparkfly_id``, typed
  columns for what the portal queries, the last payload Sparkfly sent in ``raw``, and
  ``synced_at``: when the row's content last changed through a sync (a sync that finds the
  same payload writes nothing).
* Relations between mirrored rows point at Sparkfly ids (``to_field="sparkfly_id"``) and have
  no database constraint: a credential can be mirrored before its member, and bulk upserts
  store Sparkfly's ids as they come, with no translation to local keys. Reading
  ``credential.member`` raises ``Member.DoesNotExist`` until the member is mirrored.
* Sparkfly owns these rows: the admin shows them read-only; ``sparkfly_sync.sync`` writes them.

The inbound side (after dj-stripe's WebhookEndpoint and WebhookEventTrigger) is at the bottom:
the endpoints Sparkfly calls (``ConversionEndpoint`` per channel, ``NotificationEndpoint`` for
signed event notifications, each with a rotating secret), ``InboundRequest`` (every request,
valid or not), and what accepted requests became: ``Redemption`` and ``Notification``.

Last, issuance: ``IssuanceRequest`` (one credential issued to one member, by idempotency key)
and ``IssuanceBatch`` (an issuance to many members, run by a background job).
"""

from __future__ import annotations

import secrets
import uuid

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex
from django.db import models
from django.db.models.functions import Coalesce, Collate
from encrypted_fields.fields import EncryptedCharField


def _sparkfly_relation(model: str, related_name: str, *, verbose_name: str | None = None) -> models.ForeignKey:
    return models.ForeignKey(
        model,
        to_field="sparkfly_id",
        db_constraint=False,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        related_name=related_name,
        verbose_name=verbose_name,
    )


class SparkflyMirror(models.Model):
    sparkfly_id = models.BigIntegerField("Sparkfly id", unique=True)
    raw = models.JSONField("last payload from Sparkfly", default=dict)
    synced_at = models.DateTimeField("content last changed by a sync")
    sparkfly_created_at = models.DateTimeField("created at Sparkfly", null=True, blank=True)
    sparkfly_updated_at = models.DateTimeField("updated at Sparkfly", null=True, blank=True)

    class Meta:
        abstract = True


class Member(SparkflyMirror):
    identifier = models.CharField(max_length=255, db_index=True)
    notification_mode = models.CharField(max_length=50, blank=True)
    first_name = models.CharField(max_length=150, blank=True)
    last_name = models.CharField(max_length=150, blank=True)
    # The contact points Attentive identifies subscribers by; empty when Sparkfly gave none
    # or gave one that is not a valid address / number.
    email = models.EmailField(max_length=254, blank=True, db_index=True)
    phone = models.CharField("phone (E.164)", max_length=16, blank=True, db_index=True)

    class Meta:
        ordering = ["-sparkfly_id"]
        indexes = [
            # Prefix searches in byte order whatever the database's collation (the portal's
            # member search): ``LIKE 'abc%'`` and ``ORDER BY`` on one index, read until enough.
            models.Index(Collate("identifier", "C"), name="member_identifier_bytes"),
            models.Index(Collate("email", "C"), name="member_email_bytes"),
        ]

    def __str__(self) -> str:
        return self.identifier


class Merchant(SparkflyMirror):
    name = models.CharField(max_length=255, blank=True, db_index=True)
    is_active = models.BooleanField(null=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name or f"Merchant {self.sparkfly_id}"


class Store(SparkflyMirror):
    merchant = _sparkfly_relation("Merchant", "stores")
    name = models.CharField(max_length=255, blank=True)
    number = models.CharField("store number", max_length=100, blank=True, db_index=True)
    is_active = models.BooleanField(null=True)
    city = models.CharField(max_length=150, blank=True)
    state = models.CharField(max_length=100, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} (#{self.number})" if self.number else self.name or f"Store {self.sparkfly_id}"


class Channel(SparkflyMirror):
    name = models.CharField(max_length=255, blank=True)
    # Masked: a portal callback URL holds its endpoint's secret (see sparkfly_sync.redaction).
    conversion_callback_url = models.CharField(max_length=2000, blank=True)
    conversion_callback_fingerprint = models.CharField(max_length=64, blank=True, editable=False)
    allow_sms_keyword = models.BooleanField(null=True)
    allow_hmac = models.BooleanField(null=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name or f"Channel {self.sparkfly_id}"


class Offer(SparkflyMirror):
    class Status(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"
        SUSPENDED = "suspended"
        ARCHIVED = "archived"

    merchant = _sparkfly_relation("Merchant", "offers")
    name = models.CharField(max_length=255, blank=True, db_index=True)
    # Not constrained to Status: a status Sparkfly adds later must still mirror.
    status = models.CharField(max_length=30, blank=True, db_index=True)
    activates_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    stop_offering_at = models.DateTimeField(null=True, blank=True)
    max_redemptions = models.IntegerField(null=True, blank=True)
    max_redemptions_per_member = models.IntegerField(null=True, blank=True)
    max_redemptions_per_member_per_day = models.IntegerField(null=True, blank=True)
    points_required_value = models.IntegerField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name or f"Offer {self.sparkfly_id}"


class OfferChannel(models.Model):
    """An offer published on a channel; its ``xid`` is the campaign id Sparkfly reports."""

    offer = _sparkfly_relation("Offer", "channel_links")
    channel = _sparkfly_relation("Channel", "offer_links")
    xid = models.CharField("XID", max_length=100, blank=True, db_index=True)
    raw = models.JSONField("last payload from Sparkfly", default=dict)
    synced_at = models.DateTimeField("content last changed by a sync")

    class Meta:
        verbose_name = "offer channel"
        constraints = [models.UniqueConstraint(fields=["offer", "channel"], name="offer_channel_unique")]

    def __str__(self) -> str:
        return f"offer {self.offer_id} on channel {self.channel_id} ({self.xid or 'no xid'})"


class Credential(SparkflyMirror):
    """A redeemable code issued to a member for one or more offers."""

    identifier = models.CharField("code", max_length=255, null=True, blank=True, db_index=True)
    status = models.CharField(max_length=30, blank=True, db_index=True)
    member = _sparkfly_relation("Member", "credentials")
    channel = _sparkfly_relation("Channel", "credentials")
    store = _sparkfly_relation("Store", "credentials")
    offer_ids = ArrayField(models.BigIntegerField(), default=list, blank=True, help_text="Sparkfly offer ids")
    annotations = models.JSONField(default=dict, blank=True)
    redeemed_at = models.DateTimeField(null=True, blank=True)
    voided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-sparkfly_id"]
        indexes = [GinIndex(fields=["offer_ids"], name="credential_offer_ids_gin")]

    def __str__(self) -> str:
        return self.identifier or f"Credential {self.sparkfly_id} (no code yet)"


class LoyaltyProgram(SparkflyMirror):
    name = models.CharField(max_length=255, blank=True)
    status = models.CharField(max_length=30, blank=True)
    description = models.TextField(blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name or f"Loyalty program {self.sparkfly_id}"


class LoyaltyEnrollment(SparkflyMirror):
    """A member's enrollment in a loyalty program: every field of Sparkfly's LoyaltyEnrollment."""

    class Status(models.TextChoices):
        ACTIVE = "active"
        SUSPENDED = "suspended"
        ARCHIVED = "archived"

    class FraudRiskLevel(models.TextChoices):
        NONE = "none"
        LOW = "low"
        MEDIUM = "medium"
        HIGH = "high"

    member = _sparkfly_relation("Member", "enrollments")
    program = _sparkfly_relation("LoyaltyProgram", "enrollments")
    external_id = models.CharField(max_length=255, blank=True, db_index=True)
    source = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=30, blank=True, db_index=True)
    point_balance = models.IntegerField(null=True, blank=True, help_text="non-expired points available")
    historical_points = models.IntegerField(null=True, blank=True, help_text="points credited since enrollment")
    # Sparkfly leaves tier_id out of the enrollment list, so a list sync keeps the last known one.
    tier_id = models.BigIntegerField(null=True, blank=True)
    tier_term_start_time = models.DateTimeField(null=True, blank=True)
    tier_term_end_date = models.DateField(null=True, blank=True)
    fraud_risk_level = models.CharField(max_length=10, blank=True)

    class Meta:
        ordering = ["-sparkfly_id"]

    def __str__(self) -> str:
        return f"Enrollment {self.sparkfly_id} of member {self.member_id}"


class SyncRun(models.Model):
    """One run of one resource's mirror sync, with its checkpoint so a crash can resume."""

    class Status(models.TextChoices):
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    resource = models.CharField(max_length=50, db_index=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.RUNNING, db_index=True)
    started_at = models.DateTimeField(auto_now_add=True)
    # Touched by every committed page and by the end of the run: how the scheduler tells a
    # working or recently failed run from one whose process died.
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    pages = models.PositiveIntegerField(default=0)
    created = models.PositiveIntegerField(default=0)
    updated = models.PositiveIntegerField(default=0)
    unchanged = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0, help_text="items Sparkfly sent that could not be mirrored")
    error_samples = models.JSONField(default=list, blank=True, help_text="the first reasons items were skipped")
    failure = models.TextField(blank=True, help_text="why the run stopped, when it failed")
    # {"stream": <key of the list being read>, "page": <last page committed>}; data and
    # checkpoint commit in one transaction, so a resumed run never skips or repeats a page.
    checkpoint = models.JSONField(null=True, blank=True)
    resumed = models.PositiveIntegerField(default=0, help_text="times this run was resumed after a crash or failure")

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["resource", "-started_at"], name="syncrun_resource_recent")]

    def __str__(self) -> str:
        return f"{self.resource} sync {self.pk} ({self.status})"

    @property
    def duration(self):
        return (self.finished_at - self.started_at) if self.finished_at else None


# =================================================================================================
# Inbound: what Sparkfly sends us (after dj-stripe's WebhookEndpoint and WebhookEventTrigger)
# =================================================================================================


def new_endpoint_secret() -> str:
    # 256 bits, URL-safe: it travels in the callback URL path.
    return secrets.token_urlsafe(32)


class RotatingSecret(models.Model):
    """A secret that can be replaced while the previous one keeps working for a grace period
    (Sparkfly may still hold the old URL or key until the change reaches it)."""

    secret = EncryptedCharField(max_length=500, default=new_endpoint_secret)
    previous_secret = EncryptedCharField(max_length=500, blank=True, null=True)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    secret_rotated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True

    def accepted_secrets(self, now) -> list[str]:
        """The secrets a request may carry now: the current one, and the previous one until
        its grace period ends. A secret this deployment cannot decrypt is none of them (the
        field would hand back its ciphertext, which a database dump holds)."""
        accepted = [self.secret] if self.secret else []
        if self.previous_secret and self.previous_secret_expires_at and now < self.previous_secret_expires_at:
            accepted.append(self.previous_secret)
        return [secret for secret in accepted if not is_unreadable(secret)]


def is_unreadable(secret: str | None) -> bool:
    """True when a stored secret cannot be decrypted with this deployment's keys (the
    encrypted field then returns the ciphertext itself)."""
    from attentive_sync.models import FERNET_TOKEN_PREFIX

    return bool(secret) and secret.startswith(FERNET_TOKEN_PREFIX)


class ConversionEndpoint(RotatingSecret):
    """The receiver of one channel's conversion callbacks.

    Sparkfly signs nothing it sends to a ``conversion_callback_url``: the URL is the credential.
    It carries this endpoint's UUID (which endpoint) and ``secret`` (proof the caller was given
    the URL), compared in constant time.
    """

    uuid = models.UUIDField("UUID", default=uuid.uuid4, unique=True, editable=False)
    channel = _sparkfly_relation("Channel", "conversion_endpoints")
    is_enabled = models.BooleanField(
        "enabled", default=True, help_text="A disabled endpoint answers 410 Gone and records nothing new."
    )
    # Keys of the credentials' annotations["conv_ids"] Sparkfly should put in the callback URL.
    conv_id_keys = ArrayField(models.CharField(max_length=100), default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["channel"], name="conversion_endpoint_one_per_channel")]

    def __str__(self) -> str:
        return f"Conversion callbacks of channel {self.channel_id}"


class NotificationEndpoint(RotatingSecret):
    """The receiver of Sparkfly's signed event notifications: one Sparkfly *callback* and its
    *subscriptions*. ``secret`` holds the callback's ``signing_key`` (Sparkfly generates it when
    the callback is created); ``previous_secret`` the key of the callback it replaced."""

    uuid = models.UUIDField("UUID", default=uuid.uuid4, unique=True, editable=False)
    secret = EncryptedCharField("signing key", max_length=500, blank=True, null=True)
    external_id = models.CharField(
        "external id", max_length=255, unique=True, help_text="The callback's external_id at Sparkfly."
    )
    sparkfly_callback_id = models.BigIntegerField("Sparkfly callback id", null=True, blank=True, unique=True)
    events = ArrayField(models.CharField(max_length=100), default=list, blank=True, help_text="Subscribed events")
    is_enabled = models.BooleanField(
        "enabled", default=True, help_text="A disabled endpoint answers 410 Gone and records nothing new."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"Event notifications ({self.external_id})"


class InboundRequest(models.Model):
    """Every request that reached a webhook endpoint, valid or not, and what came of it."""

    class Kind(models.TextChoices):
        CONVERSION = "conversion", "conversion callback"
        NOTIFICATION = "notification", "event notification"

    class Outcome(models.TextChoices):
        ACCEPTED = "accepted"  # a new redemption or notification, queued
        DUPLICATE = "duplicate"  # one already recorded: answered with it, nothing queued
        IGNORED = "ignored"  # a valid notification of a type the portal does not act on
        REJECTED = "rejected"  # answered 4xx: nothing recorded beyond this row

    kind = models.CharField(max_length=20, choices=Kind.choices)
    # As given in the URL, so requests to an unknown endpoint are kept too.
    endpoint_uuid = models.CharField("endpoint UUID", max_length=100, blank=True, db_index=True)
    received_at = models.DateTimeField(db_index=True)
    remote_addr = models.GenericIPAddressField("source address", null=True, blank=True)
    method = models.CharField(max_length=10)
    headers = models.JSONField(default=dict, blank=True, help_text="The headers that matter; never cookies or credentials")
    query = models.TextField("query string", blank=True)
    body = models.BinaryField(blank=True, default=b"", help_text="The raw body, exactly as received (up to 64 KB)")
    body_size = models.PositiveIntegerField(default=0, help_text="bytes announced or received")
    status_code = models.PositiveSmallIntegerField("answer", db_index=True)
    outcome = models.CharField(max_length=20, choices=Outcome.choices, db_index=True)
    errors = models.JSONField(default=dict, blank=True, help_text="why it was rejected, field by field")
    redemption = models.ForeignKey(
        "Redemption", null=True, blank=True, on_delete=models.SET_NULL, related_name="requests"
    )
    notification = models.ForeignKey(
        "Notification", null=True, blank=True, on_delete=models.SET_NULL, related_name="requests"
    )

    class Meta:
        ordering = ["-received_at"]
        indexes = [models.Index(fields=["outcome", "-received_at"], name="inbound_outcome_recent")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.method} → {self.status_code} ({self.outcome})"


class ForwardingState(models.TextChoices):
    QUEUED = "queued"  # recorded; the worker has not forwarded it yet
    FORWARDED = "forwarded"  # handed to attentive_sync (a Delivery exists)
    PROCESSED = "processed"  # a notification acted on with nothing to forward (a mirror refresh)
    SKIPPED = "skipped"  # not forwarded: its event type is switched off in the Attentive settings
    IGNORED = "ignored"  # a notification of a type the portal does not act on: recorded only
    FAILED = "failed"  # could not be forwarded; ``failure`` says why and what to do


class ForwardedRecord(models.Model):
    """What the worker keeps about something received that it acts on (``sparkfly_sync.forwarding``)."""

    received_at = models.DateTimeField(db_index=True)
    state = models.CharField(max_length=20, choices=ForwardingState.choices, default=ForwardingState.QUEUED, db_index=True)
    attempts = models.PositiveIntegerField(default=0, help_text="times the worker tried to forward it")
    failure = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    delivery = models.ForeignKey(
        "attentive_sync.Delivery", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        abstract = True
        ordering = ["-received_at"]


class Redemption(ForwardedRecord):
    """One redemption Sparkfly reported through a conversion callback.

    ``dedup_key`` is the redemption's ``externalEventId`` (credential, offer and instant,
    ``sparkfly_sync.events.redemption_event_id``): a callback repeated by Sparkfly maps to the
    same row, and a replay reaches Attentive with the same id.
    """

    dedup_key = models.UUIDField("dedup key (externalEventId)", unique=True)
    endpoint = models.ForeignKey(ConversionEndpoint, null=True, on_delete=models.SET_NULL, related_name="redemptions")
    channel_id = models.BigIntegerField("Sparkfly channel id", null=True, blank=True)
    credential_id = models.BigIntegerField("Sparkfly credential id", db_index=True)
    offer_id = models.BigIntegerField("Sparkfly offer id", db_index=True)
    offer_ids = ArrayField(models.BigIntegerField(), default=list, blank=True)
    xid = models.CharField("XID", max_length=100, blank=True)
    store_id = models.BigIntegerField("Sparkfly store id", null=True, blank=True)
    redeemed_at = models.DateTimeField(db_index=True)
    credential_status = models.CharField(max_length=50, blank=True)
    sf_uid = models.CharField("member external id (sf_uid)", max_length=255, blank=True)
    sf_ac = models.CharField("creative (sf_ac)", max_length=255, blank=True)
    conv_ids = models.JSONField("conv_ids annotations", default=dict, blank=True)
    forwarded_at = models.DateTimeField(null=True, blank=True)

    class Meta(ForwardedRecord.Meta):
        # A member's redemptions by the external id the callback named (the portal's member page).
        indexes = [models.Index(fields=["sf_uid"], name="redemption_sf_uid")]

    def __str__(self) -> str:
        return f"Redemption of credential {self.credential_id} (offer {self.offer_id}) at {self.redeemed_at:%Y-%m-%d %H:%M:%S}"


class Notification(ForwardedRecord):
    """One signed event notification from Sparkfly, unique by the event's own id."""

    event_id = models.CharField("event id", max_length=255, unique=True)
    event_name = models.CharField(max_length=100, db_index=True)
    endpoint = models.ForeignKey(NotificationEndpoint, null=True, on_delete=models.SET_NULL, related_name="notifications")
    occurred_at = models.DateTimeField(null=True, blank=True)
    payload = models.JSONField(default=dict)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta(ForwardedRecord.Meta):
        indexes = [
            # The dashboard's rollups count points redeemed on the day they occurred: a day's
            # events, however late they were received (``portal.rollups``).
            models.Index(
                Coalesce("occurred_at", "received_at"), name="notification_points_occurred",
                condition=models.Q(event_name="loyalty.enrollment.points.redeemed"),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_name} {self.event_id}"


# =================================================================================================
# Issuance: credentials the portal asked Sparkfly to issue (``sparkfly_sync.issuance``)
# =================================================================================================


class IssuanceBatch(models.Model):
    """One issuance to many members (the admin's action, or ``manage.py issue_credentials``),
    run member by member by a background job. Its counters move in the transaction that
    settles each member's ``IssuanceRequest``, so the progress shown is always exact."""

    class State(models.TextChoices):
        QUEUED = "queued"  # waiting for a worker
        RUNNING = "running"
        DONE = "done"  # every member settled, or the job stopped early (see ``failure``)

    # The bulk form's key: submitting it twice queues one batch.
    idempotency_key = models.UUIDField("idempotency key", unique=True, default=uuid.uuid4, editable=False)
    channel = _sparkfly_relation("Channel", "+")
    offer_ids = ArrayField(models.BigIntegerField(), help_text="Sparkfly offer ids")
    member_ids = ArrayField(models.BigIntegerField(), help_text="Sparkfly member ids, in the order they are issued to")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    state = models.CharField(max_length=20, choices=State.choices, default=State.QUEUED, db_index=True)
    issued = models.PositiveIntegerField(default=0)
    refused = models.PositiveIntegerField(default=0, help_text="refused by the mirror's checks or by Sparkfly")
    failed = models.PositiveIntegerField(default=0, help_text="Sparkfly unreachable or failing; can be retried")
    failure = models.TextField(blank=True, help_text="why the job stopped before the last member")

    class Meta:
        verbose_name = "issuance batch"
        verbose_name_plural = "issuance batches"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Issuance to {len(self.member_ids)} members ({self.state})"

    @property
    def total(self) -> int:
        return len(self.member_ids)

    @property
    def settled(self) -> int:
        return self.issued + self.refused + self.failed


class IssuanceRequest(models.Model):
    """One credential issuance to one member, keyed by its idempotency key.

    A second submission of the same key returns this row's result instead of issuing again.
    ``credential`` is recorded as soon as Sparkfly creates the credential, so a retry resumes
    at attaching the offers rather than creating a second credential.
    """

    class State(models.TextChoices):
        PENDING = "pending"  # not settled yet (or being issued right now)
        ISSUED = "issued"
        REFUSED = "refused"  # by the mirror's checks or by Sparkfly: ``reason`` says why
        FAILED = "failed"  # Sparkfly unreachable or failing: submitting the same key again retries

    idempotency_key = models.UUIDField("idempotency key", unique=True)
    batch = models.ForeignKey(
        IssuanceBatch, null=True, blank=True, on_delete=models.PROTECT, related_name="requests", db_index=False
    )
    member = _sparkfly_relation("Member", "issuance_requests")
    channel = _sparkfly_relation("Channel", "+")
    offer_ids = ArrayField(models.BigIntegerField(), help_text="Sparkfly offer ids")
    state = models.CharField(max_length=20, choices=State.choices, default=State.PENDING)
    # Indexed by the unique constraint below.
    credential = models.ForeignKey(
        "Credential", to_field="sparkfly_id", db_constraint=False, db_index=False, null=True, blank=True,
        on_delete=models.DO_NOTHING, related_name="+",
    )
    # Set before a POST is sent and cleared when Sparkfly's answer arrives: a POST whose answer
    # never came may still have created a credential, which the next try looks for first.
    awaiting_creation = models.BooleanField(default=False)
    class Events(models.TextChoices):
        PENDING = "pending"  # not forwarded yet: tried again by the inbound sweep while Attentive would act on them
        FORWARDED = "forwarded"  # in the outbox (Deliveries), in the transaction that set this
        NOT_FORWARDED = "not_forwarded"  # given up: ``reason`` says why

    code = models.CharField("credential code", max_length=255, blank=True, db_index=True)
    reason = models.TextField(
        blank=True, help_text="why it was refused or failed, in Sparkfly's words; or why an issued one was not forwarded"
    )
    # Whether Attentive was told (``sparkfly.member.offer_state_created`` per offer). Apart from
    # ``state``: a credential Sparkfly issued stays issued whatever happens to its events.
    events = models.CharField(
        "Attentive events", max_length=20, choices=Events.choices, default=Events.PENDING,
        help_text="whether the offer_state_created events of an issued request were forwarded to Attentive",
    )
    attempts = models.PositiveIntegerField(default=0, help_text="times it was sent to Sparkfly")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "issuance request"
        ordering = ["-created_at"]
        permissions = [("issue_credentials", "Can issue credentials through Sparkfly")]
        constraints = [models.UniqueConstraint(fields=["credential"], name="issuance_one_request_per_credential")]
        indexes = [
            models.Index(fields=["state", "-created_at"], name="issuance_state_recent"),
            models.Index(fields=["batch", "state"], name="issuance_batch_state"),
            # The sweep's question: issued requests whose events are still to be forwarded.
            models.Index(
                fields=["finished_at"], name="issuance_events_pending",
                condition=models.Q(state="issued", events="pending"),
            ),
            # The dashboard's rollups: the issued requests of a few days, and those issued since
            # the last refresh (``portal.rollups``), without reading every request.
            models.Index(fields=["finished_at"], name="issuance_issued_finished", condition=models.Q(state="issued")),
        ]

    def __str__(self) -> str:
        return f"Issuance to member {self.member_id} ({self.state})"

    @property
    def settled(self) -> bool:
        return self.state != self.State.PENDING
