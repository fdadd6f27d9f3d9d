"""Read-only queries of the offer pages: the filtered list, and one offer with its channels and
its issuances and redemptions per day.

Counts come from the dashboard's rollups (``portal.rollups``, program "all", dimension "offer";
per day for the chart, the all-time totals from the monthly sums): what the dashboard shows for
the offer, as of the rollups' last refresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from django.db.models import QuerySet, Sum
from django.utils import timezone

from portal.models import DailyActivity, MonthlyActivity
from portal.selectors.dashboard import rollups_as_of
from sparkfly_sync import callbacks
from sparkfly_sync.models import ConversionEndpoint, Offer, OfferChannel
from sparkfly_sync.serializers import MAX_SPARKFLY_ID

ACTIVITY_DAYS = 90
NAME_LONGEST = 255


def offer_statuses() -> list[str]:
    """The statuses Sparkfly documents, then any other the mirror holds (a new one must still
    be filterable)."""
    documented = list(Offer.Status.values)
    held = Offer.objects.exclude(status__in=documented).exclude(status="").order_by().values_list("status", flat=True)
    return documented + sorted(set(held))


def offer_list(*, status: str = "", name: str = "") -> QuerySet[Offer]:
    """Offers by name, narrowed by exact status and by a part of the name (any case)."""
    offers = Offer.objects.select_related("merchant").defer("raw", "merchant__raw").order_by("name", "sparkfly_id")
    if status:
        offers = offers.filter(status=status)
    if name:
        offers = offers.filter(name__icontains=name)
    return offers


@dataclass
class ChannelRow:
    link: OfferChannel
    callback_status: str  # callbacks.SET / PREVIOUS_SECRET / OTHER / MISSING, or "" with no endpoint

    @property
    def callback_words(self) -> str:
        if not self.callback_status:
            return "no: the portal has no conversion endpoint for this channel yet"
        return callbacks.STATUS_WORDS[self.callback_status]


@dataclass
class Activity:
    days: list[date]
    issued: list[int]
    redeemed: list[int]

    @property
    def rows(self) -> list[tuple[date, int, int]]:
        return list(zip(self.days, self.issued, self.redeemed))

    def chart_data(self) -> dict:
        return {"days": [day.isoformat() for day in self.days], "issued": self.issued, "redeemed": self.redeemed}


@dataclass
class OfferDetail:
    offer: Offer
    channels: list[ChannelRow]
    activity: Activity
    issued_total: int
    redeemed_total: int
    as_of: datetime | None  # the rollups' last refresh; None before the first


def offer_detail(*, sparkfly_id: int, today: date | None = None) -> OfferDetail | None:
    """One offer with its channels (and whether each channel calls the portal back), and its
    issuances and redemptions per day over the last ``ACTIVITY_DAYS`` days; None when unknown."""
    if not 0 < sparkfly_id <= MAX_SPARKFLY_ID:
        return None
    offer = Offer.objects.select_related("merchant").filter(sparkfly_id=sparkfly_id).first()
    if offer is None:
        return None
    links = list(OfferChannel.objects.filter(offer_id=sparkfly_id).select_related("channel").order_by("channel_id"))
    endpoints = {
        endpoint.channel_id: endpoint
        for endpoint in ConversionEndpoint.objects.filter(channel_id__in=[link.channel_id for link in links])
    }
    channels = [
        ChannelRow(
            link,
            callbacks.callback_status(endpoints[link.channel_id], link.channel)
            if link.channel_id in endpoints and link.channel is not None
            else "",
        )
        for link in links
    ]
    today = today or timezone.localdate()
    first_day = today - timedelta(days=ACTIVITY_DAYS - 1)
    offer_rollups = {"program_id": DailyActivity.ALL_PROGRAMS, "dimension": DailyActivity.Dimension.OFFER, "key": sparkfly_id}
    per_day = {
        day: (issued, redeemed)
        for day, issued, redeemed in DailyActivity.objects.filter(**offer_rollups, day__gte=first_day, day__lte=today)
        .values_list("day", "issuances", "redemptions")
    }
    # Every month's sum: a year of history is twelve rows of this offer, not 365.
    totals = MonthlyActivity.objects.filter(**offer_rollups).aggregate(
        issued=Sum("issuances", default=0), redeemed=Sum("redemptions", default=0)
    )
    days = [first_day + timedelta(days=offset) for offset in range(ACTIVITY_DAYS)]
    return OfferDetail(
        offer=offer,
        channels=channels,
        activity=Activity(
            days=days,
            issued=[per_day.get(day, (0, 0))[0] for day in days],
            redeemed=[per_day.get(day, (0, 0))[1] for day in days],
        ),
        issued_total=totals["issued"],
        redeemed_total=totals["redeemed"],
        as_of=rollups_as_of(),
    )


