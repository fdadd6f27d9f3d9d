"""Counting webhook requests per day, so /metrics reads a few hundred rows, not a million.

Counting the kept requests at every scrape reads a month of callbacks (234 ms at a million,
benchmarks/metrics.py). Instead, every minute, the days whose requests can still change are
counted again into ``DailyCallbacks``: from the day before the newest day counted (today and
yesterday, UTC, when the job keeps up; a stretch without a worker is caught up). A request is
recorded when it arrives, so a day's count only grows, and a count is only ever raised: the
nightly retention deletes old requests, never their counts. The sums are therefore counters
over the portal's whole life, not over the retention window, and never go down.
"""

from __future__ import annotations

from datetime import timedelta

from django.db import connection, transaction
from django.db.models import Max

from portal.models import DailyCallbacks

_RECOUNT = """
INSERT INTO portal_dailycallbacks (day, kind, outcome, status_code, requests)
SELECT (received_at AT TIME ZONE 'UTC')::date, kind, outcome, status_code, count(*)
FROM sparkfly_sync_inboundrequest
WHERE %(since)s::date IS NULL OR received_at >= (%(since)s::date)::timestamp AT TIME ZONE 'UTC'
GROUP BY 1, 2, 3, 4
ON CONFLICT (day, kind, outcome, status_code)
DO UPDATE SET requests = GREATEST(portal_dailycallbacks.requests, EXCLUDED.requests)
"""


@transaction.atomic
def callback_counts_refresh() -> None:
    """Count the requests of the day before the newest counted day and every day since (every
    kept request on the first run)."""
    newest = DailyCallbacks.objects.aggregate(newest=Max("day"))["newest"]
    with connection.cursor() as cursor:
        cursor.execute(_RECOUNT, {"since": newest - timedelta(days=1) if newest else None})
