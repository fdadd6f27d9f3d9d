"""HTTP client of Attentive's REST API (v1).

Every path the portal calls is named once, here; the sandbox (``attentive_sync/sandbox.py``)
serves the same constants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests
from django.conf import settings
from urllib3.util import Timeout

from attentive_sync.errors import (
    AttentiveAuthError,
    AttentiveConnectionError,
    AttentiveError,
    AttentiveHostRefused,
    AttentiveTimeout,
    error_for_response,
)
from portal import outbound


PRODUCTION_URL = "https://api.attentivemobile.com"
ME_PATH = "/v1/me"
CUSTOM_EVENTS_PATH = "/v1/events/custom"
CUSTOM_ATTRIBUTES_PATH = "/v1/attributes/custom"
SUBSCRIPTIONS_PATH = "/v1/subscriptions"
UNSUBSCRIBE_PATH = "/v1/subscriptions/unsubscribe"
IDENTITY_PATH = "/v1/identity-resolution/user-identifiers"
TEXT_SEND_PATH = "/v1/text/send"
SEGMENTS_PATH = "/v2/segments"
SEGMENT_MEMBERS_PATH = "/v2/bulk/segments/members"
BULK_JOB_PATH = "/v2/bulk/job/{bulk_job_id}"
SEGMENT_MEMBERS_MAX = 10_000  # v2 spec SegmentMembers.members: 1 to 10,000 per request

USER_AGENT = "sparkfly-attentive-portal/0.1 (+python-requests)"


def url_refusal(url: str) -> str:
    """Why the API key may not be sent to ``url`` (README "Outbound HTTP"), or ``""``."""
    return outbound.refusal(
        url,
        allowed_hosts=settings.ATTENTIVE_ALLOWED_HOSTS,
        allow_loopback=settings.OUTBOUND_ALLOW_LOOPBACK,
        service="Attentive",
        setting="ATTENTIVE_ALLOWED_HOSTS",
    )


@dataclass
class AttentiveClient:
    """One ``requests.Session`` with one API key. No retries here: the caller owns the policy
    (``delivery.py`` retries events; an admin's "verify" should fail fast)."""

    api_key: str
    base_url: str = PRODUCTION_URL
    connect_timeout: float = 3.0
    total_timeout: float = 10.0

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        self.session = requests.Session()
        self.session.headers.update(
            {"Authorization": f"Bearer {self.api_key}", "Accept": "application/json", "User-Agent": USER_AGENT}
        )
        # urllib3's Timeout caps connect + read together; a tuple would only cap each read.
        self.timeout = Timeout(connect=self.connect_timeout, total=self.total_timeout)

    def __repr__(self) -> str:  # never show the key
        return f"AttentiveClient(base_url={self.base_url!r})"

    def request(self, method: str, path: str, *, json_body: Any = None, params: dict | None = None) -> requests.Response:
        """One try; a 2xx response, or an ``AttentiveError`` saying what went wrong."""
        url = self.base_url + path
        # Before anything leaves: the base URL may predate the allowlist or have been written
        # to the database directly.
        if refused := url_refusal(url):
            raise AttentiveHostRefused(f"Nothing was sent to Attentive: {refused}")
        try:
            response = self.session.request(
                method, url, json=json_body, params=params, timeout=self.timeout, allow_redirects=False
            )
        except UnicodeError:
            # http.client refuses a header that is not Latin-1 (a key pasted with a stray "…" or
            # zero-width space); `from None` keeps the key, which the exception holds, out of it.
            raise AttentiveAuthError(
                "The Attentive API key contains characters an HTTP header cannot carry; enter it again."
            ) from None
        except requests.Timeout as exc:
            raise AttentiveTimeout(
                f"Attentive did not answer {method} {path} within {self.total_timeout:g} s ({exc.__class__.__name__})."
            ) from exc
        except requests.RequestException as exc:
            raise AttentiveConnectionError(
                f"Attentive could not be reached for {method} {path} ({exc.__class__.__name__}); "
                "check the API base URL and the network."
            ) from exc
        if not 200 <= response.status_code < 300:
            raise error_for_response(response)
        return response

    def _json(self, response: requests.Response) -> Any:
        if not response.content:
            return {}
        try:
            return response.json()
        except ValueError as exc:
            raise AttentiveError(
                f"Attentive answered {response.status_code} with a body that is not JSON.",
                status=response.status_code,
                body=response.text[:2000],
            ) from exc

    # --- the endpoints the portal uses -------------------------------------------------------

    def me(self) -> dict:
        """``GET /v1/me``: the company and app the key belongs to (a cheap key check)."""
        body = self._json(self.request("GET", ME_PATH))
        if not isinstance(body, dict):
            raise AttentiveError("Attentive's /v1/me answer is not a JSON object.", body=str(body)[:2000])
        return body

    def post_custom_event(self, payload: dict) -> requests.Response:
        return self.request("POST", CUSTOM_EVENTS_PATH, json_body=payload)

    def post_custom_attributes(self, *, user: dict, properties: dict) -> None:
        self.request("POST", CUSTOM_ATTRIBUTES_PATH, json_body={"user": user, "properties": properties})

    def subscribe(
        self,
        *,
        user: dict,
        sign_up_source_id: str = "",
        locale: dict | None = None,
        subscription_type: str = "",
        external_identifiers: dict | None = None,
        single_opt_in: bool = False,
    ) -> dict:
        body: dict[str, Any] = {"user": user}
        if sign_up_source_id:
            body["signUpSourceId"] = sign_up_source_id
        if locale:
            body["locale"] = locale
        if subscription_type:
            body["subscriptionType"] = subscription_type
        if external_identifiers:
            body["externalIdentifiers"] = external_identifiers
        if single_opt_in:
            body["singleOptIn"] = True
        return self._json(self.request("POST", SUBSCRIPTIONS_PATH, json_body=body))

    def subscription_eligibility(self, *, phone: str = "", email: str = "") -> dict:
        params = {key: value for key, value in (("phone", phone), ("email", email)) if value}
        return self._json(self.request("GET", SUBSCRIPTIONS_PATH, params=params))

    def unsubscribe(self, *, user: dict, subscriptions: list | None = None, notification: dict | None = None) -> dict:
        body: dict[str, Any] = {"user": user}
        if subscriptions:
            body["subscriptions"] = subscriptions
        if notification:
            body["notification"] = notification
        return self._json(self.request("POST", UNSUBSCRIBE_PATH, json_body=body))

    def identify(self, **identifiers: Any) -> None:
        """``POST /v1/identity-resolution/user-identifiers`` (empty identifiers are left out)."""
        body = {key: value for key, value in identifiers.items() if value not in (None, "", [], {})}
        self.request("POST", IDENTITY_PATH, json_body=body)

    def send_text(self, *, to: str, body: str, subscription_type: str = "TRANSACTIONAL") -> dict:
        """``POST /v1/text/send`` (ref §1, "Legacy messages token"): one text to one subscriber,
        for keys of customers' custom apps given that permission. Attentive's answer, as sent."""
        payload = {"to": to, "body": body, "subscriptionType": subscription_type}
        return self._json(self.request("POST", TEXT_SEND_PATH, json_body=payload))

    # --- v2 segments (scope segments:all; 100 requests a second each) ---------------------------

    def create_segment(self, *, name: str, external_id: str = "", description: str = "") -> dict:
        """``POST /v2/segments``: an empty segment; Attentive makes up the externalId when none is given."""
        body = {"name": name, "externalId": external_id, "description": description}
        return self._json(self.request("POST", SEGMENTS_PATH, json_body={k: v for k, v in body.items() if v}))

    def add_segment_members(self, *, external_id: str, members: list[dict]) -> dict:
        """``POST /v2/bulk/segments/members``: 1 to 10,000 members, each with email, phone and/or
        clientUserId; Attentive answers 202 ``{message, batchJobId}`` and processes them later."""
        if not 1 <= len(members) <= SEGMENT_MEMBERS_MAX:
            raise ValueError(f"a bulk segment request takes 1 to {SEGMENT_MEMBERS_MAX:,} members, not {len(members):,}")
        return self._json(
            self.request("POST", SEGMENT_MEMBERS_PATH, json_body={"externalId": external_id, "members": members})
        )

    def bulk_job(self, bulk_job_id: str) -> dict:
        """``GET /v2/bulk/job/{bulkJobId}``: ``{bulkJobId, status, totalRecords, url}``."""
        from urllib.parse import quote

        return self._json(self.request("GET", BULK_JOB_PATH.format(bulk_job_id=quote(bulk_job_id, safe=""))))
