"""Logging that never writes a conversion callback's secret.

The secret travels in the callback URL's path (Sparkfly signs nothing it sends there), and
request lines reach the logs from Django's development server and ``django.request``'s
warnings about 4xx answers. This filter, on the portal's log handler, masks it. (gunicorn's
access log is configured separately: gunicorn.conf.py puts the same filter there.)

``LOG_FORMAT=json`` (the default with DEBUG off) writes each line as one JSON object
(``JsonLines``, python-json-logger); ``plain`` writes text, for a developer's terminal.
"""

from __future__ import annotations

import logging

from pythonjsonlogger.json import JsonFormatter

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


class JsonLines(JsonFormatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``,
    the ids ``portal.log_context`` bound (request_id, job_id, delivery_id, …) and any other
    field the log call passed in ``extra``. The whole line is masked once more, since extras
    (procrastinate's job arguments, an exception's text) can hold a callback URL too."""

    # Django's request logging passes the request object itself: its repr holds the URL
    # (secret and all) and nothing the request id does not already tie together.
    DROPPED_FIELDS = ("request",)

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("rename_fields", {"levelname": "level", "name": "logger"})
        kwargs.setdefault("timestamp", "time")
        super().__init__("%(levelname)s %(name)s %(message)s", *args, json_ensure_ascii=False, **kwargs)

    def process_log_record(self, log_data: dict) -> dict:
        for name in self.DROPPED_FIELDS:
            log_data.pop(name, None)
        return {"time": log_data.pop("time", None), **log_data}  # time first, as people read lines

    def jsonify_log_record(self, log_data) -> str:
        return redact(super().jsonify_log_record(log_data))
