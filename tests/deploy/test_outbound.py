"""Outbound HTTP goes only to the configured Sparkfly and Attentive hosts: each client builds
every URL from its one base URL, and a redirect is never followed — it is an error naming where
it pointed, and the other host never hears from the portal (its key or token included)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from attentive_sync.client import CUSTOM_EVENTS_PATH, AttentiveClient
from attentive_sync.errors import AttentiveError
from attentive_sync.sandbox import AttentiveSandbox
from attentive_sync.sandbox import serve_in_thread as serve_attentive
from sparkfly_sync.client import MEMBERS_PATH, RetryPolicy, SparkflyClient
from sparkfly_sync.errors import SparkflyAPIError
from sparkfly_sync.sandbox import SparkflySandbox
from sparkfly_sync.sandbox import serve_in_thread as serve_sparkfly


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_the_sparkfly_client_does_not_follow_a_redirect(servers, status):
    sparkfly = servers(serve_sparkfly(SparkflySandbox(members=5, offers=1, channels=1, merchants=1, seed=0)))
    elsewhere = servers(serve_sparkfly(SparkflySandbox(members=5, offers=1, channels=1, merchants=1, seed=0)))
    target = elsewhere.base_url + MEMBERS_PATH
    sparkfly.sandbox.inject_fault(MEMBERS_PATH, status=status, body="", location=target)
    client = SparkflyClient(base_url=sparkfly.base_url, identity="sandbox", key="sandbox", retry=RetryPolicy(attempts=3))

    with pytest.raises(SparkflyAPIError) as raised:
        client.get(MEMBERS_PATH)

    assert raised.value.status == status
    assert f"a redirect to {target!r}, which is not followed" in str(raised.value)
    assert elsewhere.sandbox.requests_log == []


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_the_attentive_client_does_not_follow_a_redirect(servers, status):
    attentive = servers(serve_attentive(AttentiveSandbox(api_key="sk_outbound")))
    elsewhere = servers(serve_attentive(AttentiveSandbox(api_key="sk_outbound")))
    target = elsewhere.base_url + CUSTOM_EVENTS_PATH
    attentive.sandbox.inject_fault(CUSTOM_EVENTS_PATH, status=status, body="", location=target)
    client = AttentiveClient(api_key="sk_outbound", base_url=attentive.base_url)
    event = {
        "type": "outbound.test",
        "properties": {},
        "occurredAt": datetime.now(timezone.utc).isoformat(),
        "user": {"externalIdentifiers": {"clientUserId": "member-1"}},
    }

    with pytest.raises(AttentiveError) as raised:
        client.post_custom_event(event)

    assert raised.value.status == status
    assert f"a redirect to {target!r}, which is not followed" in str(raised.value)
    assert elsewhere.sandbox.requests_log == []
