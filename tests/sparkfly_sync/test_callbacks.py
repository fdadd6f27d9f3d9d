"""Telling Sparkfly where to call us (``sparkfly_sync.callbacks`` and ``manage.py
sparkfly_callbacks``), against the Sparkfly sandbox over loopback HTTP and the real PostgreSQL.

The end-to-end tests at the bottom let the sandbox call a live portal: a redemption through
the conversion callback URL the command set, and a signed notification through the callback
it registered."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from sparkfly_sync import callbacks, inbound, payloads
from sparkfly_sync.client import (
    CHANNEL_PATH,
    CREDENTIAL_REDEEM_PATH,
    CREDENTIALS_PATH,
    EVENT_CALLBACKS_PATH,
    EVENT_SUBSCRIPTIONS_PATH,
    LOYALTY_ENROLLMENTS_PATH,
    OFFERS_PATH,
    client_from_settings,
)
from sparkfly_sync.models import Channel, ConversionEndpoint, InboundRequest, Notification, NotificationEndpoint
from sparkfly_sync.models import Redemption
from sparkfly_sync.serializers import HANDLED_EVENTS
from sparkfly_sync.sync import sync_resource

pytestmark = pytest.mark.django_db

PORTAL = "https://portal.example.com"
PLACEHOLDERS = (
    "credential_id=%{credential_id}&xid=%{xid}&offer_id=%{offer_id}&offer_ids=%{offer_ids}&store_id=%{store_id}"
    "&redeemed_at=%{redeemed_at}&status=%{status}&sf_uid=%{sf_uid}&sf_ac=%{sf_ac}"
)


@pytest.fixture
def portal(sparkfly_settings):
    """The portal's settings pointed at the sandbox, its three channels mirrored."""
    sparkfly_settings.PORTAL_PUBLIC_URL = PORTAL
    sync_resource("channels", client=client_from_settings())
    return sparkfly_settings


@pytest.fixture
def sandbox(sparkfly_sandbox):
    return sparkfly_sandbox.sandbox


def run(*args: str) -> str:
    out = StringIO()
    call_command("sparkfly_callbacks", *args, stdout=out, stderr=out)
    return out.getvalue()


def channel_ids() -> list[int]:
    return list(Channel.objects.order_by("sparkfly_id").values_list("sparkfly_id", flat=True))


def at_sparkfly(channel_id: int) -> str | None:
    return client_from_settings().get(CHANNEL_PATH.format(channel_id=channel_id))["channel"]["conversion_callback_url"]


def status_of(channel_id: int) -> str:
    endpoint = ConversionEndpoint.objects.get(channel_id=channel_id)
    return callbacks.callback_status(endpoint, Channel.objects.get(sparkfly_id=channel_id))


def sparkfly_callbacks() -> list[dict]:
    return [entry["callback"] for entry in client_from_settings().get(EVENT_CALLBACKS_PATH)["callbacks"]]


def sparkfly_subscriptions() -> list[dict]:
    return [entry["subscription"] for entry in client_from_settings().get(EVENT_SUBSCRIPTIONS_PATH)["subscriptions"]]


# --- templates and endpoints ---------------------------------------------------------------------


def test_the_template_names_every_placeholder_and_the_conv_ids_keys(settings):
    settings.PORTAL_PUBLIC_URL = PORTAL
    endpoint = ConversionEndpoint.objects.create(channel_id=7, conv_id_keys=["loyalty_ref", "campaign"])
    base = f"{PORTAL}/hooks/sparkfly/channels/{endpoint.uuid}"

    assert callbacks.conversion_callback_template(endpoint) == (
        f"{base}/{endpoint.secret}/conversions?{PLACEHOLDERS}&loyalty_ref=%{{loyalty_ref}}&campaign=%{{campaign}}"
    )
    masked = callbacks.conversion_callback_template(endpoint, masked=True)
    assert masked == f"{base}/[secret]/conversions?{PLACEHOLDERS}&loyalty_ref=%{{loyalty_ref}}&campaign=%{{campaign}}"
    assert endpoint.secret not in masked


def test_endpoints_are_created_once_per_mirrored_channel(portal):
    first = callbacks.ensure_conversion_endpoints()
    second = callbacks.ensure_conversion_endpoints()

    assert [endpoint.channel_id for endpoint in first] == channel_ids()
    assert [endpoint.pk for endpoint in second] == [endpoint.pk for endpoint in first]
    assert ConversionEndpoint.objects.count() == 3
    assert len({endpoint.secret for endpoint in first}) == 3


def as_mirrored(channel, url: str) -> None:
    """The channel as a sync would mirror it with ``url`` at Sparkfly (masked, fingerprinted)."""
    row = payloads.channel_row({"id": channel.sparkfly_id, "conversion_callback_url": url})
    channel.conversion_callback_url = row["conversion_callback_url"]
    channel.conversion_callback_fingerprint = row["conversion_callback_fingerprint"]


def test_status_reads_missing_other_set_and_previous_secret(portal, settings):
    endpoint = callbacks.ensure_conversion_endpoints()[0]
    channel = endpoint.channel
    assert callbacks.callback_status(endpoint, channel) == callbacks.MISSING

    as_mirrored(channel, "https://elsewhere.example.com/callback?id=%{credential_id}")
    assert callbacks.callback_status(endpoint, channel) == callbacks.OTHER

    as_mirrored(channel, callbacks.conversion_callback_template(endpoint))
    assert callbacks.callback_status(endpoint, channel) == callbacks.SET

    inbound.rotate_secret(endpoint)
    endpoint.refresh_from_db()
    assert callbacks.callback_status(endpoint, channel) == callbacks.PREVIOUS_SECRET

    endpoint.previous_secret_expires_at = timezone.now() - timedelta(seconds=1)  # the grace period is over
    assert callbacks.callback_status(endpoint, channel) == callbacks.OTHER


# --- applying ----------------------------------------------------------------------------------


def test_apply_sets_the_url_at_sparkfly_and_mirrors_the_channel(portal):
    endpoint = callbacks.ensure_conversion_endpoints()[0]

    channel = callbacks.apply_conversion_callback(endpoint=endpoint, client=client_from_settings())

    assert at_sparkfly(endpoint.channel_id) == callbacks.conversion_callback_template(endpoint)
    # The mirror keeps it masked (it holds the endpoint's secret), with a fingerprint of the real one.
    assert channel.conversion_callback_url == callbacks.conversion_callback_template(endpoint, masked=True)
    assert endpoint.secret not in json.dumps(channel.raw)
    assert status_of(endpoint.channel_id) == callbacks.SET


def test_the_command_applies_every_channel_and_registers_the_notifications(portal, sandbox):
    output = run("--apply")

    for channel_id in channel_ids():
        endpoint = ConversionEndpoint.objects.get(channel_id=channel_id)
        assert at_sparkfly(channel_id) == callbacks.conversion_callback_template(endpoint)
        assert status_of(channel_id) == callbacks.SET
        assert f"channel {channel_id} “" in output
    assert output.count("conversion callback set at Sparkfly.") == 3
    assert output.count(f"Sparkfly has it: {callbacks.STATUS_WORDS[callbacks.SET]}") == 3
    endpoint = NotificationEndpoint.objects.get()
    assert f"registered as Sparkfly callback {endpoint.sparkfly_callback_id}" in output
    assert "signing key: held" in output


def test_rotation_reads_previous_secret_until_applied_again(portal):
    run("--apply")
    channel_id = channel_ids()[0]

    output = run("--rotate", "--channel", str(channel_id))

    assert "Sparkfly still calls the previous URLs: run with --apply before then." in output
    assert status_of(channel_id) == callbacks.PREVIOUS_SECRET
    assert [status_of(other) for other in channel_ids()[1:]] == [callbacks.SET, callbacks.SET]
    endpoint = ConversionEndpoint.objects.get(channel_id=channel_id)
    assert endpoint.previous_secret and endpoint.accepted_secrets(timezone.now()) == [
        endpoint.secret, endpoint.previous_secret
    ]

    run("--apply", "--channel", str(channel_id))

    assert status_of(channel_id) == callbacks.SET
    assert at_sparkfly(channel_id) == callbacks.conversion_callback_template(endpoint)


def test_rotate_and_apply_together_leave_the_status_set(portal):
    channel_id = channel_ids()[1]
    run("--apply")
    before = ConversionEndpoint.objects.get(channel_id=channel_id).secret

    run("--rotate", "--apply", "--channel", str(channel_id))

    endpoint = ConversionEndpoint.objects.get(channel_id=channel_id)
    assert endpoint.secret != before and endpoint.previous_secret == before
    assert status_of(channel_id) == callbacks.SET


def test_conv_id_keys_are_added_to_the_selected_templates(portal):
    first, second, _ = channel_ids()

    output = run("--conv-id", "loyalty_ref", "--conv-id", "campaign", "--channel", str(first), "--apply",
                 "--channel", str(first))

    assert f"conv_ids keys of channel {first}: loyalty_ref, campaign." in output
    assert at_sparkfly(first).endswith("&sf_ac=%{sf_ac}&loyalty_ref=%{loyalty_ref}&campaign=%{campaign}")
    assert at_sparkfly(second) is None  # not selected: not applied
    assert ConversionEndpoint.objects.get(channel_id=second).conv_id_keys == []


@pytest.mark.parametrize("key", ["offer_id", "has space", "a&b", "x}y", ""])
def test_unusable_conv_id_keys_are_refused(portal, key):
    with pytest.raises(CommandError, match="Not usable as conv_ids keys"):
        run("--conv-id", key)
    assert not ConversionEndpoint.objects.exclude(conv_id_keys=[]).exists()


def test_conv_id_keys_that_would_make_the_url_too_long_for_the_mirror_are_refused(portal):
    keys = [f"key_{n:02d}_" + "k" * 80 for n in range(20)]

    with pytest.raises(CommandError, match="the URL would be over 2000 characters"):
        run(*(arg for key in keys for arg in ("--conv-id", key)))
    assert not ConversionEndpoint.objects.exclude(conv_id_keys=[]).exists()


def test_an_unknown_channel_is_refused_before_anything_changes(portal):
    with pytest.raises(CommandError, match="No mirrored channel with Sparkfly id 999"):
        run("--channel", "999", "--rotate")
    assert not ConversionEndpoint.objects.filter(secret_rotated_at__isnull=False).exists()


def test_one_channel_failing_does_not_stop_the_others_and_the_command_fails(portal, sandbox):
    failing, *others = channel_ids()
    sandbox.inject_fault(
        CHANNEL_PATH.format(channel_id=failing),
        status=422,
        body=json.dumps({"channel": {}, "errors": {"conversion_callback_url": "is not allowed on this channel"}}),
    )

    with pytest.raises(CommandError) as failure:
        run("--apply")

    assert f"channel {failing} “" in str(failure.value)
    assert "is not allowed on this channel" in str(failure.value)
    assert "1 of the changes at Sparkfly failed" in str(failure.value)
    assert at_sparkfly(failing) is None
    assert [status_of(channel_id) for channel_id in others] == [callbacks.SET, callbacks.SET]
    assert NotificationEndpoint.objects.get().sparkfly_callback_id is not None  # registered all the same


def test_apply_without_sparkfly_credentials_fails_clearly_and_changes_nothing(portal, settings):
    settings.SPARKFLY_API_URL = settings.SPARKFLY_IDENTITY = settings.SPARKFLY_KEY = ""

    with pytest.raises(CommandError) as failure:
        run("--apply", "--rotate")

    assert "set SPARKFLY_API_URL, SPARKFLY_IDENTITY, SPARKFLY_KEY" in str(failure.value)
    assert not ConversionEndpoint.objects.filter(secret_rotated_at__isnull=False).exists()


# --- secrets never shown -----------------------------------------------------------------------


def test_only_show_secrets_prints_the_secrets(portal, caplog):
    caplog.set_level(logging.DEBUG)
    run("--apply")
    default = run()
    rotated = run("--rotate", "--apply")
    secrets = [secret for pair in ConversionEndpoint.objects.values_list("secret", "previous_secret") for secret in pair]
    signing_key = NotificationEndpoint.objects.get().secret

    shown = run("--show-secrets")

    for output in (default, rotated):
        assert "[secret]" in output
        for secret in [*secrets, signing_key]:
            assert secret not in output
    for secret in [*secrets, signing_key]:
        assert secret not in caplog.text
    assert "These URLs contain their endpoints' secrets" in shown
    for endpoint in ConversionEndpoint.objects.all():
        assert callbacks.conversion_callback_template(endpoint) in shown
    assert signing_key not in shown  # not even here


def test_an_abbreviation_of_show_secrets_is_not_taken_for_it(portal):
    with pytest.raises(CommandError, match="unrecognized arguments: --show"):
        run("--show")


# --- event notifications ----------------------------------------------------------------------


def test_register_creates_the_callback_and_its_subscriptions_once(portal, sandbox):
    first = callbacks.register_notifications(client=client_from_settings())
    second = callbacks.register_notifications(client=client_from_settings())

    assert sandbox.count_requests(EVENT_CALLBACKS_PATH, "POST") == 1
    assert sandbox.count_requests(EVENT_SUBSCRIPTIONS_PATH, "POST") == len(HANDLED_EVENTS)
    assert [request.method for request in sandbox.requests_log if request.method == "DELETE"] == []
    (callback,) = sparkfly_callbacks()
    assert callback["external_id"] == "sparkfly-attentive-portal"
    assert callback["url"] == f"{PORTAL}/hooks/sparkfly/notifications/{first.uuid}"
    assert callback["enabled"] is True
    assert sorted(s["event"] for s in sparkfly_subscriptions()) == sorted(HANDLED_EVENTS)
    assert {s["external_id"] for s in sparkfly_subscriptions()} == {
        f"sparkfly-attentive-portal:{event}" for event in HANDLED_EVENTS
    }
    assert second.pk == first.pk and NotificationEndpoint.objects.count() == 1
    assert (second.sparkfly_callback_id, second.secret) == (callback["id"], callback["signing_key"])
    assert second.events == list(HANDLED_EVENTS)
    assert second.previous_secret is None  # the key did not change: nothing rotated


def test_a_missing_subscription_is_added_and_only_it(portal, sandbox):
    callbacks.register_notifications(client=client_from_settings(), events=HANDLED_EVENTS[:2])

    endpoint = callbacks.register_notifications(client=client_from_settings())

    assert sandbox.count_requests(EVENT_CALLBACKS_PATH, "POST") == 1
    assert sandbox.count_requests(EVENT_SUBSCRIPTIONS_PATH, "POST") == len(HANDLED_EVENTS)
    assert sorted(s["event"] for s in sparkfly_subscriptions()) == sorted(HANDLED_EVENTS)
    assert endpoint.events == list(HANDLED_EVENTS)


def test_a_callback_pointing_elsewhere_is_replaced_and_the_previous_key_stays_accepted(portal, settings):
    before = callbacks.register_notifications(client=client_from_settings())
    old_key = before.secret
    settings.PORTAL_PUBLIC_URL = "https://new-portal.example.com"  # the portal moved

    after = callbacks.register_notifications(client=client_from_settings())

    (callback,) = sparkfly_callbacks()
    assert callback["url"] == f"https://new-portal.example.com/hooks/sparkfly/notifications/{after.uuid}"
    assert after.sparkfly_callback_id == callback["id"] != before.sparkfly_callback_id
    assert after.secret == callback["signing_key"] != old_key
    assert after.previous_secret == old_key
    body = b'{"event_name":"sf.member.updated"}'
    signed_with_old_key = base64.b64encode(hmac.new(old_key.encode(), body, hashlib.sha256).digest()).decode()
    assert inbound.signature_matches(body, signed_with_old_key, after.accepted_secrets(timezone.now()))
    assert sorted(s["event"] for s in sparkfly_subscriptions()) == sorted(HANDLED_EVENTS)
    assert {s["callback_id"] for s in sparkfly_subscriptions()} == {callback["id"]}


def test_a_sparkfly_error_while_registering_is_raised_in_sparkflys_words(portal, sandbox):
    sandbox.inject_fault(EVENT_SUBSCRIPTIONS_PATH, status=422, body='{"errors": {"event": "is not included in the list"}}')

    with pytest.raises(CommandError, match="is not included in the list"):
        run("--apply")


# --- secrets at rest ---------------------------------------------------------------------------


@pytest.fixture
def salts(settings):
    """``salts([...])`` switches FIELD_ENCRYPTION_SALTS (settings.SALT_KEY), forgetting the keys
    each encrypted field derived once per process, now and again afterwards."""
    fields = [
        model._meta.get_field(name)
        for model in (ConversionEndpoint, NotificationEndpoint)
        for name in ("secret", "previous_secret")
    ]

    def forget_derived_keys():
        for field in fields:
            for cached in ("keys", "f"):
                field.__dict__.pop(cached, None)

    def use(values: list[str]) -> None:
        settings.SALT_KEY = values
        forget_derived_keys()

    yield use
    forget_derived_keys()


def stored_ciphertexts() -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT secret, previous_secret FROM sparkfly_sync_conversionendpoint "
            "UNION ALL SELECT secret, previous_secret FROM sparkfly_sync_notificationendpoint ORDER BY 1"
        )
        return cursor.fetchall()


def test_reencrypt_keeps_the_secrets_readable_after_a_salt_rotation(portal, salts):
    salts(["old-salt"])
    run("--apply")
    run("--rotate")  # a previous secret too
    secrets = sorted(ConversionEndpoint.objects.values_list("secret", "previous_secret"))
    signing_key = NotificationEndpoint.objects.get().secret
    under_old_salt = stored_ciphertexts()

    salts(["new-salt", "old-salt"])
    output = run("--reencrypt")

    assert "Re-encrypted the secrets of 4 endpoints with the current SECRET_KEY and first salt" in output
    assert stored_ciphertexts() != under_old_salt
    salts(["new-salt"])  # the old salt retired
    assert sorted(ConversionEndpoint.objects.values_list("secret", "previous_secret")) == secrets
    assert NotificationEndpoint.objects.get().secret == signing_key
    assert [status_of(channel_id) for channel_id in channel_ids()] == [callbacks.PREVIOUS_SECRET] * 3


def test_reencrypt_refuses_secrets_it_cannot_read_and_changes_nothing(portal, salts):
    salts(["old-salt"])
    callbacks.ensure_conversion_endpoints()
    stored = stored_ciphertexts()
    salts(["new-salt"])  # the old salt dropped without being kept

    with pytest.raises(CommandError, match="Nothing was re-encrypted: the secrets of Conversion callbacks of channel"):
        run("--reencrypt")
    output = run()

    assert stored_ciphertexts() == stored
    assert "cannot be decrypted with the current SECRET_KEY" in output


# --- end to end: Sparkfly calls the live portal ---------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_redemption_reaches_the_portal_through_the_url_the_command_set(sparkfly_settings, live_server):
    sparkfly_settings.PORTAL_PUBLIC_URL = live_server.url
    client = client_from_settings()
    sync_resource("channels", client=client)
    offer = next(
        offer
        for item in client.get(OFFERS_PATH, per_page=100)["offers"]
        if (offer := client.get(f"{OFFERS_PATH}/{item['offer']['id']}")["offer"])["status"] == "approved"
        and offer.get("channels")
        and offer["expires_at"] > timezone.now().isoformat()
    )
    channel_id = offer["channels"][0]["channel"]["id"]
    run("--apply", "--channel", str(channel_id), "--conv-id", "loyalty_ref")
    body = {"credential": {"member_id": 1001, "channel_id": channel_id, "offer_id": offer["id"],
                           "annotations": {"conv_ids": {"loyalty_ref": "L-1"}}}}
    credential = client.request("POST", CREDENTIALS_PATH, json_body=body, idempotent=False)["credential"]

    client.request("PUT", CREDENTIAL_REDEEM_PATH.format(credential_id=credential["id"]))

    request = InboundRequest.objects.get()
    assert (request.status_code, request.outcome) == (202, "accepted")
    redemption = Redemption.objects.get()
    assert (redemption.credential_id, redemption.offer_id, redemption.channel_id) == (
        credential["id"], offer["id"], channel_id
    )
    assert redemption.conv_ids == {"loyalty_ref": "L-1"}


@pytest.mark.django_db(transaction=True)
def test_a_signed_notification_reaches_the_portal_through_the_callback_it_registered(
    sparkfly_settings, sparkfly_sandbox, live_server
):
    sparkfly_settings.PORTAL_PUBLIC_URL = live_server.url
    run("--apply")
    client = client_from_settings()
    enrollment = client.get(LOYALTY_ENROLLMENTS_PATH.format(program_id=1))["loyalty_enrollments"][0]["loyalty_enrollment"]

    sparkfly_sandbox.sandbox.award_points(enrollment["id"], 25)

    (delivered,) = sparkfly_sandbox.sandbox.notifications
    assert delivered["status"] == 202
    notification = Notification.objects.get()
    assert notification.event_name == "loyalty.enrollment.points.awarded"
    assert notification.endpoint == NotificationEndpoint.objects.get()


def test_rotating_twice_before_applying_keeps_the_secret_sparkfly_calls_with(portal):
    endpoint = callbacks.ensure_conversion_endpoints()[0]
    callbacks.apply_conversion_callback(endpoint=endpoint, client=client_from_settings())
    live = endpoint.secret  # what Sparkfly holds

    callbacks.rotate_conversion_secret(endpoint)  # a new URL, not applied (say the apply failed)
    callbacks.rotate_conversion_secret(endpoint)  # and again

    endpoint.refresh_from_db()
    assert endpoint.previous_secret == live and live in endpoint.accepted_secrets(timezone.now())
    assert endpoint.secret != live


def test_rotating_after_applying_moves_the_applied_secret_to_previous(portal):
    endpoint = callbacks.ensure_conversion_endpoints()[0]
    callbacks.apply_conversion_callback(endpoint=endpoint, client=client_from_settings())
    callbacks.rotate_conversion_secret(endpoint)
    callbacks.apply_conversion_callback(endpoint=endpoint, client=client_from_settings())
    applied = endpoint.secret

    callbacks.rotate_conversion_secret(endpoint)

    endpoint.refresh_from_db()
    assert endpoint.previous_secret == applied


def test_the_real_sparkfly_is_never_given_a_loopback_or_plain_http_url(portal, sandbox):
    portal.SPARKFLY_API_URL = "https://api.sparkfly.com"  # as if configured for the real one
    for url in ("http://127.0.0.1:8000", "http://portal.example.com", "https://localhost"):
        portal.PORTAL_PUBLIC_URL = url
        with pytest.raises(CommandError, match="PORTAL_PUBLIC_URL"):
            run("--apply")
    portal.PORTAL_PUBLIC_URL = "https://portal.example.com"
    callbacks.check_public_url()  # accepted
