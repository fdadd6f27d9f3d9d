"""Cells a spreadsheet will not evaluate: the guard against CSV (formula) injection, for every
CSV the portal writes (the redemptions export, Attentive's subscriber upload).

OWASP's CSV injection advice: a text cell starting with ``= + - @`` (or a tab or carriage
return) gets a leading ``'``, so Excel or Sheets show it instead of evaluating it as a formula.

It lives here, at the bottom of the dependency order (portal → sparkfly_sync → attentive_sync),
so every app's exports can import it; it knows nothing of Sparkfly or Attentive.
"""

from __future__ import annotations

from datetime import datetime

from django.utils import timezone

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: object) -> object:
    """``value`` as a CSV cell a spreadsheet will not evaluate: text that would start a
    formula is prefixed with a quote; datetimes in the program's time zone; None empty."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return timezone.localtime(value).isoformat()
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value
