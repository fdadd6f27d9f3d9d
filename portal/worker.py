"""The worker process (the Procfile's ``worker``): procrastinate's worker, started again in the
same process when it stops because the database went away, instead of exiting.

procrastinate 3.10's worker does not survive losing PostgreSQL: its listener, heartbeat and
job fetching fail, it shuts down and ``manage.py procrastinate worker`` exits 1 (measured: 30 s
after a fast shutdown of the server, and it stays down when the server is back). Here the
process waits for the database to answer and starts a new worker, and puts back in the queue
the jobs its previous worker held: that worker has finished or abandoned each of them (its
shutdown waits for running jobs), so none runs twice at once, and nothing waits for the
stalled-job retry. Any other failure still ends the process, with its traceback.

Jobs of a worker that died outright (SIGKILL, a lost machine) are the stalled-job retry's
(``portal.tasks.retry_stalled_jobs``): its heartbeat stops, and after
``WORKER_STALLED_AFTER_SECONDS`` its jobs are queued again.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import psycopg
from django.conf import settings
from procrastinate import exceptions
from procrastinate.psycopg_connector import PsycopgConnector
from procrastinate.contrib.django import app
from procrastinate.contrib.django.settings import settings as procrastinate_settings
from procrastinate.contrib.django.utils import connector_params

logger = logging.getLogger(__name__)

# Waits between tries to reach the database again: short first (a restart takes seconds), then
# capped so a long outage costs one connection attempt every few seconds.
RECONNECT_FIRST_WAIT = 0.5
RECONNECT_MAX_WAIT = 5.0


def worker_options(*, concurrency: int, queues: list[str] | None) -> dict:
    """procrastinate's worker options, the heartbeat paced by ``WORKER_STALLED_AFTER_SECONDS``
    (a sixth of it: procrastinate's 10 s at the default 60 s)."""
    stalled_after = settings.WORKER_STALLED_AFTER_SECONDS
    return {
        "concurrency": concurrency,
        "queues": queues,
        "update_heartbeat_interval": stalled_after / 6,
        # At start a worker forgets workers silent this long (their jobs stay for the retry).
        "stalled_worker_timeout": stalled_after / 2,
        "install_signal_handlers": False,  # ours stop the current worker and the restarts
    }


def run(*, concurrency: int, queues: list[str] | None = None) -> None:
    """Run workers until SIGINT or SIGTERM, a new one whenever the database was lost."""
    # The connector `manage.py procrastinate worker` uses (get_worker_connector), its pool's
    # wait for a connection set to half the stalled time: 30 s (procrastinate's) by default,
    # so a worker that cannot reach the database for that long gives up and starts again.
    connector = PsycopgConnector(
        kwargs=connector_params(procrastinate_settings.DATABASE_ALIAS),
        timeout=settings.WORKER_STALLED_AFTER_SECONDS / 2,
    )
    with app.replace_connector(connector):
        asyncio.run(_supervise(worker_options(concurrency=concurrency, queues=queues)))


async def _supervise(options: dict) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    lost_worker_id: int | None = None
    while not stopping.is_set():
        worker = app._worker(**options)  # the object app.run_worker_async builds, kept for its id
        running = asyncio.create_task(_run_once(worker, lost_worker_id))
        stop_requested = asyncio.create_task(stopping.wait())
        await asyncio.wait({running, stop_requested}, return_when=asyncio.FIRST_COMPLETED)
        stop_requested.cancel()
        if stopping.is_set():
            running.cancel()  # procrastinate's graceful stop: running jobs finish first
            await asyncio.gather(running, return_exceptions=True)
            return
        # Nobody asked it to stop: a side task (listener, heartbeat) or the job fetching failed.
        # When the database came back within the pool's wait, its shutdown even succeeded and
        # it returned without an error (its jobs, unregistered, are the stalled-job retry's).
        error = running.exception()
        if error is not None and not _database_lost(error):
            raise error
        if worker.worker_id is not None:
            lost_worker_id = worker.worker_id
        reason = _first_line(error) if error else "it stopped after a failure of the database"
        logger.error("the worker lost the database (%s); starting a new one once it answers", reason)
        await _wait_for_database(stopping)


async def _run_once(worker, lost_worker_id: int | None) -> None:
    async with app.open_async():
        if lost_worker_id is not None:
            await _requeue_jobs_of(lost_worker_id)
        await worker.run()


async def _requeue_jobs_of(worker_id: int) -> None:
    """Queue again the jobs a lost worker of this process left "doing", and forget the worker."""
    rows = await app.connector.execute_query_all_async(
        "SELECT id FROM procrastinate_jobs WHERE status = 'doing' AND worker_id = %(worker_id)s",
        worker_id=worker_id,
    )
    from django.utils import timezone

    for row in rows:
        try:
            await app.job_manager.retry_job_by_id_async(row["id"], retry_at=timezone.now())
        except exceptions.ConnectorException:
            logger.warning("job %s of the lost worker could not be queued again; the stalled-job retry will", row["id"])
    await app.job_manager.unregister_worker(worker_id)
    if rows:
        logger.warning("queued again %d jobs the lost worker held: %s", len(rows), ", ".join(str(r["id"]) for r in rows))


def _database_lost(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) says the database could not be reached or went away."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, (psycopg.OperationalError, exceptions.ConnectorException, ConnectionError)):
            return True
        if error.__class__.__module__.startswith("psycopg_pool") or "PoolTimeout" in error.__class__.__name__:
            return True
        error = error.__cause__ or error.__context__
        seen += 1
    return False


async def _wait_for_database(stopping: asyncio.Event) -> None:
    """Until a new connection answers ``SELECT 1`` (or a stop is asked for)."""
    params = connector_params(procrastinate_settings.DATABASE_ALIAS)
    wait = RECONNECT_FIRST_WAIT
    while not stopping.is_set():
        try:
            connection = await psycopg.AsyncConnection.connect(**params)
        except psycopg.OperationalError:
            pass
        else:
            async with connection:
                try:
                    await connection.execute("SELECT 1")
                    logger.warning("the database answers again; starting a new worker")
                    return
                except psycopg.OperationalError:
                    pass
        try:
            await asyncio.wait_for(stopping.wait(), timeout=wait)
        except asyncio.TimeoutError:
            pass
        wait = min(RECONNECT_MAX_WAIT, wait * 2)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{error.__class__.__name__}: {text[0]}" if text else error.__class__.__name__
