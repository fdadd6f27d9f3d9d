"""HTTP client of the Sparkfly Platform API.

Every path the portal calls is named once, in the block below; the sandbox
(``sparkfly_sync/sandbox.py``) serves the same constants, so the two cannot drift apart.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, UTC
from typing import Any

import requests
from django.conf import settings

from portal import outbound
from sparkfly_sync.errors import (
    SparkflyAuthError,
    SparkflyConnectionError,
    SparkflyError,
    SparkflyHostRefused,
    SparkflyResponseError,
    error_for_response,
)

logger = logging.getLogger(__name__)


API_PREFIX = "/v1.0"
AUTH_PATH = "/auth"
MEMBERS_PATH = f"{API_PREFIX}/members"
MEMBER_SEARCH_PATH = f"{API_PREFIX}/members/search"
MERCHANTS_PATH = f"{API_PREFIX}/merchants"
STORES_PATH = f"{API_PREFIX}/merchants/{{merchant_id}}/stores"
OFFERS_PATH = f"{API_PREFIX}/offers"
OFFER_APPROVE_PATH = f"{API_PREFIX}/offers/{{offer_id}}/actions/approve"
OFFER_CHANNELS_PATH = f"{API_PREFIX}/offers/{{offer_id}}/channels"
CHANNELS_PATH = f"{API_PREFIX}/channels"
CHANNEL_PATH = f"{API_PREFIX}/channels/{{channel_id}}"
CREDENTIALS_PATH = f"{API_PREFIX}/credentials"
CREDENTIAL_REDEEM_PATH = f"{API_PREFIX}/credentials/{{credential_id}}/redeem"
CREDENTIAL_VOID_PATH = f"{API_PREFIX}/credentials/{{credential_id}}/void"
# ASSUMPTION: Sparkfly's Loyalty API paths are not public (reference/sparkfly-api.md, section 3
# "Loyalty"). These are our choice, modelled on the v1.0 conventions (plural resources, wrapped
# items); when Sparkfly confirms the real ones, change them here and nowhere else.
LOYALTY_PROGRAMS_PATH = f"{API_PREFIX}/loyalty/programs"
LOYALTY_ENROLLMENTS_PATH = f"{API_PREFIX}/loyalty/programs/{{program_id}}/enrollments"
LOYALTY_ENROLLMENT_PATH = f"{API_PREFIX}/loyalty/enrollments/{{enrollment_id}}"
# Event notifications: where Sparkfly is told which events to POST to which of our URLs
# (Sparkfly's Core Operations spec, reference/sparkfly-api.md section 6).
EVENT_CALLBACKS_PATH = f"{API_PREFIX}/event_notifications/callbacks"
EVENT_CALLBACK_PATH = f"{API_PREFIX}/event_notifications/callbacks/{{callback_id}}"
EVENT_SUBSCRIPTIONS_PATH = f"{API_PREFIX}/event_notifications/subscriptions"
EVENT_SUBSCRIPTION_PATH = f"{API_PREFIX}/event_notifications/subscriptions/{{subscription_id}}"

# Sparkfly documents a maximum page size only for members.
MEMBERS_MAX_PER_PAGE = 10000

# Sparkfly: "Tokens will be valid for 24 hours." We renew a little early so a token never
# expires between our check and Sparkfly's.
TOKEN_LIFETIME = timedelta(hours=24)
TOKEN_RENEWAL_MARGIN = timedelta(minutes=5)
# Requests that may be sent again after a failure without risk of doing their work twice.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
USER_AGENT = "sparkfly-attentive-portal/0.1 (+python-requests)"


def url_refusal(url: str) -> str:
    """Why the identity, key and token may not be sent to ``url`` (README "Outbound HTTP"), or ``""``."""
    return outbound.refusal(
        url,
        allowed_hosts=settings.SPARKFLY_ALLOWED_HOSTS,
        allow_loopback=settings.OUTBOUND_ALLOW_LOOPBACK,
        service="Sparkfly",
        setting="SPARKFLY_ALLOWED_HOSTS",
    )


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently an idempotent request is retried.

    The wait before retry n (1-based) is ``backoff * 2**(n-1)`` seconds plus up to 10% jitter,
    capped at ``max_backoff``; a ``Retry-After`` header from Sparkfly wins when it is longer.
    """

    attempts: int = 4
    backoff: float = 0.5
    max_backoff: float = 30.0

    def wait_before(self, retry_number: int, rng: random.Random) -> float:
        base = min(self.max_backoff, self.backoff * 2 ** (retry_number - 1))
        return base + rng.uniform(0, base / 10)


@dataclass
class Page:
    """One page of a Sparkfly list: its number, the unwrapped items, and the paging totals."""

    number: int
    items: list[dict]
    total_pages: int
    total_entries: int | None


@dataclass
class _Token:
    value: str
    expires_at: datetime


@dataclass
class SparkflyClient:
    """One authenticated ``requests.Session`` to one Sparkfly account.

    Thread-safe: the token is shared and renewed under a lock, so the web server and worker
    threads authenticate once per 24 hours, not once per call.
    """

    base_url: str
    identity: str
    key: str
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        self.session = requests.Session()
        self.session.headers.update({"Accept": "application/json", "User-Agent": USER_AGENT})
        self._token: _Token | None = None
        self._token_lock = threading.Lock()
        self._rng = random.Random()

    def __repr__(self) -> str:  # never show the key
        return f"SparkflyClient(base_url={self.base_url!r}, identity={self.identity!r})"

    # --- authentication -----------------------------------------------------------------------

    def authenticate(self) -> str:
        """Exchange identity and key for a token (``X-Auth-Token`` response header)."""
        response = self._send(
            "GET",
            AUTH_PATH,
            headers={"X-Auth-Identity": self.identity, "X-Auth-Key": self.key},
            idempotent=True,
        )
        if response.status_code == 401:
            raise SparkflyAuthError(
                "Sparkfly rejected the identity and key (401). Check SPARKFLY_IDENTITY and SPARKFLY_KEY.",
                status=401,
                sparkfly_message=error_for_response(response).sparkfly_message,
                method="GET",
                url=response.url,
            )
        if response.status_code >= 300:
            raise error_for_response(response)
        token = response.headers.get("X-Auth-Token", "").strip()
        if not token:
            raise SparkflyResponseError(
                f"Sparkfly answered {response.status_code} to /auth without an X-Auth-Token header.",
                status=response.status_code,
                method="GET",
                url=response.url,
            )
        self._token = _Token(token, self.clock() + TOKEN_LIFETIME - TOKEN_RENEWAL_MARGIN)
        return token

    def _current_token(self, *, renew_if: str | None = None) -> str:
        """A valid token; ``renew_if`` forces renewal if the cached token is still that one."""
        with self._token_lock:
            token = self._token
            if token is None or token.expires_at <= self.clock() or token.value == renew_if:
                return self.authenticate()
            return token.value

    # --- requests -------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        idempotent: bool | None = None,
    ) -> dict:
        """Send an authenticated request and return the decoded JSON object (``{}`` for 204).

        A 401 renews the token once and repeats the request; a second 401 is an error.
        """
        method = method.upper()
        if idempotent is None:
            idempotent = method in IDEMPOTENT_METHODS
        token = self._current_token()
        response = self._send(method, path, params=params, json_body=json_body, token=token, idempotent=idempotent)
        if response.status_code == 401:
            logger.info("Sparkfly answered 401 to %s %s; renewing the token once", method, path)
            token = self._current_token(renew_if=token)
            response = self._send(
                method, path, params=params, json_body=json_body, token=token, idempotent=idempotent
            )
        if response.status_code >= 300:
            raise error_for_response(response)
        return _decode_json_object(response)

    def get(self, path: str, **params: Any) -> dict:
        return self.request("GET", path, params=params or None)

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        token: str | None = None,
        idempotent: bool,
    ) -> requests.Response:
        """One logical request with retries on connection errors, 429 and 5xx when idempotent."""
        url = self.base_url + path
        # Before anything leaves (settings changed after start-up, a client built by hand).
        if refused := url_refusal(url):
            raise SparkflyHostRefused(f"Nothing was sent to Sparkfly: {refused}", method=method, url=url)
        request_headers = dict(headers or {})
        if token is not None:
            request_headers["X-Auth-Token"] = token
        attempts = self.retry.attempts if idempotent else 1
        for attempt in range(1, attempts + 1):
            try:
                response = self.session.request(
                    method,
                    url,
                    params=params,
                    json=json_body,
                    headers=request_headers,
                    timeout=(self.connect_timeout, self.read_timeout),
                    allow_redirects=False,  # the key and token go to Sparkfly's host only
                )
            except requests.RequestException as exc:
                if attempt == attempts:
                    raise SparkflyConnectionError.from_exception(
                        exc, method=method, url=url, attempts=attempt, idempotent=idempotent
                    ) from exc
                wait = self.retry.wait_before(attempt, self._rng)
                logger.warning("Sparkfly %s %s failed (%s); retry %d in %.2fs", method, path, exc.__class__.__name__, attempt, wait)
                self.sleep(wait)
                continue
            if response.status_code in RETRYABLE_STATUSES and attempt < attempts:
                wait = max(self.retry.wait_before(attempt, self._rng), _retry_after_seconds(response))
                logger.warning("Sparkfly %s %s answered %d; retry %d in %.2fs", method, path, response.status_code, attempt, wait)
                self.sleep(wait)
                continue
            return response
        raise AssertionError("unreachable: the last attempt always returns or raises")

    # --- pagination -----------------------------------------------------------------------------

    def iter_pages(
        self,
        path: str,
        *,
        collection: str,
        item: str,
        per_page: int,
        start_page: int = 1,
        params: Mapping[str, Any] | None = None,
    ) -> Iterator[Page]:
        """Yield each page of a list, items unwrapped (``{"members":[{"member":{…}}]}``).

        Stops after ``total_pages``, or at the first empty page when Sparkfly omits the totals.
        """
        number = start_page
        while True:
            body = self.get(path, **{**(params or {}), "page": number, "per_page": per_page})
            page = _parse_page(body, number=number, collection=collection, item=item, path=path)
            if not page.items and page.total_pages and number < page.total_pages:
                raise SparkflyResponseError(
                    f"Sparkfly's {path} page {number} of {page.total_pages} came back empty; "
                    "stopping rather than skip the pages after it."
                )
            if page.items:
                yield page
            if not page.items or (page.total_pages and number >= page.total_pages):
                return
            number += 1


def _retry_after_seconds(response: requests.Response) -> float:
    value = response.headers.get("Retry-After", "")
    try:
        return min(max(float(value), 0.0), 300.0)
    except ValueError:
        return 0.0


def _decode_json_object(response: requests.Response) -> dict:
    if response.status_code == 204 or not response.content:
        return {}
    try:
        # NaN/Infinity are not JSON, and PostgreSQL's jsonb refuses them: read them as null.
        body = json.loads(response.content, parse_constant=lambda constant: None)
    except ValueError as exc:
        raise SparkflyResponseError(
            f"Sparkfly answered {response.status_code} with a body that is not JSON "
            f"({response.headers.get('Content-Type', 'no content type')}): {_snippet(response.text)}",
            status=response.status_code,
            method=response.request.method,
            url=response.url,
        ) from exc
    if not isinstance(body, dict):
        raise SparkflyResponseError(
            f"Sparkfly answered {response.status_code} with JSON that is not an object: {_snippet(response.text)}",
            status=response.status_code,
            method=response.request.method,
            url=response.url,
        )
    # PostgreSQL text and jsonb cannot hold NUL characters; the scan is cheap, the walk rare.
    return _without_nul(body) if b"\\u0000" in response.content else body


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_without_nul(key): _without_nul(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    return value


def _parse_page(body: dict, *, number: int, collection: str, item: str, path: str) -> Page:
    wrapped = body.get(collection)
    if not isinstance(wrapped, list):
        raise SparkflyResponseError(
            f"Sparkfly's {path} page {number} has no {collection!r} list (keys: {sorted(body)[:10]})."
        )
    items = []
    for position, entry in enumerate(wrapped):
        inner = entry.get(item) if isinstance(entry, dict) else None
        if not isinstance(inner, dict):
            # Only the shape, never the content: entries can hold callback URLs and keys.
            shape = f"keys {sorted(entry)[:10]}" if isinstance(entry, dict) else type(entry).__name__
            raise SparkflyResponseError(
                f"Sparkfly's {path} page {number}, entry {position}: expected {{{item!r}: {{…}}}}, got {shape}"
            )
        items.append(inner)
    return Page(
        number=number,
        items=items,
        total_pages=_optional_int(body.get("total_pages")) or 0,
        total_entries=_optional_int(body.get("total_entries")),
    )


def _optional_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _snippet(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


__all__ = [
    "Page",
    "RetryPolicy",
    "SparkflyClient",
    "SparkflyError",
]


_shared_clients: dict[tuple[str, str, str, bool], SparkflyClient] = {}
_shared_clients_lock = threading.Lock()
# While a person waits (an admin action), one try and a short read timeout: an outage should
# be reported in seconds, not after minutes of backoff.
INTERACTIVE_RETRY = RetryPolicy(attempts=1)
INTERACTIVE_READ_TIMEOUT = 15.0


def client_from_settings(*, interactive: bool = False) -> SparkflyClient:
    """The process-wide client for the configured account (one token per process per 24 h);
    ``interactive`` for calls made while a person waits."""
    from django.core.exceptions import ImproperlyConfigured

    base_url, identity, key = settings.SPARKFLY_API_URL, settings.SPARKFLY_IDENTITY, settings.SPARKFLY_KEY
    missing = [name for name, value in (("SPARKFLY_API_URL", base_url), ("SPARKFLY_IDENTITY", identity), ("SPARKFLY_KEY", key)) if not value]
    if missing:
        raise ImproperlyConfigured(
            f"Sparkfly is not configured: set {', '.join(missing)} (see .env.example), "
            "or run `make run`, which starts the Sparkfly sandbox and points the portal at it."
        )
    with _shared_clients_lock:
        client = _shared_clients.get((base_url, identity, key, interactive))
        if client is None:
            client = SparkflyClient(
                base_url=base_url,
                identity=identity,
                key=key,
                connect_timeout=settings.SPARKFLY_CONNECT_TIMEOUT,
                read_timeout=min(settings.SPARKFLY_READ_TIMEOUT, INTERACTIVE_READ_TIMEOUT)
                if interactive
                else settings.SPARKFLY_READ_TIMEOUT,
                retry=INTERACTIVE_RETRY if interactive else RetryPolicy(),
            )
            _shared_clients[(base_url, identity, key, interactive)] = client
        return client
