"""Delivering to the Attentive sandbox over HTTP: success, retry, dead and expired paths."""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from django.db import connection
from procrastinate.contrib.django.models import ProcrastinateJob

from attentive_sync.client import AttentiveClient
from attentive_sync.delivery import RetryPolicy, deliver, forward, replay, retry_now, sweep
from attentive_sync.events import CustomEvent, EventUser
from attentive_sync.models import AttentiveSettings, Delivery, DeliveryAttempt
from tests.conftest import run_worker_until_idle

pytestmark = pytest.mark.django_db(transaction=True)

API_KEY = "sk_test_SANDBOX_KEY_1234"
NO_WAIT = RetryPolicy(base=timedelta(0), cap=timedelta(0))


@pytest.fixture
def sandbox(attentive_sandbox_factory):
    return attentive_sandbox_factory(api_key=API_KEY)


@pytest.fixture
def attentive(sandbox):
    settings = AttentiveSettings.load()
    settings.api_key, settings.api_url, settings.enabled = API_KEY, sandbox.base_url, True
    settings.rate_limit_per_second = 1000
    settings.save()
    return settings


def an_event(external_event_id="evt-1", *, occurred_at=None):
    return CustomEvent(
        type="sparkfly.member.offer_state_redeemed",
        user=EventUser(client_user_id="test-number-1", phone="+13115552368"),
        occurred_at=occurred_at or datetime.now(timezone.utc),
        external_event_id=external_event_id,
        properties={"credential_identifier": "abc123"},
    )


def recorded(external_event_id="evt-1", *, occurred_at=None) -> Delivery:
    return forward(an_event(external_event_id, occurred_at=occurred_at)).delivery


def jobs_waiting():
    return ProcrastinateJob.objects.filter(task_name="attentive_sync.deliver_event", status="todo")


def test_a_worker_delivers_a_forwarded_event_exactly_as_built(attentive, sandbox):
    delivery = recorded()
    run_worker_until_idle(queues=["deliveries"])
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("delivered", 1)
    [received] = sandbox.sandbox.events()
    assert received["body"] == delivery.payload
    attempt = delivery.attempt_log.get()
    assert (attempt.status_code, attempt.outcome) == (200, "delivered") and attempt.duration_ms > 0


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 500},
        {"status": 503, "body": "<html>maintenance</html>", "content_type": "text/html"},
        {"status": 429, "body": '{"error":{"id":1,"message":"Too many requests"}}'},
        {"status": 408},
        {"drop": True},
    ],
    ids=["500", "503-html", "429", "408", "dropped-connection"],
)
def test_transient_failures_are_retried_with_the_same_external_event_id(attentive, sandbox, fault):
    sandbox.sandbox.inject_fault("/v1/events/custom", times=2, **fault)
    delivery = recorded()
    for _ in range(3):
        deliver(delivery.pk, policy=NO_WAIT)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("delivered", 3)
    assert [a.outcome for a in delivery.attempt_log.order_by("started_at")] == ["retry", "retry", "delivered"]
    assert sandbox.sandbox.count_requests("/v1/events/custom") == 3
    assert [e["body"]["externalEventId"] for e in sandbox.sandbox.events()] == ["evt-1"]


def test_a_retry_is_scheduled_as_a_job_at_the_next_attempt_time(attentive, sandbox):
    sandbox.sandbox.inject_fault("/v1/events/custom", status=500)
    delivery = recorded()
    deliver(delivery.pk, policy=RetryPolicy(base=timedelta(seconds=60), cap=timedelta(seconds=60)))
    delivery.refresh_from_db()
    assert delivery.status == "failed" and "500" in delivery.last_error
    assert timedelta(0) <= delivery.next_attempt_at - datetime.now(timezone.utc) <= timedelta(seconds=60)
    [job] = jobs_waiting().filter(args={"delivery_id": delivery.pk}).exclude(scheduled_at=None)
    assert abs((job.scheduled_at - delivery.next_attempt_at).total_seconds()) < 0.01


def test_a_timeout_is_retried(attentive, sandbox):
    sandbox.sandbox.inject_fault("/v1/events/custom", status=200, body="{}", delay=1.0)
    delivery = recorded()
    deliver(
        delivery.pk,
        policy=NO_WAIT,
        client_factory=lambda s: AttentiveClient(api_key=s.key, base_url=s.api_url, total_timeout=0.3),
    )
    delivery.refresh_from_db()
    assert delivery.status == "failed" and "did not answer" in delivery.last_error


def test_a_refused_event_is_dead_at_once_with_attentives_message(attentive, sandbox):
    sandbox.sandbox.inject_fault(
        "/v1/events/custom", status=400, body='{"error":{"id":7,"message":"user.phone is not E.164"}}'
    )
    delivery = recorded()
    run_worker_until_idle(queues=["deliveries"])
    delivery.refresh_from_db()
    assert delivery.status == "dead" and "user.phone is not E.164" in delivery.last_error
    assert delivery.attempts == 1
    assert delivery.next_attempt_at is None
    assert not jobs_waiting().filter(args={"delivery_id": delivery.pk}).exists()


def test_a_wrong_key_is_retried_not_killed_and_says_to_check_the_key(attentive, sandbox):
    attentive.api_key = "sk_wrong_key_000"
    attentive.save()
    delivery = recorded()
    deliver(delivery.pk, policy=NO_WAIT)
    delivery.refresh_from_db()
    assert delivery.status == "failed"
    assert "401" in delivery.last_error and "check the API key" in delivery.last_error


def test_nothing_is_sent_once_the_event_is_older_than_the_maximum_age(attentive, sandbox):
    delivery = recorded(occurred_at=datetime.now(timezone.utc) - timedelta(hours=8, minutes=1))
    deliver(delivery.pk, policy=NO_WAIT)
    delivery.refresh_from_db()
    assert delivery.status == "expired" and "maximum event age" in delivery.last_error
    assert sandbox.sandbox.count_requests("/v1/events/custom") == 0


def test_a_retry_that_would_land_after_the_maximum_age_expires_the_delivery(attentive, sandbox):
    sandbox.sandbox.inject_fault("/v1/events/custom", status=500)
    delivery = recorded(occurred_at=datetime.now(timezone.utc) - timedelta(hours=7, minutes=59))
    deliver(delivery.pk, policy=RetryPolicy(base=timedelta(hours=1), cap=timedelta(hours=1), rng=FixedRandom(0.9)))
    delivery.refresh_from_db()
    assert delivery.status == "expired" and "no retry fits" in delivery.last_error


class FixedRandom:
    def __init__(self, share):
        self.share = share

    def uniform(self, low, high):
        return low + (high - low) * self.share


def test_two_workers_at_once_send_an_event_once(attentive, sandbox):
    sandbox.sandbox.inject_fault("/v1/events/custom", status=200, body="{}", delay=0.3)
    delivery = recorded()

    def work():
        try:
            deliver(delivery.pk, policy=NO_WAIT)
        finally:
            connection.close()

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("delivered", 1)
    assert sandbox.sandbox.count_requests("/v1/events/custom") == 1


def test_a_delivered_event_is_not_sent_again_by_a_stray_job(attentive, sandbox):
    delivery = recorded()
    deliver(delivery.pk, policy=NO_WAIT)
    deliver(delivery.pk, policy=NO_WAIT)
    assert sandbox.sandbox.count_requests("/v1/events/custom") == 1


def test_sending_switched_off_holds_deliveries_until_switched_on(attentive, sandbox):
    attentive.enabled = False
    attentive.save()
    delivery = recorded()
    deliver(delivery.pk, policy=NO_WAIT)
    delivery.refresh_from_db()
    assert delivery.status == "pending" and "switched off" in delivery.last_error
    assert sandbox.sandbox.count_requests("/v1/events/custom") == 0
    assert sweep(now=datetime.now(timezone.utc) + timedelta(minutes=5)).requeued == 0  # still off

    attentive.enabled = True
    attentive.save()
    jobs_waiting().delete()
    assert sweep(now=datetime.now(timezone.utc) + timedelta(minutes=5)).requeued == 1
    run_worker_until_idle(queues=["deliveries"])
    delivery.refresh_from_db()
    assert delivery.status == "delivered"


def test_the_sweeper_expires_what_is_too_old_and_requeues_what_lost_its_job(attentive, sandbox):
    old = recorded("evt-old", occurred_at=datetime.now(timezone.utc) - timedelta(hours=9))
    stranded = recorded("evt-stranded")
    jobs_waiting().delete()  # as if a worker died holding them
    result = sweep(now=datetime.now(timezone.utc) + timedelta(minutes=3))
    assert (result.expired, result.requeued) == (1, 1)
    old.refresh_from_db()
    assert old.status == "expired"
    assert jobs_waiting().filter(args={"delivery_id": stranded.pk}).exists()


def test_retry_now_and_replay_send_the_same_external_event_id(attentive, sandbox):
    sandbox.sandbox.inject_fault("/v1/events/custom", status=500)
    failed = recorded("evt-failed")
    deliver(failed.pk, policy=RetryPolicy(base=timedelta(hours=1), cap=timedelta(hours=1)))
    delivered = recorded("evt-delivered")
    deliver(delivered.pk, policy=NO_WAIT)

    assert retry_now(Delivery.objects.all()) == 1  # only the one still waiting
    assert replay(Delivery.objects.filter(pk=delivered.pk)) == 1
    run_worker_until_idle(queues=["deliveries"])

    assert set(Delivery.objects.values_list("status", flat=True)) == {"delivered"}
    ids = [e["body"]["externalEventId"] for e in sandbox.sandbox.events()]
    assert sorted(ids) == ["evt-delivered", "evt-delivered", "evt-failed"]


def test_replay_skips_events_past_the_maximum_age(attentive, sandbox):
    old = recorded(occurred_at=datetime.now(timezone.utc) - timedelta(hours=9))
    assert replay(Delivery.objects.filter(pk=old.pk)) == 0


def test_the_api_key_never_reaches_logs_errors_or_the_database_in_clear(attentive, sandbox, caplog):
    caplog.set_level(logging.DEBUG)
    sandbox.sandbox.inject_fault("/v1/events/custom", status=401, body='{"error":{"id":1,"message":"Unauthorized"}}')
    delivery = recorded()
    deliver(delivery.pk, policy=NO_WAIT)
    delivery.refresh_from_db()
    texts = [caplog.text, delivery.last_error, *delivery.attempt_log.values_list("error", "response_body")[0]]
    assert not any(API_KEY in text for text in texts)
    with connection.cursor() as cursor:
        cursor.execute("SELECT api_key FROM attentive_sync_attentivesettings")
        (stored,) = cursor.fetchone()
    assert API_KEY not in stored and AttentiveSettings.load().key == API_KEY
    assert API_KEY not in repr(AttentiveClient(api_key=API_KEY))


def test_a_batch_sends_other_due_deliveries_and_drops_their_waiting_jobs(attentive, sandbox):
    deliveries = [recorded(f"evt-{i}") for i in range(5)]
    assert jobs_waiting().count() == 5
    # One-delivery batches make the claim order visible at the sandbox (a batch sends at once).
    deliver(deliveries[2].pk, policy=NO_WAIT, batch_size=1)
    assert set(Delivery.objects.values_list("status", flat=True)) == {"delivered"}
    sent = [event["body"]["externalEventId"] for event in sandbox.sandbox.events()]
    assert sent == ["evt-2", "evt-0", "evt-1", "evt-3", "evt-4"]  # its own first, then the oldest
    assert sandbox.sandbox.duplicate_external_event_ids() == {}
    # The job running this batch is not "waiting"; the other four were, and are gone.
    assert jobs_waiting().exclude(args={"delivery_id": deliveries[2].pk}).count() == 0


def test_a_bug_in_one_send_costs_that_delivery_a_retry_not_the_batchs_results(attentive, sandbox):
    deliveries = [recorded(f"evt-{i}") for i in range(3)]

    def flaky_client(settings):
        client = AttentiveClient(api_key=settings.key, base_url=settings.api_url)
        post = client.post_custom_event

        def post_or_fail(payload):
            if payload["externalEventId"] == "evt-1":
                raise ValueError("a bug")
            return post(payload)

        client.post_custom_event = post_or_fail
        return client

    deliver(deliveries[0].pk, policy=RetryPolicy(base=timedelta(hours=1), cap=timedelta(hours=1)), client_factory=flaky_client)
    statuses = dict(Delivery.objects.values_list("external_event_id", "status"))
    assert statuses == {"evt-0": "delivered", "evt-1": "failed", "evt-2": "delivered"}
    assert "failed unexpectedly (ValueError)" in Delivery.objects.get(external_event_id="evt-1").last_error
    assert Delivery.objects.filter(leased_until__isnull=False).count() == 0


def test_an_answer_with_nul_characters_is_recorded_not_fatal(attentive, sandbox):
    sandbox.sandbox.inject_fault("/v1/events/custom", status=400, body='{"error":"bad\\u0000body"}')
    sandbox.sandbox.inject_fault("/v1/events/custom", status=400, body="bad\x00body")
    first, second = recorded("evt-a"), recorded("evt-b")
    deliver(first.pk, policy=NO_WAIT)
    assert set(Delivery.objects.values_list("status", flat=True)) == {"dead"}
    assert all("\x00" not in text for text in DeliveryAttempt.objects.values_list("response_body", flat=True))


def test_retry_now_and_replay_leave_a_delivery_being_sent_alone(attentive, sandbox):
    sandbox.sandbox.inject_fault("/v1/events/custom", status=200, body="{}", delay=0.5)
    delivery = recorded()
    sender = threading.Thread(target=lambda: (deliver(delivery.pk, policy=NO_WAIT), connection.close()))
    sender.start()
    deadline = time.monotonic() + 5
    while not Delivery.objects.filter(pk=delivery.pk, leased_until__isnull=False).exists():
        assert time.monotonic() < deadline, "the send never started"
        time.sleep(0.01)
    assert retry_now(Delivery.objects.all()) == 0
    assert replay(Delivery.objects.all()) == 0
    sender.join()
    run_worker_until_idle(queues=["deliveries"])
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("delivered", 1)
    assert sandbox.sandbox.count_requests("/v1/events/custom") == 1


def test_a_batch_that_outlived_its_lease_sends_nothing_more_and_hands_the_rest_back(attentive, sandbox, monkeypatch):
    from attentive_sync import delivery as delivery_module

    # A lease shorter than the margin: every send would leave too close to its end.
    monkeypatch.setattr(delivery_module, "SEND_LEASE", timedelta(seconds=10))
    delivery = recorded()
    deliver(delivery.pk, policy=NO_WAIT)
    delivery.refresh_from_db()
    assert sandbox.sandbox.count_requests("/v1/events/custom") == 0
    assert (delivery.status, delivery.attempts, delivery.leased_until) == ("pending", 0, None)
    assert jobs_waiting().filter(args={"delivery_id": delivery.pk}).exists()  # handed back


def test_a_key_an_http_header_cannot_carry_is_a_clear_error_without_the_key(attentive, sandbox):
    attentive.api_key = "sk_live_PASTED\u2026"
    attentive.save()
    delivery = recorded()
    deliver(delivery.pk, policy=NO_WAIT)
    delivery.refresh_from_db()
    assert delivery.status == "failed" and "characters an HTTP header cannot carry" in delivery.last_error
    assert "PASTED" not in delivery.last_error


def test_a_batch_sent_while_its_database_connection_died_is_recorded_once_it_is_back_not_sent_again(
    attentive_sandbox_factory,
):
    """The chaos run's duplicate: PostgreSQL restarted while a batch was at Attentive, so its
    results could not be written; the lease lapsed and the same events went out again."""
    import psycopg

    server = attentive_sandbox_factory(api_key=API_KEY, latency_ms=1000)
    settings = AttentiveSettings.load()
    settings.api_key, settings.api_url, settings.enabled = API_KEY, server.base_url, True
    settings.rate_limit_per_second = 1000
    settings.save()
    deliveries = [recorded(f"evt-{n}") for n in range(3)]
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    conninfo = {k: v for k, v in connection.get_connection_params().items() if k not in ("cursor_factory", "context")}

    def end_the_session_while_sending():
        deadline = time.monotonic() + 30
        while server.sandbox.count_requests("/v1/events/custom") < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        with psycopg.connect(**conninfo, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [backend])

    killer = threading.Thread(target=end_the_session_while_sending)
    killer.start()
    deliver(deliveries[0].pk, policy=NO_WAIT, sleep=lambda seconds: None)
    killer.join()

    for delivery in deliveries:
        delivery.refresh_from_db()
        assert (delivery.status, delivery.attempts, delivery.leased_until) == ("delivered", 1, None)
    assert sorted(e["body"]["externalEventId"] for e in server.sandbox.events()) == ["evt-0", "evt-1", "evt-2"]


def test_a_batchs_completed_sends_are_recorded_while_a_slow_one_is_still_out(attentive, sandbox):
    """So a worker killed mid-batch leaves only its last moments' sends to be sent again (the
    chaos run's SIGKILL sent a whole batch's events twice when tries were written at its end)."""
    from django.db import connections

    sandbox.sandbox.inject_fault("/v1/events/custom", status=200, body="{}", delay=3.0)  # the first send: slow
    deliveries = [recorded(f"evt-{n}") for n in range(3)]
    seen_while_sending: list[int] = []

    def look_while_the_slow_send_is_out():
        deadline = time.monotonic() + 20
        while len(sandbox.sandbox.events()) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)
        seen_while_sending.append(Delivery.objects.filter(status="delivered").count())
        connections.close_all()

    looker = threading.Thread(target=look_while_the_slow_send_is_out)
    looker.start()
    started = time.monotonic()
    deliver(deliveries[0].pk, policy=NO_WAIT)
    batch_seconds = time.monotonic() - started
    looker.join()

    assert batch_seconds >= 3.0  # the look happened while the batch still waited for its slow send
    assert seen_while_sending == [2]
    assert Delivery.objects.filter(status="delivered").count() == 3
    assert sorted(a.delivery.external_event_id for a in DeliveryAttempt.objects.select_related("delivery")) == [
        "evt-0", "evt-1", "evt-2"
    ]


def test_a_send_is_written_as_soon_as_its_answer_arrives_not_at_the_next_slot(attentive, sandbox):
    """At one send a second, the batch's second send waits a second for its slot: the first
    send's answer is written during that wait, so a SIGKILL then does not send it again."""
    from django.db import connections

    settings = AttentiveSettings.load()
    settings.rate_limit_per_second = 1
    settings.save()
    deliveries = [recorded(f"evt-{n}") for n in range(2)]
    requests_when_written: list[int] = []

    def look_while_the_second_send_waits():
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if Delivery.objects.filter(pk=deliveries[0].pk, status="delivered").exists():
                requests_when_written.append(sandbox.sandbox.count_requests("/v1/events/custom"))
                break
            time.sleep(0.005)
        connections.close_all()

    looker = threading.Thread(target=look_while_the_second_send_waits)
    looker.start()
    deliver(deliveries[0].pk, policy=NO_WAIT)
    looker.join()

    assert requests_when_written == [1]  # written before the second send left
    assert Delivery.objects.filter(status="delivered").count() == 2


def test_a_batch_that_outlived_its_lease_does_not_overwrite_the_worker_that_claimed_it_since(attentive, sandbox):
    """The lease ran out while the send was at Attentive and another worker claimed the row (its
    claim not yet committed when this batch came to write): the write must wait and see the new
    lease, not overwrite it (the other worker's result would be lost, its lease broken)."""
    import psycopg

    sandbox.sandbox.inject_fault("/v1/events/custom", status=200, body="{}", delay=1.5)
    delivery = recorded("evt-claimed-meanwhile")
    conninfo = {k: v for k, v in connection.get_connection_params().items() if k not in ("cursor_factory", "context")}
    sender = threading.Thread(target=lambda: (deliver(delivery.pk, policy=NO_WAIT), connection.close()))
    sender.start()
    deadline = time.monotonic() + 20
    while sandbox.sandbox.count_requests("/v1/events/custom") < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    with psycopg.connect(**conninfo) as other_worker:  # one transaction, committed on leaving
        other_worker.execute(
            "UPDATE attentive_sync_delivery SET leased_until = now() + interval '1 hour' WHERE id = %s", [delivery.pk]
        )
        time.sleep(2.5)  # the send is answered meanwhile and the batch comes to write
    sender.join()

    delivery.refresh_from_db()
    assert delivery.status == "pending" and delivery.attempts == 0
    assert delivery.leased_until is not None and delivery.leased_until > datetime.now(timezone.utc) + timedelta(minutes=50)
    assert not DeliveryAttempt.objects.filter(delivery=delivery).exists()


def test_a_delivery_whose_lease_lapsed_unwritten_is_sent_again_with_an_unknown_answer_on_record(attentive, sandbox):
    """Its worker was killed after claiming it (the lease set, no result written): the next
    claim records a try whose answer is unknown — Attentive may have it already — then sends."""
    delivery = recorded("evt-worker-killed")
    claimed_at = datetime.now(timezone.utc) - timedelta(minutes=5)
    Delivery.objects.filter(pk=delivery.pk).update(leased_until=claimed_at + timedelta(minutes=2))

    deliver(delivery.pk, policy=NO_WAIT)

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.leased_until) == ("delivered", 2, None)
    unknown, delivered = DeliveryAttempt.objects.filter(delivery=delivery).order_by("started_at")
    assert unknown.outcome == "unknown" and "may have received it" in unknown.error
    assert unknown.started_at == claimed_at and unknown.status_code is None
    assert delivered.outcome == "delivered"


def test_a_written_result_leaves_no_unknown_answer(attentive, sandbox):
    first, second = recorded("evt-a"), recorded("evt-b")
    deliver(first.pk, policy=NO_WAIT)
    Delivery.objects.filter(pk=first.pk).update(status="pending")  # sent again, as a replay would
    deliver(first.pk, policy=NO_WAIT)

    assert list(DeliveryAttempt.objects.filter(delivery=first).values_list("outcome", flat=True)) == ["delivered"] * 2
    assert not DeliveryAttempt.objects.filter(outcome="unknown").exists()
    assert Delivery.objects.get(pk=second.pk).status == "delivered"


def test_a_lapsed_lease_on_an_event_too_old_to_send_is_noted_once_and_cleared(attentive, sandbox):
    """Expired instead of sent again: the unknown try is on record, and the lease is cleared so a
    later replay or claim does not note it a second time."""
    old = datetime.now(timezone.utc) - timedelta(hours=9)
    delivery = recorded("evt-too-old-after-a-kill", occurred_at=old)
    Delivery.objects.filter(pk=delivery.pk).update(leased_until=datetime.now(timezone.utc) - timedelta(minutes=1))

    deliver(delivery.pk, policy=NO_WAIT)
    replay(Delivery.objects.filter(pk=delivery.pk))  # refused: too old; must not note it again either
    deliver(delivery.pk, policy=NO_WAIT)

    delivery.refresh_from_db()
    assert (delivery.status, delivery.leased_until, delivery.attempts) == ("expired", None, 1)
    assert list(DeliveryAttempt.objects.filter(delivery=delivery).values_list("outcome", flat=True)) == ["unknown"]
    assert sandbox.sandbox.count_requests("/v1/events/custom") == 0
