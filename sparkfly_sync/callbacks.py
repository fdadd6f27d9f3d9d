"""Telling Sparkfly where to call us: each channel's conversion callback URL, and the signed
event notifications' callback and subscriptions.

* A conversion callback URL is a credential (Sparkfly signs nothing it sends there): it holds
  its endpoint's secret. Nothing here logs it or puts it in an error; the masked template
  (the secret masked as ``sparkfly_sync.redaction`` masks it) is what people see.
* Sparkfly is called outside any transaction (a slow Sparkfly must not hold row locks); what
  it answers is written in a short transaction afterwards.
* Errors from Sparkfly (``sparkfly_sync.errors``) propagate with Sparkfly's words; the admin
  and ``manage.py sparkfly_callbacks`` report them.
"""

from __future__ import annotations

import copy
import logging
from urllib.parse import urlsplit
from collections.abc import Iterable, Sequence

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.urls import reverse
from django.utils import timezone

from sparkfly_sync.client import (
    CHANNEL_PATH,
    EVENT_CALLBACK_PATH,
    EVENT_CALLBACKS_PATH,
    EVENT_SUBSCRIPTION_PATH,
    EVENT_SUBSCRIPTIONS_PATH,
    SparkflyClient,
)
from sparkfly_sync.errors import SparkflyResponseError
from sparkfly_sync.inbound import rotate_secret
from sparkfly_sync.redaction import callback_fingerprint, redact
from sparkfly_sync.models import Channel, ConversionEndpoint, NotificationEndpoint, is_unreadable
from sparkfly_sync.serializers import HANDLED_EVENTS, ConversionSerializer
from sparkfly_sync.sync import resource_for_model

logger = logging.getLogger(__name__)

DEFAULT_EXTERNAL_ID = "sparkfly-attentive-portal"

# What ``callback_status`` answers, and how a person reads it.
SET = "set"
PREVIOUS_SECRET = "previous secret"
OTHER = "other"
MISSING = "missing"
STATUS_WORDS = {
    SET: "yes",
    PREVIOUS_SECRET: "yes, with the previous secret: set it again before that secret expires",
    OTHER: "no: Sparkfly calls another URL",
    MISSING: "no: Sparkfly has no conversion callback URL for this channel",
}


class SecretsUnreadable(Exception):
    """Secrets stored under keys this deployment no longer has; ``endpoints`` names them."""

    def __init__(self, endpoints: list[str]) -> None:
        super().__init__(", ".join(endpoints))
        self.endpoints = endpoints


# --- conversion callbacks ----------------------------------------------------------------------


def conversion_callback_template(endpoint: ConversionEndpoint, *, masked: bool = False) -> str:
    """The URL to give Sparkfly as the channel's ``conversion_callback_url``: every value
    Sparkfly can substitute, as a ``%{name}`` placeholder, and the endpoint's conv_ids keys.
    Unmasked it holds the secret: never log or display it. Masked, the secret reads as the
    logs show it (``sparkfly_sync.redaction.MASK``)."""
    template = _template(endpoint, endpoint.secret)
    return redact(template) if masked else template


def _template(endpoint: ConversionEndpoint, secret: str) -> str:
    path = reverse("sparkfly-conversion-callback", kwargs={"endpoint_uuid": str(endpoint.uuid), "secret": secret})
    names = (*ConversionSerializer.NAMED, *endpoint.conv_id_keys)
    return settings.PORTAL_PUBLIC_URL + path + "?" + "&".join(f"{name}=%{{{name}}}" for name in names)


def ensure_conversion_endpoints() -> list[ConversionEndpoint]:
    """One endpoint per mirrored channel, the missing ones created; ordered by channel, each
    with its channel joined."""
    with transaction.atomic():
        served = ConversionEndpoint.objects.filter(channel_id__isnull=False).values("channel_id")
        missing = Channel.objects.exclude(sparkfly_id__in=served).values_list("sparkfly_id", flat=True)
        # The unique constraint on channel makes a concurrent run's rows win, not fail this one.
        ConversionEndpoint.objects.bulk_create(
            [ConversionEndpoint(channel_id=channel_id) for channel_id in missing], ignore_conflicts=True
        )
    return list(
        ConversionEndpoint.objects.filter(channel_id__in=Channel.objects.values("sparkfly_id"))
        .select_related("channel")
        .order_by("channel_id")
    )


def callback_status(endpoint: ConversionEndpoint, channel: Channel) -> str:
    """Whether the channel's mirrored ``conversion_callback_url`` is this endpoint's: SET,
    PREVIOUS_SECRET (still accepted: set it again before it expires), OTHER or MISSING.
    Only as current as the mirror (``apply_conversion_callback`` and syncs refresh it)."""
    held = channel.conversion_callback_fingerprint
    if not channel.conversion_callback_url:
        return MISSING
    if held == callback_fingerprint(_template(endpoint, endpoint.secret)):
        return SET
    accepted = endpoint.accepted_secrets(timezone.now())
    if endpoint.previous_secret in accepted and held == callback_fingerprint(_template(endpoint, endpoint.previous_secret)):
        return PREVIOUS_SECRET
    return OTHER


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0"})


class UnreachableURL(ValueError):
    """PORTAL_PUBLIC_URL is not an address the real Sparkfly could (or should) call."""


def check_public_url() -> None:
    """Before giving Sparkfly a URL: the real Sparkfly must get an https URL on a public host
    (the URL carries a secret; a loopback address would silently cut the callbacks). Only a
    Sparkfly sandbox on this machine may be given a plain-http or loopback one."""
    url = urlsplit(settings.PORTAL_PUBLIC_URL)
    sparkfly = urlsplit(settings.SPARKFLY_API_URL or "")
    if sparkfly.hostname in LOOPBACK_HOSTS:
        return
    if url.scheme != "https" or url.hostname in LOOPBACK_HOSTS or not url.hostname:
        raise UnreachableURL(
            f"PORTAL_PUBLIC_URL is {settings.PORTAL_PUBLIC_URL!r}: Sparkfly needs the portal's public https "
            "address (set PORTAL_PUBLIC_URL); nothing was changed at Sparkfly."
        )


def rotate_conversion_secret(endpoint: ConversionEndpoint) -> None:
    """A new secret for the endpoint. The one Sparkfly calls with keeps working through the
    grace period, even when an earlier rotation was never applied (so rotating twice, or again
    after a failed apply, cannot cut Sparkfly off)."""
    channel = Channel.objects.filter(sparkfly_id=endpoint.channel_id).first()
    in_use = channel is not None and callback_status(endpoint, channel) == SET
    rotate_secret(endpoint, current_in_use=in_use)


def apply_conversion_callback(*, endpoint: ConversionEndpoint, client: SparkflyClient) -> Channel:
    """Set the endpoint's URL as its channel's conversion callback at Sparkfly, and mirror
    the channel Sparkfly returns (so ``callback_status`` reads SET). Returns that channel."""
    # The stored secret, not the caller's copy: rotate_secret saves a fresh instance, and an
    # outdated secret sent to Sparkfly would stop working when its grace period ends.
    check_public_url()
    endpoint.refresh_from_db(fields=["secret", "previous_secret", "previous_secret_expires_at", "conv_id_keys"])
    path = CHANNEL_PATH.format(channel_id=endpoint.channel_id)
    body = client.request(
        "PUT", path, json_body={"channel": {"conversion_callback_url": conversion_callback_template(endpoint)}}
    )
    channel = _unwrapped(body, "channel", path)
    resource = resource_for_model(Channel)
    with transaction.atomic():
        errors = resource.write_items([channel], f"channel {endpoint.channel_id}").errors
    if errors:
        raise SparkflyResponseError(f"Sparkfly's answer to PUT {path} could not be mirrored: {'; '.join(errors)}")
    logger.info("set the conversion callback of channel %s at Sparkfly", endpoint.channel_id)
    return Channel.objects.get(sparkfly_id=endpoint.channel_id)


def set_conv_id_keys(*, endpoints: Iterable[ConversionEndpoint], keys: Sequence[str]) -> None:
    """Which of the credentials' ``annotations["conv_ids"]`` keys the URLs ask Sparkfly for
    (apply the URLs again afterwards: Sparkfly still has the old template)."""
    keys = list(dict.fromkeys(keys))  # in the order given, once each
    unusable = [key for key in keys if not key or key in ConversionSerializer.NAMED or not _placeholder_safe(key)]
    if unusable:
        raise ValueError(
            f"Not usable as conv_ids keys: {', '.join(map(repr, unusable))} (a key must be non-empty, use only "
            f"letters, digits, '_', '-' or '.', and not be one of {', '.join(ConversionSerializer.NAMED)})."
        )
    endpoints = list(endpoints)
    longest = Channel._meta.get_field("conversion_callback_url").max_length
    for endpoint in endpoints:
        probe = copy.copy(endpoint)
        probe.conv_id_keys = keys
        # The mirror keeps this much of the URL: a longer one could never read as set.
        if len(conversion_callback_template(probe)) > longest:
            raise ValueError(f"With these conv_ids keys the URL would be over {longest} characters: use fewer.")
    with transaction.atomic():
        for endpoint in endpoints:
            endpoint.conv_id_keys = keys
            endpoint.save(update_fields=["conv_id_keys"])


def _placeholder_safe(key: str) -> bool:
    # It travels unescaped as a query key and inside %{…}: nothing that ends or splits either.
    return len(key) <= 100 and all(character.isascii() and (character.isalnum() or character in "_-.") for character in key)


def set_enabled(endpoints: QuerySet, *, enabled: bool) -> int:
    """Switch endpoints on or off (a disabled one answers 410 and records nothing new)."""
    return endpoints.exclude(is_enabled=enabled).update(is_enabled=enabled)


# --- event notifications -----------------------------------------------------------------------


def notification_url(endpoint: NotificationEndpoint) -> str:
    return settings.PORTAL_PUBLIC_URL + reverse("sparkfly-notifications", kwargs={"endpoint_uuid": str(endpoint.uuid)})


def register_notifications(
    *,
    client: SparkflyClient,
    external_id: str = DEFAULT_EXTERNAL_ID,
    events: Sequence[str] = HANDLED_EVENTS,
) -> NotificationEndpoint:
    """Make Sparkfly post ``events`` to our notification endpoint: its callback (found by
    ``external_id``, created when missing or pointing elsewhere) and one subscription per
    event. Idempotent: a second run creates nothing."""
    check_public_url()
    endpoint, _ = NotificationEndpoint.objects.get_or_create(external_id=external_id)
    url = notification_url(endpoint)
    callback = _find_callback(client, external_id)
    if callback is not None and (callback.get("url") != url or callback.get("enabled") is False):
        # Sparkfly's API has no update of a callback: replace it (its subscriptions go with it).
        client.request("DELETE", EVENT_CALLBACK_PATH.format(callback_id=callback["id"]))
        logger.info("deleted Sparkfly callback %s: it pointed elsewhere or was disabled", callback["id"])
        callback = None
    if callback is None:
        body = client.request(
            "POST", EVENT_CALLBACKS_PATH, json_body={"callback": {"url": url, "external_id": external_id, "enabled": True}}
        )
        callback = _unwrapped(body, "callback", EVENT_CALLBACKS_PATH)
        logger.info("created Sparkfly callback %s (%s)", callback.get("id"), external_id)
    callback_id = callback.get("id")
    if not isinstance(callback_id, int) or isinstance(callback_id, bool):
        raise SparkflyResponseError(f"Sparkfly's callback {external_id!r} has no numeric id.")
    _store_callback(endpoint, callback_id=callback_id, signing_key=callback.get("signing_key"))

    subscribed = set()
    for subscription in callback.get("subscriptions") or []:
        if not isinstance(subscription, dict):
            continue
        if subscription.get("enabled") is False and subscription.get("event") in events:
            # No update either: a disabled subscription is replaced by an enabled one.
            client.request("DELETE", EVENT_SUBSCRIPTION_PATH.format(subscription_id=subscription["id"]))
            continue
        subscribed.add(subscription.get("event"))
    for event in events:
        if event in subscribed:
            continue
        client.request(
            "POST",
            EVENT_SUBSCRIPTIONS_PATH,
            json_body={
                "subscription": {
                    "callback_id": callback_id,
                    "external_id": f"{external_id}:{event}",
                    "enabled": True,
                    "event": event,
                }
            },
        )
        logger.info("subscribed Sparkfly callback %s to %s", callback_id, event)
    endpoint.events = list(events)
    endpoint.save(update_fields=["events"])
    return endpoint


def _find_callback(client: SparkflyClient, external_id: str) -> dict | None:
    for page in client.iter_pages(
        EVENT_CALLBACKS_PATH, collection="callbacks", item="callback", per_page=settings.SPARKFLY_PAGE_SIZE
    ):
        for callback in page.items:
            if callback.get("external_id") == external_id:
                return callback
    return None


def _store_callback(endpoint: NotificationEndpoint, *, callback_id: int, signing_key) -> None:
    with transaction.atomic():
        if isinstance(signing_key, str) and signing_key and signing_key != endpoint.secret:
            # The previous key stays accepted through the grace period: events Sparkfly
            # signed with it may still be on their way.
            rotate_secret(endpoint, new_secret=signing_key)
        NotificationEndpoint.objects.filter(pk=endpoint.pk).update(sparkfly_callback_id=callback_id)
    endpoint.refresh_from_db()


def _unwrapped(body: dict, key: str, path: str) -> dict:
    item = body.get(key)
    if not isinstance(item, dict):
        raise SparkflyResponseError(f"Sparkfly's answer to {path} has no {key!r} object (keys: {sorted(body)[:10]}).")
    return item


# --- secrets at rest ---------------------------------------------------------------------------


def reencrypt_secrets() -> int:
    """Encrypt every endpoint's secrets again under the current SECRET_KEY and first salt of
    FIELD_ENCRYPTION_SALTS; returns how many endpoints were re-saved. Refuses, changing
    nothing, when any secret cannot be read: saving it would encrypt the ciphertext a second
    time, beyond recovery even with the old keys back."""
    endpoints = [*ConversionEndpoint.objects.order_by("pk"), *NotificationEndpoint.objects.order_by("pk")]
    unreadable = [
        str(endpoint)
        for endpoint in endpoints
        if is_unreadable(endpoint.secret) or is_unreadable(endpoint.previous_secret)
    ]
    if unreadable:
        raise SecretsUnreadable(unreadable)
    with transaction.atomic():
        for endpoint in endpoints:
            # Saving encrypts with the first key; reading tried them all.
            fields = [name for name in ("secret", "previous_secret") if getattr(endpoint, name)]
            if fields:
                endpoint.save(update_fields=fields)
    return len(endpoints)
