"""The Sparkfly sandbox's event notifications, over real loopback HTTP.

Callbacks and subscriptions are made through the sandbox's API (the GO spec's
``/event_notifications/*``, ref §6.3); a small local HTTP server receives the signed events.
Event payloads follow DEV events (developers.sparkfly.com/guides/events/event-types/loyalty);
the metadata beside ``event_name`` and the signing key's decoding are the sandbox's
ASSUMPTIONs, see ``sparkfly_sync/sandbox.py``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
import time
from datetime import datetime, UTC
from typing import NamedTuple

import pytest
import requests
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from sparkfly_sync.client import (
    EVENT_CALLBACK_PATH,
    EVENT_CALLBACKS_PATH,
    EVENT_SUBSCRIPTION_PATH,
    EVENT_SUBSCRIPTIONS_PATH,
    LOYALTY_ENROLLMENT_PATH,
    LOYALTY_ENROLLMENTS_PATH,
    MEMBERS_PATH,
)
from sparkfly_sync.sandbox import InsufficientPoints
from tests.sparkfly_sync.test_sandbox import Api

SPEC_EVENTS = (  # the GO spec's subscription.event enum
    "sf.member.created", "sf.member.updated", "sf.member_profile.created", "sf.member_profile.updated",
    "sf.offer_activity.created", "sf.transaction.completed",
)
LOYALTY_EVENTS = ("loyalty.enrollment.created", "loyalty.enrollment.points.awarded", "loyalty.enrollment.points.redeemed")
RFC3339_UTC = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
UUID4 = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"


class Delivery(NamedTuple):
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes  # exactly the bytes received


class EventReceiver:
    """A tiny HTTP server recording every request it receives; paths under /fail answer 500."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self._server = make_server("127.0.0.1", 0, self._app, threaded=True)
        self.base_url = f"http://127.0.0.1:{self._server.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def _app(self, environ, start_response):
        request = Request(environ)
        headers = {name.lower(): value for name, value in request.headers.items()}
        self.deliveries.append(Delivery(request.path, headers, request.get_data()))
        return Response("ok", status=500 if request.path.startswith("/fail") else 200)(environ, start_response)

    def events(self) -> list[dict]:
        return [json.loads(delivery.body) for delivery in self.deliveries]

    def shutdown(self) -> None:
        self._server.shutdown()
        self._thread.join()


@pytest.fixture
def receiver():
    running = EventReceiver()
    yield running
    running.shutdown()


@pytest.fixture
def api(sparkfly_sandbox) -> Api:
    return Api(sparkfly_sandbox.base_url)


def _callback(api: Api, url: str, *events: str, enabled: bool = True, external_id: str = "portal") -> dict:
    """A callback to ``url`` subscribed to ``events``, as GET returns it."""
    created = api.post(EVENT_CALLBACKS_PATH, json={"callback": {"url": url, "external_id": external_id, "enabled": enabled}})
    assert created.status_code == 201, created.text
    callback_id = created.json()["callback"]["id"]
    for event in events:
        _subscribe(api, callback_id, event)
    return api.get(EVENT_CALLBACK_PATH.format(callback_id=callback_id)).json()["callback"]


def _subscribe(api: Api, callback_id: int, event: str, *, enabled: bool = True) -> dict:
    body = {"subscription": {"callback_id": callback_id, "external_id": f"portal-{event}", "enabled": enabled, "event": event}}
    created = api.post(EVENT_SUBSCRIPTIONS_PATH, json=body)
    assert created.status_code == 201, created.text
    return created.json()["subscription"]


def _signature(signing_key: str, body: bytes) -> str:
    """What a receiver computes: base64 of HMAC-SHA256 over the raw body, keyed with the key's UTF-8."""
    return base64.b64encode(hmac.new(signing_key.encode("utf-8"), body, hashlib.sha256).digest()).decode("ascii")


def _new_member(api: Api, identifier: str = "crm-1") -> dict:
    created = api.post(MEMBERS_PATH, json={"member": {"identifier": identifier}})
    assert created.status_code == 201, created.text
    return created.json()["member"]


def _enrollment(api: Api) -> dict:
    """A seeded enrollment, as its GET returns it."""
    listed = api.get(LOYALTY_ENROLLMENTS_PATH.format(program_id=1), params={"per_page": 1}).json()
    return _get_enrollment(api, listed["loyalty_enrollments"][0]["loyalty_enrollment"]["id"])


def _get_enrollment(api: Api, enrollment_id: int) -> dict:
    return api.get(LOYALTY_ENROLLMENT_PATH.format(enrollment_id=enrollment_id)).json()["loyalty_enrollment"]


def _identifier_of(api: Api, member_id: int) -> str:
    return api.get(f"{MEMBERS_PATH}/{member_id}").json()["member"]["identifier"]


# ================================================================================================
# Callbacks and subscriptions (GO spec /event_notifications/*)
# ================================================================================================


def test_callback_create_list_get_and_delete_with_its_subscriptions(api):
    created = api.post(EVENT_CALLBACKS_PATH, json={"callback": {"url": "https://crm.example.com/events", "external_id": "crm"}})
    callback = created.json()["callback"]
    subscription = _subscribe(api, callback["id"], "sf.member.updated")
    path = EVENT_CALLBACK_PATH.format(callback_id=callback["id"])
    listed = api.get(EVENT_CALLBACKS_PATH).json()
    got = api.get(path).json()
    deleted = api.delete(path)

    assert created.status_code == 201
    assert created.json() == {"callback": {
        "id": callback["id"], "external_id": "crm", "enabled": True, "url": "https://crm.example.com/events",
        "last_verified_at": None, "signing_key": callback["signing_key"], "subscriptions": [],
    }}
    assert len(base64.b64decode(callback["signing_key"], validate=True)) == 64
    assert subscription == {
        "id": subscription["id"], "callback_id": callback["id"], "external_id": "portal-sf.member.updated",
        "enabled": True, "event": "sf.member.updated",
    }
    assert got == {"callback": {**callback, "subscriptions": [subscription]}}
    assert listed == {"page": 1, "per_page": 5000, "total_entries": 1, "total_pages": 1, "callbacks": [got]}
    assert deleted.status_code == 200 and deleted.json() == got
    assert api.get(path).status_code == 404
    assert api.get(EVENT_SUBSCRIPTION_PATH.format(subscription_id=subscription["id"])).status_code == 404
    assert api.get(EVENT_SUBSCRIPTIONS_PATH).json()["subscriptions"] == []


def test_subscription_list_get_and_delete(api):
    callback_id = _callback(api, "https://crm.example.com/events")["id"]
    first = _subscribe(api, callback_id, "sf.member.created")
    second = _subscribe(api, callback_id, "loyalty.enrollment.created", enabled=False)
    path = EVENT_SUBSCRIPTION_PATH.format(subscription_id=first["id"])

    page = api.get(EVENT_SUBSCRIPTIONS_PATH, params={"per_page": 1, "page": 2}).json()
    got = api.get(path)
    deleted = api.delete(path)

    assert page == {"page": 2, "per_page": 1, "total_entries": 2, "total_pages": 2, "subscriptions": [{"subscription": second}]}
    assert second["enabled"] is False
    assert got.status_code == 200 and got.json() == {"subscription": first}
    assert deleted.status_code == 200 and deleted.json() == {"subscription": first}
    assert api.get(path).status_code == 404
    assert api.get(EVENT_CALLBACK_PATH.format(callback_id=callback_id)).json()["callback"]["subscriptions"] == [second]


@pytest.mark.parametrize(
    ("fields", "errors"),
    [
        ({"external_id": "crm"}, {"url": "can't be blank"}),
        ({"url": " ", "external_id": "crm"}, {"url": "can't be blank"}),
        ({"url": "ftp://crm.example.com/events", "external_id": "crm"}, {"url": "must be an http(s) URL"}),
        ({"url": "https://", "external_id": "crm"}, {"url": "must be an http(s) URL"}),
        ({"url": "https://crm.example.com/events"}, {"external_id": "can't be blank"}),
        ({"url": "https://crm.example.com/events", "external_id": ""}, {"external_id": "can't be blank"}),
        ({"url": "https://crm.example.com/events", "external_id": "crm", "enabled": "yes"}, {"enabled": "must be true or false"}),
    ],
    ids=["no-url", "blank-url", "ftp-url", "hostless-url", "no-external-id", "blank-external-id", "enabled-not-bool"],
)
def test_callback_create_validation_answers_422_envelope(api, fields, errors):
    answer = api.post(EVENT_CALLBACKS_PATH, json={"callback": fields})

    assert answer.status_code == 422
    assert answer.json()["errors"] == errors
    assert answer.json()["callback"]["id"] is None
    assert api.get(EVENT_CALLBACKS_PATH).json()["total_entries"] == 0


@pytest.mark.parametrize(
    ("fields", "errors"),
    [
        ({"event": "sf.member.deleted"}, {"event": "is not included in the list"}),
        ({"event": None}, {"event": "can't be blank"}),
        ({"callback_id": 424242}, {"callback_id": "Callback must exist"}),
        ({"callback_id": None}, {"callback_id": "can't be blank"}),
        ({"callback_id": "901"}, {"callback_id": "Callback must exist"}),
        ({"external_id": "  "}, {"external_id": "can't be blank"}),
    ],
    ids=["unknown-event", "no-event", "unknown-callback", "no-callback", "callback-id-string", "blank-external-id"],
)
def test_subscription_create_validation_answers_422_envelope(api, fields, errors):
    callback_id = _callback(api, "https://crm.example.com/events")["id"]
    valid = {"callback_id": callback_id, "external_id": "portal", "event": "sf.member.created"}

    answer = api.post(EVENT_SUBSCRIPTIONS_PATH, json={"subscription": {**valid, **fields}})

    assert answer.status_code == 422
    assert answer.json()["errors"] == errors
    assert answer.json()["subscription"]["id"] is None
    assert api.get(EVENT_SUBSCRIPTIONS_PATH).json()["total_entries"] == 0


@pytest.mark.parametrize("event", SPEC_EVENTS + LOYALTY_EVENTS)
def test_the_specs_events_and_the_loyalty_events_can_be_subscribed_to(api, event):
    callback_id = _callback(api, "https://crm.example.com/events")["id"]

    assert _subscribe(api, callback_id, event)["event"] == event


def test_unknown_callbacks_and_subscriptions_are_404(api):
    for path in (EVENT_CALLBACK_PATH.format(callback_id=1), EVENT_SUBSCRIPTION_PATH.format(subscription_id=1)):
        assert api.get(path).status_code == 404
        assert api.delete(path).status_code == 404


# ================================================================================================
# Delivery: body, headers, signature
# ================================================================================================


def test_an_event_is_compact_json_with_metadata_and_a_verifiable_signature(api, receiver):
    callback = _callback(api, receiver.base_url + "/events", "sf.member.created")

    _new_member(api)

    [delivery] = receiver.deliveries
    event = json.loads(delivery.body)
    assert delivery.path == "/events"
    assert delivery.headers["content-type"] == "application/json"
    assert list(event) == ["event_name", "id", "created_at", "data"]
    assert delivery.body == json.dumps(event, separators=(",", ":")).encode()
    assert event["event_name"] == "sf.member.created"
    assert re.fullmatch(UUID4, event["id"]) and re.fullmatch(RFC3339_UTC, event["created_at"])
    signature = delivery.headers["x-hmac-sha256-signature"]
    assert hmac.compare_digest(signature, _signature(callback["signing_key"], delivery.body))
    altered = delivery.body.replace(b"crm-1", b"crm-2")
    assert altered != delivery.body and not hmac.compare_digest(signature, _signature(callback["signing_key"], altered))
    assert not hmac.compare_digest(signature, _signature(callback["signing_key"] + "x", delivery.body))


def test_each_callback_gets_the_same_event_signed_with_its_own_key_once(api, receiver):
    first = _callback(api, receiver.base_url + "/first", "sf.member.created")
    second = _callback(api, receiver.base_url + "/second", "sf.member.created", "sf.member.created")

    _new_member(api)

    by_path = {delivery.path: delivery for delivery in receiver.deliveries}
    assert len(receiver.deliveries) == 2 and set(by_path) == {"/first", "/second"}
    assert by_path["/first"].body == by_path["/second"].body
    for path, callback in (("/first", first), ("/second", second)):
        assert by_path[path].headers["x-hmac-sha256-signature"] == _signature(callback["signing_key"], by_path[path].body)
    assert first["signing_key"] != second["signing_key"]


def test_deliveries_are_recorded_and_served_under_sandbox_notifications(api, sparkfly_sandbox, receiver):
    _callback(api, receiver.base_url + "/events", "sf.member.created")

    _new_member(api)

    [delivery] = receiver.deliveries
    event = json.loads(delivery.body)
    assert sparkfly_sandbox.sandbox.notifications == [{
        "event_name": "sf.member.created", "event_id": event["id"], "url": receiver.base_url + "/events",
        "status": 200, "error": None, "body": delivery.body.decode(),
    }]
    served = requests.get(f"{sparkfly_sandbox.base_url}/_sandbox/notifications").json()
    assert served == {"notifications": sparkfly_sandbox.sandbox.notifications}


@pytest.mark.parametrize("target", ["fail", "closed-port"])
def test_a_failing_delivery_is_recorded_and_never_fails_the_request(api, sparkfly_sandbox, receiver, target):
    url = receiver.base_url + "/fail" if target == "fail" else "http://127.0.0.1:9/events"  # port 9: discard, closed
    _callback(api, url, "sf.member.created")

    created = api.post(MEMBERS_PATH, json={"member": {"identifier": "crm-1"}})

    [entry] = sparkfly_sandbox.sandbox.notifications
    assert created.status_code == 201
    assert entry["url"] == url and entry["error"]
    assert entry["status"] == (500 if target == "fail" else None)


def test_disabled_subscriptions_disabled_callbacks_and_other_events_deliver_nothing(api, sparkfly_sandbox, receiver):
    disabled_callback = _callback(api, receiver.base_url + "/disabled-callback", enabled=False)
    _subscribe(api, disabled_callback["id"], "sf.member.created")
    enabled_callback = _callback(api, receiver.base_url + "/enabled-callback", "sf.member.updated")
    _subscribe(api, enabled_callback["id"], "sf.member.created", enabled=False)

    _new_member(api)
    api.post(MEMBERS_PATH, json={"member": {"identifier": ""}})  # a 422 is no event either

    assert receiver.deliveries == [] and sparkfly_sandbox.sandbox.notifications == []


def test_deleting_a_callback_or_its_subscription_stops_deliveries(api, receiver):
    kept = _callback(api, receiver.base_url + "/kept", "sf.member.created", "sf.member.updated")
    doomed = _callback(api, receiver.base_url + "/doomed", "sf.member.created")
    member = _new_member(api)

    api.delete(EVENT_CALLBACK_PATH.format(callback_id=doomed["id"]))
    updated_subscription = next(s for s in kept["subscriptions"] if s["event"] == "sf.member.updated")
    api.delete(EVENT_SUBSCRIPTION_PATH.format(subscription_id=updated_subscription["id"]))
    _new_member(api, "crm-2")
    api.put(f"{MEMBERS_PATH}/{member['id']}", json={"member": {"notification_mode": "email"}})

    assert [(d.path, json.loads(d.body)["event_name"]) for d in receiver.deliveries] == [
        ("/kept", "sf.member.created"), ("/doomed", "sf.member.created"), ("/kept", "sf.member.created"),
    ]


def test_a_notification_to_the_sandbox_itself_does_not_deadlock(sparkfly_sandbox, api):
    """Deliveries run after the state lock is released, also from the Python helpers."""
    enrollment = _enrollment(api)
    _callback(api, sparkfly_sandbox.base_url + "/auth", "sf.member.created", "loyalty.enrollment.points.awarded")

    started = time.perf_counter()
    _new_member(api)
    sparkfly_sandbox.sandbox.award_points(enrollment["id"], 10)

    assert [entry["status"] for entry in sparkfly_sandbox.sandbox.notifications] == [401, 401]  # /auth without a key
    assert time.perf_counter() - started < 2


def test_same_seed_gives_the_same_signing_keys_and_event_bodies(sparkfly_sandbox_factory, receiver):
    fixed_now = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)

    def run(seed: int) -> tuple[str, str]:
        server = sparkfly_sandbox_factory(seed=seed, clock=lambda: fixed_now)
        api = Api(server.base_url)
        callback = _callback(api, receiver.base_url + "/events", "sf.member.created")
        _new_member(api)
        return callback["signing_key"], server.sandbox.notifications[-1]["body"]

    first, again, other = run(7), run(7), run(8)

    assert first == again
    assert first[0] != other[0] and first[1] != other[1]


# ================================================================================================
# Event payloads
# ================================================================================================


def test_member_created_and_updated_carry_the_member_as_its_get_returns_it(api, receiver):
    _callback(api, receiver.base_url + "/events", "sf.member.created", "sf.member.updated")

    created = api.post(MEMBERS_PATH, json={"member": {"identifier": "crm-1", "member_profile": {"first_name": "Ada"}}})
    member_id = created.json()["member"]["id"]
    as_created = api.get(f"{MEMBERS_PATH}/{member_id}").json()["member"]
    api.put(f"{MEMBERS_PATH}/{member_id}", json={"member": {"member_profile": {"last_name": "Lovelace"}}})
    as_updated = api.get(f"{MEMBERS_PATH}/{member_id}").json()["member"]

    created, updated = receiver.events()
    assert (created["event_name"], created["data"]) == ("sf.member.created", {"member": as_created})
    assert (updated["event_name"], updated["data"]) == ("sf.member.updated", {"member": as_updated})
    assert as_updated["member_profile"] == {"first_name": "Ada", "last_name": "Lovelace"}
    assert created["id"] != updated["id"]


def test_enrollment_created_carries_the_enrollment_and_its_member(api, receiver):
    _callback(api, receiver.base_url + "/events", "loyalty.enrollment.created")
    member = _new_member(api)

    created = api.post(
        LOYALTY_ENROLLMENTS_PATH.format(program_id=1),
        json={"loyalty_enrollment": {"member_id": member["id"], "external_id": "x-1", "source": "app"}},
    ).json()["loyalty_enrollment"]

    [event] = receiver.events()
    assert event["event_name"] == "loyalty.enrollment.created"
    assert event["data"] == {"enrollment": {
        "id": created["id"], "source": "app", "created_at": created["created_at"], "external_id": "x-1",
        "program_id": 1, "member": {"id": member["id"], "identifier": "crm-1"},
    }}


def test_award_points_credits_balance_and_lifetime_points_and_is_announced(api, sparkfly_sandbox, receiver):
    _callback(api, receiver.base_url + "/events", "loyalty.enrollment.points.awarded")
    before = _enrollment(api)

    returned = sparkfly_sandbox.sandbox.award_points(before["id"], 250)
    over_http = requests.post(
        f"{sparkfly_sandbox.base_url}/_sandbox/loyalty/enrollments/{before['id']}/award", json={"points": 50}
    )

    after = _get_enrollment(api, before["id"])
    assert returned["point_balance"] == before["point_balance"] + 250
    assert over_http.status_code == 200 and over_http.json() == {"loyalty_enrollment": after}
    assert after["point_balance"] == before["point_balance"] + 300
    assert after["historical_points"] == before["historical_points"] + 300
    first, second = receiver.events()
    assert first["event_name"] == second["event_name"] == "loyalty.enrollment.points.awarded"
    assert second["data"] == {"member": {
        "id": before["member_id"], "identifier": _identifier_of(api, before["member_id"]),
        "enrollment": {
            "id": before["id"], "external_id": before["external_id"], "current_points": after["point_balance"],
            "points_earned": 50, "historical_points": after["historical_points"],
        },
    }}
    assert first["data"]["member"]["enrollment"]["points_earned"] == 250


def test_redeem_points_debits_the_balance_for_a_new_reward_state_and_is_announced(api, sparkfly_sandbox, receiver):
    _callback(api, receiver.base_url + "/events", "loyalty.enrollment.points.redeemed")
    before = _enrollment(api)
    sparkfly_sandbox.sandbox.award_points(before["id"], 500)  # enough, whatever the seeded balance

    reward_state = sparkfly_sandbox.sandbox.redeem_points(before["id"], 300, reward_id=7)
    over_http = requests.post(
        f"{sparkfly_sandbox.base_url}/_sandbox/loyalty/enrollments/{before['id']}/redeem", json={"points": 200}
    )

    after = _get_enrollment(api, before["id"])
    assert after["point_balance"] == before["point_balance"]  # +500 -300 -200
    assert after["historical_points"] == before["historical_points"] + 500  # redeeming spends no lifetime points
    assert reward_state == {
        "id": reward_state["id"], "reward_id": 7, "offer_state_id": reward_state["offer_state_id"],
        "credential_identifier": reward_state["credential_identifier"], "issued_point_value": 300,
        "status": "completed", "created_at": reward_state["created_at"],
    }
    assert re.fullmatch(r"\d{8}", reward_state["credential_identifier"])
    assert re.fullmatch(RFC3339_UTC, reward_state["created_at"])
    second_state = over_http.json()["reward_state"]
    assert over_http.status_code == 201 and second_state["reward_id"] == 1 and second_state["issued_point_value"] == 200
    assert second_state["id"] != reward_state["id"] and second_state["offer_state_id"] != reward_state["offer_state_id"]
    assert second_state["credential_identifier"] != reward_state["credential_identifier"]
    first, second = receiver.events()
    assert first["event_name"] == "loyalty.enrollment.points.redeemed"
    assert first["data"] == {
        "points_redeemed": 300,
        "member": {
            "id": before["member_id"], "identifier": _identifier_of(api, before["member_id"]),
            "enrollment": {
                "id": before["id"], "external_id": before["external_id"],
                "current_points": before["point_balance"] + 200, "historical_points": after["historical_points"],
            },
        },
        "reward_state": reward_state,
    }
    assert second["data"]["reward_state"] == second_state
    assert second["data"]["member"]["enrollment"]["current_points"] == after["point_balance"]


def test_redeem_refuses_a_short_balance_and_changes_nothing(api, sparkfly_sandbox, receiver):
    _callback(api, receiver.base_url + "/events", "loyalty.enrollment.points.redeemed")
    before = _enrollment(api)
    too_many = before["point_balance"] + 1

    with pytest.raises(InsufficientPoints, match=str(too_many)):
        sparkfly_sandbox.sandbox.redeem_points(before["id"], too_many)
    over_http = requests.post(
        f"{sparkfly_sandbox.base_url}/_sandbox/loyalty/enrollments/{before['id']}/redeem", json={"points": too_many}
    )

    assert issubclass(InsufficientPoints, ValueError)
    assert over_http.status_code == 422 and over_http.json()["error"]
    assert _get_enrollment(api, before["id"]) == before
    assert receiver.deliveries == []


@pytest.mark.parametrize("action", ["award", "redeem"])
@pytest.mark.parametrize("body", [{"points": 0}, {"points": -5}, {"points": 1.5}, {"points": "5"}, {"points": True}, {}])
def test_points_controls_answer_400_on_bad_points(api, sparkfly_sandbox, action, body):
    before = _enrollment(api)

    answer = requests.post(f"{sparkfly_sandbox.base_url}/_sandbox/loyalty/enrollments/{before['id']}/{action}", json=body)

    assert answer.status_code == 400 and "points must be a positive integer" in answer.json()["error"]
    assert _get_enrollment(api, before["id"]) == before


@pytest.mark.parametrize("action", ["award", "redeem"])
def test_points_controls_answer_404_on_an_unknown_enrollment(sparkfly_sandbox, action):
    answer = requests.post(f"{sparkfly_sandbox.base_url}/_sandbox/loyalty/enrollments/1/{action}", json={"points": 5})

    assert answer.status_code == 404


def test_points_python_helpers_reject_bad_arguments(api, sparkfly_sandbox):
    sandbox = sparkfly_sandbox.sandbox
    enrollment_id = _enrollment(api)["id"]

    with pytest.raises(KeyError):
        sandbox.award_points(1, 5)
    with pytest.raises(ValueError, match="points"):
        sandbox.award_points(enrollment_id, 0)
    with pytest.raises(ValueError, match="reward_id"):
        sandbox.redeem_points(enrollment_id, 1, reward_id=0)
