"""One error hierarchy for Attentive's API.

Attentive's error bodies are loosely specified: a JSON object (``{"error": {"id", "message"}}``
or ``{"error": "…"}`` or ``{"message": "…"}``), a bare JSON string, an empty body or an HTML page
all happen. Every error carries the status, Attentive's own message when it gave one, and the
``x-ratelimit-limit`` / ``x-ratelimit-remaining`` headers.
"""

from __future__ import annotations

from typing import Any

import requests


class AttentiveError(Exception):
    """Base of every Attentive failure; ``str()`` is a sentence a person can act on."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        attentive_message: str | None = None,
        ratelimit_limit: int | None = None,
        ratelimit_remaining: int | None = None,
        body: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.attentive_message = attentive_message
        self.ratelimit_limit = ratelimit_limit
        self.ratelimit_remaining = ratelimit_remaining
        self.body = body

    def __str__(self) -> str:
        return self.message


class AttentiveHostRefused(AttentiveError):
    """The API base URL is not one the key may be sent to (the outbound allowlist): nothing was sent."""


class AttentiveConnectionError(AttentiveError):
    """Attentive could not be reached, or the connection dropped before an answer."""


class AttentiveTimeout(AttentiveConnectionError):
    """No complete answer within the connect or total timeout."""


class AttentiveAPIError(AttentiveError):
    """Attentive answered with an error status."""


class AttentiveRedirect(AttentiveAPIError):
    """3xx: redirects are never followed (the key must not be sent anywhere but Attentive)."""


class AttentiveAuthError(AttentiveAPIError):
    """401/403: the API key is wrong, revoked, or lacks the permission for this API."""


class AttentiveRequestError(AttentiveAPIError):
    """Another 4xx: Attentive refused the request's content."""


class AttentiveRateLimited(AttentiveAPIError):
    """429: over Attentive's per-second budget for this token and endpoint."""


class AttentiveServerError(AttentiveAPIError):
    """5xx: Attentive failed."""


def _error_class(status: int) -> type[AttentiveAPIError]:
    if 300 <= status < 400:
        return AttentiveRedirect
    if status in (401, 403):
        return AttentiveAuthError
    if status == 429:
        return AttentiveRateLimited
    if status >= 500:
        return AttentiveServerError
    return AttentiveRequestError


def attentive_message(body: Any) -> str | None:
    """Attentive's message from any of its error body shapes."""
    if isinstance(body, str):
        return body.strip() or None
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, dict):
        error = error.get("message") or error.get("error")
    for candidate in (error, body.get("message"), body.get("errorMessage")):
        if isinstance(candidate, str) and candidate.strip():
            return candidate.strip()
    return None


def ratelimit_headers(response: requests.Response) -> tuple[int | None, int | None]:
    def number(name: str) -> int | None:
        try:
            return int(response.headers[name])
        except (KeyError, ValueError):
            return None

    return number("x-ratelimit-limit"), number("x-ratelimit-remaining")


def error_for_response(response: requests.Response) -> AttentiveAPIError:
    text = response.text or ""
    try:
        message = attentive_message(response.json())
    except ValueError:
        message = None
    if message:
        detail = message
    elif 300 <= response.status_code < 400:
        detail = f"a redirect to {response.headers.get('Location', 'nowhere')!r}, which is not followed"
    elif "html" in response.headers.get("Content-Type", "").lower() or text.lstrip().startswith("<"):
        detail = "an HTML page instead of JSON"
    elif text.strip():
        detail = " ".join(text.split())[:200]
    else:
        detail = "no error message"
    path = response.url.split("?", 1)[0] if response.url else "?"
    method = response.request.method if response.request is not None else "?"
    limit, remaining = ratelimit_headers(response)
    return _error_class(response.status_code)(
        f"Attentive answered {response.status_code} to {method} {path}: {detail}",
        status=response.status_code,
        attentive_message=message,
        ratelimit_limit=limit,
        ratelimit_remaining=remaining,
        body=text[:2000],
    )
