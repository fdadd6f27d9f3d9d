"""Fixtures that serve the Attentive sandbox over real loopback HTTP, and Attentive's v1 spec.

Each sandbox runs in a background thread on a free port and is shut down when the test ends.
The objects yielded are ``attentive_sync.sandbox.SandboxServer``: ``.base_url`` to talk to,
``.sandbox`` for the in-process helpers (what was received, faults, request log, reset).

When a test ends, every body its sandboxes accepted is validated against the request schema of
Attentive's published v1 spec: whatever a test (or the portal code under test) sends, the
sandbox must never have accepted a body the spec forbids.
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from openapi_core import Config, OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIResponse
from openapi_core.datatypes import RequestParameters
from werkzeug.datastructures import Headers, ImmutableMultiDict

from attentive_sync.client import (
    CUSTOM_ATTRIBUTES_PATH,
    CUSTOM_EVENTS_PATH,
    IDENTITY_PATH,
    SUBSCRIPTIONS_PATH,
    UNSUBSCRIBE_PATH,
)
from attentive_sync.models import AttentiveSettings
from attentive_sync.sandbox import AttentiveSandbox, serve_in_thread

# Attentive's published v1 spec, [OAS1] in reference/attentive-api.md, vendored verbatim.
SPEC_PATH = Path(__file__).resolve().parents[1] / "fixtures" / "openapi" / "attentive-v1.json"
SPEC_HOST = "https://api.attentivemobile.com"  # the spec's server is SPEC_HOST + "/v1"
# The operation that accepted each kind of body the sandbox records.
RECEIVED_OPERATIONS = {
    "events": CUSTOM_EVENTS_PATH,
    "attributes": CUSTOM_ATTRIBUTES_PATH,
    "subscriptions": SUBSCRIPTIONS_PATH,
    "unsubscriptions": UNSUBSCRIBE_PATH,
    "identities": IDENTITY_PATH,
}
# (spec path, method, responses added, why): the only patches of the loaded spec. They add
# statuses; no schema is changed.
ERRATA: list[tuple[str, str, dict, str]] = [
    ("/identity-resolution/user-identifiers", "post", {"401": {"description": "Unauthorized"}},
     "the operation lists only 400 and 429, but the document's global bearerAuth covers it and "
     "ref §1 says every request sends the Bearer key: a missing or wrong one is a 401 as everywhere"),
]


@dataclass
class SpecRequest:
    """A request as openapi-core sees it: on the spec's host, same path, query and body."""

    host_url: str
    path: str
    method: str
    parameters: RequestParameters
    content_type: str
    body: bytes | None

    @classmethod
    def of(cls, method: str, path: str, *, body: bytes | None = None, query: str = "", headers: dict | None = None) -> SpecRequest:
        return cls(
            host_url=SPEC_HOST,
            path=path,
            method=method.lower(),
            parameters=RequestParameters(
                query=ImmutableMultiDict(parse_qs(query)),
                header=Headers(headers or {"Authorization": "Bearer sandbox"}),
                cookie=ImmutableMultiDict(),
            ),
            content_type="application/json",
            body=body,
        )

    @classmethod
    def sent(cls, response: requests.Response) -> SpecRequest:
        """The request ``response`` answered, as it went over the wire."""
        request = response.request
        url = urlsplit(request.url)
        body = request.body.encode() if isinstance(request.body, str) else request.body
        return cls.of(request.method, url.path, body=body, query=url.query, headers=dict(request.headers))


class AttentiveSpec:
    """openapi-core over Attentive's spec. The ``*_problem`` methods return what the spec
    objects to (None if nothing), so a test can assert either way."""

    def __init__(self, spec: dict) -> None:
        self.spec = spec
        # The whole document's recursive schemas (not the ones used here) overflow
        # openapi-spec-validator's recursion, so the document itself is not validated.
        self._openapi = OpenAPI.from_dict(copy.deepcopy(spec), config=Config(spec_validator_cls=None))

    def body_problem(self, method: str, path: str, body: dict) -> str | None:
        """What the spec finds wrong with sending ``body`` (with a valid key) to ``path``."""
        return self._problem(self._openapi.validate_request, SpecRequest.of(method, path, body=json.dumps(body).encode()))

    def sent_request_problem(self, response: requests.Response) -> str | None:
        """What the spec finds wrong with the request ``response`` answered."""
        return self._problem(self._openapi.validate_request, SpecRequest.sent(response))

    def response_problem(self, response: requests.Response) -> str | None:
        return self._problem(self._openapi.validate_response, SpecRequest.sent(response), RequestsOpenAPIResponse(response))

    @staticmethod
    def _problem(validate, *args) -> str | None:
        with warnings.catch_warnings():
            # The operations' only own security scheme is OAuth 2, which openapi-core does not
            # check (it warns); the global bearerAuth it does check.
            warnings.filterwarnings("ignore", "Unsupported scheme type", UserWarning)
            try:
                validate(*args)
            except Exception as exc:  # openapi-core's errors have no common useful base
                # A body's schema errors hang off the cause; their .message is the short form.
                reasons = [error.message for error in getattr(exc.__cause__, "schema_errors", ())]
                return f"{exc.__class__.__name__}: {'; '.join(reasons)}" if reasons else f"{exc.__class__.__name__}: {exc}"
        return None


def _load_spec() -> dict:
    spec = json.loads(SPEC_PATH.read_text())
    for path, method, responses, _why in ERRATA:
        spec["paths"][path][method]["responses"].update(responses)
    return spec


@pytest.fixture(scope="session")
def attentive_spec() -> AttentiveSpec:
    return AttentiveSpec(_load_spec())


@pytest.fixture
def attentive_sandbox_factory(attentive_spec):
    """``start(**kwargs)`` serves a fresh ``AttentiveSandbox(**kwargs)``."""
    servers = []

    def start(**kwargs):
        server = serve_in_thread(AttentiveSandbox(**kwargs))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
    forbidden = [
        f"{kind} #{n}: {problem}"
        for server in servers
        for kind, path in RECEIVED_OPERATIONS.items()
        for n, entry in enumerate(server.sandbox.received()[kind])
        if (problem := attentive_spec.body_problem("post", path, entry["body"]))
    ]
    assert not forbidden, "the sandbox accepted bodies Attentive's spec forbids:\n" + "\n".join(forbidden)


@pytest.fixture
def attentive_sandbox(attentive_sandbox_factory):
    """A fresh sandbox with the defaults: key "sandbox", 150 requests/s, no faults, no latency."""
    return attentive_sandbox_factory()


@pytest.fixture
def salts(settings):
    """``salts([...])`` switches FIELD_ENCRYPTION_SALTS (settings.SALT_KEY). The encrypted field
    derives its keys once per process (cached properties on the field instance): drop them so
    the next read or write derives them from the new salts, and again afterwards."""
    field = AttentiveSettings._meta.get_field("api_key")

    def forget_derived_keys():
        for cached in ("keys", "f"):
            field.__dict__.pop(cached, None)

    def use(values: list[str]) -> None:
        settings.SALT_KEY = values
        forget_derived_keys()

    yield use
    forget_derived_keys()  # the settings fixture then restores SALT_KEY; the next use derives anew
