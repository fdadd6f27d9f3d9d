"""Identity links against the Attentive sandbox: a contact set is linked once, not sent again
while unchanged, sent again when it changes; pending sets are linked by the job at Attentive's
identity rate; errors are kept in Attentive's words."""

from __future__ import annotations

import pytest
from procrastinate.contrib.django.models import ProcrastinateJob

from attentive_sync import identity, subscriptions
from attentive_sync.client import IDENTITY_PATH
from attentive_sync.errors import AttentiveRequestError, AttentiveServerError
from attentive_sync.identity import contacts_digest, link_identity, link_pending, request_links
from attentive_sync.models import AttentiveSettings, IdentityLink
from attentive_sync.subscriptions import Contact
from tests.conftest import run_worker_until_idle

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def configured(attentive_sandbox):
    settings = AttentiveSettings.load()
    settings.api_url = attentive_sandbox.base_url
    settings.api_key = "sandbox"
    settings.enabled = True
    settings.save()
    return attentive_sandbox


@pytest.fixture
def client(configured):
    client = subscriptions.client_from_settings()
    yield client
    client.session.close()


def identities(sandbox) -> list[dict]:
    return [entry["body"] for entry in sandbox.sandbox.received()["identities"]]


def test_a_contact_set_is_linked_once_and_again_when_it_changes(configured, client):
    ada = Contact("member-000051", phone="(415) 555-0134", email="ada@example.com")
    assert link_identity(ada, client=client) is True
    assert identities(configured) == [
        {"clientUserId": "member-000051", "phone": "+14155550134", "email": "ada@example.com"}
    ]
    link = IdentityLink.objects.get(client_user_id="member-000051")
    assert link.contacts_digest == contacts_digest(ada) and link.linked_at and not link.pending and not link.last_error
    assert "+14155550134" not in link.contacts_digest  # a keyed digest, not the contacts

    assert link_identity(ada, client=client) is False  # unchanged: nothing sent
    assert len(identities(configured)) == 1

    moved = Contact("member-000051", phone="(415) 555-0134", email="ada@lovelace.example")
    assert link_identity(moved, client=client) is True
    assert identities(configured)[-1]["email"] == "ada@lovelace.example"
    assert IdentityLink.objects.get(client_user_id="member-000051").contacts_digest == contacts_digest(moved)

    email_only = Contact("member-2", email="grace@example.com")
    link_identity(email_only, client=client)
    assert identities(configured)[-1] == {"clientUserId": "member-2", "email": "grace@example.com"}


def test_requested_sets_are_pending_until_linked_and_unchanged_ones_are_not(configured, client):
    ada = Contact("member-000051", phone="+14155550134")
    grace = Contact("member-2", email="grace@example.com")
    link_identity(ada, client=client)

    assert request_links([ada, grace]) == 1  # ada's set is the one linked
    assert list(IdentityLink.objects.filter(pending=True).values_list("client_user_id", flat=True)) == ["member-2"]
    assert request_links([grace]) == 0  # already pending

    changed = Contact("member-000051", phone="+14155550199")
    assert request_links([changed]) == 1
    # Changed back before the job ran: the set last linked again, so nothing is pending for her.
    assert request_links([ada]) == 0
    assert not IdentityLink.objects.get(client_user_id="member-000051").pending

    run = link_pending(client=client)
    assert (run.linked, run.unchanged, run.failed, run.more) == (1, 0, 0, False)
    assert [body["clientUserId"] for body in identities(configured)] == ["member-000051", "member-2"]
    assert not IdentityLink.objects.filter(pending=True).exists()


def test_the_job_links_pending_sets_under_the_identity_rate(configured):
    people = [Contact(f"member-{n}", phone=f"+1415555{n:04d}") for n in range(12)]
    request_links(people)
    assert identity.queue_link_job() is True
    assert identity.queue_link_job() is False  # one waits at a time
    [job] = ProcrastinateJob.objects.filter(task_name="attentive_sync.link_identities")
    assert job.lock == identity.JOB_LOCK
    run_worker_until_idle()
    assert len(identities(configured)) == 12
    assert configured.sandbox.rate_limited() == {}  # 12 in a burst would pass Attentive's 10/s
    assert not IdentityLink.objects.filter(pending=True).exists()


def test_a_run_that_runs_out_of_time_says_more_are_left(configured, client):
    request_links([Contact(f"member-{n}", email=f"m{n}@example.com") for n in range(3)])
    run = link_pending(client=client, seconds=0)
    assert run.more and run.linked == 0


def test_a_refused_set_keeps_attentives_message_and_is_not_retried(configured, client):
    body = '{"error":{"id":3,"message":"phone is not a valid number"}}'
    configured.sandbox.inject_fault(IDENTITY_PATH, status=400, body=body)
    request_links([Contact("member-1", phone="+14155550134"), Contact("member-2", email="grace@example.com")])
    run = link_pending(client=client)
    assert (run.linked, run.failed) == (1, 1)
    refused = IdentityLink.objects.get(client_user_id="member-1")
    assert not refused.pending and "phone is not a valid number" in refused.last_error and refused.linked_at is None


def test_an_outage_stops_the_run_and_keeps_the_sets_pending(configured, client):
    configured.sandbox.inject_fault(IDENTITY_PATH, status=503)
    request_links([Contact("member-1", phone="+14155550134"), Contact("member-2", email="grace@example.com")])
    run = link_pending(client=client)
    assert run.failed == 1 and "503" in run.stopped
    assert IdentityLink.objects.filter(pending=True).count() == 2
    assert "injected fault" in IdentityLink.objects.get(client_user_id="member-1").last_error
    with pytest.raises(AttentiveServerError):
        configured.sandbox.inject_fault(IDENTITY_PATH, status=500)
        link_identity(Contact("member-1", phone="+14155550134"), client=client)

    assert link_pending(client=client).linked == 2  # Attentive is back
    assert IdentityLink.objects.get(client_user_id="member-1").last_error == ""


def test_nothing_is_sent_while_sending_is_switched_off(configured):
    settings = AttentiveSettings.load()
    settings.enabled = False
    settings.save()
    request_links([Contact("member-1", phone="+14155550134")])
    run = link_pending()
    assert run.stopped == "forwarding to Attentive is switched off"
    assert identities(configured) == [] and IdentityLink.objects.get().pending


def test_the_sandbox_refuses_a_client_user_id_alone_so_a_contact_always_has_a_phone_or_email(configured, client):
    with pytest.raises(AttentiveRequestError, match="needs at least one other identifier"):
        client.identify(clientUserId="member-1")
