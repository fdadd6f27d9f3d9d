"""Jobs of the portal itself."""

import logging

from procrastinate.contrib.django import app

from attentive_sync.jobs import MAINTENANCE_CRON, STALLED_AFTER_SECONDS

logger = logging.getLogger(__name__)


@app.task(name="portal.noop", queue="benchmark")
def noop() -> None:
    """Does nothing: `make bench` measures the job queue's own rate with it, as the reference
    for the delivery rate."""


@app.periodic(cron=MAINTENANCE_CRON, periodic_id="portal-retry-stalled-jobs")
@app.task(name="portal.retry_stalled_jobs", queue="maintenance", pass_context=True)
async def retry_stalled_jobs(context, timestamp: int) -> None:
    """Every minute: put back in the queue the jobs of workers that died mid-job (a SIGKILL, a
    lost machine). Left "doing", such a job would never finish — and a job holding a lock
    (the mirror sync, a redemption's forwarding) would block every later one with that lock."""
    job_manager = context.app.job_manager
    for job in await job_manager.get_stalled_jobs(seconds_since_heartbeat=STALLED_AFTER_SECONDS):
        await job_manager.retry_job(job)
        logger.warning("job %s (%s) of a dead worker was queued again", job.id, job.task_name)


# queueing_lock: a run waiting already is enough (runs never pile up behind a slow one);
# lock: two workers never refresh at once (the refresh also takes an advisory lock).
@app.periodic(cron="* * * * *", periodic_id="portal-refresh-rollups")
@app.task(name="portal.refresh_rollups", queue="maintenance", queueing_lock="portal-rollups", lock="portal-rollups")
def refresh_rollups(timestamp: int) -> None:
    """Every minute: recompute the dashboard's daily figures for the days whose records changed."""
    from portal.rollups import rollups_refresh

    rollups_refresh()


@app.periodic(cron="* * * * *", periodic_id="portal-count-callbacks")
@app.task(name="portal.count_callbacks", queue="maintenance", queueing_lock="portal-callback-counts")
def count_callbacks(timestamp: int) -> None:
    """Every minute: count today's and yesterday's webhook requests for /metrics (``portal.callback_counts``)."""
    from portal.callback_counts import callback_counts_refresh

    callback_counts_refresh()


@app.periodic(cron="* * * * *", periodic_id="portal-check-alerts")
@app.task(name="portal.check_alerts", queue="maintenance", queueing_lock="portal-alerts", lock="portal-alerts")
def check_alerts(timestamp: int) -> None:
    """Every minute: check the delivery alert's rules and update the banner's row (``portal.alerts``)."""
    from portal.alerts import alerts_check

    alerts_check()


@app.periodic(cron="17 3 * * *", periodic_id="portal-rebuild-rollups")
@app.task(name="portal.rebuild_rollups", queue="maintenance", queueing_lock="portal-rollups-rebuild", lock="portal-rollups")
def rebuild_rollups(timestamp: int) -> None:
    """Every night: rebuild every day, taking in enrollments and credentials mirrored after
    their member's records were counted (the minute refresh only sees changed records)."""
    from portal.rollups import rollups_refresh

    rollups_refresh(everything=True)


# After the nightly rebuild (the rollups count what is about to go); one run at a time.
@app.periodic(cron="47 3 * * *", periodic_id="portal-prune-old-records")
@app.task(name="portal.prune_old_records", queue="maintenance", queueing_lock="portal-retention", lock="portal-retention")
def prune_old_records(timestamp: int) -> None:
    """Every night: delete what is past its retention (``portal.retention``), in short batches."""
    from portal.retention import records_prune

    records_prune()


@app.periodic(cron="57 3 * * *", periodic_id="portal-remove-old-jobs")
@app.task(name="portal.remove_old_jobs", queue="maintenance", queueing_lock="portal-remove-old-jobs", pass_context=True)
async def remove_old_jobs(context, timestamp: int) -> None:
    """Every night: procrastinate's own cleanup of finished jobs (and their events): succeeded
    ones after RETENTION_DAYS, failed, cancelled and aborted ones after RETENTION_FAILED_DAYS."""
    from django.conf import settings
    from procrastinate import builtin_tasks

    if settings.RETENTION_DAYS <= 0:
        return
    await builtin_tasks.remove_old_jobs(context, max_hours=settings.RETENTION_DAYS * 24)
    await builtin_tasks.remove_old_jobs(
        context, max_hours=settings.RETENTION_FAILED_DAYS * 24,
        remove_failed=True, remove_cancelled=True, remove_aborted=True,
    )
