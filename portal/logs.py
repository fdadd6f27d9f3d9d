"""Logging that never writes a conversion callback's secret.

The secret travels in the callback URL's path (Sparkfly signs nothing it sends there), and
request lines reach the logs from Django's development server and ``django.request``'s
warnings about 4xx answers. This filter, on the portal's log handler, masks it. (gunicorn's
access log is configured separately; a deployment must use the same filter there.)
"""

from __future__ import annotations

import logging

from sparkfly_sync.redaction import MASK, redact  # noqa: F401 — MASK is part of this module's interface


class RedactCallbackSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 — a malformed log call is the handler's to report, not ours
            return True
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True
