"""Keeping a conversion callback's secret out of logs and out of the mirror.

The secret travels in the callback URL's path (Sparkfly signs nothing it sends there). Where
the URL must appear — a log line, a mirrored channel — it appears masked; whether Sparkfly
holds a given URL is told by a keyed fingerprint of it, never by the URL itself.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from django.conf import settings

_SECRET_IN_PATH = re.compile(r"(/hooks/sparkfly/channels/[^/\s?]*/)[^/\s?\"]+")
MASK = "[secret]"


def redact(text: str) -> str:
    return _SECRET_IN_PATH.sub(r"\1" + MASK, text)


def callback_fingerprint(url: str) -> str:
    """HMAC-SHA256 of the URL under SECRET_KEY ("" for no URL): equal for equal URLs, useless
    to someone holding a database dump without the key."""
    if not url:
        return ""
    return hmac.new(settings.SECRET_KEY.encode(), url.encode(), hashlib.sha256).hexdigest()
