"""The dashboard: a date range and a program's redemptions, issuances and points redeemed (figures
and charts per day), top offers and stores, issuance→redemption conversion per offer, delivery
health and sync freshness.

The figures come from the daily rollups (``portal.rollups``), refreshed every minute: the page
says as of when. The chart data travels in a ``json_script`` element drawn by
``static/portal/dashboard.js``, so the page runs no inline script.
"""

from __future__ import annotations

from datetime import date, timedelta

from django import forms
from django.core.exceptions import NON_FIELD_ERRORS
from django.conf import settings
from django.utils import timezone
from django.views.generic import TemplateView

from attentive_sync.models import Delivery
from portal.models import DailyActivity
from portal.pages.access import PortalPage
from portal.pages.dates import MAX_RANGE_DAYS, PortalDateField
from portal.selectors import dashboard as selectors

DEFAULT_DAYS = 30
HEALTH_ORDER = ("delivered", "pending", "failed", "dead", "expired")


def default_range() -> tuple[date, date]:
    """The last DEFAULT_DAYS days, today included, in the portal's time zone."""
    today = timezone.localdate()
    return today - timedelta(days=DEFAULT_DAYS - 1), today


def duration(value: timedelta | None) -> str:
    """A delay as people read it: 850 ms, 12.3 s, 4 min 05 s, 2 h 10 min."""
    if value is None:
        return ""
    seconds = value.total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


class DashboardForm(forms.Form):
    def __init__(self, *args, programs: list[tuple[int, str]], **kwargs):
        super().__init__(*args, **kwargs)
        # Added here: the query string says ``from``, a Python keyword.
        self.fields["from"] = PortalDateField(label="From", required=False)
        self.fields["to"] = PortalDateField(label="To", required=False)
        self.fields["program"] = forms.TypedChoiceField(
            label="Program", required=False, coerce=int, empty_value=DailyActivity.ALL_PROGRAMS,
            choices=[("", "All programs"), *programs],
        )

    def clean(self):
        cleaned = super().clean()
        start, end = cleaned.get("from"), cleaned.get("to")
        if start and end:
            if start > end:
                raise forms.ValidationError("The start date is after the end date.")
            if (end - start).days + 1 > MAX_RANGE_DAYS:
                raise forms.ValidationError(f"A range is at most {MAX_RANGE_DAYS} days.")
        return cleaned

    def choice(self) -> tuple[date, date, int]:
        """The range and program to show: the valid choice, else the default range (and every
        program when the program is the invalid part); the errors are shown on the page."""
        start, end = default_range()
        if not self.is_bound:
            return start, end, DailyActivity.ALL_PROGRAMS
        self.is_valid()
        data = self.cleaned_data
        program = data.get("program") if "program" not in self.errors else None
        if program is None:
            program = DailyActivity.ALL_PROGRAMS
        if not self.errors.keys() & {"from", "to", NON_FIELD_ERRORS}:
            # One end given: the other follows from the default length.
            given_start, given_end = data.get("from"), data.get("to")
            if given_start and given_end:
                start, end = given_start, given_end
            elif given_start:
                start, end = given_start, given_start + timedelta(days=DEFAULT_DAYS - 1)
            elif given_end:
                start, end = given_end - timedelta(days=DEFAULT_DAYS - 1), given_end
        return start, end, program


class DashboardView(PortalPage, TemplateView):
    template_name = "portal/dashboard.html"

    def get_context_data(self, **kwargs):
        programs = selectors.program_choices()
        default_start, default_end = default_range()
        form = DashboardForm(self.request.GET or None, programs=programs, initial={"from": default_start, "to": default_end})
        start, end, program = form.choice()
        period = {"program": program, "start": start, "end": end}
        health = selectors.delivery_health(start=start, end=end)
        data = selectors.daily_series(**period)
        freshness = selectors.sync_freshness()
        top_offers, conversion = selectors.top_offers_and_conversion(**period)
        if health.last_error:
            health.last_error["when"] = health.last_error["failed_at"] or health.last_error["created_at"]
        return super().get_context_data(
            **kwargs,
            form=form,
            start=start,
            end=end,
            time_zone=settings.TIME_ZONE,
            program_name=dict(programs).get(program, "All programs"),
            as_of=selectors.rollups_as_of(),
            data=data,
            days=zip(data["days"], data["redemptions"], data["issuances"], data["points_redeemed"]),
            totals={name: sum(data[name]) for name in ("redemptions", "issuances", "points_redeemed")},
            top_offers=top_offers,
            top_stores=selectors.top_stores(**period),
            conversion=conversion,
            health=health,
            p50=duration(health.p50),
            p95=duration(health.p95),
            health_rows=[(status, Delivery.Status(status).label, health.counts[status]) for status in HEALTH_ORDER],
            freshness=freshness,
            stale_count=sum(row.stale for row in freshness),
            sync_interval=settings.SPARKFLY_SYNC_INTERVAL_MINUTES,
            stale_after=2 * settings.SPARKFLY_SYNC_INTERVAL_MINUTES,
        )
