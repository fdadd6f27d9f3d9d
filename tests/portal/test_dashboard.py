"""The dashboard: who may see it, the range and program chosen (bad ones refused with a message),
its figures and chart data from the rollups, delivery health, sync freshness, and a number of
queries that does not grow with the data."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import date, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from attentive_sync.models import Delivery, DeliveryAttempt
from portal.pages.dashboard import duration
from portal.rollups import rollups_refresh
from sparkfly_sync.models import LoyaltyEnrollment, Offer, Store, SyncRun
from sparkfly_sync.sync import RESOURCES
from tests.portal import activity

pytestmark = pytest.mark.django_db

GOLD = 7
OFFER_A, OFFER_B = 501, 502
MAX_QUERIES = 16


def chart_data(response) -> dict:
    match = re.search(rb'<script id="dashboard-data" type="application/json">(.*?)</script>', response.content, re.S)
    assert match, "the chart data is in a json_script element"
    return json.loads(match.group(1))


def at(days_ago: int, hour: int = 12) -> datetime:
    return timezone.make_aware(datetime.combine(timezone.localdate() - timedelta(days=days_ago), datetime.min.time())) + timedelta(hours=hour)


@pytest.fixture
def records():
    """Gold has member 1; member 2 is in no program. Redemptions over the last days."""
    now = timezone.now()
    activity.program(GOLD, "Gold")
    activity.member(1, GOLD)
    activity.member(2)
    activity.credential(11, 1)
    activity.credential(12, 2)
    Offer.objects.create(sparkfly_id=OFFER_A, name="Free coffee", synced_at=now)
    Offer.objects.create(sparkfly_id=OFFER_B, name="Half-price muffin", synced_at=now)
    Store.objects.create(sparkfly_id=901, name="Main Street", number="17", synced_at=now)
    for days_ago, credential_id, offer_id in [(0, 11, OFFER_A), (0, 12, OFFER_A), (2, 11, OFFER_B), (2, 12, OFFER_A),
                                              (40, 11, OFFER_A)]:
        activity.redemption(credential_id, offer_id, at(days_ago), store_id=901)
    activity.issuance(1, [OFFER_A, OFFER_B], at(3))
    activity.issuance(2, [OFFER_A], at(3))
    activity.issuance(2, [OFFER_A], at(1))
    enrollment = LoyaltyEnrollment.objects.get(member_id=1).sparkfly_id
    activity.points_redeemed(enrollment, 120, at(1))
    rollups_refresh()


# --- who may see it ---------------------------------------------------------------------------------


@pytest.mark.parametrize("role_client", ["program_manager_client", "administrator_client"])
def test_both_roles_see_the_dashboard(request, role_client):
    response = request.getfixturevalue(role_client).get("/")
    assert response.status_code == 200
    assert b"<h1>Dashboard</h1>" in response.content


def test_a_signed_in_user_without_a_role_is_refused(no_role_client):
    assert no_role_client.get("/").status_code == 403


def test_an_anonymous_visitor_is_sent_to_log_in(client):
    response = client.get("/")
    assert response.status_code == 302 and response.url.startswith("/accounts/login/?next=/")


# --- the range and the program ----------------------------------------------------------------------


def test_the_default_range_is_the_last_30_days_of_every_program(program_manager_client, records):
    data = chart_data(program_manager_client.get("/"))
    today = timezone.localdate()
    assert data["days"][0] == (today - timedelta(days=29)).isoformat() and data["days"][-1] == today.isoformat()
    assert len(data["days"]) == 30
    page = program_manager_client.get("/").content.decode()
    assert f'name="from" value="{data["days"][0]}"' in page and f'name="to" value="{data["days"][-1]}"' in page


@pytest.mark.parametrize("query, message", [
    ("from=2026-13-01", "Enter a valid date."),
    ("from=2026-03-10&to=2026-03-01", "The start date is after the end date."),
    ("from=2024-01-01&to=2025-12-31", "A range is at most 366 days."),
    ("from=0001-01-01", "Choose a date from 2000-01-01 to 2099-12-31."),
    ("to=9999-12-31", "Choose a date from 2000-01-01 to 2099-12-31."),
    ("program=gold", "Select a valid choice."),
    ("program=999", "Select a valid choice."),
])
def test_a_bad_choice_gets_a_message_and_the_default_range(program_manager_client, records, query, message):
    response = program_manager_client.get("/?" + query)
    assert response.status_code == 200
    assert message in response.content.decode()
    assert "instead." in response.content.decode()
    data = chart_data(response)
    assert data["days"][-1] == timezone.localdate().isoformat() and len(data["days"]) == 30


def test_a_bad_program_keeps_the_dates_given(program_manager_client, records):
    response = program_manager_client.get("/?from=2026-01-10&to=2026-01-20&program=999")
    assert "Select a valid choice." in response.content.decode()
    data = chart_data(response)
    assert data["days"][0] == "2026-01-10" and data["days"][-1] == "2026-01-20"


def test_a_range_of_366_days_is_shown(program_manager_client, records):
    response = program_manager_client.get("/?from=2024-01-01&to=2024-12-31")
    assert response.status_code == 200 and b"instead." not in response.content
    assert len(chart_data(response)["days"]) == 366


def test_one_end_given_takes_the_default_length(program_manager_client, records):
    data = chart_data(program_manager_client.get("/?from=2026-01-10"))
    assert data["days"][0] == "2026-01-10" and data["days"][-1] == "2026-02-08"


# --- the figures ------------------------------------------------------------------------------------


def test_the_chart_data_matches_the_records(program_manager_client, records):
    data = chart_data(program_manager_client.get("/"))
    today = timezone.localdate()
    expected = {(today - timedelta(days=n)).isoformat(): count for n, count in [(0, 2), (2, 2)]}
    assert {day: n for day, n in zip(data["days"], data["redemptions"]) if n} == expected
    assert {day: n for day, n in zip(data["days"], data["issuances"]) if n} == {
        (today - timedelta(days=3)).isoformat(): 3, (today - timedelta(days=1)).isoformat(): 1,
    }
    assert {day: n for day, n in zip(data["days"], data["points_redeemed"]) if n} == {
        (today - timedelta(days=1)).isoformat(): 120,
    }


def test_a_program_counts_its_members_records_only(program_manager_client, records):
    response = program_manager_client.get(f"/?program={GOLD}")
    data = chart_data(response)
    assert sum(data["redemptions"]) == 2 and sum(data["issuances"]) == 2 and sum(data["points_redeemed"]) == 120
    assert 'id="total-redemptions">2<' in response.content.decode()
    assert "Gold, " in response.content.decode()


def test_top_offers_stores_and_conversion(program_manager_client, records):
    response = program_manager_client.get("/")
    page = response.content.decode()
    top = response.context["top_offers"]
    assert [(row["key"], row["name"], row["redemptions"]) for row in top] == [
        (OFFER_A, "Free coffee", 3), (OFFER_B, "Half-price muffin", 1),
    ]
    assert f'href="/offers/{OFFER_A}/"' in page
    assert [(row["key"], row["redemptions"]) for row in response.context["top_stores"]] == [(901, 4)]
    assert "Main Street (#17)" in page
    conversion = {row["key"]: (row["issued"], row["redemptions"], row["conversion"]) for row in response.context["conversion"]}
    assert conversion == {OFFER_A: (3, 3, 100.0), OFFER_B: (1, 1, 100.0)}
    assert "divided by credentials of the offer issued in the range" in page
    assert "Figures as of" in page


def _expected_top(counts: Counter, *, limit: int = 10) -> list[tuple[int, int]]:
    return sorted(((key, n) for key, n in counts.items() if n), key=lambda pair: (-pair[1], pair[0]))[:limit]


@pytest.mark.parametrize("program", [0, GOLD])
def test_top_lists_over_partial_and_whole_months_equal_the_records(program_manager_client, program):
    """From 20 January to 10 April: the days of January and April from the daily rollups,
    February and March from the monthly ones; records on the edge days and just outside."""
    now = timezone.now()
    activity.program(GOLD, "Gold")
    activity.member(1, GOLD)
    activity.member(2)
    activity.credential(11, 1)
    activity.credential(12, 2)
    days = [date(2026, 1, 19), date(2026, 1, 20), date(2026, 1, 31), date(2026, 2, 1), date(2026, 2, 14),
            date(2026, 3, 31), date(2026, 4, 1), date(2026, 4, 10), date(2026, 4, 11)]
    for n in range(14):  # more offers and stores than the top ten, each on a few of the days
        Offer.objects.create(sparkfly_id=700 + n, name=f"Offer {n}", synced_at=now)
        for i, day in enumerate(days):
            if (n + i) % 3:
                when = timezone.make_aware(datetime.combine(day, datetime.min.time())) + timedelta(hours=12)
                activity.redemption(11 if (n + i) % 2 else 12, 700 + n, when, store_id=800 + (n * i) % 13)
                if (n * i) % 4 == 1:
                    activity.issuance(1 if i % 2 else 2, [700 + n], when)
    rollups_refresh()
    start, end = date(2026, 1, 20), date(2026, 4, 10)
    redeemed, issued, stores = Counter(), Counter(), Counter()
    for (day, program_id, dimension, key), (r, i, _) in activity.direct_counts().items():
        if start <= day <= end and program_id == program:
            if dimension == "offer":
                redeemed[key] += r
                issued[key] += i
            elif dimension == "store":
                stores[key] += r
    response = program_manager_client.get(f"/?from={start}&to={end}&program={program}")
    context = response.context
    assert [(row["key"], row["redemptions"]) for row in context["top_offers"]] == _expected_top(redeemed)
    assert [(row["key"], row["issued"]) for row in context["conversion"]] == _expected_top(issued)
    assert all(row["redemptions"] == redeemed[row["key"]] for row in context["conversion"])
    assert [(row["key"], row["redemptions"]) for row in context["top_stores"]] == _expected_top(stores)
    assert len(context["top_offers"]) == 10 and len(context["top_stores"]) == 10


def test_the_page_says_when_the_figures_were_never_computed(program_manager_client):
    assert b"The figures have not been computed yet" in program_manager_client.get("/").content


# --- delivery health and sync freshness ------------------------------------------------------------------


def delivery(n: int, status: str, *, delay: timedelta | None = None, last_error: str = "", created_days_ago: int = 0):
    occurred = timezone.now() - timedelta(hours=1)
    record = Delivery.objects.create(
        external_event_id=f"evt-{n}", event_type="sparkfly.redemption", payload={}, status=status,
        occurred_at=occurred, delivered_at=occurred + delay if delay else None, last_error=last_error,
    )
    Delivery.objects.filter(pk=record.pk).update(created_at=timezone.now() - timedelta(days=created_days_ago))
    return record


def test_delivery_health_counts_statuses_delays_and_the_last_error(program_manager_client):
    for n, seconds in enumerate([1, 2, 3, 4, 100]):
        delivery(n, Delivery.Status.DELIVERED, delay=timedelta(seconds=seconds))
    delivery(10, Delivery.Status.PENDING)
    delivery(11, Delivery.Status.FAILED, last_error="HTTP 503: down")
    latest = delivery(12, Delivery.Status.DEAD, last_error="HTTP 400: bad phone")
    DeliveryAttempt.objects.create(delivery=latest, started_at=timezone.now() - timedelta(minutes=5), duration_ms=3,
                                   status_code=400, outcome=DeliveryAttempt.Outcome.DEAD)
    delivery(13, Delivery.Status.EXPIRED, last_error="too old", created_days_ago=60)  # out of the range
    rollups_refresh()
    response = program_manager_client.get("/")
    health = response.context["health"]
    assert health.counts == {"delivered": 5, "pending": 1, "failed": 1, "dead": 1, "expired": 0}
    assert abs(health.p50 / timedelta(seconds=3) - 1) < 0.05  # nearest rank: the 3rd of 5
    assert abs(health.p95 / timedelta(seconds=100) - 1) < 0.05  # the 5th of 5
    page = response.content.decode()
    assert f"median <strong>≈ {duration(health.p50)}</strong>" in page and duration(health.p50) == "3.1 s"
    assert "HTTP 400: bad phone" in page and "/deliveries/?status=dead&amp;created_from=" in page
    assert '<span class="status status-failed">failed, retry scheduled</span>' in page


def test_sync_freshness_flags_stale_and_never_synced_resources(program_manager_client, settings):
    settings.SPARKFLY_SYNC_INTERVAL_MINUTES = 60
    now = timezone.now()
    for resource, finished_minutes_ago in [("offers", 30), ("members", 150)]:
        SyncRun.objects.create(resource=resource, status=SyncRun.Status.SUCCEEDED,
                                     finished_at=now - timedelta(minutes=finished_minutes_ago))
    SyncRun.objects.create(resource="offers", status=SyncRun.Status.FAILED, failure="Sparkfly said 500")
    response = program_manager_client.get("/")
    rows = {row.resource: row for row in response.context["freshness"]}
    assert set(rows) == set(RESOURCES)
    assert not rows["offers"].stale and rows["offers"].latest_status == "failed"
    assert rows["members"].stale  # 150 minutes > twice 60
    assert rows["stores"].stale and rows["stores"].last_success is None
    page = response.content.decode()
    assert page.count('<span class="status status-stale">stale</span>') == len(RESOURCES) - 1
    assert "Stale when older than 120 minutes" in page
    assert f"{len(RESOURCES) - 1} of {len(RESOURCES)} resources are stale" in page


# --- fast at scale ------------------------------------------------------------------------------------------


def test_the_number_of_queries_does_not_grow_with_the_data(program_manager_client, records, django_assert_max_num_queries):
    with django_assert_max_num_queries(MAX_QUERIES):
        program_manager_client.get(f"/?program={GOLD}")
    with CaptureQueriesContext(connection) as few:
        program_manager_client.get("/")
    for n in range(40):  # more offers, stores, redemptions, issuances, deliveries
        offer_id = 600 + n
        Offer.objects.create(sparkfly_id=offer_id, name=f"Offer {n}", synced_at=timezone.now())
        activity.redemption(11, offer_id, at(n % 20), store_id=1000 + n)
        activity.issuance(1, [offer_id], at(n % 10))
        delivery(100 + n, Delivery.Status.DEAD, last_error=f"error {n}")
    SyncRun.objects.create(resource="offers", status=SyncRun.Status.SUCCEEDED, finished_at=timezone.now())
    rollups_refresh()
    with CaptureQueriesContext(connection) as many:
        response = program_manager_client.get("/")
    assert len(response.context["top_offers"]) == 10 and len(response.context["top_stores"]) == 10
    assert len(many) == len(few)

