"""Read-only queries of the Sparkfly mirror."""

from __future__ import annotations

from django.db.models import Max
from django.utils import timezone

from sparkfly_sync.models import SyncRun


def minutes_since_last_full_sync() -> float | None:
    """Minutes since the newest sync run of any resource started; None before the first."""
    newest = SyncRun.objects.aggregate(newest=Max("started_at"))["newest"]
    if newest is None:
        return None
    return (timezone.now() - newest).total_seconds() / 60


def latest_runs() -> dict[str, SyncRun]:
    """The newest run of each resource, keyed by resource name."""
    latest: dict[str, SyncRun] = {}
    for run in SyncRun.objects.order_by("resource", "-started_at").distinct("resource"):
        latest[run.resource] = run
    return latest
