"""Sparkfly API sandbox: a deterministic, in-memory simulator of the Sparkfly Platform API.

Served over real HTTP (werkzeug), so the portal's client, its tests and ``make run`` talk to it
exactly as they would to api.sparkfly.com: same paths, envelopes, pagination, error shapes,
token auth, the credential lifecycle and the channel conversion callback.

Where the behaviour comes from (cited in comments as):
- "ref §N": the research notes, reference/sparkfly-api.md, section N;
- "seed 001": Sparkfly's credentials guide (query-param creation, ``identifier`` null until
  offers are attached, validation messages, the ``%{…}`` conversion callback);
- "seed 002": Sparkfly's getting-started guide (offers, approve, channels, xid);
- "seed 004": the LoyaltyEnrollment model page;
- "GO spec": Sparkfly's Core Operations OpenAPI (reference/openapi/sparkfly-core-operations.yaml),
  for the event notification API (callbacks and subscriptions);
- "DEV events": developers.sparkfly.com/guides/events/event-types/loyalty, the payloads of the
  loyalty events.
Anything not documented there is marked ASSUMPTION.

Every path is imported from ``sparkfly_sync.client``, so the client and the sandbox cannot
drift apart. No Django import: the sandbox runs standalone (tests without a database, and the
``sparkfly_sandbox`` management command is only a thin wrapper).

Same constructor arguments => byte-identical response bodies: all seeded data comes from
``random.Random`` streams derived from ``seed`` and from fixed dates, never from "now".
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import itertools
import json
import logging
import random
import re
import string
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta, UTC
from typing import Any, NamedTuple
from collections.abc import Callable
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from portal import loopback
from portal.loopback import SandboxServer

from sparkfly_sync.client import (
    API_PREFIX,
    AUTH_PATH,
    CHANNEL_PATH,
    CHANNELS_PATH,
    CREDENTIAL_REDEEM_PATH,
    CREDENTIAL_VOID_PATH,
    CREDENTIALS_PATH,
    EVENT_CALLBACK_PATH,
    EVENT_CALLBACKS_PATH,
    EVENT_SUBSCRIPTION_PATH,
    EVENT_SUBSCRIPTIONS_PATH,
    LOYALTY_ENROLLMENT_PATH,
    LOYALTY_ENROLLMENTS_PATH,
    LOYALTY_PROGRAMS_PATH,
    MEMBER_SEARCH_PATH,
    MEMBERS_MAX_PER_PAGE,
    MEMBERS_PATH,
    MERCHANTS_PATH,
    OFFER_APPROVE_PATH,
    OFFER_CHANNELS_PATH,
    OFFERS_PATH,
    STORES_PATH,
)

logger = logging.getLogger(__name__)

# Single-resource paths the client builds from its constants.
MEMBER_PATH = f"{MEMBERS_PATH}/{{member_id}}"
MERCHANT_PATH = f"{MERCHANTS_PATH}/{{merchant_id}}"
STORE_PATH = f"{STORES_PATH}/{{store_id}}"
OFFER_PATH = f"{OFFERS_PATH}/{{offer_id}}"
OFFER_CHANNEL_PATH = f"{OFFER_CHANNELS_PATH}/{{channel_id}}"
CREDENTIAL_PATH = f"{CREDENTIALS_PATH}/{{credential_id}}"
CREDENTIAL_ELIGIBLE_PATH = f"{CREDENTIALS_PATH}/eligible"
LOYALTY_PROGRAM_PATH = f"{LOYALTY_PROGRAMS_PATH}/{{program_id}}"

# Test-control endpoints; not part of Sparkfly, no auth, never logged or faulted.
CONTROL_PREFIX = "/_sandbox"

JSON_CONTENT_TYPE = "application/json; charset=utf-8"
MEMBERS_DEFAULT_PER_PAGE = 100  # ref §2: members default 100, max 10000
DEFAULT_PER_PAGE = 5000  # ref §2: every other list defaults to "5000", no documented max
ACCOUNT_ID = 5  # as in seed 001's examples
CALLBACK_TIMEOUT_SECONDS = 5
# How a conversion callback carries its substituted query parameters: in the URL ("none", the
# only form Sparkfly shows), or in a POST body, form-encoded or as a JSON object of strings.
CALLBACK_BODIES = ("none", "form", "json")
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"

# Each resource numbers its ids from its own base so an id passed as the wrong kind of id
# (a member id as an offer id) fails visibly instead of silently hitting another record.
MEMBER_ID_BASE = 1001
MERCHANT_ID_BASE = 251
STORE_ID_BASE = 3001
CHANNEL_ID_BASE = 451
OFFER_ID_BASE = 1701
ELIGIBLE_CHANNEL_ID_BASE = 9001
CREDENTIAL_ID_BASE = 50001
PROGRAM_ID_BASE = 1
TIER_ID_BASE = 11
ENROLLMENT_ID_BASE = 700001
EVENT_CALLBACK_ID_BASE = 901
SUBSCRIPTION_ID_BASE = 4201
REWARD_STATE_ID_BASE = 880001
OFFER_STATE_ID_BASE = 620001

SEED_EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
# Seeded offers are active from 2025 to 2030 so "now" falls inside; every tenth (from the
# third) already expired, so "Offer with ID … is no longer active" can be exercised.
ACTIVE_WINDOW = ("2025-01-01T00:00:00Z", "2030-12-31T23:59:59Z")
EXPIRED_WINDOW = ("2025-01-01T00:00:00Z", "2025-06-30T23:59:59Z")

OFFER_STATUSES = ("pending", "approved", "suspended", "archived")  # ref §4
ENROLLMENT_STATUSES = ("active", "suspended", "archived")  # seed 004
FRAUD_RISK_LEVELS = ("none", "low", "medium", "high")  # seed 004
XID_ALPHABET = string.ascii_letters + string.digits

# List items of GET /offers carry the spec's `offer_simplified`, not the full offer.
OFFER_SIMPLIFIED_FIELDS = (
    "id", "merchant_id", "manufacturer_id", "name", "description", "offer_type", "category",
    "offer_code", "pos_offer_code", "criteria", "points_earning_value", "points_required_value",
    "reward_item_description", "reward_item_value", "terms_and_conditions", "quest_only",
    "merchant_name", "external_reward", "is_reward", "locked", "activates_at", "expires_at",
    "stop_offering_at", "max_amount", "min_spend_amount", "max_redemptions",
    "max_redemptions_per_member", "max_redemptions_per_member_per_day", "status",
    "created_at", "updated_at",
)
# Offer fields a POST/PUT may set (the spec's offer_input, plus merchant_id).
OFFER_TEXT_FIELDS = (
    "name", "description", "category", "offer_code", "pos_offer_code", "reward_item_description",
    "terms_and_conditions", "merchant_name", "external_reward",
)
OFFER_INTEGER_FIELDS = (
    "merchant_id", "offer_type", "points_earning_value", "points_required_value",
    "reward_item_value", "max_amount", "min_spend_amount", "max_redemptions",
    "max_redemptions_per_member", "max_redemptions_per_member_per_day",
)
OFFER_DATETIME_FIELDS = ("activates_at", "expires_at", "stop_offering_at")

FIRST_NAMES = (
    "Ava", "Liam", "Olivia", "Noah", "Emma", "Mateo", "Sophia", "Lucas", "Mia", "Ethan",
    "Amelia", "Kai", "Harper", "Leo", "Zoe", "Omar", "Priya", "Chen", "Fatima", "Diego",
)
LAST_NAMES = (
    "Smith", "Garcia", "Nguyen", "Johnson", "Patel", "Kim", "Brown", "Lopez", "Okafor", "Muller",
    "Rossi", "Cohen", "Silva", "Tanaka", "Williams", "Martin", "Khan", "Jones", "Davis", "Novak",
)
AREA_CODES = ("415", "212", "312", "617", "206", "303", "512", "702")
# The four phone spellings the portal must normalise to E.164.
PHONE_FORMATS = ("+1{a}{p}{l}", "({a}) {p}-{l}", "{a}-{p}-{l}", "{a}.{p}.{l}")
OFFER_NAMES = (
    "Buy a Burger, Get Free Medium Fries", "$5 Off Any Order Over $25", "Free Drink With Any Entree",
    "20% Off Your Next Visit", "Double Points Tuesday", "Free Dessert On Your Birthday",
    "BOGO Sandwiches", "Free Side With Any Combo", "Kids Eat Free Weekend", "$3 Off Breakfast",
)
OFFER_CATEGORIES = ("food", "beverage", "dessert", "loyalty")
CHANNEL_NAMES = ("Mobile App", "Email", "Web", "SMS", "Kiosk", "Social")
MERCHANT_NAMES = ("Q Burger", "Sparkfly Coffee", "Taco Town", "Pizza Planet", "Noodle Bar", "Bagel Barn")
CITIES = (  # city, state, zip, lat, lng
    ("San Francisco", "CA", "94103", "37.7749", "-122.4194"),
    ("Atlanta", "GA", "30303", "33.7490", "-84.3880"),
    ("Chicago", "IL", "60601", "41.8781", "-87.6298"),
    ("Austin", "TX", "78701", "30.2672", "-97.7431"),
    ("Seattle", "WA", "98101", "47.6062", "-122.3321"),
)
PROGRAM_NAMES = ("Rewards Club", "VIP Program", "Kids Club")
ENROLLMENT_SOURCES = ("app", "referral", "in-person")  # seed 004's examples
TIERS_PER_PROGRAM = 3
TIER_POINT_THRESHOLDS = (0, 2500, 10000)  # historical points needed for tiers 1..3

# The GO spec's `subscription.event` enum, then the loyalty events of DEV events. The sandbox
# raises the member and loyalty ones; the others may be subscribed to but never occur here (it
# simulates no member profiles endpoint, offer activity or point-of-sale transactions).
NOTIFICATION_EVENTS = (
    "sf.member.created",
    "sf.member.updated",
    "sf.member_profile.created",
    "sf.member_profile.updated",
    "sf.offer_activity.created",
    "sf.transaction.completed",
    "loyalty.enrollment.created",
    "loyalty.enrollment.points.awarded",
    "loyalty.enrollment.points.redeemed",
)
SIGNATURE_HEADER = "x-hmac-sha256-signature"  # ref §6.3
SIGNING_KEY_BYTES = 64  # the GO spec's example signing_key is the base64 of 64 bytes


class LoggedRequest(NamedTuple):
    """One API request as received: method, path without ``.json``, raw query string."""

    method: str
    path: str
    query: str


@dataclass
class Fault:
    """A canned raw response for requests whose path starts with ``path_prefix``.

    The first ``after`` matching requests pass through untouched; the next ``times`` get
    ``status``/``body``/``content_type`` verbatim (the body may be deliberately broken JSON),
    ``delay`` seconds late (a slow Sparkfly, for read timeouts), with a ``Location`` header when
    ``location`` is set (a redirect, which the client must not follow).
    """

    path_prefix: str
    status: int = 500
    body: str = '{"error":"boom"}'
    content_type: str = "application/json"
    times: int = 1
    after: int = 0
    delay: float = 0.0
    location: str = ""

    def __post_init__(self) -> None:
        # Checked here so a bad fault fails when injected, not when a request hits it.
        if not all(isinstance(text, str) for text in (self.path_prefix, self.body, self.content_type, self.location)):
            raise TypeError("path_prefix, body, content_type and location must be strings")
        if not all(isinstance(number, int) for number in (self.status, self.times, self.after)):
            raise TypeError("status, times and after must be integers")
        if not 100 <= self.status <= 599 or self.times < 1 or self.after < 0:
            raise TypeError("status must be 100-599, times at least 1, after at least 0")
        if isinstance(self.delay, bool) or not isinstance(self.delay, int | float) or not 0 <= self.delay <= 60:
            raise TypeError("delay must be a number of seconds from 0 to 60")


class InsufficientPoints(ValueError):
    """A redemption asked for more points than the enrollment's balance holds."""


class _Abort(Exception):
    """Raised by helpers to stop a handler and answer ``response`` instead."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


class _SandboxRequest(Request):
    """A werkzeug request plus work to run once the state lock is released.

    Network I/O (conversion callbacks, event notifications) must never run under the lock: a
    callback URL that points back at this sandbox would otherwise deadlock.
    """

    def __init__(self, environ: dict) -> None:
        super().__init__(environ)
        self.after_unlock: list[Callable[[], None]] = []


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _ts(moment: datetime) -> str:
    """Rails-style UTC timestamp, e.g. ``2025-01-01T00:00:00Z`` (isoformat rather than strftime:
    it is faster, which shows when seeding 100,000 members)."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def _parse_ts(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _nth_name(names: tuple[str, ...], n: int) -> str:
    """The n-th (0-based) of ``names``, cycling with a suffix: "Email", …, "Email 2", …"""
    name = names[n % len(names)]
    return name if n < len(names) else f"{name} {n // len(names) + 1}"


def _check_positive_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _is_http_url(value: Any) -> bool:
    try:
        parts = urlsplit(value) if isinstance(value, str) else None
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return False
    return parts is not None and parts.scheme in ("http", "https") and bool(parts.netloc)


def _text_error(value: Any) -> str | None:
    """The Rails-style error of a required text field, or None when it is fine."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return "can't be blank"
    return None if isinstance(value, str) else "must be a string"


def _route(template: str, endpoint: Callable, *methods: str) -> Rule:
    """A werkzeug rule for a client.py path template: ``{member_id}`` becomes ``<int:member_id>``."""
    return Rule(re.sub(r"\{(\w+)\}", r"<int:\1>", template), endpoint=endpoint, methods=list(methods))


class SparkflySandbox:
    """In-memory Sparkfly account plus the WSGI app that serves it.

    Test helpers: ``inject_fault``/``clear_faults``, ``expire_tokens``, ``requests_log`` and
    ``count_requests``, ``callbacks`` (conversion callbacks made), ``notifications`` (event
    notifications delivered), ``award_points``/``redeem_points``. The same helpers are served
    over HTTP under ``/_sandbox/`` for processes that only hold the URL.

    ``duplicate_callbacks``: the share of conversion callbacks delivered twice, as Sparkfly
    may (it delivers at least once): half of them as two calls at the same moment, half as a
    second call after the first answered. Picked by a stream of its own from ``seed``.
    """

    def __init__(
        self,
        *,
        identity: str = "sandbox",
        key: str = "sandbox",
        members: int = 100,
        offers: int = 10,
        channels: int = 3,
        merchants: int = 2,
        stores_per_merchant: int = 3,
        loyalty_programs: int = 1,
        seed: int = 0,
        token_ttl_seconds: int = 86400,
        clock: Callable[[], datetime] = _utcnow,
        callback_method: str = "POST",
        callback_body: str = "none",
        duplicate_callbacks: float = 0.0,
    ) -> None:
        if not 0.0 <= duplicate_callbacks <= 1.0:
            raise ValueError("duplicate_callbacks must be between 0 and 1")
        if callback_body not in CALLBACK_BODIES:
            raise ValueError(f"callback_body must be one of {', '.join(CALLBACK_BODIES)}, got {callback_body!r}")
        if callback_body != "none" and callback_method.upper() != "POST":
            raise ValueError(f"callback_body {callback_body!r} needs callback_method POST, got {callback_method!r}")
        self.identity = identity
        self.key = key
        self.seed = seed
        self.token_ttl = timedelta(seconds=token_ttl_seconds)
        self.clock = clock
        self.callback_method = callback_method.upper()
        self.callback_body = callback_body
        self.duplicate_callbacks = duplicate_callbacks
        self._duplicate_rng = random.Random(f"{seed}/duplicates")

        self.requests_log: list[LoggedRequest] = []
        self.callbacks: list[dict[str, Any]] = []
        self.notifications: list[dict[str, Any]] = []
        self._faults: list[Fault] = []
        self._tokens: dict[str, datetime] = {}  # token -> issued at
        # Re-entrant: the /_sandbox/ endpoints run under it and call the public helpers.
        self._lock = threading.RLock()
        # Everything generated while serving (tokens, request ids, traces, new xids and
        # credential identifiers) comes from this stream, so a replayed request sequence
        # replays byte for byte.
        self._runtime_rng = random.Random(f"{seed}/runtime")

        self._members: dict[int, dict] = {}
        self._member_id_by_identifier: dict[str, int] = {}
        self._merchants: dict[int, dict] = {}
        self._stores: dict[int, dict] = {}
        self._channels: dict[int, dict] = {}
        self._offers: dict[int, dict] = {}
        self._links: dict[int, dict[int, dict]] = {}  # offer id -> channel id -> eligible channel
        self._xids: set[str] = set()
        self._credentials: dict[int, dict] = {}
        self._credential_identifiers: set[str] = set()
        self._redemptions: dict[int, list[tuple[int, date]]] = defaultdict(list)  # offer -> (member, day)
        self._programs: dict[int, dict] = {}
        self._enrollments: dict[int, dict] = {}
        self._event_callbacks: dict[int, dict] = {}  # without their subscriptions, added when rendered
        self._subscriptions: dict[int, dict] = {}

        self._next_member_id = itertools.count(MEMBER_ID_BASE).__next__
        self._next_merchant_id = itertools.count(MERCHANT_ID_BASE).__next__
        self._next_store_id = itertools.count(STORE_ID_BASE).__next__
        self._next_channel_id = itertools.count(CHANNEL_ID_BASE).__next__
        self._next_offer_id = itertools.count(OFFER_ID_BASE).__next__
        self._next_link_id = itertools.count(ELIGIBLE_CHANNEL_ID_BASE).__next__
        self._next_credential_id = itertools.count(CREDENTIAL_ID_BASE).__next__
        self._next_program_id = itertools.count(PROGRAM_ID_BASE).__next__
        self._next_enrollment_id = itertools.count(ENROLLMENT_ID_BASE).__next__
        self._next_event_callback_id = itertools.count(EVENT_CALLBACK_ID_BASE).__next__
        self._next_subscription_id = itertools.count(SUBSCRIPTION_ID_BASE).__next__
        self._next_reward_state_id = itertools.count(REWARD_STATE_ID_BASE).__next__
        self._next_offer_state_id = itertools.count(OFFER_STATE_ID_BASE).__next__

        self._seed_channels(channels)
        self._seed_merchants(merchants, stores_per_merchant)
        self._seed_offers(offers)
        self._seed_members(members)
        self._seed_loyalty(loyalty_programs)

        self.url_map = Map(self._routes(), strict_slashes=False, merge_slashes=False)
        self._urls = self.url_map.bind("sandbox")

    # ============================================================================================
    # Seeding. One random stream per resource, so adding members never reshuffles the offers.
    # ============================================================================================

    def _seed_channels(self, count: int) -> None:
        for n in range(count):
            channel_id = self._next_channel_id()
            self._channels[channel_id] = self._channel_record(channel_id, {"name": _nth_name(CHANNEL_NAMES, n)})

    def _seed_merchants(self, count: int, stores_per_merchant: int) -> None:
        rng = random.Random(f"{self.seed}/merchants")
        for n in range(count):
            merchant_id = self._next_merchant_id()
            name = _nth_name(MERCHANT_NAMES, n)
            created = SEED_EPOCH + timedelta(days=n)
            slug = re.sub(r"\W+", "", name).lower()
            self._merchants[merchant_id] = {
                "id": merchant_id,
                "created_at": _ts(created),
                "updated_at": _ts(created + timedelta(days=rng.randrange(30))),
                "name": name,
                "logo": f"https://cdn.example.com/merchants/{merchant_id}/logo.png",
                "is_active": True,
                "account_id": ACCOUNT_ID,
                "billing_arrangement": "standard",
                "supports_barcode": rng.random() < 0.5,
                "redemption_identifier_type": 0,
                "channels": [],
                "contacts": {
                    "primary": {"name": "Store Operations", "phone": "(415) 555-0100", "email": f"ops@{slug}.example.com"},
                    "secondary": {"name": "Marketing", "phone": "(415) 555-0101", "email": f"marketing@{slug}.example.com"},
                },
                "linked_by_channel": False,
            }
            for k in range(1, stores_per_merchant + 1):
                self._seed_store(rng, merchant_id, name, k)

    def _seed_store(self, rng: random.Random, merchant_id: int, merchant_name: str, k: int) -> None:
        store_id = self._next_store_id()
        city, state, zip_code, lat, lng = CITIES[(store_id + k) % len(CITIES)]
        self._stores[store_id] = {
            "id": store_id,
            "name": f"{merchant_name} #{k}",
            "site_id": f"{merchant_id}-{k:03d}",
            "number": f"{k:04d}",
            "description": f"{merchant_name} in {city}",
            "is_active": True,
            "phone": f"({AREA_CODES[k % len(AREA_CODES)]}) 555-01{rng.randrange(100):02d}",
            "location": {
                "address": f"{rng.randrange(1, 999)} Main St",
                "address2": None,
                "city": city,
                "state": state,
                "zip": zip_code,
                "country": "US",
                "lat": lat,
                "lng": lng,
            },
            "contacts": {
                "primary": {"name": "Store Manager", "phone": "(415) 555-0102", "email": f"store{store_id}@example.com"},
            },
            "merchant_id": merchant_id,
            "icon_url": None,
        }

    def _seed_offers(self, count: int) -> None:
        rng = random.Random(f"{self.seed}/offers")
        merchant_ids = list(self._merchants)
        channel_ids = list(self._channels)
        for n in range(count):
            offer_id = self._next_offer_id()
            name = _nth_name(OFFER_NAMES, n)
            # Mostly approved and running; every tenth from the 2nd is pending, from the 3rd expired.
            status = "pending" if n % 10 == 1 else "approved"
            activates_at, expires_at = EXPIRED_WINDOW if n % 10 == 2 else ACTIVE_WINDOW
            merchant_id = merchant_ids[n % len(merchant_ids)] if merchant_ids else None
            created = SEED_EPOCH + timedelta(hours=n)
            offer = self._offer_record(offer_id, {"name": name}, created=_ts(created))
            offer.update(
                description=f"{name} at participating locations.",
                category=rng.choice(OFFER_CATEGORIES),
                offer_code=f"SF{offer_id}",
                terms_and_conditions="Limit one per member per day. Not valid with other offers.",
                activates_at=activates_at,
                expires_at=expires_at,
                min_spend_amount=rng.choice((0, 10, 25)),
                max_redemptions=rng.choice((1000, 5000, 10000)),
                max_redemptions_per_member=rng.choice((1, 3, 5)),
                max_redemptions_per_member_per_day=1,
                status=status,
                updated_at=_ts(created + timedelta(days=rng.randrange(1, 30))),
                formatting={"bg_color": f"#{rng.randrange(0x1000000):06X}", "short_name": name[:20]},
            )
            self._set_offer_merchant(offer, merchant_id)
            self._offers[offer_id] = offer
            self._links[offer_id] = {}
            if channel_ids:
                for channel_id in sorted(rng.sample(channel_ids, min(len(channel_ids), rng.randint(1, 2)))):
                    self._link(offer_id, channel_id, xid=self._new_xid(rng))

    def _seed_members(self, count: int) -> None:
        rng = random.Random(f"{self.seed}/members")
        for n in range(1, count + 1):
            member_id = self._next_member_id()
            created = SEED_EPOCH + timedelta(seconds=n * 300 + rng.randrange(300))
            identifier = f"member-{n:06d}"
            self._members[member_id] = {
                "id": member_id,
                "identifier": identifier,
                "notification_mode": "app",
                "account_id": ACCOUNT_ID,
                "created_at": _ts(created),
                "updated_at": _ts(created + timedelta(seconds=rng.randrange(30 * 86400))),
                "member_profile": self._seed_profile(rng, n),
            }
            self._member_id_by_identifier[identifier] = member_id

    @staticmethod
    def _seed_profile(rng: random.Random, n: int) -> dict | None:
        """ASSUMPTION: the member payload embeds ``member_profile`` in the shape Sparkfly's
        ``POST /members/register`` accepts (ref §3 Members); v1.0 ``GET /members`` documents only
        id/identifier/notification_mode/timestamps. ~10% have no profile, ~10% no phone."""
        roll = rng.random()
        if roll < 0.10:
            return None
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        phone = None
        if roll >= 0.20:
            # 555-0100..0199 are the numbers reserved for fiction.
            digits = {"a": rng.choice(AREA_CODES), "p": "555", "l": f"01{rng.randrange(100):02d}"}
            phone = rng.choice(PHONE_FORMATS).format(**digits)
        return {
            "first_name": first,
            "last_name": last,
            "email": f"{first}.{last}.{n}@example.com".lower(),
            "phone": phone,
            "birth_month": rng.randint(1, 12),
            "birth_day": rng.randint(1, 28),
            "custom_data": {},
        }

    def _seed_loyalty(self, program_count: int) -> None:
        rng = random.Random(f"{self.seed}/loyalty")
        for n in range(program_count):
            program_id = self._next_program_id()
            created = _ts(SEED_EPOCH + timedelta(days=n))
            self._programs[program_id] = {
                "id": program_id,
                "name": _nth_name(PROGRAM_NAMES, n),
                "description": "Earn points on every visit and trade them for rewards.",
                "status": "active",
                "created_at": created,
                "updated_at": created,
            }
        program_ids = list(self._programs)
        if not program_ids:
            return
        for member in self._members.values():
            if rng.random() >= 0.6:  # ~60% of members are enrolled
                continue
            program_id = program_ids[rng.randrange(len(program_ids))]
            self._seed_enrollment(rng, member, program_id)

    def _seed_enrollment(self, rng: random.Random, member: dict, program_id: int) -> None:
        enrollment_id = self._next_enrollment_id()
        enrolled = _parse_ts(member["created_at"]) + timedelta(hours=rng.randrange(1, 72))
        historical = rng.randrange(20000)
        tier = sum(historical >= threshold for threshold in TIER_POINT_THRESHOLDS)  # 1..3
        tier_start = enrolled + timedelta(days=rng.randrange(60))
        roll = rng.random()
        self._enrollments[enrollment_id] = {
            "id": enrollment_id,
            "member_id": member["id"],
            "program_id": program_id,
            "external_id": f"EXT{enrollment_id:08d}",
            "source": rng.choice(ENROLLMENT_SOURCES),
            "status": "active" if roll < 0.9 else ("suspended" if roll < 0.97 else "archived"),
            "point_balance": rng.randrange(historical + 1),
            "historical_points": historical,
            "tier_id": self._tier_id(program_id, tier),
            "tier_term_end_date": (tier_start + timedelta(days=365)).date().isoformat(),
            "tier_term_start_time": _ts(tier_start),
            "fraud_risk_level": "none" if rng.random() < 0.95 else rng.choice(FRAUD_RISK_LEVELS[1:]),
            "created_at": _ts(enrolled),
            "updated_at": _ts(tier_start),
        }

    @staticmethod
    def _tier_id(program_id: int, tier: int) -> int:
        return TIER_ID_BASE + (program_id - PROGRAM_ID_BASE) * TIERS_PER_PROGRAM + tier - 1

    # ============================================================================================
    # Test helpers (Python API; the same under /_sandbox/ over HTTP)
    # ============================================================================================

    def inject_fault(
        self,
        path_prefix: str,
        *,
        status: int = 500,
        body: str = '{"error":"boom"}',
        content_type: str = "application/json",
        times: int = 1,
        after: int = 0,
        delay: float = 0.0,
        location: str = "",
    ) -> Fault:
        """Answer the next ``times`` requests under ``path_prefix`` (after skipping ``after``) raw."""
        fault = Fault(
            path_prefix, status=status, body=body, content_type=content_type, times=times, after=after, delay=delay,
            location=location,
        )
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def expire_tokens(self) -> int:
        """Invalidate every issued token (the next API call answers 401); returns how many."""
        with self._lock:
            count = len(self._tokens)
            self._tokens.clear()
        return count

    def count_requests(self, path: str, method: str | None = None) -> int:
        """How many API requests hit exactly ``path`` (``.json`` stripped), optionally by method."""
        return sum(1 for r in list(self.requests_log) if r.path == path and (method is None or r.method == method.upper()))

    # Points move only through these controls: Sparkfly's loyalty write API is not public
    # (ref §3 Loyalty). Both raise their event once the state lock is released.

    def award_points(self, enrollment_id: int, points: int) -> dict:
        """Credit ``points`` to the enrollment's balance and lifetime points; returns the
        enrollment as its GET shows it. KeyError for an unknown enrollment, ValueError for
        points that are not a positive integer."""
        with self._lock:
            enrollment, deliveries = self._award_points(self._enrollment_for_control(enrollment_id), points)
        self._deliver_all(deliveries)
        return enrollment

    def redeem_points(self, enrollment_id: int, points: int, *, reward_id: int = 1) -> dict:
        """Debit ``points`` from the enrollment's balance for reward ``reward_id``; returns the
        new reward state. InsufficientPoints (a ValueError) when the balance is short."""
        with self._lock:
            reward_state, deliveries = self._redeem_points(
                self._enrollment_for_control(enrollment_id), points, reward_id=reward_id
            )
        self._deliver_all(deliveries)
        return reward_state

    def _enrollment_for_control(self, enrollment_id: int) -> dict:
        enrollment = self._enrollments.get(enrollment_id)
        if enrollment is None:
            raise KeyError(f"No loyalty enrollment {enrollment_id}")
        return enrollment

    @staticmethod
    def _deliver_all(deliveries: list[Callable[[], None]]) -> None:
        for deliver in deliveries:
            deliver()

    # ============================================================================================
    # WSGI
    # ============================================================================================

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        started = time.perf_counter()
        request = _SandboxRequest(environ)
        with self._lock:
            response = self._respond(request)
            response.headers["X-Request-Id"] = self._new_uuid()
        for work in request.after_unlock:
            work()
        response.headers["X-Runtime"] = f"{time.perf_counter() - started:.6f}"
        return response(environ, start_response)

    def _respond(self, request: _SandboxRequest) -> Response:
        # ref §0: the response format may be asked for with a .json suffix or an Accept header;
        # the sandbox only speaks JSON, so the suffix is simply dropped.
        path = request.path[:-5] if request.path.endswith(".json") else request.path
        if not path.startswith(CONTROL_PREFIX + "/"):
            self.requests_log.append(LoggedRequest(request.method, path, request.query_string.decode("latin-1")))
            fault = self._take_fault(path)
            if fault is not None:
                if fault.delay:
                    # Slept after the state lock is released: a slow answer must not stall others.
                    request.after_unlock.append(lambda: time.sleep(fault.delay))
                return Response(
                    fault.body, status=fault.status, content_type=fault.content_type,
                    headers={"Location": fault.location} if fault.location else None,
                )
        try:
            handler, args = self._urls.match(path, method=request.method)
            if path.startswith(API_PREFIX + "/"):
                self._require_token(request)
            return handler(request, **args)
        except _Abort as abort:
            return abort.response
        except NotFound:
            return self._error(404, "Not Found")
        except MethodNotAllowed as exc:
            response = self._error(405, f"Method {request.method} is not allowed here")
            response.headers["Allow"] = ", ".join(exc.valid_methods or ())
            return response
        except Exception:  # a sandbox bug must still answer in Sparkfly's error shape
            logger.exception("Sparkfly sandbox failed on %s %s", request.method, request.full_path)
            return self._error(500, "Internal Server Error")

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
            # ref §1: the spec documents GET /auth, the newer API POST; both are served.
            _route(AUTH_PATH, self.authenticate, "GET", "POST"),
            # Members
            _route(MEMBERS_PATH, self.list_members, "GET"),
            _route(MEMBERS_PATH, self.create_member, "POST"),
            _route(MEMBER_SEARCH_PATH, self.search_member, "GET"),
            _route(MEMBER_PATH, self.get_member, "GET"),
            _route(MEMBER_PATH, self.update_member, "PUT"),
            _route(MEMBER_PATH, self.delete_member, "DELETE"),
            # Merchants and their stores
            _route(MERCHANTS_PATH, self.list_merchants, "GET"),
            _route(MERCHANTS_PATH, self.create_merchant, "POST"),
            _route(MERCHANT_PATH, self.get_merchant, "GET"),
            _route(STORES_PATH, self.list_stores, "GET"),
            _route(STORE_PATH, self.get_store, "GET"),
            # Offers, their approval and their channels
            _route(OFFERS_PATH, self.list_offers, "GET"),
            _route(OFFERS_PATH, self.create_offer, "POST"),
            _route(OFFER_PATH, self.get_offer, "GET"),
            _route(OFFER_PATH, self.update_offer, "PUT"),
            _route(OFFER_PATH, self.delete_offer, "DELETE"),
            _route(OFFER_APPROVE_PATH, self.approve_offer, "PUT"),
            _route(OFFER_CHANNELS_PATH, self.get_offer_channels, "GET"),
            _route(OFFER_CHANNELS_PATH, self.set_offer_channels, "POST"),
            _route(OFFER_CHANNELS_PATH, self.add_offer_channels, "PUT"),
            _route(OFFER_CHANNELS_PATH, self.remove_offer_channels, "DELETE"),
            _route(OFFER_CHANNEL_PATH, self.get_eligible_channel, "GET"),
            _route(OFFER_CHANNEL_PATH, self.update_eligible_channel, "PUT"),
            # Channels
            _route(CHANNELS_PATH, self.list_channels, "GET"),
            _route(CHANNELS_PATH, self.create_channel, "POST"),
            _route(CHANNEL_PATH, self.get_channel, "GET"),
            _route(CHANNEL_PATH, self.update_channel, "PUT"),
            _route(CHANNEL_PATH, self.delete_channel, "DELETE"),
            # Credentials
            _route(CREDENTIALS_PATH, self.list_credentials, "GET"),
            _route(CREDENTIALS_PATH, self.create_credential, "POST"),
            _route(CREDENTIAL_ELIGIBLE_PATH, self.credential_eligibility, "GET"),
            _route(CREDENTIAL_PATH, self.get_credential, "GET"),
            _route(CREDENTIAL_PATH, self.update_credential, "PUT"),
            _route(CREDENTIAL_PATH, self.delete_credential, "DELETE"),
            _route(CREDENTIAL_REDEEM_PATH, self.redeem_credential, "PUT"),
            _route(CREDENTIAL_VOID_PATH, self.void_credential, "PUT"),
            # Loyalty (ASSUMPTION: paths are client.py's choice, see there)
            _route(LOYALTY_PROGRAMS_PATH, self.list_programs, "GET"),
            _route(LOYALTY_PROGRAM_PATH, self.get_program, "GET"),
            _route(LOYALTY_ENROLLMENTS_PATH, self.list_enrollments, "GET"),
            _route(LOYALTY_ENROLLMENTS_PATH, self.create_enrollment, "POST"),
            _route(LOYALTY_ENROLLMENT_PATH, self.get_enrollment, "GET"),
            # Event notifications (GO spec)
            _route(EVENT_CALLBACKS_PATH, self.list_event_callbacks, "GET"),
            _route(EVENT_CALLBACKS_PATH, self.create_event_callback, "POST"),
            _route(EVENT_CALLBACK_PATH, self.get_event_callback, "GET"),
            _route(EVENT_CALLBACK_PATH, self.delete_event_callback, "DELETE"),
            _route(EVENT_SUBSCRIPTIONS_PATH, self.list_subscriptions, "GET"),
            _route(EVENT_SUBSCRIPTIONS_PATH, self.create_subscription, "POST"),
            _route(EVENT_SUBSCRIPTION_PATH, self.get_subscription, "GET"),
            _route(EVENT_SUBSCRIPTION_PATH, self.delete_subscription, "DELETE"),
            # Test control
            _route(f"{CONTROL_PREFIX}/faults", self.control_inject_fault, "POST"),
            _route(f"{CONTROL_PREFIX}/faults", self.control_clear_faults, "DELETE"),
            _route(f"{CONTROL_PREFIX}/expire-tokens", self.control_expire_tokens, "POST"),
            _route(f"{CONTROL_PREFIX}/callbacks", self.control_callbacks, "GET"),
            _route(f"{CONTROL_PREFIX}/notifications", self.control_notifications, "GET"),
            _route(f"{CONTROL_PREFIX}/loyalty/enrollments/{{enrollment_id}}/award", self.control_award_points, "POST"),
            _route(f"{CONTROL_PREFIX}/loyalty/enrollments/{{enrollment_id}}/redeem", self.control_redeem_points, "POST"),
        ]

    # ============================================================================================
    # Response and request helpers
    # ============================================================================================

    @staticmethod
    def _json(payload: Any, status: int = 200) -> Response:
        return Response(json.dumps(payload, separators=(",", ":")), status=status, content_type=JSON_CONTENT_TYPE)

    def _single(self, key: str, record: dict, status: int = 200) -> Response:
        """ref §2: ``{"<singular>": {…}, "errors": {}}``."""
        return self._json({key: record, "errors": {}}, status)

    def _invalid(self, key: str, record: dict, errors: dict[str, str]) -> Response:
        """ref §2 shape 3: the resource envelope with a populated ``errors`` map, 422."""
        return self._json({key: record, "errors": errors}, 422)

    def _error(self, status: int, message: str) -> Response:
        """ref §2 shape 2: ``{"trace": "<32 hex>", "error": "…"}``."""
        return self._json({"trace": f"{self._runtime_rng.getrandbits(128):032x}", "error": message}, status)

    def _page(
        self,
        request: Request,
        key: str,
        singular: str,
        records: Any,
        *,
        default_per_page: int = DEFAULT_PER_PAGE,
        max_per_page: int | None = None,
        render: Callable[[dict], dict] | None = None,
    ) -> Response:
        """ref §2: ``{"page","per_page","total_entries","total_pages","<plural>":[{"<singular>":{…}}]}``.

        ``records`` is any sized iterable (a dict's values are sliced without copying them).
        """
        page = self._positive_int_arg(request, "page", 1)
        per_page = self._positive_int_arg(request, "per_page", default_per_page)
        if max_per_page is not None and per_page > max_per_page:
            raise _Abort(self._error(422, f"per_page must be less than or equal to {max_per_page}"))
        total = len(records)
        start = (page - 1) * per_page
        window = itertools.islice(records, start, start + per_page) if start < total else ()
        items = [{singular: render(r) if render else r} for r in window]
        return self._json({
            "page": page,
            "per_page": per_page,
            "total_entries": total,
            "total_pages": -(-total // per_page),
            key: items,
        })

    def _positive_int_arg(self, request: Request, name: str, default: int) -> int:
        raw = request.args.get(name)
        if raw is None or raw == "":
            return default
        if not raw.isdigit() or int(raw) < 1:
            raise _Abort(self._error(400, f"{name} must be a positive integer, got {raw!r}"))
        return int(raw)

    def _optional_int(self, value: Any, name: str) -> int | None:
        """An id from a query string ("12") or JSON body (12); anything else is a 400."""
        if value is None or value == "":
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        raise _Abort(self._error(400, f"{name} must be an integer, got {value!r}"))

    def _body(self, request: Request) -> dict:
        raw = request.get_data(cache=True)
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise _Abort(self._json({"error": f"Invalid JSON: {exc}", "message": "Error parsing request"}, 400)) from None
        if not isinstance(body, dict):
            raise _Abort(self._json({"error": "The body must be a JSON object", "message": "Error parsing request"}, 400))
        return body

    def _fields(self, request: Request, key: str) -> dict:
        """The ``{"<key>": {…}}`` part of the JSON body (``{}`` when absent)."""
        fields = self._body(request).get(key, {})
        if not isinstance(fields, dict):
            raise _Abort(self._json({"error": f"{key} must be a JSON object", "message": "Error parsing request"}, 400))
        return fields

    def _get(self, table: dict[int, dict], record_id: int | None, label: str) -> dict:
        record = table.get(record_id) if record_id is not None else None
        if record is None:
            raise _Abort(self._error(404, f"{label} not found"))
        return record

    def _now(self) -> str:
        return _ts(self.clock())

    def _new_uuid(self) -> str:
        return str(uuid.UUID(int=self._runtime_rng.getrandbits(128), version=4))

    def _new_xid(self, rng: random.Random) -> str:
        """seed 002: a 7-character id per offer<->channel link (the landing-page path)."""
        while True:
            xid = "".join(rng.choices(XID_ALPHABET, k=7))
            if xid not in self._xids:
                self._xids.add(xid)
                return xid

    # ============================================================================================
    # Auth (ref §1)
    # ============================================================================================

    def authenticate(self, request: Request) -> Response:
        if request.headers.get("X-Auth-Identity") != self.identity or request.headers.get("X-Auth-Key") != self.key:
            return self._json({"error": "Invalid credentials"}, 401)
        token = f"{self._runtime_rng.getrandbits(256):064x}"
        self._tokens[token] = self.clock()
        return Response(status=204, headers={"X-Auth-Token": token})

    def _require_token(self, request: Request) -> None:
        token = request.headers.get("X-Auth-Token")
        if not token:
            raise _Abort(self._json({"error": "Missing X-Auth-Token header"}, 401))
        issued = self._tokens.get(token)
        if issued is None:
            raise _Abort(self._json({"error": "Invalid or expired token"}, 401))
        if self.clock() - issued >= self.token_ttl:
            del self._tokens[token]
            raise _Abort(self._json({"error": "Invalid or expired token"}, 401))

    # ============================================================================================
    # Members (ref §3 Members)
    # ============================================================================================

    def list_members(self, request: Request) -> Response:
        return self._page(
            request, "members", "member", self._members.values(),
            default_per_page=MEMBERS_DEFAULT_PER_PAGE, max_per_page=MEMBERS_MAX_PER_PAGE,
        )

    def create_member(self, request: _SandboxRequest) -> Response:
        fields = self._fields(request, "member")
        now = self._now()
        member = {
            "id": None,
            "identifier": None,
            "notification_mode": "app",
            "account_id": ACCOUNT_ID,
            "created_at": now,
            "updated_at": now,
            "member_profile": None,
        }
        errors = self._apply_member_fields(member, fields)
        if errors:
            return self._invalid("member", member, errors)
        member["id"] = self._next_member_id()
        self._members[member["id"]] = member
        self._member_id_by_identifier[member["identifier"]] = member["id"]
        request.after_unlock.extend(self._raise_event("sf.member.created", {"member": member}))
        return self._single("member", member, 201)

    def search_member(self, request: Request) -> Response:
        identifier = request.args.get("identifier")
        if not identifier:
            return self._error(400, "identifier is required")
        member_id = self._member_id_by_identifier.get(identifier)
        return self._single("member", self._get(self._members, member_id, "Member"))

    def get_member(self, request: Request, member_id: int) -> Response:
        return self._single("member", self._get(self._members, member_id, "Member"))

    def update_member(self, request: _SandboxRequest, member_id: int) -> Response:
        member = self._get(self._members, member_id, "Member")
        fields = self._fields(request, "member")
        updated = dict(member, updated_at=self._now())
        errors = self._apply_member_fields(updated, fields)
        if errors:
            return self._invalid("member", updated, errors)
        del self._member_id_by_identifier[member["identifier"]]
        self._member_id_by_identifier[updated["identifier"]] = member_id
        self._members[member_id] = updated
        request.after_unlock.extend(self._raise_event("sf.member.updated", {"member": updated}))
        return self._single("member", updated)

    def delete_member(self, request: Request, member_id: int) -> Response:
        member = self._get(self._members, member_id, "Member")
        del self._members[member_id]
        del self._member_id_by_identifier[member["identifier"]]
        for enrollment_id in [e["id"] for e in self._enrollments.values() if e["member_id"] == member_id]:
            del self._enrollments[enrollment_id]
        return self._single("member", member)

    def _apply_member_fields(self, member: dict, fields: dict) -> dict[str, str]:
        """Copy writable fields onto ``member``; return Rails-style errors (attribute -> message)."""
        if "identifier" in fields:
            member["identifier"] = None if fields["identifier"] is None else str(fields["identifier"]).strip()
        if "notification_mode" in fields:
            member["notification_mode"] = fields["notification_mode"]
        if "member_profile" in fields:
            profile = fields["member_profile"]
            if profile is not None and not isinstance(profile, dict):
                return {"member_profile": "must be an object"}
            # Partial update, like every Sparkfly update: omitted profile fields are kept.
            member["member_profile"] = None if profile is None else {**(member["member_profile"] or {}), **profile}
        if not member["identifier"]:
            return {"identifier": "can't be blank"}
        owner = self._member_id_by_identifier.get(member["identifier"])
        if owner is not None and owner != member["id"]:
            return {"identifier": "has already been taken"}
        return {}

    # ============================================================================================
    # Merchants and stores (ref §3 Stores / merchants)
    # ============================================================================================

    def list_merchants(self, request: Request) -> Response:
        return self._page(request, "merchants", "merchant", self._merchants.values())

    def create_merchant(self, request: Request) -> Response:
        fields = self._fields(request, "merchant")
        now = self._now()
        merchant = {
            "id": None,
            "created_at": now,
            "updated_at": now,
            "name": fields.get("name"),
            "logo": fields.get("logo"),
            "is_active": fields.get("is_active", True),
            "account_id": ACCOUNT_ID,
            "billing_arrangement": fields.get("billing_arrangement"),
            "supports_barcode": fields.get("supports_barcode", False),
            "redemption_identifier_type": fields.get("redemption_identifier_type", 0),
            "channels": [],
            "contacts": {role: fields[role] for role in ("primary", "secondary") if role in fields},
            "linked_by_channel": False,
        }
        if not merchant["name"]:
            return self._invalid("merchant", merchant, {"name": "can't be blank"})
        merchant["id"] = self._next_merchant_id()
        self._merchants[merchant["id"]] = merchant
        return self._single("merchant", merchant, 201)

    def get_merchant(self, request: Request, merchant_id: int) -> Response:
        return self._single("merchant", self._get(self._merchants, merchant_id, "Merchant"))

    def list_stores(self, request: Request, merchant_id: int) -> Response:
        self._get(self._merchants, merchant_id, "Merchant")
        stores = [s for s in self._stores.values() if s["merchant_id"] == merchant_id]
        return self._page(request, "stores", "store", stores)

    def get_store(self, request: Request, merchant_id: int, store_id: int) -> Response:
        store = self._get(self._stores, store_id, "Store")
        if store["merchant_id"] != merchant_id:
            return self._error(404, "Store not found")
        return self._single("store", store)

    # ============================================================================================
    # Offers (ref §3 Offers; seed 002)
    # ============================================================================================

    def list_offers(self, request: Request) -> Response:
        return self._page(request, "offers", "offer", self._offers.values(), render=self._offer_simplified)

    def create_offer(self, request: Request) -> Response:
        fields = self._fields(request, "offer")
        offer = self._offer_record(None, {}, created=self._now())
        errors = self._apply_offer_fields(offer, fields)
        if errors:
            return self._invalid("offer", offer, errors)
        offer["id"] = self._next_offer_id()
        self._offers[offer["id"]] = offer
        self._links[offer["id"]] = {}
        return self._single("offer", self._offer_full(offer), 201)

    def get_offer(self, request: Request, offer_id: int) -> Response:
        return self._single("offer", self._offer_full(self._get(self._offers, offer_id, "Offer")))

    def update_offer(self, request: Request, offer_id: int) -> Response:
        offer = self._get(self._offers, offer_id, "Offer")
        updated = dict(offer, updated_at=self._now())
        errors = self._apply_offer_fields(updated, self._fields(request, "offer"))
        if errors:
            return self._invalid("offer", self._offer_full(updated), errors)
        self._offers[offer_id] = updated
        return self._single("offer", self._offer_full(updated))

    def delete_offer(self, request: Request, offer_id: int) -> Response:
        offer = self._offer_full(self._get(self._offers, offer_id, "Offer"))
        del self._offers[offer_id]
        del self._links[offer_id]
        return self._single("offer", offer)

    def approve_offer(self, request: Request, offer_id: int) -> Response:
        """seed 002: ``PUT /offers/{id}/actions/approve``; credentials need approved offers."""
        offer = self._get(self._offers, offer_id, "Offer")
        offer.update(status="approved", updated_at=self._now())
        return self._single("offer", self._offer_full(offer))

    def _offer_record(self, offer_id: int | None, fields: dict, *, created: str) -> dict:
        """A new offer as Sparkfly returns it from ``POST /offers`` (seed 002's example)."""
        return {
            "id": offer_id,
            "merchant_id": None,
            "manufacturer_id": None,
            "name": fields.get("name"),
            "description": None,
            "offer_type": 0,
            "category": None,
            "offer_code": None,
            "pos_offer_code": None,
            "criteria": {},
            "points_earning_value": None,
            "points_required_value": None,
            "reward_item_description": None,
            "reward_item_value": None,
            "terms_and_conditions": None,
            "quest_only": False,
            "merchant_name": None,
            "external_reward": None,
            "is_reward": False,
            "locked": False,
            "activates_at": None,
            "expires_at": None,
            "stop_offering_at": None,
            "max_amount": None,
            "min_spend_amount": None,
            "max_redemptions": None,
            "max_redemptions_per_member": None,
            "max_redemptions_per_member_per_day": None,
            "account_id": ACCOUNT_ID,
            "required_item_set_id": None,
            "redemption_item_set_id": None,
            "required_item_count": None,
            "redemption_item_count": None,
            "status": "pending",
            "created_at": created,
            "updated_at": created,
            "offers": [],
            "formatting": {},
            "passbook_configuration": None,
            "landing_page_urls": [],
            "item_sets": [],
            # channel_ids is added from the offer's links when rendered.
            "eligibility": {
                "merchant_item_set_ids": [],
                "manufacturer_item_set_ids": [],
                "merchant_ids": [],
                "store_list_ids": [],
                "member_list_ids": [],
            },
        }

    def _apply_offer_fields(self, offer: dict, fields: dict) -> dict[str, str]:
        """Copy the writable fields present in ``fields`` onto ``offer`` (partial update)."""
        errors: dict[str, str] = {}
        for name in OFFER_TEXT_FIELDS:
            if name in fields:
                if fields[name] is not None and not isinstance(fields[name], str):
                    errors[name] = "must be a string"
                else:
                    offer[name] = fields[name]
        for name in OFFER_INTEGER_FIELDS:
            if name in fields:
                if fields[name] is not None and (not isinstance(fields[name], int) or isinstance(fields[name], bool)):
                    errors[name] = "is not a number"
                elif name == "merchant_id":
                    if fields[name] is not None and fields[name] not in self._merchants:
                        errors[name] = "must exist"
                    else:
                        self._set_offer_merchant(offer, fields[name])
                else:
                    offer[name] = fields[name]
        for name in OFFER_DATETIME_FIELDS:
            if name in fields:
                try:
                    offer[name] = None if fields[name] is None else _ts(_parse_ts(fields[name]))
                except (TypeError, ValueError):
                    errors[name] = "is not a valid datetime"
        if "is_reward" in fields:
            offer["is_reward"] = bool(fields["is_reward"])
        if "formatting" in fields:
            if isinstance(fields["formatting"], dict):
                offer["formatting"] = {**offer["formatting"], **fields["formatting"]}
            else:
                errors["formatting"] = "must be an object"
        if "status" in fields:
            if fields["status"] in OFFER_STATUSES:
                offer["status"] = fields["status"]
            else:
                errors["status"] = "is not included in the list"
        if not offer["name"]:
            errors["name"] = "can't be blank"
        return errors

    def _set_offer_merchant(self, offer: dict, merchant_id: int | None) -> None:
        merchant = self._merchants.get(merchant_id) if merchant_id is not None else None
        offer["merchant_id"] = merchant_id
        offer["merchant_name"] = merchant["name"] if merchant else None
        offer["eligibility"] = {**offer["eligibility"], "merchant_ids": [merchant_id] if merchant else []}

    def _offer_simplified(self, offer: dict) -> dict:
        return {name: offer[name] for name in OFFER_SIMPLIFIED_FIELDS}

    def _offer_full(self, offer: dict) -> dict:
        links = self._links.get(offer["id"], {})
        channels = []
        for link in links.values():
            # seed 002: inside the offer, "id" is the channel's id (not the link's).
            rendered = self._eligible_channel(link)
            del rendered["channel_id"], rendered["formatting"]
            rendered["id"] = link["channel_id"]
            channels.append({"channel": rendered})
        return {
            **offer,
            "channels": channels,
            "eligibility": {**offer["eligibility"], "channel_ids": list(links)},
        }

    # --- offer <-> channel links (seed 002: "we will need to associate the two") ----------------

    def get_offer_channels(self, request: Request, offer_id: int) -> Response:
        self._get(self._offers, offer_id, "Offer")
        return self._json(self._offer_channel_ids(offer_id))

    def set_offer_channels(self, request: Request, offer_id: int) -> Response:
        return self._change_offer_channels(request, offer_id, "set")

    def add_offer_channels(self, request: Request, offer_id: int) -> Response:
        return self._change_offer_channels(request, offer_id, "add")

    def remove_offer_channels(self, request: Request, offer_id: int) -> Response:
        return self._change_offer_channels(request, offer_id, "remove")

    def _change_offer_channels(self, request: Request, offer_id: int, mode: str) -> Response:
        """POST sets, PUT adds, DELETE removes; all answer 201 (ref §2 "Oddities")."""
        self._get(self._offers, offer_id, "Offer")
        channel_ids = self._fields(request, "offer").get("channel_ids")
        current = self._offer_channel_ids(offer_id)["offer"]
        if not isinstance(channel_ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in channel_ids):
            return self._invalid("offer", current, {"channel_ids": "must be a list of channel ids"})
        unknown = [i for i in channel_ids if i not in self._channels]
        if unknown:
            return self._invalid("offer", current, {"channel_ids": f"Channel not found with id: {', '.join(map(str, unknown))}"})
        links = self._links[offer_id]
        if mode == "set":
            for channel_id in [c for c in links if c not in channel_ids]:
                del links[channel_id]
        if mode == "remove":
            for channel_id in channel_ids:
                links.pop(channel_id, None)
        else:
            for channel_id in channel_ids:
                if channel_id not in links:
                    self._link(offer_id, channel_id, xid=self._new_xid(self._runtime_rng))
        return self._json(self._offer_channel_ids(offer_id), 201)

    def _offer_channel_ids(self, offer_id: int) -> dict:
        return {"offer": {"channel_ids": list(self._links.get(offer_id, {})), "id": offer_id}}

    def _link(self, offer_id: int, channel_id: int, *, xid: str) -> None:
        self._links[offer_id][channel_id] = {
            "id": self._next_link_id(),
            "channel_id": channel_id,
            "xid": xid,
            "security": None,
            "security_key": None,
            "offer_id": offer_id,
            "sms_keyword": None,
            "allow_return_later": True,
            "formatting": None,
        }

    def _eligible_channel(self, link: dict) -> dict:
        """The link as an ``eligible_channel``; its name is always the channel's current name."""
        return {
            "id": link["id"],
            "channel_id": link["channel_id"],
            "xid": link["xid"],
            "name": self._channels[link["channel_id"]]["name"],
            "security": link["security"],
            "security_key": link["security_key"],
            "offer_id": link["offer_id"],
            "sms_keyword": link["sms_keyword"],
            "allow_return_later": link["allow_return_later"],
            "formatting": link["formatting"],
        }

    def get_eligible_channel(self, request: Request, offer_id: int, channel_id: int) -> Response:
        return self._single("eligible_channel", self._eligible_channel(self._get_link(offer_id, channel_id)))

    def update_eligible_channel(self, request: Request, offer_id: int, channel_id: int) -> Response:
        link = self._get_link(offer_id, channel_id)
        fields = self._fields(request, "eligible_channel")
        errors = {}
        for name in ("security", "sms_keyword"):
            if name in fields and fields[name] is not None and not isinstance(fields[name], str):
                errors[name] = "must be a string"
        if "allow_return_later" in fields and not isinstance(fields["allow_return_later"], bool):
            errors["allow_return_later"] = "must be true or false"
        if errors:
            return self._invalid("eligible_channel", self._eligible_channel(link), errors)
        link.update({name: fields[name] for name in ("security", "sms_keyword", "allow_return_later") if name in fields})
        if "security" in fields:
            # ASSUMPTION: a secured link gets a shared key; the spec only names the field.
            link["security_key"] = f"{self._runtime_rng.getrandbits(128):032x}" if link["security"] else None
        return self._single("eligible_channel", self._eligible_channel(link), 201)  # 201: spec

    def _get_link(self, offer_id: int, channel_id: int) -> dict:
        self._get(self._offers, offer_id, "Offer")
        return self._get(self._links[offer_id], channel_id, "Eligible channel")

    # ============================================================================================
    # Channels (ref §3 Channels; seed 002)
    # ============================================================================================

    def list_channels(self, request: Request) -> Response:
        return self._page(request, "channels", "channel", self._channels.values())

    def create_channel(self, request: Request) -> Response:
        channel = self._channel_record(None, {})
        errors = self._apply_channel_fields(channel, self._fields(request, "channel"))
        if errors:
            return self._invalid("channel", channel, errors)
        channel["id"] = self._next_channel_id()
        self._channels[channel["id"]] = channel
        return self._single("channel", channel, 201)

    def get_channel(self, request: Request, channel_id: int) -> Response:
        return self._single("channel", self._get(self._channels, channel_id, "Channel"))

    def update_channel(self, request: Request, channel_id: int) -> Response:
        updated = dict(self._get(self._channels, channel_id, "Channel"))
        errors = self._apply_channel_fields(updated, self._fields(request, "channel"))
        if errors:
            return self._invalid("channel", updated, errors)
        self._channels[channel_id] = updated
        return self._single("channel", updated)

    def delete_channel(self, request: Request, channel_id: int) -> Response:
        channel = self._get(self._channels, channel_id, "Channel")
        del self._channels[channel_id]
        for links in self._links.values():
            links.pop(channel_id, None)
        return self._single("channel", channel)

    @staticmethod
    def _channel_record(channel_id: int | None, fields: dict) -> dict:
        return {
            "id": channel_id,
            "name": fields.get("name"),
            "allow_sms_keyword": False,
            "allow_hmac": False,
            "conversion_callback_url": None,
        }

    @staticmethod
    def _apply_channel_fields(channel: dict, fields: dict) -> dict[str, str]:
        errors = {}
        if "name" in fields:
            channel["name"] = fields["name"]
        for name in ("allow_sms_keyword", "allow_hmac"):
            if name in fields:
                if isinstance(fields[name], bool):
                    channel[name] = fields[name]
                else:
                    errors[name] = "must be true or false"
        if "conversion_callback_url" in fields:
            url = fields["conversion_callback_url"]
            if url is None or (isinstance(url, str) and url.startswith(("http://", "https://"))):
                channel["conversion_callback_url"] = url or None
            else:
                errors["conversion_callback_url"] = "must be an http(s) URL"
        if not isinstance(channel["name"], str) or not channel["name"].strip():
            errors["name"] = "can't be blank"
        return errors

    # ============================================================================================
    # Credentials (ref §3 Credentials; seed 001)
    # ============================================================================================

    def list_credentials(self, request: Request) -> Response:
        member_id = self._optional_int(request.args.get("member_id"), "member_id")
        offer_id = self._optional_int(request.args.get("offer_id"), "offer_id")
        store_id = self._optional_int(request.args.get("store_id"), "store_id")
        credentials = [
            c for c in self._credentials.values()
            if (member_id is None or c["member_id"] == member_id)
            and (offer_id is None or offer_id in c["offer_ids"])
            and (store_id is None or c["store_id"] == store_id)
        ]
        return self._page(request, "credentials", "credential", credentials)

    def create_credential(self, request: Request) -> Response:
        params = self._credential_params(request)
        if params.get("channel_id") is None:
            return self._json({"error": "channel_id is required"}, 400)  # seed 001, verbatim
        now = self.clock()
        credential = {
            "id": None,
            "account_id": ACCOUNT_ID,
            "created_at": _ts(now),
            "updated_at": _ts(now),
            "identifier": None,
            "member_id": params.get("member_id"),
            "store_id": params.get("store_id"),
            "channel_id": params["channel_id"],
            "offer_ids": [],
            "annotations": params.get("annotations") or {},
            "code_lifetime": None,
            "supports_barcode": False,
            "merchant_id": None,
            "offer_name": None,
            "merchant_name": None,
            "location_address": None,
            "url": None,
            "status": "open",
            "redeemed_at": None,
            "voided_at": None,
            "reusable": params.get("reusable", False),
        }
        new_offer_ids = params.get("offer_ids", [])
        errors = self._credential_errors(credential, new_offer_ids, now)
        if errors:
            return self._invalid("credential", credential, errors)
        credential["id"] = self._next_credential_id()
        self._attach_offers(credential, new_offer_ids)
        self._credentials[credential["id"]] = credential
        return self._single("credential", credential, 201)

    def get_credential(self, request: Request, credential_id: int) -> Response:
        return self._single("credential", self._get(self._credentials, credential_id, "Credential"))

    def update_credential(self, request: Request, credential_id: int) -> Response:
        """seed 001: ``PUT /credentials/{id}?channel_id=…&offer_ids=1,2`` adds offers; the first
        offers attached generate the identifier, which then never changes. Answers 201 (spec)."""
        credential = self._get(self._credentials, credential_id, "Credential")
        params = self._credential_params(request)
        if params.get("channel_id") is None:
            return self._json({"error": "channel_id is required"}, 400)
        if credential["status"] != "open":
            return self._json({"error": f"Credential is {credential['status']} and can no longer be changed"}, 422)
        now = self.clock()
        # The member of a credential never changes; member_id is ignored here.
        updated = dict(credential, updated_at=_ts(now), channel_id=params["channel_id"])
        updated.update({name: params[name] for name in ("store_id", "annotations", "reusable") if name in params})
        new_offer_ids = [i for i in params.get("offer_ids", []) if i not in credential["offer_ids"]]
        errors = self._credential_errors(updated, new_offer_ids, now)
        if errors:
            return self._invalid("credential", updated, errors)
        self._attach_offers(updated, new_offer_ids)
        self._credentials[credential_id] = updated
        return self._single("credential", updated, 201)

    def delete_credential(self, request: Request, credential_id: int) -> Response:
        credential = self._get(self._credentials, credential_id, "Credential")
        del self._credentials[credential_id]
        return self._single("credential", credential)  # ref §2: delete returns the credential

    def redeem_credential(self, request: _SandboxRequest, credential_id: int) -> Response:
        """Redeem (201), count it against the offers' limits, then fire the channel's
        conversion callback once the state lock is released (seed 001 "Channel Callback")."""
        credential = self._get(self._credentials, credential_id, "Credential")
        params = self._credential_params(request)
        store_id = params.get("store_id", credential["store_id"])
        now = self.clock()
        problem = self._redeem_problem(credential, store_id, now)
        if problem:
            return self._json({"error": problem}, 422)
        for offer_id in credential["offer_ids"]:
            self._redemptions[offer_id].append((credential["member_id"], now.date()))
        credential.update(status="redeemed", redeemed_at=_ts(now), updated_at=_ts(now), store_id=store_id)
        credential["location_address"] = self._location_address(store_id)
        url = self._conversion_callback_url(credential)
        if url:
            request.after_unlock.append(lambda: self._deliver_callback(url))
        return self._single("credential", credential, 201)

    def void_credential(self, request: Request, credential_id: int) -> Response:
        credential = self._get(self._credentials, credential_id, "Credential")
        if credential["status"] != "open":
            return self._json({"error": f"Credential has already been {credential['status']}"}, 422)
        now = _ts(self.clock())
        credential.update(status="voided", voided_at=now, updated_at=now)
        return self._single("credential", credential, 201)

    def credential_eligibility(self, request: Request) -> Response:
        """``{"is_eligible": bool, "status": "…"}``; ASSUMPTION: the status words are ours."""
        member_id = self._optional_int(request.args.get("member_id"), "member_id")
        offer_id = self._optional_int(request.args.get("offer_id"), "offer_id")
        if member_id is None or offer_id is None:
            return self._error(400, "member_id and offer_id are required")
        if member_id not in self._members:
            status = "member_not_found"
        elif offer_id not in self._offers:
            status = "offer_not_found"
        else:
            problem = self._offer_problem(self._offers[offer_id], member_id, None, self.clock())
            status = problem[0] if problem else "eligible"
        return self._json({"is_eligible": status == "eligible", "status": status})

    def _credential_params(self, request: Request) -> dict:
        """Credential fields from the query string (Sparkfly's own examples, seed 001) and/or a
        ``{"credential": {…}}`` JSON body (the spec); the body wins. Only given keys are returned."""
        query_names = ("member_id", "channel_id", "store_id", "offer_id", "offer_ids", "reusable")
        raw = {name: request.args[name] for name in query_names if name in request.args}
        raw.update(self._fields(request, "credential"))
        params: dict[str, Any] = {}
        for name in ("member_id", "channel_id", "store_id"):
            if name in raw:
                params[name] = self._optional_int(raw[name], name)
        if "offer_id" in raw or "offer_ids" in raw:
            ids = raw.get("offer_ids", [])
            ids = ids.split(",") if isinstance(ids, str) else ids
            if not isinstance(ids, list):
                raise _Abort(self._error(400, "offer_ids must be a list or a comma-separated string"))
            combined = [raw["offer_id"]] if raw.get("offer_id") not in (None, "") else []
            combined += [i for i in ids if i != ""]
            params["offer_ids"] = list(dict.fromkeys(self._optional_int(i, "offer_ids") for i in combined))
        if "reusable" in raw:
            params["reusable"] = raw["reusable"] in (True, "true", "1")
        if "annotations" in raw:
            if raw["annotations"] is not None and not isinstance(raw["annotations"], dict):
                raise _Abort(self._error(400, "annotations must be a JSON object"))
            params["annotations"] = raw["annotations"] or {}
        return params

    def _credential_errors(self, credential: dict, new_offer_ids: list[int], now: datetime) -> dict[str, str]:
        """seed 001 "Validations and Errors", first failure wins."""
        if credential["channel_id"] not in self._channels:
            return {"channel": "Channel can't be blank and must be associated with your account and offer"}
        if credential["member_id"] not in self._members:
            return {"member": "Member can't be blank"}
        store = None
        if credential["store_id"] is not None:
            store = self._stores.get(credential["store_id"])
            if store is None:
                return {"store": f"Store not found with id: {credential['store_id']}"}
        unusable = [i for i in new_offer_ids if credential["channel_id"] not in self._links.get(i, {})]
        if unusable:
            return {"offers": f"Offer not found or not eligible by channel, with id: {', '.join(map(str, unusable))}"}
        for offer_id in new_offer_ids:
            problem = self._offer_problem(self._offers[offer_id], credential["member_id"], store, now)
            if problem:
                return {"offers": problem[1]}
        return {}

    def _offer_problem(self, offer: dict, member_id: int, store: dict | None, now: datetime) -> tuple[str, str] | None:
        """Why ``member_id`` may not use ``offer`` now: (status word, seed 001 message), or None."""
        name = offer["name"]
        if offer["status"] != "approved":
            return "offer_not_approved", f"offer {name} must be approved to generate a credential"
        starts, ends = offer["activates_at"], offer["expires_at"]
        if (starts and _parse_ts(starts) > now) or (ends and _parse_ts(ends) <= now):
            return "offer_inactive", f"Offer with ID {offer['id']} is no longer active"
        merchant_ids = offer["eligibility"]["merchant_ids"]
        if store is not None and merchant_ids and store["merchant_id"] not in merchant_ids:
            return "store_not_eligible", f"Store must be eligible for offer: {name}"
        if not self._within_redemption_limits(offer, member_id, now.date()):
            return "redemption_limit_reached", f"Member must be eligible for offer: {name}"
        return None

    def _within_redemption_limits(self, offer: dict, member_id: int, today: date) -> bool:
        redemptions = self._redemptions.get(offer["id"], [])
        by_member = [day for member, day in redemptions if member == member_id]
        usage = (
            (len(redemptions), offer["max_redemptions"]),
            (len(by_member), offer["max_redemptions_per_member"]),
            (by_member.count(today), offer["max_redemptions_per_member_per_day"]),
        )
        return all(limit is None or used < limit for used, limit in usage)

    def _attach_offers(self, credential: dict, offer_ids: list[int]) -> None:
        """Add validated offers; the first ones attached generate the identifier (seed 001)."""
        if not offer_ids:
            return
        credential["offer_ids"] = credential["offer_ids"] + offer_ids
        if credential["identifier"] is None:
            credential["identifier"] = self._new_credential_identifier()
        first = self._offers[credential["offer_ids"][0]]
        merchant = self._merchants.get(first["merchant_id"])
        credential.update(
            offer_name=first["name"],
            merchant_id=first["merchant_id"],
            merchant_name=first["merchant_name"],
            supports_barcode=bool(merchant and merchant["supports_barcode"]),
            location_address=self._location_address(credential["store_id"]),
        )

    def _new_credential_identifier(self) -> str:
        """The code a member shows at the point of sale; digits, unique per sandbox."""
        while True:
            identifier = f"{self._runtime_rng.randrange(10**7, 10**8)}"
            if identifier not in self._credential_identifiers:
                self._credential_identifiers.add(identifier)
                return identifier

    def _location_address(self, store_id: int | None) -> str | None:
        store = self._stores.get(store_id) if store_id is not None else None
        if store is None:
            return None
        loc = store["location"]
        return f"{loc['address']}, {loc['city']}, {loc['state']} {loc['zip']}"

    def _redeem_problem(self, credential: dict, store_id: int | None, now: datetime) -> str | None:
        if credential["status"] == "voided":
            return "Credential has been voided"
        if credential["status"] == "redeemed" and not credential["reusable"]:
            return "Credential has already been redeemed"
        if not credential["offer_ids"]:
            return "Credential has no offers to redeem"
        store = None
        if store_id is not None:
            store = self._stores.get(store_id)
            if store is None:
                return f"Store not found with id: {store_id}"
        for offer_id in credential["offer_ids"]:
            offer = self._offers.get(offer_id)
            if offer is None:
                return f"Offer with ID {offer_id} is no longer active"
            problem = self._offer_problem(offer, credential["member_id"], store, now)
            if problem:
                return problem[1]
        return None

    # --- conversion callback (seed 001 "Channel Callback") --------------------------------------

    def _conversion_callback_url(self, credential: dict) -> str | None:
        """The channel's ``conversion_callback_url`` with every ``%{name}`` replaced, URL-encoded;
        names that cannot be resolved become blank (seed 001)."""
        channel = self._channels.get(credential["channel_id"])
        template = channel["conversion_callback_url"] if channel else None
        if not template:
            return None
        offer_id = credential["offer_ids"][0]
        link = self._links.get(offer_id, {}).get(credential["channel_id"])
        member = self._members.get(credential["member_id"])
        annotations = credential["annotations"]
        conv_ids = annotations.get("conv_ids")
        values = {
            **(conv_ids if isinstance(conv_ids, dict) else {}),  # the named fields below win
            "credential_id": credential["id"],
            "xid": link["xid"] if link else None,
            "offer_id": offer_id,
            "offer_ids": ",".join(map(str, credential["offer_ids"])),
            "store_id": credential["store_id"],
            "redeemed_at": credential["redeemed_at"],
            "status": credential["status"],
            "sf_uid": member["identifier"] if member else None,
            "sf_ac": annotations.get("sf_ac"),
        }

        def substitute(match: re.Match) -> str:
            value = values.get(match.group(1))
            return "" if value is None else quote(str(value), safe="")

        return re.sub(r"%\{([^}]*)\}", substitute, template)

    def _deliver_callback(self, url: str) -> None:
        """One synchronous call with ``callback_method`` (ASSUMPTION: Sparkfly documents neither
        the method nor a body; its example carries every value in the URL, seed 001). With
        ``callback_body`` "form" or "json" the query parameters travel in the body instead and
        the URL keeps only its path. A failure is only recorded: it never fails the redemption."""
        headers: dict[str, str] = {}
        if self.callback_body == "none":
            data = b"" if self.callback_method in ("POST", "PUT", "PATCH") else None
        else:
            parts = urlsplit(url)
            parameters = parse_qsl(parts.query, keep_blank_values=True)
            url = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
            if self.callback_body == "form":
                data = urlencode(parameters).encode("ascii")
                headers["Content-Type"] = FORM_CONTENT_TYPE
            else:
                data = json.dumps(dict(parameters), separators=(",", ":")).encode("utf-8")
                headers["Content-Type"] = "application/json"
        with self._lock:
            draw = self._duplicate_rng.random()
        copies = "once"
        if draw < self.duplicate_callbacks:
            copies = "concurrent" if draw < self.duplicate_callbacks / 2 else "again"

        def call(copy: int) -> None:
            status, error = self._call_out(url, self.callback_method, data, headers)
            entry = {
                "url": url,
                "method": self.callback_method,
                "status": status,
                "error": error,
                "body": None if data is None else data.decode("utf-8"),
            }
            if self.duplicate_callbacks:
                entry.update(copy=copy, copies=copies)
            with self._lock:
                self.callbacks.append(entry)

        if copies == "concurrent":
            twins = [threading.Thread(target=call, args=(copy,)) for copy in (0, 1)]
            for twin in twins:
                twin.start()
            for twin in twins:
                twin.join()
            return
        call(0)
        if copies == "again":
            call(1)

    @staticmethod
    def _call_out(url: str, method: str, data: bytes | None, headers: dict[str, str]) -> tuple[int | None, str | None]:
        """Make one outgoing call; returns (HTTP status or None, error text or None)."""
        # No proxies: a call to a local test server must not leave the machine.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            call = urllib.request.Request(url, data=data, method=method, headers=headers)
            with opener.open(call, timeout=CALLBACK_TIMEOUT_SECONDS) as answer:
                return answer.status, None
        except urllib.error.HTTPError as exc:
            return exc.code, f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:
            return None, f"{type(exc).__name__}: {exc}"

    # ============================================================================================
    # Loyalty (ASSUMPTION: paths and envelopes are client.py's choice; model from seed 004)
    # ============================================================================================

    def list_programs(self, request: Request) -> Response:
        return self._page(request, "loyalty_programs", "loyalty_program", self._programs.values())

    def get_program(self, request: Request, program_id: int) -> Response:
        return self._single("loyalty_program", self._get(self._programs, program_id, "Loyalty program"))

    def list_enrollments(self, request: Request, program_id: int) -> Response:
        """seed 004: ``tier_id`` is returned on all enrollment endpoints except this list."""
        self._get(self._programs, program_id, "Loyalty program")
        enrollments = [e for e in self._enrollments.values() if e["program_id"] == program_id]
        return self._page(
            request, "loyalty_enrollments", "loyalty_enrollment", enrollments,
            render=lambda e: {k: v for k, v in e.items() if k != "tier_id"},
        )

    def create_enrollment(self, request: _SandboxRequest, program_id: int) -> Response:
        self._get(self._programs, program_id, "Loyalty program")
        fields = self._fields(request, "loyalty_enrollment")
        now = self._now()
        enrollment = {
            "id": None,
            "member_id": fields.get("member_id"),
            "program_id": program_id,
            "external_id": fields.get("external_id"),
            "source": fields.get("source"),
            "status": "active",
            "point_balance": 0,
            "historical_points": 0,
            "tier_id": None,
            "tier_term_end_date": None,
            "tier_term_start_time": None,
            "fraud_risk_level": fields.get("fraud_risk_level", "none"),
            "created_at": now,
            "updated_at": now,
        }
        errors = self._enrollment_errors(enrollment)
        if errors:
            return self._invalid("loyalty_enrollment", enrollment, errors)
        enrollment["id"] = self._next_enrollment_id()
        self._enrollments[enrollment["id"]] = enrollment
        member = self._members[enrollment["member_id"]]
        data = {  # DEV events
            "enrollment": {
                "id": enrollment["id"],
                "source": enrollment["source"],
                "created_at": enrollment["created_at"],
                "external_id": enrollment["external_id"],
                "program_id": enrollment["program_id"],
                "member": {"id": member["id"], "identifier": member["identifier"]},
            }
        }
        request.after_unlock.extend(self._raise_event("loyalty.enrollment.created", data))
        return self._single("loyalty_enrollment", enrollment, 201)

    def get_enrollment(self, request: Request, enrollment_id: int) -> Response:
        return self._single("loyalty_enrollment", self._get(self._enrollments, enrollment_id, "Loyalty enrollment"))

    def _enrollment_errors(self, enrollment: dict) -> dict[str, str]:
        member_id = enrollment["member_id"]
        if member_id not in self._members:
            return {"member_id": "Member must exist"}
        program_id = enrollment["program_id"]
        if any(e["member_id"] == member_id and e["program_id"] == program_id for e in self._enrollments.values()):
            return {"member_id": "is already enrolled in this program"}
        if enrollment["fraud_risk_level"] not in FRAUD_RISK_LEVELS:
            return {"fraud_risk_level": "is not included in the list"}
        return {}

    # --- points (the award_points/redeem_points controls; payloads from DEV events) ------------

    def _award_points(self, enrollment: dict, points: int) -> tuple[dict, list[Callable[[], None]]]:
        """Credit ``points``; returns the enrollment and the deliveries of its event."""
        _check_positive_int(points, "points")
        enrollment.update(
            point_balance=enrollment["point_balance"] + points,
            historical_points=enrollment["historical_points"] + points,
            updated_at=self._now(),
        )
        member = self._members[enrollment["member_id"]]
        data = {
            "member": {
                "id": member["id"],
                "identifier": member["identifier"],
                "enrollment": {
                    "id": enrollment["id"],
                    "external_id": enrollment["external_id"],
                    "current_points": enrollment["point_balance"],
                    "points_earned": points,
                    "historical_points": enrollment["historical_points"],
                },
            }
        }
        return dict(enrollment), self._raise_event("loyalty.enrollment.points.awarded", data)

    def _redeem_points(self, enrollment: dict, points: int, *, reward_id: int) -> tuple[dict, list[Callable[[], None]]]:
        """Debit ``points`` for a new reward state; returns it and the deliveries of its event.
        Everything is checked before anything changes."""
        _check_positive_int(points, "points")
        _check_positive_int(reward_id, "reward_id")
        if points > enrollment["point_balance"]:
            raise InsufficientPoints(
                f"Loyalty enrollment {enrollment['id']} has {enrollment['point_balance']} points, {points} needed"
            )
        now = self._now()
        enrollment.update(point_balance=enrollment["point_balance"] - points, updated_at=now)
        # ASSUMPTION: DEV events shows `points_redeemed`, the member and the reward state, not
        # the reward state's fields; these are Sparkfly's LoyaltyRewardState model (ref §4),
        # with the credential identifier of the offer state the reward was issued as. No reward
        # catalog or offer wallet is simulated: reward_id is the caller's, and the ids are new.
        reward_state = {
            "id": self._next_reward_state_id(),
            "reward_id": reward_id,
            "offer_state_id": self._next_offer_state_id(),
            "credential_identifier": self._new_credential_identifier(),
            "issued_point_value": points,
            "status": "completed",
            "created_at": now,
        }
        member = self._members[enrollment["member_id"]]
        data = {
            "points_redeemed": points,
            "member": {
                "id": member["id"],
                "identifier": member["identifier"],
                "enrollment": {
                    "id": enrollment["id"],
                    "external_id": enrollment["external_id"],
                    "current_points": enrollment["point_balance"],
                    "historical_points": enrollment["historical_points"],
                },
            },
            "reward_state": reward_state,
        }
        return dict(reward_state), self._raise_event("loyalty.enrollment.points.redeemed", data)

    # ============================================================================================
    # Event notifications (GO spec; ref §6.3). Unlike v1.0's resources, the GO spec's
    # callback_response and subscription_response carry no `errors` member, so neither do
    # these answers (validation failures still use the usual 422 envelope).
    # ============================================================================================

    def list_event_callbacks(self, request: Request) -> Response:
        return self._page(request, "callbacks", "callback", self._event_callbacks.values(), render=self._event_callback)

    def create_event_callback(self, request: Request) -> Response:
        fields = self._fields(request, "callback")
        callback = {
            "id": None,
            "external_id": fields.get("external_id"),
            "enabled": fields.get("enabled", True),
            "url": fields.get("url"),
            # ASSUMPTION: the GO spec does not say how Sparkfly verifies a callback; the
            # sandbox never does, so this stays null.
            "last_verified_at": None,
            "signing_key": None,
        }
        errors = self._event_callback_errors(callback)
        if errors:
            return self._invalid("callback", {**callback, "subscriptions": []}, errors)
        callback["id"] = self._next_event_callback_id()
        callback["signing_key"] = base64.b64encode(self._runtime_rng.randbytes(SIGNING_KEY_BYTES)).decode("ascii")
        self._event_callbacks[callback["id"]] = callback
        return self._json({"callback": self._event_callback(callback)}, 201)

    def get_event_callback(self, request: Request, callback_id: int) -> Response:
        return self._json({"callback": self._event_callback(self._get(self._event_callbacks, callback_id, "Callback"))})

    def delete_event_callback(self, request: Request, callback_id: int) -> Response:
        """GO spec: deletes "all associated subscriptions" too. ASSUMPTION: the spec documents
        no body for the 200; like v1.0's deletes (ref §2), the deleted record is returned."""
        callback = self._event_callback(self._get(self._event_callbacks, callback_id, "Callback"))
        del self._event_callbacks[callback_id]
        for subscription in callback["subscriptions"]:
            del self._subscriptions[subscription["id"]]
        return self._json({"callback": callback})

    def _event_callback(self, callback: dict) -> dict:
        subscriptions = [s for s in self._subscriptions.values() if s["callback_id"] == callback["id"]]
        return {**callback, "subscriptions": subscriptions}

    @staticmethod
    def _event_callback_errors(callback: dict) -> dict[str, str]:
        errors = {}
        url = callback["url"]
        if url is None or (isinstance(url, str) and not url.strip()):
            errors["url"] = "can't be blank"
        elif not _is_http_url(url):
            errors["url"] = "must be an http(s) URL"
        external_id_error = _text_error(callback["external_id"])
        if external_id_error:
            errors["external_id"] = external_id_error
        if not isinstance(callback["enabled"], bool):
            errors["enabled"] = "must be true or false"
        return errors

    def list_subscriptions(self, request: Request) -> Response:
        return self._page(request, "subscriptions", "subscription", self._subscriptions.values())

    def create_subscription(self, request: Request) -> Response:
        fields = self._fields(request, "subscription")
        subscription = {
            "id": None,
            "callback_id": fields.get("callback_id"),
            "external_id": fields.get("external_id"),
            "enabled": fields.get("enabled", True),
            "event": fields.get("event"),
        }
        errors = self._subscription_errors(subscription)
        if errors:
            return self._invalid("subscription", subscription, errors)
        subscription["id"] = self._next_subscription_id()
        self._subscriptions[subscription["id"]] = subscription
        return self._json({"subscription": subscription}, 201)

    def get_subscription(self, request: Request, subscription_id: int) -> Response:
        return self._json({"subscription": self._get(self._subscriptions, subscription_id, "Subscription")})

    def delete_subscription(self, request: Request, subscription_id: int) -> Response:
        """ASSUMPTION: as for a callback, the deleted subscription is the 200's body."""
        subscription = self._get(self._subscriptions, subscription_id, "Subscription")
        del self._subscriptions[subscription_id]
        return self._json({"subscription": subscription})

    def _subscription_errors(self, subscription: dict) -> dict[str, str]:
        errors = {}
        callback_id = subscription["callback_id"]
        if callback_id is None:
            errors["callback_id"] = "can't be blank"
        elif not isinstance(callback_id, int) or isinstance(callback_id, bool) or callback_id not in self._event_callbacks:
            errors["callback_id"] = "Callback must exist"
        external_id_error = _text_error(subscription["external_id"])
        if external_id_error:
            errors["external_id"] = external_id_error
        event = subscription["event"]
        if event is None or event == "":
            errors["event"] = "can't be blank"
        elif event not in NOTIFICATION_EVENTS:
            errors["event"] = "is not included in the list"
        if not isinstance(subscription["enabled"], bool):
            errors["enabled"] = "must be true or false"
        return errors

    # --- delivery ---------------------------------------------------------------------------

    def _raise_event(self, event_name: str, data: dict) -> list[Callable[[], None]]:
        """The deliveries of one event to every enabled callback with an enabled subscription
        to it, to run once the state lock is released (a callback URL may point back at this
        sandbox). Called under the lock: the body is serialised now, so later changes to the
        records in ``data`` do not leak into it, and its id comes from the runtime stream."""
        subscribed = {s["callback_id"] for s in self._subscriptions.values() if s["enabled"] and s["event"] == event_name}
        targets = [c for c in self._event_callbacks.values() if c["enabled"] and c["id"] in subscribed]
        if not targets:
            return []
        # ASSUMPTION: Sparkfly documents `{"event_name": …, <metadata>, "data": {…}}` without
        # naming the metadata (ref §6.3); the sandbox puts an `id` and a `created_at` there.
        event_id = self._new_uuid()
        payload = {"event_name": event_name, "id": event_id, "created_at": self._now(), "data": data}
        body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        return [
            functools.partial(self._deliver_notification, event_name, event_id, callback["url"], callback["signing_key"], body)
            for callback in targets
        ]

    def _deliver_notification(self, event_name: str, event_id: str, url: str, signing_key: str, body: bytes) -> None:
        """POST one signed event. ASSUMPTION: Sparkfly signs the raw body with HMAC-SHA256 and
        sends the base64 digest in ``x-hmac-sha256-signature`` (ref §6.3), but does not say how
        the key is decoded; the sandbox uses the signing_key string's UTF-8 bytes as the key.
        A failure is only recorded, never retried."""
        signature = base64.b64encode(hmac.new(signing_key.encode("utf-8"), body, hashlib.sha256).digest()).decode("ascii")
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature}
        status, error = self._call_out(url, "POST", body, headers)
        entry = {
            "event_name": event_name,
            "event_id": event_id,
            "url": url,
            "status": status,
            "error": error,
            "body": body.decode("utf-8"),
        }
        with self._lock:
            self.notifications.append(entry)

    # ============================================================================================
    # Test control over HTTP (/_sandbox/…)
    # ============================================================================================

    def control_inject_fault(self, request: Request) -> Response:
        body = self._body(request)
        try:
            fault = self.inject_fault(**body)
        except TypeError as exc:
            return self._error(400, f"Bad fault: {exc}")
        return self._json({"fault": asdict(fault)}, 201)

    def control_clear_faults(self, request: Request) -> Response:
        self.clear_faults()
        return self._json({"faults": []})

    def control_expire_tokens(self, request: Request) -> Response:
        return self._json({"expired": self.expire_tokens()})

    def control_callbacks(self, request: Request) -> Response:
        return self._json({"callbacks": self.callbacks})

    def control_notifications(self, request: Request) -> Response:
        return self._json({"notifications": self.notifications})

    def control_award_points(self, request: _SandboxRequest, enrollment_id: int) -> Response:
        """``{"points": N}`` -> the enrollment, as award_points; its event is sent after unlock."""
        enrollment = self._get(self._enrollments, enrollment_id, "Loyalty enrollment")
        try:
            awarded, deliveries = self._award_points(enrollment, self._body(request).get("points"))
        except ValueError as exc:
            return self._error(400, str(exc))
        request.after_unlock.extend(deliveries)
        return self._json({"loyalty_enrollment": awarded})

    def control_redeem_points(self, request: _SandboxRequest, enrollment_id: int) -> Response:
        """``{"points": N[, "reward_id": R]}`` -> 201 the reward state, as redeem_points; 422
        when the balance is short."""
        enrollment = self._get(self._enrollments, enrollment_id, "Loyalty enrollment")
        body = self._body(request)
        try:
            reward_state, deliveries = self._redeem_points(enrollment, body.get("points"), reward_id=body.get("reward_id", 1))
        except InsufficientPoints as exc:
            return self._error(422, str(exc))
        except ValueError as exc:
            return self._error(400, str(exc))
        request.after_unlock.extend(deliveries)
        return self._json({"reward_state": reward_state}, 201)


# ================================================================================================
# Serving
# ================================================================================================


def serve_in_thread(sandbox: SparkflySandbox, host: str = "127.0.0.1", port: int = 0) -> SandboxServer:
    """Serve ``sandbox`` on ``host:port`` (0 = a free port) from a daemon thread."""
    return loopback.serve_in_thread(sandbox, host, port, name="sparkfly-sandbox")


def serve_forever(
    sandbox: SparkflySandbox,
    host: str = "127.0.0.1",
    port: int = 8100,
    *,
    ready: Callable[[str], None] | None = None,
    access_log: bool = True,
) -> None:
    """Serve ``sandbox`` in this thread until Ctrl-C; see ``portal.loopback.serve_forever``."""
    loopback.serve_forever(sandbox, host, port, ready=ready, access_log=access_log)


__all__ = [
    "Fault", "InsufficientPoints", "LoggedRequest", "SandboxServer", "SparkflySandbox", "serve_forever", "serve_in_thread",
]
