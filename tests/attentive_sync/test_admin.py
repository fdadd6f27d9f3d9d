"""The Attentive admin, through Django's test client as a superuser, on the real PostgreSQL.

"Verify connection" talks to the Attentive sandbox over loopback HTTP; the delivery actions
queue real procrastinate jobs, checked in procrastinate's own table.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from html.parser import HTMLParser
from urllib.parse import urljoin

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django.utils.duration import duration_string
from django.utils.html import escape
from procrastinate.contrib.django.models import ProcrastinateJob

from attentive_sync import registry
from attentive_sync.client import ME_PATH
from attentive_sync.models import AttentiveSettings, Delivery, DeliveryAttempt

pytestmark = pytest.mark.django_db

KEY = "sk_live_UNIQUE123456"
MASK = "••••3456"


def settings_url(view: str = "change") -> str:
    args = [1] if view in ("change", "history") else []
    return reverse(f"admin:attentive_sync_attentivesettings_{view}", args=args)


def deliveries_url(view: str = "changelist", *args) -> str:
    return reverse(f"admin:attentive_sync_delivery_{view}", args=args)


class Forms(HTMLParser):
    """Every form of a page: where it posts, its hidden fields and its named buttons."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.forms: list[dict] = []
        self._open: dict | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self._open = {"action": attrs.get("action") or "", "hidden": [], "buttons": []}
            self.forms.append(self._open)
        elif self._open is not None and tag == "input" and attrs.get("type") == "hidden":
            if attrs["name"] != "csrfmiddlewaretoken":
                self._open["hidden"].append((attrs["name"], attrs.get("value", "")))
        elif self._open is not None and tag == "button" and attrs.get("name"):
            self._open["buttons"].append((attrs["name"], attrs["value"]))

    def handle_endtag(self, tag):
        if tag == "form":
            self._open = None


def submit(client, page_url: str, response, *, holding: str, button: tuple[str, str] | None = None):
    """Submit the form of ``response`` (shown at ``page_url``) whose hidden fields or action
    contain ``holding``, as the browser would; follows the redirect."""
    [form] = [f for f in Forms(response.content.decode()).forms if holding in f["action"] or
              any(holding == name for name, _ in f["hidden"])]
    data: dict[str, list[str]] = {}
    for name, value in [*form["hidden"], *([button] if button else [])]:
        data.setdefault(name, []).append(value)
    return client.post(urljoin(page_url, form["action"]), data, follow=True)


def shown_messages(response) -> list[tuple[str, str]]:
    return [(message.level_tag, str(message)) for message in response.context["messages"]]


def raw_api_key() -> str | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT api_key FROM attentive_sync_attentivesettings")
        return cursor.fetchone()[0]


@pytest.fixture
def event_types(monkeypatch):
    """Exactly these registered event types for the test (registrations made in apps'
    ready() are put back afterwards)."""
    monkeypatch.setattr(registry, "_REGISTERED", {})
    registry.register_event_type("test.offer_issued", "Offer issued")
    registry.register_event_type("test.redeemed", "Redemption")
    registry.register_event_type("test.points_redeemed", "Points redeemed")
    return registry.event_types()


def store(**fields) -> AttentiveSettings:
    settings = AttentiveSettings.load()
    for name, value in fields.items():
        setattr(settings, name, value)
    settings.save()
    return settings


def save_settings(client, **changes):
    """POST the settings form as a person would: every field as the page shows it, plus ``changes``."""
    settings = AttentiveSettings.load()
    data = {
        "new_api_key": "",
        "clear_api_key": False,
        "api_url": settings.api_url,
        "sign_up_source_id": settings.sign_up_source_id,
        "enabled": settings.enabled,
        "forwarded_event_types": [t for t in registry.event_types() if settings.forwards(t)],
        "rate_limit_per_second": settings.rate_limit_per_second,
        "max_event_age": duration_string(settings.max_event_age),
        **changes,
    }
    return client.post(settings_url(), data)


# --- the settings page -------------------------------------------------------------------------


def test_the_settings_list_leads_to_the_one_row_creating_it(admin_client):
    assert not AttentiveSettings.objects.exists()

    response = admin_client.get(settings_url("changelist"))

    assert response.status_code == 302
    assert response["Location"] == settings_url()
    assert list(AttentiveSettings.objects.values_list("pk", flat=True)) == [1]
    assert admin_client.get(response["Location"]).status_code == 200


def test_the_settings_cannot_be_added_or_deleted(admin_client):
    AttentiveSettings.load()

    assert admin_client.get(settings_url("add")).status_code == 403
    assert admin_client.post(reverse("admin:attentive_sync_attentivesettings_delete", args=[1]),
                             {"post": "yes"}).status_code == 403
    assert AttentiveSettings.objects.exists()
    assert b'class="deletelink"' not in admin_client.get(settings_url()).content


def test_the_api_key_is_write_only_and_shown_masked(admin_client, caplog):
    caplog.set_level(logging.DEBUG)

    saved = save_settings(admin_client, new_api_key=KEY)
    pages = [admin_client.get(url) for url in (settings_url(), settings_url("history"), reverse("admin:index"))]

    assert saved.status_code == 302 and saved["Location"] == settings_url()
    assert AttentiveSettings.load().key == KEY
    for page in pages:
        assert page.status_code == 200
        assert "UNIQUE" not in page.content.decode()
    settings_page = pages[0].content.decode()
    assert f"Stored key: {MASK}. Leave empty to keep it." in settings_page
    assert '<input type="password" name="new_api_key"' in settings_page
    [entry] = LogEntry.objects.filter(object_id="1")
    assert entry.get_change_message() == "Changed API key."
    assert "UNIQUE" not in entry.change_message + entry.object_repr
    assert KEY not in caplog.text


def test_the_api_key_is_encrypted_in_the_database(admin_client):
    save_settings(admin_client, new_api_key=KEY)

    stored = raw_api_key()

    assert stored and "UNIQUE" not in stored and "3456" not in stored
    assert stored.startswith("gAAAAA")  # a Fernet token
    assert AttentiveSettings.objects.get(pk=1).key == KEY


def test_leaving_the_key_empty_keeps_it_without_rewriting_it(admin_client):
    save_settings(admin_client, new_api_key=KEY)
    stored = raw_api_key()

    response = save_settings(admin_client, rate_limit_per_second=99)

    assert response.status_code == 302
    settings = AttentiveSettings.load()
    assert (settings.key, settings.rate_limit_per_second) == (KEY, 99)
    assert raw_api_key() == stored
    assert LogEntry.objects.order_by("-pk").first().get_change_message() == "Changed Rate limit per second."


def test_clearing_the_key_removes_it(admin_client):
    save_settings(admin_client, new_api_key=KEY)

    response = save_settings(admin_client, clear_api_key=True)
    page = admin_client.get(settings_url()).content.decode()

    assert response.status_code == 302
    assert AttentiveSettings.load().key == ""
    assert raw_api_key() is None
    assert "No key is stored." in page


def test_a_new_key_and_clearing_together_are_refused(admin_client):
    save_settings(admin_client, new_api_key=KEY)

    response = save_settings(admin_client, new_api_key="sk_live_OTHER98765", clear_api_key=True)

    assert response.status_code == 200
    assert "Either enter a new API key or clear the stored one, not both." in response.content.decode()
    assert "OTHER" not in response.content.decode()
    assert AttentiveSettings.load().key == KEY


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("max_event_age", "12:00:00", "The maximum event age must stay under 12 hours: Attentive does not trigger "
                                      "journeys for events older than that."),
        ("max_event_age", "00:00:00", "The maximum event age must be positive."),
        ("max_event_age", "eight hours", "Enter a valid duration."),
        ("rate_limit_per_second", "0", "Ensure this value is greater than or equal to 1."),
        ("rate_limit_per_second", "10001", "Ensure this value is less than or equal to 10000."),
        ("api_url", "not a url", "Enter a valid URL."),
    ],
)
def test_invalid_values_are_refused_with_readable_errors_and_the_typed_key_not_shown(admin_client, field, value,
                                                                                      error):
    before = AttentiveSettings.load()

    response = save_settings(admin_client, **{field: value}, new_api_key=KEY)

    assert response.status_code == 200
    assert response.context["adminform"].form.errors[field] == [error]
    assert "UNIQUE" not in response.content.decode()
    after = AttentiveSettings.load()
    assert (after.key, after.max_event_age, after.rate_limit_per_second) == (
        "", before.max_event_age, before.rate_limit_per_second
    )


def test_an_api_url_typed_without_a_scheme_means_https(admin_client):
    response = save_settings(admin_client, api_url="api.attentivemobile.com")

    assert response.status_code == 302
    assert AttentiveSettings.load().api_url == "https://api.attentivemobile.com"


# --- where the key may go (README "Outbound HTTP") ------------------------------------------------


@pytest.fixture
def production_allowlist(settings):
    """The allowlist as production has it: Attentive's host, no loopback."""
    settings.ATTENTIVE_ALLOWED_HOSTS = ["api.attentivemobile.com"]
    settings.OUTBOUND_ALLOW_LOOPBACK = False
    return settings


@pytest.mark.parametrize(
    ("api_url", "error"),
    [
        ("https://attentive.example.com",
         "attentive.example.com is not an allowed Attentive host: the Attentive API key is sent only to "
         "api.attentivemobile.com. A deployment that needs another host adds it to ATTENTIVE_ALLOWED_HOSTS."),
        ("http://api.attentivemobile.com",
         "The Attentive API URL must use https: over plain http the key would cross the network unencrypted "
         "(http is allowed only for this machine's loopback)."),
        ("http://127.0.0.1:8200",
         "127.0.0.1 is not an allowed Attentive host: the Attentive API key is sent only to "
         "api.attentivemobile.com. The sandboxes on this machine's loopback need OUTBOUND_ALLOW_LOOPBACK=true."),
    ],
)
def test_a_url_the_key_may_not_go_to_is_refused(admin_client, production_allowlist, api_url, error):
    response = save_settings(admin_client, api_url=api_url, new_api_key=KEY)

    assert response.status_code == 200
    assert response.context["adminform"].form.errors["api_url"] == [error]
    after = AttentiveSettings.load()
    assert (after.api_url, after.key) == ("https://api.attentivemobile.com", "")


def test_the_page_names_the_allowed_hosts(admin_client, production_allowlist):
    page = admin_client.get(settings_url()).content.decode()

    assert "Allowed hosts: api.attentivemobile.com (ATTENTIVE_ALLOWED_HOSTS)." in page


def test_a_host_the_deployment_allows_is_accepted(admin_client, production_allowlist):
    production_allowlist.ATTENTIVE_ALLOWED_HOSTS = ["api.attentivemobile.com", "eu.attentive.example.com"]

    response = save_settings(admin_client, api_url="https://eu.attentive.example.com", new_api_key=KEY)

    assert response.status_code == 302
    assert AttentiveSettings.load().api_url == "https://eu.attentive.example.com"


def test_a_new_url_without_the_key_entered_again_is_refused(admin_client, attentive_sandbox):
    store(api_key=KEY)

    refused = save_settings(admin_client, api_url=attentive_sandbox.base_url)
    with_key = save_settings(admin_client, api_url=attentive_sandbox.base_url, new_api_key="sk_live_AGAIN98765")

    assert refused.status_code == 200
    assert refused.context["adminform"].form.errors["api_url"] == [
        "The API base URL changed: enter the API key again in this save (or clear the stored key). "
        "The stored key is never sent to a new URL without the person who knows it."
    ]
    assert with_key.status_code == 302
    after = AttentiveSettings.load()
    assert (after.api_url, after.key) == (attentive_sandbox.base_url, "sk_live_AGAIN98765")


def test_a_new_url_with_the_key_cleared_is_saved_without_a_key(admin_client, attentive_sandbox):
    store(api_key=KEY)

    response = save_settings(admin_client, api_url=attentive_sandbox.base_url, clear_api_key=True)

    assert response.status_code == 302
    after = AttentiveSettings.load()
    assert (after.api_url, after.key) == (attentive_sandbox.base_url, "")


def test_a_new_url_needs_no_key_when_none_is_stored_nor_a_trailing_slash(admin_client, attentive_sandbox):
    first = save_settings(admin_client, api_url=attentive_sandbox.base_url)
    store(api_key=KEY)
    slash = save_settings(admin_client, api_url=attentive_sandbox.base_url + "/")

    assert (first.status_code, slash.status_code) == (302, 302)
    assert AttentiveSettings.load().key == KEY


def test_event_type_switches_round_trip(admin_client, event_types):
    store(disabled_event_types=["retired.type"])  # no longer registered: kept as it is

    response = save_settings(admin_client, forwarded_event_types=["test.offer_issued", "test.points_redeemed"])
    page = admin_client.get(settings_url())

    assert response.status_code == 302
    assert AttentiveSettings.load().disabled_event_types == ["retired.type", "test.redeemed"]
    field = page.context["adminform"].form["forwarded_event_types"]
    assert field.value() == ["test.offer_issued", "test.points_redeemed"]
    html = page.content.decode()
    assert 'value="test.offer_issued" id="id_forwarded_event_types_0" checked' in html
    assert 'value="test.redeemed" id="id_forwarded_event_types_1">' in html  # unticked
    assert "Redemption (test.redeemed)" in html

    save_settings(admin_client, forwarded_event_types=list(event_types))
    assert AttentiveSettings.load().disabled_event_types == ["retired.type"]


def test_the_reason_nothing_is_sent_is_shown_as_a_warning(admin_client):
    switched_off = admin_client.get(settings_url()).content.decode()
    store(enabled=True)
    without_key = admin_client.get(settings_url()).content.decode()
    store(api_key=KEY)
    sending = admin_client.get(settings_url()).content.decode()

    warning = '<li class="warning">Nothing is sent to Attentive right now: {}.</li>'
    assert warning.format("forwarding to Attentive is switched off") in switched_off
    assert warning.format("no Attentive API key is set") in without_key
    assert "Nothing is sent to Attentive right now" not in sending


def test_saving_leaves_a_key_it_cannot_decrypt_as_it_was(admin_client, salts):
    salts(["old-salt"])
    store(api_key=KEY, enabled=True)
    stored = raw_api_key()
    salts(["new-salt"])  # the old salt dropped without being kept as a later one

    page = admin_client.get(settings_url()).content.decode()
    response = save_settings(admin_client, rate_limit_per_second=50)

    assert "The stored key cannot be decrypted with this deployment&#x27;s keys: enter it again." in page
    assert "the stored Attentive API key cannot be decrypted" in page  # the warning
    assert response.status_code == 302
    assert raw_api_key() == stored  # not encrypted a second time under the new salt
    salts(["old-salt"])
    assert AttentiveSettings.load().key == KEY


# --- "Verify connection" -------------------------------------------------------------------------


def verify(client):
    """Click "Verify connection" on the settings page; the messages shown after it."""
    page = client.get(settings_url())
    response = submit(client, settings_url(), page, holding=settings_url("verify"))
    assert response.status_code == 200
    assert response.redirect_chain == [(settings_url(), 302)]
    return shown_messages(response), response.content.decode()


def test_verify_shows_the_company_and_app_of_the_key(admin_client, attentive_sandbox, caplog):
    caplog.set_level(logging.DEBUG)
    sandbox_key = attentive_sandbox.sandbox.api_key
    store(api_key=sandbox_key, api_url=attentive_sandbox.base_url)

    shown, page = verify(admin_client)

    assert shown == [
        ("success", f"Connected to Attentive at {attentive_sandbox.base_url}: company “Sandbox Brand”, "
                    "app “Sandbox App”.")
    ]
    assert "Sandbox Brand" in page
    assert attentive_sandbox.sandbox.count_requests(ME_PATH, "GET") == 1
    assert f"Bearer {sandbox_key}" not in caplog.text


def test_verify_with_a_wrong_key_says_attentive_refused_it(admin_client, attentive_sandbox, caplog):
    caplog.set_level(logging.DEBUG)
    store(api_key=KEY, api_url=attentive_sandbox.base_url)

    shown, page = verify(admin_client)

    assert shown == [("error", "Attentive refused the key (401): the API key is not valid. "
                               "Check the key and its permissions.")]
    assert "UNIQUE" not in page
    assert KEY not in caplog.text


def test_verify_with_a_key_lacking_permission(admin_client, attentive_sandbox):
    store(api_key=attentive_sandbox.sandbox.api_key, api_url=attentive_sandbox.base_url)
    attentive_sandbox.sandbox.inject_fault(ME_PATH, status=403, body='{"error": {"message": "missing scope"}}')

    shown, _ = verify(admin_client)

    assert shown == [("error", "Attentive refused the key (403): missing scope. Check the key and its permissions.")]


def test_verify_when_attentive_fails_reports_its_error(admin_client, attentive_sandbox):
    store(api_key=attentive_sandbox.sandbox.api_key, api_url=attentive_sandbox.base_url)
    attentive_sandbox.sandbox.inject_fault(ME_PATH, status=503, body='{"message": "down for maintenance"}')

    shown, _ = verify(admin_client)

    assert shown == [("error", "Could not verify the connection: Attentive answered 503 to GET "
                               f"{attentive_sandbox.base_url}{ME_PATH}: down for maintenance")]


def test_verify_when_attentive_cannot_be_reached(admin_client, attentive_sandbox):
    base_url = attentive_sandbox.base_url
    attentive_sandbox.shutdown()  # nothing listens on its port any more
    store(api_key=KEY, api_url=base_url)

    [(level, text)] = verify(admin_client)[0]

    assert level == "error"
    assert text.startswith(f"Could not verify the connection: Attentive could not be reached for GET {ME_PATH}")


def test_verify_sends_nothing_to_a_stored_url_not_allowed(admin_client, attentive_sandbox_factory, settings, caplog):
    caplog.set_level(logging.DEBUG)
    settings.OUTBOUND_ALLOW_LOOPBACK, settings.ATTENTIVE_ALLOWED_HOSTS = False, ["api.attentivemobile.com"]
    elsewhere = attentive_sandbox_factory(api_key=KEY)
    # Stored past the form's validation: before the allowlist existed, or with SQL.
    store(api_key=KEY, api_url=elsewhere.base_url, enabled=True)

    shown, page = verify(admin_client)

    refused = (
        "127.0.0.1 is not an allowed Attentive host: the Attentive API key is sent only to api.attentivemobile.com. "
        "The sandboxes on this machine's loopback need OUTBOUND_ALLOW_LOOPBACK=true"
    )
    assert shown == [("error", f"Could not verify the connection: Nothing was sent to Attentive: {refused}.")]
    assert escape(f"Nothing is sent to Attentive right now: the API base URL is refused: {refused}.") in page
    assert elsewhere.sandbox.requests_log == []
    assert KEY not in caplog.text


def test_verify_without_a_key_says_so(admin_client):
    shown, _ = verify(admin_client)

    assert shown == [("error", "No API key is stored: enter one and save before verifying the connection.")]


def test_verify_only_answers_a_post(admin_client):
    assert admin_client.get(settings_url("verify")).status_code == 405


def test_view_only_staff_see_the_settings_masked_but_cannot_change_or_verify(client):
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_attentivesettings"))
    client.force_login(viewer)

    store(api_key=KEY, disabled_event_types=["test.redeemed"])

    page = client.get(settings_url())

    assert page.status_code == 200
    html = page.content.decode()
    assert 'name="new_api_key"' not in html and 'name="rate_limit_per_second"' not in html  # nothing editable
    assert f"Stored key: {MASK}. Leave empty to keep it." in html and "UNIQUE" not in html
    assert "test.redeemed" in html
    assert "Verify connection" not in html
    assert client.post(settings_url("verify")).status_code == 403
    assert save_settings(client, clear_api_key=True).status_code == 403
    assert AttentiveSettings.load().key == KEY


# --- the deliveries ------------------------------------------------------------------------------


def make_delivery(n: int, *, status=Delivery.Status.PENDING, age=timedelta(hours=1), event_type="test.redeemed",
                  **fields) -> Delivery:
    payload = {"type": event_type, "properties": {"n": n}, "externalEventId": f"evt-{n}"}
    return Delivery.objects.create(external_event_id=f"evt-{n}", event_type=event_type, payload=payload,
                                   occurred_at=timezone.now() - age, status=status, **fields)


def add_attempt(delivery: Delivery, *, minutes_ago: int, status_code=503, response_body="", error="") -> None:
    DeliveryAttempt.objects.create(delivery=delivery, started_at=timezone.now() - timedelta(minutes=minutes_ago),
                                   duration_ms=12.3, status_code=status_code, response_body=response_body,
                                   error=error, outcome=DeliveryAttempt.Outcome.RETRY)


def delivery_jobs() -> list[dict]:
    jobs = ProcrastinateJob.objects.filter(task_name="attentive_sync.deliver_event").order_by("id")
    return [job["args"] for job in jobs.values("args")]


def run_action(client, action: str, rows, *, path: str | None = None, confirm: bool = True, select_across=False):
    """Pick ``action`` on the changelist like a person; confirm its confirmation page, if any,
    by posting back its hidden fields to the same URL. Follows the final redirect."""
    path = path or deliveries_url()
    selection = {"select_across": int(select_across), "_selected_action": [r.pk for r in rows]}
    response = client.post(path, {"action": action, "index": 0, **selection})
    if confirm and response.status_code == 200 and b'name="confirmed"' in response.content:
        return submit(client, path, response, holding="confirmed")
    return client.get(response["Location"]) if response.status_code == 302 else response


def test_changelist_and_change_page_load_with_data(admin_client):
    error = "Attentive answered 503 to POST /v1/events/custom: " + "x" * 200
    failed = make_delivery(1, status=Delivery.Status.FAILED, age=timedelta(hours=3, minutes=5), attempts=2,
                           last_error=error)
    add_attempt(failed, minutes_ago=5)

    changelist = admin_client.get(deliveries_url())
    change = admin_client.get(deliveries_url("change", failed.pk))

    assert changelist.status_code == 200
    assert list(changelist.context["cl"].result_list) == [failed]
    row = changelist.content.decode()
    assert "3\xa0hours, 5\xa0minutes" in row
    assert error[:79] + "…" in row
    assert "x" * 100 not in row  # truncated in the list
    assert change.status_code == 200
    assert change.context["original"] == failed
    assert change.context["adminform"].form.fields == {}  # nothing editable
    assert "x" * 200 in change.content.decode()  # the whole error on its page


def test_deliveries_cannot_be_added_changed_or_deleted(admin_client):
    delivery = make_delivery(1)
    before = Delivery.objects.values().get(pk=delivery.pk)

    assert admin_client.get(deliveries_url("add")).status_code == 403
    assert admin_client.post(deliveries_url("delete", delivery.pk), {"post": "yes"}).status_code == 403
    assert admin_client.post(deliveries_url("change", delivery.pk), {"status": "delivered"}).status_code == 403
    choices = admin_client.get(deliveries_url()).context["action_form"].fields["action"].choices
    assert [name for name, _ in choices] == ["", "retry_now", "replay"]
    assert Delivery.objects.values().get(pk=delivery.pk) == before


def test_counts_by_status_above_the_list(admin_client):
    for n, status in enumerate(["pending", "failed", "failed", "delivered", "delivered", "delivered", "expired"]):
        make_delivery(n, status=status)

    with CaptureQueriesContext(connection) as queries:
        page = admin_client.get(deliveries_url(), {"status__exact": "failed"})

    assert page.context["status_counts"] == [
        ("pending", "pending", 1), ("failed", "failed, retry scheduled", 2), ("delivered", "delivered", 3),
        ("dead", "dead", 0), ("expired", "expired", 1),
    ]  # of every delivery, whatever the list's filter
    assert '<a href="?status__exact=delivered">delivered: 3</a>' in page.content.decode()
    grouped = [q["sql"] for q in queries.captured_queries if "GROUP BY" in q["sql"]]
    assert len(grouped) == 1 and grouped[0].startswith('SELECT "attentive_sync_delivery"."status"')


def test_payload_is_pretty_printed_and_escaped(admin_client):
    delivery = make_delivery(1)
    Delivery.objects.filter(pk=delivery.pk).update(
        payload={"type": "test.redeemed", "properties": {"offerName": "<script>alert('x')</script>"}}
    )

    page = admin_client.get(deliveries_url("change", delivery.pk)).content.decode()

    assert "<script>alert(" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert '<pre style="white-space: pre-wrap">{\n  &quot;type&quot;: &quot;test.redeemed&quot;,\n' in page


def test_attempts_are_inline_newest_first_bounded_and_truncated(admin_client):
    delivery = make_delivery(1)
    for minutes_ago in range(55, 0, -1):
        add_attempt(delivery, minutes_ago=minutes_ago, status_code=500 + minutes_ago % 10)
    add_attempt(delivery, minutes_ago=0, status_code=429, response_body="<b>slow down</b>" + "y" * 1000,
                error="Attentive answered 429")

    page = admin_client.get(deliveries_url("change", delivery.pk))

    [attempts] = page.context["inline_admin_formsets"]
    shown = [form.instance for form in attempts.formset.forms]
    assert len(shown) == 50
    assert [a.started_at for a in shown] == sorted((a.started_at for a in shown), reverse=True)
    assert shown[0].status_code == 429
    html = page.content.decode()
    assert "&lt;b&gt;slow down&lt;/b&gt;" in html and "<b>slow down" not in html
    assert "y" * 283 + "…" in html and "y" * 300 not in html
    assert "12 ms" in html
    assert "attempts (newest 50, newest first)" in html.lower()


def test_search_and_filters(admin_client, event_types):
    make_delivery(1, event_type="test.redeemed", last_error="Attentive answered 401")
    make_delivery(2, event_type="test.offer_issued", status=Delivery.Status.DEAD)
    make_delivery(3, event_type="someone.else")

    def found(query):
        return sorted(d.external_event_id for d in admin_client.get(deliveries_url(), query).context["cl"].result_list)

    assert found({"q": "evt-2"}) == ["evt-2"]
    assert found({"q": "answered 401"}) == ["evt-1"]
    assert found({"q": "offer_issued"}) == ["evt-2"]
    assert found({"status__exact": "dead"}) == ["evt-2"]
    assert found({"event_type": "test.redeemed"}) == ["evt-1"]
    assert found({"event_type": "__other__"}) == ["evt-3"]


def test_changelist_queries_do_not_grow_with_rows(admin_client):
    def queries_for_page(count: int) -> int:
        Delivery.objects.all().delete()
        for n in range(count):
            add_attempt(make_delivery(n, status=Delivery.Status.FAILED, last_error="boom"), minutes_ago=1)
        with CaptureQueriesContext(connection) as queries:
            response = admin_client.get(deliveries_url())
        assert len(response.context["cl"].result_list) == count
        return len(queries)

    assert queries_for_page(3) == queries_for_page(40)


def test_no_full_count_of_the_outbox_on_a_filtered_page(admin_client):
    make_delivery(1)

    with CaptureQueriesContext(connection) as queries:
        admin_client.get(deliveries_url(), {"q": "evt-1"})

    plain_counts = [q["sql"] for q in queries.captured_queries
                    if q["sql"].startswith('SELECT COUNT(*) AS "__count" FROM "attentive_sync_delivery"')
                    and "WHERE" not in q["sql"]]
    assert plain_counts == []


# --- retry now and replay --------------------------------------------------------------------------


def test_retry_now_queues_one_waiting_delivery(admin_client):
    later = timezone.now() + timedelta(minutes=10)
    failed = make_delivery(1, status=Delivery.Status.FAILED, next_attempt_at=later)

    response = run_action(admin_client, "retry_now", [failed])

    assert delivery_jobs() == [{"delivery_id": failed.pk}]
    failed.refresh_from_db()
    assert failed.status == Delivery.Status.FAILED and failed.next_attempt_at < later
    assert shown_messages(response) == [
        ("success", "Queued an immediate try of 1 delivery."),
        ("warning", "They wait until sending can go ahead: forwarding to Attentive is switched off."),
    ]


def test_retry_now_in_bulk_leaves_finished_deliveries_alone(admin_client):
    store(enabled=True, api_key=KEY)
    waiting = [make_delivery(1), make_delivery(2, status=Delivery.Status.FAILED)]
    finished = [make_delivery(3, status=Delivery.Status.DELIVERED), make_delivery(4, status=Delivery.Status.DEAD)]

    response = run_action(admin_client, "retry_now", [*waiting, *finished])

    assert sorted(job["delivery_id"] for job in delivery_jobs()) == [d.pk for d in waiting]
    assert shown_messages(response) == [
        ("success", "Queued an immediate try of 2 deliveries."),
        ("warning", "Left 2 deliveries alone: already delivered, dead or expired. Use “Replay” to send them again."),
    ]
    assert [d.status for d in Delivery.objects.filter(pk__in=[d.pk for d in finished]).order_by("pk")] == [
        "delivered", "dead"
    ]


def test_replay_asks_first_and_says_how_many_were_delivered(admin_client):
    rows = [make_delivery(1, status=Delivery.Status.DELIVERED), make_delivery(2, status=Delivery.Status.DEAD)]

    page = run_action(admin_client, "replay", rows, confirm=False)

    assert page.status_code == 200
    text = page.content.decode()
    assert "Replay 2 deliveries to Attentive?" in text
    assert "1 of them was already delivered:" in text
    assert "Deliveries older than the maximum event age (8 h) are skipped." in text
    assert delivery_jobs() == []
    assert [d.status for d in Delivery.objects.order_by("pk")] == ["delivered", "dead"]


def test_replay_sends_again_and_reports_deliveries_too_old(admin_client):
    store(enabled=True, api_key=KEY)
    delivered = make_delivery(1, status=Delivery.Status.DELIVERED, delivered_at=timezone.now())
    dead = make_delivery(2, status=Delivery.Status.DEAD)
    too_old = make_delivery(3, status=Delivery.Status.DELIVERED, age=timedelta(hours=9))

    response = run_action(admin_client, "replay", [delivered, dead, too_old])

    assert sorted(job["delivery_id"] for job in delivery_jobs()) == [delivered.pk, dead.pk]
    statuses = dict(Delivery.objects.values_list("external_event_id", "status"))
    assert statuses == {"evt-1": "pending", "evt-2": "pending", "evt-3": "delivered"}
    assert Delivery.objects.get(pk=delivered.pk).delivered_at is None
    assert shown_messages(response) == [
        ("success", "Queued 2 deliveries to be sent again under the same external event id."),
        ("warning", "Skipped 1 delivery older than the maximum event age (8 h): Attentive would not trigger "
                    "journeys for them."),
    ]


def test_replay_of_all_filtered_rows_keeps_the_filter_through_the_confirmation(admin_client):
    dead = [make_delivery(1, status=Delivery.Status.DEAD), make_delivery(2, status=Delivery.Status.DEAD)]
    delivered = make_delivery(3, status=Delivery.Status.DELIVERED)
    filtered = f"{deliveries_url()}?status__exact=dead"

    response = run_action(admin_client, "replay", dead[:1], path=filtered, select_across=True)

    assert sorted(job["delivery_id"] for job in delivery_jobs()) == [d.pk for d in dead]
    assert Delivery.objects.get(pk=delivered.pk).status == "delivered"
    assert shown_messages(response)[0] == ("success", "Queued 2 deliveries to be sent again under the same external "
                                                      "event id.")


def test_one_delivery_is_replayed_from_its_own_page(admin_client):
    delivery = make_delivery(1, status=Delivery.Status.DELIVERED)
    page_url = deliveries_url("change", delivery.pk)
    page = admin_client.get(page_url)

    confirmation = submit(admin_client, page_url, page, holding="_selected_action", button=("action", "replay"))
    confirmation_url = confirmation.request["PATH_INFO"] + "?" + confirmation.request["QUERY_STRING"]
    response = submit(admin_client, confirmation_url, confirmation, holding="confirmed")

    assert "Replay 1 delivery to Attentive?" in confirmation.content.decode()
    assert delivery_jobs() == [{"delivery_id": delivery.pk}]
    assert list(response.context["cl"].result_list) == [Delivery.objects.get(pk=delivery.pk)]  # the list, searched
    assert response.context["cl"].result_list[0].status == "pending"


def test_one_delivery_is_retried_from_its_own_page(admin_client):
    delivery = make_delivery(1, status=Delivery.Status.FAILED)
    make_delivery(2, status=Delivery.Status.FAILED)
    page_url = deliveries_url("change", delivery.pk)

    response = submit(admin_client, page_url, admin_client.get(page_url), holding="_selected_action",
                      button=("action", "retry_now"))

    assert delivery_jobs() == [{"delivery_id": delivery.pk}]
    assert shown_messages(response)[0] == ("success", "Queued an immediate try of 1 delivery.")


def test_a_selection_over_the_cap_is_refused(admin_client):
    now = timezone.now()
    Delivery.objects.bulk_create(
        Delivery(external_event_id=f"bulk-{n}", event_type="test.redeemed", payload={}, occurred_at=now)
        for n in range(1001)
    )
    first = Delivery.objects.order_by("pk").first()

    responses = [run_action(admin_client, action, [first], select_across=True) for action in ("retry_now", "replay")]

    for response in responses:
        [(level, text)] = shown_messages(response)
        assert level == "error"
        assert text.startswith("Select at most 1000 deliveries at a time")
    assert delivery_jobs() == []


def test_view_only_staff_can_browse_deliveries_but_not_resend_them(client):
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_delivery"))
    client.force_login(viewer)
    delivery = make_delivery(1, status=Delivery.Status.FAILED)

    listing = client.get(deliveries_url())
    page = client.get(deliveries_url("change", delivery.pk))
    client.post(deliveries_url(), {"action": "retry_now", "index": 0, "_selected_action": [delivery.pk]})

    assert listing.status_code == 200 and listing.context["action_form"] is None
    assert page.status_code == 200 and b'value="retry_now"' not in page.content
    assert delivery_jobs() == []
