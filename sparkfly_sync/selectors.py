"""Read-only queries of the Sparkfly mirror."""

from __future__ import annotations

from collections.abc import Iterable

from django.utils import timezone

from sparkfly_sync.models import SyncRun


def minutes_since_stalest_sync(resources: Iterable[str]) -> float | None:
    """Minutes since the least recently started of these resources' latest runs started;
    None when one of them has never been synced."""
    latest = latest_runs()
    started = [latest[name].started_at if name in latest else None for name in resources]
    if not started or None in started:
        return None
    return (timezone.now() - min(started)).total_seconds() / 60


def latest_runs() -> dict[str, SyncRun]:
    """The newest run of each resource, keyed by resource name."""
    latest: dict[str, SyncRun] = {}
    for run in SyncRun.objects.order_by("resource", "-started_at").distinct("resource"):
        latest[run.resource] = run
    return latest
