"""The dashboard's reads: the rollups (``portal.rollups``) for the figures, the charts, the top
offers and stores (whole months from the monthly rollups, the days around them from the daily
ones), the conversion and the delivery health; the base tables for the last
delivery error (few deliveries are failing) and sync freshness (one run per resource)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from django.conf import settings
from django.db import connection
from django.db.models import OuterRef, Subquery, Sum
from django.utils import timezone

from attentive_sync.models import Delivery, DeliveryAttempt
from portal.models import DailyActivity, DailyDeliveries, MonthlyActivity, RollupRefresh
from portal.rollups import day_bounds, range_grains
from sparkfly_sync.models import LoyaltyProgram, Offer, Store, SyncRun
from sparkfly_sync.selectors import latest_runs
from sparkfly_sync.sync import RESOURCES

TOP = 10


def program_choices() -> list[tuple[int, str]]:
    return [(program.sparkfly_id, str(program)) for program in LoyaltyProgram.objects.only("sparkfly_id", "name")]


def rollups_as_of() -> datetime | None:
    return RollupRefresh.objects.values_list("refreshed_at", flat=True).first()


def _rollups(program: int, dimension: str, start: date, end: date):
    return DailyActivity.objects.filter(program_id=program, dimension=dimension, day__gte=start, day__lte=end)


def daily_series(*, program: int, start: date, end: date) -> dict:
    """Per day of the range (every day, zero when nothing happened): the chart data."""
    rows = {
        day: (redemptions, issuances, points)
        for day, redemptions, issuances, points in _rollups(program, DailyActivity.Dimension.TOTAL, start, end)
        .values_list("day", "redemptions", "issuances", "points_redeemed")
    }
    days = [start + timedelta(days=offset) for offset in range((end - start).days + 1)]
    series = [rows.get(day, (0, 0, 0)) for day in days]
    return {
        "days": [day.isoformat() for day in days],
        "redemptions": [row[0] for row in series],
        "issuances": [row[1] for row in series],
        "points_redeemed": [row[2] for row in series],
    }


def _summed(program: int, dimension: str, start: date, end: date, *, top: bool = False) -> list[dict]:
    """Redemptions and issuances per key of ``dimension`` over the range, in one statement (one
    snapshot: a refresh commits days and months together): whole months from the monthly
    rollups, the days around them from the daily ones. ``top``: the TOP most redeemed only."""
    grains = range_grains(start, end)
    parts = [(DailyActivity._meta.db_table, "day", first, last) for first, last in grains.days]
    if grains.months:
        parts.append((MonthlyActivity._meta.db_table, "month", *grains.months))
    union = " UNION ALL ".join(
        f"SELECT key, redemptions, issuances FROM {table}"
        f" WHERE program_id = %s AND dimension = %s AND {column} >= %s AND {column} <= %s"
        for table, column, _, _ in parts
    )
    limit = f" HAVING sum(redemptions) > 0 ORDER BY 2 DESC, key LIMIT {TOP}" if top else ""
    params = [value for _, _, first, last in parts for value in (program, dimension, first, last)]
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT key, sum(redemptions), sum(issuances) FROM ({union}) AS parts GROUP BY key{limit}", params)
        return [{"key": key, "redemptions": int(redeemed), "issued": int(issued)} for key, redeemed, issued in cursor.fetchall()]


def _top(rows: list[dict], by: str) -> list[dict]:
    """The TOP rows by ``by`` (more than zero), ties by key."""
    return sorted((row for row in rows if row[by] > 0), key=lambda row: (-row[by], row["key"]))[:TOP]


def top_offers_and_conversion(*, program: int, start: date, end: date) -> tuple[list[dict], list[dict]]:
    """The offers most redeemed in the range; and the offers with the most credentials issued
    in the range, with their redemptions in the same range and redeemed per issued as a
    percentage. Both from one sum of every offer (a few hundred rows); names from the mirror,
    in one query for both lists."""
    offers = _summed(program, DailyActivity.Dimension.OFFER, start, end)
    top = _top(offers, "redemptions")
    conversion = _top(offers, "issued")
    names = dict(Offer.objects.filter(sparkfly_id__in={row["key"] for row in top + conversion}).values_list("sparkfly_id", "name"))
    for row in top + conversion:
        row["name"] = names.get(row["key"], "")
    for row in conversion:
        row["conversion"] = 100 * row["redemptions"] / row["issued"]
    return top, conversion


def top_stores(*, program: int, start: date, end: date) -> list[dict]:
    """The stores with the most redemptions in the range, with names and numbers from the mirror."""
    top = _summed(program, DailyActivity.Dimension.STORE, start, end, top=True)
    stores = {store.sparkfly_id: store for store in Store.objects.filter(sparkfly_id__in=[row["key"] for row in top])}
    for row in top:
        store = stores.get(row["key"])
        row["name"], row["number"] = (store.name, store.number) if store else ("", "")
    return top


@dataclass(frozen=True)
class DeliveryHealth:
    counts: dict[str, int]
    p50: timedelta | None  # within 5% (DailyDeliveries.DELAY_RATIO)
    p95: timedelta | None
    last_error: dict | None


# The errors the health panel names: of deliveries that have not got through.
_FAILING = (Delivery.Status.FAILED, Delivery.Status.DEAD, Delivery.Status.EXPIRED)


def delivery_health(*, start: date, end: date) -> DeliveryHealth:
    """Deliveries created in the range (from the rollups): how many in each status, the
    forwarding delay of the delivered ones (delivered_at - occurred_at) at the median and the
    95th percentile; and, from Delivery itself, the latest error of one not delivered (the
    status index finds the few failing ones)."""
    counts = {status: 0 for status in Delivery.Status.values}
    delays: dict[int, int] = {}
    rows = (
        DailyDeliveries.objects.filter(day__gte=start, day__lte=end)
        .values("status", "delay_bucket")
        .annotate(deliveries=Sum("deliveries"))
    )
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + row["deliveries"]
        if row["delay_bucket"] is not None:
            delays[row["delay_bucket"]] = row["deliveries"]
    lo, hi = day_bounds(start)[0], day_bounds(end)[1]
    last_attempt = DeliveryAttempt.objects.filter(delivery=OuterRef("pk")).order_by("-started_at").values("started_at")[:1]
    last_error = (
        Delivery.objects.filter(created_at__gte=lo, created_at__lt=hi, status__in=_FAILING)
        .exclude(last_error="")
        .annotate(failed_at=Subquery(last_attempt))
        .order_by("-created_at")
        .values("pk", "status", "event_type", "last_error", "created_at", "failed_at")
        .first()
    )
    return DeliveryHealth(counts, _percentile(delays, 0.5), _percentile(delays, 0.95), last_error)


def _percentile(buckets: dict[int, int], fraction: float) -> timedelta | None:
    """The delay at ``fraction`` of the delivered ones (nearest rank), as the middle of its
    bucket: within half a bucket (5%) of the true value."""
    total = sum(buckets.values())
    if not total:
        return None
    rank = max(1, math.ceil(fraction * total))
    seen = 0
    for bucket in sorted(buckets):
        seen += buckets[bucket]
        if seen >= rank:
            break
    return timedelta(milliseconds=DailyDeliveries.DELAY_RATIO ** (bucket + 0.5))


@dataclass(frozen=True)
class Freshness:
    resource: str
    last_success: datetime | None
    age: timedelta | None
    latest_status: str | None
    stale: bool


def sync_freshness() -> list[Freshness]:
    """Per mirrored resource: its last successful sync and its age, stale when older than
    twice SPARKFLY_SYNC_INTERVAL_MINUTES or never (no threshold when the periodic sync is off)."""
    interval = settings.SPARKFLY_SYNC_INTERVAL_MINUTES
    now = timezone.now()
    succeeded = {
        run.resource: run
        for run in SyncRun.objects.filter(status=SyncRun.Status.SUCCEEDED)
        .order_by("resource", "-started_at")
        .distinct("resource")
    }
    latest = latest_runs()
    rows = []
    for resource in RESOURCES:
        run = succeeded.get(resource)
        last_success = run and (run.finished_at or run.updated_at)
        age = now - last_success if last_success else None
        stale = age is None or (interval > 0 and age > timedelta(minutes=2 * interval))
        current = latest.get(resource)
        rows.append(Freshness(resource, last_success, age, current.status if current else None, stale))
    return rows
