"""The redemptions export's query: one row per redemption in a date range, from a server-side
cursor, so a year of redemptions streams in the memory of one chunk."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

from django.db.models import OuterRef, Subquery

from portal.rollups import day_bounds
from sparkfly_sync.models import Offer, Redemption

REDEMPTION_EXPORT_COLUMNS = (
    "redeemed_at", "received_at", "external_event_id", "credential_id", "offer_id", "offer_name", "store_id",
    "channel_id", "xid", "sf_uid", "forwarding_state", "delivery_status",
)


def redemption_export_rows(*, first_day: date, last_day: date, chunk_size: int = 2000) -> Iterator[tuple]:
    """The header, then the redemptions redeemed from ``first_day`` to ``last_day`` (both
    included, days in settings.TIME_ZONE) in the order they were redeemed. ``offer_name`` is
    empty for an offer not mirrored (yet); ``delivery_status`` for one not forwarded."""
    offer_name = Offer.objects.filter(sparkfly_id=OuterRef("offer_id")).values("name")[:1]
    rows = (
        Redemption.objects.filter(
            redeemed_at__gte=day_bounds(first_day)[0], redeemed_at__lt=day_bounds(last_day)[1]
        )
        .annotate(offer_name=Subquery(offer_name))
        .order_by("redeemed_at", "pk")
        .values_list(
            "redeemed_at", "received_at", "dedup_key", "credential_id", "offer_id", "offer_name", "store_id",
            "channel_id", "xid", "sf_uid", "state", "delivery__status",
        )
        .iterator(chunk_size=chunk_size)
    )
    yield REDEMPTION_EXPORT_COLUMNS
    yield from rows
