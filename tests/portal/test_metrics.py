"""/metrics: Prometheus' text format (parsed with prometheus_client's own parser), numbers equal
to what the database holds, served to loopback and to the bearer of METRICS_TOKEN only, and,
like /healthz, exempt from the https redirect and from login."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from django.db import transaction
from django.test import Client
from procrastinate.contrib.django.models import ProcrastinateJob
from prometheus_client.parser import text_string_to_metric_families

from attentive_sync.models import Delivery
from portal.callback_counts import callback_counts_refresh
from portal.rollups import rollups_refresh
from sparkfly_sync.models import ConversionEndpoint, InboundRequest, SyncRun
from sparkfly_sync.tasks import queue_mirror_sync

pytestmark = pytest.mark.django_db(transaction=True)

def now() -> datetime:
    return datetime.now(timezone.utc)


def scrape(client: Client | None = None, **headers) -> dict[tuple[str, tuple], float]:
    response = (client or Client()).get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def a_delivery(n: int, status: str, *, delay: timedelta | None = None, created_ago=timedelta(0)) -> Delivery:
    occurred = now() - timedelta(hours=1)
    delivery = Delivery.objects.create(
        external_event_id=f"evt-{n}", event_type="sparkfly.member.offer_state_redeemed", payload={}, status=status,
        occurred_at=occurred, delivered_at=occurred + delay if delay is not None else None,
    )
    Delivery.objects.filter(pk=delivery.pk).update(created_at=now() - created_ago)
    return delivery


def callbacks(client: Client, endpoint: ConversionEndpoint, *, credential_id: str = "501") -> None:
    """Five requests: accepted, duplicate, and three rejected (unknown endpoint, wrong secret, invalid)."""
    good = f"/hooks/sparkfly/channels/{endpoint.uuid}/{endpoint.secret}/conversions"
    query = {"credential_id": credential_id, "offer_id": "7", "redeemed_at": "2026-01-02T03:04:05Z", "status": "redeemed"}
    assert client.get(good, query).status_code == 202
    assert client.get(good, query).status_code == 200  # the same redemption again: a duplicate
    assert client.get(f"/hooks/sparkfly/channels/{uuid.uuid4()}/x/conversions", query).status_code == 404
    assert client.get(f"/hooks/sparkfly/channels/{endpoint.uuid}/wrong/conversions", query).status_code in (401, 404)
    assert client.get(good, {"credential_id": "nope"}).status_code == 400


def test_the_numbers_equal_the_database():
    client = Client()
    callbacks(client, ConversionEndpoint.objects.create(channel_id=11))
    a_delivery(1, "delivered", delay=timedelta(milliseconds=100))
    a_delivery(2, "delivered", delay=timedelta(seconds=3))
    a_delivery(3, "delivered", delay=timedelta(seconds=100))
    a_delivery(4, "dead")
    a_delivery(5, "pending", created_ago=timedelta(minutes=7))
    a_delivery(6, "failed", created_ago=timedelta(minutes=3))
    rollups_refresh(everything=True)
    callback_counts_refresh()
    with transaction.atomic():
        queue_mirror_sync(["offers"])
    SyncRun.objects.create(resource="offers", status="succeeded", finished_at=now() - timedelta(minutes=30))
    SyncRun.objects.create(resource="members", status="failed", finished_at=now())

    metrics = scrape(client)

    for outcome in ("accepted", "duplicate", "rejected"):
        expected = InboundRequest.objects.filter(outcome=outcome).count()
        assert expected and metrics[("portal_callbacks_total", (("outcome", outcome),))] == expected
    rejected = {labels: value for (name, labels), value in metrics.items() if name == "portal_callbacks_rejected_total"}
    assert sum(rejected.values()) == InboundRequest.objects.filter(outcome="rejected").count()
    assert any(dict(labels)["reason"] == "invalid" and dict(labels)["status_code"] == "400" for labels in rejected)
    assert any(dict(labels)["reason"] == "unknown_endpoint" for labels in rejected)

    for status in ("delivered", "dead", "pending", "failed"):
        assert metrics[("portal_deliveries", (("status", status),))] == Delivery.objects.filter(status=status).count()
    delay = "portal_forwarding_delay_seconds_bucket"
    assert metrics[(delay, (("le", "0.25"),))] == 1
    assert metrics[(delay, (("le", "5.0"),))] == 2
    assert metrics[(delay, (("le", "120.0"),))] == 3
    assert metrics[(delay, (("le", "+Inf"),))] == metrics[("portal_forwarding_delay_seconds_count", ())] == 3
    assert metrics[("portal_forwarding_delay_seconds_sum", ())] == pytest.approx(103.1, rel=0.1)

    assert metrics[("portal_deliveries_waiting", (("status", "pending"),))] == 1
    assert metrics[("portal_deliveries_waiting", (("status", "failed"),))] == 1
    assert metrics[("portal_oldest_waiting_delivery_age_seconds", ())] == pytest.approx(7 * 60, abs=60)

    todo = ProcrastinateJob.objects.filter(status="todo", queue_name="sync").count()
    assert todo and metrics[("portal_jobs", (("queue", "sync"), ("status", "todo")))] == todo
    assert metrics[("portal_oldest_due_job_age_seconds", (("queue", "sync"),))] >= 0
    assert metrics[("portal_sync_age_seconds", (("resource", "offers"),))] == pytest.approx(30 * 60, abs=60)
    assert ("portal_sync_age_seconds", (("resource", "members"),)) not in metrics  # never succeeded
    assert metrics[("portal_sync_last_run_failed", (("resource", "members"),))] == 1
    assert metrics[("portal_sync_last_run_failed", (("resource", "offers"),))] == 0
    assert metrics[("portal_workers_alive", ())] == 0
    assert {labels for (name, labels) in metrics if name == "portal_alert_firing"} == {
        (("rule", rule),) for rule in ("failing", "dead_letters", "backlog")
    }


def test_callback_counters_never_go_down_when_old_requests_are_pruned():
    client = Client()
    endpoint = ConversionEndpoint.objects.create(channel_id=11)
    callbacks(client, endpoint, credential_id="501")
    InboundRequest.objects.update(received_at=now() - timedelta(days=40))
    callback_counts_refresh()
    InboundRequest.objects.all().delete()  # the nightly retention

    callbacks(client, endpoint, credential_id="502")
    callback_counts_refresh()

    metrics = scrape(client)
    assert sum(v for (name, _), v in metrics.items() if name == "portal_callbacks_total") == 10
    assert sum(v for (name, _), v in metrics.items() if name == "portal_callbacks_rejected_total") == 6


def test_only_loopback_or_the_bearer_of_the_token_may_read_them(settings):
    settings.METRICS_TOKEN = "metrics-token-123"
    remote = {"REMOTE_ADDR": "203.0.113.9"}
    assert Client().get("/metrics", **remote).status_code == 403
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer wrong", **remote).status_code == 403
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer metrics-token-123", **remote).status_code == 200
    # Relayed by a proxy on this machine: loopback, but not a loopback caller.
    assert Client().get("/metrics", HTTP_X_FORWARDED_FOR="203.0.113.9").status_code == 403
    assert Client().get("/metrics", REMOTE_ADDR="::1").status_code == 200
    settings.METRICS_TOKEN = ""
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer ", **remote).status_code == 403


def test_metrics_and_healthz_skip_the_https_redirect_and_the_login(settings):
    settings.SECURE_SSL_REDIRECT = True
    assert Client().get("/metrics").status_code == 200
    assert Client().get("/healthz").status_code == 200
    assert Client().get("/deliveries/").status_code == 301  # an ordinary page is redirected
