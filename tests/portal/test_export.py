"""The redemptions CSV export: streamed from a server-side cursor, a bounded date range in the
program's time zone, cells safe for spreadsheets."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import datetime

import pytest
from django.db import connection
from django.utils import timezone

from attentive_sync.models import Delivery
from sparkfly_sync.models import Offer, Redemption

URL = "/redemptions/export.csv"


def local(*parts) -> datetime:
    return timezone.make_aware(datetime(*parts))


def make_redemption(n: int, redeemed_at: datetime, **fields) -> Redemption:
    values = {"offer_id": 77, "store_id": 300, "channel_id": 451, "xid": "XID-1", "sf_uid": f"member-{n}", **fields}
    return Redemption.objects.create(
        dedup_key=uuid.UUID(int=n), credential_id=5000 + n, redeemed_at=redeemed_at, received_at=redeemed_at, **values
    )


def exported(response) -> list[list[str]]:
    assert response.streaming
    return list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))


@pytest.mark.parametrize("role_client", ["program_manager_client", "administrator_client"])
def test_both_roles_may_export(request, role_client):
    response = request.getfixturevalue(role_client).get(URL, {"from": "2026-01-01", "to": "2026-01-31"})
    assert response.status_code == 200 and response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="redemptions-2026-01-01-to-2026-01-31.csv"'


def test_a_user_without_the_permission_is_refused(no_role_client):
    assert no_role_client.get(URL, {"from": "2026-01-01", "to": "2026-01-31"}).status_code == 403


@pytest.mark.django_db
def test_an_anonymous_visitor_is_sent_to_log_in(client):
    response = client.get(URL, {"from": "2026-01-01", "to": "2026-01-31"})
    assert response.status_code == 302 and response.url.startswith("/accounts/login/")


def test_the_rows_of_the_range_in_the_programs_time_zone(program_manager_client, settings):
    settings.TIME_ZONE = "America/Chicago"
    Offer.objects.create(sparkfly_id=77, name="Free Coffee", synced_at=timezone.now())
    delivery = Delivery.objects.create(
        external_event_id=str(uuid.UUID(int=2)), event_type="x", payload={}, occurred_at=timezone.now(),
        status=Delivery.Status.DELIVERED,
    )
    make_redemption(1, local(2026, 2, 28, 23, 59))  # the day before: left out
    make_redemption(2, local(2026, 3, 1, 0, 0), state="forwarded", delivery=delivery)
    make_redemption(3, local(2026, 3, 31, 23, 59), offer_id=78)  # an offer not mirrored
    make_redemption(4, local(2026, 4, 1, 0, 0))  # the day after: left out

    rows = exported(program_manager_client.get(URL, {"from": "2026-03-01", "to": "2026-03-31"}))

    assert rows[0] == [
        "redeemed_at", "received_at", "external_event_id", "credential_id", "offer_id", "offer_name", "store_id",
        "channel_id", "xid", "sf_uid", "forwarding_state", "delivery_status",
    ]
    assert rows[1] == [
        "2026-03-01T00:00:00-06:00", "2026-03-01T00:00:00-06:00", str(uuid.UUID(int=2)), "5002", "77", "Free Coffee",
        "300", "451", "XID-1", "member-2", "forwarded", "delivered",
    ]
    assert rows[2][:6] == ["2026-03-31T23:59:00-05:00", "2026-03-31T23:59:00-05:00", str(uuid.UUID(int=3)), "5003",
                           "78", ""]
    assert rows[2][-2:] == ["queued", ""]
    assert len(rows) == 3


def test_cells_that_would_be_formulas_are_quoted(program_manager_client):
    Offer.objects.create(sparkfly_id=77, name='=HYPERLINK("http://evil.example","Free")', synced_at=timezone.now())
    make_redemption(1, local(2026, 3, 1, 12, 0), sf_uid="+1 555 0100", xid="@SUM(A1)")
    make_redemption(2, local(2026, 3, 1, 13, 0), sf_uid="-2", xid="plain")

    rows = exported(program_manager_client.get(URL, {"from": "2026-03-01", "to": "2026-03-01"}))

    assert rows[1][5] == "'=HYPERLINK(\"http://evil.example\",\"Free\")"
    assert (rows[1][8], rows[1][9]) == ("'@SUM(A1)", "'+1 555 0100")
    assert (rows[2][8], rows[2][9]) == ("plain", "'-2")


def test_it_streams_from_a_server_side_cursor(program_manager_client):
    for n in range(5):
        make_redemption(n, local(2026, 3, 1, 12, n))

    response = program_manager_client.get(URL, {"from": "2026-03-01", "to": "2026-03-01"})
    lines = iter(response.streaming_content)
    next(lines), next(lines)  # the header and the first row: the query is running now

    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_cursors")
        open_cursors = [statement for (statement,) in cursor.fetchall()]
    assert any("DECLARE" in statement and "sparkfly_sync_redemption" in statement for statement in open_cursors)
    assert len(list(lines)) == 4


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({}, "Give the range as ?from=YYYY-MM-DD&to=YYYY-MM-DD (from is missing)."),
        ({"from": "2026-01-01"}, "Give the range as ?from=YYYY-MM-DD&to=YYYY-MM-DD (to is missing)."),
        ({"from": "01/02/2026", "to": "2026-02-01"}, "from='01/02/2026' is not a date: write it as YYYY-MM-DD."),
        ({"from": "2026-02-01", "to": "2026-01-31"}, "to (2026-01-31) is before from (2026-02-01)."),
        ({"from": "2025-01-01", "to": "2026-01-02"}, "Export at most 366 days at a time (367 asked)."),
    ],
)
def test_a_bad_range_is_a_400_saying_what_to_fix(program_manager_client, query, message):
    response = program_manager_client.get(URL, query)
    assert response.status_code == 400 and response["Content-Type"] == "text/plain; charset=utf-8"
    assert response.content.decode() == message


def test_366_days_is_the_longest_range(program_manager_client):
    assert program_manager_client.get(URL, {"from": "2024-01-01", "to": "2024-12-31"}).status_code == 200


def test_the_deliveries_page_offers_the_export(program_manager_client):
    page = program_manager_client.get("/deliveries/").content.decode()
    assert 'action="/redemptions/export.csv"' in page and 'name="from"' in page and 'name="to"' in page


@pytest.mark.parametrize("query", ["from=9999-12-01&to=9999-12-31", "from=0001-01-01&to=0001-01-02"])
def test_dates_outside_the_centuries_of_records_are_refused_before_anything_streams(program_manager_client, query):
    response = program_manager_client.get(f"/redemptions/export.csv?{query}")
    assert response.status_code == 400
    assert "Choose a date from 2000-01-01 to 2099-12-31." in response.content.decode()
