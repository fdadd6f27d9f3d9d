"""``python manage.py sync_sparkfly [resource …]``: mirror Sparkfly now, with a progress bar."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from sparkfly_sync.client import client_from_settings
from sparkfly_sync.sync import RESOURCES, SyncAlreadyRunning, sync_resource


class Command(BaseCommand):
    help = "Mirror Sparkfly resources into the portal (all of them by default), page by page."

    def add_arguments(self, parser):
        parser.add_argument("resources", nargs="*", metavar="resource", help=f"any of: {', '.join(RESOURCES)}")
        parser.add_argument("--per-page", type=int, default=None, help="page size (default SPARKFLY_PAGE_SIZE)")

    def handle(self, *args, resources, per_page, **options):
        unknown = sorted(set(resources) - set(RESOURCES))
        if unknown:
            raise CommandError(f"unknown resource(s): {', '.join(unknown)}; choose from {', '.join(RESOURCES)}")
        if per_page is not None and per_page < 1:
            raise CommandError("--per-page must be at least 1")
        client = client_from_settings()
        failures = []
        for name in [name for name in RESOURCES if not resources or name in resources]:
            with tqdm(desc=name, unit=" pages", disable=options["verbosity"] == 0, file=self.stderr._out) as bar:

                def advance(run, page, bar=bar):
                    bar.total = max(page.total_pages or 0, bar.n + 1)
                    bar.set_postfix(created=run.created, updated=run.updated, errors=run.errors)
                    bar.update(1)

                try:
                    run = sync_resource(name, client=client, per_page=per_page, on_page=advance)
                except SyncAlreadyRunning as exc:
                    failures.append(str(exc))
                    continue
            summary = (
                f"{name}: {run.status} — {run.pages} pages, {run.created} created, {run.updated} updated, "
                f"{run.unchanged} unchanged, {run.errors} skipped"
            )
            if run.resumed:
                summary += f" (resumed {run.resumed}×)"
            if run.status == run.Status.FAILED:
                failures.append(f"{name}: {run.failure}")
                self.stderr.write(self.style.ERROR(summary + f"\n  {run.failure}"))
            else:
                self.stdout.write(self.style.SUCCESS(summary))
                for sample in run.error_samples:
                    self.stdout.write(f"  skipped: {sample}")
        if failures:
            raise CommandError("sync incomplete:\n  " + "\n  ".join(failures) + "\nRun it again to resume.")
