"""``python manage.py run_worker``: the Procfile's worker — procrastinate's worker on every queue
(or ``--queues``), started again in the same process whenever the database was lost
(``portal.worker``). SIGTERM or Ctrl-C stops it after the running jobs finish."""

from __future__ import annotations

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Run a procrastinate worker that outlives database restarts."

    def add_arguments(self, parser):
        parser.add_argument("--concurrency", type=int, default=1, help="jobs run at once (1)")
        parser.add_argument("--queues", default="", help="comma-separated queues (default: every queue)")

    def handle(self, *args, concurrency, queues, **options):
        from portal import worker

        worker.run(concurrency=concurrency, queues=[q.strip() for q in queues.split(",") if q.strip()] or None)
