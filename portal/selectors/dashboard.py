"""The dashboard's reads: the daily rollups (``portal.rollups``) for the figures, the charts, the
top offers and stores and the conversion; the base tables for delivery health (Delivery's
``created_at`` index bounds the scan) and sync freshness (one run per resource)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from django.conf import settings
from django.db import connection
from django.db.models import OuterRef, Subquery, Sum
from django.utils import timezone

from attentive_sync.models import Delivery, DeliveryAttempt
from portal.models import DailyActivity, RollupRefresh
from portal.rollups import day_bounds
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


def top_offers(*, program: int, start: date, end: date) -> list[dict]:
    """The offers most redeemed in the range, with their names from the mirror."""
    name = Offer.objects.filter(sparkfly_id=OuterRef("key")).values("name")[:1]
    return list(
        _rollups(program, DailyActivity.Dimension.OFFER, start, end)
        .values("key")
        .annotate(redemptions=Sum("redemptions"), name=Subquery(name))
        .filter(redemptions__gt=0)
        .order_by("-redemptions", "key")[:TOP]
    )


def top_stores(*, program: int, start: date, end: date) -> list[dict]:
    """The stores with the most redemptions in the range, with names and numbers from the mirror."""
    stores = Store.objects.filter(sparkfly_id=OuterRef("key"))
    return list(
        _rollups(program, DailyActivity.Dimension.STORE, start, end)
        .values("key")
        .annotate(
            redemptions=Sum("redemptions"),
            name=Subquery(stores.values("name")[:1]),
            number=Subquery(stores.values("number")[:1]),
        )
        .order_by("-redemptions", "key")[:TOP]
    )


def offer_conversion(*, program: int, start: date, end: date) -> list[dict]:
    """The offers with the most credentials issued in the range: issued, redeemed in the same
    range, and redeemed per issued as a percentage (None when none was issued)."""
    name = Offer.objects.filter(sparkfly_id=OuterRef("key")).values("name")[:1]
    rows = list(
        _rollups(program, DailyActivity.Dimension.OFFER, start, end)
        .values("key")
        .annotate(issued=Sum("issuances"), redemptions=Sum("redemptions"), name=Subquery(name))
        .filter(issued__gt=0)
        .order_by("-issued", "key")[:TOP]
    )
    for row in rows:
        row["conversion"] = 100 * row["redemptions"] / row["issued"]
    return rows


@dataclass(frozen=True)
class DeliveryHealth:
    counts: dict[str, int]
    p50: timedelta | None
    p95: timedelta | None
    last_error: dict | None


_HEALTH = """
SELECT status, count(*),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY delivered_at - occurred_at) FILTER (WHERE status = %(delivered)s),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY delivered_at - occurred_at) FILTER (WHERE status = %(delivered)s)
FROM {table}
WHERE created_at >= %(lo)s AND created_at < %(hi)s
GROUP BY status
"""

# The errors the health panel names: of deliveries that have not got through.
_FAILING = (Delivery.Status.FAILED, Delivery.Status.DEAD, Delivery.Status.EXPIRED)


def delivery_health(*, start: date, end: date) -> DeliveryHealth:
    """Deliveries created in the range: how many in each status, the forwarding delay of the
    delivered ones (delivered_at - occurred_at), and the latest error of one not delivered."""
    lo, hi = day_bounds(start)[0], day_bounds(end)[1]
    counts = {status: 0 for status in Delivery.Status.values}
    p50 = p95 = None
    with connection.cursor() as cursor:
        cursor.execute(
            _HEALTH.format(table=Delivery._meta.db_table),
            {"delivered": Delivery.Status.DELIVERED, "lo": lo, "hi": hi},
        )
        for status, count, median, high in cursor.fetchall():
            counts[status] = count
            if status == Delivery.Status.DELIVERED:
                p50, p95 = median, high
    last_attempt = DeliveryAttempt.objects.filter(delivery=OuterRef("pk")).order_by("-started_at").values("started_at")[:1]
    last_error = (
        Delivery.objects.filter(created_at__gte=lo, created_at__lt=hi, status__in=_FAILING)
        .exclude(last_error="")
        .annotate(failed_at=Subquery(last_attempt))
        .order_by("-created_at")
        .values("pk", "status", "event_type", "last_error", "created_at", "failed_at")
        .first()
    )
    return DeliveryHealth(counts=counts, p50=p50, p95=p95, last_error=last_error)


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
