"""Read-only queries of the Sparkfly mirror."""

from __future__ import annotations

from collections.abc import Iterable

from django.utils import timezone

from sparkfly_sync.models import SyncRun


def minutes_since_stalest_sync(resources: Iterable[str]) -> float | None:
    """Minutes since the least recently active of these resources' latest runs last did
    anything (committed a page, finished, failed); None when one was never synced.

    Activity, not start: a failing run is retried an interval after its last failure, not
    every minute, and a run whose process died goes stale and gets resumed."""
    latest = latest_runs()
    touched = [latest[name].updated_at if name in latest else None for name in resources]
    if not touched or None in touched:
        return None
    return (timezone.now() - min(touched)).total_seconds() / 60


def latest_runs() -> dict[str, SyncRun]:
    """The newest run of each resource, keyed by resource name."""
    latest: dict[str, SyncRun] = {}
    for run in SyncRun.objects.order_by("resource", "-started_at").distinct("resource"):
        latest[run.resource] = run
    return latest
