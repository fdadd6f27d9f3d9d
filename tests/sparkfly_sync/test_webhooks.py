"""The webhook endpoints in process (Django's test client, real PostgreSQL): what each request
gets as an answer, and what is recorded and queued for it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import datetime, timedelta, timezone
from urllib.parse import urlencode

import pytest
from django.urls import reverse
from procrastinate.contrib.django.models import ProcrastinateJob

from sparkfly_sync import events, inbound
from sparkfly_sync.models import ConversionEndpoint, InboundRequest, Notification, NotificationEndpoint, Redemption

pytestmark = pytest.mark.django_db

REDEEMED_AT = "2024-05-01T12:00:00Z"


@pytest.fixture
def endpoint():
    return ConversionEndpoint.objects.create(channel_id=11)


def conversion_url(endpoint: ConversionEndpoint, secret: str | None = None, **values) -> str:
    path = reverse(
        "sparkfly-conversion-callback",
        kwargs={"endpoint_uuid": str(endpoint.uuid), "secret": endpoint.secret if secret is None else secret},
    )
    return path + ("?" + urlencode(values) if values else "")


def jobs(task: str = "sparkfly_sync.forward_redemption") -> list[dict]:
    return list(ProcrastinateJob.objects.filter(task_name=task).values("args", "status"))


# --- accepted ---------------------------------------------------------------------------------------


def test_a_get_callback_records_the_redemption_queues_it_and_answers_202(client, endpoint):
    answer = client.get(
        conversion_url(
            endpoint, credential_id="501", offer_id="7", offer_ids="7,8", xid="X-1", store_id="3",
            redeemed_at=REDEEMED_AT, status="redeemed", sf_uid="m-9", sf_ac="spring", loyalty_ref="abc",
        )
    )

    assert answer.status_code == 202
    redemption = Redemption.objects.get()
    assert answer.json() == {
        "duplicate": False,
        "redemption": {
            "id": redemption.pk,
            "external_event_id": str(redemption.dedup_key),
            "state": "queued",
            "credential_id": 501,
            "offer_id": 7,
            "redeemed_at": "2024-05-01T12:00:00Z",
            "received_at": answer.json()["redemption"]["received_at"],
        },
    }
    assert (redemption.credential_id, redemption.offer_id, redemption.offer_ids) == (501, 7, [7, 8])
    assert (redemption.xid, redemption.store_id, redemption.channel_id) == ("X-1", 3, 11)
    assert (redemption.credential_status, redemption.sf_uid, redemption.sf_ac) == ("redeemed", "m-9", "spring")
    assert redemption.conv_ids == {"loyalty_ref": "abc"}
    assert redemption.redeemed_at == datetime(2024, 5, 1, 12, tzinfo=timezone.utc)
    assert str(redemption.dedup_key) == events.redemption_event_id(
        credential_id=501, offer_id=7, redeemed_at=redemption.redeemed_at
    )
    assert jobs() == [{"args": {"redemption_id": redemption.pk}, "status": "todo"}]
    request = InboundRequest.objects.get()
    assert (request.kind, request.status_code, request.outcome, request.redemption) == ("conversion", 202, "accepted", redemption)
    assert request.method == "GET" and "credential_id=501" in request.query
    assert request.endpoint_uuid == str(endpoint.uuid)


def test_a_post_form_body_and_a_post_json_body_are_accepted(client, endpoint):
    form = client.post(
        conversion_url(endpoint),
        data=urlencode({"credential_id": "1", "offer_id": "2", "redeemed_at": REDEEMED_AT}),
        content_type="application/x-www-form-urlencoded",
    )
    as_json = client.post(
        conversion_url(endpoint),
        data=json.dumps({"credential_id": 3, "offer_id": "4", "redeemed_at": REDEEMED_AT, "store_id": ""}),
        content_type="application/json",
    )

    assert (form.status_code, as_json.status_code) == (202, 202)
    assert sorted(Redemption.objects.values_list("credential_id", "offer_id")) == [(1, 2), (3, 4)]
    assert bytes(InboundRequest.objects.get(redemption__credential_id=3).body).startswith(b'{"credential_id": 3')


def test_values_split_between_query_string_and_body_are_merged(client, endpoint):
    answer = client.post(
        conversion_url(endpoint, credential_id="1"),
        data=urlencode({"offer_id": "2", "redeemed_at": REDEEMED_AT}),
        content_type="application/x-www-form-urlencoded",
    )
    assert answer.status_code == 202


def test_blank_placeholders_are_absent_values(client, endpoint):
    # Sparkfly leaves a placeholder it cannot resolve blank.
    answer = client.get(
        conversion_url(endpoint, credential_id="1", offer_id="2", redeemed_at=REDEEMED_AT, xid="", store_id="", sf_uid="")
    )
    assert answer.status_code == 202
    redemption = Redemption.objects.get()
    assert (redemption.xid, redemption.store_id, redemption.sf_uid) == ("", None, "")


def test_offer_id_falls_back_to_a_single_offer_ids(client, endpoint):
    assert client.get(conversion_url(endpoint, credential_id="1", offer_ids="9", redeemed_at=REDEEMED_AT)).status_code == 202
    assert Redemption.objects.get().offer_id == 9


@pytest.mark.parametrize(
    "written",
    ["2024-05-01T12:00:00Z", "2024-05-01T12:00:00+00:00", "2024-05-01T14:00:00+02:00", "2024-05-01 12:00:00 UTC",
     "2024-05-01T12:00:00", "2024-05-01T12:00:00.000+0000"],
)
def test_each_way_sparkfly_may_write_the_time_is_the_same_instant(client, endpoint, written):
    client.get(conversion_url(endpoint, credential_id="1", offer_id="2", redeemed_at=written))
    assert Redemption.objects.get().redeemed_at == datetime(2024, 5, 1, 12, tzinfo=timezone.utc)


def test_an_unencoded_plus_in_the_time_still_reads_as_its_offset(client, endpoint):
    path = conversion_url(endpoint) + "?credential_id=1&offer_id=2&redeemed_at=2024-05-01T14:00:00+02:00"
    assert client.get(path).status_code == 202
    assert Redemption.objects.get().redeemed_at == datetime(2024, 5, 1, 12, tzinfo=timezone.utc)


# --- duplicates --------------------------------------------------------------------------------------


def test_a_repeated_callback_answers_200_with_the_original_and_queues_nothing(client, endpoint):
    url = conversion_url(endpoint, credential_id="1", offer_id="2", redeemed_at=REDEEMED_AT)
    first = client.get(url)
    # The same instant written with another offset is the same redemption.
    again = client.post(
        conversion_url(endpoint),
        data=json.dumps({"credential_id": "1", "offer_id": "2", "redeemed_at": "2024-05-01T08:00:00-04:00"}),
        content_type="application/json",
    )

    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["duplicate"] is True
    assert again.json()["redemption"] == first.json()["redemption"]
    assert Redemption.objects.count() == 1
    assert len(jobs()) == 1
    assert list(InboundRequest.objects.order_by("received_at").values_list("outcome", flat=True)) == ["accepted", "duplicate"]
    assert InboundRequest.objects.get(outcome="duplicate").redemption_id == first.json()["redemption"]["id"]


def test_a_reused_credential_redeemed_again_later_is_a_new_redemption(client, endpoint):
    client.get(conversion_url(endpoint, credential_id="1", offer_id="2", redeemed_at=REDEEMED_AT))
    later = client.get(conversion_url(endpoint, credential_id="1", offer_id="2", redeemed_at="2024-05-02T12:00:00Z"))
    assert later.status_code == 202
    assert Redemption.objects.count() == 2


# --- rejected -----------------------------------------------------------------------------------------


def assert_rejected(answer, status: int, *, fields: set[str] | None = None) -> dict:
    assert answer.status_code == status, answer.content
    body = answer.json()
    assert body["detail"]
    if fields is not None:
        assert set(body["errors"]) == fields
    assert Redemption.objects.count() == 0 and jobs() == []
    recorded = InboundRequest.objects.latest("received_at")
    assert (recorded.status_code, recorded.outcome) == (status, "rejected")
    return body


def test_a_wrong_secret_and_an_unknown_endpoint_get_the_same_404(client, endpoint):
    wrong = client.get(conversion_url(endpoint, secret="not-the-secret", credential_id="1"))
    unknown = client.get(
        reverse("sparkfly-conversion-callback", kwargs={"endpoint_uuid": "5b0d6a5e-54b4-4c3c-a5f3-2d2b1a0f8f11", "secret": endpoint.secret})
    )
    malformed = client.get(reverse("sparkfly-conversion-callback", kwargs={"endpoint_uuid": "nope", "secret": "x"}))

    for answer in (wrong, unknown, malformed):
        assert answer.status_code == 404
        assert answer.json() == {"detail": "Not found."}
    assert InboundRequest.objects.filter(status_code=404, outcome="rejected").count() == 3
    assert Redemption.objects.count() == 0


def test_the_secret_is_never_recorded(client, endpoint):
    client.get(conversion_url(endpoint, credential_id="1"))
    client.get(conversion_url(endpoint, secret="guess-" + endpoint.secret[:10], credential_id="1"))
    stored = json.dumps(list(InboundRequest.objects.values("endpoint_uuid", "headers", "query", "errors")))
    assert endpoint.secret not in stored and endpoint.secret[:10] not in stored


def test_a_disabled_endpoint_answers_410(client, endpoint):
    endpoint.is_enabled = False
    endpoint.save()
    answer = client.get(conversion_url(endpoint, credential_id="1", offer_id="2", redeemed_at=REDEEMED_AT))
    assert_rejected(answer, 410)


def test_a_disabled_endpoint_with_a_wrong_secret_still_answers_404(client, endpoint):
    endpoint.is_enabled = False
    endpoint.save()
    assert client.get(conversion_url(endpoint, secret="wrong")).status_code == 404


@pytest.mark.parametrize(
    ("values", "fields"),
    [
        ({}, {"credential_id", "redeemed_at", "offer_id"}),
        ({"credential_id": "abc", "offer_id": "2", "redeemed_at": REDEEMED_AT}, {"credential_id"}),
        ({"credential_id": "-1", "offer_id": "2.5", "redeemed_at": REDEEMED_AT}, {"credential_id", "offer_id"}),
        ({"credential_id": "1", "offer_id": "2", "redeemed_at": "yesterday"}, {"redeemed_at"}),
        ({"credential_id": "1", "offer_id": "2", "redeemed_at": "2999-01-01T00:00:00Z"}, {"redeemed_at"}),
        ({"credential_id": "1", "offer_id": "2", "redeemed_at": "1970-01-01T00:00:00Z"}, {"redeemed_at"}),
        ({"credential_id": "1", "offer_ids": "2,3", "redeemed_at": REDEEMED_AT}, {"offer_id"}),
        ({"credential_id": "1", "offer_id": "2", "offer_ids": "2,x", "redeemed_at": REDEEMED_AT}, {"offer_ids"}),
        ({"credential_id": "99999999999999999999", "offer_id": "2", "redeemed_at": REDEEMED_AT}, {"credential_id"}),
        ({"credential_id": "1", "offer_id": "2", "redeemed_at": REDEEMED_AT, "store_id": "٣"}, {"store_id"}),
    ],
)
def test_bad_values_are_refused_with_400_naming_each_field(client, endpoint, values, fields):
    assert_rejected(client.get(conversion_url(endpoint, **values)), 400, fields=fields)


def test_a_far_future_time_is_refused_but_a_little_clock_skew_is_not(client, endpoint):
    soon = (datetime.now(timezone.utc) + timedelta(minutes=2)).isoformat()
    later = (datetime.now(timezone.utc) + timedelta(minutes=30)).isoformat()
    assert client.get(conversion_url(endpoint, credential_id="1", offer_id="2", redeemed_at=soon)).status_code == 202
    assert client.get(conversion_url(endpoint, credential_id="1", offer_id="2", redeemed_at=later)).status_code == 400


def test_malformed_json_and_non_object_json_are_400(client, endpoint):
    for body in ('{"credential_id": ', "[1, 2]", '"text"', "[" * 5000 + "]" * 5000, '{"credential_id": NaN}'):
        answer = client.post(conversion_url(endpoint), data=body, content_type="application/json")
        assert_rejected(answer, 400)


def test_conflicting_values_in_query_and_body_are_400(client, endpoint):
    answer = client.post(
        conversion_url(endpoint, credential_id="1"),
        data=json.dumps({"credential_id": "2", "offer_id": "2", "redeemed_at": REDEEMED_AT}),
        content_type="application/json",
    )
    assert_rejected(answer, 400, fields={"credential_id"})


def test_an_unsupported_body_type_is_415(client, endpoint):
    answer = client.post(conversion_url(endpoint), data=b"<xml/>", content_type="application/xml")
    assert_rejected(answer, 415)


def test_a_body_over_64_kb_is_413_and_is_not_stored(client, endpoint):
    answer = client.post(conversion_url(endpoint), data="x=" + "y" * (64 * 1024), content_type="application/x-www-form-urlencoded")
    assert_rejected(answer, 413)
    recorded = InboundRequest.objects.get()
    assert recorded.body_size > 64 * 1024 and bytes(recorded.body) == b""


def test_an_other_method_is_405_and_recorded(client, endpoint):
    answer = client.put(conversion_url(endpoint, credential_id="1"))
    assert answer.status_code == 405
    assert answer["Allow"] == "GET, POST"
    assert InboundRequest.objects.get().status_code == 405


def test_a_non_json_accept_header_still_gets_json(client, endpoint):
    answer = client.get(conversion_url(endpoint, credential_id="1", offer_id="2", redeemed_at=REDEEMED_AT), HTTP_ACCEPT="text/html")
    assert answer.status_code == 202 and answer["Content-Type"] == "application/json"


def test_too_many_extra_keys_are_refused(client, endpoint):
    values = {"credential_id": "1", "offer_id": "2", "redeemed_at": REDEEMED_AT, **{f"k{n}": "v" for n in range(60)}}
    assert_rejected(client.get(conversion_url(endpoint, **values)), 400, fields={"conv_ids"})


# --- secret rotation ------------------------------------------------------------------------------------


def test_after_a_rotation_the_previous_secret_works_until_its_grace_period_ends(client, endpoint, settings):
    old = endpoint.secret
    inbound.rotate_secret(endpoint)
    assert endpoint.secret != old and endpoint.previous_secret == old  # the caller's object is current
    endpoint.refresh_from_db()
    assert endpoint.secret != old and endpoint.previous_secret == old

    assert client.get(conversion_url(endpoint, secret=old, credential_id="1", offer_id="2", redeemed_at=REDEEMED_AT)).status_code == 202
    assert client.get(conversion_url(endpoint, credential_id="1", offer_id="3", redeemed_at=REDEEMED_AT)).status_code == 202

    ConversionEndpoint.objects.filter(pk=endpoint.pk).update(
        previous_secret_expires_at=datetime.now(timezone.utc) - timedelta(seconds=1)
    )
    assert client.get(conversion_url(endpoint, secret=old, credential_id="1")).status_code == 404


def test_secrets_are_encrypted_at_rest(endpoint):
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT secret FROM sparkfly_sync_conversionendpoint WHERE id = %s", [endpoint.pk])
        stored = cursor.fetchone()[0]
    assert endpoint.secret not in stored and stored.startswith("gAAAAA")


def test_log_lines_mask_the_secret(client, endpoint, caplog):
    from portal.logs import MASK, redact

    line = f'"GET {conversion_url(endpoint, credential_id="1")} HTTP/1.1" 404 22'
    assert endpoint.secret not in redact(line) and MASK in redact(line)
    assert str(endpoint.uuid) in redact(line)


# --- event notifications ----------------------------------------------------------------------------------


SIGNING_KEY = base64.b64encode(bytes(range(64))).decode()


@pytest.fixture
def notification_endpoint():
    return NotificationEndpoint.objects.create(external_id="portal", secret=SIGNING_KEY)


def signed(body: bytes, key: str = SIGNING_KEY, *, decoded: bool = False) -> str:
    key_bytes = base64.b64decode(key) if decoded else key.encode()
    return base64.b64encode(hmac.new(key_bytes, body, hashlib.sha256).digest()).decode()


def notify(client, endpoint, document, *, signature: str | None = None, raw: bytes | None = None):
    body = raw if raw is not None else json.dumps(document).encode()
    headers = {} if signature == "" else {"HTTP_X_HMAC_SHA256_SIGNATURE": signature or signed(body)}
    return client.post(
        reverse("sparkfly-notifications", kwargs={"endpoint_uuid": str(endpoint.uuid)}),
        data=body,
        content_type="application/json",
        **headers,
    )


POINTS_REDEEMED = {
    "event_name": "loyalty.enrollment.points.redeemed",
    "id": "evt-1",
    "created_at": REDEEMED_AT,
    "data": {
        "points_redeemed": 100,
        "member": {"id": 1, "identifier": "m-1", "enrollment": {"id": 7, "external_id": "e-7"}},
        "reward_state": {"id": 3, "offer_state_id": 9, "credential_identifier": "ABC123", "issued_point_value": 100},
    },
}


def test_a_signed_notification_is_recorded_and_queued(client, notification_endpoint):
    answer = notify(client, notification_endpoint, POINTS_REDEEMED)

    assert answer.status_code == 202, answer.content
    notification = Notification.objects.get()
    assert (notification.event_id, notification.event_name, notification.state) == ("evt-1", POINTS_REDEEMED["event_name"], "queued")
    assert notification.occurred_at == datetime(2024, 5, 1, 12, tzinfo=timezone.utc)
    assert jobs("sparkfly_sync.process_notification") == [{"args": {"notification_id": notification.pk}, "status": "todo"}]


def test_a_signature_over_the_decoded_key_is_accepted_too(client, notification_endpoint):
    body = json.dumps(POINTS_REDEEMED).encode()
    assert notify(client, notification_endpoint, None, raw=body, signature=signed(body, decoded=True)).status_code == 202


def test_a_tampered_body_is_401_and_nothing_is_queued(client, notification_endpoint):
    body = json.dumps(POINTS_REDEEMED).encode()
    tampered = body.replace(b'"points_redeemed": 100', b'"points_redeemed": 900')
    answer = notify(client, notification_endpoint, None, raw=tampered, signature=signed(body))
    assert answer.status_code == 401
    assert "does not match" in answer.json()["detail"]
    assert Notification.objects.count() == 0 and jobs("sparkfly_sync.process_notification") == []
    assert bytes(InboundRequest.objects.get(status_code=401).body) == tampered


@pytest.mark.parametrize("signature", ["", "not base64!", base64.b64encode(b"x" * 32).decode()])
def test_a_missing_or_wrong_signature_is_401(client, notification_endpoint, signature):
    answer = notify(client, notification_endpoint, POINTS_REDEEMED, signature=signature)
    assert answer.status_code == 401 and "WWW-Authenticate" in answer
    assert Notification.objects.count() == 0


def test_a_repeated_notification_is_acknowledged_once(client, notification_endpoint):
    first = notify(client, notification_endpoint, POINTS_REDEEMED)
    again = notify(client, notification_endpoint, POINTS_REDEEMED)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["duplicate"] is True
    assert len(jobs("sparkfly_sync.process_notification")) == 1


def test_an_event_without_an_id_is_identified_by_its_body(client, notification_endpoint):
    document = {key: value for key, value in POINTS_REDEEMED.items() if key != "id"}
    notify(client, notification_endpoint, document)
    assert notify(client, notification_endpoint, document).status_code == 200
    assert Notification.objects.get().event_id.startswith("sha256:")


def test_an_unknown_event_type_is_recorded_and_acknowledged_without_action(client, notification_endpoint):
    answer = notify(client, notification_endpoint, {"event_name": "sf.transaction.completed", "id": "t-1", "data": {"x": 1}})
    assert answer.status_code == 200
    assert Notification.objects.get().state == "ignored"
    assert InboundRequest.objects.get().outcome == "ignored"
    assert jobs("sparkfly_sync.process_notification") == []


def test_a_handled_event_with_bad_data_is_400_naming_the_fields(client, notification_endpoint):
    document = {**POINTS_REDEEMED, "data": {"points_redeemed": "lots", "member": {"id": 1}, "reward_state": {}}}
    answer = notify(client, notification_endpoint, document)
    assert answer.status_code == 400
    assert set(answer.json()["errors"]) == {"data.points_redeemed", "data.member.enrollment", "data.reward_state.id"}


def test_a_notification_with_a_far_future_time_is_400(client, notification_endpoint):
    answer = notify(client, notification_endpoint, {**POINTS_REDEEMED, "created_at": "2999-01-01T00:00:00Z"})
    assert answer.status_code == 400 and set(answer.json()["errors"]) == {"created_at"}


def test_the_previous_signing_key_works_during_its_grace_period(client, notification_endpoint):
    inbound.rotate_secret(notification_endpoint, new_secret=base64.b64encode(b"n" * 64).decode())
    assert notify(client, notification_endpoint, POINTS_REDEEMED).status_code == 202  # signed with the old key
    notification_endpoint.refresh_from_db()
    body = json.dumps({**POINTS_REDEEMED, "id": "evt-2"}).encode()
    assert notify(client, notification_endpoint, None, raw=body, signature=signed(body, notification_endpoint.secret)).status_code == 202


def test_an_unknown_notification_endpoint_is_404(client):
    answer = client.post(
        reverse("sparkfly-notifications", kwargs={"endpoint_uuid": "5b0d6a5e-54b4-4c3c-a5f3-2d2b1a0f8f11"}),
        data=b"{}", content_type="application/json", HTTP_X_HMAC_SHA256_SIGNATURE="x",
    )
    assert answer.status_code == 404


# --- the schema ---------------------------------------------------------------------------------------------


def test_the_openapi_schema_and_its_docs_page_are_served(client):
    schema = client.get(reverse("api-schema"), HTTP_ACCEPT="application/json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert "/hooks/sparkfly/channels/{endpoint_uuid}/{secret}/conversions" in paths
    assert "/hooks/sparkfly/notifications/{endpoint_uuid}" in paths
    docs = client.get(reverse("api-docs"))
    assert docs.status_code == 200 and b"redoc" in docs.content.lower()
    assert b"cdn." not in docs.content  # served locally: this machine, like many, cannot reach a CDN


def test_request_records_past_their_retention_are_pruned_and_redemptions_kept(client, endpoint, settings):
    settings.RETENTION_DAYS = 30
    client.get(conversion_url(endpoint, credential_id="1", offer_id="2", redeemed_at=REDEEMED_AT))
    client.get(conversion_url(endpoint, credential_id="1", offer_id="3", redeemed_at=REDEEMED_AT))
    InboundRequest.objects.filter(redemption__offer_id=2).update(received_at=datetime.now(timezone.utc) - timedelta(days=31))

    assert inbound.prune_requests(batch=1).rows == 1

    assert list(InboundRequest.objects.values_list("redemption__offer_id", flat=True)) == [3]
    assert Redemption.objects.count() == 2


# --- found by the second review and the fuzz --------------------------------------------------------


def test_an_id_of_thousands_of_digits_is_a_400_not_a_500(client, endpoint):
    body = urlencode({"credential_id": "1" * 5000, "offer_id": "2", "redeemed_at": REDEEMED_AT})
    answer = client.post(conversion_url(endpoint), data=body, content_type="application/x-www-form-urlencoded")
    assert_rejected(answer, 400, fields={"credential_id"})


def test_a_json_number_too_large_for_any_column_is_a_400_not_a_retry_loop(client, notification_endpoint):
    body = b'{"event_name": "sf.transaction.completed", "id": "t-9", "data": {"total": 1e400}}'
    answer = notify(client, notification_endpoint, None, raw=body)
    assert answer.status_code == 400 and "too large" in answer.json()["errors"]["body"][0]


def test_unknown_event_types_are_acknowledged_whatever_their_data_and_metadata(client, notification_endpoint):
    for n, document in enumerate([
        {"event_name": "sf.transaction.completed", "id": "a", "timestamp": 1714564800, "data": {"x": 1}},
        {"event_name": "sf.transaction.completed", "id": "b"},
        {"event_name": "sf.offer_activity.created", "id": "c", "data": [1, 2]},
    ]):
        assert notify(client, notification_endpoint, document).status_code == 200, n
    assert set(Notification.objects.values_list("state", flat=True)) == {"ignored"}


def test_a_free_reward_of_zero_points_is_accepted(client, notification_endpoint):
    data = {**POINTS_REDEEMED["data"], "reward_state": {**POINTS_REDEEMED["data"]["reward_state"], "issued_point_value": 0}}
    assert notify(client, notification_endpoint, {**POINTS_REDEEMED, "data": data}).status_code == 202


def test_two_long_event_ids_sharing_a_prefix_stay_two_events(client, notification_endpoint):
    first = {**POINTS_REDEEMED, "id": "x" * 300 + "1"}
    second = {**POINTS_REDEEMED, "id": "x" * 300 + "2"}
    assert notify(client, notification_endpoint, first).status_code == 202
    assert notify(client, notification_endpoint, second).status_code == 202
    assert Notification.objects.count() == 2


def test_a_secret_this_deployment_cannot_decrypt_is_no_credential(client, endpoint):
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT secret FROM sparkfly_sync_conversionendpoint WHERE id = %s", [endpoint.pk])
        ciphertext = cursor.fetchone()[0]
    ConversionEndpoint.objects.filter(pk=endpoint.pk).update(secret="gAAAAA-not-decryptable-with-our-keys")
    endpoint.refresh_from_db()
    assert endpoint.secret.startswith("gAAAAA")  # the field hands back what it cannot decrypt

    answer = client.get(conversion_url(endpoint, secret=endpoint.secret, credential_id="1", offer_id="2", redeemed_at=REDEEMED_AT))
    assert answer.status_code == 404 and ciphertext


def test_a_request_to_an_unknown_endpoint_is_kept_with_its_body(client):
    path = reverse("sparkfly-conversion-callback", kwargs={"endpoint_uuid": "5b0d6a5e-54b4-4c3c-a5f3-2d2b1a0f8f11", "secret": "x"})
    client.post(path, data=b"credential_id=1", content_type="application/x-www-form-urlencoded")
    recorded = InboundRequest.objects.get()
    assert recorded.status_code == 404 and bytes(recorded.body) == b"credential_id=1"


def test_a_chunked_body_without_a_length_is_411_not_read_as_empty(client, notification_endpoint):
    answer = client.post(
        reverse("sparkfly-notifications", kwargs={"endpoint_uuid": str(notification_endpoint.uuid)}),
        data=b"", content_type="application/json", HTTP_TRANSFER_ENCODING="chunked",
        HTTP_X_HMAC_SHA256_SIGNATURE="x", CONTENT_LENGTH="",
    )
    assert answer.status_code == 411


def test_the_webhook_views_are_exempt_from_atomic_requests():
    from django.urls import resolve

    for name, kwargs in (
        ("sparkfly-conversion-callback", {"endpoint_uuid": "u", "secret": "s"}),
        ("sparkfly-notifications", {"endpoint_uuid": "u"}),
    ):
        view = resolve(reverse(name, kwargs=kwargs)).func
        assert getattr(view.view_class.dispatch, "_non_atomic_requests", set()) == {"default"}


def test_an_expired_previous_signing_key_is_401_and_a_disabled_endpoint_410(client, notification_endpoint):
    inbound.rotate_secret(notification_endpoint, new_secret=base64.b64encode(b"n" * 64).decode())
    NotificationEndpoint.objects.filter(pk=notification_endpoint.pk).update(
        previous_secret_expires_at=datetime.now(timezone.utc) - timedelta(seconds=1)
    )
    assert notify(client, notification_endpoint, POINTS_REDEEMED).status_code == 401  # signed with the old key
    NotificationEndpoint.objects.filter(pk=notification_endpoint.pk).update(is_enabled=False)
    assert notify(client, notification_endpoint, POINTS_REDEEMED).status_code == 410
