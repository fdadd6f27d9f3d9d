"""The deliveries page: failures first with Attentive's answer, filters, pages, and the
administrators' retry and replay buttons (refused to program managers)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.contrib.messages import get_messages
from django.utils import timezone
from procrastinate.contrib.django.models import ProcrastinateJob

from attentive_sync.models import AttentiveSettings, Delivery, DeliveryAttempt
from sparkfly_sync.events import OFFER_STATE_CREATED, OFFER_STATE_REDEEMED

URL = "/deliveries/"


def make_delivery(n: int, *, status=Delivery.Status.FAILED, event_type=OFFER_STATE_REDEEMED, age=timedelta(hours=1),
                  **fields) -> Delivery:
    return Delivery.objects.create(
        external_event_id=f"evt-{n}", event_type=event_type, payload={"externalEventId": f"evt-{n}"},
        occurred_at=timezone.now() - age, status=status, **fields,
    )


def add_attempt(delivery: Delivery, *, minutes_ago: int, status_code=503, response_body="") -> None:
    DeliveryAttempt.objects.create(
        delivery=delivery, started_at=timezone.now() - timedelta(minutes=minutes_ago), duration_ms=10,
        status_code=status_code, response_body=response_body, outcome=DeliveryAttempt.Outcome.RETRY,
    )


def listed(response) -> list[str]:
    return [delivery.external_event_id for delivery in response.context["deliveries"]]


def delivery_jobs() -> list[int]:
    jobs = ProcrastinateJob.objects.filter(task_name="attentive_sync.deliver_event").order_by("id")
    return [job["args"]["delivery_id"] for job in jobs.values("args")]


def shown_messages(response) -> list[tuple[str, str]]:
    return [(message.level_tag, message.message) for message in get_messages(response.wsgi_request)]


# --- who may see it -----------------------------------------------------------------------------


@pytest.mark.parametrize("role_client", ["program_manager_client", "administrator_client"])
def test_both_roles_see_the_page(request, role_client):
    assert request.getfixturevalue(role_client).get(URL).status_code == 200


def test_a_user_without_a_role_is_refused(no_role_client):
    assert no_role_client.get(URL).status_code == 403


@pytest.mark.django_db
def test_an_anonymous_visitor_is_sent_to_log_in(client):
    response = client.get(URL)
    assert response.status_code == 302 and response.url.startswith("/accounts/login/")


# --- what it lists ------------------------------------------------------------------------------


def test_by_default_only_failed_dead_and_expired_deliveries_newest_first(program_manager_client):
    for n, status in enumerate(["failed", "dead", "expired", "delivered", "pending"]):
        make_delivery(n, status=status)

    response = program_manager_client.get(URL)

    assert listed(response) == ["evt-2", "evt-1", "evt-0"]


def test_attentives_error_text_and_the_last_attempts_answer_are_shown(program_manager_client):
    delivery = make_delivery(1, status=Delivery.Status.DEAD, last_error="Attentive refused the event (400): bad user")
    add_attempt(delivery, minutes_ago=10, status_code=503, response_body="older answer")
    add_attempt(delivery, minutes_ago=1, status_code=400, response_body='{"message": "user.phone is invalid"}' + "x" * 2000)

    text = program_manager_client.get(URL).content.decode()

    assert "Attentive refused the event (400): bad user" in text
    assert "HTTP 400" in text and "user.phone is invalid" in text
    assert "older answer" not in text and "x" * 300 not in text  # the last answer only, truncated
    assert '<span class="status status-dead">dead</span>' in text


def test_one_query_lists_a_page_however_many_attempts(program_manager_client, django_assert_num_queries):
    for n in range(30):
        delivery = make_delivery(n)
        add_attempt(delivery, minutes_ago=2, response_body=f"answer {n}")
        add_attempt(delivery, minutes_ago=1, response_body=f"answer {n}")
    program_manager_client.get(URL)  # the session and permission caches are warm after this

    # Session, user, the user's permissions (twice: group and user), the page, the alert banner's row.
    with django_assert_num_queries(6):
        response = program_manager_client.get(URL)
    assert len(listed(response)) == 30


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("status=all", ["evt-4", "evt-3", "evt-2", "evt-1"]),
        ("status=delivered", ["evt-3"]),
        (f"status=all&event_type={OFFER_STATE_CREATED}", ["evt-4"]),
        ("status=all&q=evt-2", ["evt-2"]),
        ("status=all&q=+evt-2+", ["evt-2"]),
        ("status=all&created_from=2026-03-02&created_to=2026-03-02", ["evt-2"]),
        ("status=all&created_from=2026-03-02", ["evt-4", "evt-3", "evt-2"]),
        ("status=all&created_to=2026-03-01", ["evt-1"]),
    ],
)
def test_filters(program_manager_client, settings, query, expected):
    settings.TIME_ZONE = "America/Chicago"  # days are the program's, not UTC's
    rows = [
        make_delivery(1, status="failed"),
        make_delivery(2, status="dead"),
        make_delivery(3, status="delivered"),
        make_delivery(4, status="pending", event_type=OFFER_STATE_CREATED),
    ]
    for day, delivery in zip((1, 2, 3, 4), rows):
        created = timezone.make_aware(datetime(2026, 3, day, 23, 30))  # the next day in UTC
        Delivery.objects.filter(pk=delivery.pk).update(created_at=created)

    assert listed(program_manager_client.get(f"{URL}?{query}")) == expected


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("created_from=yesterday", "Enter a valid date."),
        ("status=lost", "Select a valid choice. lost is not one of the available choices."),
        ("created_from=2026-03-05&created_to=2026-03-01", "The end date is before the start date."),
        ("page=-3", None),
        ("page=abc", None),
    ],
)
def test_bad_filters_are_explained_and_the_rest_still_apply(program_manager_client, query, message):
    make_delivery(1, status="dead")
    make_delivery(2, status="delivered")

    response = program_manager_client.get(f"{URL}?{query}")

    assert response.status_code == 200
    if message:
        assert message in response.content.decode()
    assert listed(response) == ["evt-1"]


def test_pages_of_fifty_with_links_keeping_the_filters(program_manager_client):
    for n in range(120):
        make_delivery(n, status="dead")

    first = program_manager_client.get(f"{URL}?status=dead")
    third = program_manager_client.get(f"{URL}?status=dead&page=3")

    assert len(listed(first)) == 50 and listed(first)[0] == "evt-119"
    assert 'href="?status=dead&amp;page=2" rel="next"' in first.content.decode()
    assert listed(third) == [f"evt-{n}" for n in range(19, -1, -1)]
    assert 'rel="next"' not in third.content.decode()
    assert 'href="?status=dead&amp;page=2" rel="prev"' in third.content.decode()


# --- retry and replay ---------------------------------------------------------------------------


def test_program_managers_see_no_buttons_and_their_posts_are_refused(program_manager_client):
    delivery = make_delivery(1)

    page = program_manager_client.get(URL).content.decode()
    retry = program_manager_client.post(f"{URL}{delivery.pk}/retry/")
    replay = program_manager_client.post(f"{URL}{delivery.pk}/replay/")

    assert "Retry now" not in page and "Replay" not in page
    assert retry.status_code == 403 and replay.status_code == 403
    assert delivery_jobs() == []


def test_administrators_see_both_buttons_with_csrf_tokens(administrator_client):
    make_delivery(1)

    page = administrator_client.get(URL).content.decode()

    assert "Retry now</button>" in page and "Replay</button>" in page
    assert page.count('name="csrfmiddlewaretoken"') >= 3  # log out, retry, replay


def test_the_buttons_need_a_post(administrator_client):
    delivery = make_delivery(1)
    assert administrator_client.get(f"{URL}{delivery.pk}/retry/").status_code == 405


def test_retry_now_queues_a_try_and_goes_back_to_the_filtered_list(administrator_client):
    AttentiveSettings.objects.create(pk=1, enabled=True, api_key="key-for-tests")
    later = timezone.now() + timedelta(hours=1)
    delivery = make_delivery(1, next_attempt_at=later)

    response = administrator_client.post(
        f"{URL}{delivery.pk}/retry/", {"list_query": "status=failed&q=evt-1&page=2&next=https://evil.example"}
    )

    assert response.status_code == 302 and response.url == "/deliveries/?status=failed&q=evt-1&page=2"
    assert delivery_jobs() == [delivery.pk]
    delivery.refresh_from_db()
    assert delivery.next_attempt_at < later
    assert shown_messages(response) == [("success", "Queued an immediate try of evt-1.")]


def test_retry_now_says_why_sending_waits(administrator_client):
    delivery = make_delivery(1)

    response = administrator_client.post(f"{URL}{delivery.pk}/retry/")

    assert response.url == "/deliveries/"
    assert shown_messages(response) == [
        ("success", "Queued an immediate try of evt-1."),
        ("warning", "It waits until sending can go ahead: forwarding to Attentive is switched off."),
    ]


def test_retry_of_a_dead_delivery_points_to_replay(administrator_client):
    delivery = make_delivery(1, status="dead")

    response = administrator_client.post(f"{URL}{delivery.pk}/retry/")

    assert delivery_jobs() == []
    assert shown_messages(response) == [("warning", "evt-1 is dead: nothing to retry. Use “Replay” to send it again.")]


def test_replay_sends_a_dead_delivery_again(administrator_client):
    AttentiveSettings.objects.create(pk=1, enabled=True, api_key="key-for-tests")
    delivery = make_delivery(1, status="dead")

    response = administrator_client.post(f"{URL}{delivery.pk}/replay/", {"list_query": "status=dead"})

    assert response.url == "/deliveries/?status=dead"
    assert delivery_jobs() == [delivery.pk]
    assert Delivery.objects.get(pk=delivery.pk).status == "pending"
    assert shown_messages(response) == [("success", "Queued evt-1 to be sent again under the same external event id.")]


def test_replay_of_a_delivered_event_needs_the_box_ticked(administrator_client):
    AttentiveSettings.objects.create(pk=1, enabled=True, api_key="key-for-tests")
    delivery = make_delivery(1, status="delivered", delivered_at=timezone.now())

    unticked = administrator_client.post(f"{URL}{delivery.pk}/replay/")
    assert delivery_jobs() == [] and Delivery.objects.get(pk=delivery.pk).status == "delivered"
    assert shown_messages(unticked)[0][0] == "error"

    administrator_client.post(f"{URL}{delivery.pk}/replay/", {"confirmed": "yes"})
    assert delivery_jobs() == [delivery.pk] and Delivery.objects.get(pk=delivery.pk).status == "pending"


def test_replay_of_an_event_too_old_for_attentive_is_refused(administrator_client):
    delivery = make_delivery(1, status="expired", age=timedelta(hours=9))

    response = administrator_client.post(f"{URL}{delivery.pk}/replay/")

    assert delivery_jobs() == []
    assert shown_messages(response) == [
        ("warning", "Not replayed: evt-1 is older than the maximum event age (8 h), so Attentive would not trigger "
                    "journeys for it.")
    ]


def test_a_missing_delivery_is_reported_not_a_500(administrator_client):
    response = administrator_client.post(f"{URL}999999/replay/")
    assert response.status_code == 302
    assert shown_messages(response) == [("error", "There is no delivery 999999 (any more).")]


@pytest.mark.parametrize(
    "query",
    ["created_to=9999-12-31", "created_from=0001-01-01", "page=100000000000000000000000", "page=-3", "page=x"],
)
def test_out_of_range_filters_and_pages_are_answered_on_the_page(program_manager_client, query):
    response = program_manager_client.get(f"{URL}?{query}")
    assert response.status_code == 200
    if query.startswith("created"):
        assert "Choose a date from 2000-01-01 to 2099-12-31." in response.content.decode()


def test_a_field_error_is_the_description_of_its_field(program_manager_client):
    html = program_manager_client.get(f"{URL}?created_to=9999-12-31").content.decode()
    assert 'aria-describedby="id_created_to_error"' in html
    assert 'id="id_created_to_error">Choose a date from 2000-01-01 to 2099-12-31.</small>' in html
