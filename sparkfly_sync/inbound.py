"""Record what Sparkfly sends: authenticate the endpoint, keep every request, queue the work.

Record first, in one transaction (ARCHITECTURE "Record first, forward later"): an accepted
redemption or notification, its ``InboundRequest`` and the job that acts on it commit together,
so a request answered 2xx always has its job, and a crash before the commit leaves nothing
half-done (Sparkfly then retries). Nothing here calls Sparkfly or Attentive.

Duplicates are decided by the database: the unique ``dedup_key`` / ``event_id``. Of two
concurrent copies, the second INSERT waits for the first to commit and then fails; it is
answered with the first's record, and nothing new is queued.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from attentive_sync.retention import BATCH, Pruned, delete_in_batches
from sparkfly_sync import events
from sparkfly_sync.models import (
    ConversionEndpoint,
    ForwardingState,
    InboundRequest,
    Notification,
    NotificationEndpoint,
    Redemption,
    new_endpoint_secret,
)

MAX_BODY_BYTES = 64 * 1024
SIGNATURE_HEADER = "X-Hmac-Sha256-Signature"
# The headers worth keeping for an audit; cookies and credentials are never stored.
KEPT_HEADERS = (
    "Content-Type",
    "Content-Length",
    "Transfer-Encoding",
    "User-Agent",
    "X-Forwarded-For",
    "X-Real-Ip",
    "X-Request-Id",
    SIGNATURE_HEADER,
)
MAX_HEADER_VALUE = 500
# Compared against when the endpoint is unknown, so an unknown endpoint costs what a known one does.
_ABSENT_SECRET = "-" * 43


@dataclass
class Arrival:
    """One request as it reached an endpoint, before any judgement of it."""

    kind: str
    endpoint_uuid: str
    method: str
    received_at: datetime = field(default_factory=timezone.now)
    remote_addr: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    query: str = ""
    body: bytes = b""
    body_size: int = 0

    @classmethod
    def from_request(cls, request, *, kind: str, endpoint_uuid: str) -> Arrival:
        remote = request.META.get("REMOTE_ADDR") or ""
        try:
            ipaddress.ip_address(remote)
        except ValueError:
            remote = None  # a unix socket, or a proxy that sets no address
        return cls(
            kind=kind,
            endpoint_uuid=storable(endpoint_uuid[:100]),
            method=storable(request.method[:10]),
            remote_addr=remote,
            headers={
                name: storable(request.headers[name][:MAX_HEADER_VALUE])
                for name in KEPT_HEADERS
                if name in request.headers
            },
            query=storable(request.META.get("QUERY_STRING", "")),
        )


def storable(text: str) -> str:
    """Text PostgreSQL can store: NUL and unpaired surrogates (which a URL or JSON escape can
    carry) replaced. Used on what is recorded about a request, so even a request refused for
    carrying them is kept."""
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def _storable_errors(errors):
    if isinstance(errors, dict):
        return {storable(str(key)): _storable_errors(value) for key, value in errors.items()}
    if isinstance(errors, list):
        return [_storable_errors(item) for item in errors]
    return storable(errors) if isinstance(errors, str) else errors


class Rejected(Exception):
    """A request answered 4xx. ``detail`` is for a person; ``errors`` names each bad field."""

    def __init__(self, status: int, detail: str, errors: dict[str, list[str]] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors or {}

    def as_answer(self) -> dict:
        return {"detail": self.detail, **({"errors": self.errors} if self.errors else {})}


def not_found() -> Rejected:
    # A new one each time: a shared instance would keep the last traceback (and the secrets in
    # its frames) alive between requests.
    return Rejected(404, "Not found.")


def _parse_uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def _check_enabled(endpoint) -> None:
    if not endpoint.is_enabled:
        raise Rejected(410, "This endpoint has been switched off in the portal; nothing was recorded.")


# --- conversion callbacks ---------------------------------------------------------------------


def authenticate_conversion_endpoint(endpoint_uuid: str, secret: str) -> ConversionEndpoint:
    """The endpoint the URL names, if the URL carries one of its secrets; else 404.

    An unknown endpoint and a wrong secret are answered alike, so the answer tells a prober
    nothing; the secret is compared in constant time (the UUID is not secret: an unknown one
    costs a little less, which tells a prober only what the 404 says).
    """
    parsed = _parse_uuid(endpoint_uuid)
    endpoint = ConversionEndpoint.objects.filter(uuid=parsed).first() if parsed else None
    candidates = endpoint.accepted_secrets(timezone.now()) if endpoint else [_ABSENT_SECRET]
    given = secret.encode("utf-8", "surrogateescape")
    # Every candidate is compared (no short-circuit), in constant time.
    matches = [hmac.compare_digest(candidate.encode(), given) for candidate in candidates]
    if endpoint is None or not any(matches):
        raise not_found()
    _check_enabled(endpoint)
    return endpoint


def record_redemption(arrival: Arrival, endpoint: ConversionEndpoint, values: dict) -> tuple[Redemption, bool]:
    """Record a valid conversion callback; returns the redemption and whether it is new.

    A new redemption is queued for forwarding in the same transaction.
    """
    from sparkfly_sync.tasks import queue_record

    dedup_key = events.redemption_event_id(
        credential_id=values["credential_id"], offer_id=values["offer_id"], redeemed_at=values["redeemed_at"]
    )
    with transaction.atomic():
        try:
            with transaction.atomic():  # a savepoint: the duplicate's failed INSERT must not end the transaction
                redemption = Redemption.objects.create(
                    dedup_key=dedup_key,
                    endpoint=endpoint,
                    channel_id=endpoint.channel_id,
                    credential_id=values["credential_id"],
                    offer_id=values["offer_id"],
                    offer_ids=values.get("offer_ids", []),
                    xid=values.get("xid", ""),
                    store_id=values.get("store_id"),
                    redeemed_at=values["redeemed_at"],
                    credential_status=values.get("status", ""),
                    sf_uid=values.get("sf_uid", ""),
                    sf_ac=values.get("sf_ac", ""),
                    conv_ids=values.get("conv_ids", {}),
                    received_at=arrival.received_at,
                )
        except IntegrityError:
            original = Redemption.objects.get(dedup_key=dedup_key)
            _record(arrival, 200, InboundRequest.Outcome.DUPLICATE, redemption=original)
            return original, False
        queue_record(redemption)
        _record(arrival, 202, InboundRequest.Outcome.ACCEPTED, redemption=redemption)
    return redemption, True


# --- event notifications ------------------------------------------------------------------------


def find_notification_endpoint(endpoint_uuid: str) -> NotificationEndpoint:
    parsed = _parse_uuid(endpoint_uuid)
    endpoint = NotificationEndpoint.objects.filter(uuid=parsed).first() if parsed else None
    if endpoint is None:
        raise not_found()
    _check_enabled(endpoint)
    return endpoint


def signature_matches(body: bytes, signature: str, signing_keys: list[str]) -> bool:
    """HMAC-SHA256 of the raw body, base64, against each accepted signing key.

    ASSUMPTION: Sparkfly hands out the key base64-encoded and does not say whether the HMAC
    key is that text or the bytes it encodes; both readings are accepted (either one proves
    the sender holds the key).
    """
    try:
        given = base64.b64decode(signature.strip(), validate=True)
    except (ValueError, TypeError):
        return False
    matched = False
    for key in signing_keys:
        for key_bytes in _key_readings(key):
            expected = hmac.new(key_bytes, body, hashlib.sha256).digest()
            matched |= hmac.compare_digest(expected, given)
    return matched


def _key_readings(key: str) -> list[bytes]:
    readings = [key.encode("utf-8")]
    try:
        readings.append(base64.b64decode(key, validate=True))
    except ValueError:
        pass
    return readings


def verify_signature(arrival: Arrival, endpoint: NotificationEndpoint) -> None:
    signature = arrival.headers.get(SIGNATURE_HEADER, "")
    if not signature:
        raise Rejected(401, f"The {SIGNATURE_HEADER.lower()} header is missing: Sparkfly signs every event notification.")
    keys = endpoint.accepted_secrets(timezone.now())
    if not keys:
        raise Rejected(
            401,
            "This endpoint has no signing key yet: register it with `manage.py sparkfly_callbacks --apply` "
            "(or paste the callback's signing_key in the admin).",
        )
    if not signature_matches(arrival.body, signature, keys):
        raise Rejected(401, f"The {SIGNATURE_HEADER.lower()} signature does not match the body.")


def notification_event_id(envelope: dict, body: bytes) -> str:
    from sparkfly_sync.serializers import EVENT_ID_KEYS

    for key in EVENT_ID_KEYS:
        value = envelope.get(key)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
            event_id = str(value).strip()
            # Cut short, two long ids could become one (and the second be taken for a duplicate).
            return event_id if len(event_id) <= 255 else "sha256:" + hashlib.sha256(event_id.encode()).hexdigest()
    return "sha256:" + hashlib.sha256(body).hexdigest()


def record_notification(
    arrival: Arrival,
    endpoint: NotificationEndpoint,
    *,
    event_id: str,
    event_name: str,
    occurred_at: datetime | None,
    payload: dict,
    handled: bool,
) -> tuple[Notification, bool]:
    """Record a verified notification; a new one of a handled type is queued in the same
    transaction, one of any other type is kept as ``ignored``."""
    from sparkfly_sync.tasks import queue_record

    with transaction.atomic():
        try:
            with transaction.atomic():
                notification = Notification.objects.create(
                    event_id=event_id,
                    event_name=event_name,
                    endpoint=endpoint,
                    occurred_at=occurred_at,
                    payload=payload,
                    received_at=arrival.received_at,
                    state=ForwardingState.QUEUED if handled else ForwardingState.IGNORED,
                )
        except IntegrityError:
            original = Notification.objects.get(event_id=event_id)
            _record(arrival, 200, InboundRequest.Outcome.DUPLICATE, notification=original)
            return original, False
        if handled:
            queue_record(notification)
            _record(arrival, 202, InboundRequest.Outcome.ACCEPTED, notification=notification)
        else:
            _record(arrival, 200, InboundRequest.Outcome.IGNORED, notification=notification)
    return notification, True


# --- the record of every request ----------------------------------------------------------------


def record_rejection(arrival: Arrival, rejection: Rejected) -> InboundRequest:
    return _record(
        arrival, rejection.status, InboundRequest.Outcome.REJECTED, errors=_storable_errors(rejection.as_answer())
    )


def _record(arrival: Arrival, status: int, outcome: str, **links) -> InboundRequest:
    return InboundRequest.objects.create(
        kind=arrival.kind,
        endpoint_uuid=arrival.endpoint_uuid,
        received_at=arrival.received_at,
        remote_addr=arrival.remote_addr,
        method=arrival.method,
        headers=arrival.headers,
        query=arrival.query,
        body=arrival.body,
        body_size=arrival.body_size,
        status_code=status,
        outcome=outcome,
        **links,
    )


# --- endpoint management ------------------------------------------------------------------------


def rotate_secret(
    endpoint: ConversionEndpoint | NotificationEndpoint, *, new_secret: str | None = None, current_in_use: bool = True
) -> None:
    """Replace the endpoint's secret (a conversion endpoint's URL secret, or a notification
    endpoint's signing key); the old one keeps working for SPARKFLY_CALLBACK_SECRET_GRACE_HOURS,
    until Sparkfly has the new one.

    ``current_in_use=False`` says Sparkfly never received the current secret (a rotation whose
    new URL was not applied): rotating again then keeps the previous secret — the one Sparkfly
    still calls with — rather than replacing it by one nobody holds."""
    now = timezone.now()
    fields = ["secret", "previous_secret", "previous_secret_expires_at", "secret_rotated_at"]
    with transaction.atomic():
        locked = type(endpoint).objects.select_for_update().get(pk=endpoint.pk)
        previous_still_valid = bool(locked.previous_secret) and locked.previous_secret in locked.accepted_secrets(now)
        if locked.secret and (current_in_use or not previous_still_valid):
            locked.previous_secret = locked.secret
            locked.previous_secret_expires_at = now + timedelta(hours=settings.SPARKFLY_CALLBACK_SECRET_GRACE_HOURS)
        locked.secret = new_secret if new_secret is not None else new_endpoint_secret()
        locked.secret_rotated_at = now
        locked.save(update_fields=fields)
    # The caller's object gets the new secret too: sending a stale one to Sparkfly would
    # install a URL that stops working when the grace period ends.
    for name in fields:
        setattr(endpoint, name, getattr(locked, name))


def prune_requests(*, now: datetime | None = None, batch: int = BATCH) -> Pruned:
    """Delete request records older than RETENTION_DAYS (their raw bodies are the bulk of the
    table), in short batches; redemptions and notifications are kept, so dedup outlives them."""
    if settings.RETENTION_DAYS <= 0:
        return Pruned("webhook requests")
    cutoff = (now or timezone.now()) - timedelta(days=settings.RETENTION_DAYS)
    return delete_in_batches(
        InboundRequest.objects.filter(received_at__lt=cutoff), what="webhook requests", batch=batch
    )
