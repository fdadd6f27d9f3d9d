"""Members in Attentive: the member admin's actions and page panel, and the hooks (identity
links after member events and syncs, the automatic subscribe on enrollment), through Django's
test client and the worker, against the Attentive and Sparkfly sandboxes over loopback HTTP."""

from __future__ import annotations

import re

import pytest
from django.contrib.admin import helpers
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone
from procrastinate.contrib.django.models import ProcrastinateJob

from attentive_sync import identity, tasks as attentive_tasks
from attentive_sync.client import IDENTITY_PATH, SUBSCRIPTIONS_PATH
from attentive_sync.models import AttentiveSettings, IdentityLink, SubscriptionState
from sparkfly_sync import attentive_members, forwarding
from sparkfly_sync.admin_attentive import INLINE_MEMBERS
from sparkfly_sync.client import LOYALTY_ENROLLMENTS_PATH, MEMBERS_PATH
from sparkfly_sync.models import LoyaltyEnrollment, LoyaltyProgram, Member, Notification
from sparkfly_sync.sync import sync_all, sync_resource
from tests.conftest import run_worker_until_idle

pytestmark = pytest.mark.django_db(transaction=True)

Status = SubscriptionState.Status
CHANGELIST = reverse("admin:sparkfly_sync_member_changelist")


def page(member) -> str:
    return reverse("admin:sparkfly_sync_member_change", args=[member.pk])


def attentive_url(member) -> str:
    return reverse("admin:sparkfly_sync_member_attentive", args=[member.pk])


def member(sparkfly_id: int, identifier: str, *, phone: str = "", email: str = "") -> Member:
    return Member.objects.create(
        sparkfly_id=sparkfly_id, identifier=identifier, phone=phone, email=email, synced_at=timezone.now(),
        raw={"id": sparkfly_id},
    )


def shown(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


@pytest.fixture
def attentive(attentive_sandbox):
    settings = AttentiveSettings.load()
    settings.api_url = attentive_sandbox.base_url
    settings.api_key = "sandbox"
    settings.sign_up_source_id = "132109"
    settings.enabled = True
    settings.save()
    return attentive_sandbox


@pytest.fixture
def ada():
    return member(51, "member-000051", phone="+14155550134", email="ada.lovelace@example.com")


@pytest.fixture
def nobody():
    return member(52, "member-000052")


def act(client, action: str, members, **extra):
    data = {"action": action, helpers.ACTION_CHECKBOX_NAME: [m.pk for m in members], "index": 0, **extra}
    return client.post(CHANGELIST, data, follow=True)


# --- the member page ------------------------------------------------------------------------------


def test_the_member_page_shows_the_attentive_panel_and_its_buttons(admin_client, attentive, ada):
    html = admin_client.get(page(ada)).content.decode()
    assert "Identity link:" in html and "not linked yet." in html and "Nothing asked of Attentive yet." in html
    for value in ("subscribe", "eligibility", "unsubscribe", "link_identity"):
        assert f'formaction="{attentive_url(ada)}" formmethod="post" name="attentive" value="{value}"' in html
    # The buttons submit the page's own form, which carries the CSRF token.
    assert re.search(r'<form [^>]*id="member_form".*?csrfmiddlewaretoken.*?formaction=', html, re.S)


def test_the_buttons_subscribe_check_and_unsubscribe_one_member(admin_client, attentive, ada):
    response = admin_client.post(attentive_url(ada), {"attentive": "subscribe"}, follow=True)
    assert response.redirect_chain[-1][0] == page(ada)
    [message] = shown(response)
    assert "TEXT MARKETING: subscribed (eligible) (NEWLY_CREATED)" in message
    [sent] = attentive.sandbox.received()["subscriptions"]
    assert sent["body"]["externalIdentifiers"] == {"clientUserId": "member-000051"}
    assert sent["body"]["signUpSourceId"] == "132109"
    html = response.content.decode()
    assert "NEWLY_CREATED" in html and "+14155550134" in html and "<details>" in html

    # Pressed again: Attentive is asked, and she is not subscribed (texted) a second time.
    [message] = shown(admin_client.post(attentive_url(ada), {"attentive": "subscribe"}, follow=True))
    assert "already subscribed — not resubscribed" in message
    assert attentive.sandbox.count_requests(SUBSCRIPTIONS_PATH, "POST") == 1

    [message] = shown(admin_client.post(attentive_url(ada), {"attentive": "eligibility"}, follow=True))
    assert "isEligible=true" in message

    # Unsubscribe asks which channels first.
    form = admin_client.post(attentive_url(ada), {"attentive": "unsubscribe"})
    assert form.status_code == 200 and b'name="channels" value="TEXT"' in form.content
    refused = admin_client.post(attentive_url(ada), {"attentive": "unsubscribe", "confirmed": "yes"})
    assert b"Choose text, email or both." in refused.content
    response = admin_client.post(
        attentive_url(ada), {"attentive": "unsubscribe", "confirmed": "yes", "channels": ["TEXT"]}, follow=True
    )
    assert "TEXT MARKETING: unsubscribed (NEWLY_UNSUBSCRIBED)" in shown(response)[0]
    states = {s.channel: s.status for s in SubscriptionState.objects.filter(client_user_id="member-000051")}
    assert states == {"TEXT": Status.UNSUBSCRIBED, "EMAIL": Status.SUBSCRIBED}
    assert attentive.sandbox.rate_limited() == {}


def test_the_link_button_links_once(admin_client, attentive, ada):
    [message] = shown(admin_client.post(attentive_url(ada), {"attentive": "link_identity"}, follow=True))
    assert message == "member-000051: identity linked"
    [message] = shown(admin_client.post(attentive_url(ada), {"attentive": "link_identity"}, follow=True))
    assert "already linked" in message
    assert attentive.sandbox.count_requests(IDENTITY_PATH) == 1
    assert "linked with the phone and email shown above" in admin_client.get(page(ada)).content.decode()


def test_a_member_without_contacts_gets_a_clear_refusal(admin_client, attentive, nobody):
    [message] = shown(admin_client.post(attentive_url(nobody), {"attentive": "subscribe"}, follow=True))
    assert message == (
        "member-000052 has neither a phone number nor an email address: Attentive knows subscribers only by "
        "those. Add one, then try again."
    )
    assert attentive.sandbox.requests_log == []
    assert "not possible: member-000052 has neither" in admin_client.get(page(nobody)).content.decode()


def test_view_only_staff_see_the_panel_without_buttons_and_cannot_act(client, attentive, ada):
    staff = User.objects.create_user("viewer", password="x", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_member"))
    client.force_login(staff)
    html = client.get(page(ada)).content.decode()
    assert "Identity link:" in html and "formaction" not in html
    assert client.post(attentive_url(ada), {"attentive": "subscribe"}).status_code == 403
    assert attentive.sandbox.requests_log == []


def test_the_attentive_url_only_answers_a_post(admin_client, ada):
    assert admin_client.get(attentive_url(ada)).status_code == 405


def test_without_a_key_or_a_sign_up_source_nothing_is_sent_and_the_page_says_why(admin_client, attentive, ada):
    settings = AttentiveSettings.load()
    settings.sign_up_source_id = ""
    settings.save()
    [message] = shown(admin_client.post(attentive_url(ada), {"attentive": "subscribe"}, follow=True))
    assert message == (
        "Nothing was sent to Attentive: no sign-up source id is set in the Attentive settings: Attentive needs one "
        "to subscribe."
    )
    settings.api_key = ""
    settings.save()
    [message] = shown(admin_client.post(attentive_url(ada), {"attentive": "eligibility"}, follow=True))
    assert "no Attentive API key is set" in message
    assert attentive.sandbox.requests_log == []


# --- the list's actions -------------------------------------------------------------------------------


def test_a_small_selection_runs_while_the_admin_waits_after_confirming(admin_client, attentive, ada, nobody):
    confirm = act(admin_client, "attentive_subscribe", [ada, nobody])
    assert b"Subscribe 2 members in Attentive?" in confirm.content
    assert attentive.sandbox.requests_log == []

    response = act(admin_client, "attentive_subscribe", [ada, nobody], confirmed="yes")
    messages = shown(response)
    assert any(m.startswith("member-000051: TEXT MARKETING: subscribed") for m in messages)
    assert any(m.startswith("member-000052 has neither a phone number nor an email address") for m in messages)

    response = act(admin_client, "attentive_check_eligibility", [ada], confirmed="yes")
    assert "isEligible=true" in shown(response)[0]


def test_unsubscribe_from_the_list_asks_for_text_email_or_both(admin_client, attentive, ada):
    act(admin_client, "attentive_subscribe", [ada], confirmed="yes")
    form = act(admin_client, "attentive_unsubscribe", [ada])
    assert b"Unsubscribe 1 member from Attentive?" in form.content and b'name="channels" value="EMAIL"' in form.content
    assert b'name="action" value="attentive_unsubscribe"' in form.content
    refused = act(admin_client, "attentive_unsubscribe", [ada], confirmed="yes")
    assert b"Choose text, email or both." in refused.content

    response = act(admin_client, "attentive_unsubscribe", [ada], confirmed="yes", channels=["EMAIL"])
    assert "EMAIL MARKETING: unsubscribed (NEWLY_UNSUBSCRIBED)" in shown(response)[0]
    response = act(admin_client, "attentive_unsubscribe", [ada], confirmed="yes", channels=["TEXT", "EMAIL"])
    assert set(re.findall(r"(NEWLY|PREVIOUSLY)_UNSUBSCRIBED", shown(response)[0])) == {"NEWLY", "PREVIOUSLY"}
    assert attentive.sandbox.received()["unsubscriptions"][-1]["body"]["user"] == {
        "phone": "+14155550134", "email": "ada.lovelace@example.com"
    }


def test_a_large_selection_is_queued_as_jobs_and_stays_under_attentives_rate(admin_client, attentive, nobody):
    people = [member(100 + n, f"member-{100 + n}", phone=f"+1415555{n:04d}") for n in range(INLINE_MEMBERS + 1)]
    confirm = act(admin_client, "attentive_subscribe", [*people, nobody])
    assert b"queued as jobs" in confirm.content

    response = act(admin_client, "attentive_subscribe", [*people, nobody], confirmed="yes")
    messages = shown(response)
    assert messages[0].startswith(f"Queued {INLINE_MEMBERS + 1} members for Attentive")
    assert messages[1].startswith("Left out 1: member-000052 has neither")
    assert attentive.sandbox.requests_log == []  # nothing while the admin waited
    jobs = ProcrastinateJob.objects.filter(task_name="attentive_sync.subscribe_contact")
    assert jobs.count() == INLINE_MEMBERS + 1 and {job.lock for job in jobs} == {"attentive-subscriptions"}

    run_worker_until_idle()
    assert attentive.sandbox.count_requests(SUBSCRIPTIONS_PATH, "POST") == INLINE_MEMBERS + 1
    assert attentive.sandbox.rate_limited() == {}
    assert SubscriptionState.objects.filter(status=Status.SUBSCRIBED, channel="TEXT").count() == INLINE_MEMBERS + 1


def test_link_identity_from_the_list(admin_client, attentive, ada, nobody):
    act(admin_client, "attentive_link_identity", [ada, nobody], confirmed="yes")
    [body] = [entry["body"] for entry in attentive.sandbox.received()["identities"]]
    assert body == {"clientUserId": "member-000051", "phone": "+14155550134", "email": "ada.lovelace@example.com"}


def test_the_settings_page_has_the_auto_subscribe_switch(admin_client):
    html = admin_client.get(reverse("admin:attentive_sync_attentivesettings_change", args=[1])).content.decode()
    assert 'name="auto_subscribe_on_enrollment"' in html


# --- hooks: identity links and the automatic subscribe --------------------------------------------------


@pytest.fixture
def mirrored(sparkfly_client):
    sync_all(client=sparkfly_client, resources=["members", "loyalty_programs", "loyalty_enrollments"])
    return sparkfly_client


def test_a_members_sync_requests_identity_links_of_changed_contacts_only(attentive, sparkfly_client):
    sync_resource("members", client=sparkfly_client)
    with_contacts = Member.objects.exclude(phone="", email="")
    assert IdentityLink.objects.filter(pending=True).count() == with_contacts.count() > 0
    [job] = ProcrastinateJob.objects.filter(task_name="attentive_sync.link_identities")
    assert job.scheduled_at > timezone.now()  # after the sync's own work, in one run

    attentive_tasks.link_identities()
    linked = attentive.sandbox.count_requests(IDENTITY_PATH)
    assert linked == with_contacts.count() and not IdentityLink.objects.filter(pending=True).exists()

    # A second sync: nothing changed, nothing pending. Then one member's email changes at Sparkfly.
    sync_resource("members", client=sparkfly_client)
    assert not IdentityLink.objects.filter(pending=True).exists()
    ada = with_contacts.first()
    sparkfly_client.request(
        "PUT", f"{MEMBERS_PATH}/{ada.sparkfly_id}", json_body={"member": {"member_profile": {"email": "new@example.com"}}}
    )
    sync_resource("members", client=sparkfly_client)
    assert list(IdentityLink.objects.filter(pending=True).values_list("client_user_id", flat=True)) == [ada.identifier]
    attentive_tasks.link_identities()
    assert attentive.sandbox.received()["identities"][-1]["body"]["email"] == "new@example.com"
    assert attentive.sandbox.count_requests(IDENTITY_PATH) == linked + 1
    assert attentive.sandbox.rate_limited() == {}


def test_syncs_request_nothing_before_an_attentive_key_is_set(sparkfly_client):
    sync_resource("members", client=sparkfly_client)
    assert not IdentityLink.objects.exists()


def notification(event_name: str, data: dict) -> Notification:
    return Notification.objects.create(
        event_id=f"{event_name}-{Notification.objects.count()}", event_name=event_name, payload={"data": data},
        received_at=timezone.now(),
    )


def test_a_member_event_requests_a_link_of_the_new_contacts(attentive, mirrored):
    ada = Member.objects.exclude(phone="").first()
    identity.link_identity(attentive_members.contact_for(ada), client=_attentive_client())
    mirrored.request(
        "PUT", f"{MEMBERS_PATH}/{ada.sparkfly_id}", json_body={"member": {"member_profile": {"email": "moved@example.com"}}}
    )
    IdentityLink.objects.exclude(client_user_id=ada.identifier).delete()  # only hers matters here
    record = notification("sf.member.updated", {"member": {"id": ada.sparkfly_id}})
    assert forwarding.process_notification(record.pk, client_factory=lambda: mirrored).state == "processed"
    link = IdentityLink.objects.get(client_user_id=ada.identifier)
    assert link.pending and link.email == "moved@example.com"
    attentive_tasks.link_identities()
    assert attentive.sandbox.received()["identities"][-1]["body"]["email"] == "moved@example.com"


def _attentive_client():
    from attentive_sync.subscriptions import client_from_settings

    return client_from_settings()


def _enroll(sparkfly_client, member: Member) -> int:
    program = LoyaltyProgram.objects.first()
    created = sparkfly_client.request(
        "POST", LOYALTY_ENROLLMENTS_PATH.format(program_id=program.sparkfly_id),
        json_body={"loyalty_enrollment": {"member_id": member.sparkfly_id, "external_id": "EXT-NEW"}}, idempotent=False,
    )
    return created["loyalty_enrollment"]["id"]


@pytest.mark.parametrize("switched_on", [True, False])
def test_a_new_enrollment_subscribes_the_member_only_when_switched_on(attentive, mirrored, switched_on):
    settings = AttentiveSettings.load()
    settings.auto_subscribe_on_enrollment = switched_on
    settings.save()
    ProcrastinateJob.objects.all().delete()  # the sync's identity links are another test's business
    enrolled = LoyaltyEnrollment.objects.values("member_id")
    member_ = Member.objects.exclude(phone="").exclude(email="").exclude(sparkfly_id__in=enrolled).first()
    enrollment_id = _enroll(mirrored, member_)

    record = notification("loyalty.enrollment.created", {"enrollment": {"id": enrollment_id}})
    assert forwarding.process_notification(record.pk, client_factory=lambda: mirrored).state == "processed"
    jobs = ProcrastinateJob.objects.filter(task_name="attentive_sync.subscribe_contact")
    assert jobs.count() == (1 if switched_on else 0)
    assert attentive.sandbox.requests_log == []  # never called inline
    run_worker_until_idle(queues=["contacts"])
    subscribed = [entry["body"] for entry in attentive.sandbox.received()["subscriptions"]]
    if switched_on:
        [body] = subscribed
        assert body["externalIdentifiers"] == {"clientUserId": member_.identifier}
        assert body["user"] == {"phone": member_.phone, "email": member_.email}
        assert jobs.get().args["automatic"] is True
    else:
        assert subscribed == []
