"""Bring the dashboard's daily rollups up to date now: ``manage.py refresh_rollups [--all]``."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from portal.rollups import rollups_refresh


class Command(BaseCommand):
    help = "Recompute the dashboard's daily figures for the days whose records changed (--all: every day)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--all", action="store_true", dest="everything",
            help="rebuild every day (after a restore, or to take in enrollments mirrored late)",
        )

    def handle(self, *args, everything: bool, **options):
        days = rollups_refresh(everything=everything)
        if days is None:
            self.stdout.write("Recomputed every day.")
        else:
            self.stdout.write(f"Recomputed {len(days)} day(s)" + (f": {', '.join(map(str, days))}." if days else "."))
