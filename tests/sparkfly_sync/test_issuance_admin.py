"""Issuing credentials from the admin, through Django's test client, against the Sparkfly
sandbox over loopback HTTP: the member page's button and form, the bulk action and its
batch's page, the issuance records, and who may do what."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse
from django.utils import timezone
from procrastinate.contrib.django.models import ProcrastinateJob

from attentive_sync.models import Delivery
from sparkfly_sync.client import CREDENTIALS_PATH
from sparkfly_sync.models import IssuanceBatch, IssuanceRequest, Member, Offer
from sparkfly_sync.sync import sync_all
from tests.conftest import run_worker_until_idle

pytestmark = pytest.mark.django_db

CHANNEL, RUNNING, PENDING = 451, (1701, 1704), 1702  # the small seeded sandbox (see test_issuance.py)


@pytest.fixture(autouse=True)
def no_periodic_sync(settings):
    settings.SPARKFLY_SYNC_INTERVAL_MINUTES = 0


@pytest.fixture
def mirrored(sparkfly_settings, sparkfly_client):
    sync_all(client=sparkfly_client)
    return sparkfly_client


@pytest.fixture
def member(mirrored) -> Member:
    return Member.objects.order_by("sparkfly_id").first()


def form_url(member: Member) -> str:
    return reverse("admin:sparkfly_sync_member_issue_credential", args=[member.pk])


def hidden_key(page) -> str:
    return re.search(r'name="idempotency_key" value="([0-9a-f-]{36})"', page.content.decode()).group(1)


def submit(admin_client, member, *, offers=RUNNING, channel=CHANNEL, key=None):
    key = key or hidden_key(admin_client.get(form_url(member)))
    return admin_client.post(form_url(member), {"channel": channel, "offers": list(offers), "idempotency_key": key})


def credential_posts(sparkfly_sandbox) -> int:
    return sparkfly_sandbox.sandbox.count_requests(CREDENTIALS_PATH, "POST")


# --- one member ----------------------------------------------------------------------------------------------


def test_the_member_page_has_an_issue_button_leading_to_the_form(admin_client, member):
    page = admin_client.get(reverse("admin:sparkfly_sync_member_change", args=[member.pk]))

    assert page.status_code == 200
    assert f'href="{form_url(member)}"' in page.content.decode()
    assert "Issue a credential" in page.content.decode()
    assert member.identifier in page.content.decode()  # the page itself is unchanged


def test_the_form_offers_the_mirrored_channels_and_offers_with_a_fresh_key_each_time(admin_client, member):
    first, second = admin_client.get(form_url(member)), admin_client.get(form_url(member))

    assert first.status_code == 200
    form = first.context["form"]
    assert {channel.sparkfly_id for channel in form.fields["channel"].queryset} == {451, 452, 453}
    assert form.fields["offers"].queryset.count() == Offer.objects.count()
    assert "(#1702, pending, until 2030-12-31)" in first.content.decode()
    assert hidden_key(first) != hidden_key(second)


def test_submitting_issues_and_shows_the_code(admin_client, member, sparkfly_sandbox):
    page = submit(admin_client, member)

    assert page.status_code == 200
    request = IssuanceRequest.objects.get()
    assert request.state == "issued" and request.requested_by.username == "admin"
    assert f'<strong class="issued-code">{request.code}</strong>' in page.content.decode()
    assert Delivery.objects.count() == 2
    assert hidden_key(page) != str(request.idempotency_key)  # the next issuance is a new request


def test_a_double_submit_shows_the_same_code_and_issues_once(admin_client, member, sparkfly_sandbox):
    key = hidden_key(admin_client.get(form_url(member)))

    first = submit(admin_client, member, key=key)
    second = submit(admin_client, member, key=key)

    code = IssuanceRequest.objects.get().code
    assert code in first.content.decode() and code in second.content.decode()
    assert credential_posts(sparkfly_sandbox) == 1


def test_a_refusal_the_mirror_foresees_is_shown_in_sparkflys_words(admin_client, member, sparkfly_sandbox):
    name = Offer.objects.get(sparkfly_id=PENDING).name

    page = submit(admin_client, member, offers=[PENDING])

    assert f"offer {name} must be approved to generate a credential" in page.content.decode()
    assert page.context["form"].non_field_errors() == [f"offer {name} must be approved to generate a credential"]
    assert credential_posts(sparkfly_sandbox) == 0
    # The person's choices stay; the key is new, so a changed choice is a new request.
    assert [o.sparkfly_id for o in page.context["form"].cleaned_data["offers"]] == [PENDING]
    assert hidden_key(page) != str(IssuanceRequest.objects.get().idempotency_key)


def test_sparkflys_own_error_is_shown_verbatim(admin_client, member, sparkfly_sandbox):
    Offer.objects.filter(sparkfly_id=1703).update(expires_at=timezone.now() + timedelta(days=9))  # a stale mirror

    page = submit(admin_client, member, offers=[1703])

    assert page.context["form"].non_field_errors() == ["Offer with ID 1703 is no longer active"]
    assert IssuanceRequest.objects.get().state == "refused"


def test_a_failure_offers_to_send_the_same_request_again(admin_client, member, sparkfly_sandbox):
    sparkfly_sandbox.sandbox.inject_fault(CREDENTIALS_PATH, status=500, body='{"error":"Internal Server Error"}')

    page = submit(admin_client, member)

    request = IssuanceRequest.objects.get()
    assert request.state == "failed"
    content = page.content.decode()
    [error] = page.context["form"].non_field_errors()
    assert error.startswith("Sparkfly answered 500 to POST") and error.endswith(": Internal Server Error")
    assert "the request failed" in content
    retry = page.context["retry"]
    assert (retry["idempotency_key"], retry["channel"], sorted(retry["offers"])) == (request.idempotency_key, CHANNEL, list(RUNNING))
    assert f'name="idempotency_key" value="{request.idempotency_key}"' in content  # the "Try again" form

    again = submit(admin_client, member, key=str(request.idempotency_key))

    request.refresh_from_db()
    assert request.state == "issued" and request.code in again.content.decode()
    assert len(sparkfly_sandbox.sandbox.requests_log) > 0 and credential_posts(sparkfly_sandbox) == 2


def test_without_sparkfly_settings_the_form_says_so_instead_of_failing(admin_client, member, settings):
    settings.SPARKFLY_API_URL = ""

    page = submit(admin_client, member)

    assert page.status_code == 200
    assert "Sparkfly is not configured: set SPARKFLY_API_URL" in page.content.decode()
    assert IssuanceRequest.objects.count() == 0


def test_an_invalid_form_shows_its_errors(admin_client, member):
    page = admin_client.post(form_url(member), {"channel": CHANNEL, "idempotency_key": str(uuid.uuid4())})

    assert page.status_code == 200
    assert page.context["form"].errors["offers"] == ["This field is required."]
    assert IssuanceRequest.objects.count() == 0


# --- many members -----------------------------------------------------------------------------------------------


def run_issue_action(admin_client, members, **form):
    data = {"action": "issue_credentials", "_selected_action": [m.pk for m in members], **form}
    return admin_client.post(reverse("admin:sparkfly_sync_member_changelist"), data)


def test_the_action_asks_for_channel_and_offers_then_queues_one_batch(admin_client, mirrored):
    members = list(Member.objects.order_by("sparkfly_id")[:3])

    page = run_issue_action(admin_client, members)

    assert page.status_code == 200 and page.context["selected_count"] == 3
    assert "Issue a credential to each of the 3 selected members" in page.content.decode()
    key = hidden_key(page)
    form = {"issue": "yes", "channel": CHANNEL, "offers": [RUNNING[0]], "idempotency_key": key}

    queued = run_issue_action(admin_client, members, **form)
    again = run_issue_action(admin_client, members, **form)  # a double submit

    batch = IssuanceBatch.objects.get()
    assert queued.status_code == again.status_code == 302
    assert queued["Location"] == again["Location"] == reverse("admin:sparkfly_sync_issuancebatch_change", args=[batch.pk])
    assert batch.member_ids == [m.sparkfly_id for m in members] and batch.requested_by.username == "admin"
    assert ProcrastinateJob.objects.filter(task_name="sparkfly_sync.issue_credentials_batch").count() == 1


def test_the_action_with_an_invalid_form_shows_it_again_with_its_errors(admin_client, mirrored):
    members = list(Member.objects.order_by("sparkfly_id")[:2])

    page = run_issue_action(admin_client, members, issue="yes", channel=CHANNEL, idempotency_key=str(uuid.uuid4()))

    assert page.status_code == 200 and page.context["form"].errors["offers"] == ["This field is required."]
    assert IssuanceBatch.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_the_batch_page_shows_progress_and_each_members_result(admin_client, mirrored, sparkfly_sandbox):
    members = list(Member.objects.order_by("sparkfly_id")[:2])
    Member.objects.create(sparkfly_id=999999, identifier="gone", synced_at=timezone.now())  # Sparkfly lacks it
    members.append(Member.objects.get(sparkfly_id=999999))
    run_issue_action(admin_client, members, issue="yes", channel=CHANNEL, offers=[RUNNING[0]],
                     idempotency_key=str(uuid.uuid4()))
    batch = IssuanceBatch.objects.get()
    waiting = admin_client.get(reverse("admin:sparkfly_sync_issuancebatch_change", args=[batch.pk]))
    assert '<meta http-equiv="refresh"' in waiting.content.decode()  # follows its progress
    assert "0 of 3 members" in waiting.content.decode()

    run_worker_until_idle()

    page = admin_client.get(reverse("admin:sparkfly_sync_issuancebatch_change", args=[batch.pk]))
    content = page.content.decode()
    assert "3 of 3 members" in content and '<meta http-equiv="refresh"' not in content
    for request in IssuanceRequest.objects.filter(state="issued"):
        assert request.code in content
    assert "Member can&#x27;t be blank" in content
    listed = admin_client.get(reverse("admin:sparkfly_sync_issuancerequest_changelist") + f"?batch__id__exact={batch.pk}")
    assert listed.status_code == 200 and len(listed.context["cl"].result_list) == 3
    batches = admin_client.get(reverse("admin:sparkfly_sync_issuancebatch_changelist"))
    assert "3 of 3 members" in batches.content.decode()


def test_retrying_a_batch_queues_it_again(admin_client, mirrored):
    batch = IssuanceBatch.objects.create(member_ids=[1001], channel_id=CHANNEL, offer_ids=[RUNNING[0]], state="done", failed=1)

    response = admin_client.post(
        reverse("admin:sparkfly_sync_issuancebatch_changelist"), {"action": "retry", "_selected_action": [batch.pk]}
    )

    assert response.status_code == 302
    batch.refresh_from_db()
    assert batch.state == "queued"
    assert ProcrastinateJob.objects.filter(task_name="sparkfly_sync.issue_credentials_batch").count() == 1


# --- the records, and who may issue ------------------------------------------------------------------------------


def test_requests_are_searchable_by_member_credential_code_and_key(admin_client, member, sparkfly_sandbox):
    submit(admin_client, member)
    request = IssuanceRequest.objects.get()
    changelist = reverse("admin:sparkfly_sync_issuancerequest_changelist")

    for term in (member.sparkfly_id, request.credential_id, request.code, request.idempotency_key):
        found = admin_client.get(changelist, {"q": str(term)}).context["cl"].result_list
        assert list(found) == [request], term
    assert list(admin_client.get(changelist, {"q": "nothing"}).context["cl"].result_list) == []
    page = admin_client.get(reverse("admin:sparkfly_sync_issuancerequest_change", args=[request.pk]))
    assert page.status_code == 200 and request.code in page.content.decode()


def test_request_search_reads_the_largest_bigint_as_an_id_and_one_more_as_a_code(admin_client):
    batch = IssuanceBatch.objects.create(member_ids=[1], channel_id=1, offer_ids=[1])
    common = {"channel_id": 1, "offer_ids": [1], "batch": batch}
    by_member = IssuanceRequest.objects.create(idempotency_key=uuid.uuid4(), member_id=2**63 - 1, **common)
    by_code = IssuanceRequest.objects.create(idempotency_key=uuid.uuid4(), member_id=1, code=str(2**63), **common)
    changelist = reverse("admin:sparkfly_sync_issuancerequest_changelist")

    def found(term):
        return list(admin_client.get(changelist, {"q": term}).context["cl"].result_list)

    assert found(str(2**63 - 1)) == [by_member]
    assert found(str(2**63)) == [by_code]


@pytest.mark.parametrize("model", [IssuanceRequest, IssuanceBatch])
def test_issuance_records_cannot_be_added_changed_or_deleted(admin_client, model):
    batch = IssuanceBatch.objects.create(member_ids=[1], channel_id=1, offer_ids=[1])
    row = batch if model is IssuanceBatch else IssuanceRequest.objects.create(
        idempotency_key=uuid.uuid4(), member_id=1, channel_id=1, offer_ids=[1], batch=batch,
    )
    name = model._meta.model_name

    assert admin_client.get(reverse(f"admin:sparkfly_sync_{name}_add")).status_code == 403
    assert admin_client.post(reverse(f"admin:sparkfly_sync_{name}_delete", args=[row.pk]), {"post": "yes"}).status_code == 403
    assert admin_client.get(reverse(f"admin:sparkfly_sync_{name}_change", args=[row.pk])).status_code == 200


def test_staff_without_the_issue_permission_see_no_button_action_or_form(client, member):
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_member"))
    client.force_login(viewer)

    page = client.get(reverse("admin:sparkfly_sync_member_change", args=[member.pk]))

    assert page.status_code == 200 and form_url(member) not in page.content.decode()
    assert client.get(form_url(member)).status_code == 403
    assert client.get(reverse("admin:sparkfly_sync_member_changelist")).context["action_form"] is None


def test_staff_with_the_issue_permission_can_issue(client, member, sparkfly_sandbox):
    issuer = User.objects.create_user("issuer", password="pw", is_staff=True)
    issuer.user_permissions.add(*Permission.objects.filter(codename__in=["view_member", "issue_credentials"]))
    client.force_login(issuer)

    actions = client.get(reverse("admin:sparkfly_sync_member_changelist")).context["action_form"].fields["action"].choices

    assert "issue_credentials" in [name for name, _ in actions]
    assert submit(client, member).status_code == 200
    assert IssuanceRequest.objects.get().requested_by == issuer


def test_an_unknown_member_redirects_to_the_list(admin_client, mirrored):
    response = admin_client.get(reverse("admin:sparkfly_sync_member_issue_credential", args=[987654321]))

    assert response.status_code == 302
