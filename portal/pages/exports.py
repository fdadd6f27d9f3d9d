"""``/redemptions/export.csv?from=YYYY-MM-DD&to=YYYY-MM-DD``: the redemptions of a date range as
CSV, streamed row by row from a server-side cursor (a year of a busy program is millions of
rows; neither the web process nor the proxy holds the whole file).

Cells are made safe for spreadsheets (``attentive_sync.spreadsheets``): a text cell that would
start a formula gets a leading ``'``. Offer names and sf_uid come from outside the portal.
"""

from __future__ import annotations

import csv
from datetime import date

from django.http import HttpResponseBadRequest, StreamingHttpResponse
from django.views import View

from attentive_sync.spreadsheets import spreadsheet_safe
from portal.pages.access import PortalPage
from portal.pages.dates import MAX_RANGE_DAYS, out_of_bounds
from portal.selectors.exports import redemption_export_rows

CHUNK_ROWS = 2000


class _Echo:
    """A file whose ``write`` hands the line back, so csv.writer can feed a stream."""

    def write(self, value: str) -> str:
        return value


def _day(params, name: str) -> date:
    text = params.get(name, "").strip()
    if not text:
        raise ValueError(f"Give the range as ?from=YYYY-MM-DD&to=YYYY-MM-DD ({name} is missing).")
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a date: write it as YYYY-MM-DD.") from None
    if problem := out_of_bounds(day):
        raise ValueError(f"{name}={text}: {problem}")
    return day


def _date_range(params) -> tuple[date, date]:
    first, last = _day(params, "from"), _day(params, "to")
    if last < first:
        raise ValueError(f"to ({last}) is before from ({first}).")
    if (last - first).days + 1 > MAX_RANGE_DAYS:
        raise ValueError(f"Export at most {MAX_RANGE_DAYS} days at a time ({(last - first).days + 1} asked).")
    return first, last


class RedemptionExportView(PortalPage, View):
    permission_required = "portal.export_redemptions"

    def get(self, request):
        try:
            first, last = _date_range(request.GET)
        except ValueError as exc:
            return HttpResponseBadRequest(str(exc), content_type="text/plain; charset=utf-8")
        writer = csv.writer(_Echo())
        rows = redemption_export_rows(first_day=first, last_day=last, chunk_size=CHUNK_ROWS)
        lines = (writer.writerow([spreadsheet_safe(value) for value in row]) for row in rows)
        response = StreamingHttpResponse(lines, content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="redemptions-{first}-to-{last}.csv"'
        return response
