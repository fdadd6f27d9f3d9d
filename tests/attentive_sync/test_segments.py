"""Attentive v2 segments: the client and the sandbox over loopback HTTP (create a segment, add
members in bulk, read a bulk job), and the segment push service sending batches of at most
10,000 under the shared limiter."""

from __future__ import annotations

import pytest
import requests

from attentive_sync import segments
from attentive_sync.client import SEGMENT_MEMBERS_MAX, SEGMENT_MEMBERS_PATH, AttentiveClient
from attentive_sync.errors import AttentiveError
from attentive_sync.models import AttentiveSettings
from attentive_sync.segments import SegmentPush
from tests.conftest import run_worker_until_idle

SOURCE = "tests.attentive_sync.test_segments.numbered_contacts"


def numbered_contacts(criteria: dict, *, after: int, limit: int) -> list[tuple[int, dict]]:
    """A member source of ``criteria["count"]`` people, keyed 1…count; every third has only a
    clientUserId, the others a phone and an email too."""
    last = min(after + limit, criteria["count"])
    return [(key, _contact(key)) for key in range(after + 1, last + 1)]


def _contact(key: int) -> dict:
    if key % 3 == 0:
        return {"clientUserId": f"member-{key:06d}"}
    return {"phone": f"+1415{key:07d}", "email": f"m{key}@example.com", "clientUserId": f"member-{key:06d}"}


@pytest.fixture
def client(attentive_sandbox):
    return AttentiveClient(api_key="sandbox", base_url=attentive_sandbox.base_url)


def test_a_segment_is_created_and_members_added_in_bulk_with_a_job_to_follow(client, attentive_sandbox):
    created = client.create_segment(name="Gold members", external_id="loyalty_gold", description="Tier gold")
    assert created == {"externalId": "loyalty_gold", "name": "Gold members", "description": "Tier gold"}

    answer = client.add_segment_members(
        external_id="loyalty_gold",
        members=[{"email": "a@example.com"}, {"phone": "+14155551234", "clientUserId": "member-1"}],
    )
    assert answer["message"] == "Bulk segment member add job successfully submitted"
    job = client.bulk_job(answer["batchJobId"])
    assert job == {
        "bulkJobId": answer["batchJobId"], "status": "COMPLETED", "totalRecords": 2,
        "url": f"https://sandbox.invalid/bulk/{answer['batchJobId']}.jsonl",
    }
    assert len(attentive_sandbox.sandbox.segments["loyalty_gold"]["members"]) == 2


@pytest.mark.parametrize(
    ("members", "problem"),
    [
        ([], "members must hold 1 to 10,000 members, not 0"),
        ([{"email": "a@example.com"}] * (SEGMENT_MEMBERS_MAX + 1), "not 10,001"),
        ([{}], "members[0] needs an email, a phone or a clientUserId"),
        ([{"phone": "415-555-1234"}], "members[0].phone '415-555-1234' is not E.164"),
        ([{"clientUserId": "x" * 101}], "members[0].clientUserId is 101 characters long; the limit is 100"),
        ([{"email": "a@example.com", "name": "Ada"}], "members[0] has unknown field(s) 'name'"),
    ],
)
def test_the_sandbox_refuses_bulk_requests_the_spec_forbids(attentive_sandbox, members, problem):
    attentive_sandbox.sandbox.segments["s"] = {"externalId": "s", "name": "s", "description": "", "members": set()}
    response = requests.post(
        attentive_sandbox.base_url + SEGMENT_MEMBERS_PATH, json={"externalId": "s", "members": members},
        headers={"Authorization": "Bearer sandbox"}, timeout=10,
    )
    assert response.status_code == 400
    assert problem in response.json()["error"]["message"]


def test_the_client_refuses_a_batch_over_ten_thousand_before_sending(client, attentive_sandbox):
    with pytest.raises(ValueError, match="1 to 10,000 members"):
        client.add_segment_members(external_id="s", members=[{"email": "a@example.com"}] * (SEGMENT_MEMBERS_MAX + 1))
    assert attentive_sandbox.sandbox.count_requests(SEGMENT_MEMBERS_PATH) == 0


def test_an_unknown_segment_or_job_is_404(client):
    with pytest.raises(AttentiveError) as refused:
        client.add_segment_members(external_id="nope", members=[{"email": "a@example.com"}])
    assert refused.value.status == 404
    with pytest.raises(AttentiveError) as unknown:
        client.bulk_job("no-such-job")
    assert unknown.value.status == 404


@pytest.fixture
def configured(attentive_sandbox):
    settings = AttentiveSettings.load()
    settings.api_url = attentive_sandbox.base_url
    settings.api_key = "sandbox"
    settings.save()
    attentive_sandbox.sandbox.segments["loyalty_gold"] = {
        "externalId": "loyalty_gold", "name": "Gold", "description": "", "members": set(),
    }
    return attentive_sandbox


@pytest.mark.django_db(transaction=True)
def test_25000_members_go_in_three_batches_of_at_most_10000_through_the_job(configured):
    push = segments.segment_push_create(
        segment_external_id="loyalty_gold", source=SOURCE, criteria={"count": 25_000}, total=25_000,
    )
    run_worker_until_idle(["contacts"])

    push.refresh_from_db()
    assert push.state == SegmentPush.State.SENT
    assert (push.batches_sent, push.members_sent, push.last_key) == (3, 25_000, 25_000)
    assert len(set(push.job_ids)) == 3
    jobs = configured.sandbox.bulk_jobs
    assert [jobs[job_id]["totalRecords"] for job_id in push.job_ids] == [10_000, 10_000, 5_000]
    assert configured.sandbox.count_requests(SEGMENT_MEMBERS_PATH, "POST") == 3
    assert len(configured.sandbox.segments["loyalty_gold"]["members"]) == 25_000

    client = AttentiveClient(api_key="sandbox", base_url=configured.base_url)
    statuses = segments.job_statuses(push, client=client)
    assert [(s["bulkJobId"], s["status"]) for s in statuses] == [(job_id, "COMPLETED") for job_id in push.job_ids]


@pytest.mark.django_db(transaction=True)
def test_a_push_stopped_by_an_outage_resumes_after_the_last_accepted_batch(configured):
    configured.sandbox.inject_fault(SEGMENT_MEMBERS_PATH, status=503, after=1)
    push = SegmentPush.objects.create(
        segment_external_id="loyalty_gold", source=SOURCE, criteria={"count": 25_000}, total=25_000,
    )
    client = AttentiveClient(api_key="sandbox", base_url=configured.base_url)
    with pytest.raises(AttentiveError):
        segments.segment_push_send(push.pk, client=client)
    push.refresh_from_db()
    assert (push.state, push.batches_sent, push.last_key) == (SegmentPush.State.SENDING, 1, 10_000)
    assert push.errors and push.errors[0].startswith("batch 2:")

    push = segments.segment_push_send(push.pk, client=client)
    assert (push.state, push.batches_sent, push.members_sent) == (SegmentPush.State.SENT, 3, 25_000)
    assert len(configured.sandbox.segments["loyalty_gold"]["members"]) == 25_000


@pytest.mark.django_db(transaction=True)
def test_a_push_left_sending_by_a_job_that_is_gone_is_resumed_after_the_last_accepted_batch(configured):
    push = SegmentPush.objects.create(
        segment_external_id="loyalty_gold", source=SOURCE, criteria={"count": 25_000}, total=25_000,
        state=SegmentPush.State.SENDING, batches_sent=1, members_sent=10_000, last_key=10_000, job_ids=["job-1"],
    )

    assert segments.segment_push_resume(push=push) is True
    assert segments.segment_push_resume(push=push) is False  # its job waits already
    run_worker_until_idle(["contacts"])

    push.refresh_from_db()
    assert (push.state, push.batches_sent, push.members_sent) == (SegmentPush.State.SENT, 3, 25_000)
    assert configured.sandbox.count_requests(SEGMENT_MEMBERS_PATH, "POST") == 2
    assert segments.segment_push_resume(push=push) is False  # sent


@pytest.mark.django_db
def test_resuming_a_push_whose_worker_died_puts_that_job_back(configured):
    from django.db import connection
    from procrastinate.contrib.django.models import ProcrastinateJob

    push = segments.segment_push_create(segment_external_id="loyalty_gold", source=SOURCE, criteria={"count": 5}, total=5)
    job = ProcrastinateJob.objects.get()
    with connection.cursor() as cursor:  # taken by a worker that then died
        cursor.execute("UPDATE procrastinate_jobs SET status = 'doing', worker_id = NULL WHERE id = %s", [job.pk])
    SegmentPush.objects.filter(pk=push.pk).update(state=SegmentPush.State.SENDING)

    assert segments.segment_push_resume(push=push) is True

    assert [(j.pk, j.status) for j in ProcrastinateJob.objects.all()] == [(job.pk, "todo")]


@pytest.mark.django_db(transaction=True)
def test_a_push_whose_job_ran_out_of_tries_is_failed_with_the_reason_not_left_sending(configured):
    from types import SimpleNamespace

    from attentive_sync import tasks

    configured.sandbox.inject_fault(SEGMENT_MEMBERS_PATH, status=503, times=100)
    push = SegmentPush.objects.create(segment_external_id="loyalty_gold", source=SOURCE, criteria={"count": 5}, total=5)
    last_try = SimpleNamespace(job=SimpleNamespace(attempts=tasks._TRANSIENT_RETRY.max_attempts))

    with pytest.raises(AttentiveError):
        tasks.push_segment.func(last_try, push_id=push.pk)

    push.refresh_from_db()
    assert push.state == SegmentPush.State.FAILED and push.finished_at is not None
    assert push.errors[-1].startswith("Attentive still failing after 6 tries (")
    assert push.errors[-1].endswith("resume the push once it answers.")
    configured.sandbox.clear_faults()
    assert segments.segment_push_resume(push=push) is True


@pytest.mark.django_db(transaction=True)
def test_a_refused_batch_fails_the_push_with_attentives_words(configured):
    push = SegmentPush.objects.create(
        segment_external_id="not_there", source=SOURCE, criteria={"count": 10}, total=10,
    )
    client = AttentiveClient(api_key="sandbox", base_url=configured.base_url)
    push = segments.segment_push_send(push.pk, client=client)
    assert push.state == SegmentPush.State.FAILED
    assert "no segment with externalId 'not_there'" in push.errors[0]


@pytest.mark.django_db
def test_the_push_page_shows_the_batches_and_attentives_job_statuses(admin_client, configured):
    client = AttentiveClient(api_key="sandbox", base_url=configured.base_url)
    job_id = client.add_segment_members(external_id="loyalty_gold", members=[{"email": "a@example.com"}])["batchJobId"]
    push = SegmentPush.objects.create(
        segment_external_id="loyalty_gold", source=SOURCE, criteria={"count": 1}, total=1,
        batches_sent=1, members_sent=1, job_ids=[job_id], state=SegmentPush.State.SENT,
    )
    page = admin_client.get(f"/admin/attentive_sync/segmentpush/{push.pk}/change/").content.decode()
    assert f"<td>{job_id}</td><td>COMPLETED</td><td>1</td>" in page


# --- POST /v1/text/send ------------------------------------------------------------------------------


def test_a_text_is_sent_and_the_sandbox_checks_its_body(client, attentive_sandbox):
    assert client.send_text(to="+14155551234", body="Hello") == {"messageId": "sandbox-text-1"}
    assert attentive_sandbox.sandbox.texts == [
        {"to": "+14155551234", "body": "Hello", "subscriptionType": "TRANSACTIONAL"}
    ]
    for body, problem in (
        ({"body": "Hi", "subscriptionType": "MARKETING"}, "send exactly one of to and subscriberExternalId"),
        ({"to": "+14155551234", "subscriberExternalId": 1, "body": "Hi", "subscriptionType": "MARKETING"},
         "send exactly one of"),
        ({"to": "+14155551234", "body": "", "subscriptionType": "MARKETING"}, "body must not be empty"),
        ({"subscriberExternalId": "7", "body": "Hi", "subscriptionType": "MARKETING"}, "must be an integer"),
        ({"to": "+14155551234", "body": "Hi", "subscriptionType": "MARKETING", "useShortLinks": True},
         "useShortLinks needs a messageName"),
    ):
        response = requests.post(
            attentive_sandbox.base_url + "/v1/text/send", json=body, headers={"Authorization": "Bearer sandbox"},
            timeout=10,
        )
        assert response.status_code == 400 and problem in response.json()["error"]["message"]
