"""HTTP client of Attentive's REST API (v1).

Every path the portal calls is named once, here; the sandbox (``attentive_sync/sandbox.py``)
serves the same constants.
"""

from __future__ import annotations

PRODUCTION_URL = "https://api.attentivemobile.com"
ME_PATH = "/v1/me"
CUSTOM_EVENTS_PATH = "/v1/events/custom"
CUSTOM_ATTRIBUTES_PATH = "/v1/attributes/custom"
SUBSCRIPTIONS_PATH = "/v1/subscriptions"
UNSUBSCRIBE_PATH = "/v1/subscriptions/unsubscribe"
IDENTITY_PATH = "/v1/identity-resolution/user-identifiers"
