"""Credential issuance against the Sparkfly sandbox over loopback HTTP (and, end to end, the
Attentive sandbox): the happy path, every refusal the sandbox simulates (foreseen by the
mirror, and returned by Sparkfly when the mirror is stale), double and concurrent submits, a
PUT that failed after the POST, batches with mixed outcomes, and the command."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, connections
from django.utils import timezone
from procrastinate.contrib.django.models import ProcrastinateJob

from attentive_sync.events import rfc3339
from attentive_sync.models import AttentiveSettings, Delivery
from sparkfly_sync import events, issuance
from sparkfly_sync.client import CREDENTIALS_PATH, RetryPolicy, SparkflyClient
from sparkfly_sync.management.commands.issue_credentials import Command as IssueCredentialsCommand
from sparkfly_sync.models import (
    Channel,
    Credential,
    IssuanceBatch,
    IssuanceRequest,
    LoyaltyEnrollment,
    Member,
    Offer,
    OfferChannel,
    Redemption,
)
from sparkfly_sync.sync import sync_all
from tests.conftest import run_worker_until_idle

# The small seeded sandbox (tests/sparkfly_sync/conftest.py), seed 0: offers 1701 and 1704 run
# on channel 451; 1702 is pending, 1703 expired (both on 451); 1706 runs on channel 452 only.
CHANNEL = 451
RUNNING = (1701, 1704)
PENDING, EXPIRED, ELSEWHERE = 1702, 1703, 1706
UNKNOWN_MEMBER = 999999

pytestmark = pytest.mark.django_db

REFUSED, ISSUED, FAILED, PENDING_STATE = (
    IssuanceRequest.State.REFUSED, IssuanceRequest.State.ISSUED, IssuanceRequest.State.FAILED,
    IssuanceRequest.State.PENDING,
)


@pytest.fixture
def mirrored(sparkfly_client):
    sync_all(client=sparkfly_client)
    return sparkfly_client


@pytest.fixture
def attentive(attentive_sandbox):
    settings = AttentiveSettings.load()
    settings.api_url, settings.api_key, settings.enabled = attentive_sandbox.base_url, "sandbox", True
    settings.save()
    return attentive_sandbox


@pytest.fixture(autouse=True)
def no_periodic_sync(settings):
    # The worker also runs the per-minute mirror scheduler; it must not refresh a stale mirror.
    settings.SPARKFLY_SYNC_INTERVAL_MINUTES = 0


def member_ids(count: int = 1) -> list[int]:
    return list(Member.objects.exclude(phone="").order_by("sparkfly_id").values_list("sparkfly_id", flat=True)[:count])


def issue(client, *, member_id=None, channel_id=CHANNEL, offer_ids=RUNNING, key=None, **options) -> IssuanceRequest:
    return issuance.issue_credential(
        member_id=member_id or member_ids()[0], channel_id=channel_id, offer_ids=list(offer_ids),
        idempotency_key=key or uuid.uuid4(), client=client, **options,
    )


def credentials_at_sparkfly(client, member_id: int) -> list[dict]:
    return [entry["credential"] for entry in client.get(CREDENTIALS_PATH, member_id=member_id)["credentials"]]


def credential_posts(sandbox) -> int:
    return sandbox.sandbox.count_requests(CREDENTIALS_PATH, "POST")


# --- the happy path ------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_an_issuance_creates_the_credential_mirrors_it_and_tells_attentive_in_the_seed_shape(
    mirrored, sparkfly_sandbox, attentive
):
    member = Member.objects.get(sparkfly_id=member_ids()[0])

    request = issue(mirrored, member_id=member.sparkfly_id)

    assert request.state == ISSUED, request.reason
    [at_sparkfly] = credentials_at_sparkfly(mirrored, member.sparkfly_id)
    assert at_sparkfly["offer_ids"] == list(RUNNING) and at_sparkfly["channel_id"] == CHANNEL
    assert request.code == at_sparkfly["identifier"] and request.credential_id == at_sparkfly["id"]
    assert request.reason == "" and request.attempts == 1 and request.finished_at is not None
    assert request.events == IssuanceRequest.Events.FORWARDED
    # Sparkfly's two documented steps (seed 001): create with member and channel, then attach.
    log = [
        entry for entry in sparkfly_sandbox.sandbox.requests_log
        if entry.path.startswith(CREDENTIALS_PATH) and entry.method != "GET"  # the mirror's sync lists them
    ]
    assert [(entry.method, entry.path) for entry in log] == [
        ("POST", CREDENTIALS_PATH), ("PUT", f"{CREDENTIALS_PATH}/{at_sparkfly['id']}"),
    ]
    assert log[0].query == f"member_id={member.sparkfly_id}&channel_id={CHANNEL}"
    assert log[1].query == f"channel_id={CHANNEL}&offer_ids={RUNNING[0]}%2C{RUNNING[1]}"
    mirrored_credential = Credential.objects.get(sparkfly_id=at_sparkfly["id"])
    assert mirrored_credential.identifier == request.code and mirrored_credential.member_id == member.sparkfly_id
    assert Delivery.objects.count() == 2

    run_worker_until_idle()

    received = sorted((entry["body"] for entry in attentive.sandbox.events()), key=lambda e: e["properties"]["offer_state"]["campaign"]["id"])
    expected = []
    for offer_id in RUNNING:
        offer = Offer.objects.get(sparkfly_id=offer_id)
        link = OfferChannel.objects.get(offer_id=offer_id, channel_id=CHANNEL)
        expected.append({
            "type": "sparkfly.member.offer_state_created",
            "properties": {"offer_state": {
                "offer_state_id": None,
                "credential_identifier": request.code,
                "expiration": rfc3339(offer.expires_at),
                "campaign": {
                    "id": offer_id, "xid": link.xid, "name": offer.name, "external_id": "",
                    "offer": {"id": offer_id, "name": offer.name, "description": offer.raw["description"]},
                },
            }},
            "occurredAt": rfc3339(datetime.fromisoformat(at_sparkfly["updated_at"])),
            "user": {"phone": member.phone, "email": member.email, "externalIdentifiers": {"clientUserId": member.identifier}},
            "externalEventId": events.issuance_event_id(credential_id=at_sparkfly["id"], offer_id=offer_id),
        })
    assert received == expected
    assert attentive.sandbox.duplicate_external_event_ids() == {}


def test_a_switched_off_issuance_event_is_issued_and_says_attentive_was_not_told(mirrored):
    settings = AttentiveSettings.load()
    settings.disabled_event_types = [events.OFFER_STATE_CREATED]
    settings.save()

    request = issue(mirrored)

    assert request.state == ISSUED and request.code and request.events == "not_forwarded"
    assert request.reason == (
        "Issued, but Attentive was not told (sparkfly.member.offer_state_created): "
        "the event type is switched off in the Attentive settings"
    )
    assert Delivery.objects.count() == 0


def test_an_error_telling_attentive_leaves_the_events_pending_and_the_sweep_forwards_them(mirrored, monkeypatch):
    def broken(event):
        raise RuntimeError("the outbox is broken")

    monkeypatch.setattr(issuance, "forward", broken)
    request = issue(mirrored)
    monkeypatch.undo()

    assert request.state == ISSUED and request.code
    assert request.events == IssuanceRequest.Events.PENDING
    assert request.reason.startswith("Issued; Attentive not told yet (sparkfly.member.offer_state_created), tried again")
    assert request.reason.endswith(": the outbox is broken")
    assert Delivery.objects.count() == 0
    # Left to the issuing process for a minute, then the sweep queues one job for it, once.
    assert issuance.queue_pending_events() == 0
    later = timezone.now() + timedelta(minutes=2)
    assert issuance.queue_pending_events(now=later) == 1
    assert issuance.queue_pending_events(now=later) == 0
    assert ProcrastinateJob.objects.get().task_name == "sparkfly_sync.forward_issuance_events"

    assert issuance.forward_issuance_events(request.pk, client_factory=lambda: mirrored) == "forwarded"

    request.refresh_from_db()
    assert (request.state, request.events, request.reason) == (ISSUED, "forwarded", "")
    assert sorted(Delivery.objects.values_list("external_event_id", flat=True)) == sorted(
        events.issuance_event_id(credential_id=request.credential_id, offer_id=offer_id) for offer_id in RUNNING
    )
    assert issuance.forward_issuance_events(request.pk, client_factory=lambda: mirrored) == "forwarded"
    assert Delivery.objects.count() == 2  # forwarded once


def test_sparkfly_unreachable_for_the_event_rows_leaves_the_events_pending(mirrored, monkeypatch):
    from sparkfly_sync.errors import SparkflyConnectionError

    def unreachable(request, mirror):
        raise SparkflyConnectionError("Sparkfly could not be reached: GET /v1.0/members/1")

    monkeypatch.setattr(issuance, "_event_rows", unreachable)
    request = issue(mirrored)

    assert (request.state, request.events) == (ISSUED, "pending") and request.reason.endswith("could not be reached: GET /v1.0/members/1")


def test_events_still_pending_past_the_maximum_event_age_are_given_up_with_the_reason(mirrored, monkeypatch):
    monkeypatch.setattr(issuance, "forward", lambda event: 1 / 0)
    request = issue(mirrored)
    monkeypatch.undo()
    assert request.events == "pending"
    late = timezone.now() + AttentiveSettings.load().max_event_age + timedelta(minutes=1)

    assert issuance.forward_issuance_events(request.pk, client_factory=lambda: mirrored, now=late) == "not_forwarded"

    request.refresh_from_db()
    assert request.reason.startswith("Issued, but Attentive was not told (sparkfly.member.offer_state_created): still "
                                     "not forwarded when older than the maximum event age")
    assert Delivery.objects.count() == 0
    assert issuance.queue_pending_events(now=late) == 0


# --- refusals: foreseen by the mirror, in Sparkfly's words -------------------------------------------------


def offer_name(offer_id: int) -> str:
    return Offer.objects.get(sparkfly_id=offer_id).name


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("channel unknown", lambda: "Channel can't be blank and must be associated with your account and offer"),
        ("member not mirrored", lambda: "Member can't be blank"),
        ("offer not on the channel", lambda: f"Offer not found or not eligible by channel, with id: {ELSEWHERE}"),
        ("offer unknown", lambda: "Offer not found or not eligible by channel, with id: 424242"),
        ("offer pending", lambda: f"offer {offer_name(PENDING)} must be approved to generate a credential"),
        ("offer expired", lambda: f"Offer with ID {EXPIRED} is no longer active"),
        ("offer not yet active", lambda: f"Offer with ID {RUNNING[1]} is no longer active"),
        ("offer past stop_offering_at", lambda: f"Offer with ID {RUNNING[1]} is no longer active"),
        ("member over the offer's limits", lambda: f"Member must be eligible for offer: {offer_name(RUNNING[1])}"),
    ],
)
def test_the_mirror_refuses_in_sparkflys_words_before_calling_sparkfly(mirrored, sparkfly_sandbox, case, expected):
    member_id, channel_id, offer_ids = member_ids()[0], CHANNEL, [RUNNING[0], RUNNING[1]]
    now = timezone.now()
    if case == "channel unknown":
        channel_id = 459  # neither mirrored nor at Sparkfly
    elif case == "member not mirrored":
        member_id = UNKNOWN_MEMBER
    elif case == "offer not on the channel":
        offer_ids = [RUNNING[0], ELSEWHERE]
    elif case == "offer unknown":
        offer_ids = [RUNNING[0], 424242]
    elif case == "offer pending":
        offer_ids = [RUNNING[0], PENDING]
    elif case == "offer expired":
        offer_ids = [RUNNING[0], EXPIRED]
    elif case == "offer not yet active":
        Offer.objects.filter(sparkfly_id=RUNNING[1]).update(activates_at=now + timedelta(days=1))
    elif case == "offer past stop_offering_at":
        Offer.objects.filter(sparkfly_id=RUNNING[1]).update(stop_offering_at=now - timedelta(minutes=1))
    elif case == "member over the offer's limits":
        # A redemption the portal was told of today, on the member's credential (one a day).
        Credential.objects.create(sparkfly_id=777, member_id=member_id, channel_id=CHANNEL, offer_ids=[RUNNING[1]],
                                  synced_at=now)
        Redemption.objects.create(dedup_key=uuid.uuid4(), credential_id=777, offer_id=RUNNING[1], redeemed_at=now,
                                  received_at=now)

    request = issue(mirrored, member_id=member_id, channel_id=channel_id, offer_ids=offer_ids)

    assert (request.state, request.reason) == (REFUSED, expected())
    assert request.credential_id is None and request.attempts == 0
    assert credential_posts(sparkfly_sandbox) == 0
    assert Delivery.objects.count() == 0


def test_what_the_mirror_lacks_is_fetched_from_sparkfly_before_any_refusal(mirrored, sparkfly_sandbox):
    member_id = member_ids()[0]
    Channel.objects.filter(sparkfly_id=CHANNEL).delete()
    OfferChannel.objects.filter(channel_id=CHANNEL).delete()
    Offer.objects.filter(sparkfly_id=RUNNING[1]).delete()
    Credential.objects.filter(member_id=member_id).delete()
    Member.objects.filter(sparkfly_id=member_id).delete()

    request = issue(mirrored, member_id=member_id)

    assert request.state == ISSUED, request.reason
    assert Channel.objects.filter(sparkfly_id=CHANNEL).exists() and Member.objects.filter(sparkfly_id=member_id).exists()
    assert OfferChannel.objects.filter(channel_id=CHANNEL, offer_id__in=RUNNING).count() == 2


def test_sparkfly_unreachable_while_fetching_what_the_mirror_lacks_fails_rather_than_refuses(mirrored, sparkfly_sandbox):
    member_id = member_ids()[0]
    Credential.objects.filter(member_id=member_id).delete()
    Member.objects.filter(sparkfly_id=member_id).delete()
    sparkfly_sandbox.sandbox.inject_fault("/v1.0/members/", status=503, body='{"error":"Service Unavailable"}', times=10)

    request = issue(mirrored, member_id=member_id)

    assert request.state == FAILED and request.reason.endswith(": Service Unavailable"), request.reason
    assert request.reason.startswith("What the mirror lacks for this issuance could not be fetched from Sparkfly: ")
    assert credential_posts(sparkfly_sandbox) == 0
    sparkfly_sandbox.sandbox.clear_faults()
    assert issue(mirrored, member_id=member_id, key=request.idempotency_key).state == ISSUED


def test_yesterdays_redemption_does_not_count_against_a_daily_limit(mirrored):
    member_id, now = member_ids()[0], timezone.now()
    Credential.objects.create(sparkfly_id=777, member_id=member_id, channel_id=CHANNEL, offer_ids=[RUNNING[0]], synced_at=now)
    Redemption.objects.create(dedup_key=uuid.uuid4(), credential_id=777, offer_id=RUNNING[0],
                              redeemed_at=now - timedelta(days=1), received_at=now)

    assert issue(mirrored, member_id=member_id, offer_ids=[RUNNING[0]]).state == ISSUED


# --- refusals Sparkfly returns anyway (a stale mirror): kept verbatim -----------------------------------------


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("channel gone at Sparkfly", lambda: "Channel can't be blank and must be associated with your account and offer"),
        ("member gone at Sparkfly", lambda: "Member can't be blank"),
        ("offer unpublished at Sparkfly", lambda: f"Offer not found or not eligible by channel, with id: {ELSEWHERE}"),
        ("offer unapproved at Sparkfly", lambda: f"offer {offer_name(PENDING)} must be approved to generate a credential"),
        ("offer ended at Sparkfly", lambda: f"Offer with ID {EXPIRED} is no longer active"),
    ],
)
def test_sparkflys_own_refusal_is_kept_verbatim_when_the_mirror_is_stale(mirrored, sparkfly_sandbox, case, expected):
    member_id, channel_id, offer_ids, now = member_ids()[0], CHANNEL, [RUNNING[0]], timezone.now()
    if case == "channel gone at Sparkfly":
        channel_id = 459
        Channel.objects.create(sparkfly_id=459, name="Deleted at Sparkfly", synced_at=now)
        OfferChannel.objects.create(offer_id=RUNNING[0], channel_id=459, xid="GONE", synced_at=now)
    elif case == "member gone at Sparkfly":
        member_id = UNKNOWN_MEMBER
        Member.objects.create(sparkfly_id=UNKNOWN_MEMBER, identifier="deleted-at-sparkfly", synced_at=now)
    elif case == "offer unpublished at Sparkfly":
        offer_ids = [ELSEWHERE]
        OfferChannel.objects.create(offer_id=ELSEWHERE, channel_id=CHANNEL, xid="UNPUBLISHED", synced_at=now)
    elif case == "offer unapproved at Sparkfly":
        offer_ids = [PENDING]
        Offer.objects.filter(sparkfly_id=PENDING).update(status="approved")
    elif case == "offer ended at Sparkfly":
        offer_ids = [EXPIRED]
        Offer.objects.filter(sparkfly_id=EXPIRED).update(expires_at=now + timedelta(days=30))

    request = issue(mirrored, member_id=member_id, channel_id=channel_id, offer_ids=offer_ids)

    assert (request.state, request.reason) == (REFUSED, expected())
    assert Delivery.objects.count() == 0
    # Refused is final: the same key again calls nobody.
    calls = len(sparkfly_sandbox.sandbox.requests_log)
    again = issue(mirrored, member_id=member_id, channel_id=channel_id, offer_ids=offer_ids, key=request.idempotency_key)
    assert (again.pk, again.state) == (request.pk, REFUSED)
    assert len(sparkfly_sandbox.sandbox.requests_log) == calls


def test_sparkflys_member_limit_is_kept_verbatim_when_the_mirror_missed_the_redemption(mirrored, sparkfly_sandbox):
    member_id, offer_id = member_ids()[0], RUNNING[1]
    first = issue(mirrored, member_id=member_id, offer_ids=[offer_id])
    mirrored.request("PUT", f"{CREDENTIALS_PATH}/{first.credential_id}/redeem")  # no callback reached the portal

    second = issue(mirrored, member_id=member_id, offer_ids=[offer_id])

    assert (second.state, second.reason) == (REFUSED, f"Member must be eligible for offer: {offer_name(offer_id)}")
    assert second.credential_id is not None  # created by the POST, refused at the PUT


# --- never twice -------------------------------------------------------------------------------------------------


def test_a_double_submit_issues_once_and_returns_the_first_result(mirrored, sparkfly_sandbox):
    key = uuid.uuid4()
    first = issue(mirrored, key=key)
    calls = len(sparkfly_sandbox.sandbox.requests_log)

    second = issue(mirrored, key=key)

    assert (second.pk, second.state, second.code) == (first.pk, ISSUED, first.code)
    assert len(sparkfly_sandbox.sandbox.requests_log) == calls  # nobody was called
    assert credential_posts(sparkfly_sandbox) == 1
    assert Delivery.objects.count() == 2


def test_a_key_sent_again_with_other_offers_is_refused_as_a_mistake(mirrored):
    key = uuid.uuid4()
    issue(mirrored, key=key, offer_ids=[RUNNING[0]])

    with pytest.raises(issuance.IdempotencyKeyReused, match="another issuance needs a new key"):
        issue(mirrored, key=key, offer_ids=[RUNNING[1]])


def test_a_key_being_issued_elsewhere_is_returned_pending_without_calling_sparkfly(mirrored, sparkfly_sandbox):
    key = uuid.uuid4()
    lock_id = int.from_bytes(key.bytes[:8], "big", signed=True)
    other_process = connections.create_connection("default")
    try:
        with other_process.cursor() as cursor:  # what another process holds while it talks to Sparkfly
            cursor.execute("SELECT pg_advisory_lock(%s)", [lock_id])
        request = issue(mirrored, key=key)
        with other_process.cursor() as cursor:
            # Released here, not by close(): the server ends a closed session a moment later.
            cursor.execute("SELECT pg_advisory_unlock(%s)", [lock_id])
    finally:
        other_process.close()

    assert request.state == PENDING_STATE
    assert credential_posts(sparkfly_sandbox) == 0
    assert issue(mirrored, key=key).state == ISSUED  # once free, the same key issues


@pytest.mark.django_db(transaction=True)
def test_concurrent_submits_of_one_key_create_one_credential(mirrored, sparkfly_sandbox):
    key, member_id, submits = uuid.uuid4(), member_ids()[0], 6
    start = threading.Barrier(submits)
    results: list[str] = []

    def submit() -> None:
        client = SparkflyClient(base_url=sparkfly_sandbox.base_url, identity="sandbox", key="sandbox")
        try:
            start.wait()
            results.append(issue(client, member_id=member_id, key=key).state)
        finally:
            connection.close()

    threads = [threading.Thread(target=submit) for _ in range(submits)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(results) == submits and set(results) <= {ISSUED, PENDING_STATE} and ISSUED in results
    assert credential_posts(sparkfly_sandbox) == 1
    assert len(credentials_at_sparkfly(mirrored, member_id)) == 1
    assert IssuanceRequest.objects.get().state == ISSUED
    assert Delivery.objects.count() == 2


def test_a_put_that_failed_after_the_post_resumes_with_the_same_credential(mirrored, sparkfly_sandbox, recorded_sleeps):
    member_id, key = member_ids()[0], uuid.uuid4()
    # PUTs are retried (3 tries in this client): every one of them fails.
    sparkfly_sandbox.sandbox.inject_fault(f"{CREDENTIALS_PATH}/", status=503, body='{"error":"Service Unavailable"}', times=3)

    failed = issue(mirrored, member_id=member_id, key=key)

    assert failed.state == FAILED and failed.credential_id is not None
    assert failed.reason.startswith("Sparkfly answered 503 to PUT ") and failed.reason.endswith(": Service Unavailable")
    assert not failed.awaiting_creation

    resumed = issue(mirrored, member_id=member_id, key=key)

    assert (resumed.state, resumed.credential_id) == (ISSUED, failed.credential_id)
    assert resumed.attempts == 2 and resumed.reason == ""
    assert credential_posts(sparkfly_sandbox) == 1
    [credential] = credentials_at_sparkfly(mirrored, member_id)
    assert credential["identifier"] == resumed.code and credential["offer_ids"] == list(RUNNING)


def test_a_post_sparkfly_failed_is_sent_again_only_after_checking_it_created_nothing(mirrored, sparkfly_sandbox):
    member_id, key = member_ids()[0], uuid.uuid4()
    lists_before = sparkfly_sandbox.sandbox.count_requests(CREDENTIALS_PATH, "GET")
    sparkfly_sandbox.sandbox.inject_fault(CREDENTIALS_PATH, status=500, body='{"error":"Internal Server Error"}')

    failed = issue(mirrored, member_id=member_id, key=key)

    assert failed.state == FAILED and failed.credential_id is None and failed.awaiting_creation
    assert failed.reason.endswith(": Internal Server Error")

    resumed = issue(mirrored, member_id=member_id, key=key)

    assert resumed.state == ISSUED
    assert sparkfly_sandbox.sandbox.count_requests(CREDENTIALS_PATH, "GET") == lists_before + 1  # looked first
    assert len(credentials_at_sparkfly(mirrored, member_id)) == 1


def test_a_credential_created_by_a_post_whose_answer_was_lost_is_adopted_not_doubled(mirrored, sparkfly_sandbox):
    member_id, key = member_ids()[0], uuid.uuid4()
    request = IssuanceRequest.objects.create(
        idempotency_key=key, member_id=member_id, channel_id=CHANNEL, offer_ids=list(RUNNING), state=FAILED,
        awaiting_creation=True, attempts=1,
    )
    # What the lost POST did at Sparkfly: an empty credential for the member on the channel.
    lost = mirrored.request("POST", CREDENTIALS_PATH, params={"member_id": member_id, "channel_id": CHANNEL}, idempotent=False)

    resumed = issue(mirrored, member_id=member_id, key=key)

    assert resumed.pk == request.pk and resumed.state == ISSUED
    assert resumed.credential_id == lost["credential"]["id"]
    assert len(credentials_at_sparkfly(mirrored, member_id)) == 1


def test_a_put_whose_answer_was_lost_is_not_sent_again_when_the_offers_are_attached(mirrored, sparkfly_sandbox):
    member_id, key = member_ids()[0], uuid.uuid4()
    created = mirrored.request("POST", CREDENTIALS_PATH, params={"member_id": member_id, "channel_id": CHANNEL}, idempotent=False)
    credential_id = created["credential"]["id"]
    # What the lost PUT did at Sparkfly: the offers attached, a code generated.
    attached = mirrored.request("PUT", f"{CREDENTIALS_PATH}/{credential_id}",
                                params={"channel_id": CHANNEL, "offer_ids": ",".join(map(str, RUNNING))})
    IssuanceRequest.objects.create(
        idempotency_key=key, member_id=member_id, channel_id=CHANNEL, offer_ids=list(RUNNING), state=FAILED,
        credential_id=credential_id, attempts=1,
    )

    resumed = issue(mirrored, member_id=member_id, key=key)

    assert (resumed.state, resumed.code) == (ISSUED, attached["credential"]["identifier"]), resumed.reason
    assert sparkfly_sandbox.sandbox.count_requests(f"{CREDENTIALS_PATH}/{credential_id}", "PUT") == 1  # ours above
    assert sparkfly_sandbox.sandbox.count_requests(f"{CREDENTIALS_PATH}/{credential_id}", "GET") >= 1  # looked first


def test_sparkfly_unreachable_fails_the_request_with_what_happened(mirrored, sparkfly_sandbox):
    client = SparkflyClient(base_url="http://127.0.0.1:9", identity="sandbox", key="sandbox", retry=RetryPolicy(attempts=1))

    request = issue(client)

    assert request.state == FAILED and request.reason.startswith("Sparkfly could not be reached: GET http://127.0.0.1:9/auth")
    assert request.awaiting_creation  # for all it knows, a POST went out: the next try looks first
    assert issue(mirrored, key=request.idempotency_key).state == ISSUED


# --- batches ------------------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_batch_with_mixed_outcomes_reports_each_member_and_a_retry_finishes_it(
    mirrored, sparkfly_sandbox, sparkfly_settings, attentive
):
    first, second, third = member_ids(3)
    sparkfly_sandbox.sandbox.inject_fault(CREDENTIALS_PATH, status=500, after=4)  # the third member's POST
    batch, created = issuance.issuance_batch_create(
        member_ids=[first, second, UNKNOWN_MEMBER, third], channel_id=CHANNEL, offer_ids=[RUNNING[0]],
    )
    assert created and batch.state == IssuanceBatch.State.QUEUED
    assert ProcrastinateJob.objects.get().task_name == "sparkfly_sync.issue_credentials_batch"

    run_worker_until_idle()

    batch.refresh_from_db()
    assert (batch.state, batch.issued, batch.refused, batch.failed, batch.failure) == ("done", 2, 1, 1, "")
    assert batch.started_at is not None and batch.finished_at is not None
    results = {r.member_id: (r.state, r.code, r.reason) for r in batch.requests.all()}
    assert results[UNKNOWN_MEMBER] == (REFUSED, "", "Member can't be blank")
    assert results[third][0] == FAILED and results[third][2].endswith(": boom")
    assert results[first][0] == results[second][0] == ISSUED and results[first][1] and results[second][1]
    assert len(attentive.sandbox.events()) == 2

    assert issuance.issuance_batch_retry(batch=batch) is True
    run_worker_until_idle()

    batch.refresh_from_db()
    assert (batch.state, batch.issued, batch.refused, batch.failed) == ("done", 3, 1, 0)
    assert credential_posts(sparkfly_sandbox) == 4  # 2 + the failed one + its retry; none doubled
    for member_id in (first, second, third):
        assert len(credentials_at_sparkfly(mirrored, member_id)) == 1
    assert len(attentive.sandbox.events()) == 3
    assert attentive.sandbox.duplicate_external_event_ids() == {}


def test_the_same_bulk_key_queues_one_batch(mirrored):
    key = uuid.uuid4()
    first, created = issuance.issuance_batch_create(member_ids=member_ids(2), channel_id=CHANNEL, offer_ids=[RUNNING[0]], idempotency_key=key)
    again, created_again = issuance.issuance_batch_create(member_ids=member_ids(2), channel_id=CHANNEL, offer_ids=[RUNNING[0]], idempotency_key=key)

    assert created and not created_again and first.pk == again.pk
    assert ProcrastinateJob.objects.filter(task_name="sparkfly_sync.issue_credentials_batch").count() == 1


def test_a_batch_run_again_issues_nobody_twice(mirrored, sparkfly_sandbox):
    batch, _ = issuance.issuance_batch_create(member_ids=member_ids(3), channel_id=CHANNEL, offer_ids=[RUNNING[0]], in_background=False)
    issuance.issue_batch(batch.pk, client=mirrored)
    IssuanceBatch.objects.filter(pk=batch.pk).update(state="running")  # as if its worker died at the end

    again = issuance.issue_batch(batch.pk, client=mirrored)

    assert (again.issued, again.state) == (3, "done")
    assert credential_posts(sparkfly_sandbox) == 3


def test_a_batch_left_running_by_a_dead_process_is_retried_and_picks_up_where_it_stopped(mirrored, sparkfly_sandbox):
    members = member_ids(3)
    batch, _ = issuance.issuance_batch_create(member_ids=members, channel_id=CHANNEL, offer_ids=[RUNNING[0]], in_background=False)
    # What a killed run leaves: the first member issued, the batch running, no job, no lock.
    issue(mirrored, member_id=members[0], offer_ids=[RUNNING[0]], key=issuance.batch_member_key(batch, members[0]), batch=batch)
    IssuanceBatch.objects.filter(pk=batch.pk).update(state="running", started_at=timezone.now())

    assert issuance.issuance_batch_retry(batch=batch) is True
    assert ProcrastinateJob.objects.filter(task_name="sparkfly_sync.issue_credentials_batch").count() == 1
    batch = issuance.issue_batch(batch.pk, client=mirrored)

    assert (batch.state, batch.issued, batch.failed) == ("done", 3, 0)
    assert credential_posts(sparkfly_sandbox) == 3  # the first member's once


def test_a_batch_being_run_by_a_live_process_is_neither_retried_nor_run_twice(mirrored, sparkfly_sandbox):
    batch, _ = issuance.issuance_batch_create(member_ids=member_ids(2), channel_id=CHANNEL, offer_ids=[RUNNING[0]], in_background=False)
    IssuanceBatch.objects.filter(pk=batch.pk).update(state="running")
    lock_id = int.from_bytes(issuance._batch_run_key(batch).bytes[:8], "big", signed=True)
    other_process = connections.create_connection("default")
    try:
        with other_process.cursor() as cursor:  # what the live run holds
            cursor.execute("SELECT pg_advisory_lock(%s)", [lock_id])
        assert issuance.issuance_batch_retry(batch=batch) is False
        assert issuance.issue_batch(batch.pk, client=mirrored).state == "running"
        with other_process.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [lock_id])
    finally:
        other_process.close()
    assert credential_posts(sparkfly_sandbox) == 0


def test_retrying_a_batch_whose_worker_died_requeues_that_job_not_a_second_one(mirrored):
    batch, _ = issuance.issuance_batch_create(member_ids=member_ids(2), channel_id=CHANNEL, offer_ids=[RUNNING[0]])
    job = ProcrastinateJob.objects.get()
    with connection.cursor() as cursor:  # taken by a worker that then died (no heartbeat row left)
        cursor.execute("UPDATE procrastinate_jobs SET status = 'doing', worker_id = NULL WHERE id = %s", [job.pk])
    IssuanceBatch.objects.filter(pk=batch.pk).update(state="running")

    assert issuance.issuance_batch_retry(batch=batch) is True

    assert [(j.pk, j.status) for j in ProcrastinateJob.objects.all()] == [(job.pk, "todo")]
    assert IssuanceBatch.objects.get(pk=batch.pk).state == "queued"


def test_a_batch_stops_when_sparkfly_keeps_failing(mirrored, sparkfly_sandbox):
    members = member_ids(12)
    sparkfly_sandbox.sandbox.inject_fault(CREDENTIALS_PATH, status=502, body='{"error":"Bad Gateway"}', times=100)
    batch, _ = issuance.issuance_batch_create(member_ids=members, channel_id=CHANNEL, offer_ids=[RUNNING[0]], in_background=False)

    batch = issuance.issue_batch(batch.pk, client=mirrored)

    assert (batch.state, batch.failed, batch.settled, batch.total) == ("done", 10, 10, 12)
    assert batch.failure.startswith("Stopped after 10 members in a row failed; the last: Sparkfly answered 502")
    assert credential_posts(sparkfly_sandbox) == 10


# --- the command --------------------------------------------------------------------------------------------------


def run_command(*args: str) -> str:
    out = StringIO()
    call_command("issue_credentials", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_the_command_prints_one_line_per_member(mirrored, sparkfly_settings):
    first, second = member_ids(2)

    output = run_command("--channel", str(CHANNEL), "--offers", f"{RUNNING[0]},{RUNNING[1]}",
                         "--members", f"{first},{UNKNOWN_MEMBER},{second}")

    codes = dict(IssuanceRequest.objects.filter(state=ISSUED).values_list("member_id", "code"))
    assert output.splitlines() == [
        f"member {first}: {codes[first]}",
        f"member {UNKNOWN_MEMBER}: refused — Member can't be blank",
        f"member {second}: {codes[second]}",
    ]
    assert IssuanceBatch.objects.get().requested_by is None


def test_the_command_issues_to_every_actively_enrolled_member(mirrored, sparkfly_settings):
    enrolled = set(LoyaltyEnrollment.objects.filter(status="active").values_list("member_id", flat=True))
    assert 1 < len(enrolled) < Member.objects.count()

    output = run_command("--channel", str(CHANNEL), "--offers", str(RUNNING[0]), "--all-enrolled", "--program", "1")

    assert len(output.splitlines()) == len(enrolled)
    assert set(IssuanceRequest.objects.values_list("member_id", flat=True)) == enrolled
    assert "No member to issue to" in run_command("--channel", str(CHANNEL), "--offers", str(RUNNING[0]),
                                                   "--all-enrolled", "--program", "99")


def test_the_command_fails_when_a_member_failed_and_its_key_retries_only_that_one(mirrored, sparkfly_sandbox, sparkfly_settings):
    first, second = member_ids(2)
    sparkfly_sandbox.sandbox.inject_fault(CREDENTIALS_PATH, status=500, after=2)  # the second member's POST
    args = ("--channel", str(CHANNEL), "--offers", str(RUNNING[0]), "--members", f"{first},{second}")

    with pytest.raises(CommandError, match=r"1 failed and 0 not settled of 2 members; run the same command with "
                                           r"--idempotency-key (\S+) to retry them") as failure:
        run_command(*args)
    key = failure.value.args[0].split("--idempotency-key ")[1].split()[0]

    output = run_command(*args, "--idempotency-key", key)

    codes = dict(IssuanceRequest.objects.values_list("member_id", "code"))
    assert output.splitlines() == [f"member {first}: {codes[first]}", f"member {second}: {codes[second]}"]
    assert credential_posts(sparkfly_sandbox) == 3  # first, the failed second, its retry


def test_a_refusal_is_not_a_failure_of_the_command(mirrored, sparkfly_settings):
    output = run_command("--channel", str(CHANNEL), "--offers", str(PENDING), "--members", str(member_ids()[0]))
    assert "refused — offer" in output


@pytest.mark.django_db(transaction=True)
def test_the_command_exits_non_zero_when_a_member_failed(mirrored, sparkfly_sandbox, sparkfly_settings, capsys):
    sparkfly_sandbox.sandbox.inject_fault(CREDENTIALS_PATH, status=500)

    with pytest.raises(SystemExit) as exit_:
        IssueCredentialsCommand().run_from_argv(
            ["manage.py", "issue_credentials", "--channel", str(CHANNEL), "--offers", str(RUNNING[0]),
             "--members", str(member_ids()[0])]
        )

    assert exit_.value.code == 1
    captured = capsys.readouterr()
    assert captured.out.startswith(f"member {member_ids()[0]}: failed — Sparkfly answered 500 to POST")
    assert "CommandError: 1 failed" in captured.err


@pytest.mark.parametrize(
    "args",
    [
        ("--channel", "451", "--offers", "1701"),  # no members
        ("--channel", "451", "--offers", "1701", "--members", "1", "--all-enrolled"),
        ("--channel", "451", "--offers", "17x1", "--members", "1"),
        ("--channel", "451", "--offers", "1701", "--members", "1", "--program", "1"),
        ("--chan", "451", "--offers", "1701", "--members", "1"),  # no abbreviations
    ],
)
def test_the_command_refuses_what_it_cannot_mean(args, db):
    with pytest.raises(CommandError):
        call_command("issue_credentials", *args, stdout=StringIO(), stderr=StringIO())


def test_the_command_gives_its_resume_key_before_issuing_anything(mirrored, sparkfly_settings, monkeypatch):
    from sparkfly_sync import issuance as service

    first, second = member_ids(2)
    errors = StringIO()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # the operator's Ctrl-C, at the first member

    monkeypatch.setattr(service, "issue_credential", interrupted)
    with pytest.raises(KeyboardInterrupt):
        call_command("issue_credentials", "--channel", str(CHANNEL), "--offers", str(RUNNING[0]),
                     "--members", f"{first},{second}", stdout=StringIO(), stderr=errors)
    monkeypatch.undo()

    key = str(IssuanceBatch.objects.get().idempotency_key)
    assert f"--idempotency-key {key}" in errors.getvalue()
    run_command("--channel", str(CHANNEL), "--offers", str(RUNNING[0]), "--members", f"{first},{second}",
                "--idempotency-key", key)
    assert IssuanceBatch.objects.count() == 1 and IssuanceRequest.objects.filter(state=ISSUED).count() == 2


def test_the_same_command_run_twice_without_a_key_is_one_batch_and_issues_once(mirrored, sparkfly_sandbox, sparkfly_settings):
    first, second = member_ids(2)
    args = ("--channel", str(CHANNEL), "--offers", f"{RUNNING[1]},{RUNNING[0]}", "--members", f"{first},{second}")

    output = run_command(*args)
    again = run_command("--channel", str(CHANNEL), "--offers", f"{RUNNING[0]},{RUNNING[1]}", "--members", f"{first},{second}")

    assert again == output
    assert IssuanceBatch.objects.count() == 1 and credential_posts(sparkfly_sandbox) == 2
    run_command(*args, "--idempotency-key", str(uuid.uuid4()))  # a deliberate second issuance
    assert IssuanceBatch.objects.count() == 2 and credential_posts(sparkfly_sandbox) == 4
