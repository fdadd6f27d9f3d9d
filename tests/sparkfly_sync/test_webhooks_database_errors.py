"""The webhooks when PostgreSQL refuses a write for a reason that is not the request's (issue 7,
item 5's review): the answer asks Sparkfly to send it again (503 + Retry-After), since Sparkfly
does not retry a 400 and the redemption would be lost. Only a value PostgreSQL cannot store
(a DataError) is the request's fault: 400.

Real PostgreSQL, in the test's transaction: made read-only (what a failover to a replica, or a
primary demoted by a managed service, looks like) or given the schema of another release (a
rolling deploy), both undone when the test's transaction rolls back."""

from __future__ import annotations

import json
import logging

import pytest
from django.db import connection, transaction
from procrastinate.contrib.django.models import ProcrastinateJob

from sparkfly_sync.models import ConversionEndpoint, InboundRequest, Notification, NotificationEndpoint, Redemption
from tests.lost_connection import connection_lost_on_insert, matching_inserts
from tests.sparkfly_sync.test_webhooks import POINTS_REDEEMED, REDEEMED_AT, SIGNING_KEY, conversion_url, notify

pytestmark = pytest.mark.django_db

# Values that must not reach the logs in clear (a payload's identifiers).
CREDENTIAL_ID = "918273645"
XID = "CAMPAIGN-XID-7f3a"


@pytest.fixture
def endpoint():
    return ConversionEndpoint.objects.create(channel_id=11)


@pytest.fixture
def notification_endpoint():
    return NotificationEndpoint.objects.create(external_id="portal", secret=SIGNING_KEY)


def read_only() -> None:
    """The rest of the test's transaction refuses writes, as a read-only server does
    (psycopg's ReadOnlySqlTransaction, Django's InternalError)."""
    with connection.cursor() as cursor:
        cursor.execute("SET TRANSACTION READ ONLY")


def redeem(client, endpoint, **values):
    return client.get(conversion_url(endpoint, credential_id=CREDENTIAL_ID, offer_id="7", xid=XID, redeemed_at=REDEEMED_AT, **values))


def nothing_recorded() -> bool:
    return not (
        Redemption.objects.exists() or Notification.objects.exists() or InboundRequest.objects.exists()
        or ProcrastinateJob.objects.exists()
    )


def webhook_errors(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "sparkfly_sync.webhooks" and r.levelno >= logging.ERROR]


def assert_asked_to_send_again(answer) -> None:
    assert answer.status_code == 503, answer.content
    assert answer.headers["Retry-After"] == "30"
    assert "Send it again" in answer.json()["detail"]


def test_a_conversion_callback_on_a_read_only_database_is_503_with_retry_after_and_logged_once(client, endpoint, caplog):
    read_only()
    with caplog.at_level(logging.INFO):
        answer = redeem(client, endpoint)

    assert_asked_to_send_again(answer)
    assert nothing_recorded()
    [error] = webhook_errors(caplog)
    message = error.getMessage()
    assert "conversion" in message and "InternalError" in message and "ReadOnlySqlTransaction" in message
    assert "read-only transaction" in message
    assert error.exc_info is None  # one line, not a traceback per callback during the failover
    logged = "\n".join(r.getMessage() + str(r.exc_info or "") for r in caplog.records)
    assert CREDENTIAL_ID not in logged and XID not in logged and endpoint.secret not in logged


def test_a_notification_on_a_read_only_database_is_503_with_retry_after(client, notification_endpoint, caplog):
    read_only()
    with caplog.at_level(logging.INFO):
        answer = notify(client, notification_endpoint, POINTS_REDEEMED)

    assert_asked_to_send_again(answer)
    assert nothing_recorded()
    [error] = webhook_errors(caplog)
    assert "notification" in error.getMessage() and "InternalError" in error.getMessage()
    assert "m-1" not in error.getMessage() and "ABC123" not in error.getMessage()


def test_a_rejection_that_cannot_be_recorded_on_a_read_only_database_is_503_too(client, endpoint):
    """The 404 for a wrong secret is recorded before it is answered; when that record cannot be
    written, the portal cannot vouch for its answer either."""
    read_only()
    # A savepoint: the rejection's record is one INSERT outside any atomic block (autocommit in
    # production); in the test's transaction its failure would leave nothing to look with.
    with transaction.atomic():
        answer = client.get(conversion_url(endpoint, secret="not-the-secret", credential_id="1", redeemed_at=REDEEMED_AT))

    assert_asked_to_send_again(answer)
    assert nothing_recorded()


def test_a_callback_during_a_rolling_deploy_whose_column_is_missing_is_503_not_400(client, endpoint, caplog):
    """New code against the old schema (or the reverse) for a few seconds of a deploy: a
    ProgrammingError that a retry after Retry-After will not meet."""
    with connection.cursor() as cursor:
        cursor.execute(f'ALTER TABLE {Redemption._meta.db_table} RENAME COLUMN "xid" TO "xid_renamed"')
    with caplog.at_level(logging.INFO):
        answer = redeem(client, endpoint)

    assert_asked_to_send_again(answer)
    assert not Redemption.objects.exists()
    [error] = webhook_errors(caplog)
    assert "ProgrammingError" in error.getMessage() and "UndefinedColumn" in error.getMessage()
    assert "xid" in error.getMessage()  # which column: what the operator needs to know


def test_a_notification_during_a_rolling_deploy_whose_table_is_missing_is_503(client, notification_endpoint):
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {Notification._meta.db_table} RENAME TO notification_of_the_next_release")
    answer = notify(client, notification_endpoint, POINTS_REDEEMED)

    assert_asked_to_send_again(answer)


def test_a_value_postgresql_cannot_store_is_400_and_not_retried(client, endpoint, caplog):
    """A DataError: sending the same value again fails again. (The validation refuses every such
    value it knows of — NUL, out of range — so the column is narrowed here to meet one.)"""
    with connection.cursor() as cursor:
        cursor.execute(f'ALTER TABLE {Redemption._meta.db_table} ALTER COLUMN "xid" TYPE varchar(4)')
    with caplog.at_level(logging.INFO):
        answer = redeem(client, endpoint)

    assert answer.status_code == 400, answer.content
    assert "Retry-After" not in answer.headers
    assert answer.json()["detail"] == (
        "The request holds a value the portal's database cannot store; nothing was accepted. "
        "Sending it again would fail again."
    )
    assert not Redemption.objects.exists()
    [error] = webhook_errors(caplog)
    assert "DataError" in error.getMessage() and "StringDataRightTruncation" in error.getMessage()
    assert XID not in error.getMessage() and CREDENTIAL_ID not in error.getMessage()
    # On record with the other rejections, for the admin's counts and the audit trail.
    [request] = InboundRequest.objects.all()
    assert (request.status_code, request.outcome) == (400, "rejected")
    assert "cannot store" in request.errors["detail"]


def test_a_wrong_method_on_a_read_only_database_is_still_405(client, endpoint, caplog):
    """The method is wrong whatever the database does: 405 (recording it failed, one line says so)."""
    read_only()
    with caplog.at_level(logging.INFO):
        answer = client.put(conversion_url(endpoint), data=json.dumps({"credential_id": CREDENTIAL_ID}))

    assert answer.status_code == 405
    [error] = webhook_errors(caplog)
    assert "InternalError" in error.getMessage() and error.exc_info is None
    assert CREDENTIAL_ID not in error.getMessage()


# --- the connection lost while the job is deferred -----------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("receiver", ["conversion", "notification"])
def test_a_callback_whose_job_defer_loses_the_connection_is_503_then_accepted_when_sent_again(
    client, endpoint, notification_endpoint, receiver, monkeypatch
):
    """The session ends inside procrastinate's INSERT of the job, after the record's own INSERT:
    procrastinate raised its ConnectorException, which no "database unreachable" handling knew
    (a 500 and a traceback). Nothing may be half-recorded, and the callback sent again is taken."""
    from sparkfly_sync import webhooks

    # The lost connection starts the web process's second of 503s (DATABASE_DOWN_PAUSE_SECONDS);
    # restored for the tests after this one.
    monkeypatch.setattr(webhooks, "_database_down_until", 0.0)
    task = "sparkfly_sync.forward_redemption" if receiver == "conversion" else "sparkfly_sync.process_notification"

    def send():
        if receiver == "conversion":
            return redeem(client, endpoint)
        return notify(client, notification_endpoint, POINTS_REDEEMED)

    with connection_lost_on_insert("procrastinate_jobs", when=f"NEW.task_name = '{task}'"):
        answer = send()
        assert matching_inserts() == 1  # the defer did run, and lost its connection

    assert_asked_to_send_again(answer)
    assert not Redemption.objects.exists() and not Notification.objects.exists()
    assert not ProcrastinateJob.objects.exists()

    monkeypatch.setattr(webhooks, "_database_down_until", 0.0)  # Sparkfly's retry, after Retry-After
    again = send()
    assert again.status_code == 202, again.content
    assert Redemption.objects.count() + Notification.objects.count() == 1
    assert list(ProcrastinateJob.objects.values_list("task_name", flat=True)) == [task]
