"""Retention: what the nightly job deletes, in short batches, and what it keeps for good.

Deleted: webhook request records (their raw bodies), delivered deliveries with their attempts,
and admin login records after RETENTION_DAYS; dead and expired deliveries after
RETENTION_FAILED_DAYS; mirror sync runs beyond RETENTION_SYNC_RUNS per resource; expired
sessions. Finished jobs go through procrastinate's own ``remove_old_jobs`` (``portal.tasks``).

Kept for good: redemptions, notifications and issuance requests. They hold the dedup keys
(Sparkfly publishes no retry horizon, so no age is safe to forget one at), they are what the
program-manager pages and the export list, and the dashboard's rollups are counted from them.
The rollups of deliveries outlive the deliveries: the rollups are brought up to date before
anything is deleted, and their nightly rebuild leaves days past the retention window alone
(``portal.rollups.delivery_days_kept_from``).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from attentive_sync.retention import Pruned, delete_in_batches, deliveries_prune
from portal.rollups import rollups_refresh
from sparkfly_sync.inbound import prune_requests
from sparkfly_sync.sync import sync_runs_prune

logger = logging.getLogger(__name__)


def records_prune(*, now: datetime | None = None) -> list[Pruned]:
    """Delete what is past its retention (see the module's doc); returns what each step deleted."""
    now = now or timezone.now()
    rollups_refresh()  # every day about to lose rows is counted first
    pruned = [*deliveries_prune(now=now), prune_requests(now=now), sync_runs_prune(), *_logins_prune(now)]
    _sessions_prune()
    for step in pruned:
        if step.rows:
            logger.info("retention: %s", step)
    return pruned


def _logins_prune(now: datetime) -> list[Pruned]:
    """django-axes writes a row per admin login and per failed one (an attack writes many)."""
    from axes.models import AccessFailureLog, AccessLog

    if settings.RETENTION_DAYS <= 0:
        return []
    cutoff = now - timedelta(days=settings.RETENTION_DAYS)
    return [
        delete_in_batches(AccessLog.objects.filter(attempt_time__lt=cutoff), what="admin login records"),
        delete_in_batches(AccessFailureLog.objects.filter(attempt_time__lt=cutoff), what="failed admin login records"),
    ]


def _sessions_prune() -> None:
    from importlib import import_module

    # What `manage.py clearsessions` does; a no-op for engines that expire sessions themselves.
    import_module(settings.SESSION_ENGINE).SessionStore.clear_expired()
