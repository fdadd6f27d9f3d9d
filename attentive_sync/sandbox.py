"""Attentive API sandbox: an in-memory simulator of Attentive's v1 REST API.

Served over real HTTP (werkzeug), so the portal's client, its tests, the throughput benchmark and
``make run`` talk to it exactly as they would to api.attentivemobile.com: Bearer auth, the same
paths, statuses, validation rules, per-endpoint rate limits and ``x-ratelimit-*`` headers.

Where the behaviour comes from (cited in comments as):
- "ref §N": the research notes, reference/attentive-api.md, section N;
- "spec": Attentive's published v1 OpenAPI document (reference/openapi/attentive-v1.json).
Anything neither documents is marked ASSUMPTION.

Every path is imported from ``attentive_sync.client`` and the custom-event rules from
``attentive_sync.events``, so the client, the portal's own validation and the sandbox cannot drift
apart. No Django import: the sandbox runs standalone (tests without a database; the
``attentive_sandbox`` management command is a thin wrapper).

Concurrency: one lock guards all state (subscriptions, what was received, rate-limit windows,
faults, the request log). Reading the request body, the simulated latency, fault delays and
dropping a connection all happen outside it, so slow requests overlap instead of queueing.
"""

from __future__ import annotations

import hmac
import itertools
import json
import logging
import random
import re
import socket
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, NamedTuple

from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from portal import loopback
from portal.loopback import SandboxServer

from attentive_sync.client import (
    BULK_JOB_PATH,
    CUSTOM_ATTRIBUTES_PATH,
    CUSTOM_EVENTS_PATH,
    IDENTITY_PATH,
    ME_PATH,
    SEGMENT_MEMBERS_MAX,
    SEGMENT_MEMBERS_PATH,
    SEGMENTS_PATH,
    SUBSCRIPTIONS_PATH,
    TEXT_SEND_PATH,
    UNSUBSCRIBE_PATH,
)
from attentive_sync.events import E164, FORBIDDEN_PROPERTY_KEY_CHARACTERS, FORBIDDEN_TYPE_CHARACTERS

logger = logging.getLogger(__name__)

# Test-control endpoints; not part of Attentive, no auth, never logged, limited or faulted.
CONTROL_PREFIX = "/_sandbox"

JSON_CONTENT_TYPE = "application/json"
# What ``fail_rate`` may answer instead of the operation (``fail_with``): a 500, a 429, or a
# timeout (the connection held ``timeout_seconds`` and then dropped, the request unprocessed).
FAILURE_KINDS = ("500", "429", "timeout")
DEFAULT_RATE_LIMIT = 150  # ref §5: "up to 150 requests per second for most endpoints"
# ref §5: the endpoints with lower limits. They stay at Attentive's numbers whatever the default
# is set to (rate_limit=0 switches limiting off altogether, see AttentiveSandbox).
LOWER_LIMITS = {
    f"POST {IDENTITY_PATH}": 10,
    f"POST {SUBSCRIPTIONS_PATH}": 10,
    f"POST {UNSUBSCRIBE_PATH}": 5,
    # v2 spec: "Default Rate Limit: 100 requests per second" on segments, bulk and job status.
    f"POST {SEGMENTS_PATH}": 100,
    f"POST {SEGMENT_MEMBERS_PATH}": 100,
    "GET /v2/bulk/job/<bulk_job_id>": 100,
}
RATE_WINDOW_SECONDS = 1.0

COMPANY_ID = "MDc6Q29tcGFueTI"  # the spec's example: opaque, base64-looking
SUBSCRIPTION_TYPES = ("MARKETING", "TRANSACTIONAL", "CHECKOUT_ABANDONED")  # spec SubscriptionDto
SUBSCRIBE_TYPES = ("MARKETING", "TRANSACTIONAL")  # spec AddSubscriptionsRequestDto.subscriptionType
# ASSUMPTION: a subscribe naming only a signUpSourceId gets this type (the unit's real type is
# configured in Attentive's UI, which the sandbox does not have).
SIGN_UP_SOURCE_TYPE = "MARKETING"
NOTIFICATION_LANGUAGES = ("en-US", "fr-CA")  # spec NotificationConfigDto: "only supports en-US and fr-CA"
IDENTIFIER_MAX_LENGTH = 100  # ref §4: every identity field
ATTRIBUTE_NAME_MAX_LENGTH = 200  # ref §4
E164_EXAMPLE = "+13115552368"
# RFC 3339 section 5.6 date-time: the offset is mandatory (ref §2: "with required UTC offset").
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
LANGUAGE_CODE = re.compile(r"[a-z]{2}")  # ISO 639-1, case-sensitive (spec LocaleDto)
COUNTRY_CODE = re.compile(r"[A-Z]{2}")  # ISO 3166-1 alpha-2, case-sensitive (spec LocaleDto)

EVENT_USER_FIELDS = ("phone", "email", "externalIdentifiers")  # spec EventUser, additionalProperties: false
EVENT_EXTERNAL_ID_FIELDS = ("clientUserId",)  # spec ExternalIdentifiers (no shopifyId/klaviyoId, ref §2)
SUBSCRIBE_EXTERNAL_ID_FIELDS = ("clientUserId", "shopifyId", "klaviyoId")  # spec NewExternalIdentifierDto
# spec IdentifyRequestDto: these and phone are the identifiers a custom one can be tied to.
IDENTITY_STRING_FIELDS = ("email", "shopifyId", "klaviyoId", "clientUserId")
CHANNEL_OF_CONTACT = {"phone": "TEXT", "email": "EMAIL"}  # ref §3: phone finds TEXT, email EMAIL only
RECEIVED_KINDS = ("events", "attributes", "subscriptions", "unsubscriptions", "identities")
FAULT_BODY = '{"error":{"id":0,"message":"injected fault"}}'


class LoggedRequest(NamedTuple):
    """One API request: method, path, raw query string, and the status answered (None: dropped)."""

    method: str
    path: str
    query: str
    status: int | None


@dataclass
class Fault:
    """A canned raw response for requests whose path starts with ``path_prefix``.

    The first ``after`` matching requests pass through untouched; the next ``times`` get
    ``status``/``body``/``content_type`` verbatim (the body may be deliberately broken JSON),
    ``delay`` seconds late (a slow Attentive, for read timeouts), or, with ``drop``, no answer at
    all: the connection is closed after the delay (a dropped connection). A faulted request
    never reaches the API: it is not authenticated, rate-limited or recorded. With ``location``
    the answer carries that ``Location`` header (a redirect, which the client must not follow).
    """

    path_prefix: str
    status: int = 500
    body: str = FAULT_BODY
    content_type: str = JSON_CONTENT_TYPE
    times: int = 1
    after: int = 0
    delay: float = 0.0
    drop: bool = False
    location: str = ""

    def __post_init__(self) -> None:
        # Checked here so a bad fault fails when injected, not when a request hits it.
        if not all(isinstance(text, str) for text in (self.path_prefix, self.body, self.content_type, self.location)):
            raise TypeError("path_prefix, body, content_type and location must be strings")
        if not all(type(number) is int for number in (self.status, self.times, self.after)):
            raise TypeError("status, times and after must be integers")
        if not 100 <= self.status <= 599 or self.times < 1 or self.after < 0:
            raise TypeError("status must be 100-599, times at least 1, after at least 0")
        if isinstance(self.delay, bool) or not isinstance(self.delay, int | float) or not 0 <= self.delay <= 60:
            raise TypeError("delay must be a number of seconds from 0 to 60")
        if not isinstance(self.drop, bool):
            raise TypeError("drop must be true or false")


class _Abort(Exception):
    """Raised by validation and helpers: answer ``status`` with ``message`` in the error shape."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _TimedOut(Exception):
    """Raised by a ``fail_rate`` timeout: hold the connection, then drop it."""


class _DroppedConnection(ConnectionError):
    """Raised once the socket is shut: werkzeug takes a ConnectionError for a client that went
    away, so it writes nothing more (no 500 page) and logs nothing."""


@dataclass(frozen=True)
class _Endpoint:
    """One Attentive operation: ``parse`` validates the request without touching state (raises
    ``_Abort``), ``apply`` changes state and answers; it runs only for requests that passed
    auth, the rate limit, validation and ``fail_rate``."""

    parse: Callable[[Request], Any]
    apply: Callable[[Any, Request], Response]


# ================================================================================================
# Validation: pure functions of the request, each problem named the way the caller wrote it
# ================================================================================================


def _kind(value: Any) -> str:
    """The JSON name of a value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number"}[type(value)]


def _listed(characters: list[str]) -> str:
    return " ".join(repr(c) for c in characters)


def _json_body(request: Request) -> dict:
    """The request body as a JSON object (ASSUMPTION: a body that is not ``application/json``
    is refused with 415, as a Spring-style JSON API does; Attentive documents nothing)."""
    data = request.get_data()
    if not data:
        raise _Abort(400, "a JSON object body is required")
    if request.mimetype != JSON_CONTENT_TYPE:
        sent = f"not {request.mimetype}" if request.mimetype else "none was sent"
        raise _Abort(415, f"Content-Type must be application/json ({sent})")
    try:
        body = json.loads(data)
    except ValueError as exc:  # UnicodeDecodeError is a ValueError too
        raise _Abort(400, f"body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise _Abort(400, f"body must be a JSON object, not {_kind(body)}")
    return body


def _raise_if(problems: list[str]) -> None:
    if problems:
        raise _Abort(400, "; ".join(problems))


def _string_problems(value: Any, where: str, *, max_length: int | None = None) -> list[str]:
    """A required non-empty string (Attentive: "avoid sending null values or empty strings")."""
    if not isinstance(value, str):
        return [f"{where} must be a string, not {_kind(value)}"]
    if not value.strip():
        return [f"{where} must not be empty"]
    if max_length is not None and len(value) > max_length:
        return [f"{where} is {len(value)} characters long; the limit is {max_length}"]
    return []


def _phone_problems(value: Any, where: str) -> list[str]:
    problems = _string_problems(value, where)
    if not problems and not E164.match(value):
        hint = " (in a query string the '+' must be sent as %2B)" if value.startswith(" ") else ""
        problems.append(f"{where} {value!r} is not E.164, like {E164_EXAMPLE}{hint}")
    return problems


def _contact_problems(holder: dict, prefix: str) -> list[str]:
    """``phone`` (E.164) and ``email`` where present, e.g. ``user.phone '+1-555' is not E.164``."""
    problems = []
    if "phone" in holder:
        problems += _phone_problems(holder["phone"], f"{prefix}phone")
    if "email" in holder:
        problems += _string_problems(holder["email"], f"{prefix}email")
    return problems


def _custom_identifier_problems(items: Any, where: str, *, max_length: int | None = None) -> list[str]:
    """A list of ``{name, value}`` objects with string values (spec: ``value`` is a string; a map,
    as Segment sends, or a number is refused)."""
    if not isinstance(items, list):
        return [f"{where} must be a list of {{name, value}} objects, not {_kind(items)}"]
    problems = []
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            problems.append(f"{where}[{n}] must be an object with name and value, not {_kind(item)}")
            continue
        for field in ("name", "value"):
            if field not in item:
                problems.append(f"{where}[{n}].{field} is required")
            else:
                problems += _string_problems(item[field], f"{where}[{n}].{field}", max_length=max_length)
    return problems


def _external_identifier_problems(value: Any, where: str, fields: tuple[str, ...]) -> list[str]:
    """``externalIdentifiers``: string ``fields`` plus ``customIdentifiers``; other keys are
    ignored (the spec does not close these objects)."""
    if not isinstance(value, dict):
        return [f"{where} must be an object, not {_kind(value)}"]
    problems = []
    for field in fields:
        if field in value:
            problems += _string_problems(value[field], f"{where}.{field}")
    if "customIdentifiers" in value:
        problems += _custom_identifier_problems(value["customIdentifiers"], f"{where}.customIdentifiers")
    return problems


def _event_user_problems(body: dict) -> list[str]:
    """spec EventUser (custom events and attributes): an object of only phone, email and
    externalIdentifiers, naming the user by at least one of them."""
    if "user" not in body:
        return ["user is required"]
    user = body["user"]
    if not isinstance(user, dict):
        return [f"user must be an object, not {_kind(user)}"]
    problems = []
    if unknown := [key for key in user if key not in EVENT_USER_FIELDS]:
        problems.append(f"user has unknown field(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(EVENT_USER_FIELDS)}")
    problems += _contact_problems(user, "user.")
    external = user.get("externalIdentifiers")
    if "externalIdentifiers" in user:
        problems += _external_identifier_problems(external, "user.externalIdentifiers", EVENT_EXTERNAL_ID_FIELDS)
    named = "phone" in user or "email" in user or (
        isinstance(external, dict) and ("clientUserId" in external or bool(external.get("customIdentifiers")))
    )
    if not named:
        problems.append("user needs a phone, an email or externalIdentifiers (clientUserId or customIdentifiers)")
    return problems


def _occurred_at_problems(value: Any) -> list[str]:
    if not isinstance(value, str):
        return [f"occurredAt must be a string, not {_kind(value)}"]
    if RFC3339.fullmatch(value):
        try:  # the shape is right; fromisoformat checks the ranges (month 13, February 30)
            datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
            return []
        except ValueError:
            pass
    return [f"occurredAt {value!r} is not an RFC 3339 timestamp with a UTC offset, like 2021-03-30T14:38:29.000Z"]


def _custom_event(request: Request) -> dict:
    """``POST /v1/events/custom`` (ref §2). Unknown top-level keys are ignored: integrators send
    some (RudderStack's ``occuredAt``) and production takes them (ref §2, an inference)."""
    body = _json_body(request)
    problems = []
    if "type" not in body:
        problems.append("type is required")
    else:
        problems += _string_problems(body["type"], "type")
        if not problems and (bad := sorted(FORBIDDEN_TYPE_CHARACTERS & set(body["type"]))):
            problems.append(f"type {body['type']!r} contains characters Attentive forbids: {_listed(bad)}")
    problems += _event_user_problems(body)
    if "properties" in body:
        properties = body["properties"]
        if not isinstance(properties, dict):
            problems.append(f"properties must be an object, not {_kind(properties)}")
        else:
            for key in properties:
                if bad := sorted(FORBIDDEN_PROPERTY_KEY_CHARACTERS & set(key)):
                    problems.append(f"properties key {key!r} contains characters Attentive forbids: {_listed(bad)}")
    if "occurredAt" in body:
        problems += _occurred_at_problems(body["occurredAt"])
    if "externalEventId" in body and not isinstance(body["externalEventId"], str):
        problems.append(f"externalEventId must be a string, not {_kind(body['externalEventId'])}")
    _raise_if(problems)
    return body


def _array_paths(value: Any, where: str) -> list[str]:
    """Where in ``value`` a list occurs (nested objects searched too)."""
    if isinstance(value, list):
        return [where]
    if isinstance(value, dict):
        return [found for key, item in value.items() for found in _array_paths(item, f"{where}.{key}")]
    return []


def _custom_attributes(request: Request) -> dict:
    """``POST /v1/attributes/custom`` (ref §4): arrays are refused ("the API does not support
    arrays ... will result in a 400 error"), names are at most 200 characters."""
    body = _json_body(request)
    problems = []
    properties = body.get("properties")
    if "properties" not in body:
        problems.append("properties is required")
    elif not isinstance(properties, dict):
        problems.append(f"properties must be an object, not {_kind(properties)}")
    else:
        for name, value in properties.items():
            if len(name) > ATTRIBUTE_NAME_MAX_LENGTH:
                problems.append(f"attribute name {name[:20]!r}... is {len(name)} characters; the limit is {ATTRIBUTE_NAME_MAX_LENGTH}")
            for where in _array_paths(value, f"properties.{name}"):
                problems.append(f"{where} is a list; Attentive does not accept arrays in custom attributes")
    problems += _event_user_problems(body)
    _raise_if(problems)
    return body


def _subscriber_problems(body: dict) -> list[str]:
    """spec UserDto1 (subscribe, unsubscribe): phone and/or email; other keys are ignored."""
    if "user" not in body:
        return ["user is required"]
    user = body["user"]
    if not isinstance(user, dict):
        return [f"user must be an object, not {_kind(user)}"]
    if "phone" not in user and "email" not in user:
        return ["user needs a phone or an email"]
    return _contact_problems(user, "user.")


def _enum_problems(value: Any, where: str, allowed: tuple[str, ...]) -> list[str]:
    if value not in allowed:
        return [f"{where} {value!r} is not one of {', '.join(allowed)}"]
    return []


def _locale_problems(locale: Any) -> list[str]:
    if not isinstance(locale, dict):
        return [f"locale must be an object, not {_kind(locale)}"]
    problems = []
    for field, pattern, what in (("language", LANGUAGE_CODE, "en"), ("country", COUNTRY_CODE, "US")):
        value = locale.get(field)
        if not isinstance(value, str) or not pattern.fullmatch(value):
            problems.append(f"locale.{field} {value!r} is not a two-letter code like {what!r} (case-sensitive)")
    return problems


def _subscribe_request(request: Request) -> dict:
    """``POST /v1/subscriptions`` (ref §3): ``signUpSourceId``, or both ``locale`` and
    ``subscriptionType``. ASSUMPTION: every well-formed locale matches exactly one API sign-up
    unit (Attentive answers 400 when none or several do; the sandbox has no units to count)."""
    body = _json_body(request)
    problems = _subscriber_problems(body)
    if "signUpSourceId" in body:
        problems += _string_problems(body["signUpSourceId"], "signUpSourceId")
    if "locale" in body:
        problems += _locale_problems(body["locale"])
    if "subscriptionType" in body:
        problems += _enum_problems(body["subscriptionType"], "subscriptionType", SUBSCRIBE_TYPES)
    if "singleOptIn" in body and not isinstance(body["singleOptIn"], bool):
        problems.append(f"singleOptIn must be true or false, not {_kind(body['singleOptIn'])}")
    if "externalIdentifiers" in body:
        problems += _external_identifier_problems(body["externalIdentifiers"], "externalIdentifiers", SUBSCRIBE_EXTERNAL_ID_FIELDS)
    if "signUpSourceId" not in body and not ("locale" in body and "subscriptionType" in body):
        problems.append("a subscribe needs a signUpSourceId, or both locale and subscriptionType")
    _raise_if(problems)
    return body


def _subscription_selector_problems(selectors: Any) -> list[str]:
    """Unsubscribe's ``subscriptions``: ``[{type, channel}]``; a missing key matches any value
    (the spec makes neither required), but an entry must name at least one."""
    if not isinstance(selectors, list):
        return [f"subscriptions must be a list of {{type, channel}} objects, not {_kind(selectors)}"]
    problems = []
    for n, selector in enumerate(selectors):
        where = f"subscriptions[{n}]"
        if not isinstance(selector, dict) or not ("type" in selector or "channel" in selector):
            problems.append(f"{where} must be an object with a type and/or a channel")
            continue
        if "type" in selector:
            problems += _enum_problems(selector["type"], f"{where}.type", SUBSCRIPTION_TYPES)
        if "channel" in selector:
            problems += _enum_problems(selector["channel"], f"{where}.channel", tuple(CHANNEL_OF_CONTACT.values()))
    return problems


def _unsubscribe_request(request: Request) -> dict:
    """``POST /v1/subscriptions/unsubscribe`` (ref §3)."""
    body = _json_body(request)
    problems = _subscriber_problems(body)
    if "subscriptions" in body:
        problems += _subscription_selector_problems(body["subscriptions"])
    if "notification" in body:
        notification = body["notification"]
        if not isinstance(notification, dict):
            problems.append(f"notification must be an object, not {_kind(notification)}")
        else:
            if "language" in notification:
                problems += _enum_problems(notification["language"], "notification.language", NOTIFICATION_LANGUAGES)
            if "disabled" in notification and not isinstance(notification["disabled"], bool):
                problems.append(f"notification.disabled must be true or false, not {_kind(notification['disabled'])}")
    _raise_if(problems)
    return body


def _eligibility_query(request: Request) -> dict[str, str]:
    """``GET /v1/subscriptions?phone=|email=`` (ref §3): at least one of them."""
    query = {field: request.args[field] for field in ("phone", "email") if field in request.args}
    if not query:
        raise _Abort(400, "phone or email is required in the query string")
    problems = _contact_problems(query, "")
    _raise_if(problems)
    return query


def _identify_request(request: Request) -> dict:
    """``POST /v1/identity-resolution/user-identifiers`` (ref §4): every field at most 100
    characters; a clientUserId or custom identifier must come with at least one other
    identifier. ASSUMPTION: a body with neither is refused too (there is nothing to associate)."""
    body = _json_body(request)
    problems = _phone_problems(body["phone"], "phone") if "phone" in body else []
    for field in IDENTITY_STRING_FIELDS:
        if field in body:
            problems += _string_problems(body[field], field, max_length=IDENTIFIER_MAX_LENGTH)
    custom = body.get("customIdentifiers", [])
    if "customIdentifiers" in body:
        problems += _custom_identifier_problems(custom, "customIdentifiers", max_length=IDENTIFIER_MAX_LENGTH)
    if not problems:
        identifiers = sum(field in body for field in ("phone", *IDENTITY_STRING_FIELDS)) + len(custom)
        if "clientUserId" not in body and not custom:
            problems.append("a clientUserId or customIdentifiers is required (that is what gets associated)")
        elif identifiers < 2:
            problems.append("a clientUserId or custom identifier needs at least one other identifier to be associated with")
    _raise_if(problems)
    return body


def _segment_request(request: Request) -> dict:
    """``POST /v2/segments`` (v2 spec CreateSegmentRequest): name 1–240, description 2–500,
    externalId 1–255, each trimmed and not blank."""
    body = _json_body(request)
    problems = [] if "name" in body else ["name is required"]
    for field, low, high in (("name", 1, 240), ("description", 2, 500), ("externalId", 1, 255)):
        if field in body:
            found = _string_problems(body[field], field, max_length=high)
            if not found and len(body[field].strip()) < low:
                found = [f"{field} must be at least {low} characters long"]
            problems += found
    _raise_if(problems)
    return {field: body[field].strip() for field in ("name", "description", "externalId") if field in body}


SEGMENT_MEMBER_FIELDS = ("email", "phone", "clientUserId")


def _segment_members_request(request: Request) -> dict:
    """``POST /v2/bulk/segments/members`` (v2 spec SegmentMembers): externalId, and 1 to 10,000
    members each naming at least one of email, phone (E.164), clientUserId (≤ 100 characters).
    The spec allows several identifiers on one member ("to increase matching accuracy")."""
    body = _json_body(request)
    problems = _string_problems(body.get("externalId"), "externalId") if "externalId" in body else ["externalId is required"]
    members = body.get("members")
    if not isinstance(members, list):
        problems.append(f"members must be a list, not {_kind(members)}" if "members" in body else "members is required")
    elif not 1 <= len(members) <= SEGMENT_MEMBERS_MAX:
        problems.append(f"members must hold 1 to {SEGMENT_MEMBERS_MAX:,} members, not {len(members):,}")
    else:
        for n, member in enumerate(members):
            where = f"members[{n}]"
            if not isinstance(member, dict):
                problems.append(f"{where} must be an object, not {_kind(member)}")
                continue
            if unknown := [key for key in member if key not in SEGMENT_MEMBER_FIELDS]:
                problems.append(f"{where} has unknown field(s) {', '.join(map(repr, unknown))}")
            if not any(field in member for field in SEGMENT_MEMBER_FIELDS):
                problems.append(f"{where} needs an email, a phone or a clientUserId")
            problems += _contact_problems(member, f"{where}.")
            if "clientUserId" in member:
                problems += _string_problems(member["clientUserId"], f"{where}.clientUserId", max_length=IDENTIFIER_MAX_LENGTH)
            if len(problems) >= 20:  # enough to fix the sender; not ten thousand lines
                break
    _raise_if(problems)
    return body


TEXT_SEND_FIELDS = ("to", "subscriberExternalId", "subscriptionType", "body", "mediaUrl", "useShortLinks", "messageName")


def _text_send_request(request: Request) -> dict:
    """``POST /v1/text/send`` (ref §1; not in the published v1 spec): ``to`` (E.164) or
    ``subscriberExternalId`` (an integer), not both; ``subscriptionType``; ``body``, the text
    (ASSUMPTION: a non-empty string; Attentive silently sends nothing for an empty one, which the
    sandbox refuses instead so the mistake shows); ``useShortLinks`` needs ``messageName``."""
    body = _json_body(request)
    problems = []
    if unknown := [key for key in body if key not in TEXT_SEND_FIELDS]:
        problems.append(f"unknown field(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(TEXT_SEND_FIELDS)}")
    if ("to" in body) == ("subscriberExternalId" in body):
        problems.append("send exactly one of to and subscriberExternalId")
    if "to" in body:
        problems += _phone_problems(body["to"], "to")
    if "subscriberExternalId" in body and (
        isinstance(body["subscriberExternalId"], bool) or not isinstance(body["subscriberExternalId"], int)
    ):
        problems.append(f"subscriberExternalId must be an integer, not {_kind(body['subscriberExternalId'])}")
    problems += _enum_problems(body.get("subscriptionType"), "subscriptionType", SUBSCRIBE_TYPES)
    problems += _string_problems(body.get("body"), "body") if "body" in body else ["body is required"]
    if body.get("useShortLinks") and not body.get("messageName"):
        problems.append("useShortLinks needs a messageName")
    _raise_if(problems)
    return body


def _nothing(request: Request) -> None:
    return None


def _drop_connection(environ: dict) -> None:
    """Close the client's connection without a byte of response (werkzeug's server only: it
    hands the socket over in ``werkzeug.socket``)."""
    environ["werkzeug.socket"].shutdown(socket.SHUT_RDWR)
    raise _DroppedConnection("sandbox fault: connection dropped")


# ================================================================================================
# The sandbox
# ================================================================================================


class AttentiveSandbox:
    """In-memory Attentive account plus the WSGI app that serves it.

    ``rate_limit`` is the per-second limit of most endpoints (the three lower ones stay at
    Attentive's 10/10/5); ``rate_limit=0`` switches rate limiting off everywhere, for
    benchmarks. ``fail_rate`` of the requests that would succeed fail instead, decided by a
    ``random.Random(seed)`` stream (the same sequence of requests fails the same way), each
    failure one of ``fail_with`` picked from the same stream: ``"500"`` (the default), ``"429"``
    (as the rate limit answers), ``"timeout"`` (no answer for ``timeout_seconds``, then the
    connection dropped). A failed request is not processed: nothing is recorded, so a client
    that tries again must not create a duplicate. ``injected`` counts the failures by kind.
    ``latency_ms`` delays every API answer. ``clock`` (seconds, monotonic) drives the rate-limit
    windows and the ``received_at`` of what was received; tests pass a fake one.

    Test helpers: ``received``/``events``/``duplicate_external_event_ids``/``rate_limited``,
    ``inject_fault``/``clear_faults``, ``requests_log``/``count_requests``, ``reset``. The same
    are served over HTTP under ``/_sandbox/`` for processes that only hold the URL.
    """

    def __init__(
        self,
        *,
        api_key: str = "sandbox",
        rate_limit: int = DEFAULT_RATE_LIMIT,
        fail_rate: float = 0.0,
        fail_with: tuple[str, ...] = ("500",),
        timeout_seconds: float = 15.0,
        latency_ms: float = 0,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
        company_name: str = "Sandbox Brand",
        application_name: str = "Sandbox App",
    ) -> None:
        if not api_key:
            raise ValueError("api_key must not be empty")
        if type(rate_limit) is not int or rate_limit < 0:
            raise ValueError("rate_limit must be an integer >= 0 (0 = unlimited)")
        if not 0.0 <= fail_rate <= 1.0:
            raise ValueError("fail_rate must be between 0 and 1")
        if not fail_with or any(kind not in FAILURE_KINDS for kind in fail_with):
            raise ValueError(f"fail_with must name one or more of {', '.join(FAILURE_KINDS)}")
        if not 0 < timeout_seconds <= 60:
            raise ValueError("timeout_seconds must be more than 0 and at most 60")
        if latency_ms < 0:
            raise ValueError("latency_ms must be >= 0")
        self.api_key = api_key
        self.rate_limit = rate_limit
        self.fail_rate = fail_rate
        self.fail_with = tuple(fail_with)
        self.timeout_seconds = timeout_seconds
        self.latency_ms = latency_ms
        self.seed = seed
        self.clock = clock
        slug = re.sub(r"[^a-z0-9]", "", company_name.lower()) or "sandbox"
        self._me_body = {
            "applicationName": application_name,
            "attentiveDomainName": f"{slug}.attn.tv",
            "companyName": company_name,
            "contactEmail": f"api@{slug}.example.com",
            "companyId": COMPANY_ID,
        }
        # Re-entrant: the /_sandbox/ endpoints run under it and call the public helpers.
        self._lock = threading.RLock()
        self.url_map = Map(self._routes(), strict_slashes=False, merge_slashes=False)
        self._urls = self.url_map.bind("sandbox")
        self._control_urls = Map(self._control_routes(), strict_slashes=False).bind("sandbox")
        self.reset()

    def reset(self) -> None:
        """Back to the state of a fresh sandbox with the same arguments."""
        with self._lock:
            self.requests_log: list[LoggedRequest] = []
            self._faults: list[Fault] = []
            self._received: dict[str, list[dict]] = {kind: [] for kind in RECEIVED_KINDS}
            # (channel, phone or email) -> subscription type -> currently subscribed
            self._subscriptions: dict[tuple[str, str], dict[str, bool]] = defaultdict(dict)
            # "METHOD /path" -> clock times of the requests admitted in the last second
            self._windows: dict[str, deque[float]] = defaultdict(deque)
            self._rate_limited: Counter[str] = Counter()
            # v2 segments: externalId -> {name, description, externalId, members (a set of tuples)}
            self.segments: dict[str, dict] = {}
            # bulk job id -> its status answer
            self.bulk_jobs: dict[str, dict] = {}
            self.texts: list[dict] = []  # the bodies of /v1/text/send accepted
            self._next_bulk_job = itertools.count(1).__next__
            self._fail_rng = random.Random(self.seed)
            self._injected: Counter[str] = Counter()
            self._next_error_id = itertools.count(1).__next__

    # ============================================================================================
    # Test helpers (Python API; the same under /_sandbox/ over HTTP)
    # ============================================================================================

    def inject_fault(
        self,
        path_prefix: str,
        *,
        status: int = 500,
        body: str = FAULT_BODY,
        content_type: str = JSON_CONTENT_TYPE,
        times: int = 1,
        after: int = 0,
        delay: float = 0.0,
        drop: bool = False,
        location: str = "",
    ) -> Fault:
        """Answer the next ``times`` requests under ``path_prefix`` (after skipping ``after``)
        raw, or drop their connections."""
        fault = Fault(
            path_prefix, status=status, body=body, content_type=content_type,
            times=times, after=after, delay=delay, drop=drop, location=location,
        )
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def received(self, event_type: str | None = None) -> dict[str, Any]:
        """Everything accepted so far (each entry ``{body, received_at, headers}``, headers
        without Authorization), custom events optionally only those of ``event_type``; plus the
        429s per endpoint and the externalEventIds accepted more than once."""
        with self._lock:
            snapshot: dict[str, Any] = {kind: list(entries) for kind, entries in self._received.items()}
            snapshot["events"] = self.events(event_type)
            snapshot["rate_limited"] = self.rate_limited()
            snapshot["duplicate_external_event_ids"] = self.duplicate_external_event_ids()
            snapshot["injected"] = dict(self._injected)
        return snapshot

    def events(self, event_type: str | None = None) -> list[dict]:
        """The custom events accepted, in arrival order, optionally only those of ``event_type``."""
        with self._lock:
            return [e for e in self._received["events"] if event_type in (None, e["body"]["type"])]

    def duplicate_external_event_ids(self) -> dict[str, int]:
        """externalEventId -> times accepted, for those accepted more than once. Attentive
        documents no dedup (ref §2), so neither does the sandbox: this is how a test sees that
        the portal sent an event twice."""
        with self._lock:
            ids = Counter(
                e["body"]["externalEventId"] for e in self._received["events"] if "externalEventId" in e["body"]
            )
        return {event_id: count for event_id, count in ids.items() if count > 1}

    def rate_limited(self) -> dict[str, int]:
        """429s answered so far, by endpoint ("POST /v1/events/custom")."""
        with self._lock:
            return dict(self._rate_limited)

    def count_requests(self, path: str, method: str | None = None) -> int:
        """How many API requests hit exactly ``path``, optionally by method."""
        with self._lock:
            return sum(1 for r in self.requests_log if r.path == path and (method is None or r.method == method.upper()))

    # ============================================================================================
    # WSGI
    # ============================================================================================

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        request = Request(environ)
        if request.path.startswith(CONTROL_PREFIX + "/"):
            with self._lock:
                response = self._control(request)
            return response(environ, start_response)
        request.get_data()  # read the body now: a slow sender must not hold the lock
        with self._lock:
            response, delay = self._respond(request)
        pause = self.latency_ms / 1000 + delay
        if pause:
            time.sleep(pause)
        if response is None:
            _drop_connection(environ)
        return response(environ, start_response)

    def _respond(self, request: Request) -> tuple[Response | None, float]:
        """The answer (None: drop the connection) and the seconds to wait before giving it."""
        fault = self._take_fault(request.path)
        delay = 0.0
        if fault is not None:
            delay = fault.delay
            response = None if fault.drop else Response(
                fault.body, status=fault.status, content_type=fault.content_type,
                headers={"Location": fault.location} if fault.location else None,
            )
        else:
            try:
                response = self._answer(request)
            except _TimedOut:
                response, delay = None, self.timeout_seconds
        status = None if response is None else response.status_code
        self.requests_log.append(LoggedRequest(request.method, request.path, request.query_string.decode("latin-1"), status))
        return response, delay

    def _answer(self, request: Request) -> Response:
        """An API request's answer, checked in the order a gateway would: route (404/405), key
        (401), rate limit (429), validation (400/415), ``fail_rate`` (500), then the operation."""
        try:
            rule, _ = self._urls.match(request.path, method=request.method, return_rule=True)
        except NotFound:
            return self._error(404, f"no such endpoint: {request.method} {request.path}")
        except MethodNotAllowed as exc:
            response = self._error(405, f"method {request.method} is not allowed on {request.path}")
            response.headers["Allow"] = ", ".join(exc.valid_methods or ())
            return response
        endpoint: _Endpoint = rule.endpoint
        name = f"{request.method} {rule.rule}"
        limit = LOWER_LIMITS.get(name, self.rate_limit) if self.rate_limit else 0
        window = self._window(name) if limit else None
        try:
            self._authenticate(request)  # before the limit: it is counted per key (ref §5)
            if window is not None:
                self._admit(name, limit, window)
            parsed = endpoint.parse(request)
            if self.fail_rate and self._fail_rng.random() < self.fail_rate:
                kind = self._fail_rng.choice(self.fail_with) if len(self.fail_with) > 1 else self.fail_with[0]
                self._fail(kind, name, limit)
            response = endpoint.apply(parsed, request)
        except _Abort as abort:
            response = self._error(abort.status, abort.message)
        except _TimedOut:
            raise
        except Exception:  # a sandbox bug must still answer in the error shape
            logger.exception("Attentive sandbox failed on %s %s", request.method, request.full_path)
            response = self._error(500, "Internal Server Error")
        if window is not None:
            # ref §5: on every response, 429s included; "remaining" is what is left of the
            # current one-second window.
            response.headers["x-ratelimit-limit"] = str(limit)
            response.headers["x-ratelimit-remaining"] = str(max(0, limit - len(window)))
        return response

    def _fail(self, kind: str, name: str, limit: int) -> None:
        """Raise the failure ``kind`` that ``fail_rate`` picked for this request."""
        self._injected[kind] += 1
        if kind == "timeout":
            raise _TimedOut
        if kind == "429":
            self._rate_limited[name] += 1
            raise _Abort(429, f"rate limit of {limit or DEFAULT_RATE_LIMIT} requests per second exceeded for {name} (sandbox fail_rate)")
        raise _Abort(500, "Internal Server Error (sandbox fail_rate)")

    def _window(self, name: str) -> deque[float]:
        """The clock times of ``name``'s requests admitted in the last second.

        A sliding window: a request counts against the limit for exactly one second after it
        was admitted, so no second-long span ever admits more than the limit (a fixed window
        would let twice the limit through across a boundary). Refused requests are not counted.
        The sandbox accepts one API key, so per key and endpoint (ref §5) is per endpoint.
        """
        window = self._windows[name]
        horizon = self.clock() - RATE_WINDOW_SECONDS
        while window and window[0] <= horizon:
            window.popleft()
        return window

    def _admit(self, name: str, limit: int, window: deque[float]) -> None:
        """Count the request against ``name``'s window, or refuse it with 429 (ref §5)."""
        if len(window) >= limit:
            self._rate_limited[name] += 1
            raise _Abort(429, f"rate limit of {limit} requests per second exceeded for {name}")
        window.append(self.clock())

    def _authenticate(self, request: Request) -> None:
        """ref §1: ``Authorization: Bearer <API key>``; a missing or wrong key is 401."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _Abort(401, "Authorization: Bearer <API key> is required")
        if not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise _Abort(401, "the API key is not valid")

    def _take_fault(self, path: str) -> Fault | None:
        for fault in self._faults:
            if not path.startswith(fault.path_prefix):
                continue
            if fault.after > 0:
                fault.after -= 1
                continue
            fault.times -= 1
            if fault.times <= 0:
                self._faults.remove(fault)
            return fault
        return None

    def _routes(self) -> list[Rule]:
        return [
            Rule(ME_PATH, methods=["GET"], endpoint=_Endpoint(_nothing, self._me)),
            Rule(CUSTOM_EVENTS_PATH, methods=["POST"], endpoint=_Endpoint(_custom_event, self._record("events"))),
            Rule(CUSTOM_ATTRIBUTES_PATH, methods=["POST"], endpoint=_Endpoint(_custom_attributes, self._record("attributes"))),
            Rule(SUBSCRIPTIONS_PATH, methods=["POST"], endpoint=_Endpoint(_subscribe_request, self._subscribe)),
            Rule(SUBSCRIPTIONS_PATH, methods=["GET"], endpoint=_Endpoint(_eligibility_query, self._eligibility)),
            Rule(UNSUBSCRIBE_PATH, methods=["POST"], endpoint=_Endpoint(_unsubscribe_request, self._unsubscribe)),
            Rule(IDENTITY_PATH, methods=["POST"], endpoint=_Endpoint(_identify_request, self._identify)),
            Rule(TEXT_SEND_PATH, methods=["POST"], endpoint=_Endpoint(_text_send_request, self._send_text)),
            Rule(SEGMENTS_PATH, methods=["POST"], endpoint=_Endpoint(_segment_request, self._create_segment)),
            Rule(SEGMENT_MEMBERS_PATH, methods=["POST"], endpoint=_Endpoint(_segment_members_request, self._add_segment_members)),
            Rule(BULK_JOB_PATH.replace("{bulk_job_id}", "<bulk_job_id>"), methods=["GET"],
                 endpoint=_Endpoint(_nothing, self._bulk_job)),
        ]

    # ============================================================================================
    # The operations (run under the lock, after validation)
    # ============================================================================================

    def _me(self, parsed: None, request: Request) -> Response:
        """ref §1: ``GET /v1/me``."""
        return self._json(self._me_body)

    def _record(self, kind: str) -> Callable[[dict, Request], Response]:
        """Custom events and attributes: remember the body, answer 200 ``{}`` (ref §10.2:
        not 204; Segment's tests mock ``{}``)."""

        def accept(body: dict, request: Request) -> Response:
            self._remember(kind, body, request)
            return self._json({})

        return accept

    def _remember(self, kind: str, body: dict, request: Request) -> None:
        headers = {name: value for name, value in request.headers.items() if name.lower() != "authorization"}
        self._received[kind].append({"body": body, "received_at": self.clock(), "headers": headers})

    def _subscribe(self, body: dict, request: Request) -> Response:
        """ref §3: one subscription per contact (phone: TEXT, email: EMAIL). NEWLY_CREATED the
        first time for that contact, type and channel, PREVIOUSLY_CREATED after, even once
        unsubscribed (the subscription still exists); subscribing again makes it eligible."""
        self._remember("subscriptions", body, request)
        sub_type = body.get("subscriptionType", SIGN_UP_SOURCE_TYPE)
        responses = []
        for channel, address in _contacts(body["user"]):
            types = self._subscriptions[(channel, address)]
            status = "PREVIOUSLY_CREATED" if sub_type in types else "NEWLY_CREATED"
            types[sub_type] = True
            responses.append({"subscription": {"type": sub_type, "channel": channel}, "subscriptionCreationStatus": status})
        answer: dict[str, Any] = {"user": _contact_fields(body["user"])}
        if "externalIdentifiers" in body:
            answer["externalIdentifiers"] = body["externalIdentifiers"]
        answer["subscriptionResponses"] = responses
        return self._json(answer, 202)

    def _eligibility(self, query: dict[str, str], request: Request) -> Response:
        """ref §3: the subscriptions the contact has, eligible unless unsubscribed.
        ASSUMPTION: an unknown contact has an empty list (Attentive does not say)."""
        eligibilities = [
            {"subscription": {"type": sub_type, "channel": channel}, "eligibility": {"isEligible": active}}
            for channel, address in _contacts(query)
            for sub_type, active in self._subscription_types(channel, address)
        ]
        return self._json({"subscriptionEligibilities": eligibilities})

    def _unsubscribe(self, body: dict, request: Request) -> Response:
        """ref §3: only the named subscriptions (all without ``subscriptions``), an email only
        reaching EMAIL and a phone only TEXT. ASSUMPTION: subscriptions the contact never had
        are not listed in the answer."""
        self._remember("unsubscriptions", body, request)
        selectors = body.get("subscriptions")
        responses = []
        for channel, address in _contacts(body["user"]):
            for sub_type, active in self._subscription_types(channel, address):
                if selectors is not None and not any(_selects(s, sub_type, channel) for s in selectors):
                    continue
                self._subscriptions[(channel, address)][sub_type] = False
                status = "NEWLY_UNSUBSCRIBED" if active else "PREVIOUSLY_UNSUBSCRIBED"
                responses.append({"subscription": {"type": sub_type, "channel": channel}, "subscriptionUnsubscribeStatus": status})
        return self._json({"user": _contact_fields(body["user"]), "subscriptionResponses": responses}, 202)

    def _subscription_types(self, channel: str, address: str) -> list[tuple[str, bool]]:
        """(type, currently subscribed) of one contact's subscriptions, in the spec's type order."""
        types = self._subscriptions.get((channel, address), {})
        return [(sub_type, types[sub_type]) for sub_type in SUBSCRIPTION_TYPES if sub_type in types]

    def _identify(self, body: dict, request: Request) -> Response:
        """ref §4: 202 "Request processed", no body schema (ASSUMPTION: an empty object)."""
        self._remember("identities", body, request)
        return self._json({}, 202)

    def _send_text(self, body: dict, request: Request) -> Response:
        """ASSUMPTION: 200 ``{"messageId": …}``; the answer is not documented in any source we have."""
        self.texts.append(body)
        return self._json({"messageId": f"sandbox-text-{len(self.texts)}"})

    def _create_segment(self, body: dict, request: Request) -> Response:
        """v2 spec createSegment: 201 ``{externalId, name, description}``; the description
        defaults to the spec's "Manual Segment Upload Public API V2". ASSUMPTION: an externalId
        already in use is 409 (the spec lists no such answer)."""
        external_id = body.get("externalId") or f"SEG_{len(self.segments) + 1:06d}"
        if external_id in self.segments:
            raise _Abort(409, f"a segment with externalId {external_id!r} exists")
        segment = {
            "externalId": external_id, "name": body["name"],
            "description": body.get("description", "Manual Segment Upload Public API V2"),
        }
        self.segments[external_id] = {**segment, "members": set()}
        return self._json(segment, 201)

    def _add_segment_members(self, body: dict, request: Request) -> Response:
        """v2 spec postBulkSegmentMembers: 202 ``{message, batchJobId}``; 404 for a segment that
        does not exist. ASSUMPTION: the sandbox processes the job at once (its status is
        COMPLETED from the first look), and the result file's URL is made up."""
        segment = self.segments.get(body["externalId"])
        if segment is None:
            raise _Abort(404, f"no segment with externalId {body['externalId']!r}")
        for member in body["members"]:
            segment["members"].add(tuple(sorted(member.items())))
        job_id = f"00000000-0000-4000-8000-{self._next_bulk_job():012d}"
        self.bulk_jobs[job_id] = {
            "bulkJobId": job_id, "status": "COMPLETED", "totalRecords": len(body["members"]),
            "url": f"https://sandbox.invalid/bulk/{job_id}.jsonl",
        }
        return self._json({"message": "Bulk segment member add job successfully submitted", "batchJobId": job_id}, 202)

    def _bulk_job(self, parsed: None, request: Request) -> Response:
        job_id = request.path.rsplit("/", 1)[-1]
        if job_id not in self.bulk_jobs:
            raise _Abort(404, f"no bulk job {job_id!r}")
        return self._json(self.bulk_jobs[job_id])

    # ============================================================================================
    # Test control over HTTP (/_sandbox/…)
    # ============================================================================================

    def _control_routes(self) -> list[Rule]:
        return [
            Rule(f"{CONTROL_PREFIX}/faults", methods=["POST"], endpoint=self._control_inject_fault),
            Rule(f"{CONTROL_PREFIX}/faults", methods=["DELETE"], endpoint=self._control_clear_faults),
            Rule(f"{CONTROL_PREFIX}/received", methods=["GET"], endpoint=self._control_received),
            Rule(f"{CONTROL_PREFIX}/reset", methods=["POST"], endpoint=self._control_reset),
        ]

    def _control(self, request: Request) -> Response:
        try:
            handler, _ = self._control_urls.match(request.path, method=request.method)
            return handler(request)
        except _Abort as abort:
            return self._error(abort.status, abort.message)
        except NotFound:
            return self._error(404, f"no such control endpoint: {request.method} {request.path}")
        except MethodNotAllowed:
            return self._error(405, f"method {request.method} is not allowed on {request.path}")

    def _control_inject_fault(self, request: Request) -> Response:
        try:
            fault = self.inject_fault(**_json_body(request))
        except TypeError as exc:
            return self._error(400, f"bad fault: {exc}")
        return self._json({"fault": asdict(fault)}, 201)

    def _control_clear_faults(self, request: Request) -> Response:
        self.clear_faults()
        return self._json({"faults": []})

    def _control_received(self, request: Request) -> Response:
        return self._json(self.received(request.args.get("type")))

    def _control_reset(self, request: Request) -> Response:
        self.reset()
        return self._json({"reset": True})

    # ============================================================================================
    # Responses
    # ============================================================================================

    @staticmethod
    def _json(payload: Any, status: int = 200) -> Response:
        return Response(json.dumps(payload, separators=(",", ":")), status=status, content_type=JSON_CONTENT_TYPE)

    def _error(self, status: int, message: str) -> Response:
        """ASSUMPTION: ``{"error": {"id": <int>, "message": "..."}}``, the spec's ErrorResponseDto.
        Attentive gives these endpoints' errors no body schema (ref §5); that is the one
        structured error shape its spec defines. Ids count up from 1 per sandbox."""
        return self._json({"error": {"id": self._next_error_id(), "message": message}}, status)


def _contacts(holder: dict) -> list[tuple[str, str]]:
    """(channel, address) for each of a user's phone and email: ref §3 ties phone to TEXT and
    email to EMAIL."""
    return [(channel, holder[field]) for field, channel in CHANNEL_OF_CONTACT.items() if field in holder]


def _contact_fields(user: dict) -> dict:
    """The spec UserDto1 part of a user, for echoing back."""
    return {field: user[field] for field in CHANNEL_OF_CONTACT if field in user}


def _selects(selector: dict, sub_type: str, channel: str) -> bool:
    return selector.get("type", sub_type) == sub_type and selector.get("channel", channel) == channel


# ================================================================================================
# Serving
# ================================================================================================


def serve_in_thread(sandbox: AttentiveSandbox, host: str = "127.0.0.1", port: int = 0) -> SandboxServer:
    """Serve ``sandbox`` on ``host:port`` (0 = a free port) from a daemon thread."""
    return loopback.serve_in_thread(sandbox, host, port, name="attentive-sandbox")


def serve_forever(
    sandbox: AttentiveSandbox,
    host: str = "127.0.0.1",
    port: int = 8200,
    *,
    ready: Callable[[str], None] | None = None,
    access_log: bool = True,
) -> None:
    """Serve ``sandbox`` in this thread until Ctrl-C; see ``portal.loopback.serve_forever``."""
    loopback.serve_forever(sandbox, host, port, ready=ready, access_log=access_log)


__all__ = ["AttentiveSandbox", "Fault", "LoggedRequest", "SandboxServer", "serve_forever", "serve_in_thread"]
