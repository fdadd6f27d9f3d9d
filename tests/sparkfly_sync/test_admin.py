"""The Sparkfly admin, through Django's test client as a superuser, on the real PostgreSQL.

Actions that call Sparkfly talk to the sandbox over loopback HTTP; "Sync all" defers a real
procrastinate job, checked in procrastinate's own table.
"""

from __future__ import annotations

from datetime import timedelta
from html.parser import HTMLParser
from urllib.parse import urljoin

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from procrastinate.contrib.django.models import ProcrastinateJob

from sparkfly_sync.client import MEMBERS_PATH, OFFERS_PATH, client_from_settings
from sparkfly_sync.models import (
    Channel,
    Credential,
    LoyaltyEnrollment,
    LoyaltyProgram,
    Member,
    Merchant,
    Offer,
    OfferChannel,
    Store,
    SyncRun,
)
from sparkfly_sync.sync import sync_resource

pytestmark = pytest.mark.django_db

NOW = timezone.now()
MIRRORED = (Member, Merchant, Store, Channel, Offer, OfferChannel, Credential, LoyaltyProgram, LoyaltyEnrollment)
ALL_MODELS = (*MIRRORED, SyncRun)


def url(model, view: str = "changelist", *args) -> str:
    return reverse(f"admin:sparkfly_sync_{model._meta.model_name}_{view}", args=args)


def mirror(model, sparkfly_id: int | None = None, **fields):
    if model is not OfferChannel:
        fields["sparkfly_id"] = sparkfly_id
    fields.setdefault("raw", {"id": sparkfly_id})
    return model.objects.create(synced_at=NOW, **fields)


@pytest.fixture
def account():
    """One mirrored row of every kind, related the way Sparkfly relates them."""
    merchant = mirror(Merchant, 11, name="Blue Bottle", is_active=True)
    store = mirror(Store, 21, merchant_id=11, name="Blue Bottle #1", number="0001", city="Oakland", state="CA")
    channel = mirror(Channel, 31, name="Attentive SMS")
    offer = mirror(Offer, 41, merchant_id=11, name="Free Latte", status="approved", max_redemptions=1000,
                   max_redemptions_per_member=1, expires_at=NOW + timedelta(days=30))
    link = mirror(OfferChannel, offer_id=41, channel_id=31, xid="XID-LATTE")
    member = mirror(Member, 51, identifier="member-000051", email="ada.lovelace@example.com", phone="+14155550134",
                    first_name="Ada", last_name="Lovelace", notification_mode="app")
    credential = mirror(Credential, 61, identifier="CODE-61", status="open", member_id=51, channel_id=31, store_id=21,
                        offer_ids=[41])
    program = mirror(LoyaltyProgram, 71, name="Bean Rewards", status="active")
    enrollment = mirror(LoyaltyEnrollment, 81, member_id=51, program_id=71, external_id="EXT-81", status="active",
                        point_balance=120, fraud_risk_level="none")
    run = SyncRun.objects.create(resource="members", status=SyncRun.Status.FAILED, finished_at=NOW,
                                 failure="Sparkfly did not answer in time",
                                 error_samples=["member 3 of page 2: missing 'id'"])
    return {
        Merchant: merchant, Store: store, Channel: channel, Offer: offer, OfferChannel: link, Member: member,
        Credential: credential, LoyaltyProgram: program, LoyaltyEnrollment: enrollment, SyncRun: run,
    }


@pytest.fixture
def sandbox_settings(settings, sparkfly_sandbox):
    settings.SPARKFLY_API_URL = sparkfly_sandbox.base_url
    settings.SPARKFLY_IDENTITY = settings.SPARKFLY_KEY = "sandbox"
    return sparkfly_sandbox


class _ConfirmationForm(HTMLParser):
    """Where the confirmation form (the one carrying ``confirmed``) posts, and its hidden fields."""

    def __init__(self) -> None:
        super().__init__()
        self._form: tuple[str, list] | None = None
        self.action: str | None = None
        self.fields: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self._form = (attrs.get("action") or "", [])
        elif tag == "input" and self._form and attrs.get("type") == "hidden":
            self._form[1].append((attrs["name"], attrs.get("value", "")))

    def handle_endtag(self, tag):
        if tag == "form" and self._form:
            action, fields = self._form
            if any(name == "confirmed" for name, _ in fields):
                self.action, self.fields = action, [f for f in fields if f[0] != "csrfmiddlewaretoken"]
            self._form = None


def run_action(client, model, action: str, rows=(), *, confirm=True, path=None, select_across=False):
    """Pick ``action`` on the changelist like a person would; answer its confirmation page by
    posting back its hidden fields to the same URL, as the browser does."""
    path = path or url(model)
    response = client.post(
        path,
        {"action": action, "index": 0, "select_across": int(select_across), "_selected_action": [r.pk for r in rows]},
    )
    if confirm and response.status_code == 200 and b'name="confirmed"' in response.content:
        form = _ConfirmationForm()
        form.feed(response.content.decode())
        data: dict[str, list[str]] = {}
        for name, value in form.fields:
            data.setdefault(name, []).append(value)
        response = client.post(urljoin(path, form.action), data)
    return response


def messages_of(client, response) -> list[tuple[str, str]]:
    """(level, text) of the messages shown after the action's redirect."""
    assert response.status_code == 302, response.content[:500]
    page = client.get(response["Location"])
    return [(message.level_tag, str(message)) for message in page.context["messages"]]


# --- pages -------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda model: model.__name__)
def test_changelist_and_change_page_load_with_data(admin_client, account, model):
    row = account[model]

    changelist = admin_client.get(url(model))
    change = admin_client.get(url(model, "change", row.pk))

    assert changelist.status_code == 200
    assert list(changelist.context["cl"].result_list) == [row]
    assert change.status_code == 200
    assert change.context["original"] == row


def test_site_header_names_the_portal(admin_client):
    assert "Sparkfly ↔ Attentive portal" in admin_client.get(reverse("admin:index")).content.decode()


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda model: model.__name__)
def test_rows_cannot_be_added_changed_or_deleted(admin_client, account, model):
    row = account[model]
    before = model.objects.values().get(pk=row.pk)

    assert admin_client.get(url(model, "add")).status_code == 403
    assert admin_client.post(url(model, "delete", row.pk), {"post": "yes"}).status_code == 403
    assert admin_client.post(url(model, "change", row.pk), {"status": "hacked", "name": "hacked"}).status_code == 403
    actions = admin_client.get(url(model)).context["action_form"].fields["action"].choices
    assert "delete_selected" not in [name for name, _ in actions]
    assert model.objects.values().get(pk=row.pk) == before


def test_change_page_shows_every_field_read_only(admin_client, account):
    page = admin_client.get(url(Offer, "change", account[Offer].pk))

    assert page.context["adminform"].form.fields == {}  # nothing editable
    assert b'name="_save"' not in page.content
    assert "Free Latte" in page.content.decode()


def test_raw_payload_is_pretty_printed_and_escaped(admin_client):
    member = mirror(Member, 5, identifier="m-5", raw={"id": 5, "identifier": "<script>alert('x')</script>"})

    page = admin_client.get(url(Member, "change", member.pk)).content.decode()

    assert "<script>alert(" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert '<pre style="white-space: pre-wrap">{\n  &quot;id&quot;: 5,\n' in page


def test_secrets_in_payloads_and_callback_urls_are_never_shown(admin_client):
    secret_url = "https://portal.example.com/hooks/sparkfly/channels/8c1e0e9a/s3cr3t-value/conversions"
    channel = mirror(Channel, 31, name="SMS", conversion_callback_url=secret_url,
                     raw={"id": 31, "conversion_callback_url": secret_url})
    link = mirror(OfferChannel, offer_id=41, channel_id=31, xid="X1",
                  raw={"id": 9001, "xid": "X1", "security_key": "s3cr3t-value",
                       "formatting": {"api_key": "s3cr3t-value"}})

    pages = [
        admin_client.get(url(Channel)),
        admin_client.get(url(Channel, "change", channel.pk)),
        admin_client.get(url(OfferChannel, "change", link.pk)),
    ]

    for page in pages:
        assert page.status_code == 200
        assert "s3cr3t-value" not in page.content.decode()
    assert "https://portal.example.com/… (path hidden)" in pages[1].content.decode()
    assert "&quot;xid&quot;: &quot;X1&quot;" in pages[2].content.decode()  # the rest of the payload stays


def test_relations_link_to_the_related_page_or_show_the_bare_sparkfly_id(admin_client, account):
    mirror(Credential, 62, identifier="CODE-62", member_id=424242, channel_id=31)  # its member is not mirrored

    page = admin_client.get(url(Credential)).content.decode()

    assert f'<a href="{url(Member, "change", account[Member].pk)}">member-000051</a>' in page
    assert f'<a href="{url(Channel, "change", account[Channel].pk)}">Attentive SMS</a>' in page
    assert "<td class=\"field-member_link\">424242</td>" in page


def test_member_page_lists_its_newest_credentials_and_enrollments(admin_client, account):
    member = account[Member]
    for n in range(55):
        mirror(Credential, 1000 + n, identifier=f"BULK-{n:02d}", status="open", member_id=member.sparkfly_id)
    mirror(Credential, 5000, identifier="SOMEONE-ELSE", member_id=999)

    page = admin_client.get(url(Member, "change", member.pk)).content.decode()

    assert "BULK-54" in page and "BULK-05" in page  # the newest 50 of 55 (+ CODE-61, older still)
    assert "BULK-04" not in page and "CODE-61" not in page
    assert "SOMEONE-ELSE" not in page
    assert f'{url(Credential)}?member_id={member.sparkfly_id}' in page
    assert f'<a href="{url(LoyaltyEnrollment, "change", account[LoyaltyEnrollment].pk)}">81</a>' in page
    assert "Bean Rewards" in page
    # The "all credentials" link works and lists exactly this member's 56.
    listed = admin_client.get(f"{url(Credential)}?member_id={member.sparkfly_id}")
    assert listed.context["cl"].result_count == 56


def test_offer_page_lists_its_channel_links_with_xids(admin_client, account):
    page = admin_client.get(url(Offer, "change", account[Offer].pk)).content.decode()

    assert "XID-LATTE" in page
    assert f'<a href="{url(Channel, "change", account[Channel].pk)}">Attentive SMS</a>' in page
    assert "1000 in total · 1 per member" in admin_client.get(url(Offer)).content.decode()


def test_sync_run_page_shows_its_failure_and_error_samples(admin_client, account):
    page = admin_client.get(url(SyncRun, "change", account[SyncRun].pk)).content.decode()

    assert "Sparkfly did not answer in time" in page
    assert "member 3 of page 2: missing &#x27;id&#x27;" in page


# --- search and filters ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "term",
    ["Ada.Lovelace@EXAMPLE.com", "ada.lovelace@example.com", "(415) 555-0134", "+1 415 555 0134", "51",
     "member-000051"],
)
def test_member_search_by_email_phone_id_or_identifier(admin_client, account, term):
    mirror(Member, 52, identifier="member-000052", email="grace@example.com", phone="+14155550199")

    found = admin_client.get(url(Member), {"q": term}).context["cl"].result_list

    assert [member.sparkfly_id for member in found] == [51]


def test_member_search_reads_the_largest_bigint_as_an_id_and_one_more_as_text_only(admin_client):
    mirror(Member, 2**63 - 1, identifier="member-max")
    mirror(Member, 7, identifier=str(2**63))

    def found(term):
        return [m.sparkfly_id for m in admin_client.get(url(Member), {"q": term}).context["cl"].result_list]

    assert found(str(2**63 - 1)) == [2**63 - 1]
    assert found(str(2**63)) == [7]  # past bigint: only the identifier can match


@pytest.mark.parametrize(
    ("model", "term", "expected"),
    [
        (Credential, "CODE-61", [61]),
        (Credential, "61", [61]),
        (Credential, "51", [61]),  # its member's Sparkfly id
        (LoyaltyEnrollment, "EXT-81", [81]),
        (LoyaltyEnrollment, "51", [81]),
        (Offer, "latte", [41]),
        (Credential, "nothing-like-it", []),
    ],
)
def test_search_of_other_mirrors(admin_client, account, model, term, expected):
    found = admin_client.get(url(model), {"q": term}).context["cl"].result_list

    assert [row.sparkfly_id for row in found] == expected


def test_offer_channel_search_by_xid(admin_client, account):
    mirror(OfferChannel, offer_id=42, channel_id=31, xid="XID-OTHER")

    found = admin_client.get(url(OfferChannel), {"q": "XID-LATTE"}).context["cl"].result_list

    assert list(found) == [account[OfferChannel]]


@pytest.mark.parametrize(
    ("model", "query", "expected"),
    [
        (Member, {"has_phone": "yes"}, [51]),
        (Member, {"has_phone": "no"}, [52]),
        (Member, {"has_email": "no"}, [52]),
        (Member, {"notification_mode": "app"}, [51]),
        (Member, {"notification_mode": "__other__"}, [52]),
        (Credential, {"status": "redeemed"}, [63]),
        (Credential, {"status": "__other__"}, [64]),
        (Credential, {"channel__sparkfly_id__exact": "31"}, [61]),
        (LoyaltyEnrollment, {"fraud_risk_level": "none"}, [81]),
        (Offer, {"status": "approved"}, [41]),
    ],
)
def test_filters(admin_client, account, model, query, expected):
    mirror(Member, 52, identifier="no-contact", notification_mode="")
    mirror(Credential, 63, status="redeemed")
    mirror(Credential, 64, status="reissued")  # a status Sparkfly may add later

    found = admin_client.get(url(model), query).context["cl"].result_list

    assert sorted(row.sparkfly_id for row in found) == expected


@pytest.mark.parametrize("model", [Credential, LoyaltyEnrollment, Member, Store, OfferChannel])
def test_changelist_queries_do_not_grow_with_rows(admin_client, model):
    def populate(count: int) -> None:
        for mirrored in MIRRORED:
            mirrored.objects.all().delete()
        for n in range(1, count + 1):
            # Half the relations point at mirrored rows, half at rows not mirrored yet.
            related = n if n % 2 else 100000 + n
            if model is Credential:
                mirror(Member, n, identifier=f"m{n}")
                mirror(Credential, n, identifier=f"c{n}", member_id=related, channel_id=related)
            elif model is LoyaltyEnrollment:
                mirror(Member, n, identifier=f"m{n}")
                mirror(LoyaltyEnrollment, n, member_id=related, program_id=related)
            elif model is Store:
                mirror(Merchant, n, name=f"merchant {n}")
                mirror(Store, n, merchant_id=related, name=f"store {n}")
            elif model is OfferChannel:
                mirror(Offer, n, name=f"offer {n}")
                mirror(OfferChannel, offer_id=related, channel_id=n, xid=f"x{n}")
            else:
                mirror(Member, n, identifier=f"m{n}")

    def queries_for_page(count: int) -> int:
        populate(count)
        with CaptureQueriesContext(connection) as queries:
            response = admin_client.get(url(model))
        assert response.status_code == 200
        assert len(response.context["cl"].result_list) == count
        return len(queries)

    assert queries_for_page(5) == queries_for_page(50)


# --- resync ------------------------------------------------------------------------------------


def test_resync_asks_for_confirmation_before_calling_sparkfly(admin_client, sandbox_settings):
    sync_resource("members", client=client_from_settings())
    rows = list(Member.objects.order_by("sparkfly_id")[:3])
    requests_before = len(sandbox_settings.sandbox.requests_log)

    page = run_action(admin_client, Member, "resync_selected", rows, confirm=False)

    assert page.status_code == 200
    assert "Resync 3 members from Sparkfly?" in page.content.decode()
    assert b'value="Confirm"' in page.content
    assert len(sandbox_settings.sandbox.requests_log) == requests_before


def test_resync_refreshes_the_selected_row_from_sparkfly(admin_client, sandbox_settings):
    sync_resource("members", client=client_from_settings())
    member = Member.objects.exclude(email="").order_by("sparkfly_id").first()
    good = Member.objects.values("email", "identifier", "raw").get(pk=member.pk)
    Member.objects.filter(pk=member.pk).update(email="stale@example.com", identifier="stale", raw={})

    response = run_action(admin_client, Member, "resync_selected", [member])

    assert Member.objects.values("email", "identifier", "raw").get(pk=member.pk) == good
    assert sandbox_settings.sandbox.count_requests(f"{MEMBERS_PATH}/{member.sparkfly_id}", "GET") == 1
    assert messages_of(admin_client, response) == [("success", "Refreshed 1 member from Sparkfly.")]


def test_resync_of_all_search_results_keeps_the_search_through_the_confirmation(admin_client, sandbox_settings):
    sync_resource("members", client=client_from_settings())
    target, *others = Member.objects.order_by("sparkfly_id")[:3]
    Member.objects.filter(pk__in=[target.pk, *(m.pk for m in others)]).update(identifier="stale")
    Member.objects.filter(pk=target.pk).update(email="ada@example.com")
    searched = f"{url(Member)}?q=ada@example.com"

    # "Select all N matching" ticks the page's rows and sets select_across.
    confirmation = run_action(admin_client, Member, "resync_selected", [target], path=searched, select_across=True,
                              confirm=False)
    response = run_action(admin_client, Member, "resync_selected", [target], path=searched, select_across=True)

    assert "Resync 1 member from Sparkfly?" in confirmation.content.decode()
    assert b'name="select_across" value="1"' in confirmation.content

    assert Member.objects.get(pk=target.pk).identifier != "stale"
    assert [m.identifier for m in Member.objects.filter(pk__in=[m.pk for m in others])] == ["stale", "stale"]
    assert messages_of(admin_client, response) == [("success", "Refreshed 1 member from Sparkfly.")]


def test_resync_reports_rows_sparkfly_no_longer_has_and_keeps_them(admin_client, sandbox_settings):
    sync_resource("members", client=client_from_settings())
    known = Member.objects.order_by("sparkfly_id").first()
    gone = mirror(Member, 999999, identifier="deleted-at-sparkfly")

    response = run_action(admin_client, Member, "resync_selected", [known, gone])

    assert messages_of(admin_client, response) == [
        ("success", "Refreshed 1 member from Sparkfly."),
        ("warning", "Sparkfly no longer has 1 member (Sparkfly ids 999999); they stay in the mirror."),
    ]
    assert Member.objects.filter(sparkfly_id=999999).exists()


def test_resync_of_offer_channel_links_refetches_their_offer(admin_client, sandbox_settings):
    client = client_from_settings()
    sync_resource("channels", client=client)
    sync_resource("offers", client=client)
    link = OfferChannel.objects.order_by("pk").first()
    xid = link.xid
    OfferChannel.objects.filter(pk=link.pk).update(xid="stale")

    response = run_action(admin_client, OfferChannel, "resync_selected", [link])

    assert OfferChannel.objects.get(pk=link.pk).xid == xid
    assert messages_of(admin_client, response) == [("success", "Refreshed 1 offer from Sparkfly.")]
    assert sandbox_settings.sandbox.count_requests(f"{OFFERS_PATH}/{link.offer_id}", "GET") == 2  # sync + resync


def test_resync_when_sparkfly_is_not_configured_shows_an_error_not_a_500(admin_client, account, settings):
    settings.SPARKFLY_API_URL = ""

    response = run_action(admin_client, Member, "resync_selected", [account[Member]])

    [(level, text)] = messages_of(admin_client, response)
    assert level == "error"
    assert text.startswith("Nothing was resynced: Sparkfly is not configured: set SPARKFLY_API_URL")


def test_resync_reports_a_sparkfly_error_in_sparkfly_words(admin_client, sandbox_settings):
    sync_resource("members", client=client_from_settings())
    member = Member.objects.order_by("sparkfly_id").first()
    sandbox_settings.sandbox.inject_fault(
        f"{MEMBERS_PATH}/{member.sparkfly_id}", status=422, body='{"error":"member is locked for review"}'
    )

    response = run_action(admin_client, Member, "resync_selected", [member])

    [(level, text)] = messages_of(admin_client, response)
    assert level == "error"
    assert text.startswith("1 could not be refreshed: member")
    assert "member is locked for review" in text


def test_resync_refuses_a_selection_over_the_cap(admin_client, sandbox_settings):
    for n in range(1, 102):
        mirror(Member, n, identifier=f"m{n}")
    requests_before = len(sandbox_settings.sandbox.requests_log)

    response = admin_client.post(
        url(Member), {"action": "resync_selected", "index": 0, "select_across": 1, "_selected_action": ["1"]}
    )

    [(level, text)] = messages_of(admin_client, response)
    assert level == "error"
    assert text.startswith("Select at most 100 rows to resync")
    assert len(sandbox_settings.sandbox.requests_log) == requests_before


# --- sync all ----------------------------------------------------------------------------------


def sync_jobs():
    return list(ProcrastinateJob.objects.filter(task_name="sparkfly_sync.sync_mirror").values("args", "status"))


# Autocommit, as in production: "already queued" is a failed INSERT that queue_mirror_sync
# must contain in a savepoint.
@pytest.mark.django_db(transaction=True)
def test_sync_all_queues_one_job_for_the_resource_and_says_so_when_one_is_waiting(admin_client):
    # Nothing mirrored yet, so nothing to tick: exactly when a first sync is needed.
    confirmation = run_action(admin_client, Member, "sync_all", confirm=False)
    assert "Queue a full sync of members from Sparkfly?" in confirmation.content.decode()
    assert sync_jobs() == []

    first = run_action(admin_client, Member, "sync_all")
    first_messages = messages_of(admin_client, first)
    second = run_action(admin_client, Member, "sync_all")
    second_messages = messages_of(admin_client, second)
    other_resource = run_action(admin_client, Channel, "sync_all")

    assert sync_jobs() == [
        {"args": {"resources": ["members"]}, "status": "todo"},
        {"args": {"resources": ["channels"]}, "status": "todo"},
    ]
    assert messages_of(admin_client, other_resource)[0][0] == "info"
    runs = url(SyncRun)
    assert first_messages == [("info", f'Queued a sync of members. Follow it on <a href="{runs}">sync runs</a>.')]
    [(level, text)] = second_messages
    assert level == "warning"
    assert text.startswith("A Sparkfly sync is already waiting for a worker, so no other was queued")


def test_sync_all_from_the_sync_runs_page_queues_every_resource(admin_client, account):
    response = run_action(admin_client, SyncRun, "sync_all", [account[SyncRun]])

    assert sync_jobs() == [{"args": {"resources": None}, "status": "todo"}]
    assert messages_of(admin_client, response)[0][1].startswith("Queued a sync of every Sparkfly resource.")


def test_sync_all_from_offer_channels_syncs_offers(admin_client, account):
    run_action(admin_client, OfferChannel, "sync_all")

    assert sync_jobs() == [{"args": {"resources": ["offers"]}, "status": "todo"}]


def test_view_only_staff_can_browse_but_not_run_actions(client, account):
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_member"))
    client.force_login(viewer)

    page = client.get(url(Member))
    response = client.post(url(Member), {"action": "sync_all", "index": 0, "_selected_action": [account[Member].pk]})

    assert page.status_code == 200
    assert page.context["action_form"] is None  # neither action is offered
    assert response.status_code == 200
    assert sync_jobs() == []
