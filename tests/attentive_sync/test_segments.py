"""Attentive v2 segments and one-off texts: the client and the sandbox over loopback HTTP (create
a segment, add members in bulk, read a bulk job; POST /v1/text/send)."""

from __future__ import annotations

import pytest
import requests

from attentive_sync.client import SEGMENT_MEMBERS_MAX, SEGMENT_MEMBERS_PATH, AttentiveClient
from attentive_sync.errors import AttentiveError

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
