"""The delivery alert: deliveries failing in a row, a dead letter (refused for good, or expired
with or without a try), a backlog. It logs one ERROR line per rule starting to fire, not one a
minute, shows a banner on portal and admin pages for both roles, and clears itself when
deliveries get through again. Failures come from the Attentive sandbox through a real worker."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import pytest
from django.db import connection, transaction
from django.test import Client

from attentive_sync.delivery import forward, replay, retry_now, sweep
from attentive_sync.events import CustomEvent, EventUser
from attentive_sync.models import AttentiveSettings, Delivery, DeliveryAttempt
from attentive_sync.sandbox import AttentiveSandbox, serve_in_thread
from portal.alerts import alerts_check
from portal.models import OperationalAlert
from sparkfly_sync.tasks import queue_mirror_sync
from tests.conftest import run_worker_until_idle

pytestmark = pytest.mark.django_db(transaction=True)

API_KEY = "sk_test_ALERTS_KEY_1234"
BANNER = 'id="operational-alert"'


@pytest.fixture
def sandbox(settings):
    settings.ATTENTIVE_RETRY_BASE_SECONDS = 600  # a failed try's retry is not due while the test runs
    server = serve_in_thread(AttentiveSandbox(api_key=API_KEY))
    settings = AttentiveSettings.load()
    settings.api_key, settings.api_url, settings.enabled = API_KEY, server.base_url, True
    settings.rate_limit_per_second = 1000
    settings.save()
    yield server.sandbox
    server.shutdown()


def forwarded(n: int, *, ago: timedelta = timedelta(0), first: int = 0) -> list[Delivery]:
    return [
        forward(CustomEvent(
            type="sparkfly.member.offer_state_redeemed", user=EventUser(client_user_id=f"u-{i}", phone="+13115552368"),
            occurred_at=datetime.now(timezone.utc) - ago, external_event_id=f"evt-alert-{i}", properties={"n": str(i)},
        )).delivery
        for i in range(first, first + n)
    ]


def alert_errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "portal.alerts" and r.levelno == logging.ERROR]


def rules() -> set[str]:
    return {problem["rule"] for problem in OperationalAlert.objects.get().problems}


def test_five_failed_tries_in_a_row_alert_once_and_clear_when_one_gets_through(sandbox, caplog):
    sandbox.inject_fault("/v1/events/custom", status=503, times=5)
    deliveries = forwarded(5)
    run_worker_until_idle(queues=["deliveries"])
    assert all(d.status == "failed" for d in Delivery.objects.all())

    alerts_check()
    alerts_check()  # the next minute: still firing, not logged again

    assert rules() == {"failing"}
    [error] = alert_errors(caplog)
    assert "The last 5 tries to deliver events to Attentive all failed" in error

    retry_now(Delivery.objects.filter(pk=deliveries[0].pk))
    run_worker_until_idle(queues=["deliveries"])
    state = alerts_check()

    assert state.problems == [] and state.firing_since is None and state.cleared_at is not None
    assert len(alert_errors(caplog)) == 1
    assert any("alert cleared" in r.getMessage() for r in caplog.records if r.name == "portal.alerts")


def test_four_failures_do_not_alert(sandbox, caplog):
    sandbox.inject_fault("/v1/events/custom", status=503, times=4)
    forwarded(5)
    run_worker_until_idle(queues=["deliveries"])
    assert alerts_check().problems == [] and alert_errors(caplog) == []


def test_tries_whose_answer_is_unknown_after_a_killed_worker_are_not_failures(sandbox, caplog):
    """A killed worker's lapsed batch is noted at the next claim as tries with an unknown answer
    (up to 50 at once, the newest attempts until the batch's answers are written): Attentive did
    not fail them, so they must not fire "failing"."""
    deliveries = forwarded(6)
    run_worker_until_idle(queues=["deliveries"])  # delivered: the older attempts
    now = datetime.now(timezone.utc)
    DeliveryAttempt.objects.bulk_create(
        DeliveryAttempt(delivery=d, started_at=now, duration_ms=0, error="the worker stopped", outcome="unknown")
        for d in deliveries
    )

    assert alerts_check().problems == [] and alert_errors(caplog) == []


def test_the_first_dead_letter_after_an_all_clear_is_a_new_incident(sandbox, caplog):
    sandbox.inject_fault("/v1/events/custom", status=400, body='{"error":{"id":7,"message":"bad phone"}}', times=2)
    forwarded(1)
    run_worker_until_idle(queues=["deliveries"])
    now = datetime.now(timezone.utc)

    alerts_check(now=now)
    assert rules() == {"dead_letters"} and len(alert_errors(caplog)) == 1
    assert "1 delivery was given up" in alert_errors(caplog)[0]
    alerts_check(now=now + timedelta(minutes=59))
    assert len(alert_errors(caplog)) == 1
    assert alerts_check(now=now + timedelta(minutes=61)).problems == []  # an hour with none: all clear

    Delivery.objects.all().delete()
    forwarded(1)
    run_worker_until_idle(queues=["deliveries"])
    alerts_check()
    assert rules() == {"dead_letters"} and len(alert_errors(caplog)) == 2


def test_a_delivery_expired_by_its_worker_without_a_try_is_a_dead_letter(sandbox, caplog):
    """Older than the maximum event age (8 h) when its worker took it: never sent, lost all the same."""
    [delivery] = forwarded(1, ago=timedelta(hours=9))
    run_worker_until_idle(queues=["deliveries"])
    delivery.refresh_from_db()
    assert delivery.status == "expired" and not DeliveryAttempt.objects.exists()

    alerts_check()

    assert rules() == {"dead_letters"}
    [error] = alert_errors(caplog)
    assert "1 delivery was given up" in error


def test_deliveries_expired_by_the_sweep_while_sending_was_off_are_dead_letters(sandbox, caplog):
    settings = AttentiveSettings.load()
    settings.enabled = False  # held: no job, no try
    settings.save()
    forwarded(2)
    Delivery.objects.update(occurred_at=datetime.now(timezone.utc) - timedelta(hours=9))  # the hours pass

    assert sweep().expired == 2
    alerts_check()

    assert rules() == {"dead_letters"} and "2 deliveries were given up" in alert_errors(caplog)[0]


def test_a_first_dead_letter_joining_a_failing_streak_logs_an_error_and_a_replay_clears_it(sandbox, caplog):
    sandbox.inject_fault("/v1/events/custom", status=503, times=5)
    forwarded(5)
    run_worker_until_idle(queues=["deliveries"])
    alerts_check()
    assert rules() == {"failing"} and len(alert_errors(caplog)) == 1

    sandbox.inject_fault("/v1/events/custom", status=400, body='{"error":{"id":7,"message":"bad phone"}}', times=1)
    [dead] = forwarded(1, first=5)
    run_worker_until_idle(queues=["deliveries"])
    alerts_check()

    assert rules() == {"failing", "dead_letters"}
    first, joined = alert_errors(caplog)
    assert joined.startswith("ALERT, also: 1 delivery was given up")

    # The cause fixed, an administrator replays it: delivered, it is no dead letter any more.
    assert replay(Delivery.objects.filter(pk=dead.pk)) == 1
    run_worker_until_idle(queues=["deliveries"])
    dead.refresh_from_db()
    assert dead.status == "delivered" and dead.dead_letter_at is None
    alerts_check()
    assert rules() == set()


def test_a_job_waiting_past_the_threshold_is_a_backlog(settings, caplog):
    settings.ALERT_BACKLOG_MINUTES = 15
    with transaction.atomic():
        queue_mirror_sync(["offers"])
    assert alerts_check().problems == []
    with connection.cursor() as cursor:  # procrastinate's Django models are read-only
        cursor.execute("UPDATE procrastinate_jobs SET scheduled_at = now() - interval '20 minutes'")

    alerts_check()

    assert rules() == {"backlog"}
    assert "the oldest job due has waited 20 minutes" in alert_errors(caplog)[0]


def test_the_banner_shows_for_both_roles_on_portal_and_admin_pages_and_goes_away(
    sandbox, program_manager_client, administrator_client
):
    sandbox.inject_fault("/v1/events/custom", status=400, body='{"error":{"id":7,"message":"bad phone"}}')
    forwarded(1)
    run_worker_until_idle(queues=["deliveries"])
    now = datetime.now(timezone.utc)
    alerts_check(now=now)

    for client in (program_manager_client, administrator_client):
        page = client.get("/").content.decode()
        assert BANNER in page and "1 delivery was given up" in page and 'href="/deliveries/"' in page
    admin_page = administrator_client.get("/admin/").content.decode()
    assert BANNER in admin_page and "1 delivery was given up" in admin_page
    assert BANNER not in Client().get("/accounts/login/").content.decode()  # not for strangers

    alerts_check(now=now + timedelta(minutes=61))
    assert BANNER not in program_manager_client.get("/").content.decode()
    assert BANNER not in administrator_client.get("/admin/").content.decode()


def test_the_banner_says_when_the_checks_stopped_running(program_manager_client):
    OperationalAlert.objects.create(pk=1, checked_at=datetime.now(timezone.utc) - timedelta(minutes=12))
    page = program_manager_client.get("/").content.decode()
    assert BANNER in page and "The delivery checks last ran 12 minutes ago" in page
