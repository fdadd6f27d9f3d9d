"""Member search and the member 360 page: every role, each kind of search, the 360's content,
bad input, and a constant number of queries however much a member holds."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from attentive_sync.models import Delivery, SubscriptionState
from sparkfly_sync.models import (
    Channel,
    Credential,
    IssuanceRequest,
    LoyaltyEnrollment,
    LoyaltyProgram,
    Member,
    Offer,
    Redemption,
)

NOW = timezone.now()


def member(sparkfly_id, identifier, *, email="", phone="", first_name="", last_name=""):
    return Member.objects.create(
        sparkfly_id=sparkfly_id, identifier=identifier, email=email, phone=phone,
        first_name=first_name, last_name=last_name, synced_at=NOW,
    )


def credential(sparkfly_id, member_id, *, code=None, offer_ids=(), channel_id=None):
    return Credential.objects.create(
        sparkfly_id=sparkfly_id, member_id=member_id, identifier=code or f"CODE{sparkfly_id}", status="active",
        offer_ids=list(offer_ids), channel_id=channel_id, synced_at=NOW,
    )


def redemption(credential_id, *, offer_id=1, sf_uid="", redeemed_at=None, delivery=None):
    return Redemption.objects.create(
        dedup_key=uuid.uuid4(), credential_id=credential_id, offer_id=offer_id, sf_uid=sf_uid,
        redeemed_at=redeemed_at or NOW, received_at=NOW, delivery=delivery,
    )


def delivery(client_user_id, *, status=Delivery.Status.DELIVERED, event_type="sparkfly.member.offer_state_redeemed"):
    return Delivery.objects.create(
        external_event_id=str(uuid.uuid4()), event_type=event_type, status=status, occurred_at=NOW,
        payload={"type": event_type, "user": {"externalIdentifiers": {"clientUserId": client_user_id}}},
    )


# --- who may see the pages ---------------------------------------------------------------------

PAGES = ["/members/", "/members/?q=ada", "/members/41/"]


@pytest.fixture
def ada(db):
    return member(41, "ada-41", email="ada@example.com", phone="+14155550134", first_name="Ada", last_name="Lovelace")


@pytest.mark.parametrize("path", PAGES)
def test_program_managers_and_administrators_see_the_member_pages(ada, program_manager_client, administrator_client, path):
    assert program_manager_client.get(path).status_code == 200
    assert administrator_client.get(path).status_code == 200


@pytest.mark.parametrize("path", PAGES)
def test_a_user_without_a_role_is_refused_the_member_pages(ada, no_role_client, path):
    response = no_role_client.get(path)
    assert response.status_code == 403
    assert b"Not allowed" in response.content


@pytest.mark.parametrize("path", PAGES)
def test_an_anonymous_visitor_is_sent_to_log_in_before_the_member_pages(ada, client, path):
    response = client.get(path)
    assert response.status_code == 302 and response.url.startswith("/accounts/login/?next=")


# --- search ------------------------------------------------------------------------------------


def found(response) -> list[int]:
    """The member ids listed, in the page's order."""
    return [m.sparkfly_id for m in response.context["result"].members]


def test_an_empty_search_shows_the_form_and_a_hint(program_manager_client):
    response = program_manager_client.get("/members/", {"q": "   "})
    assert response.status_code == 200 and response.context["result"] is None
    assert b'name="q"' in response.content and b"Search for a member" in response.content


def test_search_finds_a_member_by_exact_identifier_and_lists_them_with_a_link(ada, program_manager_client):
    member(42, "bob-42")
    response = program_manager_client.get("/members/", {"q": "ada-41"})
    assert found(response) == [41]
    assert b'href="/members/41/"' in response.content and b"1 member matches" in response.content


def test_search_finds_a_member_by_sparkfly_member_id(ada, program_manager_client):
    member(42, "bob-42")
    assert found(program_manager_client.get("/members/", {"q": "42"})) == [42]


def test_search_reads_a_phone_number_in_any_format(ada, program_manager_client, settings):
    settings.MEMBER_PHONE_REGION = "US"
    assert found(program_manager_client.get("/members/", {"q": "(415) 555-0134"})) == [41]
    assert found(program_manager_client.get("/members/", {"q": "+1 415 555 0134"})) == [41]


def test_search_matches_an_email_whatever_its_case(ada, program_manager_client):
    assert found(program_manager_client.get("/members/", {"q": " ADA@Example.COM "})) == [41]


def test_exact_matches_come_before_identifier_and_email_prefixes(program_manager_client):
    member(1, "ann-b")
    member(2, "ann-a")
    member(3, "ann", email="zed@example.com")
    member(4, "zed", email="ann.other@example.com")
    member(5, "bea")
    response = program_manager_client.get("/members/", {"q": "ann"})
    assert found(response) == [3, 2, 1, 4]  # exact, then prefixes in identifier order
    assert [m.sparkfly_id for m in response.context["result"].exact] == [3]


def test_a_prefix_search_takes_wildcards_literally(program_manager_client):
    member(1, "a_b")
    member(2, "axb")
    assert found(program_manager_client.get("/members/", {"q": "a_"})) == [1]
    assert found(program_manager_client.get("/members/", {"q": "%"})) == []


def test_more_than_fifty_matches_ask_to_refine_the_search(program_manager_client):
    Member.objects.bulk_create(Member(sparkfly_id=i, identifier=f"many-{i:03}", synced_at=NOW) for i in range(1, 61))
    response = program_manager_client.get("/members/", {"q": "many-"})
    assert len(found(response)) == 50 and response.context["result"].more
    assert b"More than 50 members match" in response.content


def test_no_match_says_so(ada, program_manager_client):
    response = program_manager_client.get("/members/", {"q": "nobody"})
    assert found(response) == [] and b"No member matches" in response.content


@pytest.mark.parametrize("term", ["x" * 10_000, "ada\x00", str(2**63), "9" * 40])
def test_a_search_that_cannot_match_is_answered_on_the_page_not_with_an_error(ada, program_manager_client, term):
    response = program_manager_client.get("/members/", {"q": term})
    assert response.status_code == 200
    if len(term) > 255 or "\x00" in term:
        assert response.context["refusal"] and b'role="alert"' in response.content
    else:
        assert found(response) == []


def test_search_costs_the_same_few_queries_however_many_match(program_manager_client, django_assert_max_num_queries):
    Member.objects.bulk_create(Member(sparkfly_id=i, identifier=f"many-{i:03}", synced_at=NOW) for i in range(1, 61))
    with django_assert_max_num_queries(8):  # session, user, permissions (2), exact, two prefixes
        response = program_manager_client.get("/members/", {"q": "many-"})
    assert len(found(response)) == 50


# --- the member 360 ----------------------------------------------------------------------------


@pytest.fixture
def ada_360(ada):
    """Ada with one of everything the 360 shows, and another member's rows that must not show."""
    LoyaltyProgram.objects.create(sparkfly_id=7, name="Stars", synced_at=NOW)
    LoyaltyEnrollment.objects.create(
        sparkfly_id=70, member_id=41, program_id=7, status="active", point_balance=1234, historical_points=5678,
        tier_id=3, tier_term_end_date=NOW.date(), synced_at=NOW,
    )
    Offer.objects.create(sparkfly_id=500, name="Free coffee", status="approved", synced_at=NOW)
    Channel.objects.create(sparkfly_id=9, name="App channel", synced_at=NOW)
    credential(900, 41, code="ADA-CODE", offer_ids=[500], channel_id=9)
    sent = delivery("ada-41")
    redemption(900, offer_id=500, delivery=sent, redeemed_at=NOW - timedelta(days=1))
    redemption(12345, offer_id=500, sf_uid="ada-41", redeemed_at=NOW)  # a credential not mirrored, named by sf_uid
    IssuanceRequest.objects.create(
        idempotency_key=uuid.uuid4(), member_id=41, channel_id=9, offer_ids=[500], state="refused",
        reason="The offer is not active", code="",
    )
    SubscriptionState.objects.create(
        client_user_id="ada-41", channel="TEXT", subscription_type="MARKETING", address="+14155550134",
        status="subscribed", last_action="subscribe", attentive_status="NEWLY_CREATED",
    )
    delivery("ada-41", status=Delivery.Status.DEAD, event_type="sparkfly.member.offer_state_created")
    # Someone else's.
    member(43, "cy-43")
    credential(901, 43, code="CY-CODE")
    redemption(901, offer_id=500, sf_uid="cy-43")
    delivery("cy-43", event_type="cy.event")
    SubscriptionState.objects.create(
        client_user_id="cy-43", channel="EMAIL", address="cy@example.com", status="unsubscribed", last_action="unsubscribe",
    )
    return ada


def test_the_360_shows_the_profile_enrollments_credentials_and_issuances(ada_360, program_manager_client):
    response = program_manager_client.get("/members/41/")
    body = response.content.decode()
    for text in ("Ada Lovelace", "ada-41", "ada@example.com", "+14155550134", "Stars", "1234", "5678",
                 "ADA-CODE", "App channel", "Free coffee", "The offer is not active"):
        assert text in body, text
    assert "CY-CODE" not in body
    assert f'href="/admin/sparkfly_sync/credential/{Credential.objects.get(sparkfly_id=900).pk}/change/"' in body
    assert f'href="/admin/sparkfly_sync/loyaltyenrollment/{LoyaltyEnrollment.objects.get().pk}/change/"' in body
    assert f'href="/admin/sparkfly_sync/issuancerequest/{IssuanceRequest.objects.get().pk}/change/"' in body
    assert 'href="/offers/500/"' in body


def test_the_360_lists_redemptions_of_the_members_credentials_or_external_id_newest_first(ada_360, program_manager_client):
    profile = program_manager_client.get("/members/41/").context["profile"]
    assert [r.credential_id for r in profile.redemptions.shown] == [12345, 900]
    assert profile.redemptions.total == 2
    body = program_manager_client.get("/members/41/").content.decode()
    for r in profile.redemptions.shown:
        assert f'href="/admin/sparkfly_sync/redemption/{r.pk}/change/"' in body


def test_the_360_shows_attentive_subscriptions_and_the_deliveries_sent_for_the_member(ada_360, program_manager_client):
    response = program_manager_client.get("/members/41/")
    profile = response.context["profile"]
    assert [(s.channel, s.status) for s in profile.subscriptions] == [("TEXT", "subscribed")]
    assert sorted(d.event_type for d in profile.deliveries.shown) == [
        "sparkfly.member.offer_state_created", "sparkfly.member.offer_state_redeemed",
    ]
    body = response.content.decode()
    assert "cy.event" not in body and "cy@example.com" not in body
    for d in profile.deliveries.shown:
        assert f'href="/admin/attentive_sync/delivery/{d.pk}/change/"' in body
    assert "subscribed (eligible)" in body and "dead" in body


def test_a_member_without_identifier_is_shown_without_attentive_records(program_manager_client):
    member(44, "", email="anon@example.com")
    delivery("")
    response = program_manager_client.get("/members/44/")
    assert response.status_code == 200
    assert response.context["profile"].deliveries.total == 0
    assert b"has no Sparkfly identifier" in response.content


def test_long_lists_show_the_newest_fifty_and_the_count(ada, program_manager_client):
    Credential.objects.bulk_create(
        Credential(sparkfly_id=1000 + i, member_id=41, identifier=f"C{i}", synced_at=NOW) for i in range(60)
    )
    profile = program_manager_client.get("/members/41/").context["profile"]
    assert len(profile.credentials.shown) == 50 and profile.credentials.total == 60
    assert profile.credentials.shown[0].sparkfly_id == 1059


def rows_for(member_id: int, identifier: str, count: int) -> None:
    Offer.objects.bulk_create(Offer(sparkfly_id=600 + i, name=f"Offer {i}", synced_at=NOW) for i in range(count))
    for i in range(count):
        credential(2000 + member_id * 100 + i, member_id, offer_ids=[600 + i], channel_id=9)
        redemption(2000 + member_id * 100 + i, offer_id=600 + i, delivery=delivery(identifier))
        IssuanceRequest.objects.create(idempotency_key=uuid.uuid4(), member_id=member_id, offer_ids=[600 + i])
        LoyaltyEnrollment.objects.create(sparkfly_id=3000 + member_id * 100 + i, member_id=member_id, program_id=7, synced_at=NOW)
    SubscriptionState.objects.create(client_user_id=identifier, channel="EMAIL", address="x@example.com",
                                     status="subscribed", last_action="subscribe")


@pytest.mark.parametrize("count", [1, 20])
def test_the_360_costs_the_same_queries_whatever_the_member_holds(program_manager_client, django_assert_max_num_queries, count):
    member(41, "ada-41")
    Channel.objects.create(sparkfly_id=9, name="App channel", synced_at=NOW)
    LoyaltyProgram.objects.create(sparkfly_id=7, name="Stars", synced_at=NOW)
    rows_for(41, "ada-41", count)
    # session, user, permissions (2), member, enrollments, credentials, their ids, redemptions,
    # issuances, subscriptions, deliveries, offers
    with django_assert_max_num_queries(14):  # 13, and the alert banner's row
        response = program_manager_client.get("/members/41/")
    profile = response.context["profile"]
    assert (profile.credentials.total, profile.redemptions.total, profile.deliveries.total) == (count, count, count)
    assert len(profile.enrollments) == count and profile.issuance_requests.total == count


@pytest.mark.parametrize("path", ["/members/404/", f"/members/{2**63}/", "/members/" + "9" * 40 + "/", "/members/0/"])
def test_an_unknown_or_impossible_member_id_gets_the_portals_not_found_page(ada, program_manager_client, path):
    response = program_manager_client.get(path)
    assert response.status_code == 404
    assert b"Not found" in response.content and b"pico.min.css" in response.content
