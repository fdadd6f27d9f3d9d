"""The admin of what Sparkfly sends and where it sends it: conversion and notification endpoints,
every inbound request, redemptions and notifications; and the channel page's callback actions.
Django's test client as a superuser, the real PostgreSQL, the Sparkfly sandbox over loopback."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from procrastinate.contrib.django.models import ProcrastinateJob

from attentive_sync.models import Delivery
from sparkfly_sync import callbacks, payloads
from sparkfly_sync.client import CHANNEL_PATH, EVENT_CALLBACKS_PATH, client_from_settings
from sparkfly_sync.inbound import rotate_secret
from sparkfly_sync.models import (
    Channel,
    ConversionEndpoint,
    ForwardingState,
    InboundRequest,
    Notification,
    NotificationEndpoint,
    Redemption,
)
from sparkfly_sync.sync import sync_resource
from tests.sparkfly_sync.test_admin import messages_of, mirror, run_action, url

pytestmark = pytest.mark.django_db

NOW = timezone.now()
SIGNING_KEY = "c2lnbmluZy1rZXktb2YtdGhlLXRlc3RzLW5ldmVyLXNob3du"
PAGES = (Channel, ConversionEndpoint, NotificationEndpoint, InboundRequest, Redemption, Notification)


def inbound_request(**fields) -> InboundRequest:
    defaults = {"kind": InboundRequest.Kind.CONVERSION, "received_at": NOW, "method": "GET", "status_code": 202,
                "outcome": InboundRequest.Outcome.ACCEPTED, "remote_addr": "203.0.113.9"}
    return InboundRequest.objects.create(**{**defaults, **fields})


@pytest.fixture
def inbound(settings):
    """A channel Sparkfly calls with its endpoint's URL, a notification endpoint, and a
    redemption and a notification with the requests that carried them."""
    settings.PORTAL_PUBLIC_URL = "https://portal.example.com"
    endpoint = ConversionEndpoint.objects.create(channel_id=31, conv_id_keys=["loyalty_ref"])
    template = callbacks.conversion_callback_template(endpoint)
    mirrored = payloads.channel_row({"id": 31, "conversion_callback_url": template})  # as a sync mirrors it
    channel = mirror(Channel, 31, name="Attentive SMS", conversion_callback_url=mirrored["conversion_callback_url"],
                     conversion_callback_fingerprint=mirrored["conversion_callback_fingerprint"], raw=mirrored["raw"])
    notification_endpoint = NotificationEndpoint.objects.create(
        external_id="sparkfly-attentive-portal", secret=SIGNING_KEY, sparkfly_callback_id=901,
        events=["loyalty.enrollment.points.redeemed"],
    )
    delivery = Delivery.objects.create(external_event_id="ext-1", event_type="sparkfly.member.offer_state_redeemed",
                                       payload={}, occurred_at=NOW)
    redemption = Redemption.objects.create(
        dedup_key="6f1c3c52-5d2f-5b4a-9d64-0f1d7e1b2c3d", endpoint=endpoint, channel_id=31, credential_id=501,
        offer_id=7, redeemed_at=NOW, received_at=NOW, state=ForwardingState.FORWARDED, delivery=delivery,
    )
    notification = Notification.objects.create(
        event_id="evt-1", event_name="loyalty.enrollment.points.redeemed", endpoint=notification_endpoint,
        payload={"event_name": "loyalty.enrollment.points.redeemed", "data": {"points_redeemed": 100}},
        received_at=NOW, state=ForwardingState.FAILED, failure="Sparkfly has no member 9",
    )
    request = inbound_request(endpoint_uuid=str(endpoint.uuid), query="credential_id=501&offer_id=7",
                              redemption=redemption)
    inbound_request(kind=InboundRequest.Kind.NOTIFICATION, endpoint_uuid=str(notification_endpoint.uuid),
                    method="POST", body=b'{"event_name": "loyalty.enrollment.points.redeemed"}',
                    notification=notification)
    return {
        Channel: channel, ConversionEndpoint: endpoint, NotificationEndpoint: notification_endpoint,
        InboundRequest: request, Redemption: redemption, Notification: notification,
    }


@pytest.fixture
def sandbox_channels(sparkfly_settings):
    """The sandbox's three channels mirrored, none with a conversion callback yet."""
    sync_resource("channels", client=client_from_settings())
    return list(Channel.objects.order_by("sparkfly_id"))


def secrets_of(endpoints) -> list[str]:
    return [value for endpoint in endpoints for value in (endpoint.secret, endpoint.previous_secret) if value]


# --- pages -------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", PAGES, ids=lambda model: model.__name__)
def test_changelist_and_change_page_render_with_data(admin_client, inbound, model):
    row = inbound[model]

    changelist = admin_client.get(url(model))
    change = admin_client.get(url(model, "change", row.pk))

    assert changelist.status_code == 200
    assert row in list(changelist.context["cl"].result_list)
    assert change.status_code == 200
    assert change.context["original"] == row


def test_no_admin_page_shows_a_secret_or_a_signing_key(admin_client, inbound):
    endpoint = inbound[ConversionEndpoint]
    rotate_secret(endpoint)  # a previous secret too
    notification_request = InboundRequest.objects.get(kind=InboundRequest.Kind.NOTIFICATION)
    pages = [admin_client.get(url(model)) for model in PAGES]
    pages += [admin_client.get(url(model, "change", inbound[model].pk)) for model in PAGES]
    pages.append(admin_client.get(url(InboundRequest, "change", notification_request.pk)))
    hidden = [*secrets_of(ConversionEndpoint.objects.all()), SIGNING_KEY]
    assert len(hidden) == 3

    for page in pages:
        assert page.status_code == 200
        html = page.content.decode()
        for secret in hidden:
            assert secret not in html
    channel_page = admin_client.get(url(Channel, "change", inbound[Channel].pk)).content.decode()
    assert f"/hooks/sparkfly/channels/{endpoint.uuid}/[secret]/conversions?credential_id=%{{credential_id}}" in channel_page
    assert "&amp;loyalty_ref=%{loyalty_ref}" in channel_page


def test_the_channel_page_says_whether_sparkfly_has_the_callback(admin_client, inbound):
    channel = inbound[Channel]
    page = " ".join(admin_client.get(url(Channel, "change", channel.pk)).content.decode().split())
    assert '<label>Sparkfly has it:</label> <div class="readonly">yes</div>' in page

    Channel.objects.filter(pk=channel.pk).update(conversion_callback_url="")
    listing = admin_client.get(url(Channel)).content.decode()
    assert callbacks.STATUS_WORDS[callbacks.MISSING] in listing

    unserved = mirror(Channel, 32, name="No endpoint")
    assert "No endpoint yet" in admin_client.get(url(Channel, "change", unserved.pk)).content.decode()


def test_an_inbound_request_page_shows_the_body_escaped_and_links_its_records(admin_client, inbound):
    rejected = inbound_request(
        status_code=400, outcome=InboundRequest.Outcome.REJECTED, method="POST",
        body=b'<script>alert("x")</script> \xff\xfe', headers={"Content-Type": "text/html"},
        errors={"detail": "Rejected: invalid redeemed_at.", "errors": {"redeemed_at": ["is required"]}},
        endpoint_uuid="not-a-uuid",
    )

    page = admin_client.get(url(InboundRequest, "change", rejected.pk)).content.decode()
    accepted = admin_client.get(url(InboundRequest, "change", inbound[InboundRequest].pk)).content.decode()

    assert "<script>alert(" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; \ufffd\ufffd" in page
    assert "Rejected: invalid redeemed_at." in page and "is required" in page
    assert "not-a-uuid (no such endpoint)" in page
    assert f'href="{url(Redemption, "change", inbound[Redemption].pk)}"' in accepted
    assert f'href="{url(ConversionEndpoint, "change", inbound[ConversionEndpoint].pk)}"' in accepted
    assert "credential_id=501&amp;offer_id=7" in accepted


def test_redemption_and_notification_pages_link_the_delivery_and_their_requests(admin_client, inbound):
    redemption = admin_client.get(url(Redemption, "change", inbound[Redemption].pk)).content.decode()
    notification = admin_client.get(url(Notification, "change", inbound[Notification].pk)).content.decode()

    delivery = Delivery.objects.get()
    assert f'href="/admin/attentive_sync/delivery/{delivery.pk}/change/"' in redemption
    assert f'href="{url(InboundRequest, "change", inbound[InboundRequest].pk)}"' in redemption
    assert "none yet" in notification  # no delivery
    assert "Sparkfly has no member 9" in notification
    assert "&quot;points_redeemed&quot;: 100" in notification


# --- rejections ----------------------------------------------------------------------------------


def test_the_rejection_summary_counts_the_last_24_hours_by_status(admin_client, inbound):
    for status, hours_ago in ((404, 1), (404, 2), (404, 23), (401, 0), (401, 5), (404, 25), (410, 30)):
        inbound_request(status_code=status, outcome=InboundRequest.Outcome.REJECTED,
                        received_at=NOW - timedelta(hours=hours_ago))

    page = admin_client.get(url(InboundRequest))

    assert page.context["rejections"] == [(401, "Unauthorized", 2), (404, "Not Found", 3)]
    assert page.context["rejections_total"] == 5
    html = page.content.decode()
    assert "Rejected in the last 24 hours: 5" in html
    assert '<a href="?outcome__exact=rejected&amp;status_code=404">404 Not Found: 3</a>' in html
    every_rejection = admin_client.get(url(InboundRequest), {"outcome__exact": "rejected"}).context["cl"]
    assert every_rejection.result_count == 7
    not_found = admin_client.get(url(InboundRequest), {"outcome__exact": "rejected", "status_code": "404"})
    assert not_found.context["cl"].result_count == 4


def test_without_rejections_the_summary_says_so(admin_client, inbound):
    assert "No request was rejected in the last 24 hours." in admin_client.get(url(InboundRequest)).content.decode()


@pytest.mark.parametrize(
    ("query", "expected"),
    [({"kind__exact": "notification"}, 1), ({"status_code": "202"}, 2), ({"status_code": "__other__"}, 0)],
)
def test_inbound_request_filters(admin_client, inbound, query, expected):
    assert admin_client.get(url(InboundRequest), query).context["cl"].result_count == expected


def test_searches_match_exact_uuids_and_ids(admin_client, inbound):
    endpoint = inbound[ConversionEndpoint]
    ConversionEndpoint.objects.create(channel_id=32)

    def found(model, term):
        return list(admin_client.get(url(model), {"q": term}).context["cl"].result_list)

    assert found(InboundRequest, f" {endpoint.uuid} ") == [inbound[InboundRequest]]
    assert found(ConversionEndpoint, str(endpoint.uuid).upper()) == [endpoint]
    assert found(ConversionEndpoint, "31") == [endpoint]
    assert found(ConversionEndpoint, "not-a-uuid") == []
    assert found(Redemption, "501") == [inbound[Redemption]]
    assert found(Redemption, str(inbound[Redemption].dedup_key)) == [inbound[Redemption]]
    assert found(Notification, "evt-1") == [inbound[Notification]]


def test_id_searches_reach_the_largest_bigint_and_refuse_one_more(admin_client):
    mirror(Channel, 2**63 - 1, name="the last channel")
    endpoint = ConversionEndpoint.objects.create(channel_id=2**63 - 1)

    def found(term):
        response = admin_client.get(url(ConversionEndpoint), {"q": term})
        assert response.status_code == 200
        return list(response.context["cl"].result_list)

    assert found(str(2**63 - 1)) == [endpoint]
    assert found(str(2**63)) == []


def test_an_endpoint_whose_channel_is_not_mirrored_is_found_by_its_channel_id(admin_client):
    """The list joins the channel for its link; a filter on the join column must not turn that
    join into an inner one (the relation has no database constraint: the channel may be missing)."""
    endpoint = ConversionEndpoint.objects.create(channel_id=424242)

    response = admin_client.get(url(ConversionEndpoint), {"q": "424242"})

    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == [endpoint]


@pytest.mark.parametrize("model", [InboundRequest, Redemption, Notification, ConversionEndpoint, Channel])
def test_changelist_queries_do_not_grow_with_rows(admin_client, model):
    def populate(count: int) -> None:
        for cleared in (InboundRequest, Redemption, Notification, ConversionEndpoint, Channel):
            cleared.objects.all().delete()
        for n in range(1, count + 1):
            mirror(Channel, n, name=f"channel {n}")
            endpoint = ConversionEndpoint.objects.create(channel_id=n if n % 2 else 100000 + n)
            redemption = Redemption.objects.create(
                dedup_key=f"00000000-0000-0000-0000-{n:012d}", endpoint=endpoint, credential_id=n, offer_id=n,
                redeemed_at=NOW, received_at=NOW,
            )
            notification = Notification.objects.create(event_id=f"e{n}", event_name="sf.member.updated",
                                                       received_at=NOW)
            inbound_request(endpoint_uuid=str(endpoint.uuid), redemption=redemption, notification=notification)

    def queries_for_page(count: int) -> int:
        populate(count)
        with CaptureQueriesContext(connection) as queries:
            response = admin_client.get(url(model))
        assert response.status_code == 200
        assert len(response.context["cl"].result_list) == count
        return len(queries)

    assert queries_for_page(5) == queries_for_page(40)


# --- channel actions ----------------------------------------------------------------------------


def test_setting_the_callback_asks_first_then_sets_it_at_sparkfly(admin_client, sparkfly_settings, sandbox_channels):
    first, second, _ = sandbox_channels

    confirmation = run_action(admin_client, Channel, "set_conversion_callback", [first, second], confirm=False)
    assert "Set the conversion callback of 2 channels at Sparkfly?" in confirmation.content.decode()
    assert Channel.objects.get(pk=first.pk).conversion_callback_url == ""

    response = run_action(admin_client, Channel, "set_conversion_callback", [first, second])

    assert messages_of(admin_client, response) == [
        ("success", f"Set the conversion callback at Sparkfly for {second}, {first}.")  # by name
    ]
    for channel in (first, second):
        endpoint = ConversionEndpoint.objects.get(channel_id=channel.sparkfly_id)
        at_sparkfly = client_from_settings().get(CHANNEL_PATH.format(channel_id=channel.sparkfly_id))["channel"]
        assert at_sparkfly["conversion_callback_url"] == callbacks.conversion_callback_template(endpoint)
        assert callbacks.callback_status(endpoint, Channel.objects.get(pk=channel.pk)) == callbacks.SET


def test_rotating_from_the_channel_page_sets_the_new_url_and_keeps_the_old_one_working(
    admin_client, sparkfly_settings, sandbox_channels
):
    channel = sandbox_channels[0]
    run_action(admin_client, Channel, "set_conversion_callback", [channel])
    before = ConversionEndpoint.objects.get(channel_id=channel.sparkfly_id).secret

    response = run_action(admin_client, Channel, "rotate_and_set_conversion_callback", [channel])

    endpoint = ConversionEndpoint.objects.get(channel_id=channel.sparkfly_id)
    assert endpoint.secret != before and endpoint.previous_secret == before
    assert endpoint.accepted_secrets(timezone.now()) == [endpoint.secret, before]
    assert callbacks.callback_status(endpoint, Channel.objects.get(pk=channel.pk)) == callbacks.SET
    assert messages_of(admin_client, response) == [
        ("success", f"Rotated the callback secret and set the new URL at Sparkfly for {channel}.")
    ]


def test_a_channel_sparkfly_refuses_is_reported_in_its_words_and_the_others_are_set(
    admin_client, sparkfly_sandbox, sparkfly_settings, sandbox_channels
):
    refused, accepted, _ = sandbox_channels  # "Mobile App" and "Email": the list is by name
    sparkfly_sandbox.sandbox.inject_fault(
        CHANNEL_PATH.format(channel_id=refused.sparkfly_id), status=422,
        body=json.dumps({"channel": {}, "errors": {"conversion_callback_url": "is not allowed on this channel"}}),
    )

    response = run_action(admin_client, Channel, "set_conversion_callback", [refused, accepted])

    assert messages_of(admin_client, response) == [
        ("error", f"{refused}: the conversion callback was not set: Sparkfly answered 422 to PUT "
                  f"{sparkfly_sandbox.base_url}{CHANNEL_PATH.format(channel_id=refused.sparkfly_id)}: "
                  "is not allowed on this channel"),
        ("success", f"Set the conversion callback at Sparkfly for {accepted}."),
    ]


def test_channel_callback_actions_without_sparkfly_credentials_change_nothing(admin_client, inbound, settings):
    settings.SPARKFLY_API_URL = ""
    endpoint = inbound[ConversionEndpoint]

    response = run_action(admin_client, Channel, "rotate_and_set_conversion_callback", [inbound[Channel]])

    (message,) = messages_of(admin_client, response)
    assert message[0] == "error" and "Nothing was changed: Sparkfly is not configured: set SPARKFLY_API_URL" in message[1]
    assert ConversionEndpoint.objects.get(pk=endpoint.pk).secret == endpoint.secret


# --- endpoint actions ---------------------------------------------------------------------------


def test_endpoints_are_disabled_and_enabled(admin_client, inbound):
    endpoint = inbound[ConversionEndpoint]

    disabled = run_action(admin_client, ConversionEndpoint, "disable", [endpoint])
    assert not ConversionEndpoint.objects.get(pk=endpoint.pk).is_enabled
    assert messages_of(admin_client, disabled) == [
        ("success", "Disabled 1 conversion endpoint: they answer 410 Gone and record nothing new.")
    ]
    enabled = run_action(admin_client, ConversionEndpoint, "enable", [endpoint])

    assert ConversionEndpoint.objects.get(pk=endpoint.pk).is_enabled
    assert messages_of(admin_client, enabled) == [("success", "Enabled 1 conversion endpoint.")]


def test_rotating_an_endpoint_asks_first_and_keeps_the_previous_secret(admin_client, inbound):
    endpoint = inbound[ConversionEndpoint]

    confirmation = run_action(admin_client, ConversionEndpoint, "rotate", [endpoint], confirm=False)
    assert "Give 1 conversion endpoint a new secret?" in confirmation.content.decode()
    assert ConversionEndpoint.objects.get(pk=endpoint.pk).secret == endpoint.secret
    response = run_action(admin_client, ConversionEndpoint, "rotate", [endpoint])

    rotated = ConversionEndpoint.objects.get(pk=endpoint.pk)
    assert (rotated.previous_secret, rotated.secret != endpoint.secret) == (endpoint.secret, True)
    assert callbacks.callback_status(rotated, inbound[Channel]) == callbacks.PREVIOUS_SECRET
    (message,) = messages_of(admin_client, response)
    assert message[0] == "warning" and "Set the new URLs at Sparkfly before then" in message[1]


def test_a_pasted_signing_key_is_rotated_in_and_never_shown(admin_client, inbound):
    endpoint = inbound[NotificationEndpoint]
    form = admin_client.get(url(NotificationEndpoint, "change", endpoint.pk)).content.decode()
    assert "A signing key is held: ••••" + SIGNING_KEY[-4:] in form
    assert SIGNING_KEY not in form

    admin_client.post(url(NotificationEndpoint, "change", endpoint.pk), {"is_enabled": "on", "new_signing_key": ""})
    assert NotificationEndpoint.objects.get(pk=endpoint.pk).secret == SIGNING_KEY  # empty keeps it
    admin_client.post(url(NotificationEndpoint, "change", endpoint.pk),
                      {"is_enabled": "on", "new_signing_key": " bmV3LWtleQ== "})

    changed = NotificationEndpoint.objects.get(pk=endpoint.pk)
    assert (changed.secret, changed.previous_secret) == ("bmV3LWtleQ==", SIGNING_KEY)
    assert changed.accepted_secrets(timezone.now()) == ["bmV3LWtleQ==", SIGNING_KEY]


def test_a_signing_key_with_spaces_inside_is_refused(admin_client, inbound):
    endpoint = inbound[NotificationEndpoint]

    page = admin_client.post(url(NotificationEndpoint, "change", endpoint.pk),
                             {"is_enabled": "on", "new_signing_key": "two words"})

    assert page.status_code == 200 and "paste the key alone" in page.content.decode()
    assert NotificationEndpoint.objects.get(pk=endpoint.pk).secret == SIGNING_KEY


def test_register_at_sparkfly_with_nothing_ticked_registers_the_portals_endpoint(
    admin_client, sparkfly_sandbox, sparkfly_settings
):
    response = run_action(admin_client, NotificationEndpoint, "register", [])

    endpoint = NotificationEndpoint.objects.get()
    assert endpoint.external_id == callbacks.DEFAULT_EXTERNAL_ID and endpoint.secret
    assert sparkfly_sandbox.sandbox.count_requests(EVENT_CALLBACKS_PATH, "POST") == 1
    (message,) = messages_of(admin_client, response)
    assert message == ("success", f"Registered “sparkfly-attentive-portal” at Sparkfly as callback "
                                  f"{endpoint.sparkfly_callback_id}, subscribed to {', '.join(endpoint.events)}.")
    assert endpoint.secret not in admin_client.get(url(NotificationEndpoint)).content.decode()


# --- retry forwarding ---------------------------------------------------------------------------


@pytest.mark.parametrize("model", [Redemption, Notification], ids=lambda model: model.__name__)
def test_retry_forwarding_queues_failed_records_and_leaves_the_others(admin_client, inbound, model):
    failed = inbound[model]
    model.objects.filter(pk=failed.pk).update(state=ForwardingState.FAILED)
    forwarded = model.objects.create(
        **({"dedup_key": "11111111-1111-1111-1111-111111111111", "credential_id": 1, "offer_id": 1,
            "redeemed_at": NOW} if model is Redemption else {"event_id": "evt-2", "event_name": "sf.member.updated"}),
        received_at=NOW, state=ForwardingState.FORWARDED,
    )

    response = run_action(admin_client, model, "retry_forwarding", [failed, forwarded])

    assert model.objects.get(pk=failed.pk).state == ForwardingState.QUEUED
    assert model.objects.get(pk=forwarded.pk).state == ForwardingState.FORWARDED
    noun = model._meta.verbose_name
    assert messages_of(admin_client, response) == [
        ("success", f"Queued 1 {noun} for another try."),
        ("warning", f"Left 1 {noun} alone: already forwarded, processed or skipped. A forwarded event is sent "
                    "again from its Attentive delivery (“Replay”)."),
    ]
    assert ProcrastinateJob.objects.filter(status="todo").count() == 1


# --- permissions ----------------------------------------------------------------------------------


def test_view_only_staff_see_the_pages_but_no_key_input_and_no_actions(client, inbound):
    viewer = User.objects.create_user("viewer", password="x", is_staff=True)
    viewer.user_permissions.set(
        Permission.objects.filter(content_type__app_label="sparkfly_sync", codename__startswith="view_")
    )
    client.force_login(viewer)

    endpoint_page = client.get(url(NotificationEndpoint, "change", inbound[NotificationEndpoint].pk))
    redemptions = client.get(url(Redemption))

    assert endpoint_page.status_code == 200
    assert 'name="new_signing_key"' not in endpoint_page.content.decode()
    assert "A signing key is held" in endpoint_page.content.decode()
    assert redemptions.status_code == 200
    assert redemptions.context["action_form"] is None or not [
        name for name, _ in redemptions.context["action_form"].fields["action"].choices if name
    ]
    before = NotificationEndpoint.objects.get().secret
    client.post(url(NotificationEndpoint, "change", inbound[NotificationEndpoint].pk), {"new_signing_key": "x"})
    assert NotificationEndpoint.objects.get().secret == before
