"""A redemption end to end, over real HTTP: the Sparkfly sandbox redeems a credential, its
conversion callback reaches the portal (a live server), a real procrastinate worker enriches
and forwards it, and the Attentive sandbox receives the seed-shaped event — once."""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import pytest
import requests
from django.urls import reverse

from attentive_sync.events import rfc3339
from attentive_sync.models import AttentiveSettings, Delivery
from sparkfly_sync import events
from sparkfly_sync.client import CHANNEL_PATH, CREDENTIAL_REDEEM_PATH, CREDENTIALS_PATH, client_from_settings
from sparkfly_sync.models import ConversionEndpoint, Credential, InboundRequest, Member, Offer, Redemption
from sparkfly_sync.serializers import ConversionSerializer
from sparkfly_sync.sync import sync_all
from tests.conftest import run_worker_until_idle

pytestmark = pytest.mark.django_db(transaction=True)


class Flow:
    """The pieces of one end-to-end run, wired as a deployment wires them."""

    def __init__(self, *, sparkfly, attentive, live_server, settings) -> None:
        settings.SPARKFLY_API_URL = sparkfly.base_url
        settings.SPARKFLY_IDENTITY = settings.SPARKFLY_KEY = "sandbox"
        settings.PORTAL_PUBLIC_URL = live_server.url
        self.sparkfly, self.attentive = sparkfly, attentive
        self.client = client_from_settings()
        attentive_settings = AttentiveSettings.load()
        attentive_settings.api_url = attentive.base_url
        attentive_settings.api_key = "sandbox"
        attentive_settings.enabled = True
        attentive_settings.save()

    def running_offer(self) -> dict:
        for item in self.client.get("/v1.0/offers", per_page=100)["offers"]:
            offer = self.client.get(f"/v1.0/offers/{item['offer']['id']}")["offer"]
            expires_at = datetime.fromisoformat(offer["expires_at"])
            if offer["status"] == "approved" and offer.get("channels") and expires_at > datetime.now(expires_at.tzinfo):
                return offer
        raise AssertionError("the sandbox has no running offer")

    def listen_on(self, channel_id: int) -> ConversionEndpoint:
        endpoint = ConversionEndpoint.objects.create(channel_id=channel_id)
        path = reverse("sparkfly-conversion-callback", kwargs={"endpoint_uuid": str(endpoint.uuid), "secret": endpoint.secret})
        template = self.portal_url(path) + "?" + "&".join(f"{name}=%{{{name}}}" for name in ConversionSerializer.NAMED)
        self.client.request("PUT", CHANNEL_PATH.format(channel_id=channel_id), json_body={"channel": {"conversion_callback_url": template}})
        return endpoint

    def portal_url(self, path: str) -> str:
        from django.conf import settings

        return settings.PORTAL_PUBLIC_URL + path

    def issue(self, offer: dict, member_id: int) -> dict:
        channel_id = offer["channels"][0]["channel"]["id"]
        body = {"credential": {"member_id": member_id, "channel_id": channel_id, "offer_id": offer["id"]}}
        return self.client.request("POST", CREDENTIALS_PATH, json_body=body, idempotent=False)["credential"]

    def redeem(self, credential: dict) -> dict:
        return self.client.request("PUT", CREDENTIAL_REDEEM_PATH.format(credential_id=credential["id"]))["credential"]

    def received_events(self) -> list[dict]:
        return [entry["body"] for entry in self.attentive.sandbox.received()["events"]]


@pytest.fixture
def flow(sparkfly_sandbox_factory, attentive_sandbox, live_server, settings):
    def start(**sandbox_options) -> Flow:
        return Flow(
            sparkfly=sparkfly_sandbox_factory(**sandbox_options), attentive=attentive_sandbox,
            live_server=live_server, settings=settings,
        )

    return start


@pytest.mark.parametrize(
    ("method", "body"), [("GET", "none"), ("POST", "none"), ("POST", "form"), ("POST", "json")]
)
def test_a_redemption_reaches_attentive_once_in_the_seed_000_shape(flow, method, body):
    run = flow(callback_method=method, callback_body=body)
    sync_all(client=run.client)  # the mirror knows the credential's member, offer and campaign
    offer = run.running_offer()
    channel = offer["channels"][0]["channel"]
    run.listen_on(channel["id"])
    member = Member.objects.filter(phone__gt="").first()
    credential = run.issue(offer, member.sparkfly_id)
    redeemed = run.redeem(credential)

    [callback] = run.sparkfly.sandbox.callbacks
    assert (callback["method"], callback["status"]) == (method, 202)
    run_worker_until_idle()

    redemption = Redemption.objects.get()
    assert redemption.state == "forwarded", redemption.failure
    [event] = run.received_events()
    code = run.client.get(f"/v1.0/credentials/{credential['id']}")["credential"]["identifier"]
    assert event == {
        "type": events.OFFER_STATE_REDEEMED,
        "properties": {
            "credential_identifier": code,
            "offer_state_id": None,
            "store_number": "",
            "campaign": {
                "xid": channel["xid"],
                "name": offer["name"],
                "external_id": "",
                "id": offer["id"],
                "distribution_channel_id": channel["id"],
            },
        },
        "occurredAt": rfc3339(datetime.fromisoformat(redeemed["redeemed_at"])),
        "user": event["user"],
        "externalEventId": str(redemption.dedup_key),
    }
    assert event["user"]["phone"] == member.phone
    assert event["user"]["externalIdentifiers"]["clientUserId"] == member.identifier
    assert Delivery.objects.get().external_event_id == str(redemption.dedup_key)


def test_duplicates_sequential_and_ten_concurrent_forward_once(flow):
    run = flow()
    sync_all(client=run.client)
    offer = run.running_offer()
    run.listen_on(offer["channels"][0]["channel"]["id"])
    credential = run.issue(offer, Member.objects.first().sparkfly_id)
    run.redeem(credential)
    [callback] = run.sparkfly.sandbox.callbacks
    assert callback["status"] == 202

    again = requests.post(callback["url"], timeout=10)
    answers: list[int] = []

    def deliver_copy() -> None:
        answers.append(requests.post(callback["url"], timeout=10).status_code)

    copies = [threading.Thread(target=deliver_copy) for _ in range(10)]
    for thread in copies:
        thread.start()
    for thread in copies:
        thread.join()
    run_worker_until_idle()

    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert answers == [200] * 10
    assert Redemption.objects.count() == 1
    assert InboundRequest.objects.filter(outcome="duplicate").count() == 11
    assert len(run.received_events()) == 1


def test_a_credential_the_mirror_lacks_is_fetched_from_sparkfly_and_mirrored(flow):
    run = flow()
    sync_all(client=run.client, resources=["merchants", "stores", "channels", "offers", "members"])
    offer = run.running_offer()
    run.listen_on(offer["channels"][0]["channel"]["id"])
    credential = run.issue(offer, Member.objects.first().sparkfly_id)
    Member.objects.filter(sparkfly_id=credential["member_id"]).delete()  # nor its member
    Offer.objects.filter(sparkfly_id=offer["id"]).delete()  # nor the offer
    run.redeem(credential)

    run_worker_until_idle()

    assert Redemption.objects.get().state == "forwarded", Redemption.objects.get().failure
    assert Credential.objects.filter(sparkfly_id=credential["id"]).exists()
    assert Member.objects.filter(sparkfly_id=credential["member_id"]).exists()
    assert Offer.objects.filter(sparkfly_id=offer["id"]).exists()
    assert len(run.received_events()) == 1


def test_while_sparkfly_is_down_the_redemption_waits_for_a_later_try(flow):
    from procrastinate.contrib.django.models import ProcrastinateJob

    from sparkfly_sync import forwarding
    from sparkfly_sync.client import RetryPolicy, SparkflyClient

    run = flow()
    sync_all(client=run.client, resources=["merchants", "stores", "channels", "offers", "members"])
    offer = run.running_offer()
    run.listen_on(offer["channels"][0]["channel"]["id"])
    credential = run.issue(offer, Member.objects.first().sparkfly_id)
    run.redeem(credential)
    redemption = Redemption.objects.get()
    run.sparkfly.sandbox.inject_fault(f"/v1.0/credentials/{credential['id']}", status=503, times=1000)

    outcome = forwarding.forward_redemption(
        redemption.pk,
        client_factory=lambda: SparkflyClient(
            base_url=run.sparkfly.base_url, identity="sandbox", key="sandbox", retry=RetryPolicy(attempts=1)
        ),
    )

    redemption.refresh_from_db()
    assert outcome.state == "queued" and outcome.retry_at is not None
    assert redemption.state == "queued" and "503" in redemption.failure and redemption.attempts == 1
    # The redemption's one job (queued by the callback) was moved to the retry time.
    [job] = ProcrastinateJob.objects.filter(task_name="sparkfly_sync.forward_redemption")
    assert job.args == {"redemption_id": redemption.pk} and job.scheduled_at == outcome.retry_at
    assert run.received_events() == []

    run.sparkfly.sandbox.clear_faults()
    run_worker_until_idle()
    assert Redemption.objects.get().state == "queued"  # its one job now waits for the retry time
    forwarding.requeue([redemption])  # the admin's "Retry forwarding": that job, now
    run_worker_until_idle()
    assert Redemption.objects.get().state == "forwarded"
    assert len(run.received_events()) == 1


def test_ten_first_copies_racing_each_other_record_one_redemption_and_forward_once(flow):
    run = flow()
    sync_all(client=run.client)
    offer = run.running_offer()
    endpoint = run.listen_on(offer["channels"][0]["channel"]["id"])
    credential = run.issue(offer, Member.objects.first().sparkfly_id)
    path = reverse("sparkfly-conversion-callback", kwargs={"endpoint_uuid": str(endpoint.uuid), "secret": endpoint.secret})
    redeemed_at = datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    url = run.portal_url(path) + f"?credential_id={credential['id']}&offer_id={offer['id']}&redeemed_at={redeemed_at}"
    start = threading.Barrier(10)
    answers: list[int] = []

    def first_copy() -> None:
        start.wait()  # all ten leave together: none is a known duplicate when it arrives
        answers.append(requests.get(url, timeout=10).status_code)

    copies = [threading.Thread(target=first_copy) for _ in range(10)]
    for thread in copies:
        thread.start()
    for thread in copies:
        thread.join()
    run_worker_until_idle()

    assert sorted(answers) == [200] * 9 + [202]
    assert Redemption.objects.count() == 1
    assert InboundRequest.objects.count() == 10
    redemption = Redemption.objects.get()
    assert redemption.state == "forwarded", redemption.failure
    assert [event["type"] for event in run.received_events()] == [events.OFFER_STATE_REDEEMED]
