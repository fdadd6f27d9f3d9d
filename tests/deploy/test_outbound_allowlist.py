"""The outbound allowlist (README "Outbound HTTP"): each API key goes only to its own API's hosts,
over https, and to loopback only when OUTBOUND_ALLOW_LOOPBACK is on.

The clients are tested against sandboxes served on 127.0.0.2 while only 127.0.0.1 is allowed: a
refused call must leave the sandbox's request log empty, and the same call with 127.0.0.2 allowed
reaches it (so the empty log is the allowlist's doing, not a server that was never there)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from attentive_sync.client import CUSTOM_EVENTS_PATH, ME_PATH, AttentiveClient
from attentive_sync.delivery import RetryPolicy, deliver, forward, sweep
from attentive_sync.errors import AttentiveHostRefused
from attentive_sync.events import CustomEvent, EventUser
from attentive_sync.models import AttentiveSettings
from attentive_sync.sandbox import AttentiveSandbox
from attentive_sync.sandbox import serve_in_thread as serve_attentive
from portal.outbound import refusal
from sparkfly_sync.client import AUTH_PATH, MEMBERS_PATH, RetryPolicy as SparkflyRetryPolicy, SparkflyClient
from sparkfly_sync.errors import SparkflyHostRefused
from sparkfly_sync.sandbox import SparkflySandbox
from sparkfly_sync.sandbox import serve_in_thread as serve_sparkfly
from tests.conftest import run_worker_until_idle

ROOT = Path(__file__).resolve().parents[2]
ELSEWHERE = "127.0.0.2"  # loopback, but not the allowed 127.0.0.1
KEY = "sk_live_ALLOWLIST1234"


@pytest.fixture
def only_127_0_0_1(settings):
    """Loopback as production sees it: not allowed, except 127.0.0.1 listed by name."""
    settings.OUTBOUND_ALLOW_LOOPBACK = False
    settings.ATTENTIVE_ALLOWED_HOSTS = ["api.attentivemobile.com", "127.0.0.1"]
    settings.SPARKFLY_ALLOWED_HOSTS = ["api.sparkfly.com", "127.0.0.1"]
    return settings


# --- the rule -------------------------------------------------------------------------------------

ALLOWED = ["api.attentivemobile.com"]


@pytest.mark.parametrize(
    ("url", "allow_loopback", "refused_with"),
    [
        ("https://api.attentivemobile.com", False, ""),
        ("https://API.AttentiveMobile.com/", False, ""),  # host names are case-insensitive
        ("http://127.0.0.1:8200", True, ""),
        ("http://localhost:8200", True, ""),
        ("http://[::1]:8200", True, ""),
        ("https://attentive.example.com", False, "attentive.example.com is not an allowed Attentive host"),
        ("https://api.attentivemobile.com.evil.example", False, "is not an allowed Attentive host"),
        ("http://api.attentivemobile.com", False, "must use https"),
        ("ftp://api.attentivemobile.com", False, "must be an https URL"),
        ("http://127.0.0.1:8200", False, "need OUTBOUND_ALLOW_LOOPBACK=true"),
        ("http://2130706433:8200", True, "2130706433 is not an allowed Attentive host"),  # 127.0.0.1, spelt otherwise
        ("https://user:secret@api.attentivemobile.com", False, "must not carry a user name or password"),
        # urllib3 (which connects) reads attentive.example.com, urllib.parse api.attentivemobile.com:
        ("https://attentive.example.com\\@api.attentivemobile.com", False, "must not carry a user name"),
        ("https://api.attentivemobile.com\\attentive.example.com", False, "is ambiguous"),
        ("https://api.attentivemobile.com:99999", False, "is not a valid URL"),
    ],
)
def test_the_rule(url, allow_loopback, refused_with):
    refused = refusal(
        url, allowed_hosts=ALLOWED, allow_loopback=allow_loopback, service="Attentive", setting="ATTENTIVE_ALLOWED_HOSTS"
    )

    if refused_with:
        assert refused_with in refused
        assert "secret" not in refused  # a password in the URL is never repeated
    else:
        assert refused == ""


# --- the clients refuse before anything leaves -----------------------------------------------------


def test_the_attentive_client_sends_nothing_to_a_host_not_allowed(servers, only_127_0_0_1, settings):
    elsewhere = servers(serve_attentive(AttentiveSandbox(api_key=KEY), host=ELSEWHERE))
    client = AttentiveClient(api_key=KEY, base_url=elsewhere.base_url)

    with pytest.raises(AttentiveHostRefused) as refused:
        client.me()

    assert str(refused.value).startswith(f"Nothing was sent to Attentive: {ELSEWHERE} is not an allowed Attentive host")
    assert KEY not in str(refused.value)
    assert elsewhere.sandbox.requests_log == []
    settings.ATTENTIVE_ALLOWED_HOSTS = [ELSEWHERE]
    assert client.me()["companyName"]  # the same call, allowed, reaches it
    assert elsewhere.sandbox.count_requests(ME_PATH, "GET") == 1


def test_the_sparkfly_client_sends_nothing_to_a_host_not_allowed(servers, only_127_0_0_1, settings):
    elsewhere = servers(
        serve_sparkfly(SparkflySandbox(members=5, offers=1, channels=1, merchants=1, seed=0), host=ELSEWHERE)
    )
    client = SparkflyClient(
        base_url=elsewhere.base_url, identity="sandbox", key="sandbox", retry=SparkflyRetryPolicy(attempts=3)
    )

    with pytest.raises(SparkflyHostRefused) as refused:
        client.get(MEMBERS_PATH)

    assert str(refused.value).startswith(f"Nothing was sent to Sparkfly: {ELSEWHERE} is not an allowed Sparkfly host")
    assert elsewhere.sandbox.requests_log == []  # not even /auth, which carries the identity and key
    settings.SPARKFLY_ALLOWED_HOSTS = [ELSEWHERE]
    assert client.get(MEMBERS_PATH)["members"]
    assert elsewhere.sandbox.count_requests(AUTH_PATH) == 1


@pytest.mark.django_db(transaction=True)
def test_deliveries_to_a_stored_url_not_allowed_are_held_until_it_is(servers, only_127_0_0_1, settings):
    elsewhere = servers(serve_attentive(AttentiveSandbox(api_key=KEY), host=ELSEWHERE))
    stored = AttentiveSettings.load()
    # Written past the admin's validation: as a URL stored before the allowlist, or set in SQL.
    stored.api_key, stored.api_url, stored.enabled, stored.rate_limit_per_second = KEY, elsewhere.base_url, True, 1000
    stored.save()
    event = CustomEvent(
        type="sparkfly.member.offer_state_redeemed",
        user=EventUser(client_user_id="member-1", phone="+13115552368"),
        occurred_at=datetime.now(timezone.utc),
        external_event_id="evt-allowlist-1",
        properties={},
    )
    delivery = forward(event).delivery

    deliver(delivery.pk, policy=RetryPolicy(base=timedelta(0), cap=timedelta(0)))

    delivery.refresh_from_db()
    assert delivery.status == "pending"  # held, not dead: nothing is lost while it is fixed
    assert delivery.last_error.startswith(
        f"held: the API base URL is refused: {ELSEWHERE} is not an allowed Attentive host"
    )
    assert elsewhere.sandbox.requests_log == []
    settings.ATTENTIVE_ALLOWED_HOSTS = [ELSEWHERE]
    assert sweep(now=datetime.now(timezone.utc) + timedelta(minutes=5)).requeued == 1
    run_worker_until_idle(queues=["deliveries"])
    delivery.refresh_from_db()
    assert delivery.status == "delivered"
    assert elsewhere.sandbox.count_requests(CUSTOM_EVENTS_PATH, "POST") == 1


# --- SPARKFLY_API_URL at start-up -------------------------------------------------------------------


def manage_check(**env_overrides) -> subprocess.CompletedProcess:
    env = {
        **os.environ, "SPARKFLY_IDENTITY": "account", "SPARKFLY_KEY": "key", "OUTBOUND_ALLOW_LOOPBACK": "false",
        **env_overrides,
    }
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "check"], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SPARKFLY_API_URL": "https://sparkfly.example.com"},
         "SPARKFLY_API_URL is refused: sparkfly.example.com is not an allowed Sparkfly host: the Sparkfly API key "
         "is sent only to api-staging.sparkfly.com, api.sparkfly.com. A deployment that needs another host adds "
         "it to SPARKFLY_ALLOWED_HOSTS."),
        ({"SPARKFLY_API_URL": "http://api.sparkfly.com"}, "SPARKFLY_API_URL is refused: The Sparkfly API URL must use https"),
        ({"SPARKFLY_API_URL": "http://127.0.0.1:8100"},
         "127.0.0.1 is not an allowed Sparkfly host: the Sparkfly API key is sent only to api-staging.sparkfly.com, "
         "api.sparkfly.com. The sandboxes on this machine's loopback need OUTBOUND_ALLOW_LOOPBACK=true."),
    ],
)
def test_a_sparkfly_url_not_allowed_stops_the_process_at_start_up(env, message):
    result = manage_check(**env)

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert message in result.stderr


def test_a_deployment_adds_a_host_to_the_allowlist():
    result = manage_check(SPARKFLY_API_URL="https://sparkfly.example.com", SPARKFLY_ALLOWED_HOSTS="sparkfly.example.com")

    assert result.returncode == 0, result.stderr
