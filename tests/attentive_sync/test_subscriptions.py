"""Subscriptions against the Attentive sandbox over loopback HTTP: the lifecycle (eligible,
subscribed, never resubscribed silently, PREVIOUSLY_CREATED, unsubscribed by channel), contacts
(E.164, refusals), errors in Attentive's words, the shared limiter under the 10/s and 5/s
limits, and the jobs."""

from __future__ import annotations

import threading

import pytest
from django.db import connection
from procrastinate.contrib.django.models import ProcrastinateJob

from attentive_sync import subscriptions
from attentive_sync.client import SUBSCRIPTIONS_PATH, UNSUBSCRIBE_PATH, AttentiveClient
from attentive_sync.errors import AttentiveRequestError
from attentive_sync.models import AttentiveSettings, SubscriptionState
from attentive_sync.subscriptions import (
    ALREADY_SUBSCRIBED,
    EMAIL,
    OPTED_OUT,
    TEXT,
    Contact,
    ContactRefused,
    NotConfigured,
    check_eligibility,
    subscribe,
    unsubscribe,
)
from tests.conftest import run_worker_until_idle

pytestmark = pytest.mark.django_db(transaction=True)

SIGN_UP_SOURCE_ID = "132109"  # seed 003's example
Status = SubscriptionState.Status


@pytest.fixture
def configured(attentive_sandbox):
    settings = AttentiveSettings.load()
    settings.api_url = attentive_sandbox.base_url
    settings.api_key = "sandbox"
    settings.sign_up_source_id = SIGN_UP_SOURCE_ID
    settings.enabled = True
    settings.save()
    return attentive_sandbox


@pytest.fixture
def client(configured):
    client = subscriptions.client_from_settings()
    yield client
    client.session.close()


@pytest.fixture
def ada():
    return Contact("member-000051", phone="(415) 555-0134", email="Ada@Example.com")


def states(client_user_id: str) -> dict[tuple[str, str], SubscriptionState]:
    return {(s.channel, s.subscription_type): s for s in SubscriptionState.objects.filter(client_user_id=client_user_id)}


def words(results) -> dict[tuple[str, str], str]:
    return {(r.channel, r.subscription_type): r.attentive_status for r in results}


def posts(sandbox, path: str) -> int:
    return sandbox.sandbox.count_requests(path, "POST")


def test_the_subscription_lifecycle(configured, client, ada):
    # Attentive does not know her yet: nothing to be eligible for, one row per channel says so.
    results = check_eligibility(ada, client=client)
    assert [(r.channel, r.subscription_type, r.status) for r in results] == [
        (TEXT, "", Status.NOT_ELIGIBLE), (EMAIL, "", Status.NOT_ELIGIBLE)
    ]
    assert "lists no subscription for +14155550134" in results[0].note

    # Subscribe: eligibility first, then one POST with the sign-up source and her clientUserId.
    results = subscribe(ada, client=client)
    assert words(results) == {(TEXT, "MARKETING"): "NEWLY_CREATED", (EMAIL, "MARKETING"): "NEWLY_CREATED"}
    [sent] = configured.sandbox.received()["subscriptions"]
    assert sent["body"] == {
        "user": {"phone": "+14155550134", "email": "ada@example.com"},
        "signUpSourceId": SIGN_UP_SOURCE_ID,
        "externalIdentifiers": {"clientUserId": "member-000051"},
    }
    recorded = states("member-000051")
    assert set(recorded) == {(TEXT, "MARKETING"), (EMAIL, "MARKETING")}  # the "no subscription" rows are gone
    text = recorded[(TEXT, "MARKETING")]
    assert (text.status, text.last_action, text.attentive_status, text.address) == (
        Status.SUBSCRIBED, "subscribe", "NEWLY_CREATED", "+14155550134"
    )
    assert text.response["subscriptionResponses"][0]["subscriptionCreationStatus"] == "NEWLY_CREATED"

    # Eligible now on both channels.
    assert {(r.channel, r.status) for r in check_eligibility(ada, client=client)} == {
        (TEXT, Status.SUBSCRIBED), (EMAIL, Status.SUBSCRIBED)
    }

    # Subscribing again sends nothing: it would text her that she already is.
    results = subscribe(ada, client=client)
    assert {r.note for r in results} == {ALREADY_SUBSCRIBED}
    assert posts(configured, SUBSCRIPTIONS_PATH) == 1
    assert states("member-000051")[(TEXT, "MARKETING")].note == ALREADY_SUBSCRIBED

    # Unsubscribe the text channel only: the phone alone is sent, so EMAIL stays.
    results = unsubscribe(ada, client=client, channels=[TEXT])
    assert words(results) == {(TEXT, "MARKETING"): "NEWLY_UNSUBSCRIBED"}
    assert configured.sandbox.received()["unsubscriptions"][-1]["body"] == {"user": {"phone": "+14155550134"}}
    assert states("member-000051")[(EMAIL, "MARKETING")].status == Status.SUBSCRIBED

    # Automatic work (an enrollment) leaves someone who unsubscribed alone.
    results = subscribe(ada, client=client, automatic=True)
    assert {(r.channel, r.status, r.note) for r in results} == {
        (TEXT, Status.REFUSED, OPTED_OUT), (EMAIL, Status.SUBSCRIBED, ALREADY_SUBSCRIBED)
    }
    assert posts(configured, SUBSCRIPTIONS_PATH) == 1

    # A person asking to be subscribed again: the text channel alone is sent, and Attentive
    # answers PREVIOUSLY_CREATED (the subscription still existed), which is recorded.
    results = subscribe(ada, client=client)
    assert words(results) == {(EMAIL, "MARKETING"): "isEligible=true", (TEXT, "MARKETING"): "PREVIOUSLY_CREATED"}
    assert configured.sandbox.received()["subscriptions"][-1]["body"]["user"] == {"phone": "+14155550134"}
    text = states("member-000051")[(TEXT, "MARKETING")]
    assert (text.status, text.attentive_status) == (Status.SUBSCRIBED, "PREVIOUSLY_CREATED")
    assert "already had it" in text.note

    # Both channels, twice: NEWLY_ then PREVIOUSLY_UNSUBSCRIBED.
    assert set(words(unsubscribe(ada, client=client, channels=[TEXT, EMAIL])).values()) == {"NEWLY_UNSUBSCRIBED"}
    assert set(words(unsubscribe(ada, client=client, channels=[TEXT, EMAIL])).values()) == {"PREVIOUSLY_UNSUBSCRIBED"}
    assert {(s.status, s.last_action) for s in states("member-000051").values()} == {(Status.UNSUBSCRIBED, "unsubscribe")}
    assert {(r.channel, r.status) for r in check_eligibility(ada, client=client)} == {
        (TEXT, Status.NOT_ELIGIBLE), (EMAIL, Status.NOT_ELIGIBLE)
    }
    assert configured.sandbox.rate_limited() == {}


def test_a_direct_second_post_is_previously_created_and_recorded_from_the_answer(configured, client, ada):
    subscribe(ada, client=client)
    # Someone bypasses the portal's check (another integration, a raw call): Attentive re-records it.
    answer = client.subscribe(
        user={"phone": ada.phone}, sign_up_source_id=SIGN_UP_SOURCE_ID, external_identifiers={"clientUserId": ada.client_user_id}
    )
    assert answer["subscriptionResponses"][0]["subscriptionCreationStatus"] == "PREVIOUSLY_CREATED"
    # The portal's next look at her still says subscribed, and its subscribe still sends nothing.
    subscribe(ada, client=client)
    assert posts(configured, SUBSCRIPTIONS_PATH) == 2


def test_an_unsubscribe_of_a_channel_attentive_never_had_says_so(configured, client, ada):
    [result] = unsubscribe(ada, client=client, channels=[EMAIL])
    assert (result.channel, result.subscription_type, result.status) == (EMAIL, "", Status.NOT_ELIGIBLE)
    assert result.note == "Attentive has no subscription for ada@example.com to unsubscribe"


def test_phones_are_normalised_to_e164_and_bad_contacts_refused(settings):
    assert Contact("m", phone="415.555.0134").phone == "+14155550134"
    assert Contact("m", phone="+44 20 7183 8750").phone == "+442071838750"
    settings.MEMBER_PHONE_REGION = "GB"
    assert Contact("m", phone="020 7183 8750").phone == "+442071838750"
    assert Contact("m", phone="0207 183 8750", region="GB").phone == "+442071838750"
    with pytest.raises(ContactRefused, match=r"'1 \(\) 914' is not a valid phone number"):
        Contact("m", phone="1 () 914")
    with pytest.raises(ContactRefused, match="not a valid email address"):
        Contact("m", email="ada@")
    with pytest.raises(ContactRefused, match="has neither a phone number nor an email address"):
        Contact("m", phone=" ", email="")
    with pytest.raises(ContactRefused, match="no clientUserId"):
        Contact(" ", email="ada@example.com")


def test_a_channel_without_its_contact_is_refused_before_anything_is_sent(configured, client):
    email_only = Contact("member-2", email="grace@example.com")
    with pytest.raises(ContactRefused, match="member-2 has no phone number"):
        subscribe(email_only, client=client, channels=[TEXT])
    with pytest.raises(ContactRefused, match="no phone number"):
        unsubscribe(email_only, client=client, channels=[TEXT])
    assert configured.sandbox.requests_log == []
    # With both channels asked, the one she has is used.
    assert words(subscribe(email_only, client=client)) == {(EMAIL, "MARKETING"): "NEWLY_CREATED"}


def test_subscribing_needs_a_sign_up_source_and_automatic_work_needs_sending_on(configured, client, ada):
    settings = AttentiveSettings.load()
    settings.sign_up_source_id = ""
    settings.enabled = False
    settings.save()
    with pytest.raises(NotConfigured, match="no sign-up source id"):
        subscribe(ada, client=client)
    with pytest.raises(NotConfigured, match="switched off"):
        subscriptions.client_from_settings(automatic=True)
    subscriptions.client_from_settings().session.close()  # a person's click still may
    assert configured.sandbox.requests_log == []


def test_attentive_errors_are_recorded_in_its_words(configured, client, ada):
    body = '{"error":{"id":7,"message":"Invalid signUpSourceId"}}'
    configured.sandbox.inject_fault(SUBSCRIPTIONS_PATH, status=400, body=body, after=1)  # the GET passes
    with pytest.raises(AttentiveRequestError):
        subscribe(ada, client=client)
    recorded = states("member-000051")
    for channel in (TEXT, EMAIL):
        failed = recorded[(channel, "")]
        assert (failed.status, failed.last_action) == (Status.FAILED, "subscribe")
        assert "Invalid signUpSourceId" in failed.note and failed.response["message"] == "Invalid signUpSourceId"
    # The next answer that names the types replaces the error row.
    subscribe(ada, client=client)
    assert set(states("member-000051")) == {(TEXT, "MARKETING"), (EMAIL, "MARKETING")}


def _in_threads(work, count: int) -> None:
    errors = []

    def run(index):
        try:
            work(index)
        except Exception as exc:  # noqa: BLE001 — reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors


def test_a_double_click_subscribes_once_and_the_second_sees_the_first(configured, ada):
    """Two subscribes of one person at once (a double click, or a click while her job runs):
    without a per-person lock both would see "not subscribed" (a slow Attentive widens the
    window) and both send, and Attentive would text her twice."""
    configured.sandbox.latency_ms = 150
    start = threading.Barrier(2)
    results = {}

    def click(index):
        client = subscriptions.client_from_settings()
        start.wait()
        results[index] = subscribe(ada, client=client, channels=[TEXT])

    _in_threads(click, 2)

    assert posts(configured, SUBSCRIPTIONS_PATH) == 1
    notes = sorted(result.note for outcome in results.values() for result in outcome)
    assert notes == ["", ALREADY_SUBSCRIBED]


def test_the_shared_limiter_keeps_bursts_under_attentives_10_and_5_per_second(configured):
    """Three workers at once, each with its own connection and client: the sandbox, which
    answers 429 past 10 subscribes or 5 unsubscribes in any second, refuses none."""
    people = [Contact(f"member-{n}", phone=f"+1415555{n:04d}", email=f"m{n}@example.com") for n in range(12)]

    def subscribe_four(index):
        client = subscriptions.client_from_settings()
        for person in people[index * 4 : index * 4 + 4]:
            subscribe(person, client=client)

    def unsubscribe_three(index):
        client = subscriptions.client_from_settings()
        for person in people[index * 3 : index * 3 + 3]:
            unsubscribe(person, client=client, channels=[TEXT, EMAIL])

    _in_threads(subscribe_four, 3)
    _in_threads(unsubscribe_three, 3)
    assert posts(configured, SUBSCRIPTIONS_PATH) == 12
    assert posts(configured, UNSUBSCRIBE_PATH) == 9
    assert configured.sandbox.rate_limited() == {}
    assert SubscriptionState.objects.filter(status=Status.UNSUBSCRIBED).count() == 18

    # The same burst without the limiter is refused: the sandbox does count.
    raw = AttentiveClient(api_key="sandbox", base_url=configured.base_url)
    for person in people[:9]:
        try:
            raw.unsubscribe(user={"phone": person.phone})
        except Exception:  # noqa: BLE001 — the 429s are what is counted
            pass
    assert configured.sandbox.rate_limited().get(f"POST {UNSUBSCRIBE_PATH}", 0) > 0


def test_jobs_take_plain_values_and_run_one_at_a_time(configured, ada):
    grace = Contact("member-2", email="grace@example.com")
    assert subscriptions.queue("subscribe", [ada, grace]) == 2
    jobs = ProcrastinateJob.objects.filter(task_name="attentive_sync.subscribe_contact")
    assert {job.lock for job in jobs} == {subscriptions.JOB_LOCK}
    assert jobs.get(args__client_user_id="member-000051").args == {
        "client_user_id": "member-000051", "phone": "+14155550134", "email": "ada@example.com",
        "channels": [TEXT, EMAIL], "automatic": False,
    }
    run_worker_until_idle()
    assert {(s.channel, s.attentive_status) for s in subscriptions.states_of("member-2")} == {(EMAIL, "NEWLY_CREATED")}

    subscriptions.queue("unsubscribe", [ada], channels=[EMAIL])
    run_worker_until_idle()
    assert states("member-000051")[(EMAIL, "MARKETING")].status == Status.UNSUBSCRIBED
    assert states("member-000051")[(TEXT, "MARKETING")].status == Status.SUBSCRIBED


def test_one_automatic_subscribe_per_person_waits_at_a_time(configured, ada):
    assert subscriptions.queue("subscribe", [ada], automatic=True) == 1
    assert subscriptions.queue("subscribe", [ada], automatic=True) == 0
    assert ProcrastinateJob.objects.filter(task_name="attentive_sync.subscribe_contact").count() == 1
