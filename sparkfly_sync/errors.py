"""One error hierarchy for everything that can go wrong talking to Sparkfly.

Each error carries the HTTP status and Sparkfly's own message, whichever of its three error
shapes it used: ``{"error": "…"}``, ``{"trace": "…", "error": "…"}``, or a resource envelope
with an ``errors`` map (``{"member": {…}, "errors": {"identifier": "can't be blank"}}``).
"""

from __future__ import annotations

from typing import Any

import requests


class SparkflyError(Exception):
    """Base of every Sparkfly failure; ``str()`` is a sentence a person can act on."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        sparkfly_message: str | None = None,
        errors: dict[str, str] | None = None,
        trace: str | None = None,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.sparkfly_message = sparkfly_message
        self.errors = errors or {}
        self.trace = trace
        self.method = method
        self.url = url

    def __str__(self) -> str:
        return self.message


class SparkflyHostRefused(SparkflyError):
    """SPARKFLY_API_URL is not a host the credentials may be sent to (the outbound allowlist): nothing was sent."""


class SparkflyConnectionError(SparkflyError):
    """Sparkfly could not be reached, or did not answer in time, after every allowed try."""

    @classmethod
    def from_exception(
        cls, exc: requests.RequestException, *, method: str, url: str, attempts: int, idempotent: bool
    ):
        error_class = SparkflyTimeout if isinstance(exc, requests.Timeout) else cls
        what = "did not answer in time" if error_class is SparkflyTimeout else "could not be reached"
        tries = f" after {attempts} tries" if attempts > 1 else ""
        advice = (
            "the request can be retried."
            if idempotent
            else "Sparkfly may still have done it: check before sending it again."
        )
        return error_class(
            f"Sparkfly {what}{tries}: {method} {url} ({exc.__class__.__name__}). "
            f"Check SPARKFLY_API_URL and the network; {advice}",
            method=method,
            url=url,
        )


class SparkflyTimeout(SparkflyConnectionError):
    """The connect or read timeout ran out."""


class SparkflyResponseError(SparkflyError):
    """Sparkfly answered, but not with what its API promises (not JSON, wrong shape)."""


class SparkflyAPIError(SparkflyError):
    """Sparkfly answered with an error status."""


class SparkflyAuthError(SparkflyAPIError):
    """401: bad identity/key, or a token Sparkfly no longer accepts even after renewal."""


class SparkflyNotFound(SparkflyAPIError):
    """404: the resource does not exist (e.g. ``members/search`` for an unknown identifier)."""


class SparkflyValidationError(SparkflyAPIError):
    """400/422: Sparkfly refused the request's content; ``errors`` maps fields to messages."""


class SparkflyRateLimited(SparkflyAPIError):
    """429: too many requests, still refused after the retries allowed."""


class SparkflyServerError(SparkflyAPIError):
    """5xx: Sparkfly failed; idempotent requests were already retried."""


def _error_class(status: int) -> type[SparkflyAPIError]:
    if status == 401:
        return SparkflyAuthError
    if status == 404:
        return SparkflyNotFound
    if status in (400, 422):
        return SparkflyValidationError
    if status == 429:
        return SparkflyRateLimited
    if status >= 500:
        return SparkflyServerError
    return SparkflyAPIError


def parse_error_body(body: Any) -> tuple[str | None, dict[str, str], str | None]:
    """Sparkfly's message, field errors and trace id from any of its error shapes."""
    if not isinstance(body, dict):
        return None, {}, None
    field_errors: dict[str, str] = {}
    raw_errors = body.get("errors")
    if isinstance(raw_errors, dict):
        for field_name, value in raw_errors.items():
            text = "; ".join(map(str, value)) if isinstance(value, list) else str(value)
            if text:
                field_errors[str(field_name)] = text
    parts = [str(body[key]) for key in ("error", "message") if isinstance(body.get(key), str | int) and body[key]]
    if not parts and field_errors:
        parts = list(field_errors.values())
    message = "; ".join(parts) or None
    trace = body.get("trace") if isinstance(body.get("trace"), str) else None
    return message, field_errors, trace


def error_for_response(response: requests.Response) -> SparkflyAPIError:
    """The typed error for a 4xx/5xx response, with Sparkfly's own words when it gave any."""
    method = response.request.method if response.request is not None else None
    try:
        body = response.json()
    except ValueError:
        body = None
    sparkfly_message, field_errors, trace = parse_error_body(body)
    if sparkfly_message:
        detail = sparkfly_message
    elif 300 <= response.status_code < 400:
        # Never followed: the identity, key and token must go to Sparkfly's host only.
        detail = f"a redirect to {response.headers.get('Location', 'nowhere')!r}, which is not followed"
    elif "html" in response.headers.get("Content-Type", "").lower() or response.text.lstrip().startswith("<"):
        detail = "an HTML error page instead of JSON"
    elif response.text.strip():
        detail = f"a body that is not Sparkfly's JSON error: {' '.join(response.text.split())[:200]}"
    else:
        detail = "no error message"
    path = response.url.split("?", 1)[0] if response.url else "?"
    message = f"Sparkfly answered {response.status_code} to {method} {path}: {detail}"
    if trace:
        message += f" (trace {trace})"
    return _error_class(response.status_code)(
        message,
        status=response.status_code,
        sparkfly_message=sparkfly_message,
        errors=field_errors,
        trace=trace,
        method=method,
        url=response.url,
    )
