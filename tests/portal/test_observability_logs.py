"""Structured logs: every line a JSON object (time, level, logger, message), the request id on
every line logged while serving a request (echoed in X-Request-ID), and the job's ids on every
line logged while a real worker runs a job. Read from the portal's own console handler, as
configured by the settings (LOG_FORMAT=json, the default with DEBUG off)."""

from __future__ import annotations

import io
import json
import logging
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from django.db import transaction
from django.test import Client
from procrastinate.contrib.django.models import ProcrastinateJob

from attentive_sync.delivery import forward
from attentive_sync.events import CustomEvent, EventUser
from attentive_sync.models import AttentiveSettings, Delivery
from attentive_sync.sandbox import AttentiveSandbox, serve_in_thread
from portal.logs import MASK, JsonLines
from sparkfly_sync import events
from sparkfly_sync.models import Redemption
from sparkfly_sync.tasks import queue_record
from tests.conftest import run_worker_until_idle

API_KEY = "sk_test_LOGS_KEY_1234"
SECRET = "s3cr3t-" + "x" * 30


@pytest.fixture
def attentive_sandbox():
    server = serve_in_thread(AttentiveSandbox(api_key=API_KEY))
    yield server
    server.shutdown()


@pytest.fixture
def log_lines():
    """The lines the portal's console handler writes, parsed (each must be one JSON object)."""
    [handler] = [h for h in logging.getLogger().handlers if isinstance(h.formatter, JsonLines)]
    buffer = io.StringIO()
    previous = handler.setStream(buffer)
    yield lambda: [json.loads(line) for line in buffer.getvalue().splitlines()]
    handler.setStream(previous)


def test_a_line_is_one_json_object_with_time_level_logger_message_and_no_secret(log_lines):
    logging.getLogger("portal.test").warning(
        "called /hooks/sparkfly/channels/abc/%s/conversions", SECRET, extra={"url": f"/hooks/sparkfly/channels/abc/{SECRET}/conversions"}
    )
    [line] = log_lines()
    assert list(line)[:4] == ["time", "level", "logger", "message"]
    assert datetime.fromisoformat(line["time"]).utcoffset() == timedelta(0)
    assert (line["level"], line["logger"]) == ("WARNING", "portal.test")
    assert line["message"] == f"called /hooks/sparkfly/channels/abc/{MASK}/conversions"
    assert line["url"] == f"/hooks/sparkfly/channels/abc/{MASK}/conversions"


@pytest.mark.django_db
def test_a_request_logs_with_the_load_balancers_request_id_and_echoes_it(log_lines):
    url = f"/hooks/sparkfly/channels/{uuid.uuid4()}/{SECRET}/conversions?credential_id=1"
    response = Client().get(url, HTTP_X_REQUEST_ID="lb-7f3a:1")

    assert response.status_code == 404 and response["X-Request-ID"] == "lb-7f3a:1"
    lines = log_lines()
    assert lines, "django.request logs a 4xx answer"
    assert all(line["request_id"] == "lb-7f3a:1" for line in lines)
    assert SECRET not in json.dumps(lines)


@pytest.mark.django_db
@pytest.mark.parametrize("given", [None, "", "has spaces", "x" * 129, "<script>"])
def test_a_missing_or_insane_request_id_is_replaced_by_a_new_one(log_lines, given):
    headers = {} if given is None else {"HTTP_X_REQUEST_ID": given}
    first = Client().get("/no-such-page/", **headers)
    second = Client().get("/no-such-page/", **headers)

    assert first.status_code == 404
    assert len(first["X-Request-ID"]) == 32 and first["X-Request-ID"] != second["X-Request-ID"]
    assert [line["request_id"] for line in log_lines()] == [first["X-Request-ID"], second["X-Request-ID"]]


@pytest.mark.django_db(transaction=True)
def test_a_workers_lines_carry_the_job_and_delivery_ids(log_lines, attentive_sandbox):
    sandbox = attentive_sandbox
    settings = AttentiveSettings.load()
    settings.api_key, settings.api_url, settings.enabled = API_KEY, sandbox.base_url, True
    settings.save()
    sandbox.sandbox.inject_fault("/v1/events/custom", status=400, body='{"error":{"id":7,"message":"bad phone"}}')
    delivery = forward(CustomEvent(
        type="sparkfly.member.offer_state_redeemed", user=EventUser(client_user_id="u-1", phone="+13115552368"),
        occurred_at=datetime.now(timezone.utc), external_event_id="evt-logs-1", properties={"a": "b"},
    )).delivery
    job = ProcrastinateJob.objects.get(task_name="attentive_sync.deliver_event")

    run_worker_until_idle(queues=["deliveries"])

    assert Delivery.objects.get(pk=delivery.pk).status == "dead"
    [line] = [line for line in log_lines() if "bad phone" in line["message"]]
    assert line["level"] == "WARNING"
    assert (line["job_id"], line["task"], line["delivery_id"]) == (job.id, "attentive_sync.deliver_event", delivery.pk)


@pytest.mark.django_db(transaction=True)
def test_a_workers_lines_carry_the_redemption_id_its_task_was_called_with(log_lines):
    redeemed_at = datetime.now(timezone.utc)
    with transaction.atomic():
        redemption = Redemption.objects.create(
            dedup_key=events.redemption_event_id(credential_id=424242, offer_id=1, redeemed_at=redeemed_at),
            credential_id=424242, offer_id=1, redeemed_at=redeemed_at, received_at=redeemed_at,
        )
        queue_record(redemption)
    job = ProcrastinateJob.objects.get(task_name="sparkfly_sync.forward_redemption")

    run_worker_until_idle(queues=["inbound"])

    mine = [line for line in log_lines() if line.get("redemption_id") == redemption.pk]
    assert mine, "forwarding a redemption the mirror and Sparkfly cannot resolve logs why"
    assert all(line["job_id"] == job.id and line["task"] == "sparkfly_sync.forward_redemption" for line in mine)
