"""The Sparkfly client against the sandbox over loopback HTTP: auth, errors, retries, paging."""

from __future__ import annotations

import socket
from datetime import datetime, timedelta, UTC

import pytest

from sparkfly_sync import client as api
from sparkfly_sync.client import RetryPolicy, SparkflyClient
from sparkfly_sync.errors import (
    SparkflyAuthError,
    SparkflyConnectionError,
    SparkflyNotFound,
    SparkflyResponseError,
    SparkflyServerError,
    SparkflyTimeout,
    SparkflyValidationError,
)


def auth_calls(sandbox):
    return sandbox.sandbox.count_requests(api.AUTH_PATH)


# --- authentication -------------------------------------------------------------------------


def test_authenticates_once_and_reuses_the_token(sparkfly_client, sparkfly_sandbox):
    sparkfly_client.get(api.MEMBERS_PATH)
    sparkfly_client.get(api.CHANNELS_PATH)
    assert auth_calls(sparkfly_sandbox) == 1


def test_wrong_key_raises_an_auth_error_naming_the_settings(sparkfly_sandbox):
    client = SparkflyClient(base_url=sparkfly_sandbox.base_url, identity="sandbox", key="wrong")
    with pytest.raises(SparkflyAuthError) as caught:
        client.get(api.MEMBERS_PATH)
    assert caught.value.status == 401
    assert caught.value.sparkfly_message == "Invalid credentials"
    assert "SPARKFLY_KEY" in str(caught.value)
    assert "wrong" not in str(caught.value) and "wrong" not in repr(client)


def test_an_expired_token_is_renewed_once_and_the_call_succeeds(sparkfly_client, sparkfly_sandbox):
    sparkfly_client.get(api.MEMBERS_PATH)
    sparkfly_sandbox.sandbox.expire_tokens()
    body = sparkfly_client.get(api.MEMBERS_PATH)
    assert body["members"]
    assert auth_calls(sparkfly_sandbox) == 2


def test_a_401_that_survives_renewal_is_an_error_not_a_loop(sparkfly_client, sparkfly_sandbox):
    sparkfly_sandbox.sandbox.inject_fault(api.MEMBERS_PATH, status=401, body='{"error":"Unauthorized"}', times=5)
    with pytest.raises(SparkflyAuthError):
        sparkfly_client.get(api.MEMBERS_PATH)
    assert auth_calls(sparkfly_sandbox) == 2
    assert sparkfly_sandbox.sandbox.count_requests(api.MEMBERS_PATH) == 2


def test_the_token_is_renewed_before_its_24_hours_end(sparkfly_sandbox):
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    client = SparkflyClient(base_url=sparkfly_sandbox.base_url, identity="sandbox", key="sandbox", clock=lambda: now[0])
    client.get(api.MEMBERS_PATH)
    now[0] += timedelta(hours=23)
    client.get(api.MEMBERS_PATH)
    assert auth_calls(sparkfly_sandbox) == 1
    now[0] += timedelta(hours=1)
    client.get(api.MEMBERS_PATH)
    assert auth_calls(sparkfly_sandbox) == 2


# --- Sparkfly's three error shapes, in its own words ------------------------------------------


def test_plain_error_shape_missing_channel(sparkfly_client):
    with pytest.raises(SparkflyValidationError) as caught:
        sparkfly_client.request("POST", api.CREDENTIALS_PATH, params={"member_id": 1})
    assert caught.value.status == 400
    assert caught.value.sparkfly_message == "channel_id is required"
    assert "400 to POST" in str(caught.value) and "/v1.0/credentials: channel_id is required" in str(caught.value)


def test_trace_error_shape_unknown_member(sparkfly_client):
    with pytest.raises(SparkflyNotFound) as caught:
        sparkfly_client.get(api.MEMBER_SEARCH_PATH, identifier="nobody")
    assert caught.value.status == 404
    assert caught.value.trace and caught.value.trace in str(caught.value)
    assert caught.value.sparkfly_message


def test_envelope_errors_shape_names_the_field(sparkfly_client):
    with pytest.raises(SparkflyValidationError) as caught:
        sparkfly_client.request("POST", api.MEMBERS_PATH, json_body={"member": {"notification_mode": "app"}})
    assert caught.value.status == 422
    assert "identifier" in caught.value.errors
    assert caught.value.errors["identifier"] in str(caught.value)


def test_an_html_error_page_becomes_a_clear_error(sparkfly_client, sparkfly_sandbox):
    sparkfly_sandbox.sandbox.inject_fault(
        api.MEMBERS_PATH, status=502, body="<html><body>Bad Gateway</body></html>", content_type="text/html", times=1
    )
    with pytest.raises(SparkflyServerError, match="HTML error page"):
        sparkfly_client.request("POST", api.MEMBERS_PATH, json_body={"member": {"identifier": "x"}})


@pytest.mark.parametrize("garbage", ['{"members": [', "not json at all", "[1, 2, 3]"])
def test_a_success_status_with_malformed_json_becomes_a_response_error(sparkfly_client, sparkfly_sandbox, garbage):
    sparkfly_sandbox.sandbox.inject_fault(api.MEMBERS_PATH, status=200, body=garbage)
    with pytest.raises(SparkflyResponseError, match="Sparkfly answered 200"):
        sparkfly_client.get(api.MEMBERS_PATH)


# --- retries ---------------------------------------------------------------------------------


def test_idempotent_requests_retry_5xx_and_429_with_growing_backoff(sparkfly_client, sparkfly_sandbox, recorded_sleeps):
    sparkfly_sandbox.sandbox.inject_fault(api.MEMBERS_PATH, status=503, times=1)
    sparkfly_sandbox.sandbox.inject_fault(api.MEMBERS_PATH, status=429, body='{"error":"slow down"}', times=1)
    assert sparkfly_client.get(api.MEMBERS_PATH)["members"]
    assert sparkfly_sandbox.sandbox.count_requests(api.MEMBERS_PATH) == 3
    assert len(recorded_sleeps) == 2
    assert 0.5 <= recorded_sleeps[0] <= 0.55 and 1.0 <= recorded_sleeps[1] <= 1.1


def test_retries_stop_after_the_policy_and_raise_the_last_error(sparkfly_client, sparkfly_sandbox):
    sparkfly_sandbox.sandbox.inject_fault(api.MEMBERS_PATH, status=500, body='{"error":"database down"}', times=10)
    with pytest.raises(SparkflyServerError, match="database down"):
        sparkfly_client.get(api.MEMBERS_PATH)
    assert sparkfly_sandbox.sandbox.count_requests(api.MEMBERS_PATH) == 3


def test_a_post_is_never_retried(sparkfly_client, sparkfly_sandbox, recorded_sleeps):
    sparkfly_sandbox.sandbox.inject_fault(api.MEMBERS_PATH, status=503, times=1)
    with pytest.raises(SparkflyServerError):
        sparkfly_client.request("POST", api.MEMBERS_PATH, json_body={"member": {"identifier": "new-one"}})
    assert sparkfly_sandbox.sandbox.count_requests(api.MEMBERS_PATH, "POST") == 1
    assert recorded_sleeps == []


def test_an_unreachable_host_is_a_connection_error_after_retries(recorded_sleeps):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    client = SparkflyClient(
        base_url=f"http://127.0.0.1:{closed_port}",
        identity="sandbox",
        key="sandbox",
        retry=RetryPolicy(attempts=3),
        sleep=recorded_sleeps,
    )
    with pytest.raises(SparkflyConnectionError, match="could not be reached after 3 tries"):
        client.get(api.MEMBERS_PATH)
    assert len(recorded_sleeps) == 2


def test_a_slow_answer_is_a_timeout_error_after_retries(sparkfly_sandbox, recorded_sleeps):
    client = SparkflyClient(
        base_url=sparkfly_sandbox.base_url,
        identity="sandbox",
        key="sandbox",
        read_timeout=0.2,
        retry=RetryPolicy(attempts=2),
        sleep=recorded_sleeps,
    )
    client.authenticate()
    sparkfly_sandbox.sandbox.inject_fault(api.MEMBERS_PATH, status=200, body="{}", delay=1.0, times=2)
    with pytest.raises(SparkflyTimeout, match="did not answer in time after 2 tries"):
        client.get(api.MEMBERS_PATH)
    assert len(recorded_sleeps) == 1


def test_a_slow_answer_that_recovers_on_retry_succeeds(sparkfly_sandbox, recorded_sleeps):
    client = SparkflyClient(
        base_url=sparkfly_sandbox.base_url, identity="sandbox", key="sandbox", read_timeout=0.2, sleep=recorded_sleeps
    )
    sparkfly_sandbox.sandbox.inject_fault(api.MEMBERS_PATH, status=200, body="{}", delay=1.0, times=1)
    assert client.get(api.MEMBERS_PATH)["members"]


# --- pagination ------------------------------------------------------------------------------


def test_pages_are_walked_to_the_end_with_items_unwrapped(sparkfly_client):
    pages = list(sparkfly_client.iter_pages(api.MEMBERS_PATH, collection="members", item="member", per_page=12))
    assert [page.number for page in pages] == [1, 2, 3, 4, 5]
    ids = [member["id"] for page in pages for member in page.items]
    assert len(ids) == 50 == len(set(ids))
    assert all("identifier" in member for page in pages for member in page.items)
    assert pages[0].total_pages == 5 and pages[0].total_entries == 50


def test_pagination_can_start_mid_way(sparkfly_client, sparkfly_sandbox):
    pages = list(
        sparkfly_client.iter_pages(api.MEMBERS_PATH, collection="members", item="member", per_page=12, start_page=4)
    )
    assert [page.number for page in pages] == [4, 5]
    queries = [r.query for r in sparkfly_sandbox.sandbox.requests_log if r.path == api.MEMBERS_PATH]
    assert not any("page=1&" in q or q.startswith("page=1") for q in queries)


def test_a_page_whose_items_are_not_wrapped_is_a_response_error(sparkfly_client, sparkfly_sandbox):
    sparkfly_sandbox.sandbox.inject_fault(
        api.MEMBERS_PATH, status=200, body='{"page":1,"total_pages":1,"members":[{"id":1}]}'
    )
    with pytest.raises(SparkflyResponseError, match="expected {'member'"):
        list(sparkfly_client.iter_pages(api.MEMBERS_PATH, collection="members", item="member", per_page=10))
