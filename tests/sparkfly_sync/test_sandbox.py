"""Behaviour of the Sparkfly sandbox, exercised over real loopback HTTP with ``requests``.

No Django database is needed. Sources of the expected behaviour are cited as in
``sparkfly_sync/sandbox.py`` (ref §N = reference/sparkfly-api.md, seed 001 = credentials guide,
seed 002 = getting-started guide, seed 004 = LoyaltyEnrollment model).
"""

from __future__ import annotations

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, UTC
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from sparkfly_sync.client import (
    LOYALTY_ENROLLMENT_PATH,
    LOYALTY_ENROLLMENTS_PATH,
    LOYALTY_PROGRAMS_PATH,
    MEMBERS_PATH,
)
from sparkfly_sync.sandbox import SparkflySandbox

SEED_004_FIELDS = {
    "id", "member_id", "program_id", "external_id", "source", "status", "point_balance",
    "historical_points", "tier_id", "tier_term_end_date", "tier_term_start_time",
    "fraud_risk_level", "created_at", "updated_at",
}
AUTH_HEADERS = {"X-Auth-Identity": "sandbox", "X-Auth-Key": "sandbox"}
ELIGIBLE_CHANNEL_FIELDS = {
    "id", "channel_id", "xid", "name", "security", "security_key", "offer_id", "sms_keyword",
    "allow_return_later", "formatting",
}
CREDENTIAL_FIELDS = {  # seed 001's payload, plus status, redeemed_at, voided_at, reusable
    "id", "account_id", "created_at", "updated_at", "identifier", "member_id", "store_id",
    "channel_id", "offer_ids", "annotations", "code_lifetime", "supports_barcode", "merchant_id",
    "offer_name", "merchant_name", "location_address", "url", "status", "redeemed_at",
    "voided_at", "reusable",
}


class Api:
    """A ``requests.Session`` holding a sandbox token; paths are relative to the base URL."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.session = requests.Session()
        answer = self.session.get(f"{base_url}/auth", headers=AUTH_HEADERS)
        assert answer.status_code == 204, answer.text
        self.session.headers["X-Auth-Token"] = answer.headers["X-Auth-Token"]

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        return self.session.request(method, self.base_url + path, timeout=10, **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs) -> requests.Response:
        return self.request("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def items(self, path: str, key: str, singular: str, **params) -> list[dict]:
        """Every item of a list, unwrapped, following the pages."""
        found, page = [], 1
        while True:
            body = self.get(path, params={**params, "page": page}).json()
            found += [entry[singular] for entry in body[key]]
            if page >= body["total_pages"]:
                return found
            page += 1


@pytest.fixture
def api(sparkfly_sandbox) -> Api:
    return Api(sparkfly_sandbox.base_url)


def _is_trace_error(body: dict) -> bool:
    return set(body) == {"trace", "error"} and re.fullmatch(r"[0-9a-f]{32}", body["trace"]) is not None and bool(body["error"])


def _offers_by_kind(api: Api) -> dict[str, dict]:
    """One seeded offer of each kind: approved and running, pending, expired."""
    now = datetime.now(UTC)
    offers = [api.get(f"/v1.0/offers/{o['id']}").json()["offer"] for o in api.items("/v1.0/offers", "offers", "offer")]
    expired = [o for o in offers if datetime.fromisoformat(o["expires_at"]) < now]
    return {
        "running": next(o for o in offers if o["status"] == "approved" and o not in expired),
        "pending": next(o for o in offers if o["status"] == "pending"),
        "expired": expired[0],
    }


def _first_member_id(api: Api) -> int:
    return api.get(MEMBERS_PATH, params={"per_page": 1}).json()["members"][0]["member"]["id"]


def _credential(api: Api, *, offer: dict, member_id: int | None = None, **extra) -> requests.Response:
    """Create a credential for ``offer`` on its first linked channel."""
    fields = {
        "member_id": member_id or _first_member_id(api),
        "channel_id": offer["channels"][0]["channel"]["id"],
        "offer_id": offer["id"],
        **extra,
    }
    return api.post("/v1.0/credentials", json={"credential": fields})


# ================================================================================================
# Auth and transport (ref §0, §1)
# ================================================================================================


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_auth_answers_204_with_a_64_hex_token_for_get_and_post(sparkfly_sandbox, method):
    answer = requests.request(method, f"{sparkfly_sandbox.base_url}/auth", headers=AUTH_HEADERS)

    assert answer.status_code == 204
    assert re.fullmatch(r"[0-9a-f]{64}", answer.headers["X-Auth-Token"])
    assert answer.content == b""


def test_auth_rejects_a_wrong_key_with_401_invalid_credentials(sparkfly_sandbox):
    answer = requests.get(f"{sparkfly_sandbox.base_url}/auth", headers={"X-Auth-Identity": "sandbox", "X-Auth-Key": "nope"})

    assert answer.status_code == 401
    assert answer.json() == {"error": "Invalid credentials"}
    assert "X-Auth-Token" not in answer.headers


def test_identity_and_key_are_configurable(sparkfly_sandbox_factory):
    server = sparkfly_sandbox_factory(identity="acct-42", key="s3cret")

    good = requests.post(f"{server.base_url}/auth", headers={"X-Auth-Identity": "acct-42", "X-Auth-Key": "s3cret"})
    default = requests.post(f"{server.base_url}/auth", headers=AUTH_HEADERS)

    assert (good.status_code, default.status_code) == (204, 401)


@pytest.mark.parametrize("headers", [{}, {"X-Auth-Token": "0" * 64}], ids=["missing", "unknown"])
def test_api_calls_without_a_valid_token_answer_401_json(sparkfly_sandbox, headers):
    answer = requests.get(f"{sparkfly_sandbox.base_url}/v1.0/members", headers=headers)

    assert answer.status_code == 401
    assert answer.headers["Content-Type"] == "application/json; charset=utf-8"
    assert answer.json()["error"]


def test_token_expires_after_its_ttl_by_the_sandbox_clock(sparkfly_sandbox_factory):
    now = [datetime(2026, 3, 1, tzinfo=UTC)]
    server = sparkfly_sandbox_factory(token_ttl_seconds=60, clock=lambda: now[0])
    api = Api(server.base_url)

    now[0] += timedelta(seconds=59)
    still_valid = api.get("/v1.0/channels")
    now[0] += timedelta(seconds=1)
    expired = api.get("/v1.0/channels")

    assert still_valid.status_code == 200
    assert expired.status_code == 401 and expired.json()["error"]


def test_expire_tokens_forces_reauthentication_from_python_and_http(sparkfly_sandbox):
    api = Api(sparkfly_sandbox.base_url)
    assert sparkfly_sandbox.sandbox.expire_tokens() == 1
    assert api.get("/v1.0/channels").status_code == 401

    api = Api(sparkfly_sandbox.base_url)
    control = requests.post(f"{sparkfly_sandbox.base_url}/_sandbox/expire-tokens")
    assert control.json() == {"expired": 1}
    assert api.get("/v1.0/channels").status_code == 401


def test_responses_carry_rails_style_headers(api):
    answer = api.get("/v1.0/channels")

    assert answer.headers["Content-Type"] == "application/json; charset=utf-8"
    assert re.fullmatch(r"[0-9a-f-]{36}", answer.headers["X-Request-Id"])
    assert float(answer.headers["X-Runtime"]) >= 0


def test_json_suffix_and_accept_header_give_the_same_answer(api):
    suffixed = api.get("/v1.0/members/search.json", params={"identifier": "member-000003"})
    accepted = api.get("/v1.0/members/search", params={"identifier": "member-000003"}, headers={"Accept": "application/json"})

    assert suffixed.status_code == accepted.status_code == 200
    assert suffixed.content == accepted.content


def test_unknown_path_is_404_and_wrong_method_is_405_both_json(api):
    missing = api.get("/v1.0/no-such-thing")
    wrong = api.request("PATCH", "/v1.0/members")

    assert missing.status_code == 404 and _is_trace_error(missing.json())
    assert wrong.status_code == 405 and _is_trace_error(wrong.json())
    assert {"GET", "POST"} <= set(wrong.headers["Allow"].split(", "))


def test_malformed_json_body_is_400_error_parsing_request(api):
    answer = api.post("/v1.0/members", data='{"member": {', headers={"Content-Type": "application/json"})

    assert answer.status_code == 400
    assert answer.json()["message"] == "Error parsing request"
    assert answer.json()["error"]


def test_a_sandbox_bug_answers_500_json_and_is_logged(sparkfly_sandbox, api, monkeypatch, caplog):
    monkeypatch.setattr(sparkfly_sandbox.sandbox, "_channels", None)  # list_channels now fails

    answer = api.get("/v1.0/channels")

    assert answer.status_code == 500 and _is_trace_error(answer.json())
    assert "Sparkfly sandbox failed on GET /v1.0/channels" in caplog.text


# ================================================================================================
# Members (ref §3 Members; ASSUMPTION member_profile)
# ================================================================================================


def test_member_list_envelope_defaults_to_100_per_page(sparkfly_sandbox_factory):
    api = Api(sparkfly_sandbox_factory(members=150).base_url)

    body = api.get("/v1.0/members").json()

    assert {k: body[k] for k in ("page", "per_page", "total_entries", "total_pages")} == {
        "page": 1, "per_page": 100, "total_entries": 150, "total_pages": 2,
    }
    assert len(body["members"]) == 100
    member = body["members"][0]["member"]
    assert set(member) == {"id", "identifier", "notification_mode", "account_id", "created_at", "updated_at", "member_profile"}
    assert set(member["member_profile"] or {}) <= {"first_name", "last_name", "email", "phone", "birth_month", "birth_day", "custom_data"}


def test_member_pages_cover_every_member_once_and_past_the_end_is_empty(api):
    seen = api.items("/v1.0/members", "members", "member", per_page=7)
    past_end = api.get("/v1.0/members", params={"page": 99, "per_page": 7}).json()

    assert len(seen) == 50 == len({m["id"] for m in seen})
    assert past_end["members"] == [] and past_end["total_entries"] == 50


def test_member_per_page_above_10000_is_422_with_trace(api):
    answer = api.get("/v1.0/members", params={"per_page": 10001})

    assert answer.status_code == 422 and _is_trace_error(answer.json())


@pytest.mark.parametrize("params", [{"page": "0"}, {"page": "abc"}, {"per_page": "-5"}, {"per_page": "1.5"}])
def test_invalid_paging_parameters_are_400_with_trace(api, params):
    answer = api.get("/v1.0/offers", params=params)

    assert answer.status_code == 400 and _is_trace_error(answer.json())
    assert next(iter(params)) in answer.json()["error"]


def test_member_profiles_exercise_phone_normalisation(sparkfly_sandbox_factory):
    api = Api(sparkfly_sandbox_factory(members=400).base_url)
    members = api.items("/v1.0/members", "members", "member", per_page=400)
    profiles = [m["member_profile"] for m in members if m["member_profile"]]
    phones = [p["phone"] for p in profiles if p["phone"]]
    shapes = {re.sub(r"\d", "9", phone) for phone in phones}

    assert shapes == {"+99999999999", "(999) 999-9999", "999-999-9999", "999.999.9999"}
    assert 0.05 < 1 - len(profiles) / len(members) < 0.15  # ~10% without a profile
    assert 0.05 < 1 - len(phones) / len(members) - (1 - len(profiles) / len(members)) < 0.15  # ~10% no phone
    assert len({m["identifier"] for m in members}) == 400


def test_member_create_read_update_delete(api):
    profile = {"first_name": "Ada", "phone": "415-555-0199"}
    created = api.post("/v1.0/members", json={"member": {"identifier": "crm-1", "member_profile": profile}})
    member_id = created.json()["member"]["id"]
    change = {"notification_mode": "email", "member_profile": {"last_name": "Lovelace"}}
    updated = api.put(f"/v1.0/members/{member_id}", json={"member": change})
    deleted = api.delete(f"/v1.0/members/{member_id}")
    gone = api.get(f"/v1.0/members/{member_id}")

    assert created.status_code == 201 and created.json()["errors"] == {}
    assert created.json()["member"]["notification_mode"] == "app"
    assert updated.status_code == 200
    assert updated.json()["member"]["notification_mode"] == "email"
    assert updated.json()["member"]["member_profile"] == {"first_name": "Ada", "phone": "415-555-0199", "last_name": "Lovelace"}
    assert deleted.status_code == 200 and deleted.json()["member"]["identifier"] == "crm-1"
    assert gone.status_code == 404 and _is_trace_error(gone.json())


@pytest.mark.parametrize(
    ("member", "message"),
    [({}, "can't be blank"), ({"identifier": "  "}, "can't be blank"), ({"identifier": "member-000001"}, "has already been taken")],
)
def test_member_create_validation_answers_422_envelope(api, member, message):
    answer = api.post("/v1.0/members", json={"member": member})

    assert answer.status_code == 422
    assert answer.json()["errors"] == {"identifier": message}
    assert answer.json()["member"]["id"] is None


def test_member_search_finds_by_identifier_or_answers_404(api):
    found = api.get("/v1.0/members/search", params={"identifier": "member-000002"})
    missing = api.get("/v1.0/members/search", params={"identifier": "nobody"})

    assert found.status_code == 200
    assert found.json()["member"]["identifier"] == "member-000002" and found.json()["errors"] == {}
    assert missing.status_code == 404 and _is_trace_error(missing.json())


# ================================================================================================
# Merchants and stores
# ================================================================================================


def test_merchants_list_and_their_stores(api):
    merchants = api.items("/v1.0/merchants", "merchants", "merchant")
    first, second = merchants[0]["id"], merchants[1]["id"]
    stores = api.items(f"/v1.0/merchants/{first}/stores", "stores", "store")
    one = api.get(f"/v1.0/merchants/{first}/stores/{stores[0]['id']}")
    foreign = api.get(f"/v1.0/merchants/{second}/stores/{stores[0]['id']}")

    assert len(merchants) == 2 and len(stores) == 3
    assert {s["merchant_id"] for s in stores} == {first}
    assert {"number", "name", "merchant_id", "location"} <= set(stores[0])
    assert {"address", "city", "state", "zip", "country", "lat", "lng"} <= set(stores[0]["location"])
    assert one.status_code == 200 and one.json()["store"] == stores[0]
    assert foreign.status_code == 404


def test_merchant_create_requires_a_name(api):
    created = api.post("/v1.0/merchants", json={"merchant": {"name": "Waffle Hut", "is_active": True}})
    invalid = api.post("/v1.0/merchants", json={"merchant": {}})

    assert created.status_code == 201 and created.json()["merchant"]["name"] == "Waffle Hut"
    assert api.get(f"/v1.0/merchants/{created.json()['merchant']['id']}").status_code == 200
    assert invalid.status_code == 422 and invalid.json()["errors"] == {"name": "can't be blank"}


# ================================================================================================
# Offers and their channels (seed 002)
# ================================================================================================


def test_offer_list_items_are_simplified_and_the_single_offer_is_full(api):
    listed = api.items("/v1.0/offers", "offers", "offer")[0]
    full = api.get(f"/v1.0/offers/{listed['id']}").json()["offer"]

    assert "channels" not in listed and "eligibility" not in listed
    assert {k: full[k] for k in listed} == listed
    channel = full["channels"][0]["channel"]
    assert set(channel) == {"id", "xid", "name", "security", "security_key", "offer_id", "sms_keyword", "allow_return_later"}
    assert full["eligibility"]["channel_ids"] == [c["channel"]["id"] for c in full["channels"]]
    assert api.get(f"/v1.0/channels/{channel['id']}").json()["channel"]["name"] == channel["name"]


def test_seeded_offers_mix_running_pending_and_expired_with_limits_and_xids(api):
    offers = [api.get(f"/v1.0/offers/{o['id']}").json()["offer"] for o in api.items("/v1.0/offers", "offers", "offer")]
    now = datetime.now(UTC)
    xids = [c["channel"]["xid"] for o in offers for c in o["channels"]]

    assert sum(o["status"] == "approved" for o in offers) >= 8
    assert any(o["status"] == "pending" for o in offers)
    assert any(datetime.fromisoformat(o["expires_at"]) < now for o in offers)
    assert all(1 <= len(o["channels"]) <= 2 for o in offers)
    assert all(re.fullmatch(r"[A-Za-z0-9]{7}", xid) for xid in xids) and len(set(xids)) == len(xids)
    assert all(o[limit] for o in offers for limit in ("max_redemptions", "max_redemptions_per_member", "max_redemptions_per_member_per_day"))


def test_offer_create_is_pending_then_approve_update_and_delete(api):
    created = api.post("/v1.0/offers", json={"offer": {"name": "Test offer"}})
    offer_id = created.json()["offer"]["id"]
    approved = api.put(f"/v1.0/offers/{offer_id}/actions/approve.json")
    api.put(f"/v1.0/offers/{offer_id}", json={"offer": {"formatting": {"bg_image": "https://my-domain/banner.png"}}})
    updated = api.put(f"/v1.0/offers/{offer_id}", json={"offer": {"formatting": {"bg_color": "#FF00AA"}}})
    deleted = api.delete(f"/v1.0/offers/{offer_id}")

    assert created.status_code == 201 and created.json()["offer"]["status"] == "pending"
    assert created.json()["offer"]["channels"] == [] and created.json()["errors"] == {}
    assert approved.status_code == 200 and approved.json() == {"offer": {**approved.json()["offer"], "status": "approved"}, "errors": {}}
    assert updated.status_code == 200
    assert updated.json()["offer"]["formatting"] == {"bg_image": "https://my-domain/banner.png", "bg_color": "#FF00AA"}
    assert deleted.status_code == 200
    assert api.get(f"/v1.0/offers/{offer_id}").status_code == 404


def test_offer_create_without_a_name_is_422(api):
    answer = api.post("/v1.0/offers", json={"offer": {"description": "nameless"}})

    assert answer.status_code == 422 and answer.json()["errors"] == {"name": "can't be blank"}


def test_offer_channels_post_sets_put_adds_delete_removes(api):
    offer_id = api.post("/v1.0/offers", json={"offer": {"name": "Linked"}}).json()["offer"]["id"]
    first, second, third = (c["id"] for c in api.items("/v1.0/channels", "channels", "channel"))
    path = f"/v1.0/offers/{offer_id}/channels"

    set_ = api.post(path, json={"offer": {"channel_ids": [first, second]}})
    reset = api.post(path, json={"offer": {"channel_ids": [second]}})
    added = api.put(path, json={"offer": {"channel_ids": [third]}})
    removed = api.delete(path, json={"offer": {"channel_ids": [second]}})
    unknown = api.put(path, json={"offer": {"channel_ids": [99999]}})

    assert set_.status_code == 201 and set_.json() == {"offer": {"channel_ids": [first, second], "id": offer_id}}
    assert reset.json()["offer"]["channel_ids"] == [second]
    assert added.json()["offer"]["channel_ids"] == [second, third]
    assert removed.status_code == 201 and removed.json()["offer"]["channel_ids"] == [third]
    assert api.get(path).status_code == 200 and api.get(path).json() == removed.json()
    assert unknown.status_code == 422 and "99999" in unknown.json()["errors"]["channel_ids"]
    xid = api.get(f"/v1.0/offers/{offer_id}").json()["offer"]["channels"][0]["channel"]["xid"]
    assert re.fullmatch(r"[A-Za-z0-9]{7}", xid)


def test_eligible_channel_get_and_put(api):
    offer = api.get(f"/v1.0/offers/{api.items('/v1.0/offers', 'offers', 'offer')[0]['id']}").json()["offer"]
    channel_id = offer["channels"][0]["channel"]["id"]
    path = f"/v1.0/offers/{offer['id']}/channels/{channel_id}"

    got = api.get(path)
    put = api.put(path, json={"eligible_channel": {"sms_keyword": "BURGER", "allow_return_later": False}})
    unlinked = api.get(f"/v1.0/offers/{offer['id']}/channels/99999")

    assert got.status_code == 200
    assert set(got.json()["eligible_channel"]) == ELIGIBLE_CHANNEL_FIELDS
    assert got.json()["eligible_channel"]["xid"] == offer["channels"][0]["channel"]["xid"]
    assert put.status_code == 201
    assert put.json()["eligible_channel"]["sms_keyword"] == "BURGER" and put.json()["eligible_channel"]["allow_return_later"] is False
    assert unlinked.status_code == 404


# ================================================================================================
# Channels
# ================================================================================================


def test_channel_create_update_delete_and_name_is_required(api):
    created = api.post("/v1.0/channels", json={"channel": {"name": "Email"}})
    channel_id = created.json()["channel"]["id"]
    callback = "https://example.com/cb/%{credential_id}"
    updated = api.put(f"/v1.0/channels/{channel_id}", json={"channel": {"conversion_callback_url": callback}})
    nameless = api.post("/v1.0/channels", json={"channel": {"allow_hmac": True}})
    deleted = api.delete(f"/v1.0/channels/{channel_id}")

    assert created.status_code == 201
    assert created.json() == {
        "channel": {"id": channel_id, "name": "Email", "allow_sms_keyword": False, "allow_hmac": False, "conversion_callback_url": None},
        "errors": {},
    }
    assert updated.status_code == 200 and updated.json()["channel"]["conversion_callback_url"] == callback
    assert nameless.status_code == 422 and nameless.json()["errors"] == {"name": "can't be blank"}
    assert deleted.status_code == 200 and api.get(f"/v1.0/channels/{channel_id}").status_code == 404


def test_deleting_a_channel_unlinks_it_from_offers(api):
    offer = api.get(f"/v1.0/offers/{api.items('/v1.0/offers', 'offers', 'offer')[0]['id']}").json()["offer"]
    channel_id = offer["channels"][0]["channel"]["id"]

    api.delete(f"/v1.0/channels/{channel_id}")

    assert channel_id not in api.get(f"/v1.0/offers/{offer['id']}/channels").json()["offer"]["channel_ids"]


# ================================================================================================
# Credentials (seed 001)
# ================================================================================================


def test_credential_flow_of_seed_001_with_query_parameters(api):
    offers = _offers_by_kind(api)
    running = offers["running"]
    channel_id = running["channels"][0]["channel"]["id"]
    another = next(
        o for o in (api.get(f"/v1.0/offers/{x['id']}").json()["offer"] for x in api.items("/v1.0/offers", "offers", "offer"))
        if o["status"] == "approved" and o["id"] != running["id"] and channel_id in o["eligibility"]["channel_ids"]
        and o["expires_at"] > "2026"
    )
    member_id = _first_member_id(api)

    no_channel = api.post("/v1.0/credentials.json", params={"member_id": member_id})
    bare = api.post("/v1.0/credentials.json", params={"member_id": member_id, "channel_id": channel_id})
    credential_id = bare.json()["credential"]["id"]
    one = api.put(f"/v1.0/credentials/{credential_id}.json", params={"channel_id": channel_id, "offer_ids": str(running["id"])})
    two = api.put(f"/v1.0/credentials/{credential_id}.json", params={"channel_id": channel_id, "offer_ids": f"{running['id']},{another['id']}"})

    assert no_channel.status_code == 400 and no_channel.json() == {"error": "channel_id is required"}
    assert bare.status_code == 201 and bare.json()["errors"] == {}
    assert set(bare.json()["credential"]) == CREDENTIAL_FIELDS
    assert bare.json()["credential"]["identifier"] is None and bare.json()["credential"]["offer_ids"] == []
    assert bare.json()["credential"]["annotations"] == {} and bare.json()["credential"]["status"] == "open"
    assert one.status_code == 201 and re.fullmatch(r"\d+", one.json()["credential"]["identifier"])
    assert one.json()["credential"]["offer_name"] == running["name"]
    assert two.json()["credential"]["offer_ids"] == [running["id"], another["id"]]
    assert two.json()["credential"]["identifier"] == one.json()["credential"]["identifier"]


def test_credential_created_with_a_json_body_and_an_offer_gets_its_identifier_at_once(api):
    running = _offers_by_kind(api)["running"]

    answer = _credential(api, offer=running, annotations={"sf_ac": "banner-a"})

    credential = answer.json()["credential"]
    assert answer.status_code == 201
    assert credential["offer_ids"] == [running["id"]] and re.fullmatch(r"\d+", credential["identifier"])
    assert credential["annotations"] == {"sf_ac": "banner-a"}
    assert credential["merchant_id"] == running["merchant_id"] and credential["merchant_name"] == running["merchant_name"]


def test_credential_validation_messages_are_seed_001s(api):
    offers = _offers_by_kind(api)
    running, pending, expired = offers["running"], offers["pending"], offers["expired"]
    channels = api.items("/v1.0/channels", "channels", "channel")
    unlinked_channel = next(c["id"] for c in channels if c["id"] not in running["eligibility"]["channel_ids"])
    foreign_store = next(
        s["id"] for m in api.items("/v1.0/merchants", "merchants", "merchant") if m["id"] != running["merchant_id"]
        for s in api.items(f"/v1.0/merchants/{m['id']}/stores", "stores", "store")
    )
    channel_id = running["channels"][0]["channel"]["id"]

    def error_of(**fields):
        credential = {"member_id": _first_member_id(api), "channel_id": channel_id, **fields}
        answer = api.post("/v1.0/credentials", json={"credential": credential})
        assert answer.status_code == 422, answer.text
        return next(iter(answer.json()["errors"].values()))

    assert error_of(member_id=None) == "Member can't be blank"
    def on_its_channel(offer):
        return {"offer_id": offer["id"], "channel_id": offer["channels"][0]["channel"]["id"]}

    assert error_of(**on_its_channel(pending)) == f"offer {pending['name']} must be approved to generate a credential"
    assert error_of(**on_its_channel(expired)) == f"Offer with ID {expired['id']} is no longer active"
    assert error_of(offer_id=running["id"], channel_id=unlinked_channel) == (
        f"Offer not found or not eligible by channel, with id: {running['id']}"
    )
    assert error_of(offer_ids=[123456, 654321]) == "Offer not found or not eligible by channel, with id: 123456, 654321"
    assert error_of(offer_id=running["id"], store_id=foreign_store) == f"Store must be eligible for offer: {running['name']}"


def test_redemptions_count_against_the_per_member_limit(api):
    running = _offers_by_kind(api)["running"]
    api.put(f"/v1.0/offers/{running['id']}", json={"offer": {"max_redemptions_per_member": 1}})
    members = api.items("/v1.0/members", "members", "member", per_page=2)[:2]
    eligible = {"member_id": members[0]["id"], "offer_id": running["id"]}

    before = api.get("/v1.0/credentials/eligible", params=eligible).json()
    first = _credential(api, offer=running, member_id=members[0]["id"]).json()["credential"]
    redeemed = api.put(f"/v1.0/credentials/{first['id']}/redeem")
    after = api.get("/v1.0/credentials/eligible", params=eligible).json()
    second = _credential(api, offer=running, member_id=members[0]["id"])
    other_member = _credential(api, offer=running, member_id=members[1]["id"])

    assert before == {"is_eligible": True, "status": "eligible"}
    assert redeemed.status_code == 201
    assert after == {"is_eligible": False, "status": "redemption_limit_reached"}
    assert second.status_code == 422
    assert second.json()["errors"] == {"offers": f"Member must be eligible for offer: {running['name']}"}
    assert other_member.status_code == 201


def test_redeem_and_void_lifecycle(api):
    running = _offers_by_kind(api)["running"]
    store = api.items(f"/v1.0/merchants/{running['merchant_id']}/stores", "stores", "store")[0]
    to_redeem = _credential(api, offer=running).json()["credential"]
    to_void = _credential(api, offer=running).json()["credential"]

    redeemed = api.put(f"/v1.0/credentials/{to_redeem['id']}/redeem", params={"store_id": store["id"]})
    again = api.put(f"/v1.0/credentials/{to_redeem['id']}/redeem")
    void_redeemed = api.put(f"/v1.0/credentials/{to_redeem['id']}/void")
    voided = api.put(f"/v1.0/credentials/{to_void['id']}/void")
    redeem_voided = api.put(f"/v1.0/credentials/{to_void['id']}/redeem")

    assert redeemed.status_code == 201
    assert redeemed.json()["credential"]["status"] == "redeemed" and redeemed.json()["credential"]["redeemed_at"]
    assert redeemed.json()["credential"]["store_id"] == store["id"]
    assert store["location"]["city"] in redeemed.json()["credential"]["location_address"]
    assert again.status_code == 422 and again.json() == {"error": "Credential has already been redeemed"}
    assert void_redeemed.status_code == 422
    assert voided.status_code == 201 and voided.json()["credential"]["status"] == "voided" and voided.json()["credential"]["voided_at"]
    assert redeem_voided.status_code == 422 and redeem_voided.json() == {"error": "Credential has been voided"}


def test_a_reusable_credential_redeems_again(api):
    running = _offers_by_kind(api)["running"]
    api.put(f"/v1.0/offers/{running['id']}", json={"offer": {"max_redemptions_per_member_per_day": 5, "max_redemptions_per_member": 5}})
    credential = _credential(api, offer=running, reusable=True).json()["credential"]

    answers = [api.put(f"/v1.0/credentials/{credential['id']}/redeem").status_code for _ in range(2)]

    assert answers == [201, 201]


def test_credential_list_filters_get_and_delete(api):
    running = _offers_by_kind(api)["running"]
    members = api.items("/v1.0/members", "members", "member", per_page=2)[:2]
    mine = _credential(api, offer=running, member_id=members[0]["id"]).json()["credential"]
    _credential(api, offer=running, member_id=members[1]["id"])

    everything = api.get("/v1.0/credentials").json()
    filtered = api.get("/v1.0/credentials", params={"member_id": members[0]["id"], "offer_id": running["id"]}).json()
    deleted = api.delete(f"/v1.0/credentials/{mine['id']}")

    assert everything["total_entries"] == 2
    assert [c["credential"]["id"] for c in filtered["credentials"]] == [mine["id"]]
    assert deleted.status_code == 200 and deleted.json()["credential"]["id"] == mine["id"]
    assert api.get(f"/v1.0/credentials/{mine['id']}").status_code == 404


# --- conversion callback -------------------------------------------------------------------------


class CallbackReceiver:
    """A tiny HTTP server recording the conversion callbacks it receives; /fail answers 500.

    ``calls`` holds (method, full path) of each call, ``bodies`` its (Content-Type, raw body)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.bodies: list[tuple[str | None, bytes]] = []
        self._server = make_server("127.0.0.1", 0, self._app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def _app(self, environ, start_response):
        request = Request(environ)
        self.calls.append((request.method, request.full_path))
        self.bodies.append((request.headers.get("Content-Type"), request.get_data()))
        return Response("ok", status=500 if request.path.startswith("/fail") else 200)(environ, start_response)

    def shutdown(self) -> None:
        self._server.shutdown()
        self._thread.join()


@pytest.fixture
def callback_receiver():
    receiver = CallbackReceiver()
    yield receiver
    receiver.shutdown()


def _redeem_with_callback(api: Api, template: str, **credential_fields) -> dict:
    running = _offers_by_kind(api)["running"]
    channel_id = running["channels"][0]["channel"]["id"]
    api.put(f"/v1.0/channels/{channel_id}", json={"channel": {"conversion_callback_url": template}})
    credential = _credential(api, offer=running, **credential_fields).json()["credential"]
    answer = api.put(f"/v1.0/credentials/{credential['id']}/redeem")
    assert answer.status_code == 201
    return {"credential": answer.json()["credential"], "offer": running}


def test_redeem_calls_the_conversion_callback_with_placeholders_substituted(api, sparkfly_sandbox, callback_receiver):
    template = (
        callback_receiver.url + "/cb/%{credential_id}?xid=%{xid}&offer=%{offer_id}&offers=%{offer_ids}&store=%{store_id}"
        "&at=%{redeemed_at}&status=%{status}&uid=%{sf_uid}&ac=%{sf_ac}&click=%{click_id}&unknown=%{nope}"
    )

    result = _redeem_with_callback(api, template, annotations={"sf_ac": "hero banner", "conv_ids": {"click_id": "c&1"}})

    credential, offer = result["credential"], result["offer"]
    method, full_path = callback_receiver.calls[0]
    path, query = urlsplit(full_path).path, parse_qs(urlsplit(full_path).query, keep_blank_values=True)
    member = api.get(f"/v1.0/members/{credential['member_id']}").json()["member"]
    assert method == "POST" and path == f"/cb/{credential['id']}"
    assert query == {
        "xid": [offer["channels"][0]["channel"]["xid"]], "offer": [str(offer["id"])], "offers": [str(offer["id"])],
        "store": [""], "at": [credential["redeemed_at"]], "status": ["redeemed"], "uid": [member["identifier"]],
        "ac": ["hero banner"], "click": ["c&1"], "unknown": [""],
    }
    assert sparkfly_sandbox.sandbox.callbacks == [
        {"url": callback_receiver.url + full_path, "method": "POST", "status": 200, "error": None, "body": ""}
    ]
    assert callback_receiver.bodies[0][1] == b""
    assert requests.get(f"{sparkfly_sandbox.base_url}/_sandbox/callbacks").json() == {"callbacks": sparkfly_sandbox.sandbox.callbacks}


def test_callback_method_is_configurable(sparkfly_sandbox_factory, callback_receiver):
    api = Api(sparkfly_sandbox_factory(callback_method="GET").base_url)

    _redeem_with_callback(api, callback_receiver.url + "/cb/%{credential_id}")

    assert callback_receiver.calls[0][0] == "GET"


def _form_fields(raw: bytes) -> dict[str, str]:
    return {name: value for name, [value] in parse_qs(raw.decode("ascii"), keep_blank_values=True).items()}


@pytest.mark.parametrize(
    ("style", "content_type", "decode"),
    [("form", "application/x-www-form-urlencoded", _form_fields), ("json", "application/json", json.loads)],
)
def test_callback_body_moves_the_query_parameters_into_the_post_body(
    sparkfly_sandbox_factory, callback_receiver, style, content_type, decode
):
    server = sparkfly_sandbox_factory(callback_body=style)
    api = Api(server.base_url)
    template = callback_receiver.url + "/cb/%{credential_id}?at=%{redeemed_at}&uid=%{sf_uid}&ac=%{sf_ac}&store=%{store_id}"

    credential = _redeem_with_callback(api, template, annotations={"sf_ac": "hero & banner +1"})["credential"]

    [(method, full_path)] = callback_receiver.calls
    [(received_type, raw)] = callback_receiver.bodies
    member = api.get(f"/v1.0/members/{credential['member_id']}").json()["member"]
    assert method == "POST"
    assert (urlsplit(full_path).path, urlsplit(full_path).query) == (f"/cb/{credential['id']}", "")
    assert received_type == content_type
    assert decode(raw) == {"at": credential["redeemed_at"], "uid": member["identifier"], "ac": "hero & banner +1", "store": ""}
    assert server.sandbox.callbacks == [
        {"url": f"{callback_receiver.url}/cb/{credential['id']}", "method": "POST", "status": 200, "error": None, "body": raw.decode()}
    ]


@pytest.mark.parametrize(
    "options",
    [{"callback_body": "xml"}, {"callback_body": "json", "callback_method": "GET"}, {"callback_body": "form", "callback_method": "PUT"}],
)
def test_callback_body_is_none_form_or_json_and_only_with_post(options):
    with pytest.raises(ValueError, match="callback_body"):
        SparkflySandbox(members=0, offers=0, **options)


def test_duplicate_callbacks_delivers_a_share_twice_at_once_or_one_after_the_other(sparkfly_sandbox_factory, callback_receiver):
    server = sparkfly_sandbox_factory(duplicate_callbacks=0.5, members=60, seed=4)
    api = Api(server.base_url)
    running = _offers_by_kind(api)["running"]
    api.put(f"/v1.0/channels/{running['channels'][0]['channel']['id']}",
            json={"channel": {"conversion_callback_url": callback_receiver.url + "/cb/%{credential_id}"}})
    members = api.get("/v1.0/members", params={"per_page": 40}).json()["members"]
    for member in members:
        member_id = (member.get("member") or member)["id"]
        credential = _credential(api, offer=running, member_id=member_id).json()["credential"]
        assert api.put(f"/v1.0/credentials/{credential['id']}/redeem").status_code == 201

    by_url: dict[str, list[dict]] = {}
    for entry in server.sandbox.callbacks:
        by_url.setdefault(entry["url"], []).append(entry)
    kinds = {url: entries[0]["copies"] for url, entries in by_url.items()}
    assert len(by_url) == 40
    assert {kind: list(kinds.values()).count(kind) for kind in set(kinds.values())}.keys() == {"once", "concurrent", "again"}
    assert all(len(by_url[url]) == (1 if kind == "once" else 2) for url, kind in kinds.items())
    assert all(sorted(entry["copy"] for entry in by_url[url]) == [0, 1] for url, kind in kinds.items() if kind != "once")
    assert len(callback_receiver.calls) == len(server.sandbox.callbacks)


@pytest.mark.parametrize("target", ["fail", "closed-port"])
def test_a_failing_callback_is_logged_and_never_fails_the_redeem(api, sparkfly_sandbox, callback_receiver, target):
    url = callback_receiver.url + "/fail" if target == "fail" else "http://127.0.0.1:9/cb"  # port 9: discard, closed

    _redeem_with_callback(api, url)

    (entry,) = sparkfly_sandbox.sandbox.callbacks
    assert entry["url"] == url and entry["error"]
    assert entry["status"] == (500 if target == "fail" else None)


def test_no_callback_without_a_conversion_callback_url(api, sparkfly_sandbox):
    running = _offers_by_kind(api)["running"]
    credential = _credential(api, offer=running).json()["credential"]

    api.put(f"/v1.0/credentials/{credential['id']}/redeem")

    assert sparkfly_sandbox.sandbox.callbacks == []


# ================================================================================================
# Loyalty (client.py's assumed paths; seed 004)
# ================================================================================================


def test_loyalty_enrollments_list_omits_tier_id_but_the_single_has_it(sparkfly_sandbox_factory):
    api = Api(sparkfly_sandbox_factory(members=300).base_url)
    (program,) = api.items(LOYALTY_PROGRAMS_PATH, "loyalty_programs", "loyalty_program")
    listed = api.items(LOYALTY_ENROLLMENTS_PATH.format(program_id=program["id"]), "loyalty_enrollments", "loyalty_enrollment")
    single = api.get(LOYALTY_ENROLLMENT_PATH.format(enrollment_id=listed[0]["id"])).json()

    assert set(program) == {"id", "name", "description", "status", "created_at", "updated_at"} and program["status"] == "active"
    assert api.get(f"{LOYALTY_PROGRAMS_PATH}/{program['id']}").json()["loyalty_program"] == program
    assert 0.5 < len(listed) / 300 < 0.7  # ~60% of members enrolled
    assert all(set(e) == SEED_004_FIELDS - {"tier_id"} for e in listed)
    assert set(single["loyalty_enrollment"]) == SEED_004_FIELDS and single["errors"] == {}
    assert single["loyalty_enrollment"]["tier_id"] is not None
    assert all(e["point_balance"] <= e["historical_points"] for e in listed)


def test_loyalty_enrollment_create_requires_an_existing_member(api):
    path = LOYALTY_ENROLLMENTS_PATH.format(program_id=1)
    enrolled = {e["member_id"] for e in api.items(path, "loyalty_enrollments", "loyalty_enrollment")}
    member_id = next(m["id"] for m in api.items("/v1.0/members", "members", "member") if m["id"] not in enrolled)

    created = api.post(path, json={"loyalty_enrollment": {"member_id": member_id, "external_id": "x-1", "source": "app"}})
    twice = api.post(path, json={"loyalty_enrollment": {"member_id": member_id}})
    stranger = api.post(path, json={"loyalty_enrollment": {"member_id": 424242}})

    assert created.status_code == 201
    assert created.json()["loyalty_enrollment"] | {"id": None, "created_at": None, "updated_at": None} == {
        "id": None, "member_id": member_id, "program_id": 1, "external_id": "x-1", "source": "app", "status": "active",
        "point_balance": 0, "historical_points": 0, "tier_id": None, "tier_term_end_date": None,
        "tier_term_start_time": None, "fraud_risk_level": "none", "created_at": None, "updated_at": None,
    }
    assert twice.status_code == 422
    assert stranger.status_code == 422 and stranger.json()["errors"] == {"member_id": "Member must exist"}
    assert api.get(LOYALTY_ENROLLMENTS_PATH.format(program_id=999)).status_code == 404


# ================================================================================================
# Test helpers: faults, request log, determinism, speed
# ================================================================================================


def test_inject_fault_skips_after_then_answers_times_raw(api, sparkfly_sandbox):
    sparkfly_sandbox.sandbox.inject_fault(
        "/v1.0/members", status=503, body="<html>down</html>", content_type="text/html", times=2, after=1
    )

    statuses = [api.get("/v1.0/members").status_code for _ in range(4)]
    sparkfly_sandbox.sandbox.inject_fault("/v1.0/members", body='{"members": [')
    broken = api.get("/v1.0/members.json")

    assert statuses == [200, 503, 503, 200]
    assert broken.status_code == 500 and broken.text == '{"members": ['
    assert api.get("/v1.0/channels").status_code == 200  # other paths untouched


def test_faults_over_http_inject_and_clear(api, sparkfly_sandbox):
    base = sparkfly_sandbox.base_url
    fault = {"path_prefix": "/v1.0/offers", "status": 502, "body": "bad gateway", "times": 5}
    injected = requests.post(f"{base}/_sandbox/faults", json=fault)

    faulted = api.get("/v1.0/offers")
    requests.delete(f"{base}/_sandbox/faults")
    cleared = api.get("/v1.0/offers")
    bad = requests.post(f"{base}/_sandbox/faults", json={"path_prefix": "/x", "colour": "red"})

    assert injected.status_code == 201
    assert (faulted.status_code, faulted.text) == (502, "bad gateway")
    assert cleared.status_code == 200
    assert bad.status_code == 400


def test_a_delayed_fault_answers_late_without_stalling_other_requests(api, sparkfly_sandbox):
    sparkfly_sandbox.sandbox.inject_fault("/v1.0/members", status=200, body="{}", delay=0.5)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1) as pool:
        slow = pool.submit(api.get, "/v1.0/members")
        time.sleep(0.05)
        quick = api.get("/v1.0/channels")
        quick_done = time.perf_counter() - started
        assert slow.result().status_code == 200
    assert quick.status_code == 200 and quick_done < 0.4
    assert time.perf_counter() - started >= 0.5
    with pytest.raises(TypeError, match="delay"):
        sparkfly_sandbox.sandbox.inject_fault("/v1.0/members", delay=-1)


def test_faults_also_hit_auth(sparkfly_sandbox):
    sparkfly_sandbox.sandbox.inject_fault("/auth", status=500)

    answer = requests.get(f"{sparkfly_sandbox.base_url}/auth", headers=AUTH_HEADERS)

    assert answer.status_code == 500 and answer.json() == {"error": "boom"}


def test_clear_faults_python_api(api, sparkfly_sandbox):
    sparkfly_sandbox.sandbox.inject_fault("/v1.0", times=10)
    sparkfly_sandbox.sandbox.clear_faults()

    assert api.get("/v1.0/members").status_code == 200


def test_request_log_records_method_path_and_query(api, sparkfly_sandbox):
    sandbox = sparkfly_sandbox.sandbox
    api.get("/v1.0/members.json", params={"page": 2, "per_page": 5})
    api.get("/v1.0/members")
    requests.get(f"{sparkfly_sandbox.base_url}/_sandbox/callbacks")

    assert sandbox.requests_log[-1] == ("GET", "/v1.0/members", "")
    assert sandbox.requests_log[-2] == ("GET", "/v1.0/members", "page=2&per_page=5")
    assert sandbox.count_requests("/v1.0/members") == 2
    assert sandbox.count_requests("/auth", method="get") == 1
    assert not any(r.path.startswith("/_sandbox") for r in sandbox.requests_log)


def test_same_arguments_give_byte_identical_bodies_and_another_seed_differs(sparkfly_sandbox_factory):
    fixed_now = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    paths = [
        "/v1.0/members?per_page=50", "/v1.0/offers", "/v1.0/offers/1701", "/v1.0/merchants",
        LOYALTY_ENROLLMENTS_PATH.format(program_id=1),
    ]

    def bodies(seed):
        api = Api(sparkfly_sandbox_factory(seed=seed, clock=lambda: fixed_now).base_url)
        seeded = [api.get(path).content for path in paths]
        # Generated while serving: a credential identifier, the xids of new links, a 404's trace.
        credential = _credential(api, offer=_offers_by_kind(api)["running"]).content
        api.post("/v1.0/offers/1702/channels", json={"offer": {"channel_ids": [451, 452, 453]}})
        relinked = api.get("/v1.0/offers/1702").content
        not_found = api.get("/v1.0/members/1").content
        return seeded + [credential, relinked, not_found]

    first, again, other = bodies(7), bodies(7), bodies(8)

    assert first == again
    assert first[0] != other[0] and first[2] != other[2]


def test_a_callback_to_the_sandbox_itself_does_not_deadlock(sparkfly_sandbox_factory):
    """The callback runs after the state lock is released, so it may call the sandbox back."""
    server = sparkfly_sandbox_factory(callback_method="GET")
    api = Api(server.base_url)

    started = time.perf_counter()
    _redeem_with_callback(api, server.base_url + "/_sandbox/callbacks?credential=%{credential_id}")

    assert server.sandbox.callbacks[0]["status"] == 200
    assert time.perf_counter() - started < 2


def test_a_10000_member_page_is_served_well_under_a_second(sparkfly_sandbox_factory):
    api = Api(sparkfly_sandbox_factory(members=10_000).base_url)

    started = time.perf_counter()
    body = api.get("/v1.0/members", params={"per_page": 10_000}).json()
    elapsed = time.perf_counter() - started

    assert len(body["members"]) == 10_000 and body["total_pages"] == 1
    assert elapsed < 1.0, f"{elapsed:.2f}s for one 10,000-member page"
