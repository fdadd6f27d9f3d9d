"""Segments from the member list: the loyalty and subscription filters, the CSV for Attentive's
subscriber upload (100,000 members streamed in constant memory), and the push into an Attentive
segment in batches of at most 10,000, through Django's test client, the worker and the Attentive
sandbox over loopback HTTP."""

from __future__ import annotations

import csv
import io
import tracemalloc
import uuid

import pytest
from django.contrib.admin import helpers
from django.urls import reverse
from django.utils import timezone

from attentive_sync.client import SEGMENT_MEMBERS_PATH
from attentive_sync.models import AttentiveSettings, SubscriptionState
from attentive_sync.segments import SegmentPush
from attentive_sync.texts import TextSend
from sparkfly_sync.models import LoyaltyEnrollment, LoyaltyProgram, Member
from sparkfly_sync.selectors import ATTENTIVE_UPLOAD_COLUMNS
from tests.conftest import run_worker_until_idle

CHANGELIST = reverse("admin:sparkfly_sync_member_changelist")
HEADER = "phone,email,firstName,lastName,clientUserId\r\n"


def make_members(count: int, *, start: int = 1, batch: int = 10_000) -> None:
    """``count`` members fast (bulk inserts of ``batch``); every 1,000th has no phone or email."""
    now = timezone.now()
    for first in range(start, start + count, batch):
        Member.objects.bulk_create(
            [_member(n, now) for n in range(first, min(first + batch, start + count))], batch_size=batch
        )


def _member(n: int, now) -> Member:
    reachable = n % 1000 != 0
    return Member(
        sparkfly_id=n, identifier=f"member-{n:06d}", first_name=f"First{n}", last_name=f"Last{n}",
        phone=f"+1415{n:07d}" if reachable else "", email=f"m{n}@example.com" if reachable else "",
        synced_at=now,
    )


def expected_line(n: int) -> str:
    return f"+1415{n:07d},m{n}@example.com,First{n},Last{n},member-{n:06d}\r\n"


def export(client, query: str = "", **data):
    return client.post(CHANGELIST + query, {"action": "export_attentive_csv", "index": 0, **data})


def identifiers_in(response) -> list[str]:
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert tuple(rows[0]) == ATTENTIVE_UPLOAD_COLUMNS
    return [row[4] for row in rows[1:]]


@pytest.fixture
def loyalty():
    """Members 1–6: 1 gold (tier 3) with 700 points, 2 silver with 150, 3 gold but suspended,
    4 in the other program, 5 not enrolled but subscribed to text, 6 nothing at all."""
    now = timezone.now()
    make_members(6)
    for sparkfly_id, name in ((100, "Coffee Club"), (200, "Tea Club")):
        LoyaltyProgram.objects.create(sparkfly_id=sparkfly_id, name=name, synced_at=now)
    for n, (member, program, tier, points, status) in enumerate(
        [(1, 100, 3, 700, "active"), (2, 100, 2, 150, "active"), (3, 100, 3, 900, "suspended"), (4, 200, 3, 700, "active")],
        start=1,
    ):
        LoyaltyEnrollment.objects.create(
            sparkfly_id=n, member_id=member, program_id=program, tier_id=tier, point_balance=points, status=status,
            synced_at=now,
        )
    SubscriptionState.objects.create(
        client_user_id="member-000005", channel="TEXT", subscription_type="MARKETING", address="+14150000005",
        status=SubscriptionState.Status.SUBSCRIBED, last_action="subscribe",
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "members"),
    [
        ("", [1, 2, 3, 4, 5, 6]),
        ("?program=100", [1, 2, 3]),
        ("?program=100&tier=3", [1, 3]),
        ("?program=100&tier=3&enrollment_status=active", [1]),
        ("?points=500-", [1, 3, 4]),
        ("?points=100-499", [2]),
        ("?program=200&points=800-", []),  # one enrollment must meet both: member 3's 900 is in program 100
        ("?subscription=text", [5]),
        ("?subscription=any", [5]),
        ("?subscription=none&program=100", [1, 2, 3]),
    ],
)
def test_the_filters_narrow_the_list_and_the_export(admin_client, loyalty, query, members):
    listed = admin_client.get(CHANGELIST + query)
    assert listed.status_code == 200
    assert sorted(m.sparkfly_id for m in listed.context["cl"].result_list) == members
    assert identifiers_in(export(admin_client, query)) == [f"member-{n:06d}" for n in members]


@pytest.mark.django_db
def test_the_filters_are_on_the_member_list(admin_client, loyalty):
    page = admin_client.get(CHANGELIST).content.decode()
    for title in ("loyalty program", "tier id", "point balance", "enrollment status", "Attentive subscription"):
        assert f"By {title}" in page
    assert "Coffee Club" in page and "1,000 or more" in page


@pytest.mark.django_db
def test_the_export_of_ticked_members_has_only_them_with_csv_quoting(admin_client, loyalty):
    Member.objects.filter(sparkfly_id=2).update(first_name='Ann, "Jr"')
    ticked = Member.objects.filter(sparkfly_id__in=[2, 4]).values_list("pk", flat=True)
    response = export(admin_client, **{helpers.ACTION_CHECKBOX_NAME: list(ticked)})
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="attentive-subscribers-')
    assert b"".join(response.streaming_content).decode() == (
        HEADER + '+14150000002,m2@example.com,"Ann, ""Jr""",Last2,member-000002\r\n' + expected_line(4)
    )


@pytest.mark.django_db
def test_the_export_leaves_out_the_channels_people_unsubscribed_from(admin_client, loyalty):
    def state(member: int, channel: str, sub_type: str, status: str) -> None:
        SubscriptionState.objects.update_or_create(
            client_user_id=f"member-{member:06d}", channel=channel, subscription_type=sub_type,
            defaults={"address": "x", "status": status, "last_action": "unsubscribe"},
        )

    unsubscribed, subscribed = SubscriptionState.Status.UNSUBSCRIBED, SubscriptionState.Status.SUBSCRIBED
    state(1, "TEXT", "MARKETING", unsubscribed)  # left text only: exported by email
    state(2, "TEXT", "MARKETING", unsubscribed)  # left both: not exported
    state(2, "EMAIL", "MARKETING", unsubscribed)
    state(3, "TEXT", "TRANSACTIONAL", unsubscribed)  # subscribed again since (another type): kept
    state(3, "TEXT", "MARKETING", subscribed)

    rows = list(csv.reader(io.StringIO(b"".join(export(admin_client).streaming_content).decode())))[1:]

    by_member = {row[4]: row for row in rows}
    assert sorted(by_member) == [f"member-{n:06d}" for n in (1, 3, 4, 5, 6)]
    assert by_member["member-000001"][:2] == ["", "m1@example.com"]
    assert by_member["member-000003"][:2] == ["+14150000003", "m3@example.com"]


@pytest.mark.django_db
def test_the_export_guards_free_text_against_formulas_and_leaves_e164_phones_alone(admin_client):
    now = timezone.now()
    Member.objects.create(
        sparkfly_id=1, identifier="@member-1", first_name='=HYPERLINK("https://evil.example","Click")',
        last_name="+SUM(1,2)", phone="+13115552368", email="-m1@example.com", synced_at=now,
    )
    Member.objects.create(sparkfly_id=2, identifier="member-2", phone="=1+2", synced_at=now)  # not E.164

    rows = list(csv.reader(io.StringIO(b"".join(export(admin_client).streaming_content).decode())))[1:]

    assert rows == [
        ["+13115552368", "'-m1@example.com", '\'=HYPERLINK("https://evil.example","Click")', "'+SUM(1,2)",
         "'@member-1"],
        ["'=1+2", "", "", "", "member-2"],
    ]


@pytest.mark.django_db
def test_100000_members_export_in_constant_memory_with_the_exact_rows(admin_client):
    make_members(100_000)
    response = export(admin_client)
    assert response.streaming

    expected = (expected_line(n) for n in range(1, 100_001) if n % 1000)  # primary-key order
    tracemalloc.start()
    try:
        lines = (chunk.decode() for chunk in response.streaming_content)
        assert next(lines) == HEADER
        size, rows, wrong = len(HEADER), 0, []
        for line, want in zip(lines, expected, strict=True):
            size += len(line)
            rows += 1
            if line != want and len(wrong) < 3:
                wrong.append((line, want))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not wrong
    assert rows == 99_900  # the 100 members with neither phone nor email are left out
    assert size > 6_500_000
    # A buffered export would hold all 6.7 MB of text, and more as rows; the stream holds one
    # chunk of 2,000 rows (measured: a peak of about 1.7 MB).
    assert peak < 3_000_000 < size / 2, f"peak {peak:,} bytes while streaming {size:,}"


@pytest.mark.django_db
def test_the_rows_follow_the_members_in_order(admin_client):
    make_members(2_500)
    content = b"".join(export(admin_client).streaming_content).decode()
    assert content == HEADER + "".join(expected_line(n) for n in range(1, 2_501) if n % 1000)


@pytest.fixture
def attentive(attentive_sandbox):
    settings = AttentiveSettings.load()
    settings.api_url = attentive_sandbox.base_url
    settings.api_key = "sandbox"
    settings.save()
    return attentive_sandbox


@pytest.mark.django_db(transaction=True)
def test_the_whole_filtered_list_is_pushed_in_batches_of_at_most_10000(admin_client, attentive):
    make_members(25_000)
    other = timezone.now()
    LoyaltyProgram.objects.create(sparkfly_id=100, name="Coffee Club", synced_at=other)
    LoyaltyEnrollment.objects.bulk_create(
        [LoyaltyEnrollment(sparkfly_id=n, member_id=n, program_id=100, synced_at=other) for n in range(1, 25_001)]
    )
    asked = admin_client.post(CHANGELIST + "?program=100", {"action": "push_attentive_segment", "index": 0})
    assert "Add 25,000 members to an Attentive segment?" in asked.content.decode()

    pushed = admin_client.post(
        CHANGELIST + "?program=100",
        {"action": "push_attentive_segment", "index": 0, "select_across": "1", helpers.ACTION_CHECKBOX_NAME: ["all"],
         "confirmed": "yes", "segment_external_id": "coffee_club", "create_with_name": "Coffee Club members",
         "idempotency_key": str(uuid.uuid4())},
    )
    push = SegmentPush.objects.get()
    assert pushed["Location"] == reverse("admin:attentive_sync_segmentpush_change", args=[push.pk])
    assert push.criteria == {"program": 100} and push.total == 25_000
    assert attentive.sandbox.segments["coffee_club"]["name"] == "Coffee Club members"

    run_worker_until_idle(["contacts"])
    push.refresh_from_db()
    # Members without phone or email go by their clientUserId alone (the spec allows any one).
    assert (push.state, push.batches_sent, push.members_sent) == (SegmentPush.State.SENT, 3, 25_000)
    assert [attentive.sandbox.bulk_jobs[j]["totalRecords"] for j in push.job_ids] == [10_000, 10_000, 5_000]
    assert attentive.sandbox.count_requests(SEGMENT_MEMBERS_PATH, "POST") == 3

    page = admin_client.get(reverse("admin:attentive_sync_segmentpush_change", args=[push.pk])).content.decode()
    for job_id, records in zip(push.job_ids, (10_000, 10_000, 5_000)):
        assert f"<td>{job_id}</td><td>COMPLETED</td><td>{records}</td>" in page


@pytest.mark.django_db(transaction=True)
def test_ticked_members_are_pushed_by_their_keys(admin_client, attentive):
    make_members(5)
    attentive.sandbox.segments["vip"] = {"externalId": "vip", "name": "VIP", "description": "", "members": set()}
    ticked = list(Member.objects.filter(sparkfly_id__in=[2, 3]).values_list("pk", flat=True))
    admin_client.post(
        CHANGELIST,
        {"action": "push_attentive_segment", "index": 0, helpers.ACTION_CHECKBOX_NAME: ticked,
         "confirmed": "yes", "segment_external_id": "vip", "idempotency_key": str(uuid.uuid4())},
    )
    run_worker_until_idle(["contacts"])
    push = SegmentPush.objects.get()
    assert push.criteria == {"members": sorted(ticked)}
    assert attentive.sandbox.segments["vip"]["members"] == {
        (("clientUserId", f"member-00000{n}"), ("email", f"m{n}@example.com"), ("phone", f"+1415000000{n}"))
        for n in (2, 3)
    }


@pytest.mark.django_db
def test_a_double_submitted_push_form_records_one_push_and_creates_the_segment_once(admin_client, attentive):
    from procrastinate.contrib.django.models import ProcrastinateJob

    make_members(3)
    asked = admin_client.post(CHANGELIST, {"action": "push_attentive_segment", "index": 0, "select_across": "1",
                                           helpers.ACTION_CHECKBOX_NAME: ["all"]})
    key = asked.context["form"]["idempotency_key"].value()
    assert f'name="idempotency_key" value="{key}"' in asked.content.decode()
    submit = {"action": "push_attentive_segment", "index": 0, "select_across": "1", helpers.ACTION_CHECKBOX_NAME: ["all"],
              "confirmed": "yes", "segment_external_id": "twice", "create_with_name": "Twice", "idempotency_key": key}

    first = admin_client.post(CHANGELIST, submit)
    second = admin_client.post(CHANGELIST, submit)

    push = SegmentPush.objects.get()
    assert first["Location"] == second["Location"] == reverse("admin:attentive_sync_segmentpush_change", args=[push.pk])
    assert ProcrastinateJob.objects.filter(task_name="attentive_sync.push_segment").count() == 1
    assert attentive.sandbox.count_requests("/v2/segments", "POST") == 1


# --- a one-off text from the member page ------------------------------------------------------------


@pytest.fixture
def ada():
    make_members(1)
    return Member.objects.get()


def text_url(member) -> str:
    return reverse("admin:sparkfly_sync_member_attentive_text", args=[member.pk])


@pytest.mark.django_db
def test_without_the_setting_there_is_no_text_button_and_no_page(admin_client, ada, settings):
    settings.ATTENTIVE_TEXT_SEND_ENABLED = False
    page = admin_client.get(reverse("admin:sparkfly_sync_member_change", args=[ada.pk])).content.decode()
    assert "Send a text" not in page
    assert admin_client.post(text_url(ada), {"body": "Hi", "subscription_type": "TRANSACTIONAL"}).status_code == 404


@pytest.mark.django_db
def test_a_text_is_sent_and_attentives_answer_shown(admin_client, ada, attentive, settings):
    settings.ATTENTIVE_TEXT_SEND_ENABLED = True
    page = admin_client.get(reverse("admin:sparkfly_sync_member_change", args=[ada.pk])).content.decode()
    assert f'href="{text_url(ada)}">Send a text…' in page

    form = {"body": "Your points are in!", "subscription_type": "TRANSACTIONAL", "idempotency_key": str(uuid.uuid4())}
    sent = admin_client.post(text_url(ada), form)
    assert sent.status_code == 302 and sent["Location"].startswith(text_url(ada) + "?sent=")
    shown = admin_client.get(sent["Location"]).content.decode()
    assert "Attentive's answer:" in shown and "sandbox-text-1" in shown
    expected = [{"to": "+14150000001", "body": "Your points are in!", "subscriptionType": "TRANSACTIONAL"}]
    assert attentive.sandbox.texts == expected

    # A refresh of the result, and the same form sent again (a double click, "resend" after
    # going back): the same text is shown, none is sent.
    assert "sandbox-text-1" in admin_client.get(sent["Location"]).content.decode()
    again = admin_client.post(text_url(ada), form)
    assert again["Location"] == sent["Location"]
    assert attentive.sandbox.texts == expected
    assert TextSend.objects.get().state == TextSend.State.SENT


@pytest.mark.django_db
def test_attentives_refusal_of_a_text_is_shown(admin_client, ada, attentive, settings):
    settings.ATTENTIVE_TEXT_SEND_ENABLED = True
    attentive.sandbox.inject_fault(
        "/v1/text/send", status=403, body='{"error":{"id":7,"message":"Access denied"}}',
    )
    form = {"body": "Hi", "subscription_type": "MARKETING", "idempotency_key": str(uuid.uuid4())}
    shown = admin_client.post(text_url(ada), form, follow=True).content.decode()
    assert "Not sent:" in shown and "Access denied" in shown
    assert attentive.sandbox.texts == []
