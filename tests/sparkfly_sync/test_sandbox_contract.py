"""Contract test: the sandbox's answers validate against Sparkfly's published OpenAPI specs.

For every operation the sandbox serves that the spec (tests/fixtures/openapi/
sparkfly-platform-v1.0.yaml, OAS 3.0) defines, a real HTTP request is made and its response
(status, headers, body schema) is validated with openapi-core, once with the ``.json`` suffix
and once with an ``Accept: application/json`` header. Where Sparkfly's own narrative
contradicts the spec, ERRATA patch the loaded spec; each says why. Everything else is strict.

The event notification API is only in Sparkfly's newer Core Operations spec (tests/fixtures/
openapi/sparkfly-core-operations.yaml, OAS 3.1, the "GO spec" of reference/sparkfly-api.md);
its operations are checked the same way, their requests as well as their responses, under
CORE_ERRATA.
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import yaml
from openapi_core import OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIResponse
from openapi_core.datatypes import RequestParameters
from openapi_core.exceptions import OpenAPIError
from werkzeug.datastructures import Headers, ImmutableMultiDict

from sparkfly_sync.client import API_PREFIX
from sparkfly_sync.sandbox import SparkflySandbox, serve_in_thread

SPEC_PATH = Path(__file__).resolve().parents[1] / "fixtures" / "openapi" / "sparkfly-platform-v1.0.yaml"
SPEC_HOST = "https://api.sparkfly.com"  # the spec's first server; requests are mapped onto it

# (where, change, why). "where" is a path under the spec's `components`; its last segment may
# list several names separated by commas. The change is merged into each target; a None value
# removes that key. Reasons cite seed 001 (Sparkfly's credentials guide), seed 002 (its getting
# started guide, also the spec's own info.description) or reference/sparkfly-api.md §7.
NULLABLE = {"nullable": True}
INTEGER_ID = {"type": "integer", "format": None, "nullable": True}
# Offer fields seed 002 shows as null when unset (new offer, and the offer list example).
OFFER_UNSET = (
    "description,category,offer_code,pos_offer_code,points_earning_value,points_required_value,"
    "reward_item_description,reward_item_value,terms_and_conditions,merchant_name,external_reward,"
    "activates_at,expires_at,stop_offering_at,max_amount,min_spend_amount,max_redemptions,"
    "max_redemptions_per_member,max_redemptions_per_member_per_day"
)
FORMAT_NULLABLE = "the spec marks it `format: nullable`, its author's spelling of OAS 3.0 `nullable: true`"
ERRATA: list[tuple[str, dict, str]] = [
    ("headers/Date/schema", {"format": None},
     "HTTP's Date header is an IMF-fixdate ('Sun, 06 Nov 1994 08:49:37 GMT', RFC 9110), not an ISO date"),
    ("schemas/credential/properties/annotations", {"type": "object"},
     'seed 001 returns "annotations": {}; ref §7 lists the string typing as a spec defect'),
    ("schemas/credential/properties/identifier,store_id,code_lifetime,merchant_id,offer_name,merchant_name,location_address,url",
     NULLABLE, "seed 001: a credential without offers or store returns these as null"),
    ("schemas/channel/properties/conversion_callback_url", NULLABLE,
     'seed 002: a new channel returns "conversion_callback_url": null'),
    ("schemas/offer/properties/merchant_id,manufacturer_id", INTEGER_ID,
     'ref §7: typed string, but ids are integers (seed 002 credential: "merchant_id": 251) or null (seed 002 new offer)'),
    ("schemas/offer_simplified/properties/merchant_id,manufacturer_id", INTEGER_ID, "as for offer, above"),
    ("schemas/offer/properties/quest_only", {"type": "boolean", "format": None},
     'ref §7: typed string, but seed 002 returns "quest_only": false'),
    (f"schemas/offer/properties/{OFFER_UNSET}", NULLABLE, "seed 002: a new offer returns its unset fields as null"),
    (f"schemas/offer_simplified/properties/{OFFER_UNSET}", NULLABLE, "seed 002: the offer list example shows unset fields as null"),
    ("schemas/eligible_channel/properties/security,security_key,sms_keyword", NULLABLE,
     "seed 002: an offer's channels show security, security_key and sms_keyword as null"),
    ("schemas/eligible_channel/properties/formatting", NULLABLE, FORMAT_NULLABLE),
    ("schemas/store/properties/icon_url", NULLABLE, FORMAT_NULLABLE),
    ("schemas/store/properties/location/properties/address2", NULLABLE, FORMAT_NULLABLE),
]


# The Core Operations spec: only its /event_notifications/ paths are loaded, with the components
# they reference. The rest of the document describes operations the sandbox does not serve, and
# four of its schemas (redemption_grace_period) have `default: null` on a non-nullable integer,
# which openapi-spec-validator rejects before anything could be validated.
CORE_SPEC_PATH = SPEC_PATH.with_name("sparkfly-core-operations.yaml")
CORE_PATH_PREFIX = "/event_notifications/"
SPEC_EVENTS = [  # the Core Operations spec's own subscription.event enum
    "sf.member.created", "sf.member.updated", "sf.member_profile.created", "sf.member_profile.updated",
    "sf.offer_activity.created", "sf.transaction.completed",
]
LOYALTY_EVENTS = ["loyalty.enrollment.created", "loyalty.enrollment.points.awarded", "loyalty.enrollment.points.redeemed"]
LOYALTY_EVENTS_WHY = (
    "Sparkfly's developer docs (guides/events/event-types/loyalty, ref §6.3) list the loyalty events "
    "as subscribable; the spec's enum has only the sf.* events"
)
CORE_ERRATA: list[tuple[str, dict, str]] = [
    ("schemas/subscription/properties/event", {"enum": SPEC_EVENTS + LOYALTY_EVENTS}, LOYALTY_EVENTS_WHY),
    ("schemas/subscription_request/properties/subscription/properties/event", {"enum": SPEC_EVENTS + LOYALTY_EVENTS},
     LOYALTY_EVENTS_WHY),
]


def _read_yaml(path: Path) -> dict:
    with path.open() as handle:
        return yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _load_spec() -> dict:
    return _patched(_read_yaml(SPEC_PATH), ERRATA)


def _load_core_spec(errata: list[tuple[str, dict, str]] = CORE_ERRATA) -> dict:
    spec = _read_yaml(CORE_SPEC_PATH)
    paths = {path: operations for path, operations in spec["paths"].items() if path.startswith(CORE_PATH_PREFIX)}
    components: dict[str, dict] = {"securitySchemes": spec["components"]["securitySchemes"]}

    def keep_referenced(node: object) -> None:
        if isinstance(node, dict):
            reference = node.get("$ref")
            if isinstance(reference, str):  # "#/components/<kind>/<name>"
                kind, name = reference.split("/")[2:]
                if name not in components.setdefault(kind, {}):
                    components[kind][name] = spec["components"][kind][name]
                    keep_referenced(components[kind][name])
            for value in node.values():
                keep_referenced(value)
        elif isinstance(node, list):
            for value in node:
                keep_referenced(value)

    keep_referenced(paths)
    subset = {key: spec[key] for key in ("openapi", "info", "servers", "security")}
    return _patched(copy.deepcopy({**subset, "paths": paths, "components": components}), errata)


def _patched(spec: dict, errata: list[tuple[str, dict, str]]) -> dict:
    for where, change, _why in errata:
        *parents, names = where.split("/")
        node = spec["components"]
        for key in parents:
            node = node[key]
        for name in names.split(","):
            node[name].update(change)
            for key in [k for k, v in change.items() if v is None]:
                del node[name][key]
    return spec


@pytest.fixture(scope="module")
def spec_dict() -> dict:
    return _load_spec()


@pytest.fixture(scope="module")
def openapi(spec_dict) -> OpenAPI:
    return OpenAPI.from_dict(copy.deepcopy(spec_dict))


@pytest.fixture(scope="module")
def core_spec_dict() -> dict:
    return _load_core_spec()


@pytest.fixture(scope="module")
def core_openapi(core_spec_dict) -> OpenAPI:
    return OpenAPI.from_dict(copy.deepcopy(core_spec_dict))


@pytest.fixture(scope="module")
def server():
    """One sandbox for the module: every case creates whatever it mutates."""
    running = serve_in_thread(SparkflySandbox(members=20, offers=10, channels=3, merchants=2, stores_per_merchant=2))
    yield running
    running.shutdown()


@dataclass
class Client:
    """Talks to the sandbox either with a ``.json`` suffix or with an Accept header."""

    base_url: str
    token: str
    suffix: str

    def call(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = {"X-Auth-Token": self.token, **kwargs.pop("headers", {})}
        if not self.suffix:
            headers["Accept"] = "application/json"
        path, _, query = path.partition("?")
        url = self.base_url + path + self.suffix + (f"?{query}" if query else "")
        return requests.request(method, url, headers=headers, timeout=10, **kwargs)

    def first(self, path: str, key: str, singular: str) -> dict:
        return self.call("GET", path).json()[key][0][singular]


@pytest.fixture(scope="module", params=[".json", ""], ids=["json-suffix", "accept-header"])
def client(request, server) -> Client:
    auth = requests.get(f"{server.base_url}/auth", headers={"X-Auth-Identity": "sandbox", "X-Auth-Key": "sandbox"})
    return Client(server.base_url, auth.headers["X-Auth-Token"], request.param)


@dataclass
class SpecRequest:
    """The request as openapi-core should see it: on the spec's host, without ``.json``."""

    host_url: str
    path: str
    method: str
    parameters: RequestParameters
    content_type: str
    body: bytes | None

    @classmethod
    def of(cls, response: requests.Response, *, method: str | None = None) -> SpecRequest:
        sent = response.request
        url = urlsplit(sent.url)
        body = sent.body.encode() if isinstance(sent.body, str) else sent.body
        return cls(
            host_url=SPEC_HOST,
            path=url.path.removesuffix(".json"),
            method=(method or sent.method).lower(),
            parameters=RequestParameters(
                query=ImmutableMultiDict(parse_qs(url.query)),
                header=Headers(dict(sent.headers)),
                cookie=ImmutableMultiDict(),
            ),
            content_type=sent.headers.get("Content-Type") or "application/json",
            body=body,
        )


def validate(openapi: OpenAPI, response: requests.Response, *, as_method: str | None = None) -> None:
    openapi.validate_response(SpecRequest.of(response, method=as_method), RequestsOpenAPIResponse(response))


# ================================================================================================
# One case per (method, spec path): makes the request, returns the response to validate.
# ================================================================================================

CASES: dict[tuple[str, str], Callable[[Client], requests.Response]] = {}
CORE_CASES: dict[tuple[str, str], Callable[[Client], requests.Response]] = {}  # keyed by Core Operations paths
_serial = itertools.count(1)  # unique member identifiers and external ids across cases


def case(method: str, spec_path: str, *, cases: dict = CASES):
    def register(make_request):
        cases[(method, spec_path)] = make_request
        return make_request

    return register


def _member(c: Client) -> dict:
    return c.first("/v1.0/members", "members", "member")


def _running_offer(c: Client) -> dict:
    """An approved, unexpired seeded offer with its channels (the full payload)."""
    for entry in c.call("GET", "/v1.0/offers").json()["offers"]:
        offer = c.call("GET", f"/v1.0/offers/{entry['offer']['id']}").json()["offer"]
        if offer["status"] == "approved" and offer["expires_at"] > "2026-12":
            return offer
    raise AssertionError("no running offer seeded")


def _new_member(c: Client) -> dict:
    return c.call("POST", "/v1.0/members", json={"member": {"identifier": f"contract-{next(_serial)}"}}).json()["member"]


def _new_credential(c: Client) -> dict:
    """An open credential of a fresh member, so redemption limits never get in the way."""
    offer = _running_offer(c)
    channel_id = offer["channels"][0]["channel"]["id"]
    body = {"credential": {"member_id": _new_member(c)["id"], "channel_id": channel_id, "offer_id": offer["id"]}}
    return c.call("POST", "/v1.0/credentials", json=body).json()["credential"]


def _new_offer(c: Client) -> dict:
    return c.call("POST", "/v1.0/offers", json={"offer": {"name": "Contract offer"}}).json()["offer"]


def _new_channel(c: Client) -> dict:
    return c.call("POST", "/v1.0/channels", json={"channel": {"name": "Contract channel"}}).json()["channel"]


@case("get", "/auth")
def _(c):
    return requests.get(f"{c.base_url}/auth{c.suffix}", headers={"X-Auth-Identity": "sandbox", "X-Auth-Key": "sandbox"})


# --- members ---
@case("get", "/v1.0/members")
def _(c):
    return c.call("GET", "/v1.0/members?per_page=5")


@case("post", "/v1.0/members")
def _(c):
    return c.call("POST", "/v1.0/members", json={"member": {"identifier": f"contract-{next(_serial)}"}})


@case("get", "/v1.0/members/{member_id}")
def _(c):
    return c.call("GET", f"/v1.0/members/{_member(c)['id']}")


@case("put", "/v1.0/members/{member_id}")
def _(c):
    member = _member(c)
    return c.call("PUT", f"/v1.0/members/{member['id']}", json={"member": {"notification_mode": "app"}})


@case("delete", "/v1.0/members/{member_id}")
def _(c):
    return c.call("DELETE", f"/v1.0/members/{_new_member(c)['id']}")


@case("get", "/v1.0/members/search")
def _(c):
    return c.call("GET", f"/v1.0/members/search?identifier={_member(c)['identifier']}")


# --- merchants and stores ---
@case("get", "/v1.0/merchants")
def _(c):
    return c.call("GET", "/v1.0/merchants")


@case("post", "/v1.0/merchants")
def _(c):
    contact = {"name": "Ops", "phone": "(415) 555-0100", "email": "ops@example.com"}
    merchant = {
        "name": "Contract Merchant", "logo": "https://example.com/logo.png", "is_active": True,
        "billing_arrangement": "standard", "supports_barcode": False, "redemption_identifier_type": 0,
        "primary": contact, "secondary": contact,
    }
    return c.call("POST", "/v1.0/merchants", json={"merchant": merchant})


@case("get", "/v1.0/merchants/{merchant_id}")
def _(c):
    return c.call("GET", f"/v1.0/merchants/{c.first('/v1.0/merchants', 'merchants', 'merchant')['id']}")


@case("get", "/v1.0/merchants/{merchant_id}/stores")
def _(c):
    return c.call("GET", f"/v1.0/merchants/{c.first('/v1.0/merchants', 'merchants', 'merchant')['id']}/stores")


@case("get", "/v1.0/merchants/{merchant_id}/stores/{store_id}")
def _(c):
    merchant_id = c.first("/v1.0/merchants", "merchants", "merchant")["id"]
    store_id = c.first(f"/v1.0/merchants/{merchant_id}/stores", "stores", "store")["id"]
    return c.call("GET", f"/v1.0/merchants/{merchant_id}/stores/{store_id}")


# --- offers ---
@case("get", "/v1.0/offers")
def _(c):
    return c.call("GET", "/v1.0/offers")


@case("post", "/v1.0/offers")
def _(c):
    return c.call("POST", "/v1.0/offers", json={"offer": {"name": "Test offer"}})


@case("get", "/v1.0/offers/{offer_id}")
def _(c):
    return c.call("GET", f"/v1.0/offers/{_running_offer(c)['id']}")


@case("put", "/v1.0/offers/{offer_id}")
def _(c):
    body = {"offer": {"formatting": {"bg_image": "https://my-domain/banner_image.png", "bg_color": "#FF00AA"}}}
    return c.call("PUT", f"/v1.0/offers/{_new_offer(c)['id']}", json=body)


@case("delete", "/v1.0/offers/{offer_id}")
def _(c):
    return c.call("DELETE", f"/v1.0/offers/{_new_offer(c)['id']}")


@case("get", "/v1.0/offers/{offer_id}/channels")
def _(c):
    return c.call("GET", f"/v1.0/offers/{_running_offer(c)['id']}/channels")


@case("post", "/v1.0/offers/{offer_id}/channels")
def _(c):
    return c.call("POST", f"/v1.0/offers/{_new_offer(c)['id']}/channels", json={"offer": {"channel_ids": [_new_channel(c)["id"]]}})


@case("put", "/v1.0/offers/{offer_id}/channels")
def _(c):
    return c.call("PUT", f"/v1.0/offers/{_new_offer(c)['id']}/channels", json={"offer": {"channel_ids": [_new_channel(c)["id"]]}})


@case("delete", "/v1.0/offers/{offer_id}/channels")
def _(c):
    offer, channel = _new_offer(c), _new_channel(c)
    c.call("POST", f"/v1.0/offers/{offer['id']}/channels", json={"offer": {"channel_ids": [channel["id"]]}})
    return c.call("DELETE", f"/v1.0/offers/{offer['id']}/channels", json={"offer": {"channel_ids": [channel["id"]]}})


@case("get", "/v1.0/offers/{offer_id}/channels/{channel_id}")
def _(c):
    offer = _running_offer(c)
    return c.call("GET", f"/v1.0/offers/{offer['id']}/channels/{offer['channels'][0]['channel']['id']}")


@case("put", "/v1.0/offers/{offer_id}/channels/{channel_id}")
def _(c):
    offer, channel = _new_offer(c), _new_channel(c)
    c.call("POST", f"/v1.0/offers/{offer['id']}/channels", json={"offer": {"channel_ids": [channel["id"]]}})
    body = {"eligible_channel": {"security": "hmac", "sms_keyword": "DEAL", "allow_return_later": True}}
    return c.call("PUT", f"/v1.0/offers/{offer['id']}/channels/{channel['id']}", json=body)


# --- channels ---
@case("get", "/v1.0/channels")
def _(c):
    return c.call("GET", "/v1.0/channels")


@case("post", "/v1.0/channels")
def _(c):
    return c.call("POST", "/v1.0/channels", json={"channel": {"name": "Email"}})


@case("get", "/v1.0/channels/{channel_id}")
def _(c):
    return c.call("GET", f"/v1.0/channels/{c.first('/v1.0/channels', 'channels', 'channel')['id']}")


@case("put", "/v1.0/channels/{channel_id}")
def _(c):
    body = {"channel": {"conversion_callback_url": "https://my_server.com/callback/%{credential_id}?time_of_redemption=%{redeemed_at}"}}
    return c.call("PUT", f"/v1.0/channels/{_new_channel(c)['id']}", json=body)


@case("delete", "/v1.0/channels/{channel_id}")
def _(c):
    return c.call("DELETE", f"/v1.0/channels/{_new_channel(c)['id']}")


# --- credentials ---
@case("get", "/v1.0/credentials")
def _(c):
    _new_credential(c)
    return c.call("GET", "/v1.0/credentials")


@case("post", "/v1.0/credentials")
def _(c):
    # seed 001's second request: query parameters, no offers yet, so identifier is null.
    channel_id = c.first("/v1.0/channels", "channels", "channel")["id"]
    return c.call("POST", f"/v1.0/credentials?member_id={_member(c)['id']}&channel_id={channel_id}")


@case("get", "/v1.0/credentials/eligible")
def _(c):
    return c.call("GET", f"/v1.0/credentials/eligible?member_id={_member(c)['id']}&offer_id={_running_offer(c)['id']}")


@case("get", "/v1.0/credentials/{credential_id}")
def _(c):
    return c.call("GET", f"/v1.0/credentials/{_new_credential(c)['id']}")


@case("put", "/v1.0/credentials/{credential_id}")
def _(c):
    credential = _new_credential(c)
    path = f"/v1.0/credentials/{credential['id']}?channel_id={credential['channel_id']}"
    return c.call("PUT", path, json={"credential": {"annotations": {"sf_ac": "banner"}}})


@case("delete", "/v1.0/credentials/{credential_id}")
def _(c):
    return c.call("DELETE", f"/v1.0/credentials/{_new_credential(c)['id']}")


@case("put", "/v1.0/credentials/{credential_id}/redeem")
def _(c):
    return c.call("PUT", f"/v1.0/credentials/{_new_credential(c)['id']}/redeem")


@case("put", "/v1.0/credentials/{credential_id}/void")
def _(c):
    return c.call("PUT", f"/v1.0/credentials/{_new_credential(c)['id']}/void")


# --- event notifications (Core Operations spec) ---
EVENT_NOTIFICATIONS = f"{API_PREFIX}/event_notifications"


def _new_event_callback(c: Client) -> dict:
    body = {"callback": {"url": "https://crm.example.com/sparkfly/events", "external_id": f"contract-{next(_serial)}"}}
    return c.call("POST", f"{EVENT_NOTIFICATIONS}/callbacks", json=body).json()["callback"]


def _new_subscription(c: Client, event: str = "sf.member.updated") -> dict:
    callback_id = _new_event_callback(c)["id"]
    body = {"subscription": {"callback_id": callback_id, "external_id": f"contract-{next(_serial)}", "event": event}}
    return c.call("POST", f"{EVENT_NOTIFICATIONS}/subscriptions", json=body).json()["subscription"]


@case("get", "/event_notifications/callbacks", cases=CORE_CASES)
def _(c):
    _new_subscription(c, LOYALTY_EVENTS[0])  # so the listed callbacks embed a subscription
    return c.call("GET", f"{EVENT_NOTIFICATIONS}/callbacks")


@case("post", "/event_notifications/callbacks", cases=CORE_CASES)
def _(c):
    body = {"callback": {
        "url": "https://crm.example.com/sparkfly/events", "external_id": "growth_operations_hubspot_events", "enabled": True,
    }}
    return c.call("POST", f"{EVENT_NOTIFICATIONS}/callbacks", json=body)


@case("get", "/event_notifications/callbacks/{callback_id}", cases=CORE_CASES)
def _(c):
    return c.call("GET", f"{EVENT_NOTIFICATIONS}/callbacks/{_new_subscription(c)['callback_id']}")


@case("delete", "/event_notifications/callbacks/{callback_id}", cases=CORE_CASES)
def _(c):
    return c.call("DELETE", f"{EVENT_NOTIFICATIONS}/callbacks/{_new_subscription(c)['callback_id']}")


@case("get", "/event_notifications/subscriptions", cases=CORE_CASES)
def _(c):
    _new_subscription(c, LOYALTY_EVENTS[1])
    return c.call("GET", f"{EVENT_NOTIFICATIONS}/subscriptions")


@case("post", "/event_notifications/subscriptions", cases=CORE_CASES)
def _(c):
    body = {"subscription": {
        "callback_id": _new_event_callback(c)["id"], "external_id": "growth_operations_member_profile_updated",
        "enabled": True, "event": "sf.member_profile.updated",
    }}
    return c.call("POST", f"{EVENT_NOTIFICATIONS}/subscriptions", json=body)


@case("get", "/event_notifications/subscriptions/{subscription_id}", cases=CORE_CASES)
def _(c):
    return c.call("GET", f"{EVENT_NOTIFICATIONS}/subscriptions/{_new_subscription(c)['id']}")


@case("delete", "/event_notifications/subscriptions/{subscription_id}", cases=CORE_CASES)
def _(c):
    return c.call("DELETE", f"{EVENT_NOTIFICATIONS}/subscriptions/{_new_subscription(c)['id']}")


# ================================================================================================
# Tests
# ================================================================================================


@pytest.mark.parametrize("operation", sorted(CASES), ids=lambda op: f"{op[0].upper()} {op[1]}")
def test_response_validates_against_the_spec(openapi, client, operation):
    response = CASES[operation](client)

    assert response.status_code < 300, response.text
    validate(openapi, response)


def _shape(path: str) -> str:
    """A path with its parameters unnamed (names may differ): werkzeug's or the spec's syntax."""
    return re.sub(r"\{\w+\}", "{}", re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", path))


def test_every_served_operation_the_spec_defines_has_a_case(spec_dict, server):
    spec_ops = {(m, _shape(p)) for p, ops in spec_dict["paths"].items() for m in ops if m in {"get", "post", "put", "delete"}}
    served = {
        (method.lower(), _shape(rule.rule))
        for rule in server.sandbox.url_map.iter_rules()
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    covered = {(m, _shape(p)) for m, p in CASES}

    assert served & spec_ops == covered


def test_post_auth_answers_like_the_specs_get_auth(openapi, server):
    response = requests.post(f"{server.base_url}/auth", headers={"X-Auth-Identity": "sandbox", "X-Auth-Key": "sandbox"})

    assert response.status_code == 204
    validate(openapi, response, as_method="get")


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("GET", "/auth", {"headers": {"X-Auth-Identity": "sandbox", "X-Auth-Key": "wrong"}}, 401),
        ("GET", "/v1.0/members", {"headers": {"X-Auth-Token": "expired"}}, 401),
        ("POST", "/v1.0/members", {"data": '{"member": {', "headers": {"Content-Type": "application/json"}}, 400),
        ("GET", "/v1.0/members/999999", {}, 404),
        ("GET", "/v1.0/credentials/999999", {}, 404),
    ],
    ids=["auth-401", "token-401", "malformed-400", "member-404", "credential-404"],
)
def test_error_responses_the_spec_defines_validate(openapi, client, method, path, kwargs, status):
    response = client.call(method, path, **kwargs) if path != "/auth" else requests.get(client.base_url + path, **kwargs)

    assert response.status_code == status
    validate(openapi, response)


# --- event notifications against the Core Operations spec ---------------------------------------


@pytest.mark.parametrize("operation", sorted(CORE_CASES), ids=lambda op: f"{op[0].upper()} {op[1]}")
def test_event_notification_request_and_response_validate_against_the_core_spec(core_openapi, client, operation):
    response = CORE_CASES[operation](client)

    assert response.status_code < 300, response.text
    core_openapi.validate_request(SpecRequest.of(response))
    validate(core_openapi, response)


def test_the_sandbox_serves_every_event_notification_operation_and_each_has_a_case(core_spec_dict, server):
    spec_ops = {
        (method, _shape(API_PREFIX + path))
        for path, operations in core_spec_dict["paths"].items()
        for method in operations if method in {"get", "post", "put", "delete"}
    }
    served = {
        (method.lower(), _shape(rule.rule))
        for rule in server.sandbox.url_map.iter_rules()
        if rule.rule.startswith(API_PREFIX + CORE_PATH_PREFIX)
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    covered = {(method, _shape(API_PREFIX + path)) for method, path in CORE_CASES}

    assert served == spec_ops == covered


@pytest.mark.parametrize("event", LOYALTY_EVENTS)
def test_loyalty_subscriptions_need_the_erratum_and_validate_with_it(core_openapi, client, event):
    body = {"subscription": {"callback_id": _new_event_callback(client)["id"], "external_id": "contract", "event": event}}
    response = client.call("POST", f"{EVENT_NOTIFICATIONS}/subscriptions", json=body)
    strict = OpenAPI.from_dict(_load_core_spec(errata=[]))

    assert response.status_code == 201
    core_openapi.validate_request(SpecRequest.of(response))
    validate(core_openapi, response)
    with pytest.raises(OpenAPIError):
        strict.validate_request(SpecRequest.of(response))


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/callbacks", {"callback": {"url": "ftp://crm.example.com/events", "external_id": "contract"}}, 422),
        ("POST", "/subscriptions", {"subscription": {"callback_id": 424242, "external_id": "contract", "event": "sf.member.created"}},
         422),
        ("GET", "/callbacks/424242", None, 404),
        ("DELETE", "/callbacks/424242", None, 404),
        ("GET", "/subscriptions/424242", None, 404),
        ("DELETE", "/subscriptions/424242", None, 404),
    ],
    ids=[
        "callback-422", "subscription-422", "get-callback-404", "delete-callback-404", "get-subscription-404",
        "delete-subscription-404",
    ],
)
def test_event_notification_error_responses_validate(core_openapi, client, method, path, body, status):
    response = client.call(method, EVENT_NOTIFICATIONS + path, json=body)

    assert response.status_code == status
    validate(core_openapi, response)
