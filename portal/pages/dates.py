"""The dates the pages take (dashboard, deliveries, the redemptions export): which days may be
asked for, and how many at once. Outside these bounds a date is refused with a message, never
passed on to a datetime computation that would overflow (9999-12-31 + 1 day) into a 500."""

from __future__ import annotations

from datetime import date

from django import forms

# Sparkfly's records start in this century (sparkfly_sync.serializers.EARLIEST_PLAUSIBLE).
EARLIEST, LATEST = date(2000, 1, 1), date(2099, 12, 31)
MAX_RANGE_DAYS = 366


def out_of_bounds(day: date) -> str:
    """Why ``day`` cannot be asked for, or ``""``."""
    if EARLIEST <= day <= LATEST:
        return ""
    return f"Choose a date from {EARLIEST:%Y-%m-%d} to {LATEST:%Y-%m-%d}."


class PortalDateField(forms.DateField):
    widget = forms.DateInput(attrs={"type": "date"})

    def validate(self, value):
        super().validate(value)
        if value and (problem := out_of_bounds(value)):
            raise forms.ValidationError(problem)
