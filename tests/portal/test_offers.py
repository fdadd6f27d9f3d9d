"""The offer pages: every role, the list's filters and pages, one offer's fields, channels with
their callback status, and its issuances and redemptions per day."""

from __future__ import annotations

import json
import re
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from portal.rollups import rollups_refresh
from sparkfly_sync import callbacks
from sparkfly_sync.models import (
    Channel,
    ConversionEndpoint,
    IssuanceRequest,
    Merchant,
    Offer,
    OfferChannel,
    Redemption,
)
from sparkfly_sync.payloads import channel_row

NOW = timezone.now()


def offer(sparkfly_id, name, *, status="approved", **fields):
    return Offer.objects.create(sparkfly_id=sparkfly_id, name=name, status=status, synced_at=NOW, **fields)


def redeemed(offer_id, when):
    Redemption.objects.create(
        dedup_key=uuid.uuid4(), credential_id=1, offer_id=offer_id, redeemed_at=when, received_at=NOW
    )


def issued(offer_ids, when, *, state=IssuanceRequest.State.ISSUED):
    IssuanceRequest.objects.create(
        idempotency_key=uuid.uuid4(), member_id=1, offer_ids=offer_ids, state=state, finished_at=when
    )


@pytest.fixture
def coffee(db):
    Merchant.objects.create(sparkfly_id=3, name="Bean & Co", synced_at=NOW)
    return offer(
        77, "Free coffee", merchant_id=3, activates_at=NOW - timedelta(days=10), expires_at=NOW + timedelta(days=20),
        stop_offering_at=NOW + timedelta(days=15), max_redemptions_per_member=2,
    )


# --- who may see the pages ---------------------------------------------------------------------

PAGES = ["/offers/", "/offers/?status=approved&name=coffee", "/offers/77/"]


@pytest.mark.parametrize("path", PAGES)
def test_program_managers_and_administrators_see_the_offer_pages(coffee, program_manager_client, administrator_client, path):
    assert program_manager_client.get(path).status_code == 200
    assert administrator_client.get(path).status_code == 200


@pytest.mark.parametrize("path", PAGES)
def test_a_user_without_a_role_is_refused_the_offer_pages(coffee, no_role_client, path):
    assert no_role_client.get(path).status_code == 403


@pytest.mark.parametrize("path", PAGES)
def test_an_anonymous_visitor_is_sent_to_log_in_before_the_offer_pages(coffee, client, path):
    response = client.get(path)
    assert response.status_code == 302 and response.url.startswith("/accounts/login/?next=")


# --- the list ----------------------------------------------------------------------------------


def listed(response) -> list[int]:
    return [o.sparkfly_id for o in response.context["offers"]]


def test_the_list_shows_status_activation_window_and_merchant(coffee, program_manager_client):
    body = program_manager_client.get("/offers/").content.decode()
    assert "Free coffee" in body and "Bean &amp; Co" in body and 'href="/offers/77/"' in body
    assert 'class="status status-approved">approved' in body
    for moment in (coffee.activates_at, coffee.expires_at, coffee.stop_offering_at):
        assert moment.strftime("%Y-%m-%d %H:%M") in body


def test_the_list_filters_by_status_and_part_of_the_name(coffee, program_manager_client):
    offer(78, "Hot COFFEE", status="suspended")
    offer(79, "Tea", status="approved")
    offer(80, "Odd one", status="brand-new-status")
    assert listed(program_manager_client.get("/offers/", {"status": "approved"})) == [77, 79]
    assert listed(program_manager_client.get("/offers/", {"name": "coffee"})) == [77, 78]
    assert listed(program_manager_client.get("/offers/", {"name": "coffee", "status": "suspended"})) == [78]
    # A status Sparkfly added later can be filtered on too.
    assert listed(program_manager_client.get("/offers/", {"status": "brand-new-status"})) == [80]


def test_the_list_is_paginated_by_fifty(program_manager_client):
    Offer.objects.bulk_create(Offer(sparkfly_id=i, name=f"Offer {i:03}", synced_at=NOW) for i in range(1, 56))
    first = program_manager_client.get("/offers/")
    assert len(listed(first)) == 50 and b'rel="next"' in first.content
    second = program_manager_client.get("/offers/", {"page": 2})
    assert listed(second) == list(range(51, 56))
    # A page past the end, or not a number, shows a page rather than an error.
    assert program_manager_client.get("/offers/", {"page": "999"}).status_code == 200
    assert program_manager_client.get("/offers/", {"page": "x"}).status_code == 200


@pytest.mark.parametrize("query", [{"status": "nonsense"}, {"name": "x" * 10_000}, {"name": "cof\x00fee"}])
def test_a_bad_filter_is_explained_on_the_page_and_left_out(coffee, program_manager_client, query):
    response = program_manager_client.get("/offers/", query)
    assert response.status_code == 200
    assert response.context["form"].errors
    assert b'class="error"' in response.content
    assert listed(response) == [77]


def test_the_list_costs_the_same_queries_however_many_offers(program_manager_client, django_assert_max_num_queries):
    Merchant.objects.create(sparkfly_id=3, name="Bean & Co", synced_at=NOW)
    Offer.objects.bulk_create(Offer(sparkfly_id=i, name=f"Offer {i:03}", merchant_id=3, synced_at=NOW) for i in range(1, 56))
    with django_assert_max_num_queries(8):  # session, user, permissions (2), statuses, count, page, alert banner
        program_manager_client.get("/offers/")


# --- one offer ---------------------------------------------------------------------------------


@pytest.fixture
def coffee_on_channels(coffee):
    """Published on three channels: one calling the portal back, one calling elsewhere, one
    with no conversion endpoint at the portal yet."""
    calling_us = ConversionEndpoint.objects.create(channel_id=1)
    Channel.objects.create(**channel_row({"id": 1, "name": "App", "conversion_callback_url": callbacks.conversion_callback_template(calling_us)}), synced_at=NOW)
    ConversionEndpoint.objects.create(channel_id=2)
    Channel.objects.create(**channel_row({"id": 2, "name": "Web", "conversion_callback_url": "https://elsewhere.example/cb"}), synced_at=NOW)
    Channel.objects.create(**channel_row({"id": 3, "name": "Kiosk"}), synced_at=NOW)
    for channel_id in (1, 2, 3):
        OfferChannel.objects.create(offer_id=77, channel_id=channel_id, xid=f"XID-{channel_id}", synced_at=NOW)
    return coffee


def test_the_offer_page_shows_its_fields(coffee, program_manager_client):
    body = program_manager_client.get("/offers/77/").content.decode()
    assert "<h1>Free coffee</h1>" in body and "Bean &amp; Co" in body
    assert coffee.expires_at.strftime("%Y-%m-%d %H:%M") in body and coffee.stop_offering_at.strftime("%Y-%m-%d %H:%M") in body
    assert f'href="/admin/sparkfly_sync/offer/{coffee.pk}/change/"' in body


def test_the_offer_page_shows_each_channel_with_its_xid_and_callback_status(coffee_on_channels, program_manager_client):
    response = program_manager_client.get("/offers/77/")
    rows = {row.link.channel_id: row for row in response.context["detail"].channels}
    assert {channel_id: row.callback_status for channel_id, row in rows.items()} == {
        1: callbacks.SET, 2: callbacks.OTHER, 3: "",
    }
    body = response.content.decode()
    for xid in ("XID-1", "XID-2", "XID-3"):
        assert xid in body
    assert callbacks.STATUS_WORDS[callbacks.SET] in body and callbacks.STATUS_WORDS[callbacks.OTHER] in body
    assert "no conversion endpoint for this channel" in body


def test_the_offer_page_counts_issuances_and_redemptions_per_day_for_ninety_days_from_the_rollups(coffee, program_manager_client):
    today = timezone.localdate()
    redeemed(77, NOW)
    redeemed(77, NOW)
    redeemed(77, NOW - timedelta(days=3))
    redeemed(77, NOW - timedelta(days=200))  # before the chart, counted in the total
    redeemed(78, NOW)  # another offer
    issued([77, 78], NOW - timedelta(days=3))
    issued([77], NOW - timedelta(days=3), state=IssuanceRequest.State.REFUSED)
    issued([78], NOW)
    rollups_refresh()
    response = program_manager_client.get("/offers/77/")
    detail = response.context["detail"]
    assert (detail.redeemed_total, detail.issued_total) == (4, 1)
    data = detail.activity.chart_data()
    assert len(data["days"]) == 90 and data["days"][-1] == today.isoformat()
    assert data["redeemed"][-1] == 2 and data["redeemed"][-4] == 1 and sum(data["redeemed"]) == 3
    assert data["issued"][-4] == 1 and sum(data["issued"]) == 1
    # The chart reads its data from json_script; the page has no inline script.
    body = response.content.decode()
    embedded = re.search(r'<script id="offer-activity-data" type="application/json">(.*?)</script>', body).group(1)
    assert json.loads(embedded) == data
    assert "/static/portal/offer.js" in body and "chart.umd.min.js" in body
    assert body.count("<script") == 3  # json_script and the two script files
    assert "As of" in body


def test_before_the_first_rollup_refresh_the_offer_page_says_its_figures_are_not_computed_yet(coffee, program_manager_client):
    redeemed(77, NOW)
    response = program_manager_client.get("/offers/77/")
    assert response.context["detail"].redeemed_total == 0
    assert b"have not been computed yet" in response.content


def test_the_offer_page_costs_the_same_queries_however_many_channels(coffee_on_channels, program_manager_client, django_assert_max_num_queries):
    # session, user, permissions (2), offer, channels, endpoints, rollups per day, totals, as of
    with django_assert_max_num_queries(11):  # 10, and the alert banner's row
        program_manager_client.get("/offers/77/")


@pytest.mark.parametrize("path", ["/offers/404/", f"/offers/{2**63}/", "/offers/" + "9" * 40 + "/"])
def test_an_unknown_or_impossible_offer_id_gets_the_portals_not_found_page(coffee, program_manager_client, path):
    response = program_manager_client.get(path)
    assert response.status_code == 404 and b"Not found" in response.content
